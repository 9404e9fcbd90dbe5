#!/usr/bin/env bash
# Does the cost per event grow with the backlog? One worker drains backlogs of each size in
# SIZES (default "10000 200000"), alternating, ROUNDS rounds (default 3), and the medians of
# each: events/s and CPU per event of the worker, Postgres and Redis over the drain window.
# Same stack as bench/drain.sh: 4 companies × 3 Jira sites, ~1,000 issues, 4 subscriptions per
# company with different filters, enrichment through the fake Atlassian.
#   SIZES="10000 200000" ROUNDS=3 bench/drain-sizes.sh
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
sizes="${SIZES:-10000 200000}"
rounds="${ROUNDS:-3}"
out="$(mktemp -d)"
for round in $(seq 1 "$rounds"); do
  for size in $sizes; do
    echo "round $round: $size events (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$CARGO_TARGET_DIR/release/hookline-bench" drain --events "$size" "$@" \
      | tee "$out/$size-$round.txt" | grep '^RESULT' >> "$out/$size.results"
  done
done
python3 - "$out" $sizes <<'PY'
import statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("events    events/s  worker ms  postgres ms  redis ms  total ms  commits  rows read  "
      "lost dup bad  (per event, medians of rounds)")
for size in sys.argv[2:]:
    rows = [dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
            for line in (out / f"{size}.results").read_text().splitlines()]
    per = lambda key: statistics.median(
        float(r[key]) * 1000 / float(r["backlog"]) for r in rows)
    med = lambda key: statistics.median(float(r[key]) for r in rows)
    worker, postgres, redis = per("cpu_worker_s"), per("cpu_postgres_s"), per("cpu_redis_s")
    lost = sum(int(r["lost"]) for r in rows)
    dup = sum(int(r["duplicated"]) + int(r.get("fanout_duplicated", 0)) for r in rows)
    bad = sum(int(r["bad_signatures"]) for r in rows)
    print(f"{size:>7}  {med('drain_events_per_s'):>9.0f}  {worker:>9.3f}  {postgres:>11.3f}  "
          f"{redis:>8.3f}  {worker + postgres + redis:>8.3f}  "
          f"{med('pg_xact_commit_per_event'):>7.2f}  {med('pg_tup_returned_per_event'):>9.1f}  "
          f"{lost:>4} {dup:>3} {bad:>3}")
    print(f"  rounds: events/s {', '.join(r['drain_events_per_s'] for r in rows)}; "
          f"load at start {', '.join(r['load_start'] for r in rows)}")
print(f"reports in {out}")
PY
