//! Creates `console_session`: the console's signed-in browsers (DESIGN §5 "Console").
//!
//! The cookie holds a random token; the table holds only its SHA-256, so a copy of the database
//! signs nobody in. A row is a company's session (`company_id` set) or the admin's (`company_id`
//! null); signing out deletes it.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(ConsoleSession::Table)
                    .col(string(ConsoleSession::TokenHash).primary_key())
                    .col(uuid_null(ConsoleSession::CompanyId))
                    .col(string(ConsoleSession::CsrfToken))
                    .col(timestamp_with_time_zone(ConsoleSession::CreatedAt))
                    .col(timestamp_with_time_zone(ConsoleSession::ExpiresAt))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_console_session_company")
                            .from(ConsoleSession::Table, ConsoleSession::CompanyId)
                            .to(Company::Table, Company::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_console_session_expires_at")
                    .table(ConsoleSession::Table)
                    .col(ConsoleSession::ExpiresAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(Table::drop().table(ConsoleSession::Table).to_owned())
            .await
    }
}

#[derive(DeriveIden)]
enum ConsoleSession {
    Table,
    TokenHash,
    CompanyId,
    CsrfToken,
    CreatedAt,
    ExpiresAt,
}

#[derive(DeriveIden)]
enum Company {
    Table,
    Id,
}
