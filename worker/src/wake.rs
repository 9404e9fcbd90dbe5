//! Wake-up on push: an idle worker starts a pushed job within milliseconds instead of at its
//! next poll (DESIGN §1). Polling stays, at `poll_interval`, only as the fallback.
//!
//! Every worker of a queue waits on that queue's [`WakeStream`] (an apalis poll strategy next to
//! the interval). A push in this process signals it directly (the embedded SQLite queue has no
//! other way). With Redis, a push also publishes on the queue's [`channel`]; [`listen`]
//! subscribes to those channels and signals the queue's stream, so a push by any process wakes
//! the workers of every process. (apalis-redis 1.0 publishes its own `…:available` notice only
//! for jobs pushed without a run time, and it stamps every push with one, so it never does; its
//! `RedisStorageFactory` also reads the queue name as the first `:`-separated part of the
//! channel, which our `<prefix>:<queue>` names break, and does not reconnect.)

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::ext::poll_strategy::{PollSnapshot, PollStrategy};
use futures::task::AtomicWaker;
use futures::{Stream, StreamExt as _};
use tokio::sync::watch;
use tokio::time::{Interval, MissedTickBehavior};

/// Prefix of the wake-up channels; the queue's full name follows it.
const CHANNEL_PREFIX: &str = "hookline:wake:";

/// The Redis channel a push to `queue` is announced on.
pub fn channel(queue: &str) -> String {
    format!("{CHANNEL_PREFIX}{queue}")
}

/// One wake-up signal per queue, shared by the pushers and the workers of this process.
#[derive(Debug, Default)]
pub struct Wakers {
    queues: Mutex<HashMap<String, WakeStream>>,
}

impl Wakers {
    /// The stream the workers of `queue` wait on.
    pub fn stream(&self, queue: &str) -> WakeStream {
        let mut queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        queues.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes the workers of `queue` in this process, if any wait.
    pub fn signal(&self, queue: &str) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stream) = queues.get(queue) {
            stream.signal();
        }
    }

    /// Wakes every queue's workers (after a missed stretch of notifications).
    fn signal_all(&self) {
        let queues = self
            .queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for stream in queues.values() {
            stream.signal();
        }
    }
}

#[derive(Debug, Default)]
struct Signal {
    waker: AtomicWaker,
    set: AtomicBool,
}

/// Yields once per wake-up (several signals before a poll coalesce into one item).
#[derive(Debug, Clone, Default)]
pub struct WakeStream(Arc<Signal>);

impl WakeStream {
    fn signal(&self) {
        self.0.set.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl Stream for WakeStream {
    type Item = ();

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<()>> {
        let signal = &self.0;
        if signal.set.swap(false, Ordering::AcqRel) {
            return Poll::Ready(Some(()));
        }
        // Register before the second check, so a signal in between is not lost.
        signal.waker.register(cx.waker());
        if signal.set.swap(false, Ordering::AcqRel) {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// When an idle worker fetches again: at a push to its queue ([`WakeStream`]) or every
/// `poll_interval`, whichever comes first.
///
/// apalis' own `Strategy::new().stream(..).interval(..)` lost wake-ups: it stops at the first
/// strategy that is ready, so after a push the interval was not polled, and its interval
/// re-arms its timer without polling it; after a fetch that found nothing, neither had a waker
/// registered and the worker slept until its next heartbeat (5 s: measured as stalls of 1 to
/// 4.6 s of every delivery at 1,000 events/s). This one polls both every time, each until it is
/// pending, so both always hold the worker's waker.
#[derive(Debug)]
pub struct WakeOrPoll {
    wake: WakeStream,
    interval: Interval,
}

impl WakeOrPoll {
    /// Wakes on `wake` and every `poll_interval` (at least 1 ms). Needs the Tokio runtime.
    pub fn new(wake: WakeStream, poll_interval: Duration) -> Self {
        let period = poll_interval.max(Duration::from_millis(1));
        // No tick at once: apalis fetches when the worker starts anyway.
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { wake, interval }
    }
}

impl PollStrategy for WakeOrPoll {
    fn poll_drive(&mut self, cx: &mut Context<'_>, _snapshot: &PollSnapshot) -> Poll<Option<()>> {
        let mut due = false;
        // Each is polled until it is pending: only a pending poll registers the waker.
        while let Poll::Ready(Some(())) = self.wake.poll_next_unpin(cx) {
            due = true;
        }
        while self.interval.poll_tick(cx).is_ready() {
            due = true;
        }
        if due {
            Poll::Ready(Some(()))
        } else {
            Poll::Pending
        }
    }
}

/// The queue a wake-up channel is about.
fn queue_of(channel: &str) -> Option<&str> {
    channel.strip_prefix(CHANNEL_PREFIX)
}

/// Subscribes to the wake-up channels and signals the matching queues, until
/// `stop` turns true. Reconnects after Redis restarts, waking every queue once it is back (the
/// notifications in between are lost; the jobs are not).
pub async fn listen(client: redis::Client, wakers: Arc<Wakers>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(100);
    loop {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.psubscribe(format!("{CHANNEL_PREFIX}*")).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::select! {
            result = subscribed => result,
            _ = stop.changed() => return,
        };
        match pubsub {
            Ok(pubsub) => {
                delay = Duration::from_millis(100);
                wakers.signal_all();
                let mut messages = pubsub.into_on_message();
                loop {
                    let message = tokio::select! {
                        message = messages.next() => message,
                        _ = stop.changed() => return,
                    };
                    let Some(message) = message else { break };
                    if let Some(queue) = queue_of(message.get_channel_name()) {
                        wakers.signal(queue);
                    }
                }
                tracing::warn!("lost the Redis subscription for job wake-ups; reconnecting");
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not subscribe to job wake-ups; polling until Redis answers");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_is_read_from_the_channel_whatever_its_colons() {
        let queue = "hookline:process_events";
        assert_eq!(queue_of(&channel(queue)), Some(queue));
        assert_eq!(queue_of("tasks:q:active:available"), None);
    }

    #[tokio::test]
    async fn a_signal_before_the_wait_is_not_lost_and_signals_coalesce() {
        let wakers = Wakers::default();
        let mut stream = wakers.stream("q");
        wakers.signal("q");
        wakers.signal("q");
        assert_eq!(stream.next().await, Some(()));
        let waited = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
        assert!(
            waited.is_err(),
            "two signals before one poll are one wake-up"
        );
        wakers.signal("other");
        let waited = tokio::time::timeout(Duration::from_millis(20), stream.next()).await;
        assert!(
            waited.is_err(),
            "another queue's signal does not wake this one"
        );
    }

    /// Counts how often it is woken.
    #[derive(Default)]
    struct CountingWaker(std::sync::atomic::AtomicUsize);

    impl futures::task::ArcWake for CountingWaker {
        fn wake_by_ref(arc_self: &Arc<Self>) {
            arc_self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The case apalis' combined strategy lost: a push makes the strategy ready, the fetch
    /// finds nothing, and the next push must still wake the worker.
    #[tokio::test]
    async fn a_push_after_a_wake_up_wakes_the_worker_again() {
        let wakers = Wakers::default();
        let mut strategy = WakeOrPoll::new(wakers.stream("q"), Duration::from_secs(3600));
        let counter = Arc::new(CountingWaker::default());
        let waker = futures::task::waker(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());

        wakers.signal("q");
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            1,
            "the push woke the worker"
        );
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        wakers.signal("q");
        assert_eq!(
            counter.0.load(Ordering::SeqCst),
            2,
            "the push after the wake-up woke the worker too"
        );
    }

    /// After a tick the next one wakes the worker without another poll in between.
    #[tokio::test]
    async fn the_interval_wakes_the_worker_after_every_tick() {
        let wakers = Wakers::default();
        let mut strategy = WakeOrPoll::new(wakers.stream("q"), Duration::from_millis(5));
        let counter = Arc::new(CountingWaker::default());
        let waker = futures::task::waker(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let snapshot = PollSnapshot::default();
        assert!(strategy.poll_drive(&mut cx, &snapshot).is_pending());
        for tick in 1..=3 {
            let woken = tokio::time::timeout(Duration::from_secs(10), async {
                while counter.0.load(Ordering::SeqCst) < tick {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
            .await;
            assert!(woken.is_ok(), "tick {tick} woke nobody");
            assert!(strategy.poll_drive(&mut cx, &snapshot).is_ready());
        }
    }
}
