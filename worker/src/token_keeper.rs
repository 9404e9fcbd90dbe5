//! The token keeper: keeps idle OAuth grants alive.
//!
//! Atlassian expires a refresh token that was not used for 90 days. A grant whose sites' events
//! never need enrichment would lose its consent silently, so every worker process periodically
//! refreshes the grants whose refresh token was not used for
//! [`WorkerSettings::token_idle_refresh`](crate::WorkerSettings::token_idle_refresh). Each round
//! visits every idle grant, in id order, a page at a time (no grant is starved by others). The
//! refresh goes through the `TokenManager`, so several workers doing this at once refresh each
//! grant once.

use chrono::Utc;
use plugins::jira::token_manager::TokenError;
use tokio::sync::watch;

use crate::runner::JobContext;

/// Grants read per page of a round.
const PAGE: u64 = 100;

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
            Ok(count) => tracing::info!(count, "token keeper refreshed idle grants"),
            Err(error) => tracing::warn!(error = format!("{error:#}"), "token keeper failed"),
        }
    }
}

/// One round: refreshes every idle grant. Returns how many were refreshed.
pub async fn keep_once(ctx: &JobContext) -> anyhow::Result<usize> {
    let tokens = ctx.jira.tokens();
    if tokens.oauth().is_none() {
        // Without the app's client credentials nothing can be refreshed.
        return Ok(0);
    }
    let idle = ctx.settings.token_idle_refresh;
    let cutoff = Utc::now() - chrono::Duration::from_std(idle)?;
    let mut refreshed = 0;
    let mut after = None;
    loop {
        let page = tokens.idle_grants(cutoff, after, PAGE).await?;
        let Some(last) = page.last().copied() else {
            return Ok(refreshed);
        };
        for grant_id in page {
            match tokens.refresh_if_idle(grant_id, idle).await {
                Ok(true) => refreshed += 1,
                Ok(false) => {}
                // Counted and recorded on the grant and its sites by the TokenManager.
                Err(TokenError::ReauthRequired) => {}
                Err(error) => tracing::warn!(
                    grant.id = %grant_id,
                    error = %error,
                    "could not refresh an idle grant"
                ),
            }
        }
        after = Some(last);
    }
}
