#!/usr/bin/env bash
# End-to-end latency on Postgres + Redis, release build: `hookline migrate`, `hookline serve` and
# one `hookline worker` as separate processes, a fresh database and queue prefix, an OAuth
# connection to the fake Atlassian (events are enriched), and open-loop load at RATE webhooks/s
# (default 500) for DURATION (default 60s). Reports latency from the POST to the subscriber
# (p50/p90/p99/max), lost and duplicated events, ingest errors, and RSS and CPU per process.
# Every option of `hookline-bench e2e --help` can be given as an argument or its BENCH_* variable.
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
export BENCH_RATE="${RATE:-${BENCH_RATE:-500}}" BENCH_DURATION="${DURATION:-${BENCH_DURATION:-60s}}"
exec "$CARGO_TARGET_DIR/release/hookline-bench" e2e "$@"
