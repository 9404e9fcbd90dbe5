//! The Jira Cloud REST API through Atlassian's gateway:
//! `{ATLASSIAN_API_URL}/ex/jira/{cloudId}/rest/api/3/…`, authenticated with the connection's
//! OAuth access token from the [`TokenManager`].
//!
//! URLs are always built from the configured gateway and the connection's cloud id, never from
//! a payload's `self` links (that would let a payload send our bearer token anywhere).

use std::time::Duration;

use uuid::Uuid;

use crate::jira::token_manager::{TokenError, TokenManager};
use crate::retry_after::parse_retry_after;

/// Why a Jira REST call failed.
#[derive(Debug, thiserror::Error)]
pub enum JiraError {
    /// The issue does not exist or the token may not see it (404).
    #[error("not found in Jira")]
    NotFound,
    /// Jira rate-limited the call (429); `retry_after` is its `Retry-After`, if it sent one.
    #[error("rate-limited by Jira")]
    RateLimited {
        /// How long Jira asked to wait.
        retry_after: Option<Duration>,
    },
    /// Jira refused the token even after a forced refresh (401).
    #[error("Jira refused the access token")]
    Unauthorized,
    /// Jira answered another unexpected status (5xx and the like).
    #[error("Jira answered {0}")]
    Upstream(u16),
    /// Jira could not be reached, or its answer could not be read.
    #[error("could not reach Jira: {0}")]
    Transport(String),
    /// No access token could be had.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The issue key or id is not of a form Jira uses.
    #[error("{0:?} is not an issue key or id")]
    InvalidKey(String),
}

/// A Jira REST client for OAuth connections. Cheap to clone.
#[derive(Debug, Clone)]
pub struct JiraClient {
    pub(crate) http: reqwest::Client,
    /// The gateway's base URL, without a trailing slash.
    pub(crate) api_url: String,
    pub(crate) tokens: TokenManager,
}

impl JiraClient {
    /// A client calling the gateway at `api_url` with tokens from `tokens`.
    pub fn new(http: reqwest::Client, api_url: &str, tokens: TokenManager) -> Self {
        Self {
            http,
            api_url: api_url.trim_end_matches('/').to_owned(),
            tokens,
        }
    }

    /// The token manager.
    pub fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    /// `GET /rest/api/3/issue/{key}` of the site `cloud_id` of connection `connection_id`,
    /// optionally limited to `fields`. One 401 leads to one forced token refresh and one retry.
    pub async fn get_issue(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        key_or_id: &str,
        fields: Option<&str>,
    ) -> Result<serde_json::Value, JiraError> {
        self.get_issue_as(connection_id, cloud_id, key_or_id, fields)
            .await
    }

    /// [`Self::get_issue`], the answer kept as the JSON text Jira sent (checked to be JSON):
    /// for passing it on unchanged without building and dropping a tree of it.
    pub async fn get_issue_text(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        key_or_id: &str,
        fields: Option<&str>,
    ) -> Result<Box<serde_json::value::RawValue>, JiraError> {
        self.get_issue_as(connection_id, cloud_id, key_or_id, fields)
            .await
    }

    async fn get_issue_as<T: serde::de::DeserializeOwned>(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        key_or_id: &str,
        fields: Option<&str>,
    ) -> Result<T, JiraError> {
        if !is_issue_key(key_or_id) {
            return Err(JiraError::InvalidKey(key_or_id.to_owned()));
        }
        if !is_cloud_id(cloud_id) {
            return Err(JiraError::Transport(format!(
                "the connection's cloudId {cloud_id:?} is not valid"
            )));
        }
        let url = format!(
            "{}/ex/jira/{cloud_id}/rest/api/3/issue/{key_or_id}",
            self.api_url
        );
        let token = self.tokens.access_token(connection_id).await?;
        let response = match self.send(&url, fields, &token.token).await? {
            response if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                let token = self.tokens.force_refresh(connection_id, &token).await?;
                self.send(&url, fields, &token.token).await?
            }
            response => response,
        };
        let status = response.status();
        metrics::counter!("hookline_jira_api_calls_total", "status" => status.as_str().to_owned())
            .increment(1);
        match status.as_u16() {
            200..=299 => response
                .json()
                .await
                .map_err(|error| JiraError::Transport(format!("unreadable answer: {error}"))),
            404 => Err(JiraError::NotFound),
            401 => Err(JiraError::Unauthorized),
            429 => {
                metrics::counter!("hookline_jira_rate_limited_total").increment(1);
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse_retry_after(value, chrono::Utc::now()));
                Err(JiraError::RateLimited { retry_after })
            }
            other => Err(JiraError::Upstream(other)),
        }
    }

    async fn send(
        &self,
        url: &str,
        fields: Option<&str>,
        token: &str,
    ) -> Result<reqwest::Response, JiraError> {
        let mut url = reqwest::Url::parse(url)
            .map_err(|error| JiraError::Transport(format!("invalid URL: {error}")))?;
        if let Some(fields) = fields {
            url.query_pairs_mut().append_pair("fields", fields);
        }
        self.http
            .get(url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|error| JiraError::Transport(format!("{:#}", anyhow::Error::from(error))))
    }
}

/// `ORB-417` or `20417`: letters, digits, `_` and `-` only (safe in a path segment).
fn is_issue_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 255
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Whether `cloud_id` is an Atlassian cloud id: a UUID in its hyphenated form (safe in a path
/// segment). Checked when a site is connected, and again before every call.
pub fn is_cloud_id(cloud_id: &str) -> bool {
    cloud_id.len() == 36 && Uuid::try_parse(cloud_id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_issue_keys_reach_a_url() {
        assert!(is_issue_key("ORB-417"));
        assert!(is_issue_key("20417"));
        assert!(!is_issue_key("../../admin"));
        assert!(!is_issue_key("ORB-1?x=y"));
        assert!(!is_issue_key(""));
        assert!(is_cloud_id("6f2c9a14-3b7e-4d21-a8f5-0c9e7b3d5a12"));
        assert!(!is_cloud_id("x/../y"));
        assert!(!is_cloud_id("6f2c9a14"));
        assert!(!is_cloud_id("6f2c9a143b7e4d21a8f50c9e7b3d5a12"));
    }
}
