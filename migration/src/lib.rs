//! hookline's database schema as sea-orm migrations (DESIGN §3).
//!
//! Each migration lives in its own `mYYYYMMDD_HHMMSS_<verb>_<object>.rs` file, has a `down`,
//! and is never edited once merged: schema changes are new migrations appended to
//! [`Migrator::migrations`].
//!
//! The crate is a library only. The SeaORM template also ships a bin wrapping
//! `sea_orm_migration::cli`, but that needs the `cli` feature (clap, dotenvy, tracing-subscriber),
//! which the workspace keeps off; the product binary runs migrations instead
//! (`hookline migrate`, and at start-up), through `Migrator::up(&db, None)`.
//!
//! Every migration must run on both Postgres and SQLite, so only portable schema helpers are
//! used: foreign keys are declared inside `CREATE TABLE` (SQLite cannot add them later) and
//! unique constraints are unique indexes.

pub use sea_orm_migration::prelude::*;

mod m20261128_000001_create_core_tables;
mod m20261128_000002_add_replay_of_to_webhook_event;
mod m20261201_100000_create_periodic_task;
mod m20261201_120000_create_console_session;
mod m20261201_143000_move_oauth_credentials_into_grants;
mod m20261201_170000_add_payload_to_webhook_event;
mod m20261201_180000_create_jira_webhook;
mod m20261201_200000_add_destination_to_subscription;
mod m20261202_010000_narrow_pipeline_indexes;
mod m20261203_100000_hot_event_claims;
mod m20261203_200000_hot_delivery_claims;

/// The ordered list of hookline's migrations; run it with `Migrator::up(&db, None)`.
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_create_core_tables::Migration),
            Box::new(m20261128_000002_add_replay_of_to_webhook_event::Migration),
            Box::new(m20261201_100000_create_periodic_task::Migration),
            Box::new(m20261201_120000_create_console_session::Migration),
            Box::new(m20261201_143000_move_oauth_credentials_into_grants::Migration),
            Box::new(m20261201_170000_add_payload_to_webhook_event::Migration),
            Box::new(m20261201_180000_create_jira_webhook::Migration),
            Box::new(m20261201_200000_add_destination_to_subscription::Migration),
            Box::new(m20261202_010000_narrow_pipeline_indexes::Migration),
            Box::new(m20261203_100000_hot_event_claims::Migration),
            Box::new(m20261203_200000_hot_delivery_claims::Migration),
        ]
    }
}
