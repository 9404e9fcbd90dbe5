//! `oauth_credential`: the OAuth tokens of a plugin connection, encrypted at rest.

use sea_orm::entity::prelude::*;

/// The OAuth tokens of one connection.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "oauth_credential")]
pub struct Model {
    /// The connection the tokens belong to; one credential per connection.
    #[sea_orm(primary_key, auto_increment = false)]
    pub connection_id: Uuid,
    /// Access token, encrypted (ciphertext).
    #[sea_orm(column_type = "Text")]
    pub access_token: String,
    /// Refresh token, encrypted (ciphertext).
    #[sea_orm(column_type = "Text")]
    pub refresh_token: String,
    /// When the access token expires.
    pub expires_at: DateTimeUtc,
    /// Scopes granted, space-separated as the provider returned them.
    #[sea_orm(column_type = "Text")]
    pub scope: String,
    /// Incremented on every refresh, so concurrent refreshers can tell whether someone else
    /// already refreshed (compare-and-set on this column).
    pub token_version: i64,
    /// When the tokens were last refreshed, if ever.
    pub refreshed_at: Option<DateTimeUtc>,
    /// Why the last refresh failed; `None` after a successful one.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// When the credential was first stored.
    pub created_at: DateTimeUtc,
    /// When the credential was last changed.
    pub updated_at: DateTimeUtc,
}

/// Tables a credential points at.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// The connection the tokens belong to.
    #[sea_orm(
        belongs_to = "super::plugin_connection::Entity",
        from = "Column::ConnectionId",
        to = "super::plugin_connection::Column::Id",
        on_delete = "Cascade"
    )]
    PluginConnection,
}

impl Related<super::plugin_connection::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::PluginConnection.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
