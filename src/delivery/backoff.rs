//! The one backoff policy of every retry loop: Groove calls (`retry`), the recorder's store writes and the
//! response webhook.
//!
//! Exponential with full jitter: the wait before retry `n` (counting from 1) is uniform in
//! `[0, min(cap, base · 2^(n-1))]`. Jitter spreads the retries of calls that failed together, so they do not
//! come back as one wave. A dozen lines, so written here rather than taken from `backon`/`backoff`: those
//! drive the loop themselves (a closure per attempt), while the Groove retry rules decide per answer and mix
//! in `Retry-After`, which needs only the delay.
//!
//! The pacer's pause of a whole credential after refusals (`groove/pacer.rs`) is not a retry loop: it spaces
//! every caller of the credential, and is deterministic so that they leave one spacing apart.

use std::time::Duration;

use rand::Rng;

/// Exponential backoff with full jitter, capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
}

impl Backoff {
    /// Ceilings `base`, `2·base`, `4·base`, … up to `cap`.
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Backoff { base, cap }
    }

    /// Longest wait before retry `attempt` (from 1; 0 counts as 1).
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let doublings = attempt.saturating_sub(1).min(31);
        self.base.saturating_mul(1 << doublings).min(self.cap)
    }

    /// The wait before retry `attempt`: uniform in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let nanos = u64::try_from(self.ceiling(attempt).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Sleeps [`Backoff::delay`] before retry `attempt`, drawn from the thread's generator.
    pub async fn wait(&self, attempt: u32) {
        let delay = self.delay(attempt, &mut rand::rng());
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn ceilings_double_up_to_the_cap() {
        let backoff = Backoff::new(100 * MS, 1_000 * MS);
        let ceilings: Vec<Duration> = (0..=6).map(|n| backoff.ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100, 100, 200, 400, 800, 1_000, 1_000].map(|ms| ms * MS)
        );
        assert_eq!(backoff.ceiling(u32::MAX), 1_000 * MS);
        let huge = Backoff::new(Duration::MAX, Duration::MAX);
        assert_eq!(huge.ceiling(40), Duration::MAX);
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let backoff = Backoff::new(100 * MS, 10_000 * MS);
        let mut rng = StdRng::seed_from_u64(7);
        for attempt in 1..=10 {
            let delays: Vec<Duration> =
                (0..200).map(|_| backoff.delay(attempt, &mut rng)).collect();
            let ceiling = backoff.ceiling(attempt);
            assert!(delays.iter().all(|delay| *delay <= ceiling));
            // Full jitter: the whole range is used, not only its top.
            assert!(delays.iter().any(|delay| *delay < ceiling / 4), "{attempt}");
            assert!(
                delays.iter().any(|delay| *delay > ceiling * 3 / 4),
                "{attempt}"
            );
        }
        assert_eq!(
            Backoff::new(Duration::ZERO, MS).delay(3, &mut rng),
            Duration::ZERO
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waits_stay_within_their_ceilings() {
        let backoff = Backoff::new(200 * MS, 1_000 * MS);
        for attempt in 1..=5 {
            let began = tokio::time::Instant::now();
            backoff.wait(attempt).await;
            assert!(began.elapsed() <= backoff.ceiling(attempt), "{attempt}");
        }
    }
}
