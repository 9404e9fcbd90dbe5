#!/usr/bin/env bash
# One worker draining a backlog: this hookline against a baseline hookline binary (e.g. the
# commit before batching), side by side in one run, alternating, ROUNDS rounds (default 3), and
# the medians of each. Both get the same stack: EVENTS events (default 10,000) over 4 companies
# × 3 Jira sites, about 1,000 issues (BENCH_ISSUES=0: every event its own issue), 4
# subscriptions per company with different filters, enrichment through the fake Atlassian.
#   BASELINE_BIN=/path/to/old/hookline bench/drain-vs-baseline.sh
# Needs: Postgres on 127.0.0.1:5432 (user postgres, database test), Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${BASELINE_BIN:?set BASELINE_BIN to the baseline hookline binary}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/hookline-target}"
cargo build --release -q -p api --bin hookline -p tests --bin hookline-bench
export BENCH_EVENTS="${EVENTS:-${BENCH_EVENTS:-10000}}"
rounds="${ROUNDS:-3}"
out="$(mktemp -d)"
for round in $(seq 1 "$rounds"); do
  for side in candidate baseline; do
    if [ "$side" = candidate ]; then bin="$CARGO_TARGET_DIR/release/hookline"; else bin="$BASELINE_BIN"; fi
    echo "round $round: $side (load $(cut -d' ' -f1-3 /proc/loadavg))" >&2
    "$CARGO_TARGET_DIR/release/hookline-bench" drain --hookline "$bin" "$@" \
      | tee "$out/$side-$round.txt" | grep '^RESULT' >> "$out/$side.results"
  done
done
python3 - "$out" <<'PY'
import statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
keys = ["drain_events_per_s", "cpu_worker (hookline worker)_s", "cpu_postgres_s", "cpu_redis_s",
        "pg_xact_commit_per_event", "drain_s", "load_start"]
for side in ["candidate", "baseline"]:
    rows = []
    for line in (out / f"{side}.results").read_text().splitlines():
        rows.append(dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv))
    print(f"{side}: {len(rows)} rounds")
    for key in rows[0]:
        values = [row.get(key) for row in rows]
        try:
            nums = [float(v) for v in values]
            print(f"  {key}: median {statistics.median(nums):g}  ({', '.join(values)})")
        except (TypeError, ValueError):
            print(f"  {key}: {', '.join(map(str, values))}")
print(f"reports in {out}")
PY
