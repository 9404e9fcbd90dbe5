//! Creates `periodic_task` (work one worker does once per period, such as retention pruning)
//! and the index retention pruning reads old events by.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(PeriodicTask::Table)
                    .col(string(PeriodicTask::Name).primary_key())
                    .col(timestamp_with_time_zone(PeriodicTask::NextRunAt))
                    .col(timestamp_with_time_zone_null(PeriodicTask::LockedUntil))
                    .col(timestamp_with_time_zone_null(PeriodicTask::LastStartedAt))
                    .col(timestamp_with_time_zone_null(PeriodicTask::LastFinishedAt))
                    .col(text_null(PeriodicTask::LastError))
                    .to_owned(),
            )
            .await?;
        // Retention deletes by age whatever the status; `(status, received_at)` serves only
        // one status at a time.
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_event_received_at")
                    .table(WebhookEvent::Table)
                    .col(WebhookEvent::ReceivedAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_webhook_event_received_at")
                    .table(WebhookEvent::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .drop_table(Table::drop().table(PeriodicTask::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum PeriodicTask {
    Table,
    Name,
    NextRunAt,
    LockedUntil,
    LastStartedAt,
    LastFinishedAt,
    LastError,
}

#[derive(DeriveIden)]
enum WebhookEvent {
    Table,
    ReceivedAt,
}
