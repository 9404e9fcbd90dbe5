//! Makes the claim of an event a HOT update on Postgres (issue 18).
//!
//! An update is HOT (heap-only: the new row version goes on the same page, and no index gets an
//! entry for it) when it changes no column that an index names, in its key or in its `WHERE`,
//! and the page has room. The claim (`ProcessEvents`) and the sweeper's release change
//! `status`, `locked_until` and `attempts`; the waiting rows' partial index named `status`, so
//! every claim added an entry to each of the table's five indexes. This migration:
//!
//! - replaces `idx_webhook_event_waiting_received_at` (`(status, received_at) WHERE status IN
//!   ('received', 'processing')`) by `idx_webhook_event_unfinished_received_at`
//!   (`(received_at) WHERE processed_at IS NULL`): the same rows, because an event's
//!   `processed_at` is set exactly when it leaves `received`/`processing` (the result update
//!   writes both), and no path sets it back;
//! - sets `fillfactor = 50`, so a page filled by ingest keeps room for its rows' claimed
//!   versions (rows are small: the body and payload live in TOAST).
//!
//! Measured in isolation (BENCHMARKS.md, "Session 10"): a claim then costs about a third of the
//! time and WAL. The result update stays non-HOT (it sets `processed_at`), as it must to leave
//! the partial index. Postgres only: SQLite has no HOT, and keeps its `(status, received_at)`
//! index, which its planner needs.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in [
            "CREATE INDEX idx_webhook_event_unfinished_received_at ON webhook_event (received_at) \
             WHERE processed_at IS NULL",
            "DROP INDEX idx_webhook_event_waiting_received_at",
            "ALTER TABLE webhook_event SET (fillfactor = 50)",
        ] {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        for statement in [
            "CREATE INDEX idx_webhook_event_waiting_received_at ON webhook_event \
             (status, received_at) WHERE status IN ('received', 'processing')",
            "DROP INDEX idx_webhook_event_unfinished_received_at",
            "ALTER TABLE webhook_event RESET (fillfactor)",
        ] {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
