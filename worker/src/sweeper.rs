//! The sweeper: finds rows whose job was lost and enqueues them again.
//!
//! A job is lost when Redis restarts without persistence, when a process dies between the
//! database commit and the push, or when a worker dies holding a claim. Every stage writes
//! `locked_until` (the ingest a short grace, a claim its lease), so "due" means: not finished
//! and `locked_until` in the past. The sweeper pushes the job again after moving `locked_until`
//! forward with a conditional UPDATE, so several sweepers (one per worker process) never enqueue
//! one row twice in one round. Running a job twice is harmless: it starts by claiming its row.

use anyhow::Context as _;
use chrono::Utc;
use entity::webhook_event::{self, status};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use tokio::sync::watch;
use uuid::Uuid;

use crate::janitor;
use crate::jobs::{Deliver, DeliverRetry, ProcessEvent};
use crate::runner::JobContext;

/// Most rows re-enqueued per statement; a sweep repeats until fewer are due.
const BATCH: u64 = 500;

/// Runs [`sweep_once`] every `sweep_interval` until `stop` turns true.
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(ctx.settings.sweep_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        match sweep_once(&ctx).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "sweeper re-enqueued lost events"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "sweep failed"),
        }
        match sweep_deliveries_once(&ctx).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "sweeper enqueued due deliveries"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "delivery sweep failed"),
        }
        match janitor::clean_once(&ctx).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "janitor removed finished jobs from the queue"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "queue cleanup failed"),
        }
    }
}

/// One sweep: re-enqueues every due event. Returns how many were re-enqueued.
pub async fn sweep_once(ctx: &JobContext) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let ids = release_due_events(ctx).await?;
        for &event_id in &ids {
            ctx.queue
                .push(ProcessEvent { event_id })
                .await
                .context("could not re-enqueue an event")?;
        }
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
async fn release_due_events(ctx: &JobContext) -> anyhow::Result<Vec<Uuid>> {
    let now = Utc::now();
    let due = || {
        Condition::all()
            .add(webhook_event::Column::Status.is_in([status::RECEIVED, status::PROCESSING]))
            .add(
                Condition::any()
                    .add(webhook_event::Column::LockedUntil.is_null())
                    .add(webhook_event::Column::LockedUntil.lt(now)),
            )
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

/// One sweep of deliveries: enqueues every due delivery of an enabled subscription that no job
/// holds (a lost job, an expired lease, or a retry due sooner than apalis' whole-second
/// schedule). Returns how many were enqueued.
pub async fn sweep_deliveries_once(ctx: &JobContext) -> anyhow::Result<usize> {
    let mut total = 0;
    loop {
        let released = release_due_deliveries(ctx).await?;
        for &(delivery_id, attempts) in &released {
            let pushed = if attempts == 0 {
                ctx.queue.push(Deliver { delivery_id }).await
            } else {
                ctx.queue.push(DeliverRetry { delivery_id }).await
            };
            pushed.context("could not re-enqueue a delivery")?;
        }
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
async fn release_due_deliveries(ctx: &JobContext) -> anyhow::Result<Vec<(Uuid, i32)>> {
    use entity::{delivery, subscription};
    let now = Utc::now();
    let due = || {
        Condition::all()
            .add(
                delivery::Column::Status
                    .is_in([delivery::status::PENDING, delivery::status::IN_FLIGHT]),
            )
            .add(
                Condition::any()
                    .add(delivery::Column::NextAttemptAt.is_null())
                    .add(delivery::Column::NextAttemptAt.lte(now)),
            )
            .add(
                Condition::any()
                    .add(delivery::Column::LockedUntil.is_null())
                    .add(delivery::Column::LockedUntil.lt(now)),
            )
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
    let released = delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(delivery::status::PENDING),
        )
        .col_expr(
            delivery::Column::LockedUntil,
            Expr::value(now + ctx.settings.lease),
        )
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
