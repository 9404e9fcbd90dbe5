//! Creates `jira_webhook`: the dynamic webhooks hookline registered at Jira for a connection
//! (DESIGN §3), with what the renewal job needs: Jira's webhook id, the site and account the
//! registration counts against (Jira allows 5 per app per user per site), the expiry and the
//! last refresh's outcome.
//!
//! Rows go with their connection (`ON DELETE CASCADE`); the API deletes the webhooks at Jira
//! first, best effort.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(JiraWebhook::Table)
                    .col(uuid(JiraWebhook::Id).primary_key())
                    .col(uuid(JiraWebhook::ConnectionId))
                    .col(uuid(JiraWebhook::CompanyId))
                    .col(big_integer(JiraWebhook::WebhookId))
                    .col(string(JiraWebhook::CloudId))
                    .col(string_null(JiraWebhook::AccountId))
                    .col(json_binary(JiraWebhook::Events))
                    .col(text(JiraWebhook::JqlFilter))
                    .col(json_binary_null(JiraWebhook::FieldIdsFilter))
                    .col(string(JiraWebhook::Status))
                    .col(timestamp_with_time_zone(JiraWebhook::ExpiresAt))
                    .col(timestamp_with_time_zone_null(JiraWebhook::LastRefreshAt))
                    .col(string_null(JiraWebhook::LastRefreshOutcome))
                    .col(text_null(JiraWebhook::LastRefreshError))
                    .col(timestamp_with_time_zone(JiraWebhook::CreatedAt))
                    .col(timestamp_with_time_zone(JiraWebhook::UpdatedAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_jira_webhook_connection")
                            .from(JiraWebhook::Table, JiraWebhook::ConnectionId)
                            .to(PluginConnection::Table, PluginConnection::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_jira_webhook_company")
                            .from(JiraWebhook::Table, JiraWebhook::CompanyId)
                            .to(Company::Table, Company::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        // Jira's webhook ids are per site: unique together with the connection.
        manager
            .create_index(
                Index::create()
                    .name("idx_jira_webhook_connection_webhook")
                    .table(JiraWebhook::Table)
                    .col(JiraWebhook::ConnectionId)
                    .col(JiraWebhook::WebhookId)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // The renewal job reads registrations by expiry.
        manager
            .create_index(
                Index::create()
                    .name("idx_jira_webhook_expires_at")
                    .table(JiraWebhook::Table)
                    .col(JiraWebhook::ExpiresAt)
                    .to_owned(),
            )
            .await?;
        // Jira's limit is counted per site and account.
        manager
            .create_index(
                Index::create()
                    .name("idx_jira_webhook_cloud_account")
                    .table(JiraWebhook::Table)
                    .col(JiraWebhook::CloudId)
                    .col(JiraWebhook::AccountId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(JiraWebhook::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum JiraWebhook {
    Table,
    Id,
    ConnectionId,
    CompanyId,
    WebhookId,
    CloudId,
    AccountId,
    Events,
    JqlFilter,
    FieldIdsFilter,
    Status,
    ExpiresAt,
    LastRefreshAt,
    LastRefreshOutcome,
    LastRefreshError,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum PluginConnection {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Company {
    Table,
    Id,
}
