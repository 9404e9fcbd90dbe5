//! The bytes of webhook bodies one API process holds at once, capped.
//!
//! Every webhook body is held in memory from the moment it is read until its request is
//! answered (after its commit). Without a cap, many senders posting large bodies at once (or
//! slowly) could grow the process without bound. Each request reserves its body's bytes here
//! before it reads them: the declared `Content-Length` up front (that is what the body's buffer
//! is allocated with), or chunk by chunk for a chunked body. A reservation that does not fit is
//! refused, and ingest answers 503 with `Retry-After` (Jira retries 5xx). The bytes are given
//! back when the reservation is dropped, whatever the outcome of the request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The cap and what is reserved under it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BodyBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit_bytes: usize,
    reserved_bytes: AtomicUsize,
}

/// The budget has no room for the bytes asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the webhook bodies being received already hold {reserved} of the {limit} bytes allowed")]
pub struct BudgetFull {
    /// Bytes reserved when the reservation was refused.
    pub reserved: usize,
    /// The cap.
    pub limit: usize,
}

/// Bytes held by one request; given back when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<Inner>,
    bytes: usize,
}

impl BodyBudget {
    /// A budget of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit_bytes,
                reserved_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// Reserves `bytes`, or says that they do not fit.
    pub fn reserve(&self, bytes: usize) -> Result<Reservation, BudgetFull> {
        let mut reservation = Reservation {
            budget: Arc::clone(&self.inner),
            bytes: 0,
        };
        reservation.grow(bytes)?;
        Ok(reservation)
    }

    /// Bytes reserved right now.
    pub fn reserved_bytes(&self) -> usize {
        self.inner.reserved_bytes.load(Ordering::Acquire)
    }
}

impl Reservation {
    /// Reserves `more` bytes in addition, or says that they do not fit (what was reserved
    /// before stays reserved).
    pub fn grow(&mut self, more: usize) -> Result<(), BudgetFull> {
        if more == 0 {
            return Ok(());
        }
        let limit = self.budget.limit_bytes;
        self.budget
            .reserved_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |reserved| {
                reserved.checked_add(more).filter(|&total| total <= limit)
            })
            .map_err(|reserved| BudgetFull { reserved, limit })?;
        self.bytes += more;
        Ok(())
    }

    /// Bytes this reservation holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget
            .reserved_bytes
            .fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_fit_up_to_the_limit_and_are_given_back_when_dropped() {
        let budget = BodyBudget::new(100);
        let first = budget.reserve(60).expect("fits");
        let mut second = budget.reserve(40).expect("fits exactly");
        assert_eq!(
            budget.reserve(1).expect_err("full"),
            BudgetFull {
                reserved: 100,
                limit: 100
            }
        );
        assert!(second.grow(1).is_err());
        assert_eq!(second.bytes(), 40, "a refused growth keeps what was held");
        drop(first);
        assert_eq!(budget.reserved_bytes(), 40);
        second.grow(60).expect("room again");
        drop(second);
        assert_eq!(budget.reserved_bytes(), 0);
    }

    #[test]
    fn a_reservation_larger_than_the_limit_is_refused_without_overflowing() {
        let budget = BodyBudget::new(10);
        assert!(budget.reserve(11).is_err());
        let _held = budget.reserve(5).expect("fits");
        assert!(budget.reserve(usize::MAX).is_err());
        assert_eq!(budget.reserved_bytes(), 5);
    }
}
