//! Adds `webhook_event.replay_of`: a replay is recorded as a new event pointing at the original,
//! so the original's processing result and deliveries are never overwritten.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEvent::Table)
                    .add_column(uuid_null(WebhookEvent::ReplayOf))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_webhook_event_replay_of")
                    .table(WebhookEvent::Table)
                    .col(WebhookEvent::ReplayOf)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_webhook_event_replay_of")
                    .table(WebhookEvent::Table)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEvent::Table)
                    .drop_column(WebhookEvent::ReplayOf)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookEvent {
    Table,
    ReplayOf,
}
