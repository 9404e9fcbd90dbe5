#!/usr/bin/env bash
# Drain throughput of ONE worker process on Postgres + Redis, release build: with no worker
# running, EVENTS (default 50,000) webhooks are posted by 64 concurrent posters to `hookline
# serve`; then one `hookline worker` (HOOKLINE_WORKER_CONCURRENCY = CONCURRENCY, default 16) is
# started and timed until every event was enriched (fake Atlassian) and delivered.
# Every option of `hookline-bench drain --help` can be given as an argument or its BENCH_* variable.
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
export BENCH_EVENTS="${EVENTS:-${BENCH_EVENTS:-50000}}"
export BENCH_WORKER_CONCURRENCY="${CONCURRENCY:-${BENCH_WORKER_CONCURRENCY:-16}}"
exec "$CARGO_TARGET_DIR/release/hookline-bench" drain "$@"
