#!/usr/bin/env bash
# Runs schemathesis (https://schemathesis.io) against the committed openapi.json and a running
# hookline: no 5xx, answers conform to the documented status codes, content types, headers and
# schemas, unsupported methods get 405 with `Allow`.
#
#   scripts/schemathesis.sh                   # embedded: `hookline all` on SQLite
#   BACKEND=postgres scripts/schemathesis.sh  # `hookline serve` + `hookline worker` on Postgres + Redis
#
# Settings (environment): MAX_EXAMPLES (per operation, default 100), SEED, PORT (default 18080),
# POSTGRES_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres), REDIS_URL (default
# redis://127.0.0.1:6379), SCHEMATHESIS (the executable; default `schemathesis` on PATH, install
# with `pip install schemathesis`), HOOKLINE_BIN (a built binary; default: cargo build). Reports (JUnit, NDJSON) go to target/schemathesis-<backend>/.
# Exit status: schemathesis' own (0 when every check passed).
set -euo pipefail

cd "$(dirname "$0")/.."
BACKEND=${BACKEND:-embedded}
PORT=${PORT:-18080}
MAX_EXAMPLES=${MAX_EXAMPLES:-100}
SEED=${SEED:-$RANDOM$RANDOM}
SCHEMATHESIS=${SCHEMATHESIS:-schemathesis}
POSTGRES_ADMIN_URL=${POSTGRES_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
REDIS_URL_DEFAULT=redis://127.0.0.1:6379
TARGET_DIR=${CARGO_TARGET_DIR:-target}
REPORT_DIR="$TARGET_DIR/schemathesis-$BACKEND"

command -v "$SCHEMATHESIS" >/dev/null || {
    echo "schemathesis not found: pip install schemathesis (or set SCHEMATHESIS=/path/to/it)" >&2
    exit 2
}

if [[ -n "${HOOKLINE_BIN:-}" ]]; then
    HOOKLINE=$HOOKLINE_BIN
else
    cargo build -p api --bin hookline
    HOOKLINE="$TARGET_DIR/debug/hookline"
fi

WORK=$(mktemp -d)
PIDS=()
DATABASE=""
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ -n "$DATABASE" ]]; then
        psql "$POSTGRES_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $DATABASE WITH (FORCE)" || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

export HOOKLINE_LISTEN="127.0.0.1:$PORT"
export HOOKLINE_ADMIN_TOKEN="schemathesis-admin-$RANDOM$RANDOM"
export HOOKLINE_ENCRYPTION_KEY=$(head -c 32 /dev/urandom | base64)
export HOOKLINE_DATA_DIR="$WORK/data"
export HOOKLINE_QUEUE_PREFIX="schemathesis-$$"
# schemathesis sends thousands of webhooks to whatever connection it invents: no rate limit.
export HOOKLINE_INGEST_RATE_LIMIT=0
# The test subscription points at a closed local port.
export HOOKLINE_ALLOW_PRIVATE_TARGETS=true
export RUST_LOG=${RUST_LOG:-warn}
# The connect flow configured as in production; Atlassian itself is never reached (nothing
# listens on port 9), and schemathesis cannot complete a consent anyway.
export JIRA_CLIENT_ID=schemathesis-client JIRA_CLIENT_SECRET="schemathesis-secret-$RANDOM"
export ATLASSIAN_AUTH_URL=http://127.0.0.1:9 ATLASSIAN_API_URL=http://127.0.0.1:9

case "$BACKEND" in
embedded)
    export DATABASE_URL="sqlite://$WORK/hookline.db?mode=rwc"
    unset REDIS_URL
    "$HOOKLINE" all >"$WORK/hookline.log" 2>&1 &
    PIDS+=($!)
    ;;
postgres)
    DATABASE="hookline_schemathesis_$$"
    psql "$POSTGRES_ADMIN_URL" -qc "CREATE DATABASE $DATABASE"
    export DATABASE_URL="${POSTGRES_ADMIN_URL%/*}/$DATABASE"
    export REDIS_URL=${REDIS_URL:-$REDIS_URL_DEFAULT}
    "$HOOKLINE" migrate
    "$HOOKLINE" serve >"$WORK/serve.log" 2>&1 &
    PIDS+=($!)
    "$HOOKLINE" worker >"$WORK/worker.log" 2>&1 &
    PIDS+=($!)
    ;;
*)
    echo "BACKEND must be embedded or postgres (got $BACKEND)" >&2
    exit 2
    ;;
esac

BASE="http://127.0.0.1:$PORT"
for _ in $(seq 1 100); do
    curl -sf "$BASE/healthz" >/dev/null && break
    sleep 0.2
done
curl -sf "$BASE/healthz" >/dev/null || {
    echo "hookline did not start:" >&2
    cat "$WORK"/*.log >&2
    exit 1
}

API_KEY=$(curl -sf -X POST "$BASE/api/v1/companies" \
    -H "Authorization: Bearer $HOOKLINE_ADMIN_TOKEN" -H 'content-type: application/json' \
    -d '{"name": "schemathesis"}' | jq -r .apiKey)
api() { curl -sf -H "Authorization: Bearer $API_KEY" -H 'content-type: application/json' "$@"; }

# Something to find: a connection, a subscription (to a closed local port), an event and its
# delivery. Operations on one item get these ids, so they reach real rows, not only 404s.
CONNECTION=$(api -X POST "$BASE/api/v1/connections" \
    -d '{"pluginId": "jira", "externalId": "schemathesis.atlassian.net", "externalName": "schemathesis"}')
CONNECTION_ID=$(jq -r .id <<<"$CONNECTION")
WEBHOOK_SECRET=$(jq -r .webhookSecret <<<"$CONNECTION")
SUBSCRIPTION_ID=$(api -X POST "$BASE/api/v1/subscriptions" \
    -d '{"url": "http://127.0.0.1:9/hook", "eventTypes": ["jira:issue_*"]}' | jq -r .id)
BODY='{"webhookEvent":"jira:issue_created","issue":{"key":"ST-1","fields":{"summary":"schemathesis"}}}'
SIGNATURE=$(printf '%s' "$BODY" | openssl dgst -sha256 -hmac "$WEBHOOK_SECRET" | sed 's/^.* //')
EVENT_ID=$(curl -sf -X POST "$BASE/webhook/jira/$CONNECTION_ID" -H 'content-type: application/json' \
    -H "X-Hub-Signature: sha256=$SIGNATURE" --data-binary "$BODY" | jq -r .eventId)
DELIVERY_ID=""
for _ in $(seq 1 100); do
    DELIVERY_ID=$(api "$BASE/api/v1/deliveries?eventId=$EVENT_ID" | jq -r '.items[0].id // empty')
    [[ -n "$DELIVERY_ID" ]] && break
    sleep 0.2
done
[[ -n "$DELIVERY_ID" ]] || { echo "the event was not processed into a delivery" >&2; exit 1; }
cat >"$WORK/schemathesis.toml" <<TOML
[[operations]]
include-path-regex = "^/api/v1/connections/\\\\{id\\\\}"
parameters = { "path.id" = "$CONNECTION_ID" }

[[operations]]
include-path-regex = "^/api/v1/subscriptions/\\\\{id\\\\}"
parameters = { "path.id" = "$SUBSCRIPTION_ID" }

[[operations]]
include-path-regex = "^/api/v1/events/\\\\{id\\\\}"
parameters = { "path.id" = "$EVENT_ID" }

[[operations]]
include-path-regex = "^/api/v1/deliveries/\\\\{id\\\\}"
parameters = { "path.id" = "$DELIVERY_ID" }

[[operations]]
include-path-regex = "^/webhook/jira/"
parameters = { "path.connection_id" = "$CONNECTION_ID" }
TOML

echo "schemathesis against $BACKEND at $BASE (seed $SEED, $MAX_EXAMPLES examples per operation)"
mkdir -p "$REPORT_DIR"
status=0
"$SCHEMATHESIS" --config-file "$WORK/schemathesis.toml" run openapi.json \
    --url "$BASE" \
    --header "Authorization: Bearer $API_KEY" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,unsupported_method \
    --max-examples "$MAX_EXAMPLES" \
    --seed "$SEED" \
    --workers 1 \
    --generation-database none \
    --no-color \
    --report junit,ndjson \
    --report-dir "$REPORT_DIR" || status=$?

if grep -qiE 'panicked|internal error' "$WORK"/*.log; then
    echo "hookline logged internal errors:" >&2
    grep -iE 'panicked|internal error' "$WORK"/*.log | head -20 >&2
    status=1
fi
exit "$status"
