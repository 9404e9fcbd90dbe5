//! Merges the `ProcessEvents` jobs that run at once in this process into one batch.
//!
//! The ingest pushes one job per group commit, so under load the queue holds many small jobs
//! (a handful of events each), and a worker fetches several of them at a time. Processed one by
//! one, each would pay its own claim, its own transaction and its own `Deliver` jobs. Here the
//! first job to arrive *leads*: it waits [`GATHER`] for the others fetched with it, takes every
//! waiting job's events (up to `event_batch_size`), processes them as one batch through
//! [`process_events::run`], and hands each job the batch's result. Jobs left over beyond the
//! size limit get a new leader among themselves.
//!
//! Durability is unchanged: a job finishes (and its queue entry is acknowledged) only after the
//! merged batch that holds its events has committed, and a failed batch fails every job in it.
//! A batch, once claimed, runs to its end even if the job that leads it is dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use uuid::Uuid;

use crate::jobs::process_events::{self, BatchOutcome};
use crate::runner::JobContext;

/// How long a leader waits for the other jobs fetched with it before it takes the batch.
pub const GATHER: Duration = Duration::from_millis(1);

/// The merged batch's result as each of its jobs sees it: the error text when it failed.
pub type Shared = Result<BatchOutcome, Arc<str>>;

/// What a waiting job is told.
enum Turn {
    /// Its events were processed in a batch with this result.
    Done(Shared),
    /// Its events were left over: it leads the next batch.
    Lead,
}

/// A job waiting to be taken into a batch.
struct Waiting {
    event_ids: Vec<Uuid>,
    /// Where its turn is sent; `None` once it was told to lead (it then returns the result).
    reply: Option<oneshot::Sender<Turn>>,
}

/// The jobs of this process waiting to be merged, and whether a leader is gathering them.
/// When no leader is gathering, nobody waits.
#[derive(Default)]
struct Pending {
    waiting: Vec<Waiting>,
    gathering: bool,
}

/// Merges concurrent `ProcessEvents` jobs (see the module documentation). One per process,
/// shared through the [`JobContext`].
#[derive(Default)]
pub struct EventBatches {
    pending: Mutex<Pending>,
}

impl std::fmt::Debug for EventBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventBatches")
    }
}

impl EventBatches {
    /// Processes `event_ids` together with the other jobs running at this moment; returns the
    /// merged batch's outcome once it has committed.
    pub async fn process(&self, ctx: &JobContext, event_ids: Vec<Uuid>) -> Shared {
        let (reply, turn) = oneshot::channel();
        let leads = {
            let mut pending = self.lock();
            let leads = !pending.gathering;
            pending.gathering = true;
            pending.waiting.push(Waiting {
                event_ids,
                // The first job leads and needs no message.
                reply: (!leads).then_some(reply),
            });
            leads
        };
        if leads {
            tokio::time::sleep(GATHER).await;
        } else {
            match turn.await {
                Ok(Turn::Done(result)) => return result,
                Ok(Turn::Lead) => {}
                Err(_) => return Err(Arc::from("the batch that held this job was dropped")),
            }
        }
        self.lead(ctx).await
    }

    /// Takes the waiting jobs (the leader's own first, up to the batch size), hands the lead
    /// of the rest to the next in line, processes the batch and answers each job taken.
    async fn lead(&self, ctx: &JobContext) -> Shared {
        let limit = ctx.settings.event_batch_size.max(1);
        let taken: Vec<Waiting> = {
            let mut pending = self.lock();
            let mut size = 0;
            let mut count = 0;
            for waiting in &pending.waiting {
                // At least the leader's own job, however big.
                if count > 0 && size + waiting.event_ids.len() > limit {
                    break;
                }
                size += waiting.event_ids.len();
                count += 1;
            }
            let taken = pending.waiting.drain(..count).collect();
            loop {
                let Some(next) = pending.waiting.first_mut() else {
                    pending.gathering = false;
                    break;
                };
                match next.reply.take().map(|reply| reply.send(Turn::Lead)) {
                    Some(Ok(())) => break,
                    // That job is gone (its worker stopped); its events stay `received`
                    // and run again from the queue.
                    _ => {
                        pending.waiting.remove(0);
                    }
                }
            }
            taken
        };
        let event_ids: Vec<Uuid> = taken
            .iter()
            .flat_map(|waiting| waiting.event_ids.iter().copied())
            .collect();
        metrics::histogram!("hookline_process_events_batch_events").record(event_ids.len() as f64);
        // The batch runs, and answers its jobs, in a task of its own: when apalis drops the
        // leader's handler (its worker restarts after Redis went away), the claimed events are
        // still processed and the other jobs still answered, instead of waiting out the lease.
        let ctx = ctx.clone();
        let batch = ctx.running_batches.clone().spawn(async move {
            let result: Shared = process_events::run_counted(&ctx, &event_ids)
                .await
                .map_err(|error| Arc::from(format!("{error:#}")));
            for reply in taken.into_iter().filter_map(|waiting| waiting.reply) {
                let _ = reply.send(Turn::Done(result.clone()));
            }
            result
        });
        match batch.await {
            Ok(result) => result,
            Err(error) => Err(Arc::from(format!("the batch's task ended: {error}"))),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
