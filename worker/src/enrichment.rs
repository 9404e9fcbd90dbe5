//! Enrichment: the issue fetched fresh through the Jira REST API, attached to the event.
//!
//! Best effort with a bounded budget (DESIGN §4): it never blocks delivery. Its result travels
//! with the event as `enrichment: {status, issue?, error?}`.

use std::time::Duration;

use entity::plugin_connection;
use serde::Serialize;
use serde_json::Value;

use crate::runner::JobContext;

/// `enrichment` of a processed event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrichment {
    /// `ok`, `skipped` or `failed`.
    pub status: &'static str,
    /// The issue as the Jira REST API returned it, its JSON text unchanged (`ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<Box<serde_json::value::RawValue>>,
    /// Why enrichment was skipped or failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Enrichment {
    /// Enrichment was not attempted or not possible, for `reason`.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self {
            status: "skipped",
            issue: None,
            error: Some(reason.into()),
        }
    }

    /// Enrichment was attempted and gave up within its budget.
    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            status: "failed",
            issue: None,
            error: Some(error.into()),
        }
    }

    /// The issue was fetched.
    pub fn ok(issue: Box<serde_json::value::RawValue>) -> Self {
        Self {
            status: "ok",
            issue: Some(issue),
            error: None,
        }
    }
}

/// Issue fields fetched for enrichment (the whole issue would be large and slow).
const ENRICHMENT_FIELDS: &str = "summary,status,assignee,reporter,priority,issuetype,project,\
labels,components,fixVersions,parent,created,updated,duedate,resolution,description";

/// Fetches `issue` (the event's issue id or key, if it names one) through the Jira REST API when the connection can, within the
/// enrichment budget: a 429 waits for its `Retry-After`, 5xx and transport errors are retried
/// with exponential backoff (backon), both only while the budget lasts. A deleted issue (404),
/// a connection without OAuth or needing re-authorisation is `skipped`; past the budget,
/// `failed`. Never an error: enrichment does not block delivery.
///
/// The budget is a hard cut: whatever is in flight when it runs out (a slow Jira answer, a
/// token refresh) is abandoned. A token refresh runs in its own task inside the
/// [`TokenManager`](plugins::jira::token_manager::TokenManager), so abandoning it here does
/// not cancel it half-way: the rotated token pair is still saved.
pub async fn enrich(
    ctx: &JobContext,
    connection: &plugin_connection::Model,
    issue: Option<&str>,
) -> Enrichment {
    let budget = ctx.settings.enrichment_budget;
    let mut last_error = None;
    let within = enrich_within(ctx, connection, issue, budget, &mut last_error);
    match tokio::time::timeout(budget, within).await {
        Ok(enrichment) => enrichment,
        Err(_) => {
            tracing::debug!(connection.id = %connection.id, ?budget, "enrichment budget ran out");
            Enrichment::failed(match last_error {
                Some(error) => format!(
                    "gave up: the enrichment budget of {budget:?} ran out; the last attempt failed: {error}"
                ),
                None => format!(
                    "gave up: the enrichment budget of {budget:?} ran out before Jira answered"
                ),
            })
        }
    }
}

/// The retry loop of [`enrich`]; it also gives up early when a wait would end past the budget.
/// Each failed attempt's error is left in `last_error`, so a budget that runs out during a
/// retry's wait still says why Jira was retried.
async fn enrich_within(
    ctx: &JobContext,
    connection: &plugin_connection::Model,
    issue: Option<&str>,
    budget: Duration,
    last_error: &mut Option<String>,
) -> Enrichment {
    use plugins::jira::rest::JiraError;
    use plugins::jira::token_manager::TokenError;

    let Some(issue) = issue else {
        return Enrichment::skipped("the event carries no issue");
    };
    if connection.status == plugin_connection::status::REAUTH_REQUIRED {
        return Enrichment::skipped("the connection needs to be re-authorised");
    }
    let Some(cloud_id) = connection.metadata.get("cloudId").and_then(Value::as_str) else {
        return Enrichment::skipped(
            "the connection has no OAuth credential (webhook registered by an admin)",
        );
    };
    let deadline = tokio::time::Instant::now() + budget;
    let mut backoff = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times(),
    );
    loop {
        let error = match ctx
            .jira
            .get_issue_text(connection.id, cloud_id, issue, Some(ENRICHMENT_FIELDS))
            .await
        {
            Ok(issue) => return Enrichment::ok(issue),
            Err(error) => error,
        };
        let wait = match &error {
            JiraError::NotFound => {
                return Enrichment::skipped("the issue is not in Jira any more (404)");
            }
            JiraError::Token(TokenError::NoCredential) => {
                return Enrichment::skipped("the connection has no OAuth credential");
            }
            JiraError::Token(TokenError::ReauthRequired) => {
                return Enrichment::skipped("the connection needs to be re-authorised");
            }
            JiraError::Token(TokenError::NotConfigured) => {
                return Enrichment::skipped(
                    "JIRA_CLIENT_ID and JIRA_CLIENT_SECRET are not configured",
                );
            }
            JiraError::InvalidKey(_) => return Enrichment::skipped(error.to_string()),
            JiraError::RateLimited { retry_after } => retry_after.or_else(|| backoff.next()),
            JiraError::Upstream(status) if *status >= 500 => backoff.next(),
            JiraError::Transport(_) | JiraError::Token(TokenError::Unavailable(_)) => {
                backoff.next()
            }
            _ => None,
        };
        *last_error = Some(error.to_string());
        match wait {
            Some(wait) if tokio::time::Instant::now() + wait < deadline => {
                tracing::debug!(connection.id = %connection.id, ?wait, error = %error, "enrichment retrying");
                tokio::time::sleep(wait).await;
            }
            Some(_) => {
                return Enrichment::failed(format!(
                    "gave up within the enrichment budget of {budget:?}: {error}"
                ));
            }
            None => return Enrichment::failed(error.to_string()),
        }
    }
}
