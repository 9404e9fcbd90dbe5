//! The token keeper: keeps idle OAuth grants alive.
//!
//! Atlassian expires a refresh token that was not used for 90 days. A connection whose events
//! never need enrichment would lose its grant silently, so every worker process periodically
//! refreshes the credentials whose refresh token was not used for
//! [`WorkerSettings::token_idle_refresh`](crate::WorkerSettings::token_idle_refresh). The
//! refresh goes through the `TokenManager`, so several workers doing this at once refresh each
//! credential once.

use chrono::Utc;
use plugins::jira::token_manager::TokenError;
use tokio::sync::watch;

use crate::runner::JobContext;

/// Most credentials refreshed per round.
const BATCH: u64 = 100;

/// Runs [`keep_once`] every `token_keeper_interval` until `stop` turns true (or is dropped).
pub async fn run(ctx: JobContext, mut stop: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(ctx.settings.token_keeper_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            _ = stop.changed() => return,
        }
        match keep_once(&ctx).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "token keeper refreshed idle credentials"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "token keeper failed"),
        }
    }
}

/// One round: refreshes every idle credential (up to a batch). Returns how many were refreshed.
pub async fn keep_once(ctx: &JobContext) -> anyhow::Result<usize> {
    let Some(_) = ctx.jira.tokens().oauth() else {
        // Without the app's client credentials nothing can be refreshed.
        return Ok(0);
    };
    let idle = ctx.settings.token_idle_refresh;
    let cutoff = Utc::now() - chrono::Duration::from_std(idle)?;
    let mut refreshed = 0;
    for connection_id in ctx.jira.tokens().idle_connections(cutoff, BATCH).await? {
        match ctx.jira.tokens().refresh_if_idle(connection_id, idle).await {
            Ok(true) => refreshed += 1,
            Ok(false) => {}
            // Counted and recorded on the connection by the TokenManager.
            Err(TokenError::ReauthRequired) => {}
            Err(error) => tracing::warn!(
                connection.id = %connection_id,
                error = %error,
                "could not refresh an idle credential"
            ),
        }
    }
    Ok(refreshed)
}
