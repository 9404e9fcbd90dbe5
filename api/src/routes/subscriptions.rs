//! `/api/v1/subscriptions`: where a company's events are delivered, and how they are signed.

use chrono::{DateTime, Utc};
use entity::{delivery, subscription};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Union};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, ModelTrait,
    QueryFilter, QueryOrder, QuerySelect,
};
use uuid::Uuid;
use worker::destination::amqp::AmqpSettings;
use worker::destination::broker::{BrokerSettings, kind, redacted_url};
use worker::destination::nats::NatsSettings;
use worker::destination::redis_stream::RedisStreamSettings;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::page::Page;
use crate::state::AppState;

/// The subscription API.
pub struct SubscriptionApi;

/// Where a subscription's deliveries go, chosen by `type`. Every kind gets the same JSON body
/// and the Standard Webhooks values `webhook-id`, `webhook-timestamp` and `webhook-signature`;
/// a delivery counts only once the destination confirmed it. In answers, credentials in `url`
/// are shown as `***`.
#[derive(Debug, Clone, Union)]
#[oai(discriminator_name = "type", one_of)]
pub enum Destination {
    /// An HTTP POST with the Standard Webhooks headers (the same as `url` alone).
    #[oai(mapping = "http")]
    Http(HttpDestination),
    /// An `XADD` to a Redis stream, with the fields `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature` and `body`.
    #[oai(mapping = "redis_stream")]
    RedisStream(RedisStreamDestination),
    /// A persistent publish to a RabbitMQ exchange with publisher confirms; `message_id` is the
    /// `webhook-id`, the message headers carry the three Standard Webhooks values.
    #[oai(mapping = "amqp")]
    Amqp(AmqpDestination),
    /// A NATS JetStream publish awaiting the stream's acknowledgement; headers carry the three
    /// Standard Webhooks values and `Nats-Msg-Id` = `webhook-id` (JetStream dedupes on it).
    #[oai(mapping = "nats")]
    Nats(NatsDestination),
}

/// An HTTP destination.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct HttpDestination {
    /// Where deliveries are POSTed (`http` or `https`, no credentials in it).
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: String,
}

/// A Redis stream destination.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct RedisStreamDestination {
    /// The Redis server, `redis://[:password@]host[:port][/db]`.
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: String,
    /// The stream's key.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub stream: String,
    /// Keep the stream at about this many entries (`XADD … MAXLEN ~ n`); unset: unbounded.
    #[oai(nullable, validator(minimum(value = "1")))]
    pub max_len: Option<u64>,
}

/// A RabbitMQ (AMQP 0.9.1) destination.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct AmqpDestination {
    /// The broker, `amqp[s]://user:password@host[:port]/vhost` (`%2f` is the vhost `/`).
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: String,
    /// The exchange to publish to; `""` is the default exchange, which routes by queue name.
    /// It must exist: publishing to an unknown exchange fails.
    #[oai(validator(max_length = 255))]
    pub exchange: String,
    /// The routing key (with the default exchange: the queue's name). A message no queue is
    /// bound for is returned by the broker and the attempt fails.
    #[oai(validator(max_length = 255))]
    pub routing_key: String,
}

/// A NATS JetStream destination.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct NatsDestination {
    /// The server, `nats://[token@ | user:password@]host[:port]` (`tls://` for TLS).
    #[oai(validator(min_length = 1, max_length = 2048))]
    pub url: String,
    /// The subject, e.g. `jira.events`; a JetStream stream must capture it, else the attempt
    /// fails.
    #[oai(validator(min_length = 1, max_length = 1024))]
    pub subject: String,
}

impl Destination {
    /// The broker settings of a broker destination; `None` for `http`.
    pub fn broker_settings(&self) -> Option<BrokerSettings> {
        match self.clone() {
            Self::Http(_) => None,
            Self::RedisStream(d) => Some(BrokerSettings::RedisStream(RedisStreamSettings {
                url: d.url.trim().to_owned(),
                stream: d.stream,
                max_len: d.max_len,
            })),
            Self::Amqp(d) => Some(BrokerSettings::Amqp(AmqpSettings {
                url: d.url.trim().to_owned(),
                exchange: d.exchange,
                routing_key: d.routing_key,
            })),
            Self::Nats(d) => Some(BrokerSettings::Nats(NatsSettings {
                url: d.url.trim().to_owned(),
                subject: d.subject,
            })),
        }
    }

    /// How broker settings are shown (with their credentials as given: redact first).
    pub fn from_broker_settings(settings: BrokerSettings) -> Self {
        match settings {
            BrokerSettings::RedisStream(s) => Self::RedisStream(RedisStreamDestination {
                url: s.url,
                stream: s.stream,
                max_len: s.max_len,
            }),
            BrokerSettings::Amqp(s) => Self::Amqp(AmqpDestination {
                url: s.url,
                exchange: s.exchange,
                routing_key: s.routing_key,
            }),
            BrokerSettings::Nats(s) => Self::Nats(NatsDestination {
                url: s.url,
                subject: s.subject,
            }),
        }
    }

    /// The URL of this destination.
    fn url_mut(&mut self) -> &mut String {
        match self {
            Self::Http(d) => &mut d.url,
            Self::RedisStream(d) => &mut d.url,
            Self::Amqp(d) => &mut d.url,
            Self::Nats(d) => &mut d.url,
        }
    }

    /// The `type` of this destination.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Http(_) => kind::HTTP,
            Self::RedisStream(_) => kind::REDIS_STREAM,
            Self::Amqp(_) => kind::AMQP,
            Self::Nats(_) => kind::NATS,
        }
    }
}

/// A subscription to create: give `url` (an HTTP destination) or `destination`.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct SubscriptionIn {
    /// Where deliveries are POSTed (`http` or `https`); short for
    /// `"destination": {"type": "http", "url": …}`.
    #[oai(nullable, validator(min_length = 1, max_length = 2048))]
    pub url: Option<String>,
    /// Where deliveries go; instead of `url`.
    #[oai(nullable)]
    pub destination: Option<Destination>,
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
    /// A new HTTP target URL (validated like at creation); the destination becomes `http`.
    #[oai(nullable, validator(min_length = 1, max_length = 2048))]
    pub url: Option<String>,
    /// A new destination, of any kind (instead of `url`). Its broker connection is closed and
    /// opened anew.
    #[oai(nullable)]
    pub destination: Option<Destination>,
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
    /// Where deliveries are POSTed (`http`); for a broker, its URL with credentials as `***`.
    pub url: String,
    /// Where deliveries go, credentials shown as `***`.
    pub destination: Destination,
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

impl SubscriptionOut {
    /// The answer for `model`; `cipher` reads its destination, shown redacted.
    pub fn from_model(model: subscription::Model, cipher: &entity::cipher::Cipher) -> Self {
        let destination = shown_destination(&model, cipher);
        Self {
            id: model.id,
            destination,
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
        Ok(Json(SubscriptionOut::from_model(model, &state.cipher)))
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
    let destination = match (input.url, input.destination) {
        (Some(url), None) => Destination::Http(HttpDestination { url }),
        (None, Some(destination)) => destination,
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give either url or destination, not both",
            ));
        }
        (None, None) => {
            return Err(ApiError::unprocessable(
                "give url (an HTTP destination) or destination",
            ));
        }
    };
    let stored = store_destination(state, destination).await?;
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
        target_url: Set(stored.target_url),
        destination_kind: Set(stored.kind.to_owned()),
        destination: Set(stored.destination),
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
    tracing::info!(subscription.id = %model.id, company.id = %company_id, destination = %model.destination_kind, "subscription created");
    Ok(SubscriptionWithSecretOut {
        subscription: SubscriptionOut::from_model(model, &state.cipher),
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
        items: models
            .into_iter()
            .map(|model| SubscriptionOut::from_model(model, &state.cipher))
            .collect(),
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
    let model_before = model.clone();
    let mut active = model.into_active_model();
    let destination = match (patch.url, patch.destination) {
        (Some(_), Some(_)) => {
            return Err(ApiError::unprocessable(
                "give either url or destination, not both",
            ));
        }
        (Some(url), None) => Some(Destination::Http(HttpDestination { url })),
        (None, destination) => destination,
    };
    if let Some(mut destination) = destination {
        keep_credentials(&model_before, &mut destination, &state.cipher);
        let stored = store_destination(state, destination).await?;
        active.target_url = Set(stored.target_url);
        active.destination_kind = Set(stored.kind.to_owned());
        active.destination = Set(stored.destination);
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
    Ok(SubscriptionOut::from_model(model, &state.cipher))
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
        subscription: SubscriptionOut::from_model(model, &state.cipher),
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

/// A destination as its columns store it.
struct StoredDestination {
    kind: &'static str,
    /// The HTTP URL, or the broker URL redacted (for display).
    target_url: String,
    /// A broker's settings, encrypted.
    destination: Option<String>,
}

/// Validates a destination (the SSRF rules apply to broker hosts too) and encrypts a broker's
/// settings, which carry its credentials.
async fn store_destination(
    state: &AppState,
    destination: Destination,
) -> ApiResult<StoredDestination> {
    let Some(settings) = destination.broker_settings() else {
        let Destination::Http(http) = destination else {
            return Err(ApiError::unprocessable("destination.type is unknown"));
        };
        return Ok(StoredDestination {
            kind: kind::HTTP,
            target_url: validate_url(state, &http.url).await?,
            destination: None,
        });
    };
    settings
        .validate(state.allow_private_targets)
        .await
        .map_err(|problem| ApiError::unprocessable(format!("destination: {problem}")))?;
    Ok(StoredDestination {
        kind: settings.kind(),
        target_url: redacted_url(settings.url()),
        destination: Some(state.cipher.encrypt(&settings.to_stored())),
    })
}

/// A changed broker destination of the same type whose `url` is the redacted URL the answers
/// show (a GET sent back, the console's edit form) keeps the stored URL and its credentials.
fn keep_credentials(
    current: &subscription::Model,
    destination: &mut Destination,
    cipher: &entity::cipher::Cipher,
) {
    let Some(stored) = &current.destination else {
        return;
    };
    if destination.kind() != current.destination_kind {
        return;
    }
    let Ok(settings) = cipher
        .decrypt(stored)
        .map_err(anyhow::Error::from)
        .and_then(|json| BrokerSettings::from_stored(&json))
    else {
        return;
    };
    let url = destination.url_mut();
    if url.trim() == redacted_url(settings.url()) {
        *url = settings.url().to_owned();
    }
}

/// How a subscription's destination is shown: a broker's settings with the credentials
/// redacted. Settings that cannot be read show the redacted URL alone.
fn shown_destination(model: &subscription::Model, cipher: &entity::cipher::Cipher) -> Destination {
    let Some(stored) = &model.destination else {
        return Destination::Http(HttpDestination {
            url: model.target_url.clone(),
        });
    };
    let settings = cipher
        .decrypt(stored)
        .map_err(anyhow::Error::from)
        .and_then(|json| BrokerSettings::from_stored(&json));
    match settings {
        Ok(settings) => Destination::from_broker_settings(settings.redacted()),
        Err(error) => {
            tracing::error!(subscription.id = %model.id, error = format!("{error:#}"), "could not read a destination's settings");
            let url = model.target_url.clone();
            match model.destination_kind.as_str() {
                kind::REDIS_STREAM => Destination::RedisStream(RedisStreamDestination {
                    url,
                    stream: String::new(),
                    max_len: None,
                }),
                kind::AMQP => Destination::Amqp(AmqpDestination {
                    url,
                    exchange: String::new(),
                    routing_key: String::new(),
                }),
                _ => Destination::Nats(NatsDestination {
                    url,
                    subject: String::new(),
                }),
            }
        }
    }
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
