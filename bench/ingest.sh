#!/usr/bin/env bash
# Ingest throughput and latency against Postgres + Redis, release build:
#   1. `hookline serve` (insert + queue push), 2. an insert-only baseline (no push),
# each with wrk at 16 and 64 connections for DURATION (default 10s), posting the ~7 KB
# webhook_issue_created.json fixture with a valid signature and a unique identifier per request.
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379, wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
DURATION="${DURATION:-10s}"
FIXTURE="${FIXTURE:-fixtures/jira/webhook_issue_created.json}"
cargo build --release -q -p api -p tests --bins
BIN="$CARGO_TARGET_DIR/release"

DB="hookline_bench_$$"
psql -q -h 127.0.0.1 -U postgres -d test -c "CREATE DATABASE $DB"
cleanup() {
  kill "${PID:-}" 2>/dev/null || true; wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -d test -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" || true
  redis-cli -h 127.0.0.1 --scan --pattern "bench-$$:*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null || true
}
trap cleanup EXIT

export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" REDIS_URL="redis://127.0.0.1:6379"
export HOOKLINE_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" HOOKLINE_ADMIN_TOKEN="bench-admin"
export HOOKLINE_QUEUE_PREFIX="bench-$$" HOOKLINE_LISTEN="127.0.0.1:18080" RUST_LOG=warn
# One connection takes the whole offered load: the per-connection rate limit is off.
export HOOKLINE_INGEST_RATE_LIMIT=0
"$BIN/hookline" migrate

wait_up() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }

"$BIN/hookline" serve & PID=$!
wait_up http://127.0.0.1:18080/healthz
KEY=$(curl -fs -X POST http://127.0.0.1:18080/api/v1/companies -H "Authorization: Bearer bench-admin" \
  -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
CONN=$(curl -fs -X POST http://127.0.0.1:18080/api/v1/connections -H "Authorization: Bearer $KEY" \
  -H 'content-type: application/json' -d '{"pluginId":"jira","externalId":"bench.atlassian.net","externalName":"bench"}')
ID=$(echo "$CONN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
SECRET=$(echo "$CONN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["webhookSecret"])')
export BODY_FILE="$FIXTURE"
export SIGNATURE="sha256=$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "$SECRET" "$FIXTURE")"
echo "fixture: $FIXTURE ($(wc -c < "$FIXTURE") bytes)"

run() { # name url connections
  printf '%-22s c=%-3s ' "$1" "$3"
  wrk -t2 -c"$3" -d"$DURATION" --latency -s bench/ingest.lua "$2" | grep '^RESULT'
}
for c in 16 64; do run "hookline serve" "http://127.0.0.1:18080/webhook/jira/$ID" "$c"; done
kill "$PID"; wait "$PID" 2>/dev/null || true

HOOKLINE_LISTEN=127.0.0.1:18081 "$BIN/ingest-insert-only" & PID=$!
# It has no /healthz: wait until it answers at all (404 for an unknown path).
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18081/ && break; sleep 0.1; done
for c in 16 64; do run "insert only (no push)" "http://127.0.0.1:18081/webhook/jira/$ID" "$c"; done
psql -qtA -h 127.0.0.1 -U postgres -d "$DB" -c "SELECT 'events stored: ' || count(*) FROM webhook_event"
