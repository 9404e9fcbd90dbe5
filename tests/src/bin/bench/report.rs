//! Turning measurements into the figures of BENCHMARKS.md: percentiles, CPU shares, memory,
//! the per-stage latencies recorded in the database, and a one-line summary for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::Context as _;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

use crate::procstat::{CpuSnapshot, Watch};

/// A report being written: printed at the end and saved in the run directory.
#[derive(Debug, Default)]
pub struct Report {
    text: String,
    /// `key=value` pairs of the final `RESULT` line.
    summary: Vec<(String, String)>,
}

impl Report {
    /// Adds a line of text.
    pub fn line(&mut self, line: impl AsRef<str>) {
        self.text.push_str(line.as_ref());
        self.text.push('\n');
    }

    /// Adds a `key=value` pair to the summary line.
    pub fn figure(&mut self, key: &str, value: impl ToString) {
        self.summary.push((key.to_owned(), value.to_string()));
    }

    /// The whole report, ending with the `RESULT` line.
    pub fn render(&self, mode: &str) -> String {
        let mut out = self.text.clone();
        let _ = write!(out, "RESULT mode={mode}");
        for (key, value) in &self.summary {
            let _ = write!(out, " {key}={value}");
        }
        out.push('\n');
        out
    }
}

/// The `p`-th percentile (nearest rank) of sorted durations; zero when there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Milliseconds with one decimal.
pub fn ms(duration: Duration) -> String {
    format!("{:.1}", duration.as_secs_f64() * 1000.0)
}

/// `p50 / p90 / p99 / max` of `durations` (sorted in place) as one line, and the same four
/// figures into the summary under `prefix`.
pub fn latency_line(report: &mut Report, label: &str, prefix: &str, durations: &mut [Duration]) {
    durations.sort_unstable();
    let figures = [
        ("p50", percentile(durations, 50.0)),
        ("p90", percentile(durations, 90.0)),
        ("p99", percentile(durations, 99.0)),
        ("max", durations.last().copied().unwrap_or_default()),
    ];
    let mut line = format!("{label:<34} n={:<7}", durations.len());
    for (name, value) in figures {
        let _ = write!(line, " {name}={:>8} ms", ms(value));
        report.figure(&format!("{prefix}_{name}_ms"), ms(value));
    }
    report.line(line);
}

/// CPU seconds and cores used between two snapshots, per process and for the machine.
pub fn cpu_section(report: &mut Report, before: &CpuSnapshot, after: &CpuSnapshot, hz: f64) {
    let wall = match (before.at, after.at) {
        (Some(start), Some(end)) => end.duration_since(start).as_secs_f64(),
        _ => 0.0,
    };
    report.line(format!(
        "CPU over the measured window ({wall:.1} s wall; 1 core = {wall:.1} CPU s):"
    ));
    let mut accounted = 0.0;
    let mut row = |report: &mut Report, label: &str, key: &str, ticks: u64| {
        let seconds = ticks as f64 / hz;
        accounted += seconds;
        let cores = if wall > 0.0 { seconds / wall } else { 0.0 };
        report.line(format!(
            "  {label:<40} {seconds:>7.1} CPU s  {cores:>5.2} cores"
        ));
        report.figure(&format!("cpu_{key}_s"), format!("{seconds:.1}"));
    };
    let mut labels: Vec<&String> = after.processes.keys().collect();
    labels.sort();
    for label in labels {
        let delta = after.processes[label]
            .saturating_sub(before.processes.get(label).copied().unwrap_or(0));
        row(report, label, key_of(label), delta);
    }
    row(
        report,
        "postgres (all backends)",
        "postgres",
        after.postgres.saturating_sub(before.postgres),
    );
    row(
        report,
        "redis-server",
        "redis",
        after.redis.saturating_sub(before.redis),
    );
    row(
        report,
        "rabbitmq + nats-server",
        "brokers",
        after.brokers.saturating_sub(before.brokers),
    );
    let busy = after.machine_busy.saturating_sub(before.machine_busy) as f64 / hz;
    let total = after.machine_total.saturating_sub(before.machine_total) as f64 / hz;
    let other = (busy - accounted).max(0.0);
    report.line(format!(
        "  {:<40} {other:>7.1} CPU s  {:>5.2} cores",
        "everything else (other users, kernel)",
        if wall > 0.0 { other / wall } else { 0.0 }
    ));
    report.line(format!(
        "  {:<40} {busy:>7.1} CPU s  {:>5.2} cores (of {:.1} s available)",
        "machine busy",
        if wall > 0.0 { busy / wall } else { 0.0 },
        total
    ));
    report.figure("cpu_machine_busy_s", format!("{busy:.1}"));
    report.figure("cpu_other_s", format!("{other:.1}"));
}

/// Peak (`VmHWM`) and sampled (`VmRSS`) memory of every watched process.
pub fn memory_section(report: &mut Report, watch: &Watch) {
    report.line("Memory (VmHWM = peak since start; VmRSS sampled every 250 ms in the window):");
    for (label, pid) in watch.processes() {
        let peak = crate::procstat::memory(pid)
            .map(|memory| memory.hwm_kib)
            .unwrap_or(0);
        let samples = watch.rss_samples(&label);
        let max = samples.iter().copied().max().unwrap_or(0);
        let mean = if samples.is_empty() {
            0
        } else {
            samples.iter().sum::<u64>() / samples.len() as u64
        };
        report.line(format!(
            "  {label:<40} VmHWM {:>6.1} MiB   VmRSS mean {:>6.1} MiB, max {:>6.1} MiB ({} samples)",
            mib(peak),
            mib(mean),
            mib(max),
            samples.len()
        ));
        let key = key_of(&label);
        report.figure(&format!("{key}_hwm_mib"), format!("{:.1}", mib(peak)));
        report.figure(&format!("{key}_rss_max_mib"), format!("{:.1}", mib(max)));
    }
}

/// The summary key of a watched process: the first word of its label (`api`, `worker`, …).
fn key_of(label: &str) -> &str {
    label.split_whitespace().next().unwrap_or(label)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where the time went per stage, from the rows: ingest → processed (queue wait, claim,
/// enrichment, matching, commit) and processed → delivered (queue wait, the POST, the
/// bookkeeping), over the events received since `since`.
pub async fn stage_section(
    report: &mut Report,
    db: &DatabaseConnection,
    since: chrono::DateTime<chrono::Utc>,
) -> anyhow::Result<()> {
    let stages = [
        (
            "received → processed (db)",
            "db_processed",
            "e.processed_at - e.received_at",
        ),
        (
            "processed → delivered (db)",
            "db_delivered",
            "d.delivered_at - e.processed_at",
        ),
        (
            "received → delivered (db)",
            "db_total",
            "d.delivered_at - e.received_at",
        ),
    ];
    for (label, prefix, interval) in stages {
        let sql = format!(
            "SELECT count(*)::bigint AS n, \
             percentile_cont(0.5) WITHIN GROUP (ORDER BY s) AS p50, \
             percentile_cont(0.9) WITHIN GROUP (ORDER BY s) AS p90, \
             percentile_cont(0.99) WITHIN GROUP (ORDER BY s) AS p99, \
             max(s) AS max \
             FROM (SELECT extract(epoch FROM ({interval}))::float8 AS s \
                   FROM webhook_event e JOIN delivery d ON d.event_id = e.id \
                   WHERE d.status = 'succeeded' AND e.received_at >= $1) stage"
        );
        let row = db
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                [since.into()],
            ))
            .await
            .with_context(|| format!("querying the {label} stage"))?
            .with_context(|| format!("no row for the {label} stage"))?;
        let n: i64 = row.try_get("", "n").context("reading n")?;
        let mut line = format!("{label:<34} n={n:<7}");
        for name in ["p50", "p90", "p99", "max"] {
            let seconds: Option<f64> = row
                .try_get("", name)
                .with_context(|| format!("reading {name}"))?;
            let value = ms(Duration::from_secs_f64(seconds.unwrap_or(0.0).max(0.0)));
            let _ = write!(line, " {name}={value:>8} ms");
            report.figure(&format!("{prefix}_{name}_ms"), value);
        }
        report.line(line);
    }
    Ok(())
}

/// Means of the worker's and API's duration histograms (`<name>_sum / <name>_count` for every
/// series whose name ends in `_seconds`), as `name{labels} mean=… ms count=…` lines.
pub fn histogram_means(report: &mut Report, process: &str, metrics: &str) {
    let mut sums = std::collections::BTreeMap::new();
    let mut counts = std::collections::BTreeMap::new();
    for line in metrics.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        if let Some(base) = name.strip_suffix("_seconds_sum") {
            sums.insert(format!("{base}{{{labels}"), value);
        } else if let Some(base) = name.strip_suffix("_seconds_count") {
            counts.insert(format!("{base}{{{labels}"), value);
        }
    }
    for (series, sum) in sums {
        let count = counts.get(&series).copied().unwrap_or(0.0);
        if count > 0.0 {
            let series = series.trim_end_matches('{');
            report.line(format!(
                "  {process:<7} {series:<60} mean {:>7.2} ms  count {count}",
                sum / count * 1000.0
            ));
        }
    }
}

/// The run database's activity counters (`pg_stat_database`: commits, rows read and written)
/// and the server's WAL written (`pg_stat_wal`, whole server: full-page images and bytes).
pub async fn database_counters(db: &DatabaseConnection) -> anyhow::Result<Vec<(String, i64)>> {
    let names = [
        "xact_commit",
        "tup_returned",
        "tup_fetched",
        "tup_inserted",
        "tup_updated",
        "wal_fpi",
        "wal_bytes",
    ];
    let sql = format!(
        "SELECT {} FROM pg_stat_database, pg_stat_wal WHERE datname = current_database()",
        names
            .map(|name| format!("{name}::bigint AS {name}"))
            .join(", ")
    );
    let row = db
        .query_one_raw(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .context("reading pg_stat_database")?
        .context("no pg_stat_database row for the run's database")?;
    names
        .iter()
        .map(|name| {
            let value: i64 = row
                .try_get("", name)
                .with_context(|| format!("reading {name}"))?;
            Ok(((*name).to_owned(), value))
        })
        .collect()
}

/// Per-event database work between two [`database_counters`] readings.
pub fn database_section(
    report: &mut Report,
    before: &[(String, i64)],
    after: &[(String, i64)],
    events: usize,
) {
    let per_event = before
        .iter()
        .zip(after)
        .map(|((name, start), (_, end))| {
            let value = (end - start) as f64 / events.max(1) as f64;
            report.figure(&format!("pg_{name}_per_event"), format!("{value:.2}"));
            format!("{name} {value:.2}")
        })
        .collect::<Vec<_>>()
        .join(", ");
    report.line(format!(
        "Postgres work per delivered event (pg_stat_database of the run's database, API + \
         worker): {per_event}"
    ));
}

/// Where the events and deliveries are at the end (a missing event still in the backlog is
/// late, not lost by hookline).
pub async fn status_section(report: &mut Report, db: &DatabaseConnection) -> anyhow::Result<()> {
    for table in ["webhook_event", "delivery"] {
        let rows = db
            .query_all_raw(Statement::from_string(
                DbBackend::Postgres,
                format!(
                    "SELECT status, count(*)::bigint AS n FROM {table} GROUP BY status \
                     ORDER BY status"
                ),
            ))
            .await
            .with_context(|| format!("counting {table} rows by status"))?;
        let mut counts = Vec::new();
        for row in rows {
            let status: String = row.try_get("", "status").context("reading status")?;
            let n: i64 = row.try_get("", "n").context("reading n")?;
            counts.push(format!("{status} {n}"));
        }
        report.line(format!(
            "{table} rows by status at the end: {}",
            counts.join(", ")
        ));
    }
    Ok(())
}
