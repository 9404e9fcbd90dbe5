#!/usr/bin/env bash
# Deliveries per second of ONE worker to each destination kind, side by side in one run:
# for each round, one drain per kind (http, redis_stream, amqp, nats, in turn), ROUNDS rounds
# (default 3), then the medians per kind. Each drain: EVENTS events (default 20,000) posted
# with no worker running, over 12 Jira sites of one company, about 1,000 issues, enrichment on;
# the company has ONE subscription (`jira:issue_*`), to the kind measured; then one `hookline
# worker` is started and timed until the benchmark's reader got every event from that
# destination (HTTP: its server; brokers: XREAD, basic.consume, a JetStream pull consumer),
# each with a verified Standard Webhooks signature.
#   bench/destinations.sh                   # KINDS="http redis_stream amqp nats" by default
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379,
# RabbitMQ on 127.0.0.1:5672 (guest/guest), NATS with JetStream on 127.0.0.1:4222.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
export BENCH_EVENTS="${EVENTS:-${BENCH_EVENTS:-20000}}"
export BENCH_COMPANIES="${BENCH_COMPANIES:-1}"
export BENCH_SITES_PER_COMPANY="${BENCH_SITES_PER_COMPANY:-12}"
kinds="${KINDS:-http redis_stream amqp nats}"
rounds="${ROUNDS:-3}"
out="$(mktemp -d)"
for round in $(seq 1 "$rounds"); do
  for kind in $kinds; do
    echo "round $round: $kind (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$CARGO_TARGET_DIR/release/hookline-bench" drain --destination "$kind" "$@" \
      | tee "$out/$kind-$round.txt" | grep '^RESULT' >> "$out/$kind.results"
  done
done
python3 - "$out" $kinds <<'PY'
import statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
kinds = sys.argv[2:]
def median(rows, key, scale=1.0):
    values = [float(row[key]) * scale for row in rows if key in row]
    return statistics.median(values) if values else float("nan")
print("kind          deliveries/s  worker ms  postgres ms  redis ms  brokers ms  total ms  "
      "lost dup bad  (CPU per delivery, medians of rounds)")
for kind in kinds:
    rows = []
    for line in (out / f"{kind}.results").read_text().splitlines():
        rows.append(dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv))
    # CPU seconds of the drain window over the deliveries, in ms, per round; then the median.
    per = lambda key: statistics.median(
        float(r[key]) * 1000 / float(r["backlog"]) for r in rows if key in r)
    worker = per("cpu_worker_s")
    postgres, redis, brokers = per("cpu_postgres_s"), per("cpu_redis_s"), per("cpu_brokers_s")
    lost = sum(int(r.get("lost", 0)) for r in rows)
    dup = sum(int(r.get("duplicated", 0)) for r in rows)
    bad = sum(int(r.get("bad_signatures", 0)) for r in rows)
    print(f"{kind:<13} {median(rows, 'drain_events_per_s'):>12.0f}  {worker:>9.3f}  "
          f"{postgres:>11.3f}  {redis:>8.3f}  {brokers:>10.3f}  "
          f"{worker + postgres + redis + brokers:>8.3f}  {lost:>4} {dup:>3} {bad:>3}")
    print(f"  rounds: deliveries/s {', '.join(r['drain_events_per_s'] for r in rows)}; "
          f"load at start {', '.join(r.get('load_start', '?') for r in rows)}")
print(f"reports in {out}")
PY
