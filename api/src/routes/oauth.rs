//! Connecting Jira sites through Atlassian OAuth 2.0 (3LO): the authorize URL and the callback
//! (DESIGN §5, §10).
//!
//! The flow's `state` lives in [`crate::connect_flow`]: single use, bound to the company and to
//! the browser that started the flow (a cookie set by `authorize_jira`). The callback stores the
//! consent as one grant with one connection per site ([`crate::consent`]). Tokens are stored
//! encrypted and never returned; the answer that shows webhook secrets is never cached.

use plugins::jira::oauth::OAuthError;
use poem_openapi::param::{Header, Query};
use poem_openapi::payload::{Html, Json};
use poem_openapi::{ApiResponse, Object, OpenApi, ResponseContent};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, TransactionTrait};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::connect_flow;
use crate::consent::{self, Consent};
use crate::console::connected::{ConnectedSite, connected_page};
use crate::console::layout::Viewer;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::state::AppState;

/// `Cache-Control` of every answer that shows a webhook secret.
pub const NO_STORE: &str = "no-store";

/// The OAuth connect API.
pub struct OAuthApi;

/// Where to send the person connecting a site.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct AuthorizeOut {
    /// Atlassian's consent page; open it in the browser that made this request (it got the
    /// flow's cookie). Valid for 10 minutes, once.
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
    /// The company the sites were connected to.
    pub company_id: Uuid,
    /// Its name.
    pub company_name: String,
    /// The grant (one per consent) every site is reached through.
    pub grant_id: Uuid,
    /// One connection per site the consent lists.
    pub connections: Vec<ConnectedSiteOut>,
}

/// Answer of `authorize_jira`.
#[derive(Debug, ApiResponse)]
pub enum AuthorizeResponse {
    /// The flow is started; the cookie binds it to this browser.
    #[oai(status = 200)]
    Ok(
        Json<AuthorizeOut>,
        /// The flow's cookie, sent back only to the callback.
        #[oai(header = "Set-Cookie")]
        String,
        /// `no-store`.
        #[oai(header = "Cache-Control")]
        String,
    ),
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
        /// `no-store`: the answer shows webhook secrets.
        #[oai(header = "Cache-Control")]
        String,
        /// Removes the flow's cookie.
        #[oai(header = "Set-Cookie")]
        String,
    ),
}

#[OpenApi(tag = "ApiTags::Connections")]
impl OAuthApi {
    /// Start connecting Jira sites
    ///
    /// Returns Atlassian's consent URL and sets a cookie that binds the flow to the browser
    /// making this request: the callback refuses a browser without it, so open the URL in that
    /// browser. After consent Atlassian sends the browser to `/oauth/jira/callback`, which
    /// connects every site the consent lists.
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
        let flow = connect_flow::start(&state, auth.0.id).await?;
        Ok(AuthorizeResponse::Ok(
            Json(AuthorizeOut {
                authorize_url: flow.authorize_url,
            }),
            flow.set_cookie,
            NO_STORE.to_owned(),
        ))
    }

    /// Finish connecting Jira sites
    ///
    /// Where Atlassian sends the browser after consent; the browser must carry the cookie set
    /// by `authorize_jira`. Exchanges the code, stores the consent as one grant, connects every
    /// site it lists (a site connected before is updated, not duplicated; a site of the same
    /// account's earlier consent that is no longer listed is flagged `reauth_required`) and
    /// shows each site's webhook URL and secret. Answers JSON with `Accept: application/json`,
    /// else a page.
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
        /// Carries the flow's cookie.
        #[oai(name = "Cookie")]
        cookie: Header<Option<String>>,
    ) -> ApiResult<CallbackResponse> {
        let oauth = state
            .jira
            .tokens()
            .oauth()
            .ok_or_else(connect_flow::not_configured)?;
        let flow_state = flow_state
            .0
            .filter(|value| !value.is_empty())
            .ok_or_else(|| ApiError::bad_request("the state parameter is missing"))?;
        let company_id = connect_flow::consume(&state, &flow_state, cookie.0.as_deref()).await?;
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
                OAuthError::Transient(_) | OAuthError::Unreachable(_) => {
                    ApiError::bad_gateway(format!(
                        "Atlassian's token endpoint failed ({error}); start again to connect a site"
                    ))
                }
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
        if let Some(site) = sites
            .iter()
            .find(|site| !plugins::jira::rest::is_cloud_id(&site.id))
        {
            return Err(ApiError::bad_gateway(format!(
                "Atlassian listed the site {:?} with the cloudId {:?}, which is not a valid id: \
                 nothing was connected",
                site.name, site.id
            )));
        }
        let account_id = oauth
            .account_id(&tokens.access_token, &sites[0])
            .await
            .map_err(|error| {
                ApiError::bad_gateway(format!(
                    "could not tell which Atlassian account consented (the scopes must include \
                     read:jira-user): {error:#}"
                ))
            })?;
        let company = entity::company::Entity::find_by_id(company_id)
            .one(&state.db)
            .await?
            .ok_or_else(|| ApiError::not_found("company"))?;

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
        let stored = consent::store(
            &state,
            &txn,
            &Consent {
                company_id,
                account_id: &account_id,
                tokens: &tokens,
                sites: &sites,
            },
        )
        .await?;
        txn.commit().await?;
        let grant_id = stored
            .first()
            .and_then(|site| site.connection.grant_id)
            .unwrap_or_default();
        for site in &stored {
            state.connections.forget(site.connection.id);
            tracing::info!(
                connection.id = %site.connection.id,
                company.id = %company_id,
                grant.id = %grant_id,
                "Jira site connected through OAuth"
            );
        }

        let out = CallbackOut {
            company_id,
            company_name: company.name,
            grant_id,
            connections: stored
                .into_iter()
                .map(|site| ConnectedSiteOut {
                    webhook_url: state.webhook_url(site.connection.id),
                    id: site.connection.id,
                    webhook_secret: site.webhook_secret,
                    external_id: site.connection.external_id,
                    external_name: site.connection.external_name,
                })
                .collect(),
        };
        let wants_json = accept
            .0
            .is_some_and(|accept| accept.contains("application/json"));
        let body = if wants_json {
            CallbackBody::Json(Json(out))
        } else {
            CallbackBody::Html(Html(render_page(&out)))
        };
        Ok(CallbackResponse::Connected(
            body,
            NO_STORE.to_owned(),
            connect_flow::expired_browser_cookie(&flow_state),
        ))
    }
}

/// The callback's page: the console's page of connected sites (webhook URL, secret, the steps
/// to register the webhook in Jira), naming the company the sites were connected to.
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
    connected_page(
        &format!("Jira connected to {}", out.company_name),
        &sites,
        Viewer::Anonymous,
    )
    .into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_escapes_names_and_shows_the_jira_steps() {
        let page = render_page(&CallbackOut {
            company_id: Uuid::nil(),
            company_name: "Acme & <Co>".into(),
            grant_id: Uuid::nil(),
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
        assert!(page.contains("Jira connected to Acme &amp; &lt;Co&gt;"));
        assert!(page.contains("https://h.test/webhook/jira/x"));
    }
}
