//! Makes the claim of a delivery a HOT update on Postgres (issue 18), as
//! `m20261203_100000_hot_event_claims` did for events.
//!
//! `Deliver`'s claim changes `status`, `locked_until`, `attempts` and `updated_at`. The open
//! deliveries' partial index (`(status, next_attempt_at) WHERE status IN ('pending',
//! 'in_flight', 'dead')`) named `status`, so every claim added an entry to each of the table's
//! five indexes. This migration:
//!
//! - replaces `idx_delivery_open_next_attempt_at` by `idx_delivery_undelivered_next_attempt_at`
//!   (`(next_attempt_at) WHERE delivered_at IS NULL`): the same rows, because a delivery's
//!   `delivered_at` is set exactly when it is `succeeded` (the result update writes both; a
//!   retry through the API clears it). Its readers (the sweeper, the backlog and dead-letter
//!   gauges, retention) name `delivered_at IS NULL` so that Postgres picks it. Dead deliveries
//!   have no `next_attempt_at`; every other undelivered one has one (insert, retry and
//!   reschedule all set it), so the dead-letter gauge reads the index's NULL entries;
//! - clears `delivered_at` where a delivery is not `succeeded` (a succeeded delivery retried
//!   through the API before this migration kept it), and `next_attempt_at` where it is
//!   `succeeded` or `dead`, so that the invariants hold for old rows too;
//! - sets `fillfactor = 50`, so a page filled by inserts keeps room for its rows' claimed
//!   versions.
//!
//! The result update stays non-HOT when it must leave or move in the index (a success sets
//! `delivered_at`, a retry moves `next_attempt_at`). Postgres only: SQLite has no HOT and keeps
//! its `(status, next_attempt_at)` index, which its planner needs.

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
            "UPDATE delivery SET delivered_at = NULL \
             WHERE status <> 'succeeded' AND delivered_at IS NOT NULL",
            "UPDATE delivery SET next_attempt_at = NULL \
             WHERE status IN ('succeeded', 'dead') AND next_attempt_at IS NOT NULL",
            "CREATE INDEX idx_delivery_undelivered_next_attempt_at ON delivery (next_attempt_at) \
             WHERE delivered_at IS NULL",
            "DROP INDEX idx_delivery_open_next_attempt_at",
            "ALTER TABLE delivery SET (fillfactor = 50)",
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
            "CREATE INDEX idx_delivery_open_next_attempt_at ON delivery \
             (status, next_attempt_at) WHERE status IN ('pending', 'in_flight', 'dead')",
            "DROP INDEX idx_delivery_undelivered_next_attempt_at",
            "ALTER TABLE delivery RESET (fillfactor)",
        ] {
            db.execute_unprepared(statement).await?;
        }
        Ok(())
    }
}
