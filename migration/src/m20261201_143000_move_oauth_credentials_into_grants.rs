//! One Atlassian consent is one grant (DESIGN §3): creates `oauth_grant`, points every OAuth
//! connection at its grant (`plugin_connection.grant_id`), moves the per-connection
//! `oauth_credential` rows into grants and drops that table. Also adds
//! `plugin_connection.status_reason` (why a person has to act on a connection) and
//! `oauth_state.browser_key_hash` (the connect flow is bound to the browser that started it).
//!
//! **Which credentials become one grant.** Earlier versions copied one consent's token pair into
//! the row of each site it listed; those rows share a refresh token and become one grant. The
//! tokens are encrypted with a random nonce per value, so equal tokens have different
//! ciphertexts and the migration (which has no key) cannot compare them. It compares what the
//! callback wrote identically into every row of one consent instead: the company, the
//! `expires_at` instant (computed once per token answer, to the microsecond) and the scope.
//! A refresh of one row changed its `expires_at` together with its refresh token, so rows
//! still equal on these are exactly the rows still sharing a refresh token.
//!
//! `grant_id` has no foreign key: SQLite can neither add one to an existing table nor drop a
//! column that has one, and this migration must go down on SQLite too. The application keeps
//! it consistent (a grant is deleted only with, or after, the connections pointing at it).

use std::collections::BTreeMap;

use sea_orm_migration::sea_orm::{ConnectionTrait, DbErr, QueryResult};
use sea_orm_migration::{prelude::*, schema::*};
use uuid::Uuid;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(OauthGrant::Table)
                    .col(pk_uuid(OauthGrant::Id))
                    .col(uuid(OauthGrant::CompanyId))
                    .col(string(OauthGrant::PluginId))
                    .col(text_null(OauthGrant::AccountId))
                    .col(text(OauthGrant::AccessToken))
                    .col(text(OauthGrant::RefreshToken))
                    .col(timestamp_with_time_zone(OauthGrant::ExpiresAt))
                    .col(text(OauthGrant::Scope))
                    .col(big_integer(OauthGrant::TokenVersion).default(0))
                    .col(string(OauthGrant::Status))
                    .col(uuid_null(OauthGrant::RefreshLeaseId))
                    .col(timestamp_with_time_zone_null(OauthGrant::RefreshLeaseUntil))
                    .col(timestamp_with_time_zone_null(
                        OauthGrant::RefreshTokenUsedAt,
                    ))
                    .col(timestamp_with_time_zone_null(OauthGrant::RefreshedAt))
                    .col(text_null(OauthGrant::LastError))
                    .col(timestamp_with_time_zone(OauthGrant::CreatedAt))
                    .col(timestamp_with_time_zone(OauthGrant::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_oauth_grant_company")
                            .from(OauthGrant::Table, OauthGrant::CompanyId)
                            .to(Company::Table, Company::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_oauth_grant_company_account")
                    .table(OauthGrant::Table)
                    .col(OauthGrant::CompanyId)
                    .col(OauthGrant::AccountId)
                    .to_owned(),
            )
            .await?;
        // SQLite alters one column per statement.
        for column in [
            uuid_null(PluginConnection::GrantId),
            text_null(PluginConnection::StatusReason),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(PluginConnection::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .name("idx_plugin_connection_grant")
                    .table(PluginConnection::Table)
                    .col(PluginConnection::GrantId)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(OauthState::Table)
                    .add_column(string_null(OauthState::BrowserKeyHash))
                    .to_owned(),
            )
            .await?;

        move_credentials_into_grants(manager).await?;

        manager
            .drop_table(Table::drop().table(OauthCredential::Table).to_owned())
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // The table of the first migration, as it was.
        manager
            .create_table(
                Table::create()
                    .table(OauthCredential::Table)
                    .col(pk_uuid(OauthCredential::ConnectionId))
                    .col(text(OauthCredential::AccessToken))
                    .col(text(OauthCredential::RefreshToken))
                    .col(timestamp_with_time_zone(OauthCredential::ExpiresAt))
                    .col(text(OauthCredential::Scope))
                    .col(big_integer(OauthCredential::TokenVersion).default(0))
                    .col(timestamp_with_time_zone_null(OauthCredential::RefreshedAt))
                    .col(text_null(OauthCredential::LastError))
                    .col(timestamp_with_time_zone(OauthCredential::CreatedAt))
                    .col(timestamp_with_time_zone(OauthCredential::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_oauth_credential_plugin_connection")
                            .from(OauthCredential::Table, OauthCredential::ConnectionId)
                            .to(PluginConnection::Table, PluginConnection::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;

        copy_grants_into_credentials(manager).await?;

        manager
            .alter_table(
                Table::alter()
                    .table(OauthState::Table)
                    .drop_column(OauthState::BrowserKeyHash)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .name("idx_plugin_connection_grant")
                    .table(PluginConnection::Table)
                    .to_owned(),
            )
            .await?;
        for column in [PluginConnection::StatusReason, PluginConnection::GrantId] {
            manager
                .alter_table(
                    Table::alter()
                        .table(PluginConnection::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .drop_table(Table::drop().table(OauthGrant::Table).to_owned())
            .await
    }
}

/// One credential row as the earlier versions stored it, with its connection's company.
struct Credential {
    connection_id: Uuid,
    company_id: Uuid,
    plugin_id: String,
    connection_status: String,
    access_token: String,
    refresh_token: String,
    expires_at: DateTimeUtc,
    scope: String,
    token_version: i64,
    refreshed_at: Option<DateTimeUtc>,
    last_error: Option<String>,
    created_at: DateTimeUtc,
    updated_at: DateTimeUtc,
}

type DateTimeUtc = sea_orm_migration::sea_orm::prelude::DateTimeUtc;

impl Credential {
    fn from_row(row: &QueryResult) -> Result<Self, DbErr> {
        Ok(Self {
            connection_id: row.try_get("", "connection_id")?,
            company_id: row.try_get("", "company_id")?,
            plugin_id: row.try_get("", "plugin_id")?,
            connection_status: row.try_get("", "status")?,
            access_token: row.try_get("", "access_token")?,
            refresh_token: row.try_get("", "refresh_token")?,
            expires_at: row.try_get("", "expires_at")?,
            scope: row.try_get("", "scope")?,
            token_version: row.try_get("", "token_version")?,
            refreshed_at: row.try_get("", "refreshed_at")?,
            last_error: row.try_get("", "last_error")?,
            created_at: row.try_get("", "created_at")?,
            updated_at: row.try_get("", "updated_at")?,
        })
    }
}

async fn move_credentials_into_grants(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let select = Query::select()
        .column((OauthCredential::Table, OauthCredential::ConnectionId))
        .column((PluginConnection::Table, PluginConnection::CompanyId))
        .column((PluginConnection::Table, PluginConnection::PluginId))
        .column((PluginConnection::Table, PluginConnection::Status))
        .columns([
            (OauthCredential::Table, OauthCredential::AccessToken),
            (OauthCredential::Table, OauthCredential::RefreshToken),
            (OauthCredential::Table, OauthCredential::ExpiresAt),
            (OauthCredential::Table, OauthCredential::Scope),
            (OauthCredential::Table, OauthCredential::TokenVersion),
            (OauthCredential::Table, OauthCredential::RefreshedAt),
            (OauthCredential::Table, OauthCredential::LastError),
            (OauthCredential::Table, OauthCredential::CreatedAt),
            (OauthCredential::Table, OauthCredential::UpdatedAt),
        ])
        .from(OauthCredential::Table)
        .inner_join(
            PluginConnection::Table,
            Expr::col((PluginConnection::Table, PluginConnection::Id))
                .equals((OauthCredential::Table, OauthCredential::ConnectionId)),
        )
        .order_by(
            (OauthCredential::Table, OauthCredential::ConnectionId),
            Order::Asc,
        )
        .to_owned();
    let mut consents: BTreeMap<(Uuid, String, String, String), Vec<Credential>> = BTreeMap::new();
    for row in db.query_all(&select).await? {
        let credential = Credential::from_row(&row)?;
        let key = (
            credential.company_id,
            credential.plugin_id.clone(),
            credential.expires_at.to_rfc3339(),
            credential.scope.clone(),
        );
        consents.entry(key).or_default().push(credential);
    }

    for credentials in consents.into_values() {
        // Equal tokens in every row of a consent; the newest row carries the latest version.
        let Some(newest) = credentials.iter().max_by_key(|c| c.token_version) else {
            continue;
        };
        // A grant is dead only if every site of it was found dead.
        let status = if credentials
            .iter()
            .all(|c| c.connection_status == "reauth_required")
        {
            "reauth_required"
        } else {
            "active"
        };
        let grant_id = Uuid::now_v7();
        let created_at = credentials.iter().map(|c| c.created_at).min();
        let updated_at = credentials.iter().map(|c| c.updated_at).max();
        let refreshed_at = credentials.iter().filter_map(|c| c.refreshed_at).max();
        let insert = Query::insert()
            .into_table(OauthGrant::Table)
            .columns([
                OauthGrant::Id,
                OauthGrant::CompanyId,
                OauthGrant::PluginId,
                OauthGrant::AccessToken,
                OauthGrant::RefreshToken,
                OauthGrant::ExpiresAt,
                OauthGrant::Scope,
                OauthGrant::TokenVersion,
                OauthGrant::Status,
                OauthGrant::RefreshedAt,
                OauthGrant::LastError,
                OauthGrant::CreatedAt,
                OauthGrant::UpdatedAt,
            ])
            .values_panic([
                grant_id.into(),
                newest.company_id.into(),
                newest.plugin_id.clone().into(),
                newest.access_token.clone().into(),
                newest.refresh_token.clone().into(),
                newest.expires_at.into(),
                newest.scope.clone().into(),
                newest.token_version.into(),
                status.into(),
                refreshed_at.into(),
                newest.last_error.clone().into(),
                created_at.unwrap_or(newest.created_at).into(),
                updated_at.unwrap_or(newest.updated_at).into(),
            ])
            .to_owned();
        db.execute(&insert).await?;
        let point = Query::update()
            .table(PluginConnection::Table)
            .value(PluginConnection::GrantId, grant_id)
            .and_where(
                Expr::col(PluginConnection::Id).is_in(credentials.iter().map(|c| c.connection_id)),
            )
            .to_owned();
        db.execute(&point).await?;
    }
    Ok(())
}

/// Down: every connection of a grant gets its own copy of the grant's tokens again.
async fn copy_grants_into_credentials(manager: &SchemaManager<'_>) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let select = Query::select()
        .expr_as(
            Expr::col((PluginConnection::Table, PluginConnection::Id)),
            "connection_id",
        )
        .columns([
            (OauthGrant::Table, OauthGrant::AccessToken),
            (OauthGrant::Table, OauthGrant::RefreshToken),
            (OauthGrant::Table, OauthGrant::ExpiresAt),
            (OauthGrant::Table, OauthGrant::Scope),
            (OauthGrant::Table, OauthGrant::TokenVersion),
            (OauthGrant::Table, OauthGrant::RefreshedAt),
            (OauthGrant::Table, OauthGrant::LastError),
            (OauthGrant::Table, OauthGrant::CreatedAt),
            (OauthGrant::Table, OauthGrant::UpdatedAt),
        ])
        .from(PluginConnection::Table)
        .inner_join(
            OauthGrant::Table,
            Expr::col((OauthGrant::Table, OauthGrant::Id))
                .equals((PluginConnection::Table, PluginConnection::GrantId)),
        )
        .to_owned();
    for row in db.query_all(&select).await? {
        let insert = Query::insert()
            .into_table(OauthCredential::Table)
            .columns([
                OauthCredential::ConnectionId,
                OauthCredential::AccessToken,
                OauthCredential::RefreshToken,
                OauthCredential::ExpiresAt,
                OauthCredential::Scope,
                OauthCredential::TokenVersion,
                OauthCredential::RefreshedAt,
                OauthCredential::LastError,
                OauthCredential::CreatedAt,
                OauthCredential::UpdatedAt,
            ])
            .values_panic([
                row.try_get::<Uuid>("", "connection_id")?.into(),
                row.try_get::<String>("", "access_token")?.into(),
                row.try_get::<String>("", "refresh_token")?.into(),
                row.try_get::<DateTimeUtc>("", "expires_at")?.into(),
                row.try_get::<String>("", "scope")?.into(),
                row.try_get::<i64>("", "token_version")?.into(),
                row.try_get::<Option<DateTimeUtc>>("", "refreshed_at")?
                    .into(),
                row.try_get::<Option<String>>("", "last_error")?.into(),
                row.try_get::<DateTimeUtc>("", "created_at")?.into(),
                row.try_get::<DateTimeUtc>("", "updated_at")?.into(),
            ])
            .to_owned();
        db.execute(&insert).await?;
    }
    Ok(())
}

#[derive(DeriveIden)]
enum Company {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum OauthGrant {
    Table,
    Id,
    CompanyId,
    PluginId,
    AccountId,
    AccessToken,
    RefreshToken,
    ExpiresAt,
    Scope,
    TokenVersion,
    Status,
    RefreshLeaseId,
    RefreshLeaseUntil,
    RefreshTokenUsedAt,
    RefreshedAt,
    LastError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PluginConnection {
    Table,
    Id,
    CompanyId,
    PluginId,
    Status,
    GrantId,
    StatusReason,
}

#[derive(DeriveIden)]
enum OauthState {
    Table,
    BrowserKeyHash,
}

#[derive(DeriveIden)]
enum OauthCredential {
    Table,
    ConnectionId,
    AccessToken,
    RefreshToken,
    ExpiresAt,
    Scope,
    TokenVersion,
    RefreshedAt,
    LastError,
    CreatedAt,
    UpdatedAt,
}
