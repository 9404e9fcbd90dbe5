//! `ProcessEvent`: turn a recorded `webhook_event` into a processed one.
//!
//! The job claims the row with a conditional UPDATE (status `received`, or `processing` with an
//! expired lease), so a job that runs twice, or two workers racing on one event, do the work
//! once. The claim's `attempts` value fences the final write: a worker whose lease expired and
//! was taken over cannot overwrite its successor's result.

use anyhow::Context as _;
use apalis_core::task::data::Data;
use chrono::Utc;
use entity::webhook_event::{self, status};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, Condition, EntityTrait, QueryFilter};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::queue::Job;
use crate::runner::JobContext;

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
    let started = std::time::Instant::now();
    let result = run(&ctx, job.event_id).await;
    let outcome = match &result {
        Ok(outcome) => outcome.as_str(),
        Err(_) => "error",
    };
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

/// Claims and processes one event.
pub async fn run(ctx: &JobContext, event_id: Uuid) -> anyhow::Result<Outcome> {
    let Some(event) = claim(ctx, event_id).await? else {
        tracing::debug!(event.id = %event_id, "event not claimed: done or owned by another run");
        return Ok(Outcome::NotClaimed);
    };

    let (new_status, event_type, error) = match parse_event_type(&event.body) {
        Ok(event_type) => (status::PROCESSED, Some(event_type), None),
        Err(error) => (status::FAILED, None, Some(error)),
    };

    let now = Utc::now();
    let finished = webhook_event::Entity::update_many()
        .col_expr(webhook_event::Column::Status, Expr::value(new_status))
        .col_expr(webhook_event::Column::EventType, Expr::value(event_type))
        .col_expr(webhook_event::Column::Error, Expr::value(error.clone()))
        .col_expr(webhook_event::Column::ProcessedAt, Expr::value(now))
        .col_expr(
            webhook_event::Column::LockedUntil,
            Expr::value(Option::<chrono::DateTime<Utc>>::None),
        )
        .filter(webhook_event::Column::Id.eq(event.id))
        .filter(webhook_event::Column::Status.eq(status::PROCESSING))
        .filter(webhook_event::Column::Attempts.eq(event.attempts))
        .exec(&ctx.db)
        .await
        .context("could not record the processed event")?;
    if finished.rows_affected == 0 {
        tracing::warn!(event.id = %event.id, "lease lost while processing; the newer run's result stands");
        return Ok(Outcome::NotClaimed);
    }
    match error {
        None => Ok(Outcome::Processed),
        Some(error) => {
            tracing::warn!(event.id = %event.id, error, "event marked failed");
            Ok(Outcome::Failed)
        }
    }
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

/// Reads `webhookEvent` from a Jira payload. Full parsing into typed events is the Jira plugin's.
fn parse_event_type(body: &[u8]) -> Result<String, String> {
    #[derive(Deserialize)]
    struct Envelope {
        #[serde(rename = "webhookEvent")]
        webhook_event: Option<String>,
    }
    let envelope: Envelope = serde_json::from_slice(body)
        .map_err(|error| format!("the body is not a JSON object: {error}"))?;
    // Unknown or missing types are kept, never dropped.
    Ok(envelope
        .webhook_event
        .unwrap_or_else(|| "unknown".to_owned()))
}
