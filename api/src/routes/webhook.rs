//! `POST /webhook/jira/{connection_id}`: the ingest (DESIGN §4 "Ingest").
//!
//! The hot path does as little as it can: find the connection (cached) before a byte of the
//! body is read, read the body once into the row's buffer (within the size limit, the process'
//! budget of body bytes and the floor rate), check the signature (`X-Hub-Signature` of admin
//! webhooks, or the JWT and `matchedWebhookIds` of dynamic ones), check that the body is one
//! JSON object without building it, one `INSERT … ON CONFLICT DO NOTHING` (group commit),
//! answer. Parsing happens in the worker.

use poem::http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use tokio::time::Instant;

use chrono::Utc;
use entity::webhook_event::{self, status};
use plugins::jira::jwt;
use plugins::jira::webhook as jira_webhook;
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use secrecy::ExposeSecret as _;
use uuid::Uuid;

use crate::connection_cache::LookupError;
use crate::error::{ApiError, ApiResult};
use crate::event_writer::{RecordError, Recorded};
use crate::json_object::check_json_object;
use crate::payload::UnreadJson;
use crate::routes::ApiTags;
use crate::state::AppState;
use crate::webhook_body::{self, BodyError, ReceivedBody};

/// The ingest API.
pub struct WebhookApi;

/// What ingest answers once the event is recorded.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct IngestOut {
    /// The recorded event (the earlier one, for a duplicate).
    pub event_id: Uuid,
    /// Whether this delivery had been received before (same connection and
    /// `X-Atlassian-Webhook-Identifier`, or the same body when Jira sends no identifier).
    pub duplicate: bool,
}

/// How many seconds a webhook refused because the process holds its budget of body bytes is
/// asked to wait: bodies are held for milliseconds, so the budget frees up quickly.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Headers never stored with an event: credentials.
const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "x-auth-token",
];

#[OpenApi(tag = "ApiTags::Webhooks")]
impl WebhookApi {
    /// Receive a Jira webhook
    ///
    /// Jira posts events of one connection here. The body is recorded exactly as received and
    /// the answer is immediate; processing and delivery happen in the workers. When the
    /// connection has a webhook secret, `X-Hub-Signature: sha256=<hex>` (HMAC-SHA256 of the raw
    /// body) is required of admin webhooks. Deliveries of dynamic webhooks (registered by
    /// hookline) carry `Authorization: Bearer <JWT>` instead: HS256-signed with the app's
    /// client secret, not expired, and their `matchedWebhookIds` must name a webhook hookline
    /// registered for this connection; else 401. A signed body that is not one JSON object is
    /// refused with 400. A
    /// delivery seen before (same `X-Atlassian-Webhook-Identifier`, or the same body without
    /// one) is answered with the earlier event id and `duplicate: true`.
    ///
    /// Each connection may send `HOOKLINE_INGEST_RATE_LIMIT` webhooks per second with bursts of
    /// `HOOKLINE_INGEST_BURST`; over that the answer is 429 `rate_limited` with `Retry-After`
    /// (whole seconds), which Jira honours and retries.
    ///
    /// The body of a webhook to an unknown or disabled connection is not read (404). While the
    /// webhook bodies this process holds already add up to `HOOKLINE_INGEST_BODY_BYTES_IN_FLIGHT`
    /// the answer is 503 `busy` with `Retry-After`; a body that arrives slower than
    /// `HOOKLINE_INGEST_MIN_BODY_BYTES_PER_SEC` (after `HOOKLINE_INGEST_BODY_GRACE`) is cut off
    /// with 408 `request_timeout`. Jira retries both.
    #[oai(
        path = "/webhook/jira/:connection_id",
        method = "post",
        operation_id = "receive_jira_webhook"
    )]
    async fn receive_jira_webhook(
        &self,
        state: poem::web::Data<&AppState>,
        req: &Request,
        /// The connection's id, from its webhook URL.
        connection_id: Path<String>,
        body: UnreadJson,
    ) -> ApiResult<Json<IngestOut>> {
        let started = Instant::now();
        let result = ingest(&state, req, &connection_id, body, started).await;
        let outcome = match &result {
            Ok(out) if out.duplicate => "duplicate",
            Ok(_) => "accepted",
            Err(error) => error_outcome(error),
        };
        metrics::counter!("hookline_ingest_requests_total", "outcome" => outcome).increment(1);
        metrics::histogram!("hookline_ingest_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        result.map(Json)
    }
}

fn error_outcome(error: &ApiError) -> &'static str {
    match error {
        ApiError::NotFound(_) => "unknown_connection",
        ApiError::Unauthorized(_) => "bad_signature",
        ApiError::PayloadTooLarge(_) => "too_large",
        ApiError::RequestTimeout(_) => "too_slow",
        ApiError::Unavailable(Json(body), _) if body.code == "busy" => "busy",
        ApiError::TooManyRequests(..) => "rate_limited",
        ApiError::BadRequest(_) => "bad_body",
        ApiError::Unavailable(..) => "unavailable",
        _ => "error",
    }
}

/// Records one webhook for `connection_id` as ingest does (signature, rate limit, dedupe,
/// group commit, job push). The console's `Send a test event` goes through here too.
pub(crate) async fn ingest(
    state: &AppState,
    req: &Request,
    connection_id: &str,
    body: UnreadJson,
    started: Instant,
) -> ApiResult<IngestOut> {
    let not_found = || ApiError::not_found("connection");
    // What can be refused from the headers alone is refused first: no database read, no body.
    let declared_length = declared_length(req);
    if declared_length.is_some_and(|length| length > state.body_rules.limit_bytes) {
        return Err(ApiError::payload_too_large(state.body_rules.limit_bytes));
    }
    let connection_id = Uuid::parse_str(connection_id).map_err(|_| not_found())?;
    // Before a byte of the body is read: a body to an unknown or disabled connection is never
    // read (the answer closes the connection).
    let mut connection = state
        .connections
        .get(&state.db, &state.cipher, connection_id)
        .await
        .map_err(lookup_error)?
        .ok_or_else(not_found)?;

    // The body's bytes stay counted in the budget until the request is answered.
    let ReceivedBody {
        bytes: body,
        reservation: _held,
    } = webhook_body::read(
        body.0,
        declared_length,
        started,
        &state.body_rules,
        &state.body_budget,
    )
    .await
    .map_err(body_error)?;

    let signature = header_str(req, jira_webhook::SIGNATURE_HEADER);
    // A dynamic webhook (registered by hookline through OAuth) is authenticated by a JWT and
    // its `matchedWebhookIds` instead of `X-Hub-Signature`; admin webhooks keep the latter.
    let bearer = if signature.is_none() {
        bearer_token(req)
    } else {
        None
    };
    if let Some(token) = bearer {
        connection = verify_dynamic_delivery(state, connection, token, &body).await?;
    } else if let Some(secret) = &connection.webhook_secret
        && let Err(error) = jira_webhook::verify_signature(secret.expose_secret(), &body, signature)
    {
        // The cached secret may be stale: check once more against the stored one.
        connection = state
            .connections
            .reload(&state.db, &state.cipher, connection_id)
            .await
            .map_err(lookup_error)?
            .ok_or_else(not_found)?;
        if let Some(secret) = &connection.webhook_secret {
            jira_webhook::verify_signature(secret.expose_secret(), &body, signature)
                .map_err(|_| ApiError::unauthorized(error.to_string()))?;
        }
    }

    // After the signature (an unsigned flood must not spend the connection's budget), before
    // anything is written.
    if let Err(limited) = state.rate_limiter.check(connection.id) {
        return Err(ApiError::rate_limited(
            format!(
                "connection {} sends webhooks faster than its limit; retry after {} s",
                connection.id, limited.retry_after_secs
            ),
            limited.retry_after_secs,
        ));
    }

    // Only what the worker can parse is accepted: a body it could not read would be recorded
    // only to fail. Jira does not retry a 400, and a retry would not fix the body either.
    if let Err(problem) = check_json_object(&body) {
        return Err(ApiError::bad_request(problem));
    }

    let delivery_key =
        jira_webhook::delivery_key(header_str(req, jira_webhook::IDENTIFIER_HEADER), &body);
    let received_at = Utc::now();
    let event = webhook_event::Model {
        id: Uuid::now_v7(),
        connection_id: connection.id,
        company_id: connection.company_id,
        plugin_id: connection.plugin_id.clone(),
        delivery_key,
        received_at,
        headers: stored_headers(req),
        // Moved, not copied: the buffer the body was read into becomes the row's.
        body,
        status: status::RECEIVED.to_owned(),
        attempts: 0,
        // The grace the sweeper gives this row's own job before it enqueues it again.
        locked_until: Some(received_at + state.ingest_grace),
        event_type: None,
        data: None,
        payload: None,
        error: None,
        processed_at: None,
        replay_of: None,
    };
    // Committed together with the requests arriving meanwhile (group commit). Any database
    // failure is answered 503: Jira retries 5xx, and the event is not ours yet.
    let event_id = match state.events.record(event).await {
        Ok(Recorded::Inserted(event_id)) => event_id,
        Ok(Recorded::Duplicate(event_id)) => {
            return Ok(IngestOut {
                event_id,
                duplicate: true,
            });
        }
        Err(RecordError::ConnectionGone) => {
            state.connections.forget(connection_id);
            return Err(not_found());
        }
        Err(RecordError::Unavailable(error)) => {
            return Err(ApiError::unavailable(anyhow::anyhow!("{error}")));
        }
    };

    // The event writer enqueues the commit's events as one job, after the commit.
    tracing::debug!(event.id = %event_id, connection.id = %connection.id, "event recorded");
    Ok(IngestOut {
        event_id,
        duplicate: false,
    })
}

/// Leeway for the `exp` of a dynamic delivery's JWT (clock skew between Jira and us).
const JWT_LEEWAY: std::time::Duration = std::time::Duration::from_secs(30);

/// Checks a dynamic webhook delivery: the bearer JWT must be HS256-signed with the app's client
/// secret (`JIRA_CLIENT_SECRET`) and not expired, and `matchedWebhookIds` must name a webhook
/// hookline registered for this connection (Jira's ids are per site, so they are matched with
/// the connection). The cached ids are read again once before a delivery is refused.
async fn verify_dynamic_delivery(
    state: &AppState,
    connection: std::sync::Arc<crate::connection_cache::IngestConnection>,
    token: &str,
    body: &[u8],
) -> ApiResult<std::sync::Arc<crate::connection_cache::IngestConnection>> {
    let Some(oauth) = state.jira.tokens().oauth() else {
        return Err(ApiError::unauthorized(
            "a bearer token was sent, but this deployment has no Atlassian app              (JIRA_CLIENT_SECRET) to verify dynamic webhook deliveries with",
        ));
    };
    jwt::verify(
        token,
        oauth.config().client_secret.as_bytes(),
        Utc::now(),
        JWT_LEEWAY,
    )
    .map_err(|error| ApiError::unauthorized(error.to_string()))?;
    let matched = matched_webhook_ids(body);
    if matched.is_empty() {
        return Err(ApiError::unauthorized(
            "a delivery with a bearer JWT must carry matchedWebhookIds (a dynamic webhook's              delivery)",
        ));
    }
    let names_ours = |connection: &crate::connection_cache::IngestConnection| {
        matched
            .iter()
            .any(|id| connection.dynamic_webhook_ids.contains(id))
    };
    if names_ours(&connection) {
        return Ok(connection);
    }
    let connection = state
        .connections
        .reload(&state.db, &state.cipher, connection.id)
        .await
        .map_err(lookup_error)?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    if names_ours(&connection) {
        Ok(connection)
    } else {
        Err(ApiError::unauthorized(
            "matchedWebhookIds names no webhook hookline registered for this connection",
        ))
    }
}

/// The ids in the body's `matchedWebhookIds` (numbers, or numbers as text); empty when there
/// are none or the body is not a JSON object.
fn matched_webhook_ids(body: &[u8]) -> Vec<i64> {
    #[derive(serde::Deserialize)]
    struct Matched {
        #[serde(rename = "matchedWebhookIds", default)]
        ids: Vec<serde_json::Value>,
    }
    serde_json::from_slice::<Matched>(body)
        .map(|matched| {
            matched
                .ids
                .iter()
                .filter_map(|id| match id {
                    serde_json::Value::Number(number) => number.as_i64(),
                    serde_json::Value::String(text) => text.trim().parse().ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(req: &Request) -> Option<&str> {
    let value = header_str(req, "authorization")?.trim();
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|token| !token.is_empty())
}

/// The request's `Content-Length`, unless its body is chunked.
fn declared_length(req: &Request) -> Option<usize> {
    if req.headers().contains_key(TRANSFER_ENCODING) {
        return None;
    }
    req.headers()
        .get(CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn body_error(error: BodyError) -> ApiError {
    match error {
        BodyError::TooLarge { limit } => ApiError::payload_too_large(limit),
        BodyError::Busy(full) => ApiError::busy(
            format!("{full}; retry after {BUSY_RETRY_AFTER_SECS} s"),
            BUSY_RETRY_AFTER_SECS,
        ),
        error @ BodyError::TooSlow { .. } => ApiError::request_timeout(error.to_string()),
        error @ BodyError::Broken(_) => ApiError::bad_request(error.to_string()),
    }
}

fn lookup_error(error: LookupError) -> ApiError {
    match error {
        LookupError::Database(error) => ApiError::unavailable(error),
        LookupError::Secret(..) => ApiError::internal(error),
    }
}

fn header_str<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
}

/// The request's headers as a JSON object, names lower-cased, credentials left out.
fn stored_headers(req: &Request) -> serde_json::Value {
    let mut headers = serde_json::Map::new();
    for (name, value) in req.headers() {
        let name = name.as_str();
        if CREDENTIAL_HEADERS.contains(&name) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name) {
            Some(serde_json::Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.to_owned(), serde_json::Value::String(value));
            }
        }
    }
    serde_json::Value::Object(headers)
}
