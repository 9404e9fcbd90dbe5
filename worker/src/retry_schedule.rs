//! When a failed delivery is attempted again: the configured schedule with jitter, stretched by a
//! subscriber's `Retry-After` within bounds.

use std::time::Duration;

use rand::Rng as _;

/// Longest `Retry-After` honoured; a subscriber asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// The delay before retry number `retry_index` (0-based), or None when the schedule is
/// exhausted. The scheduled delay gets ±20 % jitter; a `Retry-After` longer than that wins,
/// capped at [`MAX_RETRY_AFTER`] (a subscriber cannot make hookline wait longer than that, and
/// cannot make it retry sooner than the schedule).
pub fn next_delay(
    schedule: &[Duration],
    retry_index: usize,
    retry_after: Option<Duration>,
) -> Option<Duration> {
    let scheduled = *schedule.get(retry_index)?;
    let jitter = rand::rng().random_range(0.8..=1.2);
    let jittered = scheduled.mul_f64(jitter);
    Some(match retry_after {
        Some(asked) => jittered.max(asked.min(MAX_RETRY_AFTER)),
        None => jittered,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter_and_end() {
        let schedule = [Duration::from_secs(10), Duration::from_secs(100)];
        for _ in 0..50 {
            let first = next_delay(&schedule, 0, None).expect("a retry");
            assert!(first >= Duration::from_secs(8) && first <= Duration::from_secs(12));
        }
        assert!(next_delay(&schedule, 2, None).is_none());
    }

    #[test]
    fn retry_after_extends_the_delay_within_bounds() {
        let schedule = [Duration::from_secs(10)];
        let asked = next_delay(&schedule, 0, Some(Duration::from_secs(120))).expect("a retry");
        assert_eq!(asked, Duration::from_secs(120));
        let capped = next_delay(&schedule, 0, Some(Duration::from_secs(86_400))).expect("retry");
        assert_eq!(capped, MAX_RETRY_AFTER);
        let shorter = next_delay(&schedule, 0, Some(Duration::from_secs(1))).expect("a retry");
        assert!(shorter >= Duration::from_secs(8));
    }
}
