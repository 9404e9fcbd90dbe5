#!/usr/bin/env bash
# The soak run: a steady load of signed Jira webhooks against the API and two worker processes
# on Postgres + Redis, with faults injected on a schedule (Redis flushed and cut, Postgres cut,
# a worker killed with SIGKILL, a flapping subscriber, Jira answering 429), then a summary:
# accepted / delivered / duplicated / lost and delivery latency p50/p90/p99/max.
#
#   SOAK_DURATION=30m   how long the load runs (default 30m; e.g. 3m, 90s)
#   SOAK_RATE=20        webhooks per second
#   SOAK_FAULT_EVERY=20s  time between two faults
#
# Needs Postgres on 127.0.0.1:5432 and Redis on 127.0.0.1:6379 (see README); it never
# restarts them, it cuts a proxy in front of them.
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_DURATION="${SOAK_DURATION:-30m}"
export HOOKLINE_REQUIRE_SERVICES=1
exec cargo test -p tests --test it -- --ignored --nocapture --exact soak::soak
