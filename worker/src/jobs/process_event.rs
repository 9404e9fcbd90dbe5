//! `ProcessEvent`: turn a recorded `webhook_event` into a processed one.
//!
//! The job claims the row with a conditional UPDATE (status `received`, or `processing` with an
//! expired lease), so a job that runs twice, or two workers racing on one event, do the work
//! once. The claim's `attempts` value fences the final write: a worker whose lease expired and
//! was taken over cannot overwrite its successor's result.

use anyhow::Context as _;
use apalis_core::task::data::Data;
use chrono::{DateTime, Utc};
use entity::webhook_event::{self, status};
use entity::{delivery, plugin_connection, subscription};
use plugins::jira::event as jira_event;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::enrichment::{self, Enrichment};
use crate::jobs::Deliver;
use crate::matching::{EventFacts, matches};
use crate::queue::Job;
use crate::runner::JobContext;
use crate::storable;

/// Process one recorded webhook event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvent {
    /// `webhook_event.id`.
    pub event_id: Uuid,
}

impl Job for ProcessEvent {
    const QUEUE: &'static str = "process_event";
}

/// What one run of the job did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event was processed by this run.
    Processed,
    /// The event could not be processed (bad payload); it is marked `failed` with the reason.
    Failed,
    /// Another run owns or finished the event; nothing was done.
    NotClaimed,
}

impl Outcome {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::NotClaimed => "not_claimed",
        }
    }
}

/// The apalis handler. Errors are infrastructure failures (database down): the row stays
/// claimed and the sweeper hands it out again once the lease expires.
pub async fn handle(
    job: ProcessEvent,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    // One span per job; `connection.id` is filled in once the event is read.
    let span = tracing::info_span!(
        "job",
        job = "process_event",
        event.id = %job.event_id,
        connection.id = tracing::field::Empty
    );
    let result = run(&ctx, job.event_id).instrument(span.clone()).await;
    let outcome = match &result {
        Ok(outcome) => outcome.as_str(),
        Err(_) => "error",
    };
    let _entered = span.enter();
    metrics::counter!("hookline_jobs_total", "job" => "process_event", "outcome" => outcome)
        .increment(1);
    metrics::histogram!("hookline_job_duration_seconds", "job" => "process_event")
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(event.id = %job.event_id, error = format!("{error:#}"), "processing an event failed");
            Err(error.into())
        }
    }
}

/// Claims and processes one event: parse, enrich, match subscriptions, then in one transaction
/// mark it processed and insert its deliveries; push one `Deliver` per delivery after the commit.
pub async fn run(ctx: &JobContext, event_id: Uuid) -> anyhow::Result<Outcome> {
    let Some(event) = claim(ctx, event_id).await? else {
        tracing::debug!(event.id = %event_id, "event not claimed: done or owned by another run");
        return Ok(Outcome::NotClaimed);
    };
    tracing::Span::current().record(
        "connection.id",
        tracing::field::display(event.connection_id),
    );

    let raw: Value = match serde_json::from_slice(&event.body) {
        Ok(raw) => raw,
        Err(error) => {
            let error = jira_event::ParseError::NotJson(error.to_string()).to_string();
            return finish_failed(ctx, &event, error).await;
        }
    };
    let parsed = match jira_event::parse_value(&raw) {
        Ok(parsed) => parsed,
        Err(error) => return finish_failed(ctx, &event, error.to_string()).await,
    };

    let connection = plugin_connection::Entity::find_by_id(event.connection_id)
        .one(&ctx.db)
        .await
        .context("could not load the event's connection")?;
    let enrichment = match &connection {
        Some(connection) => enrichment::enrich(ctx, connection, &parsed).await,
        None => Enrichment::skipped("the connection no longer exists"),
    };
    let data = EventData {
        event_id: event.id,
        plugin_id: &event.plugin_id,
        connection_id: event.connection_id,
        company_id: event.company_id,
        event: &parsed,
        enrichment: &enrichment,
        raw: &raw,
    };
    let data = serde_json::to_value(&data).context("could not serialise the processed event")?;
    // A payload may carry `\u0000`, which Postgres cannot store.
    let data = storable::json(data);

    let subscriptions = subscription::Entity::find_for_company(event.company_id)
        .filter(subscription::Column::Enabled.eq(true))
        .all(&ctx.db)
        .await
        .context("could not load subscriptions")?;
    let facts = EventFacts {
        event_type: &parsed.event_type,
        connection_id: event.connection_id,
        project_key: parsed.project_key(),
    };
    let now = Utc::now();
    let deliveries: Vec<delivery::ActiveModel> = subscriptions
        .iter()
        .filter(|subscription| matches(subscription, facts))
        .map(|subscription| delivery::ActiveModel {
            id: Set(Uuid::now_v7()),
            event_id: Set(event.id),
            subscription_id: Set(subscription.id),
            company_id: Set(event.company_id),
            status: Set(delivery::status::PENDING.to_owned()),
            attempts: Set(0),
            next_attempt_at: Set(Some(now)),
            // The grace the sweeper gives the delivery's own job.
            locked_until: Set(Some(now + ctx.settings.lease)),
            last_status: Set(None),
            last_error: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
            delivered_at: Set(None),
        })
        .collect();
    let delivery_ids: Vec<Uuid> = deliveries
        .iter()
        .filter_map(|delivery| match &delivery.id {
            sea_orm::ActiveValue::Set(id) => Some(*id),
            _ => None,
        })
        .collect();

    let txn = ctx
        .db
        .begin()
        .await
        .context("could not start a transaction")?;
    let finished = webhook_event::Entity::update_many()
        .col_expr(
            webhook_event::Column::Status,
            Expr::value(status::PROCESSED),
        )
        .col_expr(
            webhook_event::Column::EventType,
            Expr::value(storable::text(&parsed.event_type).into_owned()),
        )
        .col_expr(webhook_event::Column::Data, Expr::value(data))
        .col_expr(
            webhook_event::Column::Error,
            Expr::value(Option::<String>::None),
        )
        .col_expr(webhook_event::Column::ProcessedAt, Expr::value(now))
        .col_expr(
            webhook_event::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(fence(&event))
        .exec(&txn)
        .await
        .context("could not record the processed event")?;
    if finished.rows_affected == 0 {
        txn.rollback().await.context("could not roll back")?;
        tracing::warn!(event.id = %event.id, "lease lost while processing; the newer run's result stands");
        return Ok(Outcome::NotClaimed);
    }
    if !deliveries.is_empty() {
        delivery::Entity::insert_many(deliveries)
            .on_conflict_do_nothing_on([
                delivery::Column::EventId,
                delivery::Column::SubscriptionId,
            ])
            .exec_without_returning(&txn)
            .await
            .context("could not insert deliveries")?;
    }
    txn.commit()
        .await
        .context("could not commit the processed event")?;
    metrics::counter!("hookline_enrichment_total", "status" => enrichment.status).increment(1);
    tracing::info!(
        event.id = %event.id,
        event.r#type = %parsed.event_type,
        enrichment = enrichment.status,
        deliveries = delivery_ids.len(),
        "event processed"
    );

    for delivery_id in delivery_ids {
        // Best effort: the sweeper enqueues due deliveries whose job was lost.
        if let Err(error) = ctx.queue.push(Deliver { delivery_id }).await {
            tracing::warn!(delivery.id = %delivery_id, error = format!("{error:#}"), "delivery recorded but not enqueued; the sweeper will pick it up");
        }
    }
    Ok(Outcome::Processed)
}

/// What subscribers get as `data` (DESIGN §10): the parsed event with its ids, the enrichment
/// and the payload exactly as Jira sent it.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EventData<'a> {
    event_id: Uuid,
    plugin_id: &'a str,
    connection_id: Uuid,
    company_id: Uuid,
    #[serde(flatten)]
    event: &'a jira_event::JiraEvent,
    enrichment: &'a Enrichment,
    raw: &'a Value,
}

/// Marks a claimed event `failed` with `error`; its raw body stays for inspection and replay.
async fn finish_failed(
    ctx: &JobContext,
    event: &webhook_event::Model,
    error: String,
) -> anyhow::Result<Outcome> {
    // Parse errors quote the payload, which may hold NUL characters.
    let error = storable::text(&error).into_owned();
    let finished = webhook_event::Entity::update_many()
        .col_expr(webhook_event::Column::Status, Expr::value(status::FAILED))
        .col_expr(
            webhook_event::Column::Error,
            Expr::value(Some(error.clone())),
        )
        .col_expr(webhook_event::Column::ProcessedAt, Expr::value(Utc::now()))
        .col_expr(
            webhook_event::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(fence(event))
        .exec(&ctx.db)
        .await
        .context("could not record the failed event")?;
    if finished.rows_affected == 0 {
        return Ok(Outcome::NotClaimed);
    }
    tracing::warn!(event.id = %event.id, error, "event marked failed");
    Ok(Outcome::Failed)
}

/// Only the run that holds the claim (same `attempts`, still `processing`) may finish the event.
fn fence(event: &webhook_event::Model) -> Condition {
    Condition::all()
        .add(webhook_event::Column::Id.eq(event.id))
        .add(webhook_event::Column::Status.eq(status::PROCESSING))
        .add(webhook_event::Column::Attempts.eq(event.attempts))
}

/// Takes the event if it is `received`, or `processing` under an expired lease.
async fn claim(ctx: &JobContext, event_id: Uuid) -> anyhow::Result<Option<webhook_event::Model>> {
    let now = Utc::now();
    let lease_until = now + ctx.settings.lease;
    let claimed = webhook_event::Entity::update_many()
        .col_expr(
            webhook_event::Column::Status,
            Expr::value(status::PROCESSING),
        )
        .col_expr(webhook_event::Column::LockedUntil, Expr::value(lease_until))
        .col_expr(
            webhook_event::Column::Attempts,
            Expr::col(webhook_event::Column::Attempts).add(1),
        )
        .filter(webhook_event::Column::Id.eq(event_id))
        .filter(
            Condition::any()
                .add(webhook_event::Column::Status.eq(status::RECEIVED))
                .add(
                    Condition::all()
                        .add(webhook_event::Column::Status.eq(status::PROCESSING))
                        .add(webhook_event::Column::LockedUntil.lt(now)),
                ),
        )
        .exec(&ctx.db)
        .await
        .context("could not claim the event")?;
    if claimed.rows_affected == 0 {
        return Ok(None);
    }
    webhook_event::Entity::find_by_id(event_id)
        .one(&ctx.db)
        .await
        .context("could not load the claimed event")
}
