//! `Deliver` and `DeliverRetry`: send a batch of deliveries to their subscriptions'
//! destinations (DESIGN §4).
//!
//! Both jobs share one handler; they travel on separate queues so that a failing subscriber's
//! retries run on their own worker capacity and cannot starve first attempts.
//!
//! 1. **Claim** the batch in one statement: each row that is due `pending`, or `in_flight` under
//!    an expired lease, becomes `in_flight` and its `attempts` grows by one, which then fences
//!    the final write.
//! 2. Read the batch's subscriptions and events (the stored envelope and raw body): on Postgres
//!    in the claim's own statement, on SQLite in one query each. A disabled subscription's
//!    deliveries are parked, unattempted.
//! 3. **Send** every delivery concurrently: the event's envelope is assembled once for all its
//!    deliveries, signed per delivery, and handed to the subscription's destination.
//! 4. **Record in waves**: every finished attempt of a wave in one transaction (the delivery's
//!    new state and its `delivery_attempt`), then one delayed `DeliverRetry` per retry delay.
//!    A subscriber that takes its whole timeout is recorded in a later wave.
//!
//! A failure schedules the next attempt durably (`next_attempt_at`, and a job pushed with a
//! delay) and the handler returns Ok, so apalis never retries on its own.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use apalis_core::task::data::Data;
use chrono::{DateTime, Utc};
use entity::delivery::status;
use entity::{subscription, webhook_event};
use sea_orm::sea_query::Value;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, QuerySelect, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::destination::broker::kind;
use crate::destination::http::HttpDestination;
use crate::destination::{AttemptResult, Destination, Message};
use crate::queue::Job;
use crate::retry_schedule::next_delay;
use crate::runner::JobContext;
use crate::waves::{WAVE_WAIT, Waves};
use crate::{db_retry, envelope, signature, sql, subscription_health};

/// Deliver a batch of `delivery` rows: first attempts, or manual retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deliver {
    /// `delivery.id`s.
    pub delivery_ids: Vec<Uuid>,
}

impl Job for Deliver {
    const QUEUE: &'static str = "deliveries";
}

/// Scheduled retries of deliveries; same work as [`Deliver`], on its own queue and workers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverRetry {
    /// `delivery.id`s.
    pub delivery_ids: Vec<Uuid>,
}

impl Job for DeliverRetry {
    const QUEUE: &'static str = "delivery_retries";
}

/// What one attempt's delivery became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The destination accepted the delivery.
    Succeeded,
    /// The attempt failed; the next one is scheduled.
    Retrying,
    /// The attempt failed and no further attempt is made.
    Dead,
}

/// What one run of the job did, for logs, metrics and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Delivered.
    pub succeeded: usize,
    /// Failed; retry scheduled.
    pub retrying: usize,
    /// Failed for the last time.
    pub dead: usize,
    /// Subscription disabled: given back unattempted.
    pub parked: usize,
    /// Not due, done, or owned by another run; nothing was done.
    pub not_claimed: usize,
}

/// The apalis handler of [`Deliver`].
pub async fn handle(
    job: Deliver,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    handle_any(&ctx, &job.delivery_ids, "deliver").await
}

/// The apalis handler of [`DeliverRetry`].
pub async fn handle_retry(
    job: DeliverRetry,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    handle_any(&ctx, &job.delivery_ids, "deliver_retry").await
}

/// Errors are infrastructure failures that outlasted [`db_retry::BUDGET`]: the rows stay
/// claimed and the sweeper hands them out again once the lease expires.
async fn handle_any(
    ctx: &JobContext,
    delivery_ids: &[Uuid],
    job: &'static str,
) -> Result<(), apalis_core::error::BoxDynError> {
    use tracing::Instrument as _;
    let started = Instant::now();
    let span = tracing::info_span!("job", job, deliveries = delivery_ids.len());
    // The batch runs in a task of its own: when apalis drops this handler (its worker restarts
    // after Redis went away), the claimed deliveries are still sent and recorded instead of
    // waiting out their lease.
    let batch = {
        let (ctx, ids) = (ctx.clone(), delivery_ids.to_vec());
        let running = ctx.running_batches.clone();
        running.spawn(async move { run(&ctx, &ids).await }.instrument(span.clone()))
    };
    let result = match batch.await {
        Ok(result) => result,
        Err(error) => Err(anyhow::anyhow!("the delivery batch's task ended: {error}")),
    };
    let _entered = span.enter();
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("hookline_jobs_total", "job" => job, "outcome" => label).increment(1);
    metrics::histogram!("hookline_job_duration_seconds", "job" => job)
        .record(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => Ok(()),
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), "delivering a batch failed");
            Err(error.into())
        }
    }
}

/// A claimed delivery.
#[derive(Debug, Clone, FromQueryResult)]
struct Claimed {
    id: Uuid,
    event_id: Uuid,
    subscription_id: Uuid,
    attempts: i32,
}

/// An attempt made, ready to be recorded.
#[derive(Debug)]
struct Attempted {
    delivery: Claimed,
    subscription: Arc<subscription::Model>,
    received_at: DateTime<Utc>,
    started_at: DateTime<Utc>,
    duration: Duration,
    result: AttemptResult,
}

/// Claims a batch, attempts each delivery and records the attempts; see the module docs.
pub async fn run(ctx: &JobContext, delivery_ids: &[Uuid]) -> anyhow::Result<BatchOutcome> {
    let mut ids = delivery_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let ClaimedBatch {
        claimed,
        subscriptions,
        events,
    } = if ctx.db.get_database_backend() == DatabaseBackend::Postgres {
        claim_with_context(ctx, &ids).await?
    } else {
        claim_then_read(ctx, &ids).await?
    };
    let mut outcome = BatchOutcome {
        not_claimed: ids.len() - claimed.len(),
        ..BatchOutcome::default()
    };
    if claimed.is_empty() {
        return Ok(outcome);
    }

    let mut parked = Vec::new();
    let mut waves = Waves::new(WAVE_WAIT);
    let mut secrets: HashMap<Uuid, Option<Arc<str>>> = HashMap::new();
    for delivery in claimed {
        let (Some(subscription), Some(event)) = (
            subscriptions.get(&delivery.subscription_id),
            events.get(&delivery.event_id),
        ) else {
            // Deleting either cascades to the delivery; this run raced with the delete.
            outcome.not_claimed += 1;
            continue;
        };
        if !subscription.enabled {
            parked.push(delivery);
            continue;
        }
        let secret = secrets
            .entry(subscription.id)
            .or_insert_with(|| match ctx.cipher.decrypt(&subscription.secret) {
                Ok(secret) => Some(Arc::from(secret.as_str())),
                Err(error) => {
                    tracing::error!(subscription.id = %subscription.id, error = %error, "could not decrypt a signing secret");
                    None
                }
            })
            .clone();
        let destination = destination_of(ctx, subscription);
        let subscription = subscription.clone();
        let event = event.clone();
        waves.spawn(async move {
            let started_at = Utc::now();
            let started = Instant::now();
            let result = match (destination, secret) {
                (Err(refused), _) => refused,
                (Ok(_), None) => AttemptResult::transient("could not decrypt the signing secret"),
                (Ok(destination), Some(secret)) => {
                    send(destination.as_ref(), &secret, &delivery, &event.body).await
                }
            };
            Attempted {
                delivery,
                subscription,
                received_at: event.received_at,
                started_at,
                duration: started.elapsed(),
                result,
            }
        });
    }
    if !parked.is_empty() {
        outcome.parked += park(ctx, &parked).await?;
    }
    while let Some(wave) = waves.next_wave().await {
        record_wave(ctx, wave, &mut outcome).await?;
    }
    Ok(outcome)
}

/// Signs the envelope for this delivery and sends it. Never fails: every problem is a result.
async fn send(
    destination: &dyn Destination,
    secret: &str,
    delivery: &Claimed,
    body: &[u8],
) -> AttemptResult {
    let id = delivery.id.to_string();
    let timestamp = Utc::now().timestamp();
    let signature = match signature::sign(secret, &id, timestamp, body) {
        Ok(signature) => signature,
        Err(error) => return AttemptResult::transient(format!("{error:#}")),
    };
    let message = Message {
        id: &id,
        timestamp,
        signature: &signature,
        body,
    };
    destination.send(message).await
}

/// The destination a subscription delivers to, or why it cannot be used: its URL for `http`,
/// its pooled broker connection for the other kinds.
fn destination_of(
    ctx: &JobContext,
    subscription: &subscription::Model,
) -> Result<Arc<dyn Destination>, AttemptResult> {
    if subscription.destination_kind == kind::HTTP {
        let http = HttpDestination::new(
            ctx.subscriber_client.clone(),
            &subscription.target_url,
            ctx.settings.allow_private_targets,
        )?;
        return Ok(Arc::new(http));
    }
    let Some(stored) = &subscription.destination else {
        return Err(AttemptResult::permanent(format!(
            "the {} destination has no settings",
            subscription.destination_kind
        )));
    };
    ctx.destinations
        .destination(subscription.id, stored, &ctx.cipher)
}

/// The envelope of one event, as sent, shared by all its deliveries of the batch.
#[derive(Debug)]
struct EventBody {
    received_at: DateTime<Utc>,
    body: Vec<u8>,
}

/// A claimed batch with what sending it needs: the deliveries' subscriptions and their events'
/// envelopes.
#[derive(Debug, Default)]
struct ClaimedBatch {
    claimed: Vec<Claimed>,
    subscriptions: HashMap<Uuid, Arc<subscription::Model>>,
    events: HashMap<Uuid, Arc<EventBody>>,
}

/// SQLite: the claim, then one query for the subscriptions and one for the events.
async fn claim_then_read(ctx: &JobContext, ids: &[Uuid]) -> anyhow::Result<ClaimedBatch> {
    let claimed = db_retry::retry("claim deliveries", || claim(ctx, ids))
        .await
        .context("could not claim the deliveries")?;
    if claimed.is_empty() {
        return Ok(ClaimedBatch::default());
    }
    let subscriptions = read_subscriptions(ctx, &claimed).await?;
    let events = read_events(ctx, &claimed).await?;
    Ok(ClaimedBatch {
        claimed,
        subscriptions,
        events,
    })
}

/// Postgres: the claim, the subscriptions and the envelopes in one statement (one round trip
/// and one commit per batch instead of three). Each event's payload and body come back once,
/// on the row of its first delivery.
async fn claim_with_context(ctx: &JobContext, ids: &[Uuid]) -> anyhow::Result<ClaimedBatch> {
    let rows = db_retry::retry("claim deliveries", || {
        ctx.db.query_all_raw(claim_with_context_statement(ctx, ids))
    })
    .await
    .context("could not claim the deliveries")?;
    let mut batch = ClaimedBatch::default();
    for row in rows {
        let delivery = Claimed::from_query_result(&row, "")?;
        if !batch.subscriptions.contains_key(&delivery.subscription_id)
            && let Some(subscription_id) = row.try_get::<Option<Uuid>>("", "s_id")?
        {
            let subscription = subscription::Model::from_query_result(&row, "s_")?;
            batch
                .subscriptions
                .insert(subscription_id, Arc::new(subscription));
        }
        if row.try_get::<bool>("", "first_of_event")?
            && let Some(received_at) = row.try_get::<Option<DateTime<Utc>>>("", "received_at")?
        {
            let raw: Vec<u8> = row.try_get("", "body")?;
            let body = match row.try_get::<Option<String>>("", "payload")? {
                Some(payload) => envelope::body(&payload, &raw),
                // Processed before payloads were stored: built from its `data` (one more read).
                None => legacy_body(ctx, delivery.event_id).await?,
            };
            batch
                .events
                .insert(delivery.event_id, Arc::new(EventBody { received_at, body }));
        }
        batch.claimed.push(delivery);
    }
    Ok(batch)
}

/// The statement of [`claim_with_context`]: the claim of [`claim`] as a data-modifying `WITH`,
/// joined to each delivery's subscription (every column, prefixed `s_`) and event. A delivery
/// whose subscription or event was deleted meanwhile comes back without them.
fn claim_with_context_statement(ctx: &JobContext, ids: &[Uuid]) -> Statement {
    let (update, values) = claim_update(ctx, DatabaseBackend::Postgres, ids);
    let text = format!(
        "WITH claimed AS ({update}), \
         numbered AS ( \
           SELECT claimed.*, \
             row_number() OVER (PARTITION BY event_id ORDER BY id) = 1 AS first_of_event \
           FROM claimed) \
         SELECT c.id, c.event_id, c.subscription_id, c.attempts, c.first_of_event, \
           e.received_at, \
           CASE WHEN c.first_of_event THEN e.payload END AS payload, \
           CASE WHEN c.first_of_event THEN e.body END AS body, \
           {} \
         FROM numbered AS c \
         LEFT JOIN webhook_event AS e ON e.id = c.event_id \
         LEFT JOIN subscription AS s ON s.id = c.subscription_id",
        sql::prefixed_columns::<subscription::Entity>("s", "s_")
    );
    Statement::from_sql_and_values(DatabaseBackend::Postgres, text, values)
}

/// The subscriptions of the claimed deliveries, in one query.
async fn read_subscriptions(
    ctx: &JobContext,
    claimed: &[Claimed],
) -> anyhow::Result<HashMap<Uuid, Arc<subscription::Model>>> {
    let mut ids: Vec<Uuid> = claimed.iter().map(|d| d.subscription_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = db_retry::retry("read subscriptions", || {
        subscription::Entity::find()
            .filter(subscription::Column::Id.is_in(ids.iter().copied()))
            .all(&ctx.db)
    })
    .await
    .context("could not load the subscriptions")?;
    Ok(rows
        .into_iter()
        .map(|row| (row.id, Arc::new(row)))
        .collect())
}

/// The envelopes of the claimed deliveries' events, in one query: the stored payload and the
/// raw body, spliced (no parse).
async fn read_events(
    ctx: &JobContext,
    claimed: &[Claimed],
) -> anyhow::Result<HashMap<Uuid, Arc<EventBody>>> {
    let mut ids: Vec<Uuid> = claimed.iter().map(|d| d.event_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let rows = db_retry::retry("read events", || {
        webhook_event::Entity::find()
            .select_only()
            .columns([
                webhook_event::Column::Id,
                webhook_event::Column::ReceivedAt,
                webhook_event::Column::Payload,
                webhook_event::Column::Body,
            ])
            .filter(webhook_event::Column::Id.is_in(ids.iter().copied()))
            .into_model::<StoredEnvelope>()
            .all(&ctx.db)
    })
    .await
    .context("could not load the events")?;
    let mut bodies = HashMap::with_capacity(rows.len());
    for row in rows {
        let body = match &row.payload {
            Some(payload) => envelope::body(payload, &row.body),
            // Processed before payloads were stored: built from its `data` (one more read).
            None => legacy_body(ctx, row.id).await?,
        };
        bodies.insert(
            row.id,
            Arc::new(EventBody {
                received_at: row.received_at,
                body,
            }),
        );
    }
    Ok(bodies)
}

/// What Deliver reads of an event.
#[derive(Debug, FromQueryResult)]
struct StoredEnvelope {
    id: Uuid,
    received_at: DateTime<Utc>,
    payload: Option<String>,
    body: Vec<u8>,
}

/// The envelope of an event processed before `payload` existed.
async fn legacy_body(ctx: &JobContext, event_id: Uuid) -> anyhow::Result<Vec<u8>> {
    let event = webhook_event::Entity::find_by_id(event_id)
        .one(&ctx.db)
        .await
        .context("could not load the event")?
        .context("the event was deleted meanwhile")?;
    Ok(envelope::body_of(&event))
}

/// Takes each delivery of `ids` that is due `pending`, or `in_flight` under an expired lease.
async fn claim(ctx: &JobContext, ids: &[Uuid]) -> Result<Vec<Claimed>, DbErr> {
    let backend = ctx.db.get_database_backend();
    let (text, values) = claim_update(ctx, backend, ids);
    let statement = Statement::from_sql_and_values(backend, sql::numbered(backend, &text), values);
    Claimed::find_by_statement(statement).all(&ctx.db).await
}

/// The claim's `UPDATE … RETURNING` and its values (the ids from `$5`).
fn claim_update(ctx: &JobContext, backend: DatabaseBackend, ids: &[Uuid]) -> (String, Vec<Value>) {
    let now = Utc::now();
    // The lease outlives the request's own timeout, so a slow but live attempt is not taken over.
    let lease_until = now + ctx.settings.lease + ctx.settings.delivery_timeout;
    let (id_filter, ids_value) = sql::id_list(backend, ids, 5);
    // `coalesce(status, '')` (status is never NULL) keeps the planner off the status index:
    // statistics taken before a burst call `pending` rare, and a plan through that index reads
    // every waiting delivery on each claim. The ids find the rows by key.
    let text = format!(
        "UPDATE delivery SET status = $1, locked_until = $2, attempts = attempts + 1, \
         updated_at = $3 \
         WHERE ((coalesce(status, '') = $4 \
                 AND (next_attempt_at IS NULL OR next_attempt_at <= $3)) \
            OR (coalesce(status, '') = $1 AND locked_until < $3)) AND {id_filter} \
         RETURNING id, event_id, subscription_id, attempts"
    );
    let mut values: Vec<Value> = vec![
        status::IN_FLIGHT.into(),
        lease_until.into(),
        now.into(),
        status::PENDING.into(),
    ];
    values.extend(ids_value);
    (text, values)
}

/// Gives claimed deliveries of disabled subscriptions back, unattempted. The sweeper skips
/// disabled subscriptions; enabling the subscription makes them due again.
async fn park(ctx: &JobContext, parked: &[Claimed]) -> anyhow::Result<usize> {
    let backend = ctx.db.get_database_backend();
    let mut count = 0;
    for delivery in parked {
        let statement = Statement::from_sql_and_values(
            backend,
            sql::numbered(
                backend,
                "UPDATE delivery SET status = $1, attempts = attempts - 1, locked_until = NULL \
                 WHERE id = $2 AND status = $3 AND attempts = $4",
            ),
            [
                status::PENDING.into(),
                delivery.id.into(),
                status::IN_FLIGHT.into(),
                delivery.attempts.into(),
            ],
        );
        let done = db_retry::retry("park a delivery", || ctx.db.execute_raw(statement.clone()))
            .await
            .context("could not park the delivery")?;
        count += usize::try_from(done.rows_affected()).unwrap_or_default();
        tracing::debug!(delivery.id = %delivery.id, "subscription disabled; delivery parked");
    }
    Ok(count)
}

/// The state one attempt leaves its delivery in.
#[derive(Debug)]
struct Decided {
    outcome: Outcome,
    next_delay: Option<Duration>,
}

/// Decides what an attempt means for its delivery: done, retry after a delay, or dead.
fn decide(ctx: &JobContext, attempted: &Attempted) -> Decided {
    let result = &attempted.result;
    if result.succeeded() {
        return Decided {
            outcome: Outcome::Succeeded,
            next_delay: None,
        };
    }
    let next_delay = if result.permanent {
        None
    } else {
        // `attempts` counts this attempt: after the first one, the first retry delay applies.
        let retry_index = usize::try_from(attempted.delivery.attempts - 1).unwrap_or(usize::MAX);
        next_delay(
            &ctx.settings.retry_schedule,
            retry_index,
            result.retry_after,
        )
    };
    Decided {
        outcome: if next_delay.is_some() {
            Outcome::Retrying
        } else {
            Outcome::Dead
        },
        next_delay,
    }
}

/// Records a wave of attempts in one transaction, then schedules the retries and keeps the
/// subscriptions' health.
async fn record_wave(
    ctx: &JobContext,
    wave: Vec<Attempted>,
    outcome: &mut BatchOutcome,
) -> anyhow::Result<()> {
    let now = Utc::now();
    let decided: Vec<Decided> = wave
        .iter()
        .map(|attempted| decide(ctx, attempted))
        .collect();
    let recorded = db_retry::retry("record delivery attempts", || {
        record(ctx, &wave, &decided, now)
    })
    .await
    .context("could not record the delivery attempts")?;

    let mut retries: HashMap<u64, Vec<Uuid>> = HashMap::new();
    let mut health: HashMap<Uuid, (Arc<subscription::Model>, bool)> = HashMap::new();
    for (attempted, decided) in wave.iter().zip(&decided) {
        let delivery = &attempted.delivery;
        let result = &attempted.result;
        metrics::counter!("hookline_delivery_attempts_total", "outcome" => result.outcome_label())
            .increment(1);
        metrics::histogram!("hookline_delivery_attempt_duration_seconds")
            .record(attempted.duration.as_secs_f64());
        if !recorded.contains(&delivery.id) {
            outcome.not_claimed += 1;
            tracing::warn!(delivery.id = %delivery.id, "lease lost while delivering; the newer run's result stands");
            continue;
        }
        let succeeded = decided.outcome == Outcome::Succeeded;
        let entry = health
            .entry(attempted.subscription.id)
            .or_insert_with(|| (attempted.subscription.clone(), false));
        entry.1 |= succeeded;
        match decided.outcome {
            Outcome::Succeeded => {
                outcome.succeeded += 1;
                let end_to_end = (now - attempted.received_at).to_std().unwrap_or_default();
                metrics::histogram!("hookline_delivery_end_to_end_seconds")
                    .record(end_to_end.as_secs_f64());
                tracing::info!(delivery.id = %delivery.id, attempt = delivery.attempts, "delivered");
            }
            Outcome::Retrying => {
                outcome.retrying += 1;
                let delay = decided.next_delay.unwrap_or_default();
                tracing::info!(
                    delivery.id = %delivery.id,
                    attempt = delivery.attempts,
                    delay_ms = delay.as_millis() as u64,
                    error = result.error.as_deref().unwrap_or_default(),
                    "delivery failed; retry scheduled"
                );
                // apalis schedules in whole seconds: round up so the job is never early; a
                // retry due sooner is pushed by the sweeper, which reads `next_attempt_at`.
                let seconds = delay.as_secs() + u64::from(delay.subsec_nanos() > 0);
                retries.entry(seconds).or_default().push(delivery.id);
            }
            Outcome::Dead => {
                outcome.dead += 1;
                metrics::counter!("hookline_deliveries_dead_total").increment(1);
                tracing::warn!(
                    delivery.id = %delivery.id,
                    attempts = delivery.attempts,
                    error = result.error.as_deref().unwrap_or_default(),
                    "delivery is dead"
                );
            }
        }
    }
    for (seconds, delivery_ids) in retries {
        let push = ctx
            .queue
            .push_after(DeliverRetry { delivery_ids }, Duration::from_secs(seconds))
            .await;
        if let Err(error) = push {
            // The rows are durable; the sweeper pushes them when they are due.
            metrics::counter!("hookline_enqueue_failures_total", "job" => "deliver_retry")
                .increment(1);
            tracing::warn!(error = format!("{error:#}"), "could not push retries");
        }
    }
    for (subscription, succeeded) in health.into_values() {
        subscription_health::track(ctx, &subscription, succeeded, now).await?;
    }
    Ok(())
}

/// One transaction: each delivery's new state (fenced by `attempts`) and its attempt row.
/// Returns the deliveries recorded (those whose claim was still this run's).
async fn record(
    ctx: &JobContext,
    wave: &[Attempted],
    decided: &[Decided],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    let rows: Vec<AttemptRow> = wave
        .iter()
        .zip(decided)
        .map(|(attempted, decided)| AttemptRow::new(ctx, attempted, decided, now))
        .collect();
    let txn = ctx.db.begin().await?;
    let recorded = if txn.get_database_backend() == DatabaseBackend::Postgres {
        record_postgres(&txn, &rows, now).await?
    } else {
        record_each(&txn, &rows, now).await?
    };
    txn.commit().await?;
    Ok(recorded)
}

/// One attempt as the columns it writes.
#[derive(Debug)]
struct AttemptRow {
    delivery_id: Uuid,
    attempts: i32,
    status: &'static str,
    next_attempt_at: Option<DateTime<Utc>>,
    /// A pending retry is left alone by the sweeper until shortly after it is due.
    locked_until: Option<DateTime<Utc>>,
    status_code: Option<i32>,
    error: Option<String>,
    excerpt: Option<String>,
    delivered_at: Option<DateTime<Utc>>,
    started_at: DateTime<Utc>,
    duration_ms: i64,
}

impl AttemptRow {
    fn new(ctx: &JobContext, attempted: &Attempted, decided: &Decided, now: DateTime<Utc>) -> Self {
        let next_attempt_at = decided.next_delay.map(|delay| now + delay);
        Self {
            delivery_id: attempted.delivery.id,
            attempts: attempted.delivery.attempts,
            status: match decided.outcome {
                Outcome::Succeeded => status::SUCCEEDED,
                Outcome::Retrying => status::PENDING,
                Outcome::Dead => status::DEAD,
            },
            next_attempt_at,
            locked_until: next_attempt_at.map(|at| at + ctx.settings.lease),
            status_code: attempted.result.status_code.map(i32::from),
            error: attempted.result.error.clone(),
            excerpt: attempted.result.excerpt.clone(),
            delivered_at: (decided.outcome == Outcome::Succeeded).then_some(now),
            started_at: attempted.started_at,
            duration_ms: i64::try_from(attempted.duration.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

/// Postgres: two statements of one shape whatever the wave's size (`unnest` of arrays).
async fn record_postgres(
    txn: &impl ConnectionTrait,
    rows: &[AttemptRow],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    // `id = ANY($2)` beside the join lets Postgres find the rows by primary key; with the
    // join alone it hashed the whole table against the unnest. `coalesce(d.status, '')` keeps
    // it off the status index (see `claim`).
    let update = Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "UPDATE delivery AS d SET status = u.status, \
           next_attempt_at = NULLIF(u.next_attempt_at, '')::timestamptz, \
           locked_until = NULLIF(u.locked_until, '')::timestamptz, \
           last_status = NULLIF(u.status_code, '')::int4, last_error = NULLIF(u.error, ''), \
           updated_at = $1, delivered_at = NULLIF(u.delivered_at, '')::timestamptz \
         FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[], $6::text[], \
                     $7::text[], $8::text[], $9::text[]) \
           AS u(id, attempts, status, next_attempt_at, locked_until, status_code, error, delivered_at) \
         WHERE d.id = u.id AND d.id = ANY($2) \
           AND coalesce(d.status, '') = 'in_flight' AND d.attempts = u.attempts \
         RETURNING d.id",
        [
            now.into(),
            rows.iter()
                .map(|r| r.delivery_id)
                .collect::<Vec<_>>()
                .into(),
            rows.iter().map(|r| r.attempts).collect::<Vec<_>>().into(),
            sql::text_array(rows.iter().map(|r| Some(r.status.to_owned()))),
            time_array(rows.iter().map(|r| r.next_attempt_at)),
            time_array(rows.iter().map(|r| r.locked_until)),
            int_array(rows.iter().map(|r| r.status_code)),
            sql::text_array(rows.iter().map(|r| r.error.clone())),
            time_array(rows.iter().map(|r| r.delivered_at)),
        ],
    );
    let recorded: std::collections::HashSet<Uuid> = txn
        .query_all_raw(update)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id"))
        .collect::<Result<_, _>>()?;
    let kept: Vec<&AttemptRow> = rows
        .iter()
        .filter(|row| recorded.contains(&row.delivery_id))
        .collect();
    if kept.is_empty() {
        return Ok(recorded);
    }
    let insert = Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "INSERT INTO delivery_attempt (id, delivery_id, attempt, started_at, duration_ms, \
           status_code, error, response_excerpt) \
         SELECT u.id, u.delivery_id, u.attempt, u.started_at, u.duration_ms, \
           NULLIF(u.status_code, '')::int4, NULLIF(u.error, ''), NULLIF(u.excerpt, '') \
         FROM unnest($1::uuid[], $2::uuid[], $3::int4[], $4::timestamptz[], $5::int8[], \
                     $6::text[], $7::text[], $8::text[]) \
           AS u(id, delivery_id, attempt, started_at, duration_ms, status_code, error, excerpt)",
        [
            kept.iter()
                .map(|_| Uuid::now_v7())
                .collect::<Vec<_>>()
                .into(),
            kept.iter()
                .map(|r| r.delivery_id)
                .collect::<Vec<_>>()
                .into(),
            kept.iter().map(|r| r.attempts).collect::<Vec<_>>().into(),
            kept.iter().map(|r| r.started_at).collect::<Vec<_>>().into(),
            kept.iter()
                .map(|r| r.duration_ms)
                .collect::<Vec<_>>()
                .into(),
            int_array(kept.iter().map(|r| r.status_code)),
            sql::text_array(kept.iter().map(|r| r.error.clone())),
            sql::text_array(kept.iter().map(|r| r.excerpt.clone())),
        ],
    );
    txn.execute_raw(insert).await?;
    Ok(recorded)
}

/// SQLite runs in-process: two small statements per attempt cost no round trip.
async fn record_each(
    txn: &impl ConnectionTrait,
    rows: &[AttemptRow],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    let backend = txn.get_database_backend();
    let mut recorded = std::collections::HashSet::with_capacity(rows.len());
    for row in rows {
        let update = Statement::from_sql_and_values(
            backend,
            "UPDATE delivery SET status = ?1, next_attempt_at = ?2, locked_until = ?3, \
               last_status = ?4, last_error = ?5, updated_at = ?6, delivered_at = ?7 \
             WHERE id = ?8 AND status = 'in_flight' AND attempts = ?9",
            [
                row.status.into(),
                row.next_attempt_at.into(),
                row.locked_until.into(),
                row.status_code.into(),
                row.error.clone().into(),
                now.into(),
                row.delivered_at.into(),
                row.delivery_id.into(),
                row.attempts.into(),
            ],
        );
        if txn.execute_raw(update).await?.rows_affected() == 0 {
            continue;
        }
        let insert = Statement::from_sql_and_values(
            backend,
            "INSERT INTO delivery_attempt (id, delivery_id, attempt, started_at, duration_ms, \
               status_code, error, response_excerpt) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            [
                Uuid::now_v7().into(),
                row.delivery_id.into(),
                row.attempts.into(),
                row.started_at.into(),
                row.duration_ms.into(),
                row.status_code.into(),
                row.error.clone().into(),
                row.excerpt.clone().into(),
            ],
        );
        txn.execute_raw(insert).await?;
        recorded.insert(row.delivery_id);
    }
    Ok(recorded)
}

/// Nullable instants as a `text[]` for `NULLIF(x, '')::timestamptz` (see [`sql::text_array`]).
fn time_array(values: impl Iterator<Item = Option<DateTime<Utc>>>) -> Value {
    sql::text_array(values.map(|at| at.map(|at| at.to_rfc3339())))
}

/// Nullable integers as a `text[]` for `NULLIF(x, '')::int4` (see [`sql::text_array`]).
fn int_array(values: impl Iterator<Item = Option<i32>>) -> Value {
    sql::text_array(values.map(|value| value.map(|value| value.to_string())))
}
