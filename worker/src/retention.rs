//! Retention: events older than the retention period are deleted with their deliveries and
//! delivery attempts, so that the database does not grow without bound (at 1,000 events/s the
//! raw bodies alone add hundreds of GB a day).
//!
//! - Once per period across all workers ([`crate::periodic`]): every worker checks on its own
//!   timer, one of them runs.
//! - In bounded batches, each its own short transaction, with a pause between them: on SQLite
//!   ingest's writes get the write lock between two batches; on Postgres nothing ingest touches
//!   is locked.
//! - An event is kept while it is not finished (`received`, `processing`) or while any of its
//!   deliveries is not (`pending`, `in_flight`: waiting for a retry counts). Its deliveries are
//!   deleted only once finished (`succeeded`, `dead`), and the event only once it has no
//!   delivery left, so a delivery retried by hand while a batch runs is never deleted.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use entity::{delivery, delivery_attempt, periodic_task, webhook_event};
use sea_orm::sea_query::Query;
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter, QuerySelect, TransactionTrait};
use tokio::sync::watch;
use uuid::Uuid;

use crate::periodic;
use crate::runner::JobContext;

/// Events examined per batch (each batch is one transaction).
pub const BATCH: u64 = 500;

/// The pause between two batches, so other writers get the database in between.
const PAUSE: Duration = Duration::from_millis(20);

/// How often each worker asks whether a retention run is due; the run itself happens once per
/// [`crate::WorkerSettings::retention_interval`] across all workers.
const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long a worker's claim on a run holds before another worker may take over.
const CLAIM_HOLD: Duration = Duration::from_secs(3600);

/// Rows one run deleted, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// `webhook_event` rows.
    pub events: u64,
    /// `delivery` rows.
    pub deliveries: u64,
    /// `delivery_attempt` rows.
    pub attempts: u64,
}

/// Checks every minute (and at start-up) whether a retention run is due and runs it, until
/// `stop` turns true. Does nothing when retention is off.
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let Some(retention) = ctx.settings.retention else {
        return;
    };
    let mut interval = tokio::time::interval(CHECK_INTERVAL.min(ctx.settings.retention_interval));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        match run_if_due(&ctx, retention, &mut stop).await {
            Ok(Some(pruned)) if pruned != Pruned::default() => {
                tracing::info!(
                    events = pruned.events,
                    deliveries = pruned.deliveries,
                    attempts = pruned.attempts,
                    "retention pruned old rows"
                );
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(error = format!("{error:#}"), "retention run failed"),
        }
    }
}

/// Runs retention if this worker gets the due run; returns what it deleted (None: not due, or
/// another worker has it).
pub async fn run_if_due(
    ctx: &JobContext,
    retention: Duration,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Option<Pruned>> {
    let Some(run) = periodic::claim(
        &ctx.db,
        periodic_task::name::RETENTION,
        ctx.settings.retention_interval,
        CLAIM_HOLD,
    )
    .await?
    else {
        return Ok(None);
    };
    let result = prune(ctx, retention, stop).await;
    let error = result.as_ref().err().map(|error| format!("{error:#}"));
    run.finish(&ctx.db, error).await?;
    result.map(Some)
}

/// Deletes, batch by batch, everything older than `retention` that may go. Stops early when
/// `stop` turns true (the next run goes on where this one stopped).
pub async fn prune(
    ctx: &JobContext,
    retention: Duration,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<Pruned> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention)?;
    let mut total = Pruned::default();
    loop {
        let (pruned, examined) = prune_batch(ctx, cutoff).await?;
        total.events += pruned.events;
        total.deliveries += pruned.deliveries;
        total.attempts += pruned.attempts;
        // Nothing deleted from a full batch: its events gained deliveries meanwhile (retried by
        // hand); the next run looks again.
        if examined < BATCH || pruned.events == 0 || *stop.borrow() {
            return Ok(total);
        }
        tokio::time::sleep(PAUSE).await;
    }
}

/// One batch: up to [`BATCH`] old, finished events without an unfinished delivery. Returns what
/// was deleted and how many events were examined.
async fn prune_batch(
    ctx: &JobContext,
    cutoff: chrono::DateTime<Utc>,
) -> anyhow::Result<(Pruned, u64)> {
    let unfinished_deliveries = Query::select()
        .column(delivery::Column::EventId)
        .from(delivery::Entity)
        // Holds for every unfinished delivery; lets Postgres read the undelivered rows'
        // partial index (migration `hot_delivery_claims`) instead of the whole table.
        .and_where(delivery::Column::DeliveredAt.is_null())
        .and_where(
            delivery::Column::Status
                .is_in([delivery::status::PENDING, delivery::status::IN_FLIGHT]),
        )
        .to_owned();
    let ids: Vec<Uuid> = webhook_event::Entity::find()
        .select_only()
        .column(webhook_event::Column::Id)
        .filter(webhook_event::Column::ReceivedAt.lt(cutoff))
        .filter(webhook_event::Column::Status.is_in([
            webhook_event::status::PROCESSED,
            webhook_event::status::FAILED,
        ]))
        .filter(webhook_event::Column::Id.not_in_subquery(unfinished_deliveries))
        .limit(BATCH)
        .into_tuple()
        .all(&ctx.db)
        .await
        .context("could not find old events")?;
    if ids.is_empty() {
        return Ok((Pruned::default(), 0));
    }
    let examined = ids.len() as u64;

    let finished = || {
        Condition::all()
            .add(delivery::Column::EventId.is_in(ids.iter().copied()))
            .add(
                delivery::Column::Status
                    .is_in([delivery::status::SUCCEEDED, delivery::status::DEAD]),
            )
    };
    let finished_deliveries = Query::select()
        .column(delivery::Column::Id)
        .from(delivery::Entity)
        .cond_where(finished())
        .to_owned();
    let any_delivery = Query::select()
        .column(delivery::Column::EventId)
        .from(delivery::Entity)
        .and_where(delivery::Column::EventId.is_in(ids.iter().copied()))
        .to_owned();

    let txn = ctx
        .db
        .begin()
        .await
        .context("could not start a transaction")?;
    let attempts = delivery_attempt::Entity::delete_many()
        .filter(delivery_attempt::Column::DeliveryId.in_subquery(finished_deliveries))
        .exec(&txn)
        .await
        .context("could not delete old delivery attempts")?
        .rows_affected;
    let deliveries = delivery::Entity::delete_many()
        .filter(finished())
        .exec(&txn)
        .await
        .context("could not delete old deliveries")?
        .rows_affected;
    let events = webhook_event::Entity::delete_many()
        .filter(webhook_event::Column::Id.is_in(ids.iter().copied()))
        .filter(webhook_event::Column::Id.not_in_subquery(any_delivery))
        .exec(&txn)
        .await
        .context("could not delete old events")?
        .rows_affected;
    txn.commit()
        .await
        .context("could not commit a retention batch")?;

    let counter = |table: &'static str, rows: u64| {
        metrics::counter!("hookline_retention_pruned_total", "table" => table).increment(rows);
    };
    counter("webhook_event", events);
    counter("delivery", deliveries);
    counter("delivery_attempt", attempts);
    Ok((
        Pruned {
            events,
            deliveries,
            attempts,
        },
        examined,
    ))
}
