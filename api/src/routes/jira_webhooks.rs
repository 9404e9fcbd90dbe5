//! `/api/v1/connections/{id}/jira/webhooks`: dynamic webhooks hookline registers at Jira for a
//! connection's site (DESIGN §3 `jira_webhook`, §10), so nobody has to be a Jira administrator.
//!
//! What Jira would refuse is refused here first, with the reason: events dynamic webhooks do
//! not get (worklog, attachment and issue-link events need an admin webhook), a missing JQL
//! filter, Jira's limit of 5 webhooks per app, user and site. Jira answers a registration 200
//! even when it refused an entry; the answer here says what Jira accepted and what it refused,
//! with Jira's reasons. The renewal job (`worker/src/jira_webhook_renewal.rs`) keeps them from
//! expiring; deleting the connection deletes them at Jira.

use chrono::{DateTime, Utc};
use entity::jira_webhook::{self, status as webhook_status};
use entity::oauth_grant;
use entity::plugin_connection::{self, status as connection_status};
use plugins::jira::dynamic_webhooks::{
    LIFETIME, MAX_WEBHOOKS_PER_USER_AND_SITE, Registration, WebhookError, WebhookSpec,
};
use plugins::jira::rest::JiraError;
use plugins::jira::token_manager::TokenError;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi};
use sea_orm::{
    ColumnTrait, Condition, EntityTrait, IntoActiveModel as _, PaginatorTrait, QueryFilter,
    QueryOrder,
};
use uuid::Uuid;

use crate::auth::CompanyAuth;
use crate::error::{ApiError, ApiResult};
use crate::routes::ApiTags;
use crate::routes::connections::find_connection;
use crate::state::AppState;

/// The dynamic webhook API.
pub struct JiraWebhookApi;

/// A dynamic webhook to register at Jira.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JiraWebhookIn {
    /// Jira events to receive: `jira:issue_created`, `jira:issue_updated`, `jira:issue_deleted`,
    /// `comment_created`, `comment_updated`, `comment_deleted`, `issue_property_set`,
    /// `issue_property_deleted`. Worklog, attachment and issue-link events are delivered only to
    /// admin webhooks.
    #[oai(validator(max_items = 20))]
    pub events: Vec<String>,
    /// The JQL filter Jira matches issues with, e.g. `project = ORB`. Required: Jira registers
    /// dynamic webhooks only with one (a missing or blank filter is refused with 422, saying
    /// so).
    pub jql_filter: Option<String>,
    /// Only changes of these fields trigger `jira:issue_updated` (Jira's `fieldIdsFilter`);
    /// default: any field.
    #[oai(validator(max_items = 100))]
    pub field_ids_filter: Option<Vec<String>>,
}

/// A dynamic webhook hookline registered at Jira.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JiraWebhookOut {
    /// The registration's id in hookline (also accepted by the delete operation).
    pub id: Uuid,
    /// Jira's id of the webhook, named in each delivery's `matchedWebhookIds`.
    pub webhook_id: i64,
    /// The connection it delivers to.
    pub connection_id: Uuid,
    /// The registered events.
    pub events: Vec<String>,
    /// The registered JQL filter.
    pub jql_filter: String,
    /// The registered field ids filter, if any.
    #[oai(nullable)]
    pub field_ids_filter: Option<Vec<String>>,
    /// `active`, or `renewal_failed` when it could not be renewed for good (the grant was
    /// revoked, or Jira no longer has the webhook): register it again once the cause is fixed.
    pub status: String,
    /// When Jira expires it unless it is renewed (hookline renews it well before).
    pub expires_at: DateTime<Utc>,
    /// When it was last renewed or tried; null before the first renewal.
    #[oai(nullable)]
    pub last_refresh_at: Option<DateTime<Utc>>,
    /// `ok` or `failed`: how the last renewal went; null before the first one.
    #[oai(nullable)]
    pub last_refresh_outcome: Option<String>,
    /// Why the last renewal failed; null after a successful one.
    #[oai(nullable)]
    pub last_refresh_error: Option<String>,
    /// When it was registered.
    pub created_at: DateTime<Utc>,
}

/// An entry of a registration that Jira refused.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct RefusedJiraWebhookOut {
    /// The events asked for.
    pub events: Vec<String>,
    /// The JQL filter asked for.
    pub jql_filter: String,
    /// Jira's reasons, as Jira gave them.
    pub errors: Vec<String>,
}

/// What Jira accepted and refused of a registration.
#[derive(Debug, Clone, Object)]
#[oai(rename_all = "camelCase")]
pub struct JiraWebhookRegistrationOut {
    /// The webhooks Jira registered (stored and renewed by hookline).
    pub items: Vec<JiraWebhookOut>,
    /// The entries Jira refused, with its reasons (Jira answers 200 even then).
    pub refused: Vec<RefusedJiraWebhookOut>,
}

/// The dynamic webhooks of a connection.
#[derive(Debug, Object)]
#[oai(rename_all = "camelCase")]
pub struct JiraWebhookList {
    /// The registrations, oldest first (a site has at most a few).
    pub items: Vec<JiraWebhookOut>,
    /// Always null: the list is never paged.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// Answer of `register_jira_webhook`.
#[derive(Debug, ApiResponse)]
pub enum RegisterJiraWebhookResponse {
    /// Jira registered the webhook (`refused` lists any entry it did not).
    #[oai(status = 201)]
    Created(Json<JiraWebhookRegistrationOut>),
}

/// Answer of `delete_jira_webhook`.
#[derive(Debug, ApiResponse)]
pub enum DeleteJiraWebhookResponse {
    /// Deleted at Jira and here.
    #[oai(status = 204)]
    Deleted,
}

impl From<jira_webhook::Model> for JiraWebhookOut {
    fn from(model: jira_webhook::Model) -> Self {
        Self {
            id: model.id,
            webhook_id: model.webhook_id,
            connection_id: model.connection_id,
            events: strings(&model.events),
            jql_filter: model.jql_filter,
            field_ids_filter: model.field_ids_filter.as_ref().map(strings),
            status: model.status,
            expires_at: model.expires_at,
            last_refresh_at: model.last_refresh_at,
            last_refresh_outcome: model.last_refresh_outcome,
            last_refresh_error: model.last_refresh_error,
            created_at: model.created_at,
        }
    }
}

fn strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Jira")]
impl JiraWebhookApi {
    /// Register a dynamic webhook in Jira
    ///
    /// Registers, at the connection's Jira site and with its OAuth grant, a webhook that
    /// delivers to the connection's webhook URL; hookline renews it before Jira's 30-day expiry
    /// and verifies its deliveries (a JWT signed with the app's client secret, and
    /// `matchedWebhookIds`). Refused before Jira is called (422): events dynamic webhooks do not
    /// get (worklog, attachment and issue-link events need an admin webhook), a blank JQL
    /// filter; 409 when the site already has Jira's limit of 5 webhooks for this app and user,
    /// or the connection was not connected through OAuth or needs to be connected again. When
    /// Jira refuses the entry the answer is 422 `jira_refused` with Jira's reasons.
    #[oai(
        path = "/connections/:id/jira/webhooks",
        method = "post",
        operation_id = "register_jira_webhook"
    )]
    async fn register_jira_webhook(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
        body: Json<JiraWebhookIn>,
    ) -> ApiResult<RegisterJiraWebhookResponse> {
        let registered = register_webhooks(&state, auth.0.id, &id, vec![body.0]).await?;
        Ok(RegisterJiraWebhookResponse::Created(Json(registered)))
    }

    /// List a connection's dynamic webhooks
    ///
    /// The webhooks hookline registered at Jira for the connection, with their expiry and how
    /// their last renewal went.
    #[oai(
        path = "/connections/:id/jira/webhooks",
        method = "get",
        operation_id = "list_jira_webhooks"
    )]
    async fn list_jira_webhooks(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
    ) -> ApiResult<Json<JiraWebhookList>> {
        let connection = find_connection(&state, auth.0.id, &id).await?;
        let items = list_webhooks(&state, auth.0.id, connection.id).await?;
        Ok(Json(JiraWebhookList {
            items,
            next_cursor: None,
        }))
    }

    /// Delete a dynamic webhook
    ///
    /// Deletes the webhook at Jira, then here; `webhookId` is Jira's id of it or its id in
    /// hookline. If Jira cannot be reached the answer is 502 and nothing is deleted (try again);
    /// if the connection's grant is no longer accepted it is deleted here only (Jira expires it
    /// within 30 days, as nothing renews it any more).
    #[oai(
        path = "/connections/:id/jira/webhooks/:webhook_id",
        method = "delete",
        operation_id = "delete_jira_webhook"
    )]
    async fn delete_jira_webhook(
        &self,
        auth: CompanyAuth,
        state: poem::web::Data<&AppState>,
        /// The connection's id.
        id: Path<String>,
        /// Jira's webhook id, or the registration's id in hookline.
        webhook_id: Path<String>,
    ) -> ApiResult<DeleteJiraWebhookResponse> {
        delete_webhook(&state, auth.0.id, &id, &webhook_id).await?;
        Ok(DeleteJiraWebhookResponse::Deleted)
    }
}

/// `company_id`'s registrations of connection `connection_id`, oldest first.
pub(crate) async fn list_webhooks(
    state: &AppState,
    company_id: Uuid,
    connection_id: Uuid,
) -> ApiResult<Vec<JiraWebhookOut>> {
    Ok(
        jira_webhook::Entity::find_for_connection(company_id, connection_id)
            .order_by_asc(jira_webhook::Column::CreatedAt)
            .order_by_asc(jira_webhook::Column::Id)
            .all(&state.db)
            .await?
            .into_iter()
            .map(JiraWebhookOut::from)
            .collect(),
    )
}

/// Where a connection's site is reached: its cloud id, and the account of its grant.
struct Site {
    cloud_id: String,
    account_id: Option<String>,
}

/// The connection's site, if it can have dynamic webhooks (connected through OAuth, its grant
/// accepted); else the 409 that says why not.
async fn oauth_site(
    state: &AppState,
    company_id: Uuid,
    connection: &plugin_connection::Model,
) -> ApiResult<Site> {
    if connection.status == connection_status::REAUTH_REQUIRED {
        return Err(ApiError::conflict(
            "the connection needs to be connected again (its Atlassian grant was revoked or \
             expired): start with POST /api/v1/connections/jira/authorize",
        ));
    }
    let (Some(cloud_id), Some(grant_id)) =
        (connection.metadata["cloudId"].as_str(), connection.grant_id)
    else {
        return Err(ApiError::conflict(
            "the connection was not connected through OAuth: dynamic webhooks are registered \
             with the site's OAuth grant (connect it with POST /api/v1/connections/jira/authorize), \
             or a Jira admin registers the webhook URL by hand",
        ));
    };
    let grant = oauth_grant::Entity::find_for_company(company_id)
        .filter(oauth_grant::Column::Id.eq(grant_id))
        .one(&state.db)
        .await?;
    Ok(Site {
        cloud_id: cloud_id.to_owned(),
        account_id: grant.and_then(|grant| grant.account_id),
    })
}

/// Registers `webhooks` at the Jira site of `company_id`'s connection `connection_id` and
/// stores what Jira accepted. Validation comes first; Jira is called once for all of them.
pub(crate) async fn register_webhooks(
    state: &AppState,
    company_id: Uuid,
    connection_id: &str,
    webhooks: Vec<JiraWebhookIn>,
) -> ApiResult<JiraWebhookRegistrationOut> {
    let connection = find_connection(state, company_id, connection_id).await?;
    let specs: Vec<WebhookSpec> = webhooks
        .into_iter()
        .map(|webhook| WebhookSpec {
            events: webhook
                .events
                .iter()
                .map(|event| event.trim().to_owned())
                .collect(),
            jql_filter: webhook
                .jql_filter
                .as_deref()
                .unwrap_or("")
                .trim()
                .to_owned(),
            field_ids_filter: webhook.field_ids_filter,
        })
        .collect();
    for spec in &specs {
        spec.validate()
            .map_err(|error| ApiError::unprocessable(error.to_string()))?;
    }
    let site = oauth_site(state, company_id, &connection).await?;

    // Jira's limit: 5 per app, user and site (all of this deployment's connections of the site
    // registered through the same account count).
    let mut same_user_and_site =
        Condition::all().add(jira_webhook::Column::CloudId.eq(&site.cloud_id));
    same_user_and_site = match &site.account_id {
        Some(account) => same_user_and_site.add(jira_webhook::Column::AccountId.eq(account)),
        None => same_user_and_site.add(jira_webhook::Column::ConnectionId.eq(connection.id)),
    };
    let registered = jira_webhook::Entity::find()
        .filter(same_user_and_site)
        .count(&state.db)
        .await? as usize;
    if registered + specs.len() > MAX_WEBHOOKS_PER_USER_AND_SITE {
        return Err(ApiError::conflict(format!(
            "Jira allows {MAX_WEBHOOKS_PER_USER_AND_SITE} dynamic webhooks per app, user and \
             site, and this site has {registered} registered through this connection's \
             Atlassian account: delete one (DELETE /api/v1/connections/{{id}}/jira/webhooks/\
             {{webhookId}}) or widen an existing webhook's events and JQL filter"
        )));
    }

    let url = state.webhook_url(connection.id);
    let results = state
        .jira
        .register_webhooks(connection.id, &site.cloud_id, &url, &specs)
        .await
        .map_err(|error| {
            metrics::counter!("hookline_jira_webhook_registrations_total", "outcome" => "error")
                .increment(1);
            webhook_error(error)
        })?;

    let now = Utc::now();
    let mut refused = Vec::new();
    let mut created_ids = Vec::new();
    let mut rows = Vec::new();
    for (spec, result) in specs.into_iter().zip(results) {
        match result {
            Registration::Created(webhook_id) => {
                metrics::counter!("hookline_jira_webhook_registrations_total", "outcome" => "created")
                    .increment(1);
                created_ids.push(webhook_id);
                rows.push(jira_webhook::Model {
                    id: Uuid::now_v7(),
                    connection_id: connection.id,
                    company_id,
                    webhook_id,
                    cloud_id: site.cloud_id.clone(),
                    account_id: site.account_id.clone(),
                    events: serde_json::json!(spec.events),
                    jql_filter: spec.jql_filter,
                    field_ids_filter: spec
                        .field_ids_filter
                        .map(|fields| serde_json::json!(fields)),
                    status: webhook_status::ACTIVE.to_owned(),
                    expires_at: now + LIFETIME,
                    last_refresh_at: None,
                    last_refresh_outcome: None,
                    last_refresh_error: None,
                    created_at: now,
                    updated_at: now,
                });
            }
            Registration::Refused(errors) => {
                metrics::counter!("hookline_jira_webhook_registrations_total", "outcome" => "refused")
                    .increment(1);
                tracing::info!(connection.id = %connection.id, errors = ?errors, "Jira refused a dynamic webhook");
                refused.push(RefusedJiraWebhookOut {
                    events: spec.events,
                    jql_filter: spec.jql_filter,
                    errors,
                });
            }
        }
    }
    let items: Vec<JiraWebhookOut> = if rows.is_empty() {
        Vec::new()
    } else {
        let stored = jira_webhook::Entity::insert_many(
            rows.iter().cloned().map(|row| row.into_active_model()),
        )
        .exec_without_returning(&state.db)
        .await;
        if let Err(error) = stored {
            // Not known here, it would never be renewed or verified: take it back at Jira.
            if let Err(undo) = state
                .jira
                .delete_webhooks(connection.id, &site.cloud_id, &created_ids)
                .await
            {
                tracing::warn!(connection.id = %connection.id, webhook.ids = ?created_ids, error = %undo, "a webhook registered at Jira could not be stored nor deleted again; Jira expires it within 30 days");
            }
            return Err(ApiError::from(error));
        }
        tracing::info!(connection.id = %connection.id, webhook.ids = ?created_ids, "dynamic webhooks registered at Jira");
        rows.into_iter().map(JiraWebhookOut::from).collect()
    };
    // Ingest must know the new ids at once (other API processes re-read on a mismatch).
    state.connections.forget(connection.id);
    if items.is_empty() {
        let reasons: Vec<String> = refused
            .iter()
            .map(|entry| entry.errors.join("; "))
            .collect();
        return Err(ApiError::jira_refused(format!(
            "Jira refused the webhook: {}",
            reasons.join(" | ")
        )));
    }
    Ok(JiraWebhookRegistrationOut { items, refused })
}

/// Deletes one registration of `company_id`'s connection at Jira and here. `webhook_id` is
/// Jira's id or the registration's id.
pub(crate) async fn delete_webhook(
    state: &AppState,
    company_id: Uuid,
    connection_id: &str,
    webhook_id: &str,
) -> ApiResult<()> {
    let connection = find_connection(state, company_id, connection_id).await?;
    let query = jira_webhook::Entity::find_for_connection(company_id, connection.id);
    let query = match (webhook_id.parse::<i64>(), Uuid::parse_str(webhook_id)) {
        (Ok(jira_id), _) => query.filter(jira_webhook::Column::WebhookId.eq(jira_id)),
        (_, Ok(id)) => query.filter(jira_webhook::Column::Id.eq(id)),
        _ => return Err(ApiError::not_found("webhook")),
    };
    let registration = query
        .one(&state.db)
        .await?
        .ok_or_else(|| ApiError::not_found("webhook"))?;
    match state
        .jira
        .delete_webhooks(
            connection.id,
            &registration.cloud_id,
            &[registration.webhook_id],
        )
        .await
    {
        Ok(()) => record_deletion("deleted"),
        // Gone at Jira already.
        Err(WebhookError::Jira(JiraError::NotFound)) => record_deletion("gone"),
        // Nothing renews it once it is gone here: Jira expires it within 30 days.
        Err(WebhookError::Jira(JiraError::Token(
            TokenError::ReauthRequired | TokenError::NoCredential,
        ))) => record_deletion("skipped"),
        Err(error) => {
            record_deletion("failed");
            return Err(webhook_error(error));
        }
    }
    jira_webhook::Entity::delete_by_id(registration.id)
        .exec(&state.db)
        .await?;
    state.connections.forget(connection.id);
    tracing::info!(connection.id = %connection.id, webhook.id = registration.webhook_id, "dynamic webhook deleted");
    Ok(())
}

/// Deletes every dynamic webhook of `connection` at Jira before the connection goes: best
/// effort, one call for all of them; the outcome is logged and counted
/// (`hookline_jira_webhook_deletions_total`). A webhook Jira could not delete expires there
/// within 30 days, since nothing renews it any more.
pub(crate) async fn delete_all_at_jira(state: &AppState, connection: &plugin_connection::Model) {
    let registrations = match jira_webhook::Entity::find()
        .filter(jira_webhook::Column::ConnectionId.eq(connection.id))
        .all(&state.db)
        .await
    {
        Ok(registrations) => registrations,
        Err(error) => {
            tracing::warn!(connection.id = %connection.id, error = %error, "could not read the connection's dynamic webhooks to delete them at Jira");
            return;
        }
    };
    let Some(cloud_id) = registrations.first().map(|first| first.cloud_id.clone()) else {
        return;
    };
    let ids: Vec<i64> = registrations.iter().map(|row| row.webhook_id).collect();
    let outcome = match state
        .jira
        .delete_webhooks(connection.id, &cloud_id, &ids)
        .await
    {
        Ok(()) => "deleted",
        Err(WebhookError::Jira(JiraError::NotFound)) => "gone",
        Err(error) => {
            tracing::warn!(connection.id = %connection.id, webhook.ids = ?ids, error = %error, "the connection's dynamic webhooks could not be deleted at Jira; Jira expires them within 30 days");
            "failed"
        }
    };
    metrics::counter!("hookline_jira_webhook_deletions_total", "outcome" => outcome)
        .increment(ids.len() as u64);
    if outcome != "failed" {
        tracing::info!(connection.id = %connection.id, webhook.ids = ?ids, outcome, "the connection's dynamic webhooks were deleted at Jira");
    }
}

fn record_deletion(outcome: &'static str) {
    metrics::counter!("hookline_jira_webhook_deletions_total", "outcome" => outcome).increment(1);
}

/// For each connection of `company_id` in `connection_ids`: why one of its dynamic webhooks
/// could not be renewed, if one could not.
pub(crate) async fn webhook_problems(
    state: &AppState,
    company_id: Uuid,
    connection_ids: &[Uuid],
) -> ApiResult<Vec<(Uuid, String)>> {
    if connection_ids.is_empty() {
        return Ok(Vec::new());
    }
    let failing = jira_webhook::Entity::find_for_company(company_id)
        .filter(jira_webhook::Column::ConnectionId.is_in(connection_ids.iter().copied()))
        .filter(
            Condition::any()
                .add(jira_webhook::Column::Status.eq(webhook_status::RENEWAL_FAILED))
                .add(jira_webhook::Column::LastRefreshOutcome.eq(jira_webhook::outcome::FAILED)),
        )
        .order_by_asc(jira_webhook::Column::Id)
        .all(&state.db)
        .await?;
    let mut problems: Vec<(Uuid, String)> = Vec::new();
    for row in failing {
        if problems.iter().any(|(id, _)| *id == row.connection_id) {
            continue;
        }
        let reason = row
            .last_refresh_error
            .unwrap_or_else(|| "no reason recorded".to_owned());
        problems.push((
            row.connection_id,
            format!(
                "the dynamic webhook {} could not be renewed ({}): {reason}",
                row.webhook_id, row.status
            ),
        ));
    }
    Ok(problems)
}

#[track_caller]
fn webhook_error(error: WebhookError) -> ApiError {
    match error {
        WebhookError::Refused { status, messages } => {
            ApiError::jira_refused(format!("Jira refused the request ({status}): {messages}"))
        }
        WebhookError::Unreadable(detail) => {
            ApiError::bad_gateway(format!("Jira's answer could not be read: {detail}"))
        }
        WebhookError::Jira(JiraError::NotFound) => ApiError::bad_gateway(
            "Jira answered 404: the site's webhook API was not found (is the site still there?)",
        ),
        WebhookError::Jira(error) => crate::routes::jira_issues::map_jira_error(error),
    }
}
