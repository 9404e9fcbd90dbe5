//! `periodic_task`: work that one worker, of however many, does once per period (retention
//! pruning). A worker takes a run with a conditional UPDATE on the task's row; the others see
//! the row taken or not yet due and do nothing.

use sea_orm::entity::prelude::*;

/// Names of the periodic tasks (the primary key).
pub mod name {
    /// Deleting events, deliveries and attempts older than the retention period.
    pub const RETENTION: &str = "retention";
    /// Refreshing the dynamic Jira webhooks that expire within the renewal margin.
    pub const JIRA_WEBHOOK_RENEWAL: &str = "jira_webhook_renewal";
}

/// One periodic task and the state of its runs.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "periodic_task")]
pub struct Model {
    /// One of [`name`].
    #[sea_orm(primary_key, auto_increment = false)]
    pub name: String,
    /// When the next run is due.
    pub next_run_at: DateTimeUtc,
    /// While a worker runs the task: until when its claim holds (a crashed worker's claim
    /// expires and another worker takes the next run).
    pub locked_until: Option<DateTimeUtc>,
    /// When the last run started.
    pub last_started_at: Option<DateTimeUtc>,
    /// When the last run ended.
    pub last_finished_at: Option<DateTimeUtc>,
    /// Why the last run failed; `None` after a run that succeeded.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
}

/// A periodic task points at nothing.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
