#!/usr/bin/env bash
# Recovery from real restarts under load (issue 18): end to end at RATE events/s (default 200)
# for 50 s, restarting the real Redis server (no persistence: every queued job is lost) at
# 15 s and the real PostgreSQL server at 30 s. The report's lost/duplicated counts and its
# latency per 10 s of sending (and max) say what the restarts cost.
# Needs: the local Postgres cluster (pg_ctlcluster) and redis-server on 127.0.0.1:6379, run as
# root; nothing else may use them meanwhile (their clients lose their connections).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
rate="${RATE:-200}"
out="$(mktemp)"
"$CARGO_TARGET_DIR/release/hookline-bench" e2e --rate "$rate" --duration 50s --warmup 5s "$@" \
  > "$out" 2>&1 &
bench=$!
until grep -q '^offering' "$out"; do kill -0 "$bench" 2>/dev/null || { cat "$out"; exit 1; }; sleep 0.2; done
sleep 15
echo "restarting Redis at $(date +%T.%N)" >&2
redis-cli -h 127.0.0.1 -p 6379 shutdown nosave || true
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
sleep 15
echo "restarting PostgreSQL at $(date +%T.%N)" >&2
pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main restart
wait "$bench"
cat "$out"
