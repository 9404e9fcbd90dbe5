//! Auto-disable: a subscription whose deliveries fail continuously for longer than
//! `disable_failing_after` is disabled with a reason; a success clears the streak.

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use entity::subscription;
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};

use crate::runner::JobContext;

/// Keeps `failing_since` current and disables a subscription that has been failing for longer
/// than `disable_failing_after`.
pub async fn track(
    ctx: &JobContext,
    subscription: &subscription::Model,
    succeeded: bool,
    now: DateTime<Utc>,
) -> anyhow::Result<()> {
    let id = subscription::Column::Id.eq(subscription.id);
    if succeeded {
        if subscription.failing_since.is_some() {
            subscription::Entity::update_many()
                .col_expr(
                    subscription::Column::FailingSince,
                    Expr::value(Option::<DateTime<Utc>>::None),
                )
                .filter(id)
                .exec(&ctx.db)
                .await
                .context("could not clear failing_since")?;
        }
        return Ok(());
    }
    let Some(failing_since) = subscription.failing_since else {
        subscription::Entity::update_many()
            .col_expr(subscription::Column::FailingSince, Expr::value(now))
            .filter(id)
            .filter(subscription::Column::FailingSince.is_null())
            .exec(&ctx.db)
            .await
            .context("could not set failing_since")?;
        return Ok(());
    };
    let limit = ctx.settings.disable_failing_after;
    if (now - failing_since).to_std().unwrap_or_default() < limit {
        return Ok(());
    }
    let reason = format!(
        "deliveries failed continuously since {} (longer than {}s)",
        failing_since.to_rfc3339_opts(SecondsFormat::Secs, true),
        limit.as_secs()
    );
    let disabled = subscription::Entity::update_many()
        .col_expr(subscription::Column::Enabled, Expr::value(false))
        .col_expr(
            subscription::Column::DisabledReason,
            Expr::value(reason.clone()),
        )
        .col_expr(subscription::Column::UpdatedAt, Expr::value(now))
        .filter(id)
        .filter(subscription::Column::Enabled.eq(true))
        .filter(subscription::Column::FailingSince.is_not_null())
        .exec(&ctx.db)
        .await
        .context("could not disable the failing subscription")?;
    if disabled.rows_affected > 0 {
        metrics::counter!("hookline_subscriptions_disabled_total").increment(1);
        tracing::warn!(subscription.id = %subscription.id, reason, "subscription disabled");
    }
    Ok(())
}
