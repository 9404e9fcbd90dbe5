//! `ProcessEvents`: turn a batch of recorded `webhook_event`s into processed ones, with their
//! deliveries (DESIGN §1, §4).
//!
//! 1. **Claim** the whole batch in one `UPDATE … RETURNING` (status `received`, or `processing`
//!    under an expired lease). `attempts` grows by one and fences the final write, so a job that
//!    runs twice, or two workers racing on one event, do the work once.
//! 2. An event claimed more than `poison_attempts` times ends `failed` with its last error.
//! 3. **Parse** each body once; a malformed one ends `failed` with the reason.
//! 4. Read the batch's connections (on Postgres in the claim's own statement, on SQLite in one
//!    query) and its companies' subscriptions through the
//!    [`SubscriptionCache`](crate::subscription_cache::SubscriptionCache).
//! 5. **Enrich** concurrently, bounded by `enrichment_concurrency`, one issue read per
//!    (connection, issue) of the batch.
//! 6. Build each event's envelope once ([`envelope::stored_payload`]) and match subscriptions.
//! 7. **Commit in waves**: whatever has finished is written together, one transaction marking
//!    the events and inserting their deliveries, as soon as the wave has waited [`WAVE_WAIT`]
//!    for slower members (or everything is done). An event whose Jira read takes its whole
//!    budget goes out in a later wave and holds nobody back.
//! 8. Push one `Deliver` job per batch of new deliveries.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context as _;
use apalis_core::task::data::Data;
use chrono::{DateTime, Utc};
use entity::webhook_event::status;
use entity::{plugin_connection, subscription};
use futures::future::{BoxFuture, FutureExt as _, Shared};
use plugins::jira::event as jira_event;
use sea_orm::sea_query::Value;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, DbErr, EntityTrait, FromQueryResult,
    QueryFilter, Statement, TransactionTrait,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::enrichment::{self, Enrichment};
use crate::jobs::Deliver;
use crate::matching::{EventFacts, matches};
use crate::queue::Job;
use crate::runner::JobContext;
use crate::waves::{WAVE_WAIT, Waves};
use crate::{db_retry, envelope, sql, storable};

/// Process a batch of recorded webhook events (one batch of the ingest's group commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessEvents {
    /// `webhook_event.id`s.
    pub event_ids: Vec<Uuid>,
}

impl Job for ProcessEvents {
    const QUEUE: &'static str = "process_events";
}

/// What one run of the job did, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Events processed by this run.
    pub processed: usize,
    /// Events that ended `failed` (bad payload, or poison).
    pub failed: usize,
    /// Events another run owns or finished; nothing was done with them.
    pub not_claimed: usize,
    /// Events given back for a later attempt after their commit failed.
    pub released: usize,
    /// Deliveries created.
    pub deliveries: usize,
}

/// What processing did to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Processed by this run.
    Processed,
    /// Ended `failed` (bad payload, or poison).
    Failed,
    /// Given back for a later attempt after its commit failed.
    Released,
    /// Another run owns or finished it; nothing was done.
    NotClaimed,
}

impl Outcome {
    /// The label used in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Failed => "failed",
            Self::Released => "released",
            Self::NotClaimed => "not_claimed",
        }
    }
}

/// Processes one event as a batch of one (the same code path as any batch).
pub async fn run_one(ctx: &JobContext, event_id: Uuid) -> anyhow::Result<Outcome> {
    let batch = run(ctx, &[event_id]).await?;
    Ok(if batch.processed == 1 {
        Outcome::Processed
    } else if batch.failed == 1 {
        Outcome::Failed
    } else if batch.released == 1 {
        Outcome::Released
    } else {
        Outcome::NotClaimed
    })
}

/// The apalis handler: the job's events are processed in one batch with the other jobs running
/// at this moment ([`EventBatches`](crate::event_batches::EventBatches)). An error is an
/// infrastructure failure that outlasted [`db_retry::BUDGET`]: the rows stay claimed and the
/// sweeper hands them out again once their lease expires.
pub async fn handle(
    job: ProcessEvents,
    ctx: Data<JobContext>,
) -> Result<(), apalis_core::error::BoxDynError> {
    use tracing::Instrument as _;
    let started = std::time::Instant::now();
    let span = tracing::info_span!("job", job = "process_events", events = job.event_ids.len());
    let result = ctx
        .event_batches
        .process(&ctx, job.event_ids)
        .instrument(span.clone())
        .await;
    let _entered = span.enter();
    let label = if result.is_ok() { "ok" } else { "error" };
    metrics::counter!("hookline_jobs_total", "job" => "process_events", "outcome" => label)
        .increment(1);
    metrics::histogram!("hookline_job_duration_seconds", "job" => "process_events")
        .record(started.elapsed().as_secs_f64());
    result.map(|_| ()).map_err(|error| error.to_string().into())
}

/// [`run`], counting the batch's outcome in `hookline_events_processed_total` and logging a
/// failure.
pub async fn run_counted(ctx: &JobContext, event_ids: &[Uuid]) -> anyhow::Result<BatchOutcome> {
    let result = run(ctx, event_ids).await;
    match &result {
        Ok(outcome) => {
            for (label, count) in [
                ("processed", outcome.processed),
                ("failed", outcome.failed),
                ("not_claimed", outcome.not_claimed),
                ("released", outcome.released),
            ] {
                metrics::counter!("hookline_events_processed_total", "outcome" => label)
                    .increment(count as u64);
            }
        }
        Err(error) => tracing::error!(
            error = format!("{error:#}"),
            events = event_ids.len(),
            "processing a batch of events failed"
        ),
    }
    result
}

/// A claimed event: what processing needs of its row.
#[derive(Debug, Clone, FromQueryResult)]
struct Claimed {
    id: Uuid,
    connection_id: Uuid,
    company_id: Uuid,
    plugin_id: String,
    received_at: DateTime<Utc>,
    attempts: i32,
    body: Vec<u8>,
    error: Option<String>,
}

/// What processing decided for one event, ready to be written.
#[derive(Debug)]
struct Finished {
    id: Uuid,
    company_id: Uuid,
    attempts: i32,
    status: &'static str,
    event_type: Option<String>,
    payload: Option<String>,
    error: Option<String>,
    enrichment: Option<&'static str>,
    subscriptions: Vec<Uuid>,
}

impl Finished {
    fn failed(event: &Claimed, error: String) -> Self {
        Self {
            id: event.id,
            company_id: event.company_id,
            attempts: event.attempts,
            status: status::FAILED,
            event_type: None,
            // Parse errors quote the payload, which may hold NUL characters.
            error: Some(storable::text(&error).into_owned()),
            payload: None,
            enrichment: None,
            subscriptions: Vec::new(),
        }
    }
}

/// One issue read, shared by every event of the batch about that issue of that connection.
type SharedEnrichment = Shared<BoxFuture<'static, Arc<Enrichment>>>;

/// Claims and processes a batch; see the module documentation.
pub async fn run(ctx: &JobContext, event_ids: &[Uuid]) -> anyhow::Result<BatchOutcome> {
    let mut ids = event_ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    // Postgres reads the events' connections in the claim's own statement; SQLite reads them
    // once the bodies are parsed.
    let (claimed, claimed_connections) =
        if ctx.db.get_database_backend() == DatabaseBackend::Postgres {
            let (claimed, connections) =
                db_retry::retry("claim events", || claim_with_connections(ctx, &ids))
                    .await
                    .context("could not claim the events")?;
            (claimed, Some(connections))
        } else {
            let claimed = db_retry::retry("claim events", || claim(ctx, &ids))
                .await
                .context("could not claim the events")?;
            (claimed, None)
        };
    let mut outcome = BatchOutcome {
        not_claimed: ids.len() - claimed.len(),
        ..BatchOutcome::default()
    };
    if claimed.is_empty() {
        tracing::debug!(
            events = ids.len(),
            "no event claimed: done or owned by other runs"
        );
        return Ok(outcome);
    }

    let mut ready: Vec<Finished> = Vec::new();
    let mut parsed: Vec<(Claimed, jira_event::JiraEvent)> = Vec::with_capacity(claimed.len());
    for event in claimed {
        let poison_attempts = ctx.settings.poison_attempts;
        if event.attempts > poison_attempts {
            let last = event
                .error
                .as_deref()
                .unwrap_or("the worker stopped mid-way");
            let error =
                format!("gave up after {poison_attempts} attempts; the last failed: {last}");
            ready.push(Finished::failed(&event, error));
            continue;
        }
        match parse(&event.body) {
            Ok(jira) => parsed.push((event, jira)),
            Err(error) => ready.push(Finished::failed(&event, error)),
        }
    }

    let connections = match claimed_connections {
        Some(connections) => connections,
        None => read_connections(ctx, &parsed).await?,
    };
    let subscriptions = read_subscriptions(ctx, &parsed).await?;

    // One shared read per (connection, issue); the semaphore bounds reads in flight.
    let permits = Arc::new(Semaphore::new(ctx.settings.enrichment_concurrency.max(1)));
    let mut reads: HashMap<(Uuid, String), SharedEnrichment> = HashMap::new();
    let mut waves = Waves::new(WAVE_WAIT);
    for finished in ready {
        waves.spawn(futures::future::ready(finished));
    }
    for (event, jira) in parsed {
        let connection = connections.get(&event.connection_id).cloned();
        let enrichment: SharedEnrichment = match (&connection, jira.issue_id_or_key()) {
            (None, _) => futures::future::ready(Arc::new(Enrichment::skipped(
                "the connection no longer exists",
            )))
            .boxed()
            .shared(),
            (Some(connection), issue) => {
                let key = (connection.id, issue.unwrap_or_default().to_owned());
                reads
                    .entry(key)
                    .or_insert_with(|| {
                        let ctx = ctx.clone();
                        let connection = connection.clone();
                        let issue = issue.map(str::to_owned);
                        let permits = permits.clone();
                        async move {
                            let _permit = permits.acquire_owned().await.ok();
                            Arc::new(enrichment::enrich(&ctx, &connection, issue.as_deref()).await)
                        }
                        .boxed()
                        .shared()
                    })
                    .clone()
            }
        };
        let subscriptions = subscriptions
            .get(&event.company_id)
            .cloned()
            .unwrap_or_default();
        waves.spawn(async move {
            let enrichment = enrichment.await;
            build(&event, &jira, &enrichment, &subscriptions)
        });
    }

    while let Some(wave) = waves.next_wave().await {
        commit_wave(ctx, wave, &mut outcome).await?;
    }
    Ok(outcome)
}

/// Parses a stored body: JSON, then a Jira event of any family.
fn parse(body: &[u8]) -> Result<jira_event::JiraEvent, String> {
    jira_event::parse(body).map_err(|error| error.to_string())
}

/// The connections of the batch's events, in one query.
async fn read_connections(
    ctx: &JobContext,
    parsed: &[(Claimed, jira_event::JiraEvent)],
) -> anyhow::Result<HashMap<Uuid, plugin_connection::Model>> {
    let mut ids: Vec<Uuid> = parsed
        .iter()
        .map(|(event, _)| event.connection_id)
        .collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = db_retry::retry("read connections", || {
        plugin_connection::Entity::find()
            .filter(plugin_connection::Column::Id.is_in(ids.iter().copied()))
            .all(&ctx.db)
    })
    .await
    .context("could not load the events' connections")?;
    Ok(rows.into_iter().map(|row| (row.id, row)).collect())
}

/// The enabled subscriptions of the batch's companies, read after every event of the batch was
/// received (from the cache when it is fresh enough).
async fn read_subscriptions(
    ctx: &JobContext,
    parsed: &[(Claimed, jira_event::JiraEvent)],
) -> anyhow::Result<HashMap<Uuid, Arc<Vec<subscription::Model>>>> {
    let mut newest: HashMap<Uuid, DateTime<Utc>> = HashMap::new();
    for (event, _) in parsed {
        let entry = newest.entry(event.company_id).or_insert(event.received_at);
        *entry = (*entry).max(event.received_at);
    }
    if newest.is_empty() {
        return Ok(HashMap::new());
    }
    db_retry::retry("read subscriptions", || {
        ctx.subscriptions.for_companies(&ctx.db, &newest)
    })
    .await
    .context("could not load subscriptions")
}

/// What subscribers get as `data` (DESIGN §10), without `raw`: the envelope splices the body in.
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
}

/// Builds an event's envelope and matches its subscriptions.
fn build(
    event: &Claimed,
    jira: &jira_event::JiraEvent,
    enrichment: &Enrichment,
    subscriptions: &[subscription::Model],
) -> Finished {
    let data = EventData {
        event_id: event.id,
        plugin_id: &event.plugin_id,
        connection_id: event.connection_id,
        company_id: event.company_id,
        event: jira,
        enrichment,
    };
    let payload = match envelope::stored_payload(&jira.event_type, event.received_at, &data) {
        Ok(payload) => payload,
        Err(error) => {
            return Finished::failed(event, format!("could not build the envelope: {error}"));
        }
    };
    let facts = EventFacts {
        event_type: &jira.event_type,
        connection_id: event.connection_id,
        project_key: jira.project_key(),
    };
    let matched = subscriptions
        .iter()
        .filter(|subscription| matches(subscription, facts))
        .map(|subscription| subscription.id)
        .collect();
    Finished {
        id: event.id,
        company_id: event.company_id,
        attempts: event.attempts,
        status: status::PROCESSED,
        event_type: Some(storable::text(&jira.event_type).into_owned()),
        payload: Some(payload),
        error: None,
        enrichment: Some(enrichment.status),
        subscriptions: matched,
    }
}

/// Writes one wave and pushes its deliveries. A wave the database refuses as a whole is written
/// event by event, so one bad row cannot fail the others; an event that still fails is given
/// back with its error for a later attempt (and ends `failed` once it is poison).
async fn commit_wave(
    ctx: &JobContext,
    wave: Vec<Finished>,
    outcome: &mut BatchOutcome,
) -> anyhow::Result<()> {
    if wave.is_empty() {
        return Ok(());
    }
    let written = match db_retry::retry("record processed events", || record(ctx, &wave)).await {
        Ok(written) => vec![(wave, written)],
        Err(error) if wave.len() > 1 && !db_retry::is_transient(&error) => {
            tracing::warn!(error = %error, events = wave.len(), "the batch's commit was refused; writing its events one by one");
            let mut written = Vec::with_capacity(wave.len());
            for finished in wave {
                let single = [finished];
                match db_retry::retry("record a processed event", || record(ctx, &single)).await {
                    Ok(result) => written.push((single.into_iter().collect(), result)),
                    Err(error) if !db_retry::is_transient(&error) => {
                        let [finished] = single;
                        release(ctx, &finished, &error.to_string()).await?;
                        outcome.released += 1;
                    }
                    Err(error) => {
                        return Err(error).context("could not record a processed event");
                    }
                }
            }
            written
        }
        Err(error) => {
            if let [finished] = wave.as_slice()
                && !db_retry::is_transient(&error)
            {
                release(ctx, finished, &error.to_string()).await?;
                outcome.released += 1;
                return Ok(());
            }
            return Err(error).context("could not record the processed events");
        }
    };

    let finished_before = outcome.processed + outcome.failed;
    let mut delivery_ids = Vec::new();
    for (wave, written) in written {
        for finished in &wave {
            if !written.events.contains(&finished.id) {
                outcome.not_claimed += 1;
                tracing::warn!(event.id = %finished.id, "lease lost while processing; the newer run's result stands");
                continue;
            }
            if finished.status == status::FAILED {
                outcome.failed += 1;
                tracing::warn!(event.id = %finished.id, error = finished.error.as_deref().unwrap_or_default(), "event marked failed");
            } else {
                outcome.processed += 1;
                if let Some(enrichment) = finished.enrichment {
                    metrics::counter!("hookline_enrichment_total", "status" => enrichment)
                        .increment(1);
                }
                tracing::info!(
                    event.id = %finished.id,
                    event.r#type = finished.event_type.as_deref().unwrap_or_default(),
                    enrichment = finished.enrichment.unwrap_or_default(),
                    deliveries = finished.subscriptions.len(),
                    "event processed"
                );
            }
        }
        delivery_ids.extend(written.deliveries);
    }
    outcome.deliveries += delivery_ids.len();
    let jobs: Vec<Deliver> = delivery_ids
        .chunks(ctx.settings.deliver_batch_size.max(1))
        .map(|chunk| Deliver {
            delivery_ids: chunk.to_vec(),
        })
        .collect();
    // Best effort: the sweeper enqueues due deliveries whose job was lost.
    if let Err(error) = ctx.queue.push_all(jobs).await {
        metrics::counter!("hookline_enqueue_failures_total", "job" => "deliver").increment(1);
        tracing::warn!(
            deliveries = delivery_ids.len(),
            error = format!("{error:#}"),
            "deliveries recorded but not enqueued; the sweeper will pick them up"
        );
    }
    tracing::debug!(
        events = outcome.processed + outcome.failed - finished_before,
        deliveries = delivery_ids.len(),
        "wave of events recorded"
    );
    Ok(())
}

/// What one transaction wrote: the events still ours, and the deliveries created for them.
#[derive(Debug)]
struct Written {
    events: std::collections::HashSet<Uuid>,
    deliveries: Vec<Uuid>,
}

/// One transaction: mark the events (fenced by `attempts`), insert the deliveries of those
/// still ours.
async fn record(ctx: &JobContext, wave: &[Finished]) -> Result<Written, DbErr> {
    let now = Utc::now();
    let txn = ctx.db.begin().await?;
    let events = update_events(&txn, wave, now).await?;
    let mut new = NewDeliveries::default();
    for finished in wave.iter().filter(|finished| events.contains(&finished.id)) {
        for &subscription_id in &finished.subscriptions {
            new.ids.push(Uuid::now_v7());
            new.event_ids.push(finished.id);
            new.subscription_ids.push(subscription_id);
            new.company_ids.push(finished.company_id);
        }
    }
    // A new delivery's own job has this long before the sweeper enqueues it again.
    let grace = now + ctx.settings.lease;
    let deliveries = insert_deliveries(&txn, &new, now, grace).await?;
    txn.commit().await?;
    Ok(Written { events, deliveries })
}

/// Gives a claimed event back (`received`, due again after a pause) with the error that stopped
/// it; the next claim counts another attempt, and poison ends `failed`.
async fn release(ctx: &JobContext, finished: &Finished, error: &str) -> anyhow::Result<()> {
    let error = storable::text(error).into_owned();
    let retry_at = Utc::now() + chrono::Duration::seconds(i64::from(finished.attempts.max(1)));
    let statement = Statement::from_sql_and_values(
        ctx.db.get_database_backend(),
        sql::numbered(
            ctx.db.get_database_backend(),
            "UPDATE webhook_event SET status = $1, error = $2, locked_until = $3 \
             WHERE id = $4 AND status = $5 AND attempts = $6",
        ),
        [
            status::RECEIVED.into(),
            error.clone().into(),
            retry_at.into(),
            finished.id.into(),
            status::PROCESSING.into(),
            finished.attempts.into(),
        ],
    );
    db_retry::retry("release an event", || ctx.db.execute_raw(statement.clone()))
        .await
        .context("could not give the event back")?;
    tracing::warn!(event.id = %finished.id, error, "could not record the event; it is retried later");
    Ok(())
}

/// Takes every event of `ids` that is `received`, or `processing` under an expired lease.
async fn claim(ctx: &JobContext, ids: &[Uuid]) -> Result<Vec<Claimed>, DbErr> {
    let backend = ctx.db.get_database_backend();
    let (text, values) = claim_update(ctx, backend, ids);
    let statement = Statement::from_sql_and_values(backend, sql::numbered(backend, &text), values);
    Claimed::find_by_statement(statement).all(&ctx.db).await
}

/// The claim's `UPDATE … RETURNING` and its values (the ids from `$5`).
fn claim_update(ctx: &JobContext, backend: DatabaseBackend, ids: &[Uuid]) -> (String, Vec<Value>) {
    let now = Utc::now();
    // The lease outlives the enrichment budget, so a batch waiting on a slow Jira is not taken
    // over while it is alive.
    let lease_until = now + ctx.settings.lease + ctx.settings.enrichment_budget;
    let (id_filter, ids_value) = sql::id_list(backend, ids, 5);
    // `coalesce(status, '')` (status is never NULL) keeps the planner off the status index:
    // statistics taken before a burst call `received` rare, and a plan through that index
    // reads every waiting row of the backlog on each claim. The ids find the rows by key.
    let text = format!(
        "UPDATE webhook_event SET status = $1, locked_until = $2, attempts = attempts + 1 \
         WHERE (coalesce(status, '') = $3 OR (coalesce(status, '') = $1 AND locked_until < $4)) \
           AND {id_filter} \
         RETURNING id, connection_id, company_id, plugin_id, received_at, attempts, body, error"
    );
    let mut values: Vec<Value> = vec![
        status::PROCESSING.into(),
        lease_until.into(),
        status::RECEIVED.into(),
        now.into(),
    ];
    values.extend(ids_value);
    (text, values)
}

/// Postgres: [`claim`] as a data-modifying `WITH`, joined to each event's connection (every
/// column, prefixed `c_`), so the batch's connections need no query of their own. An event whose
/// connection was deleted meanwhile comes back without it.
async fn claim_with_connections(
    ctx: &JobContext,
    ids: &[Uuid],
) -> Result<(Vec<Claimed>, HashMap<Uuid, plugin_connection::Model>), DbErr> {
    let (update, values) = claim_update(ctx, DatabaseBackend::Postgres, ids);
    let text = format!(
        "WITH claimed AS ({update}) \
         SELECT claimed.*, {} \
         FROM claimed LEFT JOIN plugin_connection AS c ON c.id = claimed.connection_id",
        sql::prefixed_columns::<plugin_connection::Entity>("c", "c_")
    );
    let statement = Statement::from_sql_and_values(DatabaseBackend::Postgres, text, values);
    let mut claimed = Vec::new();
    let mut connections = HashMap::new();
    for row in ctx.db.query_all_raw(statement).await? {
        let event = Claimed::from_query_result(&row, "")?;
        if !connections.contains_key(&event.connection_id)
            && row.try_get::<Option<Uuid>>("", "c_id")?.is_some()
        {
            let connection = plugin_connection::Model::from_query_result(&row, "c_")?;
            connections.insert(connection.id, connection);
        }
        claimed.push(event);
    }
    Ok((claimed, connections))
}

/// Marks each event of `wave` with its result, if the claim is still this run's; returns the
/// ids of the events marked.
async fn update_events(
    txn: &impl ConnectionTrait,
    wave: &[Finished],
    now: DateTime<Utc>,
) -> Result<std::collections::HashSet<Uuid>, DbErr> {
    let backend = txn.get_database_backend();
    // `id = ANY($2)` beside the join lets Postgres find the rows by primary key; with the
    // join alone it hashed the whole table against the unnest. `coalesce(e.status, '')` keeps
    // it off the status index (see `claim`).
    if backend == DatabaseBackend::Postgres {
        let statement = Statement::from_sql_and_values(
            backend,
            "UPDATE webhook_event AS e SET status = u.status, \
             event_type = NULLIF(u.event_type, ''), payload = NULLIF(u.payload, ''), \
             error = NULLIF(u.error, ''), processed_at = $1, locked_until = NULL \
             FROM unnest($2::uuid[], $3::int4[], $4::text[], $5::text[], $6::text[], $7::text[]) \
               AS u(id, attempts, status, event_type, payload, error) \
             WHERE e.id = u.id AND e.id = ANY($2) \
               AND coalesce(e.status, '') = 'processing' AND e.attempts = u.attempts \
             RETURNING e.id",
            [
                now.into(),
                wave.iter().map(|f| f.id).collect::<Vec<_>>().into(),
                wave.iter().map(|f| f.attempts).collect::<Vec<_>>().into(),
                sql::text_array(wave.iter().map(|f| Some(f.status.to_owned()))),
                sql::text_array(wave.iter().map(|f| f.event_type.clone())),
                sql::text_array(wave.iter().map(|f| f.payload.clone())),
                sql::text_array(wave.iter().map(|f| f.error.clone())),
            ],
        );
        let rows = txn.query_all_raw(statement).await?;
        return rows
            .iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect();
    }
    // SQLite runs in-process: one small statement per event costs no round trip.
    let mut marked = std::collections::HashSet::with_capacity(wave.len());
    for finished in wave {
        let statement = Statement::from_sql_and_values(
            backend,
            "UPDATE webhook_event SET status = ?1, event_type = ?2, payload = ?3, error = ?4, \
             processed_at = ?5, locked_until = NULL \
             WHERE id = ?6 AND status = 'processing' AND attempts = ?7",
            [
                finished.status.into(),
                finished.event_type.clone().into(),
                finished.payload.clone().into(),
                finished.error.clone().into(),
                now.into(),
                finished.id.into(),
                finished.attempts.into(),
            ],
        );
        if txn.execute_raw(statement).await?.rows_affected() == 1 {
            marked.insert(finished.id);
        }
    }
    Ok(marked)
}

/// Deliveries to insert, as columns.
#[derive(Debug, Default)]
struct NewDeliveries {
    ids: Vec<Uuid>,
    event_ids: Vec<Uuid>,
    subscription_ids: Vec<Uuid>,
    company_ids: Vec<Uuid>,
}

/// Inserts the deliveries (a pair already there is skipped); returns the ids inserted.
async fn insert_deliveries(
    txn: &impl ConnectionTrait,
    new: &NewDeliveries,
    now: DateTime<Utc>,
    grace: DateTime<Utc>,
) -> Result<Vec<Uuid>, DbErr> {
    if new.ids.is_empty() {
        return Ok(Vec::new());
    }
    let backend = txn.get_database_backend();
    if backend == DatabaseBackend::Postgres {
        let statement = Statement::from_sql_and_values(
            backend,
            "INSERT INTO delivery (id, event_id, subscription_id, company_id, status, attempts, \
               next_attempt_at, locked_until, created_at, updated_at) \
             SELECT u.id, u.event_id, u.subscription_id, u.company_id, 'pending', 0, $1, $2, $1, $1 \
             FROM unnest($3::uuid[], $4::uuid[], $5::uuid[], $6::uuid[]) \
               AS u(id, event_id, subscription_id, company_id) \
             ON CONFLICT (event_id, subscription_id) DO NOTHING \
             RETURNING id",
            [
                now.into(),
                grace.into(),
                new.ids.clone().into(),
                new.event_ids.clone().into(),
                new.subscription_ids.clone().into(),
                new.company_ids.clone().into(),
            ],
        );
        let rows = txn.query_all_raw(statement).await?;
        return rows
            .iter()
            .map(|row| row.try_get::<Uuid>("", "id"))
            .collect();
    }
    let mut inserted = Vec::with_capacity(new.ids.len());
    for i in 0..new.ids.len() {
        let statement = Statement::from_sql_and_values(
            backend,
            "INSERT INTO delivery (id, event_id, subscription_id, company_id, status, attempts, \
               next_attempt_at, locked_until, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 'pending', 0, ?5, ?6, ?5, ?5) \
             ON CONFLICT (event_id, subscription_id) DO NOTHING",
            [
                new.ids[i].into(),
                new.event_ids[i].into(),
                new.subscription_ids[i].into(),
                new.company_ids[i].into(),
                now.into(),
                grace.into(),
            ],
        );
        if txn.execute_raw(statement).await?.rows_affected() == 1 {
            inserted.push(new.ids[i]);
        }
    }
    Ok(inserted)
}
