#!/usr/bin/env bash
# The hookline walk-through: create a company, a Jira connection and a subscription, post a Jira
# webhook, and see it delivered. Run it from the repository root while `cargo run --release`
# (hookline) and `cargo run --release -- sink` (a subscriber on 127.0.0.1:9000) are running.
# It needs curl, sed and openssl. A test runs this very script, so it cannot rot.
set -euo pipefail
# --- walk-through ---
HOOKLINE=${HOOKLINE:-http://127.0.0.1:8080}
SINK=${SINK:-http://127.0.0.1:9000/}
DATA_DIR=${HOOKLINE_DATA_DIR:-.hookline}
ADMIN=${ADMIN:-$(sed -n 's/.*"adminToken": "\(.*\)".*/\1/p' "$DATA_DIR/secrets.json")}
field() { sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }

echo "1. create a company (admin token) and keep its API key"
KEY=$(curl -fsS -X POST "$HOOKLINE/api/v1/companies" -H "Authorization: Bearer $ADMIN" \
  -H 'content-type: application/json' -d '{"name":"Northwind"}' | field apiKey)

echo "2. register a Jira connection: its webhook URL and secret go into Jira's webhook settings"
CONNECTION=$(curl -fsS -X POST "$HOOKLINE/api/v1/connections" -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' \
  -d '{"pluginId":"jira","externalId":"northwind.atlassian.net","externalName":"Northwind"}')
WEBHOOK_URL=$(echo "$CONNECTION" | field webhookUrl)
WEBHOOK_SECRET=$(echo "$CONNECTION" | field webhookSecret)
echo "   webhook URL: $WEBHOOK_URL"

echo "3. subscribe the sink to issue events"
curl -fsS -X POST "$HOOKLINE/api/v1/subscriptions" -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d "{\"url\":\"$SINK\",\"eventTypes\":[\"jira:issue_*\"]}" >/dev/null

echo "4. post a Jira webhook, signed as Jira signs it (X-Hub-Signature: sha256=<HMAC of the body>)"
SIGNATURE=sha256=$(openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" < examples/webhook_issue_created.json | sed 's/^.* //')
EVENT=$(curl -fsS -X POST "$WEBHOOK_URL" -H 'content-type: application/json' \
  -H "X-Hub-Signature: $SIGNATURE" --data-binary @examples/webhook_issue_created.json | field eventId)
echo "   event $EVENT accepted"

echo "5. see it delivered (the sink prints it too)"
DELIVERED=no
for _ in $(seq 1 60); do
  curl -fsS "$HOOKLINE/api/v1/events/$EVENT" -H "Authorization: Bearer $KEY" \
    | grep -q '"status":"succeeded"' && DELIVERED=yes && break
  sleep 0.5
done
echo "   delivered: $DELIVERED (curl $HOOKLINE/api/v1/events/$EVENT -H \"Authorization: Bearer \$KEY\")"
test "$DELIVERED" = yes
