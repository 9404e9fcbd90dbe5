//! The janitor: removes finished jobs from the queue backend.
//!
//! apalis keeps every finished job forever (in Redis: set members, the payload and a metadata
//! hash per job; in SQLite: a row). The database is the source of truth of every event and
//! delivery, so those copies serve nothing; left alone they grow Redis by a few hundred bytes
//! per job, without bound. The sweeper calls [`clean_once`] on every round.

use crate::jobs::{Deliver, DeliverRetry, ProcessEvent};
use crate::queue::Job;
use crate::runner::JobContext;

/// Most finished jobs removed per queue and statement; a round repeats until fewer are left.
const BATCH: usize = 1_000;

/// Most statements per queue and round, so one round stays short after a long outage.
const MAX_BATCHES_PER_ROUND: usize = 20;

/// Removes the finished jobs of every queue. Returns how many were removed.
pub async fn clean_once(ctx: &JobContext) -> anyhow::Result<u64> {
    let mut removed = clean_queue::<ProcessEvent>(ctx).await?;
    removed += clean_queue::<Deliver>(ctx).await?;
    removed += clean_queue::<DeliverRetry>(ctx).await?;
    if removed > 0 {
        metrics::counter!("hookline_queue_jobs_removed_total").increment(removed);
    }
    Ok(removed)
}

async fn clean_queue<J: Job>(ctx: &JobContext) -> anyhow::Result<u64> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        let removed = ctx.queue.remove_finished::<J>(BATCH).await?;
        total += removed;
        if removed < BATCH as u64 {
            break;
        }
    }
    Ok(total)
}
