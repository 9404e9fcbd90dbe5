//! Runs the workers of every queue, and the sweeper, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::{BackendExt, Event, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use sea_orm::DatabaseConnection;

use crate::jobs::{Deliver, DeliverRetry, ProcessEvent, deliver, process_event};
use crate::queue::{Job, JobQueue};
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
    /// The HTTP client deliveries are sent with (see [`deliver::subscriber_client`]).
    pub subscriber_client: reqwest::Client,
}

/// Registers the worker of one job type on the monitor, for whichever backend the queue uses.
/// Adding a job is one line in [`run_workers`].
macro_rules! register {
    ($monitor:expr, $ctx:expr, $job:ty, $handler:path) => {{
        let settings = &$ctx.settings;
        let concurrency = settings.concurrency.max(1);
        // apalis-redis needs batch_size <= concurrency.
        let batch_size = concurrency.min(10);
        let name = format!("{}-{}", settings.process_name, <$job as Job>::QUEUE);
        let queue = $ctx.queue.queue_name::<$job>();
        let ctx = $ctx.clone();
        match &$ctx.queue {
            JobQueue::Redis { conn, .. } => {
                let config = apalis_redis::Config::default()
                    .queue(queue)
                    .batch_size(batch_size)
                    // A crashed worker's jobs come back after heartbeat × missed heartbeats.
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS);
                let backend = RedisStorage::<$job>::new(conn.clone())
                    .with_config(config)
                    .poll_with_interval(settings.poll_interval);
                $monitor.register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(backend.clone())
                        .data(ctx.clone())
                        .concurrency(concurrency)
                        .build($handler)
                })
            }
            JobQueue::Sqlite { pool, .. } => {
                let config = apalis_sqlite::Config::default()
                    .queue(queue)
                    .batch_size(batch_size)
                    .heartbeat_interval(HEARTBEAT)
                    .missed_heartbeats(MISSED_HEARTBEATS);
                let backend = SqliteStorage::<$job>::new(pool)
                    .with_config(config)
                    .poll_with_interval(settings.poll_interval);
                $monitor.register(move |_| {
                    WorkerBuilder::new(name.clone())
                        .backend(backend.clone())
                        .data(ctx.clone())
                        .concurrency(concurrency)
                        .build($handler)
                })
            }
        }
    }};
}

/// Worker heartbeat; with [`MISSED_HEARTBEATS`] it bounds how long a crashed worker's jobs stay
/// invisible in apalis (the database lease and the sweeper recover them regardless).
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Missed heartbeats before apalis considers a worker dead.
const MISSED_HEARTBEATS: usize = 3;

/// How long in-flight jobs get to finish after a shutdown signal.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

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

    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
        Ok(())
    };
    let monitor = Monitor::new()
        .shutdown_timeout(SHUTDOWN_TIMEOUT)
        .on_event(|worker, event| {
            // `run_with_signal` returns Ok even when a worker failed; say so loudly here.
            if let Event::Error(error) = event {
                tracing::error!(worker = worker.name(), error = %error, "worker error");
            }
        });

    let monitor = register!(monitor, ctx, ProcessEvent, process_event::handle);
    let monitor = register!(monitor, ctx, Deliver, deliver::handle);
    let monitor = register!(monitor, ctx, DeliverRetry, deliver::handle_retry);
    let result = monitor
        .run_with_signal(signal)
        .await
        .context("the workers stopped with an error");
    sweeper.abort();
    sampler.abort();
    result
}
