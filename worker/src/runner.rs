//! Runs the workers of every queue, and the sweeper, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apalis::prelude::{
    BackendExt, Event, EventListenerExt, WorkerBuilder, WorkerBuilderExt, WorkerContext,
    WorkerError,
};
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use crate::jobs::{Deliver, DeliverRetry, ProcessEvents, deliver, process_events};
use crate::queue::{Job, JobQueue};
use crate::wake::WakeOrPoll;
use crate::{WorkerSettings, sampler, sweeper};

/// What every job handler gets: the database, the queue, the settings.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The database (the source of truth).
    pub db: DatabaseConnection,
    /// The queue, to push follow-up jobs.
    pub queue: JobQueue,
    /// How workers behave.
    pub settings: Arc<WorkerSettings>,
    /// The Jira REST client (enrichment) and, through it, the OAuth token manager.
    pub jira: plugins::jira::rest::JiraClient,
    /// Decrypts subscription signing secrets.
    pub cipher: entity::cipher::Cipher,
    /// The HTTP client deliveries are sent with (see [`crate::destination::http::subscriber_client`]).
    pub subscriber_client: reqwest::Client,
    /// Subscriptions per company, shared by the batches of this process.
    pub subscriptions: Arc<crate::subscription_cache::SubscriptionCache>,
    /// Merges the `ProcessEvents` jobs running at once in this process into one batch.
    pub event_batches: Arc<crate::event_batches::EventBatches>,
    /// The batches running in tasks of their own; shutdown waits for them.
    pub running_batches: Arc<crate::running_batches::RunningBatches>,
    /// Broker connections (Redis Streams, AMQP, NATS), pooled per destination.
    pub destinations: Arc<crate::destination::pool::DestinationPool>,
}

/// Spawns, on `$tasks`, the supervised worker of one job type for whichever backend the queue
/// uses (see [`supervise`]). Adding a job is one line in [`run_workers`].
macro_rules! spawn_worker {
    ($tasks:expr, $ctx:expr, $stop:expr, $job:ty, $handler:path) => {{
        let settings = &$ctx.settings;
        let concurrency = settings.concurrency.max(1);
        let batch_size = fetch_batch_size(concurrency);
        let name = format!("{}-{}", settings.process_name, <$job as Job>::QUEUE);
        let queue = $ctx.queue.queue_name::<$job>();
        let poll_interval = settings.poll_interval;
        let ctx = $ctx.clone();
        let stop = $stop.clone();
        let run_once = move || -> BoxFuture<'static, Result<(), WorkerError>> {
            let ctx = ctx.clone();
            let name = name.clone();
            let signal = stop_signal(stop.clone());
            match &ctx.queue {
                JobQueue::Redis { conn, .. } => {
                    let config = apalis_redis::Config::default()
                        .queue(&queue)
                        .batch_size(batch_size)
                        // A crashed worker's jobs come back after heartbeat × missed heartbeats.
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = RedisStorage::<$job>::new(conn.clone())
                        .with_config(config)
                        // Fetch when a push wakes the worker, and every `poll_interval` regardless
                        // (Redis pub/sub delivers at most once).
                        .poll_with_strategy(WakeOrPoll::new(
                            ctx.queue.wake_stream::<$job>(),
                            poll_interval,
                        ));
                    let worker = WorkerBuilder::new(name)
                        .backend(backend)
                        .data(ctx.clone())
                        .concurrency(concurrency)
                        .on_event(log_handler_errors)
                        .build($handler);
                    worker.run_until(signal).boxed()
                }
                JobQueue::Sqlite { pool, .. } => {
                    let config = apalis_sqlite::Config::default()
                        .queue(&queue)
                        .batch_size(batch_size)
                        .heartbeat_interval(HEARTBEAT)
                        .missed_heartbeats(MISSED_HEARTBEATS);
                    let backend = SqliteStorage::<$job>::new(pool)
                        .with_config(config)
                        // Fetch when a push wakes the worker, and every `poll_interval` regardless
                        // (Redis pub/sub delivers at most once).
                        .poll_with_strategy(WakeOrPoll::new(
                            ctx.queue.wake_stream::<$job>(),
                            poll_interval,
                        ));
                    let worker = WorkerBuilder::new(name)
                        .backend(backend)
                        .data(ctx.clone())
                        .concurrency(concurrency)
                        .on_event(log_handler_errors)
                        .build($handler);
                    worker.run_until(signal).boxed()
                }
            }
        };
        $tasks.spawn(supervise(<$job as Job>::QUEUE, $stop.clone(), run_once));
    }};
}

/// How many jobs one fetch takes from the queue: as many as the worker runs at once.
///
/// apalis (1.0, Redis and SQLite alike) reports every task's lock and completion to its backend
/// through a channel of `4 × batch_size` events, which the worker drains only when its own loop
/// runs; a finished task waits for room in that channel before it gives its concurrency slot
/// back. With `concurrency` tasks running and the loop parked on the concurrency limit, up to
/// `2 × concurrency` events (plus those of the one task started after the last drain) are
/// waiting. A smaller channel filled up when a wave of tasks finished together: they all waited
/// on the channel, the loop waited on their slots, and nothing moved until the heartbeat timer
/// woke the loop (5 s: measured as stalls of 2 to 4.4 s of every delivery at 1,000 events/s
/// with `batch_size` 10 and concurrency 32). With `batch_size = concurrency` the channel holds
/// `4 × concurrency` events, so a finishing task never waits on it. apalis-redis also needs
/// `batch_size <= concurrency`.
pub fn fetch_batch_size(concurrency: usize) -> usize {
    concurrency.max(1)
}

/// Worker heartbeat; with [`MISSED_HEARTBEATS`] it bounds how long a crashed worker's jobs stay
/// invisible in apalis (the database lease and the sweeper recover them regardless).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Missed heartbeats before apalis considers a worker dead.
const MISSED_HEARTBEATS: usize = 3;

/// How long in-flight jobs get to finish after a shutdown signal.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

/// A worker that ran this long before failing starts its restart backoff from the beginning.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// Longest wait before a failed worker is started again: a queue backend that is back is used
/// again within this time.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(10);

/// Runs all workers and the sweeper until `shutdown` completes, then lets in-flight jobs finish
/// (up to a timeout). What is left unfinished stays claimed in the database and is handed out
/// again by a sweeper once its lease expires.
pub async fn run_workers(
    ctx: JobContext,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweeper::run(ctx.clone(), stop_rx.clone()));
    let sampler = tokio::spawn(sampler::run(ctx.clone(), stop_rx.clone()));
    let _token_keeper = tokio::spawn(crate::token_keeper::run(ctx.clone(), stop_rx.clone()));
    let _retention = tokio::spawn(crate::retention::run(ctx.clone(), stop_rx.clone()));
    let _renewal = tokio::spawn(crate::jira_webhook_renewal::run(
        ctx.clone(),
        stop_rx.clone(),
    ));
    let _pool_pruning = tokio::spawn(crate::destination::pool::run_pruning(
        ctx.destinations.clone(),
        ctx.db.clone(),
        stop_rx.clone(),
    ));

    let mut workers = tokio::task::JoinSet::new();
    if let JobQueue::Redis { client, .. } = &ctx.queue {
        let wakers = ctx.queue.wakers().clone();
        workers.spawn(crate::wake::listen(client.clone(), wakers, stop_rx.clone()));
    }
    spawn_worker!(workers, ctx, stop_rx, ProcessEvents, process_events::handle);
    spawn_worker!(workers, ctx, stop_rx, Deliver, deliver::handle);
    spawn_worker!(workers, ctx, stop_rx, DeliverRetry, deliver::handle_retry);

    shutdown.await;
    let _ = stop_tx.send(true);
    let mut result = Ok(());
    while let Some(joined) = workers.join_next().await {
        if let Err(error) = joined {
            result = Err(anyhow::Error::new(error).context("a worker task panicked"));
        }
    }
    // A batch whose handler apalis stopped without waiting still runs in its own task: let it
    // finish its attempts and record them before the process exits.
    let running = ctx.running_batches.count();
    if running > 0 {
        tracing::info!(
            batches = running,
            "waiting for the running batches to finish"
        );
        if tokio::time::timeout(SHUTDOWN_TIMEOUT, ctx.running_batches.idle())
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?SHUTDOWN_TIMEOUT, batches = ctx.running_batches.count(), "batches did not finish before the shutdown timeout; the sweeper hands their rows out again");
        }
    }
    sweeper.abort();
    sampler.abort();
    result
}

/// Runs the worker that `run_once` builds until shutdown, and builds and runs it again whenever
/// it stops with an error.
///
/// An apalis worker ends for good when its backend fails (Redis restarted or unreachable, the
/// SQLite queue locked): without this, a worker process would stay up but stop taking jobs of
/// that queue until it is restarted by hand. Restarts wait with exponential backoff (0.5 s up
/// to [`MAX_RESTART_DELAY`], jitter), reset once a worker has run for [`HEALTHY_RUN`]. Jobs lost meanwhile are recovered
/// from the database by the sweeper.
async fn supervise<F>(queue: &'static str, mut stop: watch::Receiver<bool>, run_once: F)
where
    F: Fn() -> BoxFuture<'static, Result<(), WorkerError>>,
{
    let new_backoff = || {
        backon::BackoffBuilder::build(
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(500))
                .with_max_delay(MAX_RESTART_DELAY)
                .with_jitter()
                .without_max_times(),
        )
    };
    let mut backoff = new_backoff();
    let mut restarts: u64 = 0;
    loop {
        let started = tokio::time::Instant::now();
        let run = run_once();
        let mut stopping = stop.clone();
        let result = tokio::select! {
            result = run => result,
            () = async {
                let _ = stopping.wait_for(|stop| *stop).await;
                tokio::time::sleep(SHUTDOWN_TIMEOUT).await;
            } => {
                tracing::warn!(queue, timeout = ?SHUTDOWN_TIMEOUT, "in-flight jobs did not finish before the shutdown timeout; the sweeper hands their rows out again");
                return;
            }
        };
        let error = match result {
            Ok(()) => return,
            Err(error) => error,
        };
        if *stop.borrow() {
            tracing::warn!(queue, error = %error, "worker stopped with an error while shutting down");
            return;
        }
        if started.elapsed() > HEALTHY_RUN {
            backoff = new_backoff();
        }
        let delay = backoff.next().unwrap_or(MAX_RESTART_DELAY);
        restarts += 1;
        metrics::counter!("hookline_worker_restarts_total", "queue" => queue).increment(1);
        tracing::error!(
            queue,
            error = %error,
            restarts,
            restart_in_ms = delay.as_millis() as u64,
            "worker stopped with an error; restarting it"
        );
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// A future that completes once `stop` turns true (the worker's shutdown signal).
async fn stop_signal(mut stop: watch::Receiver<bool>) -> Result<(), WorkerError> {
    // A dropped sender means the process is going away: stop as well.
    let _ = stop.wait_for(|stop| *stop).await;
    Ok(())
}

/// Handler errors are logged by the handlers; this makes failures apalis reports visible too.
fn log_handler_errors(worker: &WorkerContext, event: &Event) {
    if let Event::Error(error) = event {
        tracing::error!(worker = worker.name(), error = %error, "worker error");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use apalis::prelude::TaskSink;
    use sea_orm::sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    const CONCURRENCY: usize = 32;
    /// Forty waves of `CONCURRENCY` tasks finishing together.
    const TASKS: usize = 40 * CONCURRENCY;

    /// Waits until all `CONCURRENCY` running tasks are there, then lets them finish together:
    /// the wave of completions that filled apalis' event channel when `batch_size` was 10.
    async fn finish_together(
        _task: u32,
        barrier: apalis::prelude::Data<Arc<tokio::sync::Barrier>>,
        done: apalis::prelude::Data<Arc<AtomicUsize>>,
        worker: WorkerContext,
    ) -> Result<(), std::io::Error> {
        barrier.wait().await;
        if done.fetch_add(1, Ordering::SeqCst) + 1 == TASKS {
            worker
                .stop()
                .map_err(|error| std::io::Error::other(error.to_string()))?;
        }
        Ok(())
    }

    /// Waves of tasks finishing at once never block on apalis' event channel (see
    /// [`fetch_batch_size`]). The heartbeat is an hour here: with `batch_size` 10 the finished
    /// tasks waited on the full channel and the worker hung (at shutdown here; mid-run, in
    /// production, until its next heartbeat), and the timeout below fails the test.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tasks_finishing_together_do_not_wait_for_the_heartbeat() {
        let path = std::env::temp_dir().join(format!(
            "hookline-fetch-batch-{}.sqlite",
            uuid::Uuid::new_v4()
        ));
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await
            .expect("open a SQLite file");
        SqliteStorage::<()>::migrations()
            .run(&pool)
            .await
            .expect("create apalis' tables");
        let config = apalis_sqlite::Config::default()
            .queue("finish-together")
            .batch_size(fetch_batch_size(CONCURRENCY))
            .heartbeat_interval(Duration::from_secs(3600));
        let mut storage = SqliteStorage::<u32>::new(&pool).with_config(config);
        for task in 0..TASKS as u32 {
            storage.push(task).await.expect("push a task");
        }
        let done = Arc::new(AtomicUsize::new(0));
        let worker = WorkerBuilder::new("finish-together")
            .backend(storage.poll_with_strategy(WakeOrPoll::new(
                crate::wake::Wakers::default().stream("finish-together"),
                Duration::from_millis(10),
            )))
            .data(Arc::new(tokio::sync::Barrier::new(CONCURRENCY)))
            .data(done.clone())
            .concurrency(CONCURRENCY)
            .build(finish_together);
        let run = tokio::time::timeout(Duration::from_secs(60), worker.run()).await;
        let finished = done.load(Ordering::SeqCst);
        let _ = std::fs::remove_file(&path);
        assert!(
            run.is_ok(),
            "the worker hung after {finished} of {TASKS} tasks (finished tasks waiting on apalis' event channel)"
        );
        assert_eq!(finished, TASKS);
    }
}
