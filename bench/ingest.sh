#!/usr/bin/env bash
# Ingest throughput, latency and CPU per webhook: `hookline serve` against the insert-only
# baseline (tests/src/bin/ingest-insert-only.rs: one INSERT per request, no group commit, no
# queue), side by side in one run, alternating, medians of ROUNDS rounds. bench/ingest.py says
# what it does and which settings it takes (ROUNDS, DURATION, CONCURRENCY, SSLMODES, POOL_SIZES,
# PERF, ...). It starts its own Postgres and Redis, so their CPU is this benchmark's alone.
# Needs: PostgreSQL server binaries (initdb, pg_ctl, run as the `postgres` user), redis-server,
# wrk, python3; run as root (to start Postgres as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
cargo build --release -q -p api -p tests --bin hookline --bin ingest-insert-only
export BIN="$CARGO_TARGET_DIR/release"
exec python3 bench/ingest.py
