//! Samples backlog gauges on a timer (not per scrape, DESIGN §7): from the database, how many
//! events and deliveries wait per stage and how old the oldest is, dead deliveries, connections
//! by status; from the queue backend (Redis or SQLite), how many jobs wait per queue. Every
//! worker process samples; the values are the same in each.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::{delivery, plugin_connection, webhook_event};
use sea_orm::sea_query::{Expr, Func};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QuerySelect};
use tokio::sync::watch;

use crate::jobs::{Deliver, DeliverRetry, ProcessEvents};
use crate::queue::Job;
use crate::runner::JobContext;
use crate::sql;

/// How often the gauges are refreshed.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(10);

/// Samples every [`SAMPLE_INTERVAL`] until `stop` turns true.
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(SAMPLE_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        if let Err(error) = sample_once(&ctx).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "sampling backlog metrics failed"
            );
        }
    }
}

/// Reads the backlog once and sets the gauges.
pub async fn sample_once(ctx: &JobContext) -> anyhow::Result<()> {
    let now = Utc::now();
    let (events, oldest_event): (i64, Option<DateTime<Utc>>) = webhook_event::Entity::find()
        .select_only()
        .column_as(
            Expr::expr(Func::count(Expr::col(webhook_event::Column::Id))),
            "count",
        )
        .column_as(
            Expr::expr(Func::min(Expr::col(webhook_event::Column::ReceivedAt))),
            "oldest",
        )
        // The same rows as the statuses; it lets Postgres read them through the unfinished
        // rows' partial index (migration `hot_event_claims`).
        .filter(webhook_event::Column::ProcessedAt.is_null())
        .filter(sql::status_in(&[
            webhook_event::status::RECEIVED,
            webhook_event::status::PROCESSING,
        ]))
        .into_tuple()
        .one(&ctx.db)
        .await
        .context("sampling the event backlog")?
        .unwrap_or((0, None));
    record_stage("process_event", events, oldest_event, now);

    let (deliveries, oldest_due): (i64, Option<DateTime<Utc>>) = delivery::Entity::find()
        .select_only()
        .column_as(
            Expr::expr(Func::count(Expr::col(delivery::Column::Id))),
            "count",
        )
        .column_as(
            Expr::expr(Func::min(Expr::col(delivery::Column::NextAttemptAt))),
            "oldest",
        )
        // `delivered_at IS NULL` holds for every waiting delivery; it lets Postgres read them
        // through the undelivered rows' partial index (migration `hot_delivery_claims`).
        .filter(delivery::Column::DeliveredAt.is_null())
        .filter(sql::status_in(&[
            delivery::status::PENDING,
            delivery::status::IN_FLIGHT,
        ]))
        .filter(delivery::Column::NextAttemptAt.lte(now))
        .into_tuple()
        .one(&ctx.db)
        .await
        .context("sampling the delivery backlog")?
        .unwrap_or((0, None));
    record_stage("deliver", deliveries, oldest_due, now);

    let dead: i64 = delivery::Entity::find()
        .select_only()
        .column_as(
            Expr::expr(Func::count(Expr::col(delivery::Column::Id))),
            "count",
        )
        // A dead delivery is undelivered and has no next attempt: Postgres counts it from the
        // NULL entries of the undelivered rows' partial index (migration `hot_delivery_claims`).
        .filter(delivery::Column::DeliveredAt.is_null())
        .filter(delivery::Column::NextAttemptAt.is_null())
        .filter(sql::status_is(delivery::status::DEAD))
        .into_tuple()
        .one(&ctx.db)
        .await
        .context("counting dead deliveries")?
        .unwrap_or(0);
    metrics::gauge!("hookline_deliveries_dead").set(dead as f64);

    record_queue::<ProcessEvents>(ctx).await?;
    record_queue::<Deliver>(ctx).await?;
    record_queue::<DeliverRetry>(ctx).await?;

    let by_status: Vec<(String, i64)> = plugin_connection::Entity::find()
        .select_only()
        .column(plugin_connection::Column::Status)
        .column_as(
            Expr::expr(Func::count(Expr::col(plugin_connection::Column::Id))),
            "count",
        )
        .group_by(plugin_connection::Column::Status)
        .into_tuple()
        .all(&ctx.db)
        .await
        .context("counting connections")?;
    for status in [
        plugin_connection::status::ACTIVE,
        plugin_connection::status::REAUTH_REQUIRED,
        plugin_connection::status::DISABLED,
    ] {
        let count = by_status
            .iter()
            .find(|(name, _)| name == status)
            .map_or(0, |(_, count)| *count);
        metrics::gauge!("hookline_connections", "status" => status).set(count as f64);
    }
    Ok(())
}

/// Sets `hookline_queue_jobs{queue, state}` from the queue backend: jobs due now (`ready`) and
/// jobs scheduled for later (`scheduled`, e.g. delivery retries).
async fn record_queue<J: Job>(ctx: &JobContext) -> anyhow::Result<()> {
    let backlog = ctx.queue.backlog::<J>().await?;
    metrics::gauge!("hookline_queue_jobs", "queue" => J::QUEUE, "state" => "ready")
        .set(backlog.ready as f64);
    metrics::gauge!("hookline_queue_jobs", "queue" => J::QUEUE, "state" => "scheduled")
        .set(backlog.scheduled as f64);
    Ok(())
}

fn record_stage(
    stage: &'static str,
    depth: i64,
    oldest: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) {
    metrics::gauge!("hookline_queue_depth", "stage" => stage).set(depth as f64);
    let age = oldest.map_or(0.0, |oldest| {
        (now - oldest).num_milliseconds().max(0) as f64 / 1000.0
    });
    metrics::gauge!("hookline_queue_oldest_age_seconds", "stage" => stage).set(age);
}
