//! Storing an Atlassian consent: one grant for the account that consented, and one connection
//! per site the consent lists, each pointing at the grant (DESIGN §3).
//!
//! A new consent of an account that already has a grant in the company replaces that grant's
//! tokens (a new `token_version`, so that a refresh of the old tokens in flight is not saved
//! over them) for the sites the consent lists. A site of the old grant that the new consent no
//! longer lists is detached from the grant and flagged on its connection (`reauth_required`
//! with a `statusReason`), not silently kept. A grant left without sites is deleted.

use chrono::{DateTime, Utc};
use entity::{oauth_grant, plugin_connection};
use plugins::jira::oauth::{Site, TokenSet};
use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ColumnTrait, DatabaseTransaction, EntityTrait,
    IntoActiveModel, QueryFilter, QuerySelect,
};
use uuid::Uuid;

use crate::error::ApiResult;
use crate::state::AppState;

/// A site stored by a consent, with its webhook secret in plain text (shown once).
#[derive(Debug)]
pub struct StoredSite {
    /// The site's connection.
    pub connection: plugin_connection::Model,
    /// The webhook secret to enter in Jira.
    pub webhook_secret: String,
}

/// What a consent gave: the account, its tokens and the sites it lists.
pub struct Consent<'a> {
    /// The company that started the flow.
    pub company_id: Uuid,
    /// The Atlassian account that consented.
    pub account_id: &'a str,
    /// The token pair of the consent.
    pub tokens: &'a TokenSet,
    /// The sites the consent lists (their cloud ids already checked).
    pub sites: &'a [Site],
}

/// Stores `consent` in `txn`: its grant, its sites' connections, the flags of sites it no
/// longer lists. Returns the connections in the order of `consent.sites`.
pub async fn store(
    state: &AppState,
    txn: &DatabaseTransaction,
    consent: &Consent<'_>,
) -> ApiResult<Vec<StoredSite>> {
    let now = Utc::now();
    let grant = store_grant(txn, state, consent, now).await?;
    let mut stored = Vec::with_capacity(consent.sites.len());
    for site in consent.sites {
        stored.push(store_site(state, txn, consent.company_id, grant.id, site, now).await?);
    }
    flag_unlisted_sites(txn, &grant, &stored, now).await?;
    delete_grants_without_sites(txn, consent.company_id).await?;
    Ok(stored)
}

/// The account's grant with the consent's tokens: the existing one replaced, or a new one.
async fn store_grant(
    txn: &DatabaseTransaction,
    state: &AppState,
    consent: &Consent<'_>,
    now: DateTime<Utc>,
) -> ApiResult<oauth_grant::Model> {
    let tokens = consent.tokens;
    let existing = oauth_grant::Entity::find_for_company(consent.company_id)
        .filter(oauth_grant::Column::PluginId.eq(plugins::jira::PLUGIN_ID))
        .filter(oauth_grant::Column::AccountId.eq(consent.account_id))
        .one(txn)
        .await?;
    let grant = match existing {
        Some(grant) => {
            let version = grant.token_version;
            let mut active = grant.into_active_model();
            active.access_token = Set(state.cipher.encrypt(&tokens.access_token));
            active.refresh_token = Set(state.cipher.encrypt(&tokens.refresh_token));
            active.expires_at = Set(tokens.expires_at);
            active.scope = Set(tokens.scope.clone());
            active.token_version = Set(version + 1);
            active.status = Set(oauth_grant::status::ACTIVE.to_owned());
            active.refresh_lease_id = Set(None);
            active.refresh_lease_until = Set(None);
            active.refresh_token_used_at = Set(None);
            active.refreshed_at = Set(Some(now));
            active.last_error = Set(None);
            active.updated_at = Set(now);
            active.update(txn).await?
        }
        None => {
            let model = oauth_grant::ActiveModel {
                id: Set(Uuid::now_v7()),
                company_id: Set(consent.company_id),
                plugin_id: Set(plugins::jira::PLUGIN_ID.to_owned()),
                account_id: Set(Some(consent.account_id.to_owned())),
                access_token: Set(state.cipher.encrypt(&tokens.access_token)),
                refresh_token: Set(state.cipher.encrypt(&tokens.refresh_token)),
                expires_at: Set(tokens.expires_at),
                scope: Set(tokens.scope.clone()),
                token_version: Set(1),
                status: Set(oauth_grant::status::ACTIVE.to_owned()),
                refresh_lease_id: Set(None),
                refresh_lease_until: Set(None),
                refresh_token_used_at: Set(None),
                refreshed_at: Set(Some(now)),
                last_error: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            };
            oauth_grant::Entity::insert(model)
                .exec_with_returning(txn)
                .await?
        }
    };
    Ok(grant)
}

/// Creates or updates the connection of `site`, pointing at `grant_id`.
async fn store_site(
    state: &AppState,
    txn: &DatabaseTransaction,
    company_id: Uuid,
    grant_id: Uuid,
    site: &Site,
    now: DateTime<Utc>,
) -> ApiResult<StoredSite> {
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
                .unwrap_or_else(crate::routes::connections::generate_webhook_secret);
            let mut active = model.into_active_model();
            active.external_name = Set(site.name.clone());
            active.metadata = Set(metadata);
            active.webhook_secret = Set(Some(state.cipher.encrypt(&secret)));
            active.status = Set(plugin_connection::status::ACTIVE.to_owned());
            active.status_reason = Set(None);
            active.grant_id = Set(Some(grant_id));
            active.updated_at = Set(now);
            (active.update(txn).await?, secret)
        }
        None => {
            let secret = crate::routes::connections::generate_webhook_secret();
            let model = plugin_connection::ActiveModel {
                id: Set(Uuid::now_v7()),
                company_id: Set(company_id),
                plugin_id: Set(plugins::jira::PLUGIN_ID.to_owned()),
                external_id: Set(external_id),
                external_name: Set(site.name.clone()),
                metadata: Set(metadata),
                webhook_secret: Set(Some(state.cipher.encrypt(&secret))),
                status: Set(plugin_connection::status::ACTIVE.to_owned()),
                status_reason: Set(None),
                grant_id: Set(Some(grant_id)),
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
    Ok(StoredSite {
        connection,
        webhook_secret,
    })
}

/// Sites of `grant` that the new consent does not list: detached and flagged.
async fn flag_unlisted_sites(
    txn: &DatabaseTransaction,
    grant: &oauth_grant::Model,
    listed: &[StoredSite],
    now: DateTime<Utc>,
) -> ApiResult<()> {
    let flagged = plugin_connection::Entity::update_many()
        .col_expr(
            plugin_connection::Column::Status,
            Expr::value(plugin_connection::status::REAUTH_REQUIRED),
        )
        .col_expr(
            plugin_connection::Column::StatusReason,
            Expr::value(format!(
                "the latest Atlassian consent of this site's account ({now}) no longer lists \
                 the site: connect it again (choose it on Atlassian's consent page), or delete \
                 the connection"
            )),
        )
        .col_expr(
            plugin_connection::Column::GrantId,
            Expr::value(None::<Uuid>),
        )
        .col_expr(plugin_connection::Column::UpdatedAt, Expr::value(now))
        .filter(plugin_connection::Column::GrantId.eq(grant.id))
        .filter(
            plugin_connection::Column::Id.is_not_in(listed.iter().map(|site| site.connection.id)),
        )
        .exec(txn)
        .await?;
    if flagged.rows_affected > 0 {
        tracing::warn!(
            grant.id = %grant.id,
            sites = flagged.rows_affected,
            "a new consent no longer lists some sites of its account; they need to be connected again"
        );
    }
    Ok(())
}

/// Deletes the company's grants that no connection points at any more (their sites moved to
/// another account's grant): unused tokens are not kept.
pub async fn delete_grants_without_sites(
    txn: &DatabaseTransaction,
    company_id: Uuid,
) -> ApiResult<()> {
    let grants: Vec<Uuid> = oauth_grant::Entity::find_for_company(company_id)
        .select_only()
        .column(oauth_grant::Column::Id)
        .into_tuple()
        .all(txn)
        .await?;
    if grants.is_empty() {
        return Ok(());
    }
    let used: Vec<Option<Uuid>> = plugin_connection::Entity::find_for_company(company_id)
        .select_only()
        .column(plugin_connection::Column::GrantId)
        .filter(plugin_connection::Column::GrantId.is_in(grants.clone()))
        .into_tuple()
        .all(txn)
        .await?;
    let unused: Vec<Uuid> = grants
        .into_iter()
        .filter(|grant| !used.contains(&Some(*grant)))
        .collect();
    if !unused.is_empty() {
        oauth_grant::Entity::delete_many()
            .filter(oauth_grant::Column::Id.is_in(unused))
            .exec(txn)
            .await?;
    }
    Ok(())
}
