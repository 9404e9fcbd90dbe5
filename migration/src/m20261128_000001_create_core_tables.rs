//! Creates every table of DESIGN §3: tenants and their API keys, plugin connections with their
//! OAuth credentials, received webhook events, subscriptions, and the deliveries to them.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Company::Table)
                    .col(pk_uuid(Company::Id))
                    .col(string(Company::Name))
                    .col(timestamp_with_time_zone(Company::CreatedAt))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKey::Table)
                    .col(pk_uuid(ApiKey::Id))
                    .col(uuid(ApiKey::CompanyId))
                    .col(string_uniq(ApiKey::KeyHash))
                    .col(string(ApiKey::KeyPrefix))
                    .col(timestamp_with_time_zone(ApiKey::CreatedAt))
                    .col(timestamp_with_time_zone_null(ApiKey::LastUsedAt))
                    .foreign_key(&mut cascade(
                        "fk_api_key_company",
                        (ApiKey::Table, ApiKey::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "idx_api_key_company",
            ApiKey::Table,
            [ApiKey::CompanyId],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(PluginConnection::Table)
                    .col(pk_uuid(PluginConnection::Id))
                    .col(uuid(PluginConnection::CompanyId))
                    .col(string(PluginConnection::PluginId))
                    .col(string(PluginConnection::ExternalId))
                    .col(string(PluginConnection::ExternalName))
                    .col(json_binary(PluginConnection::Metadata))
                    .col(text_null(PluginConnection::WebhookSecret))
                    .col(string(PluginConnection::Status))
                    .col(timestamp_with_time_zone(PluginConnection::CreatedAt))
                    .col(timestamp_with_time_zone(PluginConnection::UpdatedAt))
                    .foreign_key(&mut cascade(
                        "fk_plugin_connection_company",
                        (PluginConnection::Table, PluginConnection::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_unique_index(
            manager,
            "uq_plugin_connection_company_plugin_external",
            PluginConnection::Table,
            [
                PluginConnection::CompanyId,
                PluginConnection::PluginId,
                PluginConnection::ExternalId,
            ],
        )
        .await?;

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
                    .foreign_key(&mut cascade(
                        "fk_oauth_credential_plugin_connection",
                        (OauthCredential::Table, OauthCredential::ConnectionId),
                        (PluginConnection::Table, PluginConnection::Id),
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(OauthState::Table)
                    .col(string(OauthState::State).primary_key())
                    .col(uuid(OauthState::CompanyId))
                    .col(string(OauthState::PluginId))
                    .col(timestamp_with_time_zone(OauthState::ExpiresAt))
                    .col(timestamp_with_time_zone_null(OauthState::UsedAt))
                    .col(timestamp_with_time_zone(OauthState::CreatedAt))
                    .foreign_key(&mut cascade(
                        "fk_oauth_state_company",
                        (OauthState::Table, OauthState::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(WebhookEvent::Table)
                    .col(pk_uuid(WebhookEvent::Id))
                    .col(uuid(WebhookEvent::ConnectionId))
                    .col(uuid(WebhookEvent::CompanyId))
                    .col(string(WebhookEvent::PluginId))
                    .col(string(WebhookEvent::DeliveryKey))
                    .col(timestamp_with_time_zone(WebhookEvent::ReceivedAt))
                    .col(json_binary(WebhookEvent::Headers))
                    // `blob` is `bytea` on Postgres and `blob` on SQLite, neither with a length
                    // limit that matters for a 10 MiB body; `binary` would be `blob(1)` on SQLite.
                    .col(blob(WebhookEvent::Body))
                    .col(string(WebhookEvent::Status))
                    .col(integer(WebhookEvent::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(WebhookEvent::LockedUntil))
                    .col(string_null(WebhookEvent::EventType))
                    .col(json_binary_null(WebhookEvent::Data))
                    .col(text_null(WebhookEvent::Error))
                    .col(timestamp_with_time_zone_null(WebhookEvent::ProcessedAt))
                    .foreign_key(&mut cascade(
                        "fk_webhook_event_plugin_connection",
                        (WebhookEvent::Table, WebhookEvent::ConnectionId),
                        (PluginConnection::Table, PluginConnection::Id),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_webhook_event_company",
                        (WebhookEvent::Table, WebhookEvent::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_unique_index(
            manager,
            "uq_webhook_event_connection_delivery_key",
            WebhookEvent::Table,
            [WebhookEvent::ConnectionId, WebhookEvent::DeliveryKey],
        )
        .await?;
        create_index(
            manager,
            "idx_webhook_event_status_received_at",
            WebhookEvent::Table,
            [WebhookEvent::Status, WebhookEvent::ReceivedAt],
        )
        .await?;
        create_index(
            manager,
            "idx_webhook_event_company_received_at",
            WebhookEvent::Table,
            [WebhookEvent::CompanyId, WebhookEvent::ReceivedAt],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Subscription::Table)
                    .col(pk_uuid(Subscription::Id))
                    .col(uuid(Subscription::CompanyId))
                    .col(uuid_null(Subscription::ConnectionId))
                    .col(text_null(Subscription::Description))
                    .col(json_binary(Subscription::EventTypes))
                    .col(json_binary_null(Subscription::Filters))
                    .col(text(Subscription::TargetUrl))
                    .col(text(Subscription::Secret))
                    .col(boolean(Subscription::Enabled))
                    .col(text_null(Subscription::DisabledReason))
                    .col(timestamp_with_time_zone_null(Subscription::FailingSince))
                    .col(timestamp_with_time_zone(Subscription::CreatedAt))
                    .col(timestamp_with_time_zone(Subscription::UpdatedAt))
                    .foreign_key(&mut cascade(
                        "fk_subscription_company",
                        (Subscription::Table, Subscription::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_subscription_plugin_connection",
                        (Subscription::Table, Subscription::ConnectionId),
                        (PluginConnection::Table, PluginConnection::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "idx_subscription_company",
            Subscription::Table,
            [Subscription::CompanyId],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(Delivery::Table)
                    .col(pk_uuid(Delivery::Id))
                    .col(uuid(Delivery::EventId))
                    .col(uuid(Delivery::SubscriptionId))
                    .col(uuid(Delivery::CompanyId))
                    .col(string(Delivery::Status))
                    .col(integer(Delivery::Attempts).default(0))
                    .col(timestamp_with_time_zone_null(Delivery::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(Delivery::LockedUntil))
                    .col(integer_null(Delivery::LastStatus))
                    .col(text_null(Delivery::LastError))
                    .col(timestamp_with_time_zone(Delivery::CreatedAt))
                    .col(timestamp_with_time_zone(Delivery::UpdatedAt))
                    .col(timestamp_with_time_zone_null(Delivery::DeliveredAt))
                    .foreign_key(&mut cascade(
                        "fk_delivery_webhook_event",
                        (Delivery::Table, Delivery::EventId),
                        (WebhookEvent::Table, WebhookEvent::Id),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_delivery_subscription",
                        (Delivery::Table, Delivery::SubscriptionId),
                        (Subscription::Table, Subscription::Id),
                    ))
                    .foreign_key(&mut cascade(
                        "fk_delivery_company",
                        (Delivery::Table, Delivery::CompanyId),
                        (Company::Table, Company::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_unique_index(
            manager,
            "uq_delivery_event_subscription",
            Delivery::Table,
            [Delivery::EventId, Delivery::SubscriptionId],
        )
        .await?;
        create_index(
            manager,
            "idx_delivery_status_next_attempt_at",
            Delivery::Table,
            [Delivery::Status, Delivery::NextAttemptAt],
        )
        .await?;
        // Foreign keys are not indexed automatically; these keep the cascades from a deleted
        // subscription or company and the per-company listings off full scans.
        create_index(
            manager,
            "idx_delivery_subscription",
            Delivery::Table,
            [Delivery::SubscriptionId],
        )
        .await?;
        create_index(
            manager,
            "idx_delivery_company_created_at",
            Delivery::Table,
            [Delivery::CompanyId, Delivery::CreatedAt],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(DeliveryAttempt::Table)
                    .col(pk_uuid(DeliveryAttempt::Id))
                    .col(uuid(DeliveryAttempt::DeliveryId))
                    .col(integer(DeliveryAttempt::Attempt))
                    .col(timestamp_with_time_zone(DeliveryAttempt::StartedAt))
                    .col(big_integer(DeliveryAttempt::DurationMs))
                    .col(integer_null(DeliveryAttempt::StatusCode))
                    .col(text_null(DeliveryAttempt::Error))
                    .col(text_null(DeliveryAttempt::ResponseExcerpt))
                    .foreign_key(&mut cascade(
                        "fk_delivery_attempt_delivery",
                        (DeliveryAttempt::Table, DeliveryAttempt::DeliveryId),
                        (Delivery::Table, Delivery::Id),
                    ))
                    .to_owned(),
            )
            .await?;
        create_index(
            manager,
            "idx_delivery_attempt_delivery_attempt",
            DeliveryAttempt::Table,
            [DeliveryAttempt::DeliveryId, DeliveryAttempt::Attempt],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Children before parents, so no foreign key is left pointing at a dropped table.
        // Dropping a table drops its indexes too.
        let tables = [
            DeliveryAttempt::Table.into_iden(),
            Delivery::Table.into_iden(),
            Subscription::Table.into_iden(),
            WebhookEvent::Table.into_iden(),
            OauthState::Table.into_iden(),
            OauthCredential::Table.into_iden(),
            PluginConnection::Table.into_iden(),
            ApiKey::Table.into_iden(),
            Company::Table.into_iden(),
        ];
        for table in tables {
            manager
                .drop_table(Table::drop().table(table).to_owned())
                .await?;
        }
        Ok(())
    }
}

/// A foreign key `from` → `to` whose rows go away with the row they point at.
fn cascade<T: IntoIden, C: IntoIden, U: IntoIden, D: IntoIden>(
    name: &str,
    from: (T, C),
    to: (U, D),
) -> ForeignKeyCreateStatement {
    ForeignKey::create()
        .name(name)
        .from(from.0, from.1)
        .to(to.0, to.1)
        .on_delete(ForeignKeyAction::Cascade)
        .to_owned()
}

async fn create_index<T, C, const N: usize>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: [C; N],
) -> Result<(), DbErr>
where
    T: IntoIden,
    C: IntoIden,
{
    manager
        .create_index(index(name, table, columns).to_owned())
        .await
}

async fn create_unique_index<T, C, const N: usize>(
    manager: &SchemaManager<'_>,
    name: &str,
    table: T,
    columns: [C; N],
) -> Result<(), DbErr>
where
    T: IntoIden,
    C: IntoIden,
{
    manager
        .create_index(index(name, table, columns).unique().to_owned())
        .await
}

fn index<T, C, const N: usize>(name: &str, table: T, columns: [C; N]) -> IndexCreateStatement
where
    T: IntoIden,
    C: IntoIden,
{
    let mut index = Index::create();
    index.name(name).table(table.into_iden());
    for column in columns {
        index.col(column.into_iden());
    }
    index
}

#[derive(DeriveIden)]
enum Company {
    Table,
    Id,
    Name,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
    CompanyId,
    KeyHash,
    KeyPrefix,
    CreatedAt,
    LastUsedAt,
}

#[derive(DeriveIden)]
enum PluginConnection {
    Table,
    Id,
    CompanyId,
    PluginId,
    ExternalId,
    ExternalName,
    Metadata,
    WebhookSecret,
    Status,
    CreatedAt,
    UpdatedAt,
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

#[derive(DeriveIden)]
enum OauthState {
    Table,
    State,
    CompanyId,
    PluginId,
    ExpiresAt,
    UsedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum WebhookEvent {
    Table,
    Id,
    ConnectionId,
    CompanyId,
    PluginId,
    DeliveryKey,
    ReceivedAt,
    Headers,
    Body,
    Status,
    Attempts,
    LockedUntil,
    EventType,
    Data,
    Error,
    ProcessedAt,
}

#[derive(DeriveIden)]
enum Subscription {
    Table,
    Id,
    CompanyId,
    ConnectionId,
    Description,
    EventTypes,
    Filters,
    TargetUrl,
    Secret,
    Enabled,
    DisabledReason,
    FailingSince,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Delivery {
    Table,
    Id,
    EventId,
    SubscriptionId,
    CompanyId,
    Status,
    Attempts,
    NextAttemptAt,
    LockedUntil,
    LastStatus,
    LastError,
    CreatedAt,
    UpdatedAt,
    DeliveredAt,
}

#[derive(DeriveIden)]
enum DeliveryAttempt {
    Table,
    Id,
    DeliveryId,
    Attempt,
    StartedAt,
    DurationMs,
    StatusCode,
    Error,
    ResponseExcerpt,
}
