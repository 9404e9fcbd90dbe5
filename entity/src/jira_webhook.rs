//! `jira_webhook`: a dynamic webhook hookline registered at Jira for a connection (DESIGN §3).
//!
//! Jira's webhook ids are per site, so a row is always found together with its connection.
//! Jira expires a dynamic webhook 30 days after its registration or last refresh; the renewal
//! job refreshes it well before and records the outcome here.

use sea_orm::entity::prelude::*;

/// Values of [`Model::status`].
pub mod status {
    /// Registered at Jira and renewed in time (or not due yet).
    pub const ACTIVE: &str = "active";
    /// The last renewal could not be done for good (the grant was revoked, the webhook is gone
    /// at Jira): a person has to act (connect the site again, register again).
    pub const RENEWAL_FAILED: &str = "renewal_failed";
}

/// Values of [`Model::last_refresh_outcome`].
pub mod outcome {
    /// Jira extended the expiry.
    pub const OK: &str = "ok";
    /// The refresh failed; it is tried again on the next run unless the status says it is
    /// for good.
    pub const FAILED: &str = "failed";
}

/// A dynamic webhook registered at Jira.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "jira_webhook")]
pub struct Model {
    /// The registration's id in hookline.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The connection (site) it was registered for; its webhook URL is the target.
    pub connection_id: Uuid,
    /// The owning company (tenant filter).
    pub company_id: Uuid,
    /// Jira's id of the webhook (`createdWebhookId`), unique per site; deliveries name it in
    /// `matchedWebhookIds`.
    pub webhook_id: i64,
    /// The site's cloud id, as registered.
    pub cloud_id: String,
    /// The Atlassian account whose grant registered it (Jira's limit is per app, user and
    /// site); `None` when the grant did not record its account.
    pub account_id: Option<String>,
    /// The registered event names, a JSON array of strings.
    #[sea_orm(column_type = "JsonBinary")]
    pub events: Json,
    /// The registered JQL filter.
    #[sea_orm(column_type = "Text")]
    pub jql_filter: String,
    /// The registered field ids filter (`jira:issue_updated` only), a JSON array; `None` if
    /// none.
    #[sea_orm(column_type = "JsonBinary", nullable)]
    pub field_ids_filter: Option<Json>,
    /// One of [`status`].
    pub status: String,
    /// When Jira expires the webhook unless it is refreshed.
    pub expires_at: DateTimeUtc,
    /// When the renewal job last tried to refresh it.
    pub last_refresh_at: Option<DateTimeUtc>,
    /// One of [`outcome`]; `None` before the first refresh.
    pub last_refresh_outcome: Option<String>,
    /// Why the last refresh failed; `None` after a successful one.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_refresh_error: Option<String>,
    /// When it was registered.
    pub created_at: DateTimeUtc,
    /// When the row last changed.
    pub updated_at: DateTimeUtc,
}

/// Tables a registration points at.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The connection it was registered for.
    #[sea_orm(
        belongs_to = "super::plugin_connection::Entity",
        from = "Column::ConnectionId",
        to = "super::plugin_connection::Column::Id",
        on_delete = "Cascade"
    )]
    PluginConnection,
    /// The owning company.
    #[sea_orm(
        belongs_to = "super::company::Entity",
        from = "Column::CompanyId",
        to = "super::company::Column::Id",
        on_delete = "Cascade"
    )]
    Company,
}

impl Related<super::plugin_connection::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PluginConnection.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}

impl Entity {
    /// All registrations of `company_id`.
    pub fn find_for_company(company_id: Uuid) -> Select<Entity> {
        Entity::find().filter(Column::CompanyId.eq(company_id))
    }

    /// The registrations of connection `connection_id`, only if it belongs to `company_id`.
    pub fn find_for_connection(company_id: Uuid, connection_id: Uuid) -> Select<Entity> {
        Entity::find_for_company(company_id).filter(Column::ConnectionId.eq(connection_id))
    }
}
