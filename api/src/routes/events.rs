//! `/api/v1/events`: what Jira sent, how it was processed, where it went; and replays.

use chrono::{DateTime, Utc};
use entity::{delivery, webhook_event};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;
use worker::jobs::ProcessEvents;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::page::Page;
use crate::state::AppState;

/// The events API.
pub struct EventApi;

/// An event, without its payload.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventOut {
    /// The event's id.
    pub id: Uuid,
    /// The connection that received it.
    pub connection_id: Uuid,
    /// The plugin (`jira`).
    pub plugin_id: String,
    /// The event type once processed, e.g. `jira:issue_updated`.
    #[oai(nullable)]
    pub event_type: Option<String>,
    /// The issue the event is about (`issue.key` of the payload), e.g. `ORB-417`.
    #[oai(nullable)]
    pub issue_key: Option<String>,
    /// `received`, `processing`, `processed` or `failed`.
    pub status: String,
    /// How many times processing started.
    pub attempts: i32,
    /// What the event is deduplicated on: `id:<X-Atlassian-Webhook-Identifier>` or
    /// `sha256:<body hash>` (`replay:…` for replays).
    pub delivery_key: String,
    /// When hookline received it.
    pub received_at: DateTime<Utc>,
    /// When processing finished.
    #[oai(nullable)]
    pub processed_at: Option<DateTime<Utc>>,
    /// Why processing failed.
    #[oai(nullable)]
    pub error: Option<String>,
    /// For a replay: the event it replays.
    #[oai(nullable)]
    pub replay_of: Option<Uuid>,
}

/// An event with its payload, processing result and deliveries.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventDetailOut {
    /// The event.
    #[oai(flatten)]
    pub event: EventOut,
    /// The request headers as received, credentials removed.
    pub headers: serde_json::Value,
    /// The body as Jira sent it, when it is JSON.
    #[oai(nullable)]
    pub raw: Option<serde_json::Value>,
    /// The body as text (lossy UTF-8), when it is not JSON.
    #[oai(nullable)]
    pub raw_text: Option<String>,
    /// The parsed event with its enrichment, as subscribers receive it in `data`.
    #[oai(nullable)]
    pub data: Option<serde_json::Value>,
    /// The event's deliveries, one per matching subscription.
    pub deliveries: Vec<EventDeliveryOut>,
}

/// A delivery of an event, in summary.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventDeliveryOut {
    /// The delivery's id (the `webhook-id` subscribers see).
    pub id: Uuid,
    /// The subscription.
    pub subscription_id: Uuid,
    /// `pending`, `in_flight`, `succeeded` or `dead`.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// When the next attempt is due.
    #[oai(nullable)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last attempt.
    #[oai(nullable)]
    pub last_status: Option<i32>,
    /// Error of the last attempt.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When it succeeded.
    #[oai(nullable)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// A page of events, newest first.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct EventList {
    /// The events.
    pub items: Vec<EventOut>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A replay that was recorded.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ReplayOut {
    /// The new event, processed and delivered like a fresh one.
    pub event_id: Uuid,
    /// The replayed event, left as it was.
    pub replay_of: Uuid,
}

/// Answer of `replay_event`.
#[derive(Debug, ApiResponse)]
pub enum ReplayResponse {
    /// The replay is recorded and queued.
    #[oai(status = 202)]
    Accepted(Json<ReplayOut>),
}

impl From<webhook_event::Model> for EventOut {
    fn from(model: webhook_event::Model) -> Self {
        Self {
            id: model.id,
            connection_id: model.connection_id,
            plugin_id: model.plugin_id,
            event_type: model.event_type,
            issue_key: issue_key(&model.body),
            status: model.status,
            attempts: model.attempts,
            delivery_key: model.delivery_key,
            received_at: model.received_at,
            processed_at: model.processed_at,
            error: model.error,
            replay_of: model.replay_of,
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Events")]
impl EventApi {
    /// List events
    ///
    /// Newest first, with optional filters.
    #[oai(path = "/events", method = "get", operation_id = "list_events")]
    #[expect(
        clippy::too_many_arguments,
        reason = "one parameter per query filter, as poem-openapi extracts them"
    )]
    async fn list_events(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// Only this connection's events.
        #[oai(name = "connectionId")]
        connection_id: Query<Option<Uuid>>,
        /// Only events of this type, e.g. `jira:issue_updated`.
        #[oai(name = "eventType")]
        event_type: Query<Option<String>>,
        /// Only events in this status.
        status: Query<Option<String>>,
        /// The `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size (1–200, default 50).
        limit: Query<Option<u64>>,
    ) -> ApiResult<Json<EventList>> {
        let page = Page::new(cursor.0, limit.0)?;
        let filter = EventFilter {
            connection_id: connection_id.0,
            event_type: event_type.0,
            status: status.0,
        };
        Ok(Json(list_events(&state, auth.0.id, &filter, page).await?))
    }

    /// Get an event
    ///
    /// With the raw payload, the parsed and enriched event, and its deliveries.
    #[oai(path = "/events/:id", method = "get", operation_id = "get_event")]
    async fn get_event(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The event's id.
        id: Path<String>,
    ) -> ApiResult<Json<EventDetailOut>> {
        Ok(Json(event_detail(&state, auth.0.id, &id).await?))
    }

    /// Replay an event
    ///
    /// Records a new event with the same payload (`replayOf` points at the original), which is
    /// processed and delivered to the subscriptions matching now. The original is left as it
    /// was, deliveries included.
    #[oai(
        path = "/events/:id/replay",
        method = "post",
        operation_id = "replay_event"
    )]
    async fn replay_event(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The event's id.
        id: Path<String>,
    ) -> ApiResult<ReplayResponse> {
        Ok(ReplayResponse::Accepted(Json(
            replay_event(&state, auth.0.id, &id).await?,
        )))
    }
}

/// Which events a listing keeps; `None` keeps all.
#[derive(Debug, Default, Clone)]
pub(crate) struct EventFilter {
    /// Only this connection's events.
    pub connection_id: Option<Uuid>,
    /// Only events of this type.
    pub event_type: Option<String>,
    /// Only events in this status (one of [`EVENT_STATUSES`]).
    pub status: Option<String>,
}

/// Every value of an event's `status`.
pub(crate) const EVENT_STATUSES: [&str; 4] = [
    webhook_event::status::RECEIVED,
    webhook_event::status::PROCESSING,
    webhook_event::status::PROCESSED,
    webhook_event::status::FAILED,
];

/// One page of `company_id`'s events, newest first.
pub(crate) async fn list_events(
    state: &AppState,
    company_id: Uuid,
    filter: &EventFilter,
    page: Page,
) -> ApiResult<EventList> {
    let mut query = webhook_event::Entity::find_for_company(company_id)
        .order_by_desc(webhook_event::Column::Id)
        .limit(page.fetch());
    if let Some(connection_id) = filter.connection_id {
        query = query.filter(webhook_event::Column::ConnectionId.eq(connection_id));
    }
    if let Some(event_type) = &filter.event_type {
        query = query.filter(webhook_event::Column::EventType.eq(event_type));
    }
    if let Some(status) = &filter.status {
        if !EVENT_STATUSES.contains(&status.as_str()) {
            return Err(ApiError::bad_request(format!(
                "status must be one of {}",
                EVENT_STATUSES.join(", ")
            )));
        }
        query = query.filter(webhook_event::Column::Status.eq(status));
    }
    if let Some(before) = page.cursor {
        query = query.filter(webhook_event::Column::Id.lt(before));
    }
    let mut models = query.all(&state.db).await?;
    let next_cursor = page.finish(&mut models, |model| model.id);
    Ok(EventList {
        items: models.into_iter().map(EventOut::from).collect(),
        next_cursor,
    })
}

/// `company_id`'s event `id` with its payload, processing result and deliveries, else 404.
pub(crate) async fn event_detail(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<EventDetailOut> {
    let model = find_event(state, company_id, id).await?;
    let deliveries = delivery::Entity::find_for_company(company_id)
        .filter(delivery::Column::EventId.eq(model.id))
        .order_by_asc(delivery::Column::Id)
        .all(&state.db)
        .await?;
    let (raw, raw_text) = match serde_json::from_slice(&model.body) {
        Ok(raw) => (Some(raw), None),
        Err(_) => (
            None,
            Some(String::from_utf8_lossy(&model.body).into_owned()),
        ),
    };
    Ok(EventDetailOut {
        headers: model.headers.clone(),
        data: processed_data(&model),
        raw,
        raw_text,
        deliveries: deliveries
            .into_iter()
            .map(|delivery| EventDeliveryOut {
                id: delivery.id,
                subscription_id: delivery.subscription_id,
                status: delivery.status,
                attempts: delivery.attempts,
                next_attempt_at: delivery.next_attempt_at,
                last_status: delivery.last_status,
                last_error: delivery.last_error,
                delivered_at: delivery.delivered_at,
            })
            .collect(),
        event: EventOut::from(model),
    })
}

/// The parsed and enriched event as subscribers receive it in `data`, once processed. The one
/// place that knows how a processed event is stored.
fn processed_data(model: &webhook_event::Model) -> Option<serde_json::Value> {
    worker::envelope::data_of(model)
}

/// The issue key (`ORB-417`) of a raw Jira payload, if it is about an issue.
fn issue_key(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Payload {
        issue: Option<Issue>,
    }
    #[derive(serde::Deserialize)]
    struct Issue {
        key: Option<String>,
    }
    serde_json::from_slice::<Payload>(body).ok()?.issue?.key
}

/// Records a replay of `company_id`'s event `id` (a new event with the same payload) and
/// queues it.
pub(crate) async fn replay_event(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<ReplayOut> {
    let original = find_event(state, company_id, id).await?;
    let event_id = Uuid::now_v7();
    let now = Utc::now();
    webhook_event::Entity::insert(webhook_event::ActiveModel {
        id: Set(event_id),
        connection_id: Set(original.connection_id),
        company_id: Set(original.company_id),
        plugin_id: Set(original.plugin_id),
        delivery_key: Set(format!("replay:{}:{event_id}", original.id)),
        received_at: Set(now),
        headers: Set(original.headers),
        body: Set(original.body),
        status: Set(webhook_event::status::RECEIVED.to_owned()),
        attempts: Set(0),
        locked_until: Set(Some(now + state.ingest_grace)),
        event_type: Set(None),
        data: Set(None),
        payload: Set(None),
        error: Set(None),
        processed_at: Set(None),
        replay_of: Set(Some(original.id)),
    })
    .exec_without_returning(&state.db)
    .await?;
    if let Err(error) = state
        .queue
        .push(ProcessEvents {
            event_ids: vec![event_id],
        })
        .await
    {
        tracing::warn!(event.id = %event_id, error = format!("{error:#}"), "replay recorded but not enqueued; the sweeper will pick it up");
    }
    tracing::info!(event.id = %event_id, replay_of = %original.id, "event replayed");
    Ok(ReplayOut {
        event_id,
        replay_of: original.id,
    })
}

async fn find_event(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<webhook_event::Model> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("event"))?;
    webhook_event::Entity::find_by_id_for_company(id, company_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("event"))
}
