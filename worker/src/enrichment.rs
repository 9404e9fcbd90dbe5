//! Enrichment: the issue fetched fresh through the Jira REST API, attached to the event.
//!
//! Best effort with a bounded budget (DESIGN §4): it never blocks delivery. Its result travels
//! with the event as `enrichment: {status, issue?, error?}`.

use serde::Serialize;

/// `enrichment` of a processed event.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Enrichment {
    /// `ok`, `skipped` or `failed`.
    pub status: &'static str,
    /// The issue as the Jira REST API returned it (`ok` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issue: Option<serde_json::Value>,
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
    pub fn ok(issue: serde_json::Value) -> Self {
        Self {
            status: "ok",
            issue: Some(issue),
            error: None,
        }
    }
}
