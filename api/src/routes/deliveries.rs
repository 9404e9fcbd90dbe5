//! `/api/v1/deliveries`: what was sent to subscribers, each attempt, and manual retries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{delivery, delivery_attempt};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use uuid::Uuid;
use worker::jobs::Deliver;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::page::Page;
use crate::routes::subscriptions::find_subscription;
use crate::state::AppState;

/// The delivery API.
pub struct DeliveryApi;

/// A delivery of one event to one subscription.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryOut {
    /// The delivery's id; also the `webhook-id` header subscribers dedupe on.
    pub id: Uuid,
    /// The event delivered.
    pub event_id: Uuid,
    /// The subscription delivered to.
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
    /// Why the last attempt failed.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When the subscriber accepted it.
    #[oai(nullable)]
    pub delivered_at: Option<DateTime<Utc>>,
}

/// One attempt of a delivery.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryAttemptOut {
    /// 1 for the first attempt.
    pub attempt: i32,
    /// When it started.
    pub started_at: DateTime<Utc>,
    /// How long it took, in milliseconds.
    pub duration_ms: i64,
    /// HTTP status of the response, if one arrived.
    #[oai(nullable)]
    pub status_code: Option<i32>,
    /// Why it failed.
    #[oai(nullable)]
    pub error: Option<String>,
    /// The start of the response body (at most 1 KiB).
    #[oai(nullable)]
    pub response_excerpt: Option<String>,
}

/// A delivery with its attempts.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryDetailOut {
    /// The delivery.
    #[oai(flatten)]
    pub delivery: DeliveryOut,
    /// Its attempts, oldest first.
    pub attempts_made: Vec<DeliveryAttemptOut>,
}

/// A page of deliveries.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct DeliveryList {
    /// The deliveries, oldest first.
    pub items: Vec<DeliveryOut>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Which dead deliveries to retry.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RetryDeadIn {
    /// Only deliveries created at or after this instant.
    pub since: DateTime<Utc>,
}

/// How many deliveries a bulk retry scheduled.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct RetryDeadOut {
    /// Deliveries scheduled again.
    pub retried: u64,
}

impl From<delivery::Model> for DeliveryOut {
    fn from(model: delivery::Model) -> Self {
        Self {
            id: model.id,
            event_id: model.event_id,
            subscription_id: model.subscription_id,
            status: model.status,
            attempts: model.attempts,
            next_attempt_at: model.next_attempt_at,
            last_status: model.last_status,
            last_error: model.last_error,
            created_at: model.created_at,
            delivered_at: model.delivered_at,
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Deliveries")]
impl DeliveryApi {
    /// List deliveries
    #[oai(path = "/deliveries", method = "get", operation_id = "list_deliveries")]
    #[expect(
        clippy::too_many_arguments,
        reason = "one argument per query parameter"
    )]
    async fn list_deliveries(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// Only this status (`pending`, `in_flight`, `succeeded`, `dead`).
        status: Query<Option<String>>,
        /// Only this subscription's.
        #[oai(name = "subscriptionId")]
        subscription_id: Query<Option<Uuid>>,
        /// Only this event's.
        #[oai(name = "eventId")]
        event_id: Query<Option<Uuid>>,
        /// The `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size (1–200, default 50).
        limit: Query<Option<u64>>,
    ) -> ApiResult<Json<DeliveryList>> {
        let page = Page::new(cursor.0, limit.0)?;
        let filter = DeliveryFilter {
            status: status.0,
            subscription_id: subscription_id.0,
            event_id: event_id.0,
        };
        Ok(Json(
            list_deliveries(&state, auth.0.id, &filter, page).await?,
        ))
    }

    /// Get a delivery with its attempts
    #[oai(
        path = "/deliveries/:id",
        method = "get",
        operation_id = "get_delivery"
    )]
    async fn get_delivery(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The delivery's id.
        id: Path<String>,
    ) -> ApiResult<Json<DeliveryDetailOut>> {
        let model = find_delivery(&state, auth.0.id, &id).await?;
        let mut attempts = attempts_of(&state, &[model.id]).await?;
        Ok(Json(DeliveryDetailOut {
            attempts_made: attempts.remove(&model.id).unwrap_or_default(),
            delivery: model.into(),
        }))
    }

    /// Retry a delivery now
    ///
    /// Also for dead deliveries: it gets one more attempt at once (and is dead again if that
    /// fails). A succeeded delivery is sent again.
    #[oai(
        path = "/deliveries/:id/retry",
        method = "post",
        operation_id = "retry_delivery"
    )]
    async fn retry_delivery(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The delivery's id.
        id: Path<String>,
    ) -> ApiResult<Json<DeliveryOut>> {
        Ok(Json(retry_delivery(&state, auth.0.id, &id).await?))
    }

    /// Retry a subscription's dead deliveries
    #[oai(
        path = "/subscriptions/:id/retry-dead",
        method = "post",
        operation_id = "retry_dead_deliveries"
    )]
    async fn retry_dead_deliveries(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The subscription's id.
        id: Path<String>,
        body: Json<RetryDeadIn>,
    ) -> ApiResult<Json<RetryDeadOut>> {
        let retried = retry_dead_deliveries(&state, auth.0.id, &id, body.0.since).await?;
        Ok(Json(RetryDeadOut { retried }))
    }
}

/// Which deliveries a listing keeps; `None` keeps all.
#[derive(Debug, Default, Clone)]
pub(crate) struct DeliveryFilter {
    /// Only this status (`pending`, `in_flight`, `succeeded`, `dead`).
    pub status: Option<String>,
    /// Only this subscription's.
    pub subscription_id: Option<Uuid>,
    /// Only this event's.
    pub event_id: Option<Uuid>,
}

/// One page of `company_id`'s deliveries, oldest first.
pub(crate) async fn list_deliveries(
    state: &AppState,
    company_id: Uuid,
    filter: &DeliveryFilter,
    page: Page,
) -> ApiResult<DeliveryList> {
    let mut query = filtered(company_id, filter)
        .order_by_asc(delivery::Column::Id)
        .limit(page.fetch());
    if let Some(after) = page.cursor {
        query = query.filter(delivery::Column::Id.gt(after));
    }
    let mut models = query.all(&state.db).await?;
    let next_cursor = page.finish(&mut models, |model| model.id);
    Ok(DeliveryList {
        items: models.into_iter().map(DeliveryOut::from).collect(),
        next_cursor,
    })
}

/// The newest `limit` of `company_id`'s deliveries that pass `filter`, newest first.
pub(crate) async fn recent_deliveries(
    state: &AppState,
    company_id: Uuid,
    filter: &DeliveryFilter,
    limit: u64,
) -> ApiResult<Vec<DeliveryOut>> {
    let models = filtered(company_id, filter)
        .order_by_desc(delivery::Column::Id)
        .limit(limit)
        .all(&state.db)
        .await?;
    Ok(models.into_iter().map(DeliveryOut::from).collect())
}

fn filtered(company_id: Uuid, filter: &DeliveryFilter) -> sea_orm::Select<delivery::Entity> {
    let mut query = delivery::Entity::find_for_company(company_id);
    if let Some(status) = &filter.status {
        query = query.filter(delivery::Column::Status.eq(status));
    }
    if let Some(subscription_id) = filter.subscription_id {
        query = query.filter(delivery::Column::SubscriptionId.eq(subscription_id));
    }
    if let Some(event_id) = filter.event_id {
        query = query.filter(delivery::Column::EventId.eq(event_id));
    }
    query
}

/// The attempts of each of `delivery_ids` (which the caller already scoped to its company),
/// oldest first.
pub(crate) async fn attempts_of(
    state: &AppState,
    delivery_ids: &[Uuid],
) -> ApiResult<HashMap<Uuid, Vec<DeliveryAttemptOut>>> {
    let mut attempts: HashMap<Uuid, Vec<DeliveryAttemptOut>> = HashMap::new();
    if delivery_ids.is_empty() {
        return Ok(attempts);
    }
    let rows = delivery_attempt::Entity::find()
        .filter(delivery_attempt::Column::DeliveryId.is_in(delivery_ids.iter().copied()))
        .order_by_asc(delivery_attempt::Column::Attempt)
        .all(&state.db)
        .await?;
    for attempt in rows {
        attempts
            .entry(attempt.delivery_id)
            .or_default()
            .push(DeliveryAttemptOut {
                attempt: attempt.attempt,
                started_at: attempt.started_at,
                duration_ms: attempt.duration_ms,
                status_code: attempt.status_code,
                error: attempt.error,
                response_excerpt: attempt.response_excerpt,
            });
    }
    Ok(attempts)
}

/// Gives `company_id`'s delivery `id` one more attempt now (dead or not; not while in flight).
pub(crate) async fn retry_delivery(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<DeliveryOut> {
    let model = find_delivery(state, company_id, id).await?;
    if model.status == delivery::status::IN_FLIGHT {
        return Err(ApiError::conflict(
            "the delivery is being attempted right now",
        ));
    }
    reschedule(state, delivery::Column::Id.eq(model.id)).await?;
    push(state, model.id).await;
    let model = find_delivery(state, company_id, id).await?;
    Ok(model.into())
}

/// Gives every dead delivery of `company_id`'s subscription `subscription_id` created at or
/// after `since` one more attempt now; returns how many were scheduled.
pub(crate) async fn retry_dead_deliveries(
    state: &AppState,
    company_id: Uuid,
    subscription_id: &str,
    since: DateTime<Utc>,
) -> ApiResult<u64> {
    let subscription = find_subscription(state, company_id, subscription_id).await?;
    let dead = delivery::Entity::find()
        .filter(delivery::Column::SubscriptionId.eq(subscription.id))
        .filter(delivery::Column::Status.eq(delivery::status::DEAD))
        .filter(delivery::Column::CreatedAt.gte(since))
        .all(&state.db)
        .await?;
    let ids: Vec<Uuid> = dead.iter().map(|model| model.id).collect();
    let mut retried = 0;
    for chunk in ids.chunks(500) {
        retried += reschedule(
            state,
            delivery::Column::Id
                .is_in(chunk.iter().copied())
                .and(delivery::Column::Status.eq(delivery::status::DEAD)),
        )
        .await?;
    }
    for &delivery_id in &ids {
        push(state, delivery_id).await;
    }
    Ok(retried)
}

/// Makes the matching (not in-flight) deliveries pending and due now.
async fn reschedule(state: &AppState, which: sea_orm::sea_query::SimpleExpr) -> ApiResult<u64> {
    let now = Utc::now();
    let updated = delivery::Entity::update_many()
        .col_expr(
            delivery::Column::Status,
            Expr::value(delivery::status::PENDING),
        )
        .col_expr(delivery::Column::NextAttemptAt, Expr::value(now))
        // The pushed job's grace; the sweeper sends it if the push is lost.
        .col_expr(
            delivery::Column::LockedUntil,
            Expr::value(now + state.ingest_grace),
        )
        .col_expr(delivery::Column::UpdatedAt, Expr::value(now))
        // Only a succeeded delivery has `delivered_at`; one sent again is not delivered until
        // the target accepts it again (the attempts keep the earlier success).
        .col_expr(
            delivery::Column::DeliveredAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(which)
        .filter(delivery::Column::Status.ne(delivery::status::IN_FLIGHT))
        .exec(&state.db)
        .await?;
    Ok(updated.rows_affected)
}

/// Best effort: the sweeper sends the delivery if the push fails.
async fn push(state: &AppState, delivery_id: Uuid) {
    if let Err(error) = state
        .queue
        .push(Deliver {
            delivery_ids: vec![delivery_id],
        })
        .await
    {
        tracing::warn!(delivery.id = %delivery_id, error = format!("{error:#}"), "could not push a retry");
    }
}

/// `company_id`'s delivery `id`, else 404.
pub(crate) async fn find_delivery(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<delivery::Model> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("delivery"))?;
    delivery::Entity::find_by_id_for_company(id, company_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("delivery"))
}
