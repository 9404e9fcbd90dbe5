//! Runs the workers of every queue, and the sweeper, until shutdown.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use apalis::prelude::{BackendExt, Event, Monitor, WorkerBuilder, WorkerBuilderExt};
use apalis_redis::RedisStorage;
use apalis_sqlite::SqliteStorage;
use sea_orm::DatabaseConnection;

use crate::jobs::{ProcessEvent, process_event};
use crate::queue::{Job, JobQueue};
use crate::{WorkerSettings, sweeper};

/// What every job handler gets: the database, the queue, the settings.
#[derive(Debug, Clone)]
pub struct JobContext {
    /// The database (the source of truth).
    pub db: DatabaseConnection,
    /// The queue, to push follow-up jobs.
    pub queue: JobQueue,
    /// How workers behave.
    pub settings: Arc<WorkerSettings>,
}

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

    let settings = &ctx.settings;
    let concurrency = settings.concurrency.max(1);
    let batch_size = concurrency.min(10);
    let name = |queue: &str| format!("{}-{queue}", settings.process_name);

    let monitor = match &ctx.queue {
        JobQueue::Redis { conn, .. } => {
            let config = apalis_redis::Config::default()
                .queue(ctx.queue.queue_name::<ProcessEvent>())
                .batch_size(batch_size)
                // A crashed worker's jobs come back after heartbeat × missed heartbeats.
                .heartbeat_interval(Duration::from_secs(5))
                .missed_heartbeats(3);
            let backend = RedisStorage::<ProcessEvent>::new(conn.clone())
                .with_config(config)
                .poll_with_interval(settings.poll_interval);
            let (ctx, name) = (ctx.clone(), name(ProcessEvent::QUEUE));
            monitor.register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(backend.clone())
                    .data(ctx.clone())
                    .concurrency(concurrency)
                    .build(process_event::handle)
            })
        }
        JobQueue::Sqlite { pool, .. } => {
            let config = apalis_sqlite::Config::default()
                .queue(ctx.queue.queue_name::<ProcessEvent>())
                .batch_size(batch_size)
                .heartbeat_interval(Duration::from_secs(5))
                .missed_heartbeats(3);
            let backend = SqliteStorage::<ProcessEvent>::new(pool)
                .with_config(config)
                .poll_with_interval(settings.poll_interval);
            let (ctx, name) = (ctx.clone(), name(ProcessEvent::QUEUE));
            monitor.register(move |_| {
                WorkerBuilder::new(name.clone())
                    .backend(backend.clone())
                    .data(ctx.clone())
                    .concurrency(concurrency)
                    .build(process_event::handle)
            })
        }
    };

    let result = monitor
        .run_with_signal(signal)
        .await
        .context("the workers stopped with an error");
    sweeper.abort();
    result
}
