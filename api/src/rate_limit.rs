//! Rate limiting of ingest per connection: a token bucket per connection id, in memory.
//!
//! Each connection may send `rate` events per second on average and up to `burst` at once.
//! Ingest asks the limiter only after a request's signature is verified, so a flood of unsigned
//! requests cannot spend a connection's budget, and buckets exist only for real connections.
//! The limit is per API process: with N API processes behind a load balancer a connection gets
//! up to N times the rate.
//!
//! Memory stays bounded: a bucket that has refilled completely behaves exactly like a new one,
//! so full buckets are dropped every [`PRUNE_INTERVAL`] (and whenever the map grows past
//! [`MAX_BUCKETS`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use uuid::Uuid;

/// How often idle (full) buckets are dropped.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(60);

/// Buckets kept before idle ones are dropped early.
pub const MAX_BUCKETS: usize = 100_000;

/// A request over its connection's limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimited {
    /// Whole seconds until the connection may send again (at least 1).
    pub retry_after_secs: u64,
}

/// Token buckets by connection id. Cheap to share (`Arc`); one short lock per request.
#[derive(Debug)]
pub struct RateLimiter {
    /// Tokens added per second; zero: no limit.
    rate: f64,
    /// Bucket capacity.
    burst: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    buckets: HashMap<Uuid, Bucket>,
    last_prune: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl RateLimiter {
    /// A limiter allowing `rate_per_sec` events per second with bursts of `burst`
    /// (`rate_per_sec = 0`: unlimited).
    pub fn new(rate_per_sec: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate_per_sec),
            burst: f64::from(burst.max(1)),
            state: Mutex::new(State {
                buckets: HashMap::new(),
                last_prune: Instant::now(),
            }),
        }
    }

    /// Takes one token of `connection_id`'s bucket, or says how long to wait for one.
    pub fn check(&self, connection_id: Uuid) -> Result<(), RateLimited> {
        self.check_at(connection_id, Instant::now())
    }

    /// [`check`](Self::check) at a given instant (tests drive the clock).
    pub fn check_at(&self, connection_id: Uuid, now: Instant) -> Result<(), RateLimited> {
        if self.rate <= 0.0 {
            return Ok(());
        }
        // A poisoned lock only means another request panicked mid-update of plain numbers:
        // the map is still usable.
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if now.saturating_duration_since(state.last_prune) >= PRUNE_INTERVAL
            || state.buckets.len() >= MAX_BUCKETS
        {
            self.prune(&mut state, now);
        }
        let bucket = state.buckets.entry(connection_id).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        bucket.tokens = self.refilled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_secs = (1.0 - bucket.tokens) / self.rate;
        Err(RateLimited {
            retry_after_secs: (wait_secs.ceil() as u64).max(1),
        })
    }

    /// How many connections have a bucket (for tests of the pruning).
    pub fn buckets(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .buckets
            .len()
    }

    fn refilled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        (bucket.tokens + elapsed * self.rate).min(self.burst)
    }

    fn prune(&self, state: &mut State, now: Instant) {
        state
            .buckets
            .retain(|_, bucket| self.refilled(bucket, now) < self.burst);
        state.last_prune = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_the_rate_applies() {
        let limiter = RateLimiter::new(2, 3);
        let id = Uuid::now_v7();
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.check_at(id, start), Ok(()));
        }
        assert_eq!(
            limiter.check_at(id, start),
            Err(RateLimited {
                retry_after_secs: 1
            })
        );
        // Half a second refills one token at 2/s.
        let later = start + Duration::from_millis(500);
        assert_eq!(limiter.check_at(id, later), Ok(()));
        assert!(limiter.check_at(id, later).is_err());
    }

    #[test]
    fn retry_after_is_whole_seconds_and_at_least_one() {
        let limiter = RateLimiter::new(1, 1);
        let id = Uuid::now_v7();
        let now = Instant::now();
        assert_eq!(limiter.check_at(id, now), Ok(()));
        let limited = limiter.check_at(id, now).expect_err("limited");
        assert_eq!(limited.retry_after_secs, 1);

        // Part of a token refilled: still a whole second, never zero.
        let almost = now + Duration::from_millis(900);
        assert_eq!(
            limiter
                .check_at(id, almost)
                .expect_err("limited")
                .retry_after_secs,
            1
        );
    }

    #[test]
    fn connections_have_separate_buckets() {
        let limiter = RateLimiter::new(1, 1);
        let now = Instant::now();
        let (noisy, quiet) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(limiter.check_at(noisy, now), Ok(()));
        assert!(limiter.check_at(noisy, now).is_err());
        assert_eq!(limiter.check_at(quiet, now), Ok(()));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let limiter = RateLimiter::new(0, 1);
        let id = Uuid::now_v7();
        for _ in 0..10_000 {
            assert_eq!(limiter.check(id), Ok(()));
        }
        assert_eq!(limiter.buckets(), 0);
    }

    #[test]
    fn idle_buckets_are_pruned() {
        let limiter = RateLimiter::new(10, 10);
        let start = Instant::now();
        for _ in 0..100 {
            assert_eq!(limiter.check_at(Uuid::now_v7(), start), Ok(()));
        }
        assert_eq!(limiter.buckets(), 100);
        // Long after, every bucket is full again: the next check prunes them all.
        let later = start + PRUNE_INTERVAL;
        let busy = Uuid::now_v7();
        assert_eq!(limiter.check_at(busy, later), Ok(()));
        assert_eq!(limiter.buckets(), 1);
    }
}
