//! The batches running in tasks of their own (`event_batches.rs`, `jobs/deliver.rs`), so that
//! shutdown waits for them.
//!
//! A batch runs apart from its apalis handler so that a handler apalis drops does not abandon
//! the rows it claimed. The flip side: when apalis stops a worker at shutdown without waiting
//! for a handler, nothing waited for its batch either, and the process could exit in the middle
//! of an attempt, leaving the delivery `in_flight` until its lease ran out. `run_workers` now
//! waits until every batch spawned here has finished (up to the shutdown timeout).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Counts the batches running; [`RunningBatches::idle`] waits until none is.
#[derive(Debug, Default)]
pub struct RunningBatches {
    running: AtomicUsize,
    finished: Notify,
}

impl RunningBatches {
    /// Runs `batch` in a task of its own, counted until it ends (or panics).
    pub fn spawn<F>(self: &Arc<Self>, batch: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.running.fetch_add(1, Ordering::SeqCst);
        let done = Done(self.clone());
        tokio::spawn(async move {
            let _done = done;
            batch.await
        })
    }

    /// How many batches are running now.
    pub fn count(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Completes once no batch is running.
    pub async fn idle(&self) {
        loop {
            // Registered before the count is read, so a batch ending in between still wakes it.
            let finished = self.finished.notified();
            if self.count() == 0 {
                return;
            }
            finished.await;
        }
    }
}

/// Uncounts its batch when the batch's task ends, however it ends.
struct Done(Arc<RunningBatches>);

impl Drop for Done {
    fn drop(&mut self) {
        if self.0.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.finished.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn idle_waits_for_every_batch_including_one_that_panics() {
        let batches = Arc::new(RunningBatches::default());
        batches.idle().await;
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let slow = batches.spawn(async move {
            let _ = wait.await;
        });
        let panicking = batches.spawn(async { panic!("a batch that panics") });
        assert!(panicking.await.is_err());
        assert_eq!(batches.count(), 1);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), batches.idle())
                .await
                .is_err(),
            "a batch is still running"
        );
        let _ = release.send(());
        slow.await.expect("the slow batch ends");
        tokio::time::timeout(Duration::from_secs(1), batches.idle())
            .await
            .expect("idle once every batch ended");
        assert_eq!(batches.count(), 0);
    }
}
