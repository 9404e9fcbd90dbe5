//! Jira's dynamic webhooks REST API (for OAuth 2.0 apps), through Atlassian's gateway:
//! register (`POST /rest/api/3/webhook`), list (`GET`), refresh (`PUT …/webhook/refresh`) and
//! delete (`DELETE`), each with the connection's access token from the [`TokenManager`].
//!
//! What Jira allows, checked before it is called: only the events of [`ALLOWED_EVENTS`]
//! (worklog, attachment and issue-link events need an admin webhook), a JQL filter on every
//! webhook, and [`MAX_WEBHOOKS_PER_USER_AND_SITE`] webhooks per app, user and site. Jira
//! answers a registration 200 even when some of its entries failed: the answer is per entry.
//!
//! [`TokenManager`]: crate::jira::token_manager::TokenManager

use chrono::{DateTime, Utc};
use serde::Deserialize;
use uuid::Uuid;

use crate::jira::rest::{JiraClient, JiraError, is_cloud_id};
use crate::retry_after::parse_retry_after;

/// The events a dynamic webhook may subscribe to (Jira's list for OAuth 2.0 apps).
pub const ALLOWED_EVENTS: &[&str] = &[
    "jira:issue_created",
    "jira:issue_updated",
    "jira:issue_deleted",
    "comment_created",
    "comment_updated",
    "comment_deleted",
    "issue_property_set",
    "issue_property_deleted",
];

/// Event families only admin webhooks get (Jira refuses them for dynamic webhooks).
pub const ADMIN_ONLY_EVENT_PREFIXES: &[&str] = &["worklog_", "attachment_", "issuelink_"];

/// How many dynamic webhooks Jira lets one app register per user and site.
pub const MAX_WEBHOOKS_PER_USER_AND_SITE: usize = 5;

/// How long Jira keeps a dynamic webhook after its registration or refresh.
pub const LIFETIME: chrono::Duration = chrono::Duration::days(30);

/// One webhook to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// Event names (from [`ALLOWED_EVENTS`]).
    pub events: Vec<String>,
    /// The JQL filter (required by Jira).
    pub jql_filter: String,
    /// Fields whose change triggers `jira:issue_updated`; None: any field.
    pub field_ids_filter: Option<Vec<String>>,
}

/// What Jira did with one entry of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registration {
    /// Registered, with Jira's webhook id.
    Created(i64),
    /// Refused, with Jira's reasons.
    Refused(Vec<String>),
}

/// A dynamic webhook as Jira lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedWebhook {
    /// Jira's id.
    pub id: i64,
    /// Its events.
    pub events: Vec<String>,
    /// Its JQL filter.
    pub jql_filter: Option<String>,
    /// When Jira expires it, if Jira said.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why a dynamic webhook call failed.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The call failed as any Jira call can (token, rate limit, transport, 5xx).
    #[error(transparent)]
    Jira(#[from] JiraError),
    /// Jira refused the request as a whole (400, 403: e.g. a missing `manage:jira-webhook`
    /// scope), with its messages.
    #[error("Jira refused the request ({status}): {messages}")]
    Refused {
        /// Jira's status.
        status: u16,
        /// Jira's error messages, joined.
        messages: String,
    },
    /// Jira's answer could not be read.
    #[error("Jira's answer could not be read: {0}")]
    Unreadable(String),
}

/// Why a webhook cannot be registered as asked, found before Jira is called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// No events.
    #[error("events must name at least one event")]
    NoEvents,
    /// An event that only admin webhooks get.
    #[error(
        "{0:?} is not available to dynamic webhooks: Jira delivers worklog, attachment and \
         issue-link events only to admin webhooks (Jira settings → System → WebHooks, with the \
         connection's webhook URL and secret)"
    )]
    AdminOnly(String),
    /// An event Jira does not know for dynamic webhooks.
    #[error("{event:?} is not an event of dynamic webhooks; allowed: {allowed}")]
    Unknown {
        /// The event.
        event: String,
        /// The allowed events, comma-separated.
        allowed: String,
    },
    /// A blank JQL filter.
    #[error(
        "jqlFilter is required: Jira registers a dynamic webhook only with a JQL filter (e.g. \
         \"project = ORB\")"
    )]
    NoJql,
    /// An overlong JQL filter.
    #[error("jqlFilter is longer than {0} characters")]
    JqlTooLong(usize),
}

/// Longest JQL filter sent to Jira.
pub const MAX_JQL_LEN: usize = 4000;

impl WebhookSpec {
    /// Checks what Jira would refuse, before Jira is called.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.events.is_empty() {
            return Err(SpecError::NoEvents);
        }
        for event in &self.events {
            if ADMIN_ONLY_EVENT_PREFIXES
                .iter()
                .any(|prefix| event.starts_with(prefix))
            {
                return Err(SpecError::AdminOnly(event.clone()));
            }
            if !ALLOWED_EVENTS.contains(&event.as_str()) {
                return Err(SpecError::Unknown {
                    event: event.clone(),
                    allowed: ALLOWED_EVENTS.join(", "),
                });
            }
        }
        let jql = self.jql_filter.trim();
        if jql.is_empty() {
            return Err(SpecError::NoJql);
        }
        if jql.chars().count() > MAX_JQL_LEN {
            return Err(SpecError::JqlTooLong(MAX_JQL_LEN));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterAnswer {
    webhook_registration_result: Vec<RegisterEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegisterEntry {
    created_webhook_id: Option<i64>,
    #[serde(default)]
    errors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListAnswer {
    #[serde(default)]
    values: Vec<ListEntry>,
    is_last: Option<bool>,
    total: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListEntry {
    id: i64,
    #[serde(default)]
    events: Vec<String>,
    jql_filter: Option<String>,
    expiration_date: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RefreshAnswer {
    expiration_date: serde_json::Value,
}

/// Page size of list calls.
const PAGE_SIZE: u64 = 100;
/// Pages read at most (Jira allows 5 webhooks per user; this bounds a misbehaving answer).
const MAX_PAGES: u64 = 50;

impl JiraClient {
    /// Registers `webhooks` for site `cloud_id` of connection `connection_id`, delivering to
    /// `url`. Returns one [`Registration`] per entry, in order.
    pub async fn register_webhooks(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        url: &str,
        webhooks: &[WebhookSpec],
    ) -> Result<Vec<Registration>, WebhookError> {
        let entries: Vec<serde_json::Value> = webhooks
            .iter()
            .map(|webhook| {
                let mut entry = serde_json::json!({
                    "events": webhook.events,
                    "jqlFilter": webhook.jql_filter.trim(),
                });
                if let Some(fields) = &webhook.field_ids_filter {
                    entry["fieldIdsFilter"] = serde_json::json!(fields);
                }
                entry
            })
            .collect();
        let body = serde_json::json!({ "url": url, "webhooks": entries });
        let answer = self
            .webhook_call(
                connection_id,
                cloud_id,
                reqwest::Method::POST,
                "",
                Some(&body),
            )
            .await?;
        let answer: RegisterAnswer = serde_json::from_slice(&answer)
            .map_err(|error| WebhookError::Unreadable(error.to_string()))?;
        if answer.webhook_registration_result.len() != webhooks.len() {
            return Err(WebhookError::Unreadable(format!(
                "{} results for {} webhooks",
                answer.webhook_registration_result.len(),
                webhooks.len()
            )));
        }
        Ok(answer
            .webhook_registration_result
            .into_iter()
            .map(|entry| match entry.created_webhook_id {
                Some(id) if entry.errors.is_empty() => Registration::Created(id),
                _ if entry.errors.is_empty() => {
                    Registration::Refused(vec!["Jira gave no webhook id and no reason".into()])
                }
                _ => Registration::Refused(entry.errors),
            })
            .collect())
    }

    /// Every dynamic webhook the app registered on the site (as the connection's user).
    pub async fn list_webhooks(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
    ) -> Result<Vec<ListedWebhook>, WebhookError> {
        let mut listed = Vec::new();
        for page in 0..MAX_PAGES {
            let query = format!("?startAt={}&maxResults={PAGE_SIZE}", page * PAGE_SIZE);
            let answer = self
                .webhook_call(connection_id, cloud_id, reqwest::Method::GET, &query, None)
                .await?;
            let answer: ListAnswer = serde_json::from_slice(&answer)
                .map_err(|error| WebhookError::Unreadable(error.to_string()))?;
            let count = answer.values.len() as u64;
            listed.extend(answer.values.into_iter().map(|entry| ListedWebhook {
                id: entry.id,
                events: entry.events,
                jql_filter: entry.jql_filter,
                expires_at: entry.expiration_date.as_ref().and_then(expiration_date),
            }));
            let last = answer.is_last.unwrap_or(count < PAGE_SIZE)
                || answer
                    .total
                    .is_some_and(|total| listed.len() as u64 >= total)
                || count == 0;
            if last {
                break;
            }
        }
        Ok(listed)
    }

    /// Extends the webhooks `ids` of the site by Jira's lifetime; returns the new expiry.
    pub async fn refresh_webhooks(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        ids: &[i64],
    ) -> Result<DateTime<Utc>, WebhookError> {
        let body = serde_json::json!({ "webhookIds": ids });
        let answer = self
            .webhook_call(
                connection_id,
                cloud_id,
                reqwest::Method::PUT,
                "/refresh",
                Some(&body),
            )
            .await?;
        let answer: RefreshAnswer = serde_json::from_slice(&answer)
            .map_err(|error| WebhookError::Unreadable(error.to_string()))?;
        expiration_date(&answer.expiration_date).ok_or_else(|| {
            WebhookError::Unreadable(format!(
                "expirationDate {} is not a date",
                answer.expiration_date
            ))
        })
    }

    /// Deletes the webhooks `ids` of the site at Jira.
    pub async fn delete_webhooks(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        ids: &[i64],
    ) -> Result<(), WebhookError> {
        let body = serde_json::json!({ "webhookIds": ids });
        self.webhook_call(
            connection_id,
            cloud_id,
            reqwest::Method::DELETE,
            "",
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// One call to `/rest/api/3/webhook{suffix}`; a 401 leads to one forced token refresh and
    /// one retry. Returns the body of a 2xx answer.
    async fn webhook_call(
        &self,
        connection_id: Uuid,
        cloud_id: &str,
        method: reqwest::Method,
        suffix: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<bytes::Bytes, WebhookError> {
        if !is_cloud_id(cloud_id) {
            return Err(JiraError::Transport(format!(
                "the connection's cloudId {cloud_id:?} is not valid"
            ))
            .into());
        }
        let url = format!(
            "{}/ex/jira/{cloud_id}/rest/api/3/webhook{suffix}",
            self.api_url
        );
        let send = |token: String| {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(token)
                .header(reqwest::header::ACCEPT, "application/json");
            if let Some(body) = body {
                request = request.json(body);
            }
            async move {
                request.send().await.map_err(|error| {
                    JiraError::Transport(format!("{:#}", anyhow::Error::from(error)))
                })
            }
        };
        let token = self
            .tokens
            .access_token(connection_id)
            .await
            .map_err(JiraError::from)?;
        let response = match send(token.token.clone()).await? {
            response if response.status() == reqwest::StatusCode::UNAUTHORIZED => {
                let token = self
                    .tokens
                    .force_refresh(connection_id, &token)
                    .await
                    .map_err(JiraError::from)?;
                send(token.token.clone()).await?
            }
            response => response,
        };
        let status = response.status();
        metrics::counter!("hookline_jira_api_calls_total", "status" => status.as_str().to_owned())
            .increment(1);
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| parse_retry_after(value, Utc::now()));
        let bytes = response
            .bytes()
            .await
            .map_err(|error| JiraError::Transport(format!("unreadable answer: {error}")))?;
        match status.as_u16() {
            200..=299 => Ok(bytes),
            401 => Err(JiraError::Unauthorized.into()),
            404 => Err(JiraError::NotFound.into()),
            429 => {
                metrics::counter!("hookline_jira_rate_limited_total").increment(1);
                Err(JiraError::RateLimited { retry_after }.into())
            }
            status @ (400 | 403 | 409 | 422) => Err(WebhookError::Refused {
                status,
                messages: error_messages(&bytes),
            }),
            other => Err(JiraError::Upstream(other).into()),
        }
    }
}

/// Jira's `{"errorMessages": [...], "errors": {...}}` as one line (bounded).
fn error_messages(body: &[u8]) -> String {
    let mut messages = Vec::new();
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(list) = value["errorMessages"].as_array() {
            messages.extend(list.iter().filter_map(|m| m.as_str()).map(str::to_owned));
        }
        if let Some(errors) = value["errors"].as_object() {
            messages.extend(
                errors
                    .iter()
                    .map(|(field, message)| format!("{field}: {}", message.as_str().unwrap_or(""))),
            );
        }
        if let Some(message) = value["message"].as_str() {
            messages.push(message.to_owned());
        }
    }
    let joined = if messages.is_empty() {
        "no reason given".to_owned()
    } else {
        messages.join("; ")
    };
    joined.chars().take(500).collect()
}

/// Jira's `expirationDate`: epoch milliseconds (as the OpenAPI document has it) or a date
/// string (`2019-06-01T12:42:30.000+0000`, as its example has it).
pub fn expiration_date(value: &serde_json::Value) -> Option<DateTime<Utc>> {
    match value {
        serde_json::Value::Number(number) => DateTime::from_timestamp_millis(number.as_i64()?),
        serde_json::Value::String(text) => {
            if let Ok(millis) = text.trim().parse::<i64>() {
                return DateTime::from_timestamp_millis(millis);
            }
            DateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f%z")
                .or_else(|_| DateTime::parse_from_rfc3339(text.trim()))
                .ok()
                .map(|date| date.with_timezone(&Utc))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(events: &[&str], jql: &str) -> WebhookSpec {
        WebhookSpec {
            events: events.iter().map(|event| (*event).to_owned()).collect(),
            jql_filter: jql.to_owned(),
            field_ids_filter: None,
        }
    }

    #[test]
    fn admin_only_and_unknown_events_and_a_blank_jql_are_refused() {
        assert_eq!(
            spec(&["jira:issue_created"], "project = ORB").validate(),
            Ok(())
        );
        assert_eq!(
            spec(&["worklog_created"], "project = ORB").validate(),
            Err(SpecError::AdminOnly("worklog_created".into()))
        );
        assert!(
            SpecError::AdminOnly("attachment_created".into())
                .to_string()
                .contains("admin webhook")
        );
        assert!(matches!(
            spec(&["issuelink_created"], "x").validate(),
            Err(SpecError::AdminOnly(_))
        ));
        assert!(matches!(
            spec(&["jira:issue_exploded"], "x").validate(),
            Err(SpecError::Unknown { .. })
        ));
        assert_eq!(spec(&[], "x").validate(), Err(SpecError::NoEvents));
        assert_eq!(
            spec(&["comment_created"], "  ").validate(),
            Err(SpecError::NoJql)
        );
    }

    #[test]
    fn expiration_dates_parse_as_millis_or_as_text() {
        let expected = DateTime::from_timestamp_millis(1_764_760_364_000).expect("date");
        assert_eq!(
            expiration_date(&serde_json::json!(1_764_760_364_000_i64)),
            Some(expected)
        );
        assert_eq!(
            expiration_date(&serde_json::json!("1764760364000")),
            Some(expected)
        );
        assert_eq!(
            expiration_date(&serde_json::json!("2019-06-01T12:42:30.000+0000")),
            DateTime::from_timestamp_millis(1_559_392_950_000)
        );
        assert_eq!(expiration_date(&serde_json::json!(true)), None);
    }

    #[test]
    fn jira_error_bodies_become_one_line() {
        assert_eq!(
            error_messages(br#"{"errorMessages":["a","b"],"errors":{"url":"bad"}}"#),
            "a; b; url: bad"
        );
        assert_eq!(error_messages(b"<html>"), "no reason given");
    }
}
