//! `/api/v1/connections`: a company's connected Jira sites and their webhook URLs.

use chrono::{DateTime, Utc};
use entity::oauth_grant;
use entity::plugin_connection::{self, status};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, EntityTrait, ModelTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::page::Page;
use crate::state::AppState;

/// The connection API.
pub struct ConnectionApi;

/// A connection to register (admin-registered webhooks, without OAuth).
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConnectionIn {
    /// The provider; only `jira` exists.
    pub plugin_id: String,
    /// The provider's id of the site, e.g. `northwind-labs.atlassian.net`; unique per company.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub external_id: String,
    /// A display name for the site.
    #[oai(validator(min_length = 1, max_length = 255))]
    pub external_name: String,
    /// Free-form metadata, e.g. `{"cloudId": "...", "siteUrl": "..."}`.
    #[oai(nullable)]
    pub metadata: Option<serde_json::Value>,
}

/// A connection.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConnectionOut {
    /// The connection's id (part of its webhook URL).
    pub id: Uuid,
    /// The provider (`jira`).
    pub plugin_id: String,
    /// The provider's id of the site.
    pub external_id: String,
    /// Display name of the site.
    pub external_name: String,
    /// Metadata (`cloudId`, `siteUrl` for OAuth connections).
    pub metadata: serde_json::Value,
    /// `active`, `reauth_required` or `disabled`. Every site of a grant that Atlassian
    /// revoked is `reauth_required`.
    pub status: String,
    /// Why the connection needs a person (e.g. its grant was revoked, or the latest consent no
    /// longer lists the site); null while active.
    #[oai(nullable)]
    pub status_reason: Option<String>,
    /// The OAuth grant (one per Atlassian consent) the site is reached through; null for a
    /// connection registered without OAuth, or one the latest consent no longer lists.
    #[oai(nullable)]
    pub grant: Option<GrantOut>,
    /// Where Jira must post this connection's webhooks.
    pub webhook_url: String,
    /// Whether webhooks must carry `X-Hub-Signature` (admin webhooks; deliveries of dynamic
    /// webhooks carry a JWT instead).
    pub signed: bool,
    /// Why a dynamic webhook hookline registered at Jira for the connection could not be
    /// renewed (see `GET /api/v1/connections/{id}/jira/webhooks`); null while all are fine.
    #[oai(nullable)]
    pub webhook_problem: Option<String>,
    /// When the connection was created.
    pub created_at: DateTime<Utc>,
    /// When the connection last changed.
    pub updated_at: DateTime<Utc>,
}

/// The OAuth grant of a connection: one Atlassian consent, shared by every site it lists.
/// Tokens are never shown.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct GrantOut {
    /// The grant's id; sites with the same grant share one token pair.
    pub id: Uuid,
    /// `active`, or `reauth_required` when Atlassian rejected it (a person has to consent
    /// again).
    pub status: String,
    /// The Atlassian account that consented; null for grants from before accounts were kept.
    #[oai(nullable)]
    pub account_id: Option<String>,
    /// Granted scopes, space-separated.
    pub scope: String,
    /// When the current access token expires (it is refreshed before).
    pub expires_at: DateTime<Utc>,
    /// When the tokens were last refreshed or consented.
    #[oai(nullable)]
    pub refreshed_at: Option<DateTime<Utc>>,
    /// Why the last refresh failed; null after a successful one.
    #[oai(nullable)]
    pub last_error: Option<String>,
}

impl From<oauth_grant::Model> for GrantOut {
    fn from(grant: oauth_grant::Model) -> Self {
        Self {
            id: grant.id,
            status: grant.status,
            account_id: grant.account_id,
            scope: grant.scope,
            expires_at: grant.expires_at,
            refreshed_at: grant.refreshed_at,
            last_error: grant.last_error,
        }
    }
}

/// A created connection, with its webhook secret. The secret is shown only here.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConnectionCreatedOut {
    /// The connection.
    #[oai(flatten)]
    pub connection: ConnectionOut,
    /// The secret to enter in Jira's webhook settings; Jira signs every body with it.
    pub webhook_secret: String,
}

/// A page of connections.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConnectionList {
    /// The connections, oldest first.
    pub items: Vec<ConnectionOut>,
    /// Pass as `cursor` to get the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Answer of `create_connection`.
#[derive(Debug, ApiResponse)]
pub enum CreateConnectionResponse {
    /// Created.
    #[oai(status = 201)]
    Created(
        Json<ConnectionCreatedOut>,
        /// `no-store`: the answer shows the webhook secret.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

/// Answer of `delete_connection`.
#[derive(Debug, ApiResponse)]
pub enum DeleteConnectionResponse {
    /// Deleted, with its events and deliveries.
    #[oai(status = 204)]
    Deleted,
}

impl ConnectionOut {
    /// The answer for a stored connection and its OAuth grant.
    pub(crate) fn from_model(
        state: &AppState,
        model: plugin_connection::Model,
        grant: Option<oauth_grant::Model>,
    ) -> Self {
        Self {
            status_reason: model.status_reason,
            grant: grant.map(GrantOut::from),
            webhook_url: state.webhook_url(model.id),
            signed: model.webhook_secret.is_some(),
            webhook_problem: None,
            id: model.id,
            plugin_id: model.plugin_id,
            external_id: model.external_id,
            external_name: model.external_name,
            metadata: model.metadata,
            status: model.status,
            created_at: model.created_at,
            updated_at: model.updated_at,
        }
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Connections")]
impl ConnectionApi {
    /// Register a connection
    ///
    /// Registers a Jira site whose admin configures the webhook by hand (no OAuth, so events
    /// are delivered without enrichment). Returns the webhook URL and the secret to enter in
    /// Jira; the secret is shown only here.
    #[oai(
        path = "/connections",
        method = "post",
        operation_id = "create_connection"
    )]
    async fn create_connection(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        body: Json<ConnectionIn>,
    ) -> ApiResult<CreateConnectionResponse> {
        let created = register_connection(&state, auth.0.id, body.0).await?;
        Ok(CreateConnectionResponse::Created(
            Json(created),
            crate::routes::oauth::NO_STORE.to_owned(),
        ))
    }

    /// List connections
    #[oai(
        path = "/connections",
        method = "get",
        operation_id = "list_connections"
    )]
    async fn list_connections(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The `nextCursor` of the previous page.
        cursor: Query<Option<String>>,
        /// Page size (1–200, default 50).
        limit: Query<Option<u64>>,
    ) -> ApiResult<Json<ConnectionList>> {
        let page = Page::new(cursor.0, limit.0)?;
        Ok(Json(list_connections(&state, auth.0.id, page).await?))
    }

    /// Get a connection
    #[oai(
        path = "/connections/:id",
        method = "get",
        operation_id = "get_connection"
    )]
    async fn get_connection(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
    ) -> ApiResult<Json<ConnectionOut>> {
        let model = find_connection(&state, auth.0.id, &id).await?;
        let grant = match model.grant_id {
            Some(grant_id) => {
                oauth_grant::Entity::find_for_company(auth.0.id)
                    .filter(oauth_grant::Column::Id.eq(grant_id))
                    .one(&state.db)
                    .await?
            }
            None => None,
        };
        let mut connection = ConnectionOut::from_model(&state, model, grant);
        with_webhook_problems(&state, auth.0.id, std::slice::from_mut(&mut connection)).await?;
        Ok(Json(connection))
    }

    /// Delete a connection
    ///
    /// Its webhook URL stops accepting events at once; its events and deliveries are deleted.
    /// Its OAuth grant goes too when no other site uses it. The dynamic webhooks hookline
    /// registered for it are deleted at Jira first, best effort (one Jira could not delete
    /// expires there within 30 days, since nothing renews it any more).
    #[oai(
        path = "/connections/:id",
        method = "delete",
        operation_id = "delete_connection"
    )]
    async fn delete_connection(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
    ) -> ApiResult<DeleteConnectionResponse> {
        delete_connection(&state, auth.0.id, &id).await?;
        Ok(DeleteConnectionResponse::Deleted)
    }
}

/// Registers a connection without OAuth for `company_id`; the answer carries its webhook
/// secret, which is shown only then.
pub(crate) async fn register_connection(
    state: &AppState,
    company_id: Uuid,
    input: ConnectionIn,
) -> ApiResult<ConnectionCreatedOut> {
    if input.plugin_id != plugins::jira::PLUGIN_ID {
        return Err(ApiError::unprocessable(format!(
            "unknown pluginId {:?}: the only plugin is \"jira\"",
            input.plugin_id
        )));
    }
    let metadata = input.metadata.unwrap_or_else(|| serde_json::json!({}));
    if !metadata.is_object() {
        return Err(ApiError::unprocessable("metadata must be a JSON object"));
    }
    if let Some(cloud_id) = metadata.get("cloudId")
        && !cloud_id
            .as_str()
            .is_some_and(plugins::jira::rest::is_cloud_id)
    {
        return Err(ApiError::unprocessable(format!(
            "metadata.cloudId {cloud_id} is not an Atlassian cloud id (a UUID such as \
             6f2c9a14-3b7e-4d21-a8f5-0c9e7b3d5a12)"
        )));
    }
    let (external_id, external_name) = (input.external_id.trim(), input.external_name.trim());
    if external_id.is_empty() || external_name.is_empty() {
        return Err(ApiError::unprocessable(
            "externalId and externalName must not be blank",
        ));
    }
    let secret = generate_webhook_secret();
    let now = Utc::now();
    let model = plugin_connection::ActiveModel {
        id: Set(Uuid::now_v7()),
        company_id: Set(company_id),
        plugin_id: Set(input.plugin_id),
        external_id: Set(external_id.to_owned()),
        external_name: Set(external_name.to_owned()),
        metadata: Set(metadata),
        webhook_secret: Set(Some(state.cipher.encrypt(&secret))),
        status: Set(status::ACTIVE.to_owned()),
        status_reason: Set(None),
        grant_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let model = plugin_connection::Entity::insert(model)
        .exec_with_returning(&state.db)
        .await?;
    tracing::info!(connection.id = %model.id, company.id = %company_id, "connection created");
    Ok(ConnectionCreatedOut {
        connection: ConnectionOut::from_model(state, model, None),
        webhook_secret: secret,
    })
}

/// One page of `company_id`'s connections, oldest first, each with its OAuth grant.
pub(crate) async fn list_connections(
    state: &AppState,
    company_id: Uuid,
    page: Page,
) -> ApiResult<ConnectionList> {
    let mut query = plugin_connection::Entity::find_for_company(company_id)
        .order_by_asc(plugin_connection::Column::Id)
        .limit(page.fetch());
    if let Some(after) = page.cursor {
        query = query.filter(plugin_connection::Column::Id.gt(after));
    }
    let mut models = query.all(&state.db).await?;
    let next_cursor = page.finish(&mut models, |model| model.id);
    let grant_ids: Vec<Uuid> = models.iter().filter_map(|model| model.grant_id).collect();
    let grants = if grant_ids.is_empty() {
        Vec::new()
    } else {
        oauth_grant::Entity::find_for_company(company_id)
            .filter(oauth_grant::Column::Id.is_in(grant_ids))
            .all(&state.db)
            .await?
    };
    let mut items: Vec<ConnectionOut> = models
        .into_iter()
        .map(|model| {
            let grant = grants
                .iter()
                .find(|grant| Some(grant.id) == model.grant_id)
                .cloned();
            ConnectionOut::from_model(state, model, grant)
        })
        .collect();
    with_webhook_problems(state, company_id, &mut items).await?;
    Ok(ConnectionList { items, next_cursor })
}

/// Fills in `webhook_problem` of `company_id`'s `connections` (one query for all of them).
async fn with_webhook_problems(
    state: &AppState,
    company_id: Uuid,
    connections: &mut [ConnectionOut],
) -> ApiResult<()> {
    let ids: Vec<Uuid> = connections.iter().map(|connection| connection.id).collect();
    let problems = crate::routes::jira_webhooks::webhook_problems(state, company_id, &ids).await?;
    for connection in connections {
        connection.webhook_problem = problems
            .iter()
            .find(|(id, _)| *id == connection.id)
            .map(|(_, problem)| problem.clone());
    }
    Ok(())
}

/// Deletes `company_id`'s connection `id` with its events and deliveries (and its OAuth grant
/// when no other site uses it); ingest stops accepting its webhooks at once.
pub(crate) async fn delete_connection(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<()> {
    let model = find_connection(state, company_id, id).await?;
    let connection_id = model.id;
    // While the grant still exists: it goes with its last site.
    crate::routes::jira_webhooks::delete_all_at_jira(state, &model).await;
    let txn = state.db.begin().await?;
    model.delete(&txn).await?;
    crate::consent::delete_grants_without_sites(&txn, company_id).await?;
    txn.commit().await?;
    state.connections.forget(connection_id);
    tracing::info!(connection.id = %connection_id, "connection deleted");
    Ok(())
}

/// `company_id`'s connection `id`, else 404.
pub(crate) async fn find_connection(
    state: &AppState,
    company_id: Uuid,
    id: &str,
) -> ApiResult<plugin_connection::Model> {
    let id = Uuid::parse_str(id).map_err(|_| ApiError::not_found("connection"))?;
    plugin_connection::Entity::find_by_id_for_company(id, company_id)
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))
}

/// A new webhook secret: 32 random bytes, hex.
pub fn generate_webhook_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    hex::encode(bytes)
}
