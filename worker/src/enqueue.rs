//! Enqueueing freshly recorded events, used by the API: each group commit's new events go out as
//! one `ProcessEvents` job (DESIGN §1), pushed after the commit by a task of their own, so a
//! request never waits for the queue.
//!
//! A push that fails (Redis restarting, unreachable) is retried with backoff until the queue
//! answers, and the events committed meanwhile join it: an event whose push failed is pushed
//! as soon as the queue is back, not at the next sweep. Only if the backlog of unpushed batches
//! outgrows its buffer are the newest left to the sweeper (counted in
//! `hookline_enqueue_failures_total`).

use std::time::Duration;

use tokio::sync::mpsc;
use uuid::Uuid;

use crate::jobs::ProcessEvents;
use crate::queue::JobQueue;

/// Batches of ids waiting to be pushed before new ones are left to the sweeper.
const BUFFER: usize = 4096;

/// How long one push may take before it counts as failed (and is tried again).
const PUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Hands committed event ids to the pushing task. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventPusher {
    sender: mpsc::Sender<Vec<Uuid>>,
}

impl EventPusher {
    /// Starts the pushing task on the current runtime; it ends when every clone is dropped.
    /// A job carries at most `batch_size` events.
    pub fn spawn(queue: JobQueue, batch_size: usize) -> Self {
        let (sender, receiver) = mpsc::channel(BUFFER);
        tokio::spawn(run(queue, receiver, batch_size.max(1)));
        Self { sender }
    }

    /// Enqueues the events of one commit; never waits.
    pub fn push(&self, event_ids: Vec<Uuid>) {
        if event_ids.is_empty() {
            return;
        }
        let count = event_ids.len();
        if self.sender.try_send(event_ids).is_err() {
            metrics::counter!("hookline_enqueue_failures_total", "job" => "process_events")
                .increment(count as u64);
            tracing::warn!(
                events = count,
                "too many events wait for the queue; the sweeper will enqueue these"
            );
        }
    }
}

async fn run(queue: JobQueue, mut receiver: mpsc::Receiver<Vec<Uuid>>, batch_size: usize) {
    while let Some(mut ids) = receiver.recv().await {
        // Whatever else is already waiting goes in the same push.
        while ids.len() < batch_size {
            match receiver.try_recv() {
                Ok(more) => ids.extend(more),
                Err(_) => break,
            }
        }
        let jobs: Vec<ProcessEvents> = ids
            .chunks(batch_size)
            .map(|chunk| ProcessEvents {
                event_ids: chunk.to_vec(),
            })
            .collect();
        push_until_accepted(&queue, jobs).await;
    }
}

/// Pushes `jobs`, retrying with backoff (50 ms up to 1 s) for as long as the queue refuses.
async fn push_until_accepted(queue: &JobQueue, jobs: Vec<ProcessEvents>) {
    let mut backoff = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(1))
            .with_jitter()
            .without_max_times(),
    );
    let mut failures = 0u64;
    loop {
        let error = match tokio::time::timeout(PUSH_TIMEOUT, queue.push_all(jobs.clone())).await {
            Ok(Ok(())) => {
                if failures > 0 {
                    tracing::info!(failures, "the queue answers again; events enqueued");
                }
                return;
            }
            Ok(Err(error)) => format!("{error:#}"),
            Err(_) => format!("the queue did not answer within {PUSH_TIMEOUT:?}"),
        };
        failures += 1;
        metrics::counter!("hookline_enqueue_failures_total", "job" => "process_events")
            .increment(1);
        if failures == 1 {
            tracing::warn!(
                error,
                "could not enqueue recorded events; retrying until the queue answers"
            );
        }
        tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
    }
}
