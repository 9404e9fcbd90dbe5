//! Cheaper writes on the pipeline's two hot tables (issue 18). Each event row is written three
//! times (ingest, claim, result) and each delivery three times (insert, claim, result); no update
//! can be HOT while `status` is indexed, so every version adds an entry to every index. This
//! migration keeps only the entries someone reads:
//!
//! - `webhook_event (status, received_at)` becomes a partial index of the waiting rows
//!   (`received`, `processing`): the sweeper and the backlog gauge read only those, and a
//!   processed event no longer adds an entry. `(replay_of)` becomes partial too: almost every
//!   event is no replay, and a NULL entry was added on every write.
//! - `delivery (status, next_attempt_at)` keeps the rows the retry poller, the sweeper and the
//!   dead-letter gauge read (`pending`, `in_flight`, `dead`), not the succeeded ones.
//! - On Postgres, `webhook_event`'s `toast_tuple_target` drops to its minimum (128 bytes), so
//!   the raw body (7 KB of Jira JSON compresses to ~1.8 KB, under the default 2 KB target, and
//!   so stayed inline) moves out of line at ingest: the claim and the result update then copy
//!   an 18-byte pointer into each new row version instead of the compressed body.
//! - On Postgres with LZ4 (14 and later, built `--with-lz4` as Debian's, the official images'
//!   and the managed services' are), `body` and `payload` are compressed with LZ4 instead of
//!   pglz: pglz took ~95 µs per 7 KB Jira payload, LZ4 ~25 µs, at 2.1 KB instead of 1.8 KB.
//!   Both are written once per event (the body at ingest, the payload when processed), so
//!   this is ~0.14 ms of Postgres CPU per event. Values already stored keep their method.
//!
//! The status indexes become partial on Postgres only. The queries that read them name the
//! statuses as literals (`worker::sql::status_is`), and Postgres proves `status = 'received'`
//! implies `status IN ('received', 'processing')`; SQLite's planner proves no such thing and
//! would scan the table instead, and the embedded mode's writes matter less. The `replay_of`
//! index is partial on both (`replay_of = ?` implies `replay_of IS NOT NULL` on both).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

/// An index replaced by a partial one on the same columns, with only the rows `kept`. The new
/// index has a name of its own and is created before the old one is dropped (SQLite refuses a
/// name just dropped on another of the pool's connections).
struct Swap {
    name: &'static str,
    partial: &'static str,
    table: &'static str,
    columns: &'static str,
    kept: &'static str,
    /// Made partial on Postgres only (see the module docs).
    postgres_only: bool,
}

const SWAPS: &[Swap] = &[
    Swap {
        name: "idx_webhook_event_status_received_at",
        partial: "idx_webhook_event_waiting_received_at",
        table: "webhook_event",
        columns: "status, received_at",
        kept: "status IN ('received', 'processing')",
        postgres_only: true,
    },
    Swap {
        name: "idx_webhook_event_replay_of",
        partial: "idx_webhook_event_replays",
        table: "webhook_event",
        columns: "replay_of",
        kept: "replay_of IS NOT NULL",
        postgres_only: false,
    },
    Swap {
        name: "idx_delivery_status_next_attempt_at",
        partial: "idx_delivery_open_next_attempt_at",
        table: "delivery",
        columns: "status, next_attempt_at",
        kept: "status IN ('pending', 'in_flight', 'dead')",
        postgres_only: true,
    },
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
        for swap in SWAPS.iter().filter(|swap| postgres || !swap.postgres_only) {
            db.execute_unprepared(&format!(
                "CREATE INDEX {} ON {} ({}) WHERE {}",
                swap.partial, swap.table, swap.columns, swap.kept
            ))
            .await?;
            db.execute_unprepared(&format!("DROP INDEX {}", swap.name))
                .await?;
        }
        if postgres {
            db.execute_unprepared("ALTER TABLE webhook_event SET (toast_tuple_target = 128)")
                .await?;
            set_body_compression(manager, "lz4").await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let postgres = manager.get_database_backend() == sea_orm::DatabaseBackend::Postgres;
        if postgres {
            db.execute_unprepared("ALTER TABLE webhook_event RESET (toast_tuple_target)")
                .await?;
            set_body_compression(manager, "default").await?;
        }
        for swap in SWAPS.iter().filter(|swap| postgres || !swap.postgres_only) {
            db.execute_unprepared(&format!(
                "CREATE INDEX {} ON {} ({})",
                swap.name, swap.table, swap.columns
            ))
            .await?;
            db.execute_unprepared(&format!("DROP INDEX {}", swap.partial))
                .await?;
        }
        Ok(())
    }
}

/// Compresses `webhook_event.body` and `payload` with `method` from now on (`lz4`, or
/// `default` for the server's default), where this Postgres server can compress with LZ4 (14 and
/// later, built with it); otherwise leaves them as they are.
async fn set_body_compression(manager: &SchemaManager<'_>, method: &str) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let row = db
        .query_one_raw(sea_orm::Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) AS n FROM pg_settings \
             WHERE name = 'default_toast_compression' AND 'lz4' = ANY(enumvals)",
        ))
        .await?;
    let lz4 = match row {
        Some(row) => row.try_get::<i64>("", "n")? > 0,
        None => false,
    };
    if lz4 {
        db.execute_unprepared(&format!(
            "ALTER TABLE webhook_event ALTER COLUMN body SET COMPRESSION {method}, \
             ALTER COLUMN payload SET COMPRESSION {method}"
        ))
        .await?;
    }
    Ok(())
}
