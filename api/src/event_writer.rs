//! Group commit of received webhooks: the ingest requests that arrive while earlier inserts are
//! being committed are written together, in one multi-row `INSERT … ON CONFLICT DO NOTHING`, and
//! each request is answered only after the commit that holds its row.
//!
//! One commit (one WAL flush on Postgres, one write transaction on SQLite) per webhook is the
//! ceiling of a durable ingest; sharing the commit lets throughput grow with concurrency instead.
//! Nothing waits on a timer: a batch is whatever queued up while the previous ones were in
//! flight, so a lone request is written at once.
//!
//! Failures: a batch the database refuses as a statement (not a lost connection) is written again
//! row by row, so one bad row cannot fail its neighbours; a connection deleted meanwhile (foreign
//! key) is reported as such; anything else answers every request of the batch as unavailable
//! (503, Jira retries), with nothing stored.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use entity::webhook_event;
use sea_orm::sea_query::{ArrayType, Condition, ExprTrait as _, Value};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseBackend, DatabaseConnection, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, QuerySelect, SqlErr, Statement, TryInsertResult,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use uuid::Uuid;
use worker::enqueue::EventPusher;

/// Most rows in one INSERT.
const MAX_BATCH: usize = 128;
/// Most body bytes in one INSERT: a batch stops growing past this, so a burst of large bodies
/// does not become one huge statement (a single body may still be up to the body limit).
const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// Batches written at the same time (each holds one pooled database connection).
const MAX_IN_FLIGHT: usize = 4;
/// Requests waiting for a batch before new ones wait for room (backpressure on the HTTP side).
const QUEUE_CAPACITY: usize = 4096;

/// How a received webhook was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// Stored as a new event with this id.
    Inserted(Uuid),
    /// The same delivery (connection + delivery key) was stored before, as this event.
    Duplicate(Uuid),
}

/// Why a webhook could not be recorded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The connection no longer exists (deleted while the request was in flight).
    #[error("the connection no longer exists")]
    ConnectionGone,
    /// The database could not record it; retrying later may work.
    #[error("{0}")]
    Unavailable(Arc<str>),
}

/// Hands received webhooks to the writer task and waits for their commit. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventWriter {
    sender: mpsc::Sender<Pending>,
}

/// One request waiting for its row to be committed.
struct Pending {
    event: webhook_event::Model,
    key: DeliveryKey,
    reply: oneshot::Sender<Result<Recorded, RecordError>>,
}

/// What the unique index of `webhook_event` is on.
type DeliveryKey = (Uuid, String);

impl EventWriter {
    /// Starts the writer task on the current runtime. It ends when every `EventWriter` clone
    /// is dropped, after writing what it was given.
    pub fn spawn(db: DatabaseConnection, pusher: EventPusher) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(db, receiver, pusher));
        Self { sender }
    }

    /// Records one received webhook and returns once it is committed, or known to be a
    /// duplicate.
    pub async fn record(&self, event: webhook_event::Model) -> Result<Recorded, RecordError> {
        let key = key_of(&event);
        let (reply, answer) = oneshot::channel();
        let stopped = || RecordError::Unavailable(Arc::from("the event writer has stopped"));
        self.sender
            .send(Pending { event, key, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// Collects batches and writes up to [`MAX_IN_FLIGHT`] of them at once.
async fn run(db: DatabaseConnection, mut receiver: mpsc::Receiver<Pending>, pusher: EventPusher) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        // Wait for a free slot first: requests arriving meanwhile join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let Some(first) = receiver.recv().await else {
            return;
        };
        let mut bytes = first.event.body.len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(pending) => {
                    bytes += pending.event.body.len();
                    batch.push(pending);
                }
                Err(_) => break,
            }
        }
        let db = db.clone();
        let pusher = pusher.clone();
        tokio::spawn(async move {
            write_batch(&db, batch, &pusher).await;
            drop(slot);
        });
    }
}

/// Writes one batch, answers each of its requests, and enqueues the new events as one job.
async fn write_batch(db: &DatabaseConnection, batch: Vec<Pending>, pusher: &EventPusher) {
    let started = Instant::now();
    metrics::histogram!("hookline_ingest_batch_rows").record(batch.len() as f64);

    // Two requests for one delivery in the same batch: the first is inserted, the rest are
    // its duplicates.
    let mut seen = HashSet::new();
    let unique: Vec<&webhook_event::Model> = batch
        .iter()
        .filter(|pending| seen.insert(pending.key.clone()))
        .map(|pending| &pending.event)
        .collect();

    let outcomes = match insert(db, &unique).await {
        Ok(outcomes) => outcomes,
        Err(error) if unique.len() > 1 && is_statement_error(&error) => {
            tracing::warn!(error = %error, rows = unique.len(), "a batch insert failed: writing its rows one by one");
            let mut outcomes = HashMap::new();
            for event in unique {
                let key = key_of(event);
                match insert(db, &[event]).await {
                    Ok(one) => outcomes.extend(one.into_iter().map(|(k, v)| (k, Ok(v)))),
                    Err(error) => {
                        outcomes.insert(key, Err(record_error(error)));
                    }
                }
            }
            let inserted = answer(batch, |key| {
                outcomes.get(key).cloned().unwrap_or_else(|| {
                    Err(RecordError::Unavailable(Arc::from("no outcome for a row")))
                })
            });
            pusher.push(inserted);
            return;
        }
        Err(error) => {
            let error = record_error(error);
            answer(batch, |_| Err(error.clone()));
            return;
        }
    };
    metrics::histogram!("hookline_ingest_batch_duration_seconds")
        .record(started.elapsed().as_secs_f64());
    let inserted = answer(batch, |key| {
        outcomes.get(key).copied().ok_or_else(|| {
            // The conflicting row was deleted in between (its connection was deleted).
            RecordError::Unavailable(Arc::from(
                "an insert conflicted with an event that no longer exists",
            ))
        })
    });
    pusher.push(inserted);
}

/// Answers each request of the batch; returns the ids of the events it inserted.
fn answer(
    batch: Vec<Pending>,
    outcome: impl Fn(&DeliveryKey) -> Result<Recorded, RecordError>,
) -> Vec<Uuid> {
    let mut inserted = Vec::new();
    let mut first_of = HashSet::new();
    for pending in batch {
        let mut result = outcome(&pending.key);
        // Only the first request of a delivery inserted it; later ones in the batch are
        // duplicates of it.
        if let Ok(Recorded::Inserted(id)) = result
            && !first_of.insert(pending.key.clone())
        {
            result = Ok(Recorded::Duplicate(id));
        }
        if let Ok(Recorded::Inserted(id)) = result {
            inserted.push(id);
        }
        // The request may have gone away (client disconnected): its row is stored regardless.
        let _ = pending.reply.send(result);
    }
    inserted
}

/// One multi-row insert, then a lookup of the rows that were already there.
async fn insert(
    db: &DatabaseConnection,
    events: &[&webhook_event::Model],
) -> Result<HashMap<DeliveryKey, Recorded>, DbErr> {
    let keys: Vec<(Uuid, DeliveryKey)> = events
        .iter()
        .map(|event| (event.id, key_of(event)))
        .collect();
    let inserted = if db.get_database_backend() == DatabaseBackend::Postgres {
        insert_postgres(db, events).await?
    } else {
        insert_many(db, events).await?
    };

    let mut outcomes = HashMap::with_capacity(keys.len());
    let mut conflicted = Vec::new();
    for (id, key) in keys {
        if inserted.contains(&id) {
            outcomes.insert(key, Recorded::Inserted(id));
        } else {
            conflicted.push(key);
        }
    }
    if !conflicted.is_empty() {
        let mut condition = Condition::any();
        for (connection_id, delivery_key) in &conflicted {
            condition = condition.add(
                webhook_event::Column::ConnectionId
                    .eq(*connection_id)
                    .and(webhook_event::Column::DeliveryKey.eq(delivery_key.as_str())),
            );
        }
        let existing: Vec<(Uuid, Uuid, String)> = webhook_event::Entity::find()
            .select_only()
            .columns([
                webhook_event::Column::Id,
                webhook_event::Column::ConnectionId,
                webhook_event::Column::DeliveryKey,
            ])
            .filter(condition)
            .into_tuple()
            .all(db)
            .await?;
        for (id, connection_id, delivery_key) in existing {
            outcomes.insert((connection_id, delivery_key), Recorded::Duplicate(id));
        }
    }
    Ok(outcomes)
}

/// Postgres: one statement shape whatever the batch size (`unnest` of one array per column), so
/// Postgres parses and plans it once per connection, instead of once per batch size (up to
/// [`MAX_BATCH`] shapes, more than a connection's statement cache holds). Writes the columns a
/// received webhook has; the processing columns stay NULL.
async fn insert_postgres(
    db: &DatabaseConnection,
    events: &[&webhook_event::Model],
) -> Result<HashSet<Uuid>, DbErr> {
    debug_assert!(
        events.iter().all(|event| event.event_type.is_none()
            && event.data.is_none()
            && event.payload.is_none()
            && event.error.is_none()
            && event.processed_at.is_none()
            && event.replay_of.is_none()),
        "the event writer records webhooks as received, before any processing"
    );
    let column = |value: fn(&webhook_event::Model) -> Value| -> Vec<Value> {
        events.iter().map(|event| value(event)).collect()
    };
    let statement = Statement::from_sql_and_values(
        DatabaseBackend::Postgres,
        "INSERT INTO webhook_event (id, connection_id, company_id, plugin_id, delivery_key, \
           received_at, headers, body, status, attempts, locked_until) \
         SELECT u.id, u.connection_id, u.company_id, u.plugin_id, u.delivery_key, u.received_at, \
           u.headers::jsonb, u.body, u.status, u.attempts, \
           NULLIF(u.locked_until, '')::timestamptz \
         FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
                     $6::timestamptz[], $7::text[], $8::bytea[], $9::text[], $10::int4[], \
                     $11::text[]) \
           AS u(id, connection_id, company_id, plugin_id, delivery_key, received_at, headers, \
                body, status, attempts, locked_until) \
         ON CONFLICT (connection_id, delivery_key) DO NOTHING \
         RETURNING id",
        [
            array(ArrayType::Uuid, column(|e| e.id.into())),
            array(ArrayType::Uuid, column(|e| e.connection_id.into())),
            array(ArrayType::Uuid, column(|e| e.company_id.into())),
            array(ArrayType::String, column(|e| e.plugin_id.clone().into())),
            array(ArrayType::String, column(|e| e.delivery_key.clone().into())),
            array(
                ArrayType::ChronoDateTimeUtc,
                column(|e| e.received_at.into()),
            ),
            array(ArrayType::String, column(|e| e.headers.to_string().into())),
            array(ArrayType::Bytes, column(|e| e.body.clone().into())),
            array(ArrayType::String, column(|e| e.status.clone().into())),
            array(ArrayType::Int, column(|e| e.attempts.into())),
            // sea-query cannot bind NULL elements: an absent lease travels as ''.
            array(
                ArrayType::String,
                column(|e| {
                    e.locked_until
                        .map(|at| at.to_rfc3339())
                        .unwrap_or_default()
                        .into()
                }),
            ),
        ],
    );
    db.query_all_raw(statement)
        .await?
        .iter()
        .map(|row| row.try_get::<Uuid>("", "id"))
        .collect()
}

/// A Postgres array of `values`, all of type `of` and none NULL.
fn array(of: ArrayType, values: Vec<Value>) -> Value {
    Value::Array(of, Some(Box::new(values)))
}

/// SQLite: sea-orm's multi-row insert (in-process, so a statement per batch size costs little).
async fn insert_many(
    db: &DatabaseConnection,
    events: &[&webhook_event::Model],
) -> Result<HashSet<Uuid>, DbErr> {
    // Every column Set, so that every value is written.
    let rows = events
        .iter()
        .map(|&event| event.clone().into_active_model().reset_all());
    Ok(
        match webhook_event::Entity::insert_many(rows)
            .on_conflict_do_nothing_on([
                webhook_event::Column::ConnectionId,
                webhook_event::Column::DeliveryKey,
            ])
            .exec_with_returning_keys(db)
            .await?
        {
            TryInsertResult::Inserted(ids) => ids.into_iter().collect(),
            TryInsertResult::Conflicted | TryInsertResult::Empty => HashSet::new(),
        },
    )
}

fn key_of(event: &webhook_event::Model) -> DeliveryKey {
    (event.connection_id, event.delivery_key.clone())
}

/// Whether the database refused the statement itself (so a smaller one may succeed), as opposed
/// to the database being unreachable.
fn is_statement_error(error: &DbErr) -> bool {
    matches!(error, DbErr::Exec(_) | DbErr::Query(_)) && error.sql_err().is_some()
}

fn record_error(error: DbErr) -> RecordError {
    match error.sql_err() {
        Some(SqlErr::ForeignKeyConstraintViolation(_)) => RecordError::ConnectionGone,
        _ => RecordError::Unavailable(Arc::from(format!("could not record the event: {error}"))),
    }
}
