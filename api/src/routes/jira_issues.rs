//! `/api/v1/connections/{id}/jira/issues/{key}`: read an issue through the Jira REST API with the
//! connection's OAuth token (DESIGN §5).

use entity::plugin_connection::{self, status};
use plugins::jira::rest::JiraError;
use plugins::jira::token_manager::TokenError;
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, OpenApi};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::state::AppState;

/// The Jira issue read-through API.
pub struct JiraIssueApi;

/// Answer of `get_jira_issue`.
#[derive(Debug, ApiResponse)]
pub enum JiraIssueResponse {
    /// The issue as Jira's REST API v3 returns it.
    #[oai(status = 200)]
    Ok(Json<serde_json::Value>),
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Jira")]
impl JiraIssueApi {
    /// Get a Jira issue
    ///
    /// Reads the issue from the connection's Jira site with the connection's OAuth token.
    /// Jira's 404 is answered 404, its 429 is answered 429 with its `Retry-After`; a connection
    /// that needs to be connected again (or was not connected through OAuth) gets 409.
    #[oai(
        path = "/connections/:id/jira/issues/:key",
        method = "get",
        operation_id = "get_jira_issue"
    )]
    async fn get_issue(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
        /// The issue key (`ORB-417`) or id (`20417`).
        key: Path<String>,
        /// Comma-separated fields to return (Jira's `fields` parameter); default: all.
        fields: Query<Option<String>>,
    ) -> ApiResult<JiraIssueResponse> {
        let connection_id = Uuid::parse_str(&id).map_err(|_| ApiError::not_found("connection"))?;
        let connection =
            plugin_connection::Entity::find_by_id_for_company(connection_id, auth.0.id)
                .one(&state.db)
                .await?
                .ok_or_else(|| ApiError::not_found("connection"))?;
        if connection.status == status::REAUTH_REQUIRED {
            return Err(reauth_required());
        }
        let Some(cloud_id) = connection.metadata["cloudId"].as_str() else {
            return Err(ApiError::conflict(
                "the connection was not connected through OAuth (it has no cloudId): connect the \
                 site with POST /api/v1/connections/jira/authorize to read issues",
            ));
        };
        let issue = state
            .jira
            .get_issue(connection.id, cloud_id, &key, fields.0.as_deref())
            .await
            .map_err(map_jira_error)?;
        Ok(JiraIssueResponse::Ok(Json(issue)))
    }
}

fn reauth_required() -> ApiError {
    ApiError::conflict(
        "the connection needs to be connected again (its Atlassian grant was revoked or \
         expired): start with POST /api/v1/connections/jira/authorize",
    )
}

/// The answer for a failed Jira call (the read-through's and the dynamic webhooks').
#[track_caller]
pub(crate) fn map_jira_error(error: JiraError) -> ApiError {
    match error {
        JiraError::NotFound => ApiError::not_found("issue"),
        JiraError::InvalidKey(key) => {
            ApiError::bad_request(format!("{key:?} is not an issue key or id"))
        }
        JiraError::RateLimited { retry_after } => ApiError::too_many_requests(
            "Jira rate-limited the request: retry later",
            retry_after.map(|delay| delay.as_secs()),
        ),
        JiraError::Token(TokenError::ReauthRequired) => reauth_required(),
        JiraError::Token(TokenError::NoCredential) => ApiError::conflict(
            "the connection has no OAuth credential: connect the site with POST \
             /api/v1/connections/jira/authorize to read issues",
        ),
        JiraError::Token(TokenError::NotConfigured) => ApiError::unavailable_because(
            "reading Jira issues is not configured: set JIRA_CLIENT_ID and JIRA_CLIENT_SECRET",
        ),
        JiraError::Token(TokenError::Database(error)) => ApiError::from(error),
        JiraError::Token(TokenError::Cipher(error)) => ApiError::internal(error),
        error @ (JiraError::Unauthorized
        | JiraError::Upstream(_)
        | JiraError::Transport(_)
        | JiraError::Token(TokenError::Unavailable(_) | TokenError::Rejected(_))) => {
            ApiError::bad_gateway(format!("Jira could not be read: {error}"))
        }
    }
}
