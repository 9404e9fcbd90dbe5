//! `hookline-bench`: the end-to-end and drain benchmarks of hookline (issue 6).
//!
//! It runs the real `hookline` binary (build it with `--release`) as separate processes —
//! `hookline migrate`, `hookline serve`, `hookline worker` — on a fresh Postgres database and a
//! fresh Redis queue prefix, configured only through the documented environment variables. The
//! fake Atlassian of the test suite serves the OAuth connect flow and the issue API (so events
//! are enriched), and a lean subscriber in this process verifies every delivery's Standard
//! Webhooks signature and notes when it arrived. The company, the connection and the
//! subscription are created through the public API.
//!
//! - `e2e`: open-loop load at a fixed rate; latency from the webhook POST to the subscriber,
//!   lost and duplicated events, ingest errors, and memory and CPU of every process.
//! - `drain`: a backlog posted while no worker runs, then one `hookline worker` started: how
//!   fast one worker process empties it.
//!
//! `bench/e2e.sh` and `bench/drain.sh` build the release binaries and run these. Not part of
//! the product.

// The modules live in `bench/` next to this file (a crate root's modules would otherwise be
// looked for next to it, among the other binaries).
#[path = "bench/consumer.rs"]
mod consumer;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/procstat.rs"]
mod procstat;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/stack.rs"]
mod stack;
#[path = "bench/subscriber.rs"]
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use uuid::Uuid;

use crate::load::{Sent, Target};
use crate::procstat::Watch;
use crate::report::{Report, latency_line, ms};
use crate::stack::{Stack, StackOptions, save};

/// Benchmarks of hookline against Postgres + Redis, with the release `hookline` binary running
/// as separate processes. Prints a report and a final `RESULT key=value …` line; the processes'
/// logs, the final `/metrics` of API and worker and the report are kept in the run directory.
#[derive(Parser)]
#[command(name = "hookline-bench")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// End-to-end latency at a fixed, open-loop offered rate, with enrichment; lost and
    /// duplicated events; memory and CPU of each process.
    E2e(E2eOptions),
    /// Drain throughput of one worker process: post a backlog with no worker running, then
    /// start one `hookline worker` and time until every event is delivered.
    Drain(DrainOptions),
}

/// Options of `hookline-bench e2e`.
#[derive(clap::Args)]
struct E2eOptions {
    /// Offered load, in webhooks per second (open loop: sent on schedule, answered or not).
    #[arg(long, env = "BENCH_RATE", default_value_t = 500.0)]
    rate: f64,

    /// How long the load is offered (`60s`, `2m`).
    #[arg(long, env = "BENCH_DURATION", default_value = "60s", value_parser = parse_duration)]
    duration: Duration,

    /// Load offered first, at the same rate, and left out of every figure (connections, caches
    /// and the database warm up).
    #[arg(long, env = "BENCH_WARMUP", default_value = "5s", value_parser = parse_duration)]
    warmup: Duration,

    /// How long after the last request events may still arrive before the missing ones count as
    /// lost. Longer than the lease plus a sweep, so an event whose job was lost is still found.
    #[arg(long, env = "BENCH_GRACE", default_value = "60s", value_parser = parse_duration)]
    grace: Duration,

    /// After every event arrived, how long to keep listening for duplicates.
    #[arg(long, env = "BENCH_SETTLE", default_value = "2s", value_parser = parse_duration)]
    settle: Duration,

    #[command(flatten)]
    common: CommonOptions,
}

/// Options of `hookline-bench drain`.
#[derive(clap::Args)]
struct DrainOptions {
    /// Events in the backlog.
    #[arg(long, env = "BENCH_EVENTS", default_value_t = 50_000)]
    events: u64,

    /// Concurrent posters filling the backlog (closed loop).
    #[arg(long, env = "BENCH_POST_CONCURRENCY", default_value_t = 64)]
    post_concurrency: usize,

    /// Give up waiting for the drain after this long.
    #[arg(long, env = "BENCH_TIMEOUT", default_value = "15m", value_parser = parse_duration)]
    timeout: Duration,

    #[command(flatten)]
    common: CommonOptions,
}

/// Options of every mode.
#[derive(clap::Args)]
struct CommonOptions {
    /// The Jira webhook posted (a JSON object; its issue is what the fake's issue API serves).
    #[arg(long, env = "BENCH_FIXTURE")]
    fixture: Option<PathBuf>,

    #[command(flatten)]
    stack: StackOptions,
}

impl CommonOptions {
    fn fixture(&self) -> anyhow::Result<Arc<Vec<u8>>> {
        let path = self
            .fixture
            .clone()
            .unwrap_or_else(|| tests::fixtures::dir().join("webhook_issue_created.json"));
        let bytes =
            std::fs::read(&path).with_context(|| format!("reading fixture {}", path.display()))?;
        load::check_fixture(&bytes).with_context(|| format!("fixture {}", path.display()))?;
        Ok(Arc::new(bytes))
    }
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    api::config::parse_duration(text)
}

/// How often process memory is sampled.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let (mode, common) = match &cli.mode {
        Mode::E2e(options) => ("e2e", &options.common),
        Mode::Drain(options) => ("drain", &options.common),
    };
    let fixture = common.fixture()?;
    let mut stack_options = common.stack.clone();
    if matches!(cli.mode, Mode::Drain(_)) && stack_options.lease.is_none() {
        // The backlog waits longer than the default 30 s lease: with it, the sweeper would
        // enqueue every waiting event again, once per lease, while its first job still waits.
        stack_options.lease = Some("15m".to_owned());
    }
    let stack = Stack::start(stack_options.clone()).await?;
    eprintln!(
        "run directory {} (logs, metrics, report)",
        stack.run_dir.display()
    );
    let mut report = Report::default();
    report.line(format!(
        "hookline-bench {mode}: load average at start {}; worker concurrency {}; lease {}; \
         fixture {} bytes; enrichment {}",
        procstat::load_average(),
        common.stack.worker_concurrency,
        stack_options.lease.as_deref().unwrap_or("30s (default)"),
        fixture.len(),
        if common.stack.no_enrichment {
            "off (connection without OAuth)"
        } else {
            "on (OAuth connection, fake Atlassian)"
        },
    ));
    report.figure("worker_concurrency", common.stack.worker_concurrency);
    match common.stack.destination {
        None => report.line(
            "subscriptions: four HTTP subscriptions per company (counted, fan-out, two that \
             never match)",
        ),
        Some(kind) => report.line(format!(
            "subscriptions: one {} subscription per company ({} companies)",
            kind.name(),
            common.stack.companies
        )),
    }
    report.figure(
        "destination",
        common
            .stack
            .destination
            .map_or("default", consumer::DestinationKind::name),
    );
    let run_dir = stack.run_dir.clone();
    let (stack, result) = match &cli.mode {
        Mode::E2e(options) => run_e2e(stack, options, fixture, &mut report).await,
        Mode::Drain(options) => run_drain(stack, options, fixture, &mut report).await,
    };
    stack.stop().await;
    result?;
    report.line(format!("load average at end {}", procstat::load_average()));
    report.figure("load_end", procstat::load_average().replace(' ', "/"));
    let text = report.render(mode);
    save(&run_dir, "report.txt", &text);
    print!("{text}");
    Ok(())
}

/// Runs `body` and hands the stack back with its result, so it is always stopped and cleaned up.
async fn with_stack<F>(stack: Stack, body: F) -> (Stack, anyhow::Result<()>)
where
    F: AsyncFnOnce(&mut Stack) -> anyhow::Result<()>,
{
    let mut stack = stack;
    let result = body(&mut stack).await;
    (stack, result)
}

async fn run_e2e(
    stack: Stack,
    options: &E2eOptions,
    fixture: Arc<Vec<u8>>,
    report: &mut Report,
) -> (Stack, anyhow::Result<()>) {
    with_stack(stack, async |stack: &mut Stack| {
        stack.start_worker().await?;
        let watch = Watch::start(SAMPLE_INTERVAL);
        watch_processes(&watch, stack);
        let client = load::client()?;
        let run_id = worker::short_id();

        if !options.warmup.is_zero() {
            let target = target(stack, &fixture, format!("warmup-{run_id}"));
            let (sent, _) = load::open_loop(&client, &target, options.rate, options.warmup).await;
            let accepted = sent.iter().filter(|sent| sent.outcome.is_ok()).count();
            wait_for_deliveries(stack, accepted, options.grace, Duration::ZERO).await;
            let _ = stack.subscriber.take();
            if let Some(fanout) = &stack.fanout {
                let _ = fanout.take();
            }
            eprintln!("warm-up done: {accepted} events");
        }

        let since = chrono::Utc::now();
        watch.reset_samples();
        let hz = procstat::clock_ticks_per_second();
        let before = watch.cpu_snapshot();
        let counters = report::database_counters(&stack.db).await?;
        let load_average = procstat::load_average();
        eprintln!(
            "offering {} webhooks/s for {:?} (load average {load_average})",
            options.rate, options.duration
        );
        let target = target(stack, &fixture, run_id);
        let (sent, in_flight_peak) =
            load::open_loop(&client, &target, options.rate, options.duration).await;
        let accepted = sent.iter().filter(|sent| sent.outcome.is_ok()).count();
        let waited = wait_for_deliveries(stack, accepted, options.grace, options.settle).await;
        let after = watch.cpu_snapshot();
        let received = stack.subscriber.take();
        fanout_line(report, stack.fanout.as_ref(), accepted);
        let counters_after = report::database_counters(&stack.db).await?;

        report.line(format!(
            "offered {} webhooks/s for {:.0} s (load average at the start of the window \
             {load_average}); drained {:.1} s after the last request",
            options.rate,
            options.duration.as_secs_f64(),
            waited.as_secs_f64()
        ));
        report.figure("rate", options.rate);
        report.figure("duration_s", options.duration.as_secs());
        report.figure("load_start", load_average.replace(' ', "/"));
        ingest_section(report, &sent);
        report.line(format!(
            "load generator: most requests in flight at once {in_flight_peak}"
        ));
        let mut lag: Vec<Duration> = sent
            .iter()
            .map(|sent| sent.sent.saturating_duration_since(sent.scheduled))
            .collect();
        latency_line(report, "generator lag (sent - scheduled)", "lag", &mut lag);
        delivery_section(report, &sent, &received);
        report::status_section(report, &stack.db).await?;
        report::stage_section(report, &stack.db, since).await?;
        report::database_section(report, &counters, &counters_after, received.per_event.len());
        report::cpu_section(report, &before, &after, hz);
        report::memory_section(report, &watch);
        metrics_section(report, stack).await;
        Ok(())
    })
    .await
}

async fn run_drain(
    stack: Stack,
    options: &DrainOptions,
    fixture: Arc<Vec<u8>>,
    report: &mut Report,
) -> (Stack, anyhow::Result<()>) {
    with_stack(stack, async |stack: &mut Stack| {
        let watch = Watch::start(SAMPLE_INTERVAL);
        watch_processes(&watch, stack);
        let client = load::client()?;
        let target = target(stack, &fixture, worker::short_id());
        eprintln!(
            "posting {} events with {} concurrent posters, no worker running",
            options.events, options.post_concurrency
        );
        let started = Instant::now();
        let sent =
            load::closed_loop(&client, &target, options.events, options.post_concurrency).await;
        let posting = started.elapsed();
        let accepted = sent.iter().filter(|sent| sent.outcome.is_ok()).count();
        report.line(format!(
            "backlog: {accepted} events accepted in {:.1} s ({:.0} webhooks/s with {} posters, \
             API and load generator only)",
            posting.as_secs_f64(),
            accepted as f64 / posting.as_secs_f64(),
            options.post_concurrency
        ));
        report.figure("backlog", accepted);
        report.figure(
            "backlog_ingest_per_s",
            format!("{:.0}", accepted as f64 / posting.as_secs_f64()),
        );
        ingest_section(report, &sent);

        // Let the API's last commits and pushes settle before the clock starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
        // `process_event` is the queue of hookline before batching (a baseline binary).
        let promoted = stack.promote_scheduled_jobs("process_events").await?
            + stack.promote_scheduled_jobs("process_event").await?;
        report.line(format!(
            "moved {promoted} jobs from apalis-redis' scheduled set to the active list (a \
             backlog over ~8,000 jobs otherwise makes every fetch fail: see BENCHMARKS.md)"
        ));
        // Every drain starts at the same point of Postgres' checkpoint cycle: right after a
        // checkpoint, every page's first change writes a full-page image to the WAL, which made
        // the CPU of identical runs differ by a third depending on where a checkpoint fell.
        if let Err(error) =
            sea_orm::ConnectionTrait::execute_unprepared(&stack.db, "CHECKPOINT").await
        {
            eprintln!("could not run CHECKPOINT before the drain (not a superuser?): {error}");
        }
        let load_average = procstat::load_average();
        let hz = procstat::clock_ticks_per_second();
        let before = watch.cpu_snapshot();
        let counters = report::database_counters(&stack.db).await?;
        watch.reset_samples();
        eprintln!("starting one worker (load average {load_average})");
        let worker_started_at = chrono::Utc::now();
        let worker_started = Instant::now();
        stack.start_worker().await?;
        if let Some(worker) = &stack.worker {
            watch.add("worker (hookline worker)", worker.pid);
        }
        let ready = worker_started.elapsed();
        wait_for_deliveries(stack, accepted, options.timeout, Duration::ZERO).await;
        let drained = worker_started.elapsed();
        let after = watch.cpu_snapshot();
        let received = stack.subscriber.take();
        fanout_line(report, stack.fanout.as_ref(), accepted);
        let counters_after = report::database_counters(&stack.db).await?;

        let throughput = received.per_event.len() as f64 / drained.as_secs_f64();
        report.line(format!(
            "drain: one worker (concurrency {}) delivered {} events in {:.1} s from its start \
             ({throughput:.0} events/s; /metrics answered after {} ms); load average at the \
             start {load_average}",
            stack.concurrency(),
            received.per_event.len(),
            drained.as_secs_f64(),
            ready.as_millis()
        ));
        report.figure("load_start", load_average.replace(' ', "/"));
        report.figure("drain_s", format!("{:.1}", drained.as_secs_f64()));
        report.figure("drain_events_per_s", format!("{throughput:.0}"));
        drain_timeline(report, stack, worker_started_at, accepted).await?;
        delivery_section(report, &sent, &received);
        report::status_section(report, &stack.db).await?;
        report::database_section(report, &counters, &counters_after, received.per_event.len());
        report::cpu_section(report, &before, &after, hz);
        report::memory_section(report, &watch);
        metrics_section(report, stack).await;
        Ok(())
    })
    .await
}

/// The requests to post: the stack's connection, the fixture, and identifiers unique to `run_id`.
fn target(stack: &Stack, fixture: &Arc<Vec<u8>>, run_id: String) -> Target {
    Target {
        connections: stack.connections.clone(),
        issues: stack.options.issues,
        fixture: fixture.clone(),
        run_id: format!("bench-{run_id}"),
    }
}

fn watch_processes(watch: &Watch, stack: &Stack) {
    if let Some(api) = &stack.api {
        watch.add("api (hookline serve)", api.pid);
    }
    if let Some(worker) = &stack.worker {
        watch.add("worker (hookline worker)", worker.pid);
    }
    watch.add(
        "bench (load generator, fakes, subscriber)",
        std::process::id(),
    );
}

/// Waits until `expected` distinct events arrived (or `timeout` passed), then `settle` longer
/// for late duplicates. Returns how long it waited for the events.
async fn wait_for_deliveries(
    stack: &Stack,
    expected: usize,
    timeout: Duration,
    settle: Duration,
) -> Duration {
    let started = Instant::now();
    let fanout_behind = || {
        stack
            .fanout
            .as_ref()
            .is_some_and(|fanout| fanout.distinct_events() < expected)
    };
    while (stack.subscriber.distinct_events() < expected || fanout_behind())
        && started.elapsed() < timeout
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let waited = started.elapsed();
    tokio::time::sleep(settle).await;
    waited
}

/// The fan-out subscriber (a second matching subscription per company): every event once.
fn fanout_line(report: &mut Report, fanout: Option<&subscriber::BenchSubscriber>, accepted: usize) {
    let Some(fanout) = fanout else {
        return;
    };
    let fanout = fanout.take();
    let duplicated = fanout
        .per_event
        .values()
        .filter(|&&count| count > 1)
        .count();
    report.line(format!(
        "fan-out subscription (project ORB, one per company): {} of {accepted} events delivered, \
         {duplicated} duplicated, {} bad signatures",
        fanout.per_event.len(),
        fanout.bad_signatures
    ));
    report.figure("fanout_delivered", fanout.per_event.len());
    report.figure("fanout_duplicated", duplicated);
}

/// Ingest answers: accepted, errors by kind, and the answer latency.
fn ingest_section(report: &mut Report, sent: &[Sent]) {
    let mut errors: HashMap<&str, usize> = HashMap::new();
    for sent in sent {
        if let Err(error) = &sent.outcome {
            *errors.entry(error.as_str()).or_default() += 1;
        }
    }
    let failed: usize = errors.values().sum();
    report.line(format!(
        "ingest: {} requests, {} accepted, {failed} errors",
        sent.len(),
        sent.len() - failed
    ));
    let mut kinds: Vec<_> = errors.into_iter().collect();
    kinds.sort_by_key(|kind| std::cmp::Reverse(kind.1));
    for (kind, count) in kinds.iter().take(5) {
        report.line(format!("  {count} × {kind}"));
    }
    report.figure("requests", sent.len());
    report.figure("ingest_errors", failed);
    let mut answered: Vec<Duration> = sent
        .iter()
        .filter(|sent| sent.outcome.is_ok())
        .map(|sent| sent.answered.duration_since(sent.sent))
        .collect();
    latency_line(
        report,
        "ingest answer (POST → 200)",
        "ingest",
        &mut answered,
    );
}

/// End-to-end latency, lost, duplicated and unexpected events, signatures, enrichment.
fn delivery_section(report: &mut Report, sent: &[Sent], received: &subscriber::Received) {
    let accepted: HashMap<Uuid, &Sent> = sent
        .iter()
        .filter_map(|sent| Some((*sent.outcome.as_ref().ok()?, sent)))
        .collect();
    let mut first_arrival: HashMap<Uuid, Instant> = HashMap::with_capacity(accepted.len());
    for arrival in &received.arrivals {
        first_arrival.entry(arrival.event_id).or_insert(arrival.at);
    }
    let lost = accepted
        .keys()
        .filter(|id| !received.per_event.contains_key(id))
        .count();
    let duplicated = received
        .per_event
        .values()
        .filter(|count| **count > 1)
        .count();
    let accepted_ids: HashSet<&Uuid> = accepted.keys().collect();
    let unexpected = received
        .per_event
        .keys()
        .filter(|id| !accepted_ids.contains(id))
        .count();
    let wrong_seq = received
        .arrivals
        .iter()
        .filter(|arrival| {
            accepted
                .get(&arrival.event_id)
                .is_some_and(|sent| arrival.seq != Some(sent.seq))
        })
        .count();
    report.line(format!(
        "delivered: {} deliveries of {} distinct events; lost {lost}; duplicated {duplicated}; \
         not accepted by ingest but delivered {unexpected}; payload of another event {wrong_seq}; \
         bad signatures {}; unparsable {} (lost = accepted but not delivered within the grace \
         period)",
        received.arrivals.len(),
        received.per_event.len(),
        received.bad_signatures,
        received.unparsable
    ));
    let mut enrichment: Vec<_> = received.enrichment.iter().collect();
    enrichment.sort();
    report.line(format!(
        "enrichment status of the deliveries: {}; every delivery's signature verified",
        enrichment
            .iter()
            .map(|(status, count)| format!("{status} {count}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    report.figure("lost", lost);
    report.figure("duplicated", duplicated);
    report.figure("bad_signatures", received.bad_signatures);
    report.figure(
        "enriched_ok",
        received.enrichment.get("ok").copied().unwrap_or(0),
    );

    let mut end_to_end: Vec<(Instant, Duration)> = accepted
        .iter()
        .filter_map(|(id, sent)| {
            let at = first_arrival.get(id)?;
            Some((sent.sent, at.saturating_duration_since(sent.sent)))
        })
        .collect();
    let mut all: Vec<Duration> = end_to_end.iter().map(|(_, latency)| *latency).collect();
    latency_line(report, "end to end (POST → subscriber)", "e2e", &mut all);

    // p99 per 10-second window of send time: shows warm-up, drift and stalls.
    end_to_end.sort_by_key(|(sent, _)| *sent);
    if let Some((start, _)) = end_to_end.first().copied() {
        let mut windows: Vec<Vec<Duration>> = Vec::new();
        for (sent, latency) in &end_to_end {
            let index = (sent.duration_since(start).as_secs() / 10) as usize;
            if windows.len() <= index {
                windows.resize(index + 1, Vec::new());
            }
            windows[index].push(*latency);
        }
        let line = windows
            .iter_mut()
            .map(|window| {
                window.sort_unstable();
                ms(report::percentile(window, 99.0))
            })
            .collect::<Vec<_>>()
            .join(" ");
        report.line(format!("end-to-end p99 per 10 s of sending (ms): {line}"));
    }
}

/// When the ProcessEvents stage and the deliveries finished, from the rows (worker clocks).
async fn drain_timeline(
    report: &mut Report,
    stack: &Stack,
    worker_started_at: chrono::DateTime<chrono::Utc>,
    accepted: usize,
) -> anyhow::Result<()> {
    use sea_orm::{ConnectionTrait, DbBackend, Statement};
    let sql = "SELECT \
        (SELECT extract(epoch FROM max(processed_at) - $1)::float8 FROM webhook_event) AS processed, \
        (SELECT extract(epoch FROM min(processed_at) - $1)::float8 FROM webhook_event) AS first_processed, \
        (SELECT extract(epoch FROM max(delivered_at) - $1)::float8 FROM delivery) AS delivered";
    let row = stack
        .db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            [worker_started_at.into()],
        ))
        .await
        .context("querying the drain timeline")?
        .context("no row for the drain timeline")?;
    let seconds = |name: &str| -> anyhow::Result<f64> {
        Ok(row
            .try_get::<Option<f64>>("", name)
            .with_context(|| format!("reading {name}"))?
            .unwrap_or(0.0))
    };
    let (first, processed, delivered) = (
        seconds("first_processed")?,
        seconds("processed")?,
        seconds("delivered")?,
    );
    report.line(format!(
        "timeline from the worker's start (rows): first event processed at {first:.2} s, all \
         processed at {processed:.1} s ({:.0} events/s through ProcessEvents), last delivery at \
         {delivered:.1} s",
        accepted as f64 / processed.max(f64::EPSILON)
    ));
    report.figure(
        "process_events_per_s",
        format!("{:.0}", accepted as f64 / processed.max(f64::EPSILON)),
    );
    Ok(())
}

/// Saves both processes' final `/metrics` and prints the means of their duration histograms.
async fn metrics_section(report: &mut Report, stack: &Stack) {
    report.line("Mean durations from /metrics (whole run, warm-up included):");
    match stack.api_metrics().await {
        Ok(text) => {
            save(&stack.run_dir, "api-metrics.txt", &text);
            report::histogram_means(report, "api", &text);
        }
        Err(error) => report.line(format!("  api metrics unavailable: {error:#}")),
    }
    match stack.worker_metrics().await {
        Ok(text) => {
            save(&stack.run_dir, "worker-metrics.txt", &text);
            report::histogram_means(report, "worker", &text);
        }
        Err(error) => report.line(format!("  worker metrics unavailable: {error:#}")),
    }
}
