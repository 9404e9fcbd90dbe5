//! `/api/v1/subscriptions`: where a company's events are delivered, and how they are signed.

use chrono::{DateTime, Utc};
use entity::{delivery, subscription};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::page::Page;
use crate::state::AppState;

/// The subscription API.
pub struct SubscriptionApi;

/// A subscription to create.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionIn {
    /// Where deliveries are POSTed (`http` or `https`).
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: String,
    /// Event type patterns, e.g. `["jira:issue_*"]` (`*` matches any suffix).
    #[oai(validator(min_items = 1, max_items = 100))]
    pub event_types: Vec<String>,
    /// Only events of this connection; unset: every connection of the company.
    #[oai(nullable)]
    pub connection_id: Option<Uuid>,
    /// Free text.
    #[oai(nullable, validator(max_length = 1000))]
    pub description: Option<String>,
    /// Extra conditions, e.g. `{"projectKeys": ["ENG"]}`.
    #[oai(nullable)]
    pub filters: Option<serde_json::Value>,
}

/// Changes to a subscription; absent fields stay as they are.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionPatch {
    /// A new target URL (validated like at creation).
    #[oai(nullable, validator(min_length = 1, max_length = 2048))]
    pub url: Option<String>,
    /// New event type patterns.
    #[oai(nullable, validator(min_items = 1, max_items = 100))]
    pub event_types: Option<Vec<String>>,
    /// Enable (resumes its pending deliveries) or disable.
    #[oai(nullable)]
    pub enabled: Option<bool>,
    /// New free text.
    #[oai(nullable, validator(max_length = 1000))]
    pub description: Option<String>,
    /// New extra conditions, e.g. `{"projectKeys": ["ENG"]}`; `{}` removes them.
    #[oai(nullable)]
    pub filters: Option<serde_json::Value>,
}

/// A subscription (without its secret).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionOut {
    /// The subscription's id.
    pub id: Uuid,
    /// Where deliveries are POSTed.
    pub url: String,
    /// Event type patterns.
    pub event_types: serde_json::Value,
    /// The connection it is limited to, if any.
    #[oai(nullable)]
    pub connection_id: Option<Uuid>,
    /// Free text.
    #[oai(nullable, validator(max_length = 1000))]
    pub description: Option<String>,
    /// Extra conditions.
    #[oai(nullable)]
    pub filters: Option<serde_json::Value>,
    /// Whether events are delivered.
    pub enabled: bool,
    /// Why hookline disabled it, if it did.
    #[oai(nullable)]
    pub disabled_reason: Option<String>,
    /// Since when its deliveries have been failing, if they are.
    #[oai(nullable)]
    pub failing_since: Option<DateTime<Utc>>,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// A subscription with its signing secret; the secret is shown only at creation and rotation.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionWithSecretOut {
    /// The subscription.
    #[oai(flatten)]
    pub subscription: SubscriptionOut,
    /// The Standard Webhooks signing secret, `whsec_…`.
    pub secret: String,
}

/// A page of subscriptions.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionList {
    /// The subscriptions, oldest first.
    pub items: Vec<SubscriptionOut>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Answer of `create_subscription`.
#[derive(Debug, ApiResponse)]
pub enum CreateSubscriptionResponse {
    /// Created.
    #[oai(status = 201)]
    Created(Json<SubscriptionWithSecretOut>),
}

/// Answer of `delete_subscription`.
#[derive(Debug, ApiResponse)]
pub enum DeleteSubscriptionResponse {
    /// Deleted, with its deliveries.
    #[oai(status = 204)]
    Deleted,
}

impl From<subscription::Model> for SubscriptionOut {
    fn from(model: subscription::Model) -> Self {
        Self {
            id: model.id,
            url: model.target_url,
            event_types: model.event_types,
            connection_id: model.connection_id,
            description: model.description,
            filters: model.filters,
            enabled: model.enabled,
            disabled_reason: model.disabled_reason,
            failing_since: model.failing_since,
            created_at: model.created_at,
            updated_at: model.updated_at,
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Subscriptions")]
impl SubscriptionApi {
    /// Create a subscription
    ///
    /// Returns the signing secret; it is shown only here and on rotation.
    #[oai(
        path = "/subscriptions",
        method = "post",
        operation_id = "create_subscription"
    )]
    async fn create_subscription(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        body: Json<SubscriptionIn>,
    ) -> ApiResult<CreateSubscriptionResponse> {
        let created = create_subscription(&state, auth.0.id, body.0).await?;
        Ok(CreateSubscriptionResponse::Created(Json(created)))
    }

    /// List subscriptions
    #[oai(
        path = "/subscriptions",
        method = "get",
        operation_id = "list_subscriptions"
    )]
    async fn list_subscriptions(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size (1–200, default 50).
        limit: Query<Option<u64>>,
    ) -> ApiResult<Json<SubscriptionList>> {
        let page = Page::new(cursor.0, limit.0)?;
        Ok(Json(list_subscriptions(&state, auth.0.id, page).await?))
    }

    /// Get a subscription
    #[oai(
        path = "/subscriptions/:id",
        method = "get",
        operation_id = "get_subscription"
    )]
    async fn get_subscription(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The subscription's id.
        id: Path<String>,
    ) -> ApiResult<Json<SubscriptionOut>> {
        let model = find_subscription(&state, auth.0.id, &id).await?;
        Ok(Json(model.into()))
    }

    /// Update a subscription
    ///
    /// Enabling a disabled subscription clears its failure state and sends its waiting
    /// deliveries again.
    #[oai(
        path = "/subscriptions/:id",
        method = "patch",
        operation_id = "update_subscription"
    )]
    async fn update_subscription(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The subscription's id.
        id: Path<String>,
        body: Json<SubscriptionPatch>,
    ) -> ApiResult<Json<SubscriptionOut>> {
        Ok(Json(
            update_subscription(&state, auth.0.id, &id, body.0).await?,
        ))
    }

    /// Delete a subscription
    ///
    /// Its deliveries are deleted with it.
    #[oai(
        path = "/subscriptions/:id",
        method = "delete",
        operation_id = "delete_subscription"
    )]
    async fn delete_subscription(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The subscription's id.
        id: Path<String>,
    ) -> ApiResult<DeleteSubscriptionResponse> {
        delete_subscription(&state, auth.0.id, &id).await?;
        Ok(DeleteSubscriptionResponse::Deleted)
    }

    /// Rotate a subscription's secret
    ///
    /// Returns the new secret; deliveries are signed with it from now on.
    #[oai(
        path = "/subscriptions/:id/rotate-secret",
        method = "post",
        operation_id = "rotate_subscription_secret"
    )]
    async fn rotate_subscription_secret(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The subscription's id.
        id: Path<String>,
    ) -> ApiResult<Json<SubscriptionWithSecretOut>> {
        Ok(Json(rotate_secret(&state, auth.0.id, &id).await?))
    }
}

/// Creates a subscription for `company_id`; the answer carries its signing secret, which is
/// shown only then (and on rotation).
pub(crate) async fn create_subscription(
    state: &AppState,
    company_id: Uuid,
    input: SubscriptionIn,
) -> ApiResult<SubscriptionWithSecretOut> {
    let url = validate_url(state, &input.url).await?;
    validate_event_types(&input.event_types)?;
    validate_filters(input.filters.as_ref())?;
    if let Some(connection_id) = input.connection_id {
        entity::plugin_connection::Entity::find_by_id_for_company(connection_id, company_id)
            .one(&state.db)
            .await?
            .ok_or_else(|| ApiError::unprocessable("connectionId is not a connection of yours"))?;
    }
    let secret = worker::signature::generate_secret();
    let now = Utc::now();
    let model = subscription::ActiveModel {
        id: Set(Uuid::now_v7()),
        company_id: Set(company_id),
        connection_id: Set(input.connection_id),
        description: Set(input.description),
        event_types: Set(serde_json::json!(input.event_types)),
        filters: Set(input.filters),
        target_url: Set(url),
        secret: Set(state.cipher.encrypt(&secret)),
        enabled: Set(true),
        disabled_reason: Set(None),
        failing_since: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let model = subscription::Entity::insert(model)
        .exec_with_returning(&state.db)
        .await?;
    tracing::info!(subscription.id = %model.id, company.id = %company_id, "subscription created");
    Ok(SubscriptionWithSecretOut {
        subscription: model.into(),
        secret,
    })
}

/// One page of `company_id`'s subscriptions, oldest first.
pub(crate) async fn list_subscriptions(
    state: &AppState,
    company_id: Uuid,
    page: Page,
) -> ApiResult<SubscriptionList> {
    let mut query = subscription::Entity::find_for_company(company_id)
        .order_by_asc(subscription::Column::Id)
        .limit(page.fetch());
    if let Some(after) = page.cursor {
        query = query.filter(subscription::Column::Id.gt(after));
    }
    let mut models = query.all(&state.db).await?;
    let next_cursor = page.finish(&mut models, |model| model.id);
    Ok(SubscriptionList {
        items: models.into_iter().map(SubscriptionOut::from).collect(),
        next_cursor,
    })
}

/// Applies `patch` to `company_id`'s subscription `id`. Enabling a disabled subscription clears
/// its failure state and makes its waiting deliveries due now.
pub(crate) async fn update_subscription(
    state: &AppState,
    company_id: Uuid,
    id: &str,
    patch: SubscriptionPatch,
) -> ApiResult<SubscriptionOut> {
    let model = find_subscription(state, company_id, id).await?;
    let was_enabled = model.enabled;
    let subscription_id = model.id;
    let mut active = model.into_active_model();
    if let Some(url) = patch.url {
        active.target_url = Set(validate_url(state, &url).await?);
    }
    if let Some(event_types) = patch.event_types {
        validate_event_types(&event_types)?;
        active.event_types = Set(serde_json::json!(event_types));
    }
    if let Some(description) = patch.description {
        active.description = Set(Some(description));
    }
    if let Some(filters) = patch.filters {
        validate_filters(Some(&filters))?;
        // `{}` removes every filter.
        let empty = filters.as_object().is_some_and(serde_json::Map::is_empty);
        active.filters = Set((!empty).then_some(filters));
    }
    let enabling = patch.enabled == Some(true) && !was_enabled;
    if let Some(enabled) = patch.enabled {
        active.enabled = Set(enabled);
        if enabled {
            active.disabled_reason = Set(None);
            active.failing_since = Set(None);
        }
    }
    active.updated_at = Set(Utc::now());
    let model = active.update(&state.db).await?;
    if enabling {
        // Its waiting deliveries are due now; the sweeper sends them.
        delivery::Entity::update_many()
            .col_expr(delivery::Column::NextAttemptAt, Expr::value(Utc::now()))
            .col_expr(
                delivery::Column::LockedUntil,
                Expr::value(Option::<DateTime<Utc>>::None),
            )
            .filter(delivery::Column::SubscriptionId.eq(subscription_id))
            .filter(delivery::Column::Status.eq(delivery::status::PENDING))
            .exec(&state.db)
            .await?;
    }
    Ok(model.into())
}

/// Deletes `company_id`'s subscription `id` with its deliveries.
pub(crate) async fn delete_subscription(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<()> {
    let model = find_subscription(state, company_id, id).await?;
    let subscription_id = model.id;
    model.delete(&state.db).await?;
    tracing::info!(subscription.id = %subscription_id, "subscription deleted");
    Ok(())
}

/// Gives `company_id`'s subscription `id` a new signing secret and returns it (shown only
/// then); deliveries are signed with it from now on.
pub(crate) async fn rotate_secret(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<SubscriptionWithSecretOut> {
    let model = find_subscription(state, company_id, id).await?;
    let secret = worker::signature::generate_secret();
    let mut active = model.into_active_model();
    active.secret = Set(state.cipher.encrypt(&secret));
    active.updated_at = Set(Utc::now());
    let model = active.update(&state.db).await?;
    tracing::info!(subscription.id = %model.id, "subscription secret rotated");
    Ok(SubscriptionWithSecretOut {
        subscription: model.into(),
        secret,
    })
}

/// The subscription `id` of `company_id`, else 404.
pub(crate) async fn find_subscription(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<subscription::Model> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("subscription"))?;
    subscription::Entity::find_by_id_for_company(id, company_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("subscription"))
}

async fn validate_url(state: &AppState, url: &str) -> ApiResult<String> {
    worker::target::validate_url(url.trim(), state.allow_private_targets)
        .await
        .map(|url| url.to_string())
        .map_err(ApiError::unprocessable)
}

/// Filters are a JSON object; `projectKeys`, when present, is a list of project keys.
fn validate_filters(filters: Option<&serde_json::Value>) -> ApiResult<()> {
    let Some(filters) = filters else {
        return Ok(());
    };
    let Some(object) = filters.as_object() else {
        return Err(ApiError::unprocessable(
            "filters must be a JSON object, e.g. {\"projectKeys\": [\"ENG\"]}",
        ));
    };
    if let Some(keys) = object.get("projectKeys")
        && !keys
            .as_array()
            .is_some_and(|keys| keys.iter().all(serde_json::Value::is_string))
    {
        return Err(ApiError::unprocessable(
            "filters.projectKeys must be a list of project keys, e.g. [\"ENG\"]",
        ));
    }
    Ok(())
}

fn validate_event_types(event_types: &[String]) -> ApiResult<()> {
    if event_types.is_empty() || event_types.iter().any(|pattern| pattern.trim().is_empty()) {
        return Err(ApiError::unprocessable(
            "eventTypes must list at least one non-empty pattern, e.g. \"jira:issue_*\"",
        ));
    }
    Ok(())
}
