//! Commit in waves: the members of a batch run concurrently, and whatever has finished is
//! written together once it has waited a short while for the rest. A batch never waits for its
//! slowest member (an event whose Jira read takes its whole budget, a subscriber that takes its
//! whole timeout): that member goes out in a later wave, the others at normal latency.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinSet;

/// How long finished members wait for slower ones before they are committed without them.
pub const WAVE_WAIT: Duration = Duration::from_millis(50);

/// Members of a batch, each running as its own task, handed back in waves.
#[derive(Debug)]
pub struct Waves<T> {
    running: JoinSet<T>,
    wait: Duration,
}

impl<T: Send + 'static> Waves<T> {
    /// No members yet; finished ones wait `wait` for the others.
    pub fn new(wait: Duration) -> Self {
        Self {
            running: JoinSet::new(),
            wait,
        }
    }

    /// Starts a member (on the runtime, so it progresses while a wave is being written).
    pub fn spawn(&mut self, member: impl Future<Output = T> + Send + 'static) {
        self.running.spawn(member);
    }

    /// The next wave: the first member to finish and those finishing within the wait after
    /// it. `None` once every member has been handed back. A member that panicked is left out
    /// (its rows stay claimed; the sweeper hands them out again once the lease expires).
    pub async fn next_wave(&mut self) -> Option<Vec<T>> {
        let first = loop {
            match self.running.join_next().await? {
                Ok(first) => break first,
                Err(error) => tracing::error!(error = %error, "a batch member panicked"),
            }
        };
        let mut wave = vec![first];
        let deadline = tokio::time::Instant::now() + self.wait;
        while let Ok(Some(joined)) =
            tokio::time::timeout_at(deadline, self.running.join_next()).await
        {
            match joined {
                Ok(member) => wave.push(member),
                Err(error) => tracing::error!(error = %error, "a batch member panicked"),
            }
        }
        Some(wave)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_slow_member_goes_out_in_a_later_wave() {
        let mut waves = Waves::new(Duration::from_millis(30));
        for delay in [0, 5, 10] {
            waves.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                delay
            });
        }
        waves.spawn(async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            300
        });
        let mut first = waves.next_wave().await.expect("a wave");
        first.sort_unstable();
        assert_eq!(first, vec![0, 5, 10]);
        assert_eq!(waves.next_wave().await, Some(vec![300]));
        assert_eq!(waves.next_wave().await, None);
    }
}
