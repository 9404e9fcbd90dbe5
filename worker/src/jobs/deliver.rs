//! `Deliver` and `DeliverRetry`: POST one delivery to its subscriber.
//!
//! Both jobs share one handler; they travel on separate queues so that a failing subscriber's
//! retries run on their own worker capacity and cannot starve first attempts. The job claims the
//! row with a conditional UPDATE (due `pending`, or `in_flight` under an expired lease) that
//! increments `attempts`, which then fences the final write. Every attempt is recorded as a
//! `delivery_attempt`; a failure schedules the next attempt durably (`next_attempt_at`, and a
//! job pushed with a delay) and the handler returns Ok, so apalis never retries on its own.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis_core::task::data::Data;
use chrono::{DateTime, SecondsFormat, Utc};
use entity::delivery::{self, status};
use entity::{delivery_attempt, subscription, webhook_event};
use rand::Rng as _;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, EntityTrait, QueryFilter, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::queue::Job;
use crate::runner::JobContext;
use crate::signature;
use crate::storable;
use crate::target::{self, ForbiddenTarget};

/// Deliver one `delivery` row to its subscription's URL: a first attempt, or a manual retry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// `delivery.id`.
    pub delivery_id: Uuid,
}

impl Job for Deliver {
    const QUEUE: &'static str = "deliver";
}

/// A scheduled retry of a delivery; same work as [`Deliver`], on its own queue and workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverRetry {
    /// `delivery.id`.
    pub delivery_id: Uuid,
}

impl Job for DeliverRetry {
    const QUEUE: &'static str = "deliver_retry";
}

/// Longest `Retry-After` honoured; a subscriber asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Most bytes of a response body kept in `delivery_attempt.response_excerpt`.
pub const EXCERPT_BYTES: usize = 1024;

/// How the subscriber HTTP client behaves.
#[derive(Debug, Clone, Copy)]
pub struct ClientSettings {
    /// Time allowed to establish the connection.
    pub connect_timeout: Duration,
    /// Time allowed for the whole request, response body excerpt included.
    pub timeout: Duration,
    /// Let deliveries reach loopback and private addresses.
    pub allow_private_targets: bool,
}

/// The HTTP client deliveries are sent with: bounded timeouts, no redirects, no proxy, and the
/// SSRF guard in its DNS resolver.
pub fn subscriber_client(settings: ClientSettings) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .dns_resolver(std::sync::Arc::new(target::GuardedResolver {
            allow_private: settings.allow_private_targets,
        }))
        .user_agent(concat!("hookline/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("could not build the subscriber HTTP client")
}

/// What one run of the job did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The subscriber accepted the delivery.
    Succeeded,
    /// The attempt failed; the next one is scheduled.
    Retrying,
    /// The attempt failed and no further attempt is made.
    Dead,
    /// The subscription is disabled; the delivery waits, unattempted, until it is enabled.
    Parked,
    /// Not due, done, or owned by another run; nothing was done.
    NotClaimed,
}

impl Outcome {
    /// The label used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Retrying => "retrying",
            Self::Dead => "dead",
            Self::Parked => "parked",
            Self::NotClaimed => "not_claimed",
        }
    }
}

/// The apalis handler of [`Deliver`].
pub async fn handle(
    job: Deliver,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    handle_any(&ctx, job.delivery_id, "deliver").await
}

/// The apalis handler of [`DeliverRetry`].
pub async fn handle_retry(
    job: DeliverRetry,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    handle_any(&ctx, job.delivery_id, "deliver_retry").await
}

/// Errors are infrastructure failures (database down): the row stays claimed and the sweeper
/// hands it out again once the lease expires.
async fn handle_any(
    ctx: &JobContext,
    delivery_id: Uuid,
    job: &'static str,
) -> Result<(), apalis_core::error::BoxDynError> {
    use tracing::Instrument as _;
    let started = Instant::now();
    // One span per job; the event and subscription are filled in once the delivery is read.
    let span = tracing::info_span!(
        "job",
        job,
        delivery.id = %delivery_id,
        event.id = tracing::field::Empty,
        subscription.id = tracing::field::Empty
    );
    let result = run(ctx, delivery_id).instrument(span.clone()).await;
    let outcome = match &result {
        Ok(outcome) => outcome.as_str(),
        Err(_) => "error",
    };
    let _entered = span.enter();
    metrics::counter!("hookline_jobs_total", "job" => job, "outcome" => outcome).increment(1);
    metrics::histogram!("hookline_job_duration_seconds", "job" => job)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(delivery.id = %delivery_id, error = format!("{error:#}"), "delivering failed");
            Err(error.into())
        }
    }
}

/// What an attempt produced.
#[derive(Debug, Default)]
struct AttemptResult {
    status_code: Option<u16>,
    error: Option<String>,
    excerpt: Option<String>,
    retry_after: Option<Duration>,
    /// No later attempt can succeed (target refused by the SSRF guard).
    permanent: bool,
}

impl AttemptResult {
    fn succeeded(&self) -> bool {
        self.error.is_none()
            && self
                .status_code
                .is_some_and(|code| (200..300).contains(&code))
    }
}

/// Claims and attempts one delivery.
pub async fn run(ctx: &JobContext, delivery_id: Uuid) -> anyhow::Result<Outcome> {
    let Some(claimed) = claim(ctx, delivery_id).await? else {
        tracing::debug!(delivery.id = %delivery_id, "delivery not claimed: not due, done or owned by another run");
        return Ok(Outcome::NotClaimed);
    };
    let span = tracing::Span::current();
    span.record("event.id", tracing::field::display(claimed.event_id));
    span.record(
        "subscription.id",
        tracing::field::display(claimed.subscription_id),
    );
    let subscription = subscription::Entity::find_by_id(claimed.subscription_id)
        .one(&ctx.db)
        .await
        .context("could not load the subscription")?;
    let event = webhook_event::Entity::find_by_id(claimed.event_id)
        .one(&ctx.db)
        .await
        .context("could not load the event")?;
    let (Some(subscription), Some(event)) = (subscription, event) else {
        // Deleting either cascades to the delivery; this run raced with the delete.
        return Ok(Outcome::NotClaimed);
    };
    if !subscription.enabled {
        return park(ctx, &claimed).await;
    }

    let attempt_started_at = Utc::now();
    let started = Instant::now();
    let result = attempt(ctx, &claimed, &event, &subscription).await;
    let duration = started.elapsed();
    let outcome_label = match (&result.status_code, result.succeeded()) {
        (_, true) => "success",
        (Some(_), false) => "http_error",
        (None, false) if result.permanent => "refused",
        (None, false) => "network_error",
    };
    metrics::counter!("hookline_delivery_attempts_total", "outcome" => outcome_label).increment(1);
    metrics::histogram!("hookline_delivery_attempt_duration_seconds")
        .record(duration.as_secs_f64());

    let now = Utc::now();
    let next_delay = if result.succeeded() || result.permanent {
        None
    } else {
        // `attempts` counts this attempt: after the first one, the first retry delay applies.
        let retry_index = usize::try_from(claimed.attempts - 1).unwrap_or(usize::MAX);
        next_delay(
            &ctx.settings.retry_schedule,
            retry_index,
            result.retry_after,
        )
    };
    let outcome = if result.succeeded() {
        Outcome::Succeeded
    } else if next_delay.is_some() {
        Outcome::Retrying
    } else {
        Outcome::Dead
    };
    let next_attempt_at = next_delay.map(|delay| now + delay);
    let new_status = match outcome {
        Outcome::Succeeded => status::SUCCEEDED,
        Outcome::Retrying => status::PENDING,
        _ => status::DEAD,
    };

    let txn = ctx
        .db
        .begin()
        .await
        .context("could not start a transaction")?;
    let finished = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(new_status))
        .col_expr(
            delivery::Column::NextAttemptAt,
            Expr::value(next_attempt_at),
        )
        // A pending retry is left alone by the sweeper until it is due.
        .col_expr(delivery::Column::LockedUntil, Expr::value(next_attempt_at))
        .col_expr(
            delivery::Column::LastStatus,
            Expr::value(result.status_code.map(i32::from)),
        )
        .col_expr(
            delivery::Column::LastError,
            Expr::value(result.error.clone()),
        )
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        .col_expr(
            delivery::Column::DeliveredAt,
            Expr::value((outcome == Outcome::Succeeded).then_some(now)),
        )
        .filter(delivery::Column::Id.eq(claimed.id))
        .filter(delivery::Column::Status.eq(status::IN_FLIGHT))
        .filter(delivery::Column::Attempts.eq(claimed.attempts))
        .exec(&txn)
        .await
        .context("could not record the delivery's state")?;
    if finished.rows_affected == 0 {
        tracing::warn!(delivery.id = %claimed.id, "lease lost while delivering; the newer run's result stands");
        return Ok(Outcome::NotClaimed);
    }
    delivery_attempt::Entity::insert(delivery_attempt::ActiveModel {
        id: Set(Uuid::now_v7()),
        delivery_id: Set(claimed.id),
        attempt: Set(claimed.attempts),
        started_at: Set(attempt_started_at),
        duration_ms: Set(i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)),
        status_code: Set(result.status_code.map(i32::from)),
        error: Set(result.error.clone()),
        response_excerpt: Set(result.excerpt.clone()),
    })
    .exec(&txn)
    .await
    .context("could not record the attempt")?;
    txn.commit().await.context("could not commit the attempt")?;

    match outcome {
        Outcome::Succeeded => {
            let end_to_end = (now - event.received_at).to_std().unwrap_or_default();
            metrics::histogram!("hookline_delivery_end_to_end_seconds")
                .record(end_to_end.as_secs_f64());
            tracing::info!(delivery.id = %claimed.id, attempt = claimed.attempts, "delivered");
        }
        Outcome::Retrying => {
            let delay = next_delay.unwrap_or_default();
            tracing::info!(
                delivery.id = %claimed.id,
                attempt = claimed.attempts,
                delay_ms = delay.as_millis() as u64,
                error = result.error.as_deref().unwrap_or_default(),
                "delivery failed; retry scheduled"
            );
            // apalis schedules in whole seconds: round up so the job is never early; a retry
            // due sooner is pushed by the sweeper, which reads `next_attempt_at`.
            let push = ctx
                .queue
                .push_after(
                    DeliverRetry {
                        delivery_id: claimed.id,
                    },
                    Duration::from_secs(delay.as_secs() + u64::from(delay.subsec_nanos() > 0)),
                )
                .await;
            if let Err(error) = push {
                // The row is durable; the sweeper pushes it when it is due.
                tracing::warn!(delivery.id = %claimed.id, error = format!("{error:#}"), "could not push the retry");
            }
        }
        _ => {
            metrics::counter!("hookline_deliveries_dead_total").increment(1);
            tracing::warn!(
                delivery.id = %claimed.id,
                attempts = claimed.attempts,
                error = result.error.as_deref().unwrap_or_default(),
                "delivery is dead"
            );
        }
    }
    track_subscription_health(ctx, &subscription, outcome == Outcome::Succeeded, now).await?;
    Ok(outcome)
}

/// Takes the delivery if it is due `pending`, or `in_flight` under an expired lease.
async fn claim(ctx: &JobContext, delivery_id: Uuid) -> anyhow::Result<Option<delivery::Model>> {
    let now = Utc::now();
    // The lease outlives the request's own timeout, so a slow but live attempt is not taken over.
    let lease_until = now + ctx.settings.lease + ctx.settings.delivery_timeout;
    let claimed = delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(status::IN_FLIGHT))
        .col_expr(delivery::Column::LockedUntil, Expr::value(lease_until))
        .col_expr(
            delivery::Column::Attempts,
            Expr::col(delivery::Column::Attempts).add(1),
        )
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        .filter(delivery::Column::Id.eq(delivery_id))
        .filter(
            Condition::any()
                .add(
                    Condition::all()
                        .add(delivery::Column::Status.eq(status::PENDING))
                        .add(
                            Condition::any()
                                .add(delivery::Column::NextAttemptAt.is_null())
                                .add(delivery::Column::NextAttemptAt.lte(now)),
                        ),
                )
                .add(
                    Condition::all()
                        .add(delivery::Column::Status.eq(status::IN_FLIGHT))
                        .add(delivery::Column::LockedUntil.lt(now)),
                ),
        )
        .exec(&ctx.db)
        .await
        .context("could not claim the delivery")?;
    if claimed.rows_affected == 0 {
        return Ok(None);
    }
    delivery::Entity::find_by_id(delivery_id)
        .one(&ctx.db)
        .await
        .context("could not load the claimed delivery")
}

/// Gives a claimed delivery of a disabled subscription back, unattempted. The sweeper skips
/// disabled subscriptions; enabling the subscription makes it due again.
async fn park(ctx: &JobContext, claimed: &delivery::Model) -> anyhow::Result<Outcome> {
    delivery::Entity::update_many()
        .col_expr(delivery::Column::Status, Expr::value(status::PENDING))
        .col_expr(
            delivery::Column::Attempts,
            Expr::value(claimed.attempts - 1),
        )
        .col_expr(
            delivery::Column::LockedUntil,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(delivery::Column::Id.eq(claimed.id))
        .filter(delivery::Column::Status.eq(status::IN_FLIGHT))
        .filter(delivery::Column::Attempts.eq(claimed.attempts))
        .exec(&ctx.db)
        .await
        .context("could not park the delivery")?;
    tracing::debug!(delivery.id = %claimed.id, "subscription disabled; delivery parked");
    Ok(Outcome::Parked)
}

/// Sends one attempt and classifies its result. Never fails: every problem is an attempt result.
async fn attempt(
    ctx: &JobContext,
    delivery: &delivery::Model,
    event: &webhook_event::Model,
    subscription: &subscription::Model,
) -> AttemptResult {
    let url = match reqwest::Url::parse(&subscription.target_url) {
        Ok(url) => url,
        Err(error) => {
            return AttemptResult {
                error: Some(format!("the target URL is not a URL: {error}")),
                permanent: true,
                ..AttemptResult::default()
            };
        }
    };
    if let Err(refused) = target::check_literal_host(&url, ctx.settings.allow_private_targets) {
        return AttemptResult {
            error: Some(refused.to_string()),
            permanent: true,
            ..AttemptResult::default()
        };
    }
    let secret = match ctx.cipher.decrypt(&subscription.secret) {
        Ok(secret) => secret,
        Err(error) => {
            return AttemptResult {
                error: Some(format!("could not decrypt the signing secret: {error}")),
                ..AttemptResult::default()
            };
        }
    };
    let body = delivery_body(event);
    let msg_id = delivery.id.to_string();
    let timestamp = Utc::now().timestamp();
    let signature = match signature::sign(&secret, &msg_id, timestamp, &body) {
        Ok(signature) => signature,
        Err(error) => {
            return AttemptResult {
                error: Some(format!("{error:#}")),
                ..AttemptResult::default()
            };
        }
    };
    let sent = ctx
        .subscriber_client
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(error) => {
            return AttemptResult {
                permanent: is_forbidden(&error),
                error: Some(error_chain(&error)),
                ..AttemptResult::default()
            };
        }
    };
    let status_code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| parse_retry_after(value, Utc::now()));
    let mut excerpt = Vec::new();
    let mut read_error = None;
    while excerpt.len() < EXCERPT_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(error) => {
                read_error = Some(error_chain(&error));
                break;
            }
        }
    }
    excerpt.truncate(EXCERPT_BYTES);
    // The subscriber's bytes, made storable (Postgres refuses NUL in text).
    let excerpt = (!excerpt.is_empty())
        .then(|| storable::text(&String::from_utf8_lossy(&excerpt)).into_owned());
    let error = if (200..300).contains(&status_code) {
        // A 2xx counts even when reading its body failed: the subscriber accepted it.
        None
    } else {
        Some(read_error.unwrap_or_else(|| format!("the subscriber answered HTTP {status_code}")))
    };
    AttemptResult {
        status_code: Some(status_code),
        error,
        excerpt,
        retry_after,
        permanent: false,
    }
}

/// The body POSTed to subscribers (DESIGN §10): `{"type", "timestamp", "data"}`.
///
/// `data` is the parsed event; an event without it (not processed by a version that stores it)
/// still goes out, with its id, type and raw payload.
pub fn delivery_body(event: &webhook_event::Model) -> Vec<u8> {
    let event_type = event
        .event_type
        .clone()
        .or_else(|| {
            event
                .data
                .as_ref()
                .and_then(|data| data.get("eventType"))
                .and_then(|value| value.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".to_owned());
    let data = event.data.clone().unwrap_or_else(|| {
        let raw = serde_json::from_slice::<serde_json::Value>(&event.body).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&event.body).into_owned())
        });
        serde_json::json!({
            "eventId": event.id,
            "eventType": event_type,
            "raw": raw,
        })
    });
    let body = serde_json::json!({
        "type": event_type,
        "timestamp": event.received_at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "data": data,
    });
    body.to_string().into_bytes()
}

/// The delay before retry number `retry_index` (0-based), or None when the schedule is
/// exhausted. The scheduled delay gets ±20 % jitter; a `Retry-After` longer than that wins,
/// capped at [`MAX_RETRY_AFTER`] (a subscriber cannot make hookline wait longer than that, and
/// cannot make it retry sooner than the schedule).
pub fn next_delay(
    schedule: &[Duration],
    retry_index: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = *schedule.get(retry_index)?;
    let jitter = rand::rng().random_range(0.8..=1.2);
    let jittered = scheduled.mul_f64(jitter);
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

/// Parses `Retry-After`: delay seconds, or an HTTP date.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.with_timezone(&Utc) - now).to_std().unwrap_or_default())
}

/// Keeps `failing_since` current and disables a subscription that has been failing for longer
/// than `disable_failing_after`.
async fn track_subscription_health(
    ctx: &JobContext,
    subscription: &subscription::Model,
    succeeded: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let id = subscription::Column::Id.eq(subscription.id);
    if succeeded {
        if subscription.failing_since.is_some() {
            subscription::Entity::update_many()
                .col_expr(
                    subscription::Column::FailingSince,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(id)
                .exec(&ctx.db)
                .await
                .context("could not clear failing_since")?;
        }
        return Ok(());
    }
    let Some(failing_since) = subscription.failing_since else {
        subscription::Entity::update_many()
            .col_expr(subscription::Column::FailingSince, Expr::value(now))
            .filter(id)
            .filter(subscription::Column::FailingSince.is_null())
            .exec(&ctx.db)
            .await
            .context("could not set failing_since")?;
        return Ok(());
    };
    let limit = ctx.settings.disable_failing_after;
    if (now - failing_since).to_std().unwrap_or_default() < limit {
        return Ok(());
    }
    let reason = format!(
        "deliveries failed continuously since {} (longer than {}s)",
        failing_since.to_rfc3339_opts(SecondsFormat::Secs, true),
        limit.as_secs()
    );
    let disabled = subscription::Entity::update_many()
        .col_expr(subscription::Column::Enabled, Expr::value(false))
        .col_expr(
            subscription::Column::DisabledReason,
            Expr::value(reason.clone()),
        )
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
        .filter(id)
        .filter(subscription::Column::Enabled.eq(true))
        .filter(subscription::Column::FailingSince.is_not_null())
        .exec(&ctx.db)
        .await
        .context("could not disable the failing subscription")?;
    if disabled.rows_affected > 0 {
        metrics::counter!("hookline_subscriptions_disabled_total").increment(1);
        tracing::warn!(subscription.id = %subscription.id, reason, "subscription disabled");
    }
    Ok(())
}

/// Whether the request failed because the SSRF guard refused every address.
fn is_forbidden(error: &reqwest::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if current.is::<ForbiddenTarget>() {
            return true;
        }
        source = current.source();
    }
    false
}

/// An error with its causes, `a: b: c`, as reqwest's own `Display` stops at the first.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let cause = current.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter_and_end() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..50 {
            let first = next_delay(&schedule, 0, None).expect("a retry");
            assert!(first >= Duration::from_secs(8) && first <= Duration::from_secs(12));
        }
        assert!(next_delay(&schedule, 2, None).is_none());
    }

    #[test]
    fn retry_after_extends_the_delay_within_bounds() {
        let schedule = [Duration::from_secs(10)];
        let asked = next_delay(&schedule, 0, Some(Duration::from_secs(120))).expect("a retry");
        assert_eq!(asked, Duration::from_secs(120));
        let capped = next_delay(&schedule, 0, Some(Duration::from_secs(86_400))).expect("retry");
        assert_eq!(capped, MAX_RETRY_AFTER);
        let shorter = next_delay(&schedule, 0, Some(Duration::from_secs(1))).expect("a retry");
        assert!(shorter >= Duration::from_secs(8));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = DateTime::parse_from_rfc3339("2015-10-21T07:27:00Z")
            .expect("date")
            .with_timezone(&Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now),
            Some(Duration::from_secs(60))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
