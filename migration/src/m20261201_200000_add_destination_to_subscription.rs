//! Adds where a subscription delivers to beyond HTTP: `subscription.destination_kind` (`http`,
//! `redis_stream`, `amqp` or `nats`; every existing row is `http`) and
//! `subscription.destination`, the kind's settings as JSON encrypted with the application's
//! cipher (broker URLs carry credentials). An `http` subscription keeps using `target_url` and
//! leaves `destination` empty; a broker subscription's `target_url` holds its broker URL with
//! the credentials redacted, for display.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // One column per statement: SQLite alters one column at a time.
        manager
            .alter_table(
                Table::alter()
                    .table(Subscription::Table)
                    .add_column(text(Subscription::DestinationKind).default("http"))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Subscription::Table)
                    .add_column(text_null(Subscription::Destination))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(Subscription::Table)
                    .drop_column(Subscription::Destination)
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Subscription::Table)
                    .drop_column(Subscription::DestinationKind)
                    .to_owned(),
            )
            .await
    }
}

#[derive(DeriveIden)]
enum Subscription {
    Table,
    DestinationKind,
    Destination,
}
