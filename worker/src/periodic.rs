//! Runs of periodic tasks (`periodic_task`): work that one worker does once per period however
//! many workers there are. Every worker asks [`claim`] on its own timer; the conditional
//! UPDATE lets exactly one of them through per period, and a worker that dies mid-run loses its
//! claim after `hold`, so another one takes the next run.

use std::time::Duration;

use anyhow::Context as _;
use chrono::Utc;
use entity::periodic_task;
use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter,
};

/// A claimed run; [`Run::finish`] records its outcome.
#[derive(Debug)]
pub struct Run {
    name: &'static str,
}

/// Takes the run of task `name` that is due now, if no other worker has it. The next run is
/// due `period` after this one started; the claim holds for `hold`.
pub async fn claim(
    db: &DatabaseConnection,
    name: &'static str,
    period: Duration,
    hold: Duration,
) -> anyhow::Result<Option<Run>> {
    let now = Utc::now();
    // The task's row, due at once, the first time any worker asks.
    periodic_task::Entity::insert(periodic_task::ActiveModel {
        name: Set(name.to_owned()),
        next_run_at: Set(now),
        locked_until: Set(None),
        last_started_at: Set(None),
        last_finished_at: Set(None),
        last_error: Set(None),
    })
    .on_conflict(
        OnConflict::column(periodic_task::Column::Name)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await
    .with_context(|| format!("could not create the periodic task {name}"))?;

    let claimed = periodic_task::Entity::update_many()
        .col_expr(
            periodic_task::Column::NextRunAt,
            Expr::value(now + chrono::Duration::from_std(period)?),
        )
        .col_expr(
            periodic_task::Column::LockedUntil,
            Expr::value(now + chrono::Duration::from_std(hold)?),
        )
        .col_expr(periodic_task::Column::LastStartedAt, Expr::value(now))
        .filter(periodic_task::Column::Name.eq(name))
        .filter(periodic_task::Column::NextRunAt.lte(now))
        .filter(
            Condition::any()
                .add(periodic_task::Column::LockedUntil.is_null())
                .add(periodic_task::Column::LockedUntil.lt(now)),
        )
        .exec(db)
        .await
        .with_context(|| format!("could not claim the periodic task {name}"))?;
    Ok((claimed.rows_affected == 1).then_some(Run { name }))
}

impl Run {
    /// Releases the claim and records how the run ended (`error` None: it succeeded).
    pub async fn finish(
        self,
        db: &DatabaseConnection,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        periodic_task::Entity::update_many()
            .col_expr(
                periodic_task::Column::LockedUntil,
                Expr::value(Option::<chrono::DateTime<Utc>>::None),
            )
            .col_expr(
                periodic_task::Column::LastFinishedAt,
                Expr::value(Utc::now()),
            )
            .col_expr(periodic_task::Column::LastError, Expr::value(error))
            .filter(periodic_task::Column::Name.eq(self.name))
            .exec(db)
            .await
            .with_context(|| {
                format!(
                    "could not record the end of the periodic task {}",
                    self.name
                )
            })?;
        Ok(())
    }
}
