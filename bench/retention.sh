#!/usr/bin/env bash
# What pruning 1 M old rows costs while ingest runs (Postgres + Redis, release build).
#
# Each round seeds a fresh database with 1,000,000 rows older than the retention period
# (500,000 processed events with 1 KB bodies; 250,000 deliveries, succeeded or dead; 250,000
# attempts), then measures ingest with wrk (c=16, DURATION) twice, alternating:
#   A. a `hookline worker` with retention off (HOOKLINE_RETENTION=0s): the baseline;
#   B. a `hookline worker` with HOOKLINE_RETENTION=30d, which prunes the 1 M rows meanwhile.
# It prints, per round, ingest requests/s and p99 for A and B, how long pruning took, and the
# worker's and Postgres' CPU seconds during pruning. Needs: Postgres on 127.0.0.1:5432 (user
# postgres, database test), Redis on 127.0.0.1:6379, wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
DURATION="${DURATION:-20s}"
ROUNDS="${ROUNDS:-3}"
FIXTURE="${FIXTURE:-fixtures/jira/webhook_issue_created.json}"
cargo build --release -q -p api --bin hookline
BIN="$CARGO_TARGET_DIR/release"
PSQL=(psql -qtA -h 127.0.0.1 -U postgres)

export REDIS_URL="redis://127.0.0.1:6379"
export HOOKLINE_ENCRYPTION_KEY="$(head -c 32 /dev/urandom | base64)" HOOKLINE_ADMIN_TOKEN="bench-admin"
export HOOKLINE_LISTEN="127.0.0.1:18090" RUST_LOG=warn HOOKLINE_INGEST_RATE_LIMIT=0
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for db in $("${PSQL[@]}" -d test -c "SELECT datname FROM pg_database WHERE datname LIKE 'hookline_retention_$$_%'"); do
    "${PSQL[@]}" -d test -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  done
  redis-cli -h 127.0.0.1 --scan --pattern "bench-retention-$$*" | xargs -r redis-cli -h 127.0.0.1 del >/dev/null || true
}
trap cleanup EXIT

wait_up() { for _ in $(seq 1 100); do curl -fs "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not up: $1"; exit 1; }
cpu_seconds() { # pid → user+system CPU seconds so far
  awk '{ sub(/.*\) /, ""); print ($12 + $13) / 100 }' "/proc/$1/stat"
}
postgres_cpu() { # CPU seconds of every postgres process
  local total=0
  for pid in $(pgrep -x postgres); do
    total=$(awk -v t="$total" '{ sub(/.*\) /, ""); print t + ($12 + $13) / 100 }' "/proc/$pid/stat" 2>/dev/null || echo "$total")
  done
  echo "$total"
}
old_rows() {
  "${PSQL[@]}" -d "$DB" -c "SELECT (SELECT count(*) FROM webhook_event WHERE received_at < now() - interval '30 days')
    + (SELECT count(*) FROM delivery d JOIN webhook_event e ON e.id = d.event_id WHERE e.received_at < now() - interval '30 days')
    + (SELECT count(*) FROM delivery_attempt a JOIN delivery d ON d.id = a.delivery_id JOIN webhook_event e ON e.id = d.event_id WHERE e.received_at < now() - interval '30 days')"
}

seed() { # 1 M rows older than 30 days, for the connection $ID of company $COMPANY
  "${PSQL[@]}" -d "$DB" <<SQL
INSERT INTO subscription (id, company_id, connection_id, description, event_types, filters, target_url, secret, enabled, disabled_reason, failing_since, created_at, updated_at)
VALUES ('00000000-0000-7000-8000-000000000001', '$COMPANY', NULL, 'bench', '["never:*"]', NULL, 'https://example.com/hook', 'x', true, NULL, NULL, now(), now())
ON CONFLICT DO NOTHING;
INSERT INTO webhook_event (id, connection_id, company_id, plugin_id, delivery_key, received_at, headers, body, status, attempts, locked_until, event_type, error, processed_at, replay_of)
SELECT gen_random_uuid(), '$ID', '$COMPANY', 'jira', 'old-' || n, now() - interval '40 days' + n * interval '1 ms', '{}',
       convert_to(repeat('x', 1000), 'UTF8'), 'processed', 1, NULL, 'jira:issue_updated', NULL, now() - interval '40 days', NULL
FROM generate_series(1, 500000) AS n;
INSERT INTO delivery (id, event_id, subscription_id, company_id, status, attempts, next_attempt_at, locked_until, last_status, last_error, created_at, updated_at, delivered_at)
SELECT gen_random_uuid(), id, '00000000-0000-7000-8000-000000000001', company_id,
       CASE WHEN random() < 0.9 THEN 'succeeded' ELSE 'dead' END, 1, NULL, NULL, 200, NULL, received_at, received_at, received_at
FROM webhook_event WHERE delivery_key LIKE 'old-%' AND right(delivery_key, 1) IN ('0', '2', '4', '6', '8');
INSERT INTO delivery_attempt (id, delivery_id, attempt, started_at, duration_ms, status_code, error, response_excerpt)
SELECT gen_random_uuid(), id, 1, created_at, 12, 200, NULL, 'ok' FROM delivery;
VACUUM ANALYZE;
SQL
}

ingest() { # label → wrk result line
  printf '  %-30s ' "$1"
  wrk -t2 -c16 -d"$DURATION" --latency -s bench/ingest.lua "http://127.0.0.1:18090/webhook/jira/$ID" | grep '^RESULT'
}

echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  DB="hookline_retention_$$_$round"
  "${PSQL[@]}" -d test -c "CREATE DATABASE $DB"
  export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$DB" HOOKLINE_QUEUE_PREFIX="bench-retention-$$-$round"
  "$BIN/hookline" migrate
  "$BIN/hookline" serve & SERVE=$!; PIDS+=("$SERVE")
  wait_up http://127.0.0.1:18090/healthz
  KEY=$(curl -fs -X POST http://127.0.0.1:18090/api/v1/companies -H "Authorization: Bearer bench-admin" \
    -H 'content-type: application/json' -d '{"name":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
  CONN=$(curl -fs -X POST http://127.0.0.1:18090/api/v1/connections -H "Authorization: Bearer $KEY" \
    -H 'content-type: application/json' -d '{"pluginId":"jira","externalId":"bench.atlassian.net","externalName":"bench"}')
  ID=$(echo "$CONN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  COMPANY=$("${PSQL[@]}" -d "$DB" -c "SELECT company_id FROM plugin_connection WHERE id = '$ID'")
  SECRET=$(echo "$CONN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["webhookSecret"])')
  export BODY_FILE="$FIXTURE"
  export SIGNATURE="sha256=$(python3 -c 'import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), open(sys.argv[2],"rb").read(), hashlib.sha256).hexdigest())' "$SECRET" "$FIXTURE")"
  seed
  SEEDED=$(old_rows)
  echo "round $round: $SEEDED old rows seeded, load average $(cut -d' ' -f1-3 /proc/loadavg)"

  HOOKLINE_RETENTION=0s "$BIN/hookline" worker & WORKER=$!; PIDS+=("$WORKER")
  sleep 2
  ingest "A: ingest, retention off"
  kill "$WORKER"; wait "$WORKER" 2>/dev/null || true

  pg_before=$(postgres_cpu)
  started=$(date +%s.%N)
  HOOKLINE_RETENTION=30d "$BIN/hookline" worker & WORKER=$!; PIDS+=("$WORKER")
  ingest "B: ingest while pruning"
  while [ "$("${PSQL[@]}" -d "$DB" -c "SELECT EXISTS (SELECT 1 FROM webhook_event WHERE received_at < now() - interval '30 days')")" = "t" ]; do
    sleep 0.5
  done
  took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$started" "$(date +%s.%N)")
  echo "  pruned $SEEDED rows in ${took} s; worker CPU $(cpu_seconds "$WORKER") s, Postgres CPU $(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$pg_before" "$(postgres_cpu)") s (both include the ingest of phase B)"
  kill "$WORKER" "$SERVE"; wait "$WORKER" "$SERVE" 2>/dev/null || true
  "${PSQL[@]}" -d test -c "DROP DATABASE $DB WITH (FORCE)"
done
