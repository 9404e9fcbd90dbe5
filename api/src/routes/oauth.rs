//! Connecting Jira sites through Atlassian OAuth 2.0 (3LO): the authorize URL and the callback
//! (DESIGN §5, §10).
//!
//! The `state` is a random single-use value in `oauth_state`, bound to the company that started
//! the flow and valid for [`STATE_LIFETIME`]; the callback consumes it with one conditional
//! UPDATE, so a replayed callback fails. Tokens are stored encrypted and never returned.

use base64::Engine as _;
use chrono::Utc;
use entity::plugin_connection::{self, status};
use entity::{oauth_credential, oauth_state};
use plugins::jira::oauth::{OAuthError, Site, TokenSet};
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Html, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, ResponseContent};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, EntityTrait, IntoActiveModel, QueryFilter,
    TransactionTrait,
};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::console::connected::{ConnectedSite, connected_page};
use crate::console::layout::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::connections::generate_webhook_secret;
use crate::state::AppState;

/// How long a started OAuth flow may take before its `state` is refused.
pub const STATE_LIFETIME: chrono::Duration = chrono::Duration::minutes(10);

/// The OAuth connect API.
pub struct OAuthApi;

/// Where to send the person connecting a site.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AuthorizeOut {
    /// Atlassian's consent page; open it in a browser. Valid for 10 minutes, once.
    pub authorize_url: String,
}

/// A site connected by the OAuth flow.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct ConnectedSiteOut {
    /// The connection's id.
    pub id: Uuid,
    /// Where Jira must post the site's webhooks.
    pub webhook_url: String,
    /// The secret to enter in Jira's webhook settings.
    pub webhook_secret: String,
    /// The site's host, e.g. `northwind-labs.atlassian.net`.
    pub external_id: String,
    /// The site's name.
    pub external_name: String,
}

/// The sites connected by the OAuth flow.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct CallbackOut {
    /// One connection per site the grant reaches.
    pub connections: Vec<ConnectedSiteOut>,
}

/// Answer of `authorize_jira`.
#[derive(Debug, ApiResponse)]
pub enum AuthorizeResponse {
    /// The flow is started.
    #[oai(status = 200)]
    Ok(Json<AuthorizeOut>),
}

/// The callback's body: JSON when asked for with `Accept: application/json`, else a page.
#[derive(Debug, ResponseContent)]
pub enum CallbackBody {
    /// The connections.
    Json(Json<CallbackOut>),
    /// A page showing the connections and how to register the webhook in Jira.
    Html(Html<String>),
}

/// Answer of `jira_oauth_callback`.
#[derive(Debug, ApiResponse)]
pub enum CallbackResponse {
    /// The sites are connected.
    #[oai(status = 200)]
    Connected(
        CallbackBody,
        /// `no-store`: the answer carries webhook secrets.
        #[oai(header = "Cache-Control")]
        String,
    ),
}

#[OpenApi(tag = "ApiTags::Connections")]
impl OAuthApi {
    /// Start connecting Jira sites
    ///
    /// Returns Atlassian's consent URL. After consent Atlassian sends the browser to
    /// `/oauth/jira/callback`, which connects every site the grant reaches.
    #[oai(
        path = "/api/v1/connections/jira/authorize",
        method = "post",
        operation_id = "authorize_jira"
    )]
    async fn authorize(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
    ) -> ApiResult<AuthorizeResponse> {
        let authorize_url = start_authorization(&state, auth.0.id).await?;
        Ok(AuthorizeResponse::Ok(Json(AuthorizeOut { authorize_url })))
    }

    /// Finish connecting Jira sites
    ///
    /// Where Atlassian sends the browser after consent. Exchanges the code, connects every site
    /// the grant reaches (a site connected before is updated, not duplicated) and shows each
    /// site's webhook URL and secret. Answers JSON with `Accept: application/json`, else a page.
    #[oai(
        path = "/oauth/jira/callback",
        method = "get",
        operation_id = "jira_oauth_callback"
    )]
    async fn callback(
        &self,
        state: poem::web::Data<&AppState>,
        /// The authorization code.
        code: Query<Option<String>>,
        /// The `state` of the flow.
        #[oai(name = "state")]
        flow_state: Query<Option<String>>,
        /// Set by Atlassian when consent was not given.
        error: Query<Option<String>>,
        /// `application/json` for a JSON answer.
        #[oai(name = "Accept")]
        accept: Header<Option<String>>,
    ) -> ApiResult<CallbackResponse> {
        let oauth = state.jira.tokens().oauth().ok_or_else(not_configured)?;
        let flow_state = flow_state
            .0
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ApiError::bad_request("the state parameter is missing"))?;
        let company_id = consume_state(&state, &flow_state).await?;
        if let Some(error) = error.0 {
            return Err(ApiError::bad_request(format!(
                "Atlassian did not grant access ({error}); start again to connect a site"
            )));
        }
        let code = code
            .0
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ApiError::bad_request("the code parameter is missing"))?;

        let tokens = oauth
            .exchange_code(&code)
            .await
            .map_err(|error| match error {
                OAuthError::Transient(_) => ApiError::bad_gateway(format!(
                    "Atlassian's token endpoint failed ({error}); start again to connect a site"
                )),
                _ => ApiError::bad_request(format!(
                    "the authorization code was refused ({error}); start again to connect a site"
                )),
            })?;
        let sites = oauth
            .accessible_resources(&tokens.access_token)
            .await
            .map_err(|error| {
                ApiError::bad_gateway(format!(
                    "could not list the Jira sites of the grant: {error:#}"
                ))
            })?;
        if sites.is_empty() {
            return Err(ApiError::unprocessable(
                "the grant gives access to no Jira site: choose a site on Atlassian's consent page",
            ));
        }

        let txn = state.db.begin().await?;
        if state.db.get_database_backend() == sea_orm::DatabaseBackend::Sqlite {
            // SQLite: take the database's write lock first. A transaction that reads and then
            // writes cannot wait for a writer that came in between: SQLite answers "database
            // is locked" at once. A first write waits (busy timeout) like any other writer.
            entity::company::Entity::update_many()
                .col_expr(
                    entity::company::Column::Id,
                    Expr::col(entity::company::Column::Id),
                )
                .filter(entity::company::Column::Id.eq(company_id))
                .exec(&txn)
                .await?;
        }
        let mut connections = Vec::with_capacity(sites.len());
        for site in &sites {
            connections.push(store_site(&state, &txn, company_id, site, &tokens).await?);
        }
        txn.commit().await?;
        for connection in &connections {
            tracing::info!(
                connection.id = %connection.id,
                company.id = %company_id,
                "Jira site connected through OAuth"
            );
        }

        let out = CallbackOut { connections };
        let wants_json = accept
            .0
            .is_some_and(|accept| accept.contains("application/json"));
        let body = if wants_json {
            CallbackBody::Json(Json(out))
        } else {
            CallbackBody::Html(Html(render_page(&out)))
        };
        Ok(CallbackResponse::Connected(body, "no-store".to_owned()))
    }
}

/// Starts a flow for `company_id`: records a new single-use `state` and returns Atlassian's
/// consent URL carrying it. The API's `authorize_jira` and the console's `Connect Jira` button
/// both start here.
pub(crate) async fn start_authorization(state: &AppState, company_id: Uuid) -> ApiResult<String> {
    let oauth = state.jira.tokens().oauth().ok_or_else(not_configured)?;
    let mut bytes = [0u8; 32];
    rand::fill(&mut bytes);
    let value = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let now = Utc::now();
    oauth_state::Entity::insert(oauth_state::ActiveModel {
        state: Set(value.clone()),
        company_id: Set(company_id),
        plugin_id: Set(plugins::jira::PLUGIN_ID.to_owned()),
        expires_at: Set(now + STATE_LIFETIME),
        used_at: Set(None),
        created_at: Set(now),
    })
    .exec_without_returning(&state.db)
    .await?;
    Ok(oauth.authorize_url(&value))
}

fn not_configured() -> ApiError {
    ApiError::unavailable_because(
        "connecting Jira sites is not configured: set JIRA_CLIENT_ID and JIRA_CLIENT_SECRET",
    )
}

/// Marks the state used, once; returns the company that started the flow.
async fn consume_state(state: &AppState, value: &str) -> ApiResult<Uuid> {
    let now = Utc::now();
    let consumed = oauth_state::Entity::update_many()
        .col_expr(oauth_state::Column::UsedAt, Expr::value(now))
        .filter(oauth_state::Column::State.eq(value))
        .filter(oauth_state::Column::PluginId.eq(plugins::jira::PLUGIN_ID))
        .filter(oauth_state::Column::UsedAt.is_null())
        .filter(oauth_state::Column::ExpiresAt.gt(now))
        .exec(&state.db)
        .await?;
    let row = oauth_state::Entity::find_by_id(value.to_owned())
        .one(&state.db)
        .await?;
    match row {
        Some(row) if consumed.rows_affected == 1 => Ok(row.company_id),
        None => Err(ApiError::bad_request(
            "the state is unknown: start connecting again",
        )),
        // The UPDATE matched nothing: the state was used (perhaps by a concurrent callback) …
        Some(row) if row.used_at.is_some() => Err(ApiError::bad_request(
            "the state was already used: start connecting again",
        )),
        // … or it expired.
        Some(_) => Err(ApiError::bad_request(
            "the state has expired (a flow must finish within 10 minutes): start connecting again",
        )),
    }
}

/// Creates or updates the connection of `site` and stores its credential.
async fn store_site(
    state: &AppState,
    txn: &sea_orm::DatabaseTransaction,
    company_id: Uuid,
    site: &Site,
    tokens: &TokenSet,
) -> ApiResult<ConnectedSiteOut> {
    let now = Utc::now();
    let external_id = site.host();
    let metadata = serde_json::json!({ "cloudId": site.id, "siteUrl": site.url });
    let existing = plugin_connection::Entity::find_for_company(company_id)
        .filter(plugin_connection::Column::PluginId.eq(plugins::jira::PLUGIN_ID))
        .filter(plugin_connection::Column::ExternalId.eq(&external_id))
        .one(txn)
        .await?;
    let (connection, webhook_secret) = match existing {
        Some(model) => {
            // Keep the secret the site's webhook is already configured with, if readable.
            let secret = model
                .webhook_secret
                .as_deref()
                .and_then(|stored| state.cipher.decrypt(stored).ok())
                .unwrap_or_else(generate_webhook_secret);
            let mut active = model.into_active_model();
            active.external_name = Set(site.name.clone());
            active.metadata = Set(metadata);
            active.webhook_secret = Set(Some(state.cipher.encrypt(&secret)));
            active.status = Set(status::ACTIVE.to_owned());
            active.updated_at = Set(now);
            (active.update(txn).await?, secret)
        }
        None => {
            let secret = generate_webhook_secret();
            let model = plugin_connection::ActiveModel {
                id: Set(Uuid::now_v7()),
                company_id: Set(company_id),
                plugin_id: Set(plugins::jira::PLUGIN_ID.to_owned()),
                external_id: Set(external_id),
                external_name: Set(site.name.clone()),
                metadata: Set(metadata),
                webhook_secret: Set(Some(state.cipher.encrypt(&secret))),
                status: Set(status::ACTIVE.to_owned()),
                created_at: Set(now),
                updated_at: Set(now),
            };
            (
                plugin_connection::Entity::insert(model)
                    .exec_with_returning(txn)
                    .await?,
                secret,
            )
        }
    };

    let previous = oauth_credential::Entity::find_by_id(connection.id)
        .one(txn)
        .await?;
    let credential = oauth_credential::ActiveModel {
        connection_id: Set(connection.id),
        access_token: Set(state.cipher.encrypt(&tokens.access_token)),
        refresh_token: Set(state.cipher.encrypt(&tokens.refresh_token)),
        expires_at: Set(tokens.expires_at),
        scope: Set(tokens.scope.clone()),
        // A new version, so that a TokenManager holding the old token sees the change.
        token_version: Set(previous
            .as_ref()
            .map_or(1, |previous| previous.token_version + 1)),
        refreshed_at: Set(Some(now)),
        last_error: Set(None),
        created_at: Set(previous
            .as_ref()
            .map_or(now, |previous| previous.created_at)),
        updated_at: Set(now),
    };
    if previous.is_some() {
        credential.update(txn).await?;
    } else {
        oauth_credential::Entity::insert(credential)
            .exec_without_returning(txn)
            .await?;
    }

    Ok(ConnectedSiteOut {
        webhook_url: state.webhook_url(connection.id),
        id: connection.id,
        webhook_secret,
        external_id: connection.external_id,
        external_name: connection.external_name,
    })
}

/// The callback's page: the console's page of connected sites (webhook URL, secret, the steps
/// to register the webhook in Jira).
fn render_page(out: &CallbackOut) -> String {
    let sites: Vec<ConnectedSite<'_>> = out
        .connections
        .iter()
        .map(|connection| ConnectedSite {
            id: connection.id,
            name: &connection.external_name,
            external_id: &connection.external_id,
            webhook_url: &connection.webhook_url,
            webhook_secret: &connection.webhook_secret,
        })
        .collect();
    connected_page("Jira connected", &sites, Viewer::Anonymous).into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_names_and_shows_the_jira_steps() {
        let page = render_page(&CallbackOut {
            connections: vec![ConnectedSiteOut {
                id: Uuid::nil(),
                webhook_url: "https://h.test/webhook/jira/x".into(),
                webhook_secret: "s3cret".into(),
                external_id: "evil.atlassian.net".into(),
                external_name: "<script>alert(1)</script>".into(),
            }],
        });
        assert!(!page.contains("<script>alert"));
        assert!(page.contains("&lt;script&gt;"));
        assert!(page.contains("Settings → System → WebHooks"));
        assert!(page.contains("https://h.test/webhook/jira/x"));
        assert!(page.contains("s3cret"));
    }
}
