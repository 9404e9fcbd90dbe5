//! The janitor: keeps the queue backend healthy. It promotes due jobs in bounded chunks (see
//! [`crate::queue::JobQueue::promote_due`]: apalis-redis cannot promote more than about 8,000
//! at once) and removes finished jobs.
//!
//! apalis keeps every finished job forever (in Redis: set members, the payload and a metadata
//! hash per job; in SQLite: a row). The database is the source of truth of every event and
//! delivery, so those copies serve nothing; left alone they grow Redis by a few hundred bytes
//! per job, without bound. The sweeper calls [`clean_once`] on every round.

use crate::jobs::{Deliver, DeliverRetry, ProcessEvents};
use crate::queue::Job;
use crate::runner::JobContext;

/// Most finished jobs removed per queue and statement; a round repeats until fewer are left.
const BATCH: usize = 1_000;

/// Most statements per queue and round, so one round stays short after a long outage.
const MAX_BATCHES_PER_ROUND: usize = 20;

/// Promotes due jobs and removes the finished jobs of every queue. Returns how many finished
/// jobs were removed.
pub async fn clean_once(ctx: &JobContext) -> anyhow::Result<u64> {
    promote_queue::<ProcessEvents>(ctx).await?;
    promote_queue::<Deliver>(ctx).await?;
    promote_queue::<DeliverRetry>(ctx).await?;
    let mut removed = clean_queue::<ProcessEvents>(ctx).await?;
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

/// Promotes the due jobs of one queue, [`BATCH`] at a time.
async fn promote_queue<J: Job>(ctx: &JobContext) -> anyhow::Result<u64> {
    let mut total = 0;
    loop {
        let moved = ctx.queue.promote_due::<J>(BATCH).await?;
        total += moved;
        if moved < BATCH as u64 {
            return Ok(total);
        }
    }
}
