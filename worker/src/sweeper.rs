//! The sweeper: finds rows whose job was lost and enqueues them again, once per lost job.
//!
//! A job is lost when Redis restarts without persistence (or is flushed), when a process dies
//! between the database commit and the push, or when a worker dies holding a claim. Every stage
//! writes `locked_until` (the ingest a grace for the row's own job, a claim its lease, a
//! scheduled retry its due time plus a grace), so a row is *due* when it is not finished and
//! `locked_until` has passed.
//!
//! A due row is not necessarily lost: during a backlog its job is simply still waiting in the
//! queue. So the sweeper re-enqueues due rows only when
//! - the stage's queue has no job ready to run (whatever is due then has no job waiting), or
//! - the queue lost everything since the last sweep (a marker key the sweeper keeps in Redis,
//!   and the API writes when it starts, is gone): then every unfinished row not held by a live claim is enqueued at once, grace or
//!   not, so a Redis restart delays nothing by more than a sweep interval.
//!
//! Rows are released with a conditional UPDATE that moves `locked_until` forward, so several
//! sweepers (one per worker process) never enqueue one row twice in one round, and running a
//! job twice is harmless: it starts by claiming its rows.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::webhook_event::{self, status};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use tokio::sync::watch;
use uuid::Uuid;

use crate::janitor;
use crate::jobs::{Deliver, DeliverRetry, ProcessEvents};
use crate::runner::JobContext;
use crate::sql;

/// Most rows released per statement; a sweep repeats until fewer are due.
const BATCH: u64 = 1000;

/// Runs a sweep every `sweep_interval` until `stop` turns true.
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(ctx.settings.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        let queue_lost_jobs = match ctx.queue.mark_alive().await {
            Ok(lost) => lost,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "the queue does not answer; sweeping later"
                );
                continue;
            }
        };
        if queue_lost_jobs {
            tracing::info!(
                "the queue holds none of the jobs it had (a restart or flush); re-enqueuing every unfinished row"
            );
        }
        match sweep_once(&ctx, queue_lost_jobs).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "sweeper re-enqueued lost events"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "sweep failed"),
        }
        match sweep_deliveries_once(&ctx, queue_lost_jobs).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "sweeper re-enqueued lost deliveries"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "delivery sweep failed"),
        }
        match janitor::clean_once(&ctx).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "janitor removed finished jobs from the queue"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "queue cleanup failed"),
        }
    }
}

/// One sweep of events. With `queue_lost_jobs`, every `received` row is enqueued, grace or not.
/// Returns how many were enqueued.
pub async fn sweep_once(ctx: &JobContext, queue_lost_jobs: bool) -> anyhow::Result<usize> {
    if !queue_lost_jobs && ctx.queue.backlog::<ProcessEvents>().await?.ready > 0 {
        // Jobs are waiting: the due rows are (still) theirs.
        return Ok(0);
    }
    let mut total = 0;
    loop {
        let ids = release_due_events(ctx, queue_lost_jobs).await?;
        let jobs: Vec<ProcessEvents> = ids
            .chunks(ctx.settings.event_batch_size.max(1))
            .map(|chunk| ProcessEvents {
                event_ids: chunk.to_vec(),
            })
            .collect();
        ctx.queue
            .push_all(jobs)
            .await
            .context("could not re-enqueue events")?;
        metrics::counter!("hookline_sweeper_requeued_total", "stage" => "process_event")
            .increment(ids.len() as u64);
        total += ids.len();
        if (ids.len() as u64) < BATCH {
            return Ok(total);
        }
    }
}

/// Puts due events back to `received` with a fresh grace period and returns their ids.
///
/// A `processing` row whose lease expired goes back to `received` too: its worker is presumed
/// dead, and if it is not, the `attempts` fence stops it from writing its late result.
async fn release_due_events(ctx: &JobContext, ignore_grace: bool) -> anyhow::Result<Vec<Uuid>> {
    let now = Utc::now();
    let due = || {
        let expired = Condition::any()
            .add(webhook_event::Column::LockedUntil.is_null())
            .add(webhook_event::Column::LockedUntil.lt(now));
        let waiting = if ignore_grace {
            Condition::all().add(sql::status_is(status::RECEIVED))
        } else {
            Condition::all()
                .add(sql::status_is(status::RECEIVED))
                .add(expired.clone())
        };
        let abandoned = Condition::all()
            .add(sql::status_is(status::PROCESSING))
            .add(expired);
        // `processed_at IS NULL` holds for exactly these rows; it lets Postgres read them
        // through the unfinished rows' partial index (migration `hot_event_claims`).
        Condition::all()
            .add(webhook_event::Column::ProcessedAt.is_null())
            .add(Condition::any().add(waiting).add(abandoned))
    };
    let due_ids = Query::select()
        .column(webhook_event::Column::Id)
        .from(webhook_event::Entity)
        .cond_where(due())
        .limit(BATCH)
        .to_owned();
    let released = webhook_event::Entity::update_many()
        .col_expr(webhook_event::Column::Status, Expr::value(status::RECEIVED))
        .col_expr(
            webhook_event::Column::LockedUntil,
            Expr::value(now + ctx.settings.lease),
        )
        .filter(webhook_event::Column::Id.in_subquery(due_ids))
        .filter(due())
        .exec_with_returning(&ctx.db)
        .await
        .context("could not release due events")?;
    Ok(released.into_iter().map(|event| event.id).collect())
}

/// One sweep of deliveries: enqueues every due delivery of an enabled subscription whose job is
/// lost (see the module documentation). Returns how many were enqueued.
pub async fn sweep_deliveries_once(
    ctx: &JobContext,
    queue_lost_jobs: bool,
) -> anyhow::Result<usize> {
    if !queue_lost_jobs {
        let first = ctx.queue.backlog::<Deliver>().await?.ready;
        let retries = ctx.queue.backlog::<DeliverRetry>().await?.ready;
        if first + retries > 0 {
            return Ok(0);
        }
    }
    let mut total = 0;
    loop {
        let released = release_due_deliveries(ctx, queue_lost_jobs).await?;
        let (first, retries): (Vec<_>, Vec<_>) =
            released.iter().partition(|(_, attempts)| *attempts == 0);
        let batch = ctx.settings.deliver_batch_size.max(1);
        let ids = |rows: &[&(Uuid, i32)]| -> Vec<Vec<Uuid>> {
            rows.chunks(batch)
                .map(|chunk| chunk.iter().map(|(id, _)| *id).collect())
                .collect()
        };
        ctx.queue
            .push_all(
                ids(&first)
                    .into_iter()
                    .map(|delivery_ids| Deliver { delivery_ids })
                    .collect(),
            )
            .await
            .context("could not re-enqueue deliveries")?;
        ctx.queue
            .push_all(
                ids(&retries)
                    .into_iter()
                    .map(|delivery_ids| DeliverRetry { delivery_ids })
                    .collect(),
            )
            .await
            .context("could not re-enqueue retries")?;
        metrics::counter!("hookline_sweeper_requeued_total", "stage" => "deliver")
            .increment(released.len() as u64);
        total += released.len();
        if (released.len() as u64) < BATCH {
            return Ok(total);
        }
    }
}

/// Puts due deliveries back to `pending` with a fresh grace period and returns their ids and
/// attempt counts. Deliveries of disabled subscriptions wait until the subscription is enabled.
/// With `ignore_grace`, a pending delivery is due as soon as its attempt is, and a retry
/// scheduled for later gets its grace shortened to its due time (its delayed job is gone).
async fn release_due_deliveries(
    ctx: &JobContext,
    ignore_grace: bool,
) -> anyhow::Result<Vec<(Uuid, i32)>> {
    use entity::{delivery, subscription};
    let now = Utc::now();
    if ignore_grace {
        delivery::Entity::update_many()
            .col_expr(
                delivery::Column::LockedUntil,
                Expr::col(delivery::Column::NextAttemptAt),
            )
            .filter(delivery::Column::DeliveredAt.is_null())
            .filter(sql::status_is(delivery::status::PENDING))
            .filter(delivery::Column::NextAttemptAt.gt(now))
            .exec(&ctx.db)
            .await
            .context("could not reschedule retries whose job was lost")?;
    }
    let due = || {
        let expired = Condition::any()
            .add(delivery::Column::LockedUntil.is_null())
            .add(delivery::Column::LockedUntil.lt(now));
        let attempt_due = Condition::any()
            .add(delivery::Column::NextAttemptAt.is_null())
            .add(delivery::Column::NextAttemptAt.lte(now));
        let pending = if ignore_grace {
            Condition::all()
                .add(sql::status_is(delivery::status::PENDING))
                .add(attempt_due.clone())
        } else {
            Condition::all()
                .add(sql::status_is(delivery::status::PENDING))
                .add(attempt_due.clone())
                .add(expired.clone())
        };
        let abandoned = Condition::all()
            .add(sql::status_is(delivery::status::IN_FLIGHT))
            .add(expired);
        // `delivered_at IS NULL` holds for every pending and in-flight delivery; it lets
        // Postgres read them through the undelivered rows' partial index (migration
        // `hot_delivery_claims`).
        Condition::all()
            .add(delivery::Column::DeliveredAt.is_null())
            .add(Condition::any().add(pending).add(abandoned))
    };
    let enabled_subscriptions = Query::select()
        .column(subscription::Column::Id)
        .from(subscription::Entity)
        .and_where(subscription::Column::Enabled.eq(true))
        .to_owned();
    let due_ids = Query::select()
        .column(delivery::Column::Id)
        .from(delivery::Entity)
        .cond_where(due())
        .and_where(delivery::Column::SubscriptionId.in_subquery(enabled_subscriptions))
        .limit(BATCH)
        .to_owned();
    let grace: DateTime<Utc> = now + ctx.settings.lease;
    let released = delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(delivery::status::PENDING),
        )
        .col_expr(delivery::Column::LockedUntil, Expr::value(grace))
        .filter(delivery::Column::Id.in_subquery(due_ids))
        .filter(due())
        .exec_with_returning(&ctx.db)
        .await
        .context("could not release due deliveries")?;
    Ok(released
        .into_iter()
        .map(|delivery| (delivery.id, delivery.attempts))
        .collect())
}
