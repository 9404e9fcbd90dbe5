//! Adds `webhook_event.payload`: the envelope delivered to subscribers, built once when the
//! event is processed and stored as text without the raw body (which `body` already holds and
//! which is spliced in when it is sent). Events processed before this migration keep `data`.

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
                    .add_column(text_null(WebhookEvent::Payload))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(WebhookEvent::Table)
                    .drop_column(WebhookEvent::Payload)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum WebhookEvent {
    Table,
    Payload,
}
