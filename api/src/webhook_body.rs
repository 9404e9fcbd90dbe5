//! Reading a webhook body: within the size limit, within the process' budget of body bytes,
//! no slower than the floor rate, copied once.
//!
//! Ingest reads the body only once it knows the connection, so nothing is read for an unknown
//! or disabled connection. The bytes go from the network buffers straight into one buffer, the
//! one the event row is made from: with a `Content-Length` (what Jira sends) it is allocated at
//! its final size up front, so each byte is copied exactly once.
//!
//! A sender that trickles its body in keeps a request, its buffer and its share of the budget
//! alive. After a grace period the body must have arrived at an average rate of at least the
//! floor since the request started, or it is cut off with 408: Jira retries a 408, so a body
//! slowed by a network problem (rather than by a hostile sender) is not lost; a 400 would make
//! Jira drop it.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;

use crate::body_budget::{BodyBudget, BudgetFull, Reservation};

/// How a webhook body must arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRules {
    /// Largest body accepted, in bytes.
    pub limit_bytes: usize,
    /// After [`Self::grace`], the body must have arrived at an average of at least this many
    /// bytes per second since the request started; `0` turns the floor off.
    pub min_bytes_per_sec: u64,
    /// How long a body may take before the floor applies.
    pub grace: Duration,
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// It is (or says it is) larger than the limit.
    #[error("the body is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The bodies being received already hold the process' budget of bytes.
    #[error(transparent)]
    Busy(#[from] BudgetFull),
    /// It arrived slower than the floor rate.
    #[error(
        "the body arrived too slowly: {received} bytes in {elapsed:?}, the floor is {min_bytes_per_sec} bytes/s after {grace:?}"
    )]
    TooSlow {
        /// Bytes received when it was cut off.
        received: usize,
        /// Time since the request started.
        elapsed: Duration,
        /// The floor rate.
        min_bytes_per_sec: u64,
        /// The grace before the floor applies.
        grace: Duration,
    },
    /// The client broke off or sent a malformed body.
    #[error("could not read the body: {0}")]
    Broken(String),
}

/// A body read to its end, with the budget it holds until it is dropped.
#[derive(Debug)]
pub struct ReceivedBody {
    /// The body, byte for byte.
    pub bytes: Vec<u8>,
    /// Keeps the body's bytes counted in the budget while the request holds them.
    pub reservation: Reservation,
}

impl BodyRules {
    /// When the body, `received` bytes in, falls below the floor if nothing more arrives.
    fn deadline(&self, started: Instant, received: usize) -> Option<Instant> {
        if self.min_bytes_per_sec == 0 {
            return None;
        }
        let at_floor = Duration::from_secs_f64(received as f64 / self.min_bytes_per_sec as f64);
        Some(started + self.grace.max(at_floor))
    }
}

/// Reads `body` to its end under `rules`, reserving its bytes in `budget` first.
/// `declared_length` is the request's `Content-Length` (None for a chunked body); `started` is
/// when the request started.
pub async fn read(
    body: poem::Body,
    declared_length: Option<usize>,
    started: Instant,
    rules: &BodyRules,
    budget: &BodyBudget,
) -> Result<ReceivedBody, BodyError> {
    let too_large = || BodyError::TooLarge {
        limit: rules.limit_bytes,
    };
    let declared = declared_length.unwrap_or(0);
    if declared > rules.limit_bytes {
        return Err(too_large());
    }
    let mut reservation = budget.reserve(declared)?;
    let mut bytes = Vec::with_capacity(declared);
    let mut chunks = body.into_bytes_stream();
    loop {
        let next = match rules.deadline(started, bytes.len()) {
            Some(deadline) => tokio::time::timeout_at(deadline, chunks.next())
                .await
                .map_err(|_| BodyError::TooSlow {
                    received: bytes.len(),
                    elapsed: started.elapsed(),
                    min_bytes_per_sec: rules.min_bytes_per_sec,
                    grace: rules.grace,
                })?,
            None => chunks.next().await,
        };
        let Some(chunk) = next else {
            break;
        };
        let chunk = chunk.map_err(|error| BodyError::Broken(error.to_string()))?;
        let total = bytes.len() + chunk.len();
        if total > rules.limit_bytes {
            return Err(too_large());
        }
        // Only a chunked body (or one longer than declared, which hyper refuses) grows here.
        reservation.grow(total.saturating_sub(reservation.bytes()))?;
        bytes.extend_from_slice(&chunk);
    }
    Ok(ReceivedBody { bytes, reservation })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: BodyRules = BodyRules {
        limit_bytes: 1000,
        min_bytes_per_sec: 100,
        grace: Duration::from_secs(2),
    };

    fn chunked(chunks: &[&'static [u8]]) -> poem::Body {
        let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = chunks
            .iter()
            .map(|chunk| Ok(bytes::Bytes::from_static(chunk)))
            .collect();
        poem::Body::from_bytes_stream(futures::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_bytes_are_held_until_dropped() {
        let budget = BodyBudget::new(10_000);
        let body = chunked(&[b"{\"a\":", b"1}"]);
        let received = read(body, Some(7), Instant::now(), &RULES, &budget)
            .await
            .expect("read");
        assert_eq!(received.bytes, b"{\"a\":1}");
        assert_eq!(received.bytes.capacity(), 7, "allocated once, at its size");
        assert_eq!(budget.reserved_bytes(), 7);
        drop(received);
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_reserves_as_it_arrives_and_the_limit_holds() {
        let budget = BodyBudget::new(10_000);
        let received = read(
            chunked(&[b"abc", b"de"]),
            None,
            Instant::now(),
            &RULES,
            &budget,
        )
        .await
        .expect("read");
        assert_eq!(received.reservation.bytes(), 5);
        let big: &'static [u8] = &[b'x'; 600];
        let error = read(chunked(&[big, big]), None, Instant::now(), &RULES, &budget)
            .await
            .expect_err("over the limit");
        assert!(
            matches!(error, BodyError::TooLarge { limit: 1000 }),
            "{error}"
        );
        let error = read(chunked(&[]), Some(1001), Instant::now(), &RULES, &budget)
            .await
            .expect_err("declared over the limit");
        assert!(matches!(error, BodyError::TooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn a_body_that_does_not_fit_the_budget_is_refused_before_it_is_read() {
        let budget = BodyBudget::new(100);
        let _held = budget.reserve(60).expect("fits");
        let error = read(chunked(&[b"x"]), Some(50), Instant::now(), &RULES, &budget)
            .await
            .expect_err("no room");
        assert!(matches!(error, BodyError::Busy(_)), "{error}");
        assert_eq!(budget.reserved_bytes(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_is_cut_off_after_the_grace() {
        let budget = BodyBudget::new(10_000);
        let started = Instant::now();
        // 50 bytes, then nothing: at 100 bytes/s the floor is passed at the end of the grace.
        let stalled = futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
            &[b' '; 50],
        ))])
        .chain(futures::stream::pending());
        let error = read(
            poem::Body::from_bytes_stream(stalled),
            Some(500),
            started,
            &RULES,
            &budget,
        )
        .await
        .expect_err("cut off");
        assert!(
            matches!(error, BodyError::TooSlow { received: 50, .. }),
            "{error}"
        );
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_body_above_the_floor_is_read_and_the_floor_can_be_off() {
        let budget = BodyBudget::new(10_000);
        // 300 bytes/s in 3 chunks of 150 over 1.5 s: above the floor of 100 bytes/s.
        let slow = futures::stream::unfold(0, |sent| async move {
            if sent == 3 {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b' '; 150])),
                sent + 1,
            ))
        });
        let received = read(
            poem::Body::from_bytes_stream(slow),
            None,
            Instant::now(),
            &RULES,
            &budget,
        )
        .await
        .expect("read");
        assert_eq!(received.bytes.len(), 450);

        // 10 bytes every 5 s is below the floor; with the floor off it is read all the same.
        let trickle = futures::stream::unfold(0, |sent| async move {
            if sent == 2 {
                return None;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            Some((
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(&[b' '; 10])),
                sent + 1,
            ))
        });
        let off = BodyRules {
            min_bytes_per_sec: 0,
            ..RULES
        };
        let received = read(
            poem::Body::from_bytes_stream(trickle),
            None,
            Instant::now(),
            &off,
            &budget,
        )
        .await
        .expect("read");
        assert_eq!(received.bytes.len(), 20);
    }
}
