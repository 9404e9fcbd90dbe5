//! Renewal of the dynamic webhooks hookline registered at Jira (`jira_webhook`): Jira deletes
//! one 30 days after its registration or last refresh, so every registration that expires
//! within [`crate::WorkerSettings::jira_webhook_renewal_margin`] is refreshed
//! (`PUT /rest/api/3/webhook/refresh`, one call per connection for all of its due webhooks).
//!
//! - Once per [`crate::WorkerSettings::jira_webhook_renewal_interval`] across all workers
//!   ([`crate::periodic`]): every worker asks on its own timer, one of them runs, so each
//!   registration is refreshed once however many workers there are. Everything it needs is in
//!   the database (`expires_at`), so a restart changes nothing: the next run finds what is due.
//! - After a refresh, Jira's list of the site's webhooks says which of them still exist: Jira
//!   answers a refresh of an id it no longer has like any other.
//! - Outcomes are counted (`hookline_jira_webhook_renewals_total{outcome}`) and recorded on the
//!   row (`last_refresh_*`). A registration that cannot be renewed for good (the grant was
//!   revoked, the webhook is gone at Jira, Jira refuses the refresh) is marked
//!   `renewal_failed`: the API shows it on the connection (`webhookProblem`) and the console on
//!   the connection's card; it is not tried again. A passing failure (Jira down, rate-limited)
//!   is recorded and tried again on the next run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use entity::jira_webhook::{self, outcome, status};
use entity::periodic_task;
use plugins::jira::dynamic_webhooks::WebhookError;
use plugins::jira::rest::JiraError;
use plugins::jira::token_manager::TokenError;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use tokio::sync::watch;
use uuid::Uuid;

use crate::JobContext;
use crate::periodic;

/// How often each worker asks whether a renewal run is due (at most; a shorter interval is
/// asked at its own pace).
const CHECK_INTERVAL: Duration = Duration::from_secs(60);

/// How long a worker's claim on a run holds before another worker may take over.
const CLAIM_HOLD: Duration = Duration::from_secs(15 * 60);

/// Registrations renewed per run at most (a run renews the earliest-expiring first; the next
/// run goes on).
pub const BATCH: u64 = 1000;

/// What one run did, by outcome (counts of registrations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Renewed {
    /// Refreshed: Jira moved their expiry.
    pub renewed: u64,
    /// Gone at Jira: marked `renewal_failed`.
    pub gone: u64,
    /// Their grant was revoked (or the site no longer has one): marked `renewal_failed`.
    pub revoked: u64,
    /// Refused by Jira: marked `renewal_failed`.
    pub refused: u64,
    /// A passing failure: tried again on the next run.
    pub failed: u64,
}

/// Checks (at start-up, then every minute or interval) whether a renewal run is due and runs
/// it, until `stop` turns true.
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let mut interval =
        tokio::time::interval(CHECK_INTERVAL.min(ctx.settings.jira_webhook_renewal_interval));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        match run_if_due(&ctx).await {
            Ok(Some(renewed)) if renewed != Renewed::default() => tracing::info!(
                renewed = renewed.renewed,
                gone = renewed.gone,
                revoked = renewed.revoked,
                refused = renewed.refused,
                failed = renewed.failed,
                "dynamic Jira webhooks renewed"
            ),
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "Jira webhook renewal run failed"
                );
            }
        }
    }
}

/// Runs the renewal if this worker gets the due run; returns what it did (None: not due, or
/// another worker has it).
pub async fn run_if_due(ctx: &JobContext) -> anyhow::Result<Option<Renewed>> {
    let Some(run) = periodic::claim(
        &ctx.db,
        periodic_task::name::JIRA_WEBHOOK_RENEWAL,
        ctx.settings.jira_webhook_renewal_interval,
        CLAIM_HOLD,
    )
    .await?
    else {
        return Ok(None);
    };
    let result = renew_due(ctx).await;
    let error = result.as_ref().err().map(|error| format!("{error:#}"));
    run.finish(&ctx.db, error).await?;
    result.map(Some)
}

/// Refreshes every active registration expiring within the margin (up to [`BATCH`]), one Jira
/// call per connection, and records each outcome.
pub async fn renew_due(ctx: &JobContext) -> anyhow::Result<Renewed> {
    let cutoff = Utc::now() + chrono::Duration::from_std(ctx.settings.jira_webhook_renewal_margin)?;
    let due = jira_webhook::Entity::find()
        .filter(jira_webhook::Column::Status.eq(status::ACTIVE))
        .filter(jira_webhook::Column::ExpiresAt.lt(cutoff))
        .order_by_asc(jira_webhook::Column::ExpiresAt)
        .limit(BATCH)
        .all(&ctx.db)
        .await
        .context("could not read the dynamic webhooks due for renewal")?;
    let mut by_connection: BTreeMap<Uuid, Vec<jira_webhook::Model>> = BTreeMap::new();
    for row in due {
        by_connection
            .entry(row.connection_id)
            .or_default()
            .push(row);
    }
    let mut renewed = Renewed::default();
    for (connection_id, rows) in by_connection {
        renew_connection(ctx, connection_id, rows, &mut renewed).await?;
    }
    Ok(renewed)
}

/// Refreshes the due `rows` of one connection (one site).
async fn renew_connection(
    ctx: &JobContext,
    connection_id: Uuid,
    rows: Vec<jira_webhook::Model>,
    renewed: &mut Renewed,
) -> anyhow::Result<()> {
    let cloud_id = rows[0].cloud_id.clone();
    let ids: Vec<i64> = rows.iter().map(|row| row.webhook_id).collect();
    let refreshed = ctx
        .jira
        .refresh_webhooks(connection_id, &cloud_id, &ids)
        .await;
    // Which of them Jira still has: it answers a refresh of an unknown id like any other.
    let refreshed = match refreshed {
        Ok(expires_at) => ctx
            .jira
            .list_webhooks(connection_id, &cloud_id)
            .await
            .map(|listed| (expires_at, listed)),
        Err(error) => Err(error),
    };
    match refreshed {
        Ok((expires_at, listed)) => {
            for row in &rows {
                match listed.iter().find(|webhook| webhook.id == row.webhook_id) {
                    Some(webhook) => {
                        let expires_at = webhook.expires_at.unwrap_or(expires_at);
                        record(ctx, row, status::ACTIVE, Some(expires_at), None).await?;
                        count(&mut renewed.renewed, "renewed");
                    }
                    None => {
                        let error = "Jira no longer has this webhook (deleted at Jira, or it \
                                     expired): register it again";
                        record(ctx, row, status::RENEWAL_FAILED, None, Some(error)).await?;
                        count(&mut renewed.gone, "gone");
                    }
                }
            }
        }
        Err(error) => {
            let (permanent, slot, label) = match &error {
                WebhookError::Jira(JiraError::Token(
                    TokenError::ReauthRequired | TokenError::NoCredential,
                )) => (true, &mut renewed.revoked, "revoked"),
                WebhookError::Jira(JiraError::NotFound) | WebhookError::Refused { .. } => {
                    (true, &mut renewed.refused, "refused")
                }
                _ => (false, &mut renewed.failed, "failed"),
            };
            let reason = match &error {
                WebhookError::Jira(JiraError::Token(
                    TokenError::ReauthRequired | TokenError::NoCredential,
                )) => "the connection's Atlassian grant was revoked or expired: connect the \
                       site again, then register the webhook again"
                    .to_owned(),
                other => other.to_string(),
            };
            tracing::warn!(connection.id = %connection_id, webhook.ids = ?ids, permanent, error = %reason, "dynamic Jira webhooks could not be renewed");
            let new_status = if permanent {
                status::RENEWAL_FAILED
            } else {
                status::ACTIVE
            };
            for row in &rows {
                record(ctx, row, new_status, None, Some(&reason)).await?;
                count(slot, label);
            }
        }
    }
    Ok(())
}

fn count(slot: &mut u64, outcome: &'static str) {
    *slot += 1;
    metrics::counter!("hookline_jira_webhook_renewals_total", "outcome" => outcome).increment(1);
}

/// Records a refresh's outcome on `row`: its status, the new expiry (if Jira moved it) and
/// the error (None: it succeeded).
async fn record(
    ctx: &JobContext,
    row: &jira_webhook::Model,
    new_status: &str,
    expires_at: Option<DateTime<Utc>>,
    error: Option<&str>,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let mut update = jira_webhook::Entity::update_many()
        .col_expr(jira_webhook::Column::Status, Expr::value(new_status))
        .col_expr(jira_webhook::Column::LastRefreshAt, Expr::value(now))
        .col_expr(
            jira_webhook::Column::LastRefreshOutcome,
            Expr::value(if error.is_none() {
                outcome::OK
            } else {
                outcome::FAILED
            }),
        )
        .col_expr(
            jira_webhook::Column::LastRefreshError,
            Expr::value(error.map(str::to_owned)),
        )
        .col_expr(jira_webhook::Column::UpdatedAt, Expr::value(now));
    if let Some(expires_at) = expires_at {
        update = update.col_expr(jira_webhook::Column::ExpiresAt, Expr::value(expires_at));
    }
    update
        .filter(jira_webhook::Column::Id.eq(row.id))
        .exec(&ctx.db)
        .await
        .with_context(|| format!("could not record the renewal of dynamic webhook {}", row.id))?;
    Ok(())
}
