//! The retry rules for one Groove call, all in [`decide`], and the backoff they use.
//!
//! | outcome | decision |
//! |---|---|
//! | 2xx | done |
//! | 429 | retry after max(`Retry-After`, backoff), up to [`RATE_LIMITED_ATTEMPTS`] 429s |
//! | 408, 502, 504, 503 (at least its `Retry-After`), not sent | retry with backoff, up to `max_attempts` |
//! | 500, or no answer after sending | idempotent method (GET, PUT, DELETE) or `retry_unsafe`: retry as above; POST/PATCH: failed, it may have reached Groove |
//! | other status (other 4xx: rejected) | done |
//! | URL outside the base URL, invalid header | give up at once |

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::domain::destination::HttpMethod;
use crate::groove::{retry_after, CallError, GrooveAnswer};

/// Ceiling of the first backoff: a blip should cost little.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Largest backoff ceiling: longer waits mostly hold up the records queued behind this one (per-key order),
/// and the pacer already slows the whole credential down when Groove says so.
pub const BACKOFF_CAP: Duration = Duration::from_secs(10);
/// 429s one call may meet before it fails. Counted apart from `max_attempts` because a rate-limit storm must end
/// with everything delivered: the pacer pauses the credential on each 429, so 50 of them mean minutes of
/// refusals, which is no longer a storm but a misconfiguration.
pub const RATE_LIMITED_ATTEMPTS: u32 = 50;

/// What to do after one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The answer is final: a success or a refusal that retrying cannot change.
    Done,
    /// Send the call again after this delay.
    Retry { after: Duration },
    /// Stop: the call failed, for this reason.
    GiveUp { reason: String },
}

/// The attempts one call has made so far, this one included.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Attempts {
    /// Every attempt, counting from 1.
    pub total: u32,
    /// Of those, the ones Groove answered 429.
    pub rate_limited: u32,
}

impl Attempts {
    /// Counts one more attempt and its outcome.
    pub fn record(&mut self, outcome: &Result<GrooveAnswer, CallError>) {
        self.total = self.total.saturating_add(1);
        if matches!(outcome, Ok(answer) if answer.status == 429) {
            self.rate_limited = self.rate_limited.saturating_add(1);
        }
    }

    /// Attempts that count against `max_attempts`: all but the 429s.
    fn counted(&self) -> u32 {
        self.total.saturating_sub(self.rate_limited).max(1)
    }
}

/// A bare attempt number (from 1), when 429s were not counted apart: every attempt then counts against
/// `max_attempts`, and a 429 may be retried up to `max_attempts + RATE_LIMITED_ATTEMPTS` attempts in all.
impl From<u32> for Attempts {
    fn from(total: u32) -> Self {
        Attempts {
            total,
            rate_limited: 0,
        }
    }
}

/// Decides what follows one attempt of a call with `method`. `retry_unsafe` allows repeating a POST/PATCH that
/// may have reached Groove (risking a duplicate). `attempts` includes this attempt; `max_attempts` counts the
/// first one and excludes 429s, which have their own budget ([`RATE_LIMITED_ATTEMPTS`]).
pub fn decide(
    method: HttpMethod,
    retry_unsafe: bool,
    outcome: &Result<GrooveAnswer, CallError>,
    attempts: impl Into<Attempts>,
    max_attempts: u32,
    rng: &mut impl Rng,
) -> Decision {
    let attempts = attempts.into();
    let retry = Budget {
        attempts,
        max_attempts: max_attempts.max(1),
    };
    let may_repeat = method.is_idempotent() || retry_unsafe;
    match outcome {
        Ok(answer) => match answer.status {
            200..=299 => Decision::Done,
            429 => retry.rate_limited(waited_for(answer), rng),
            408 | 502 | 504 => retry.transient(&format!("groove answered {}", answer.status), Duration::ZERO, rng),
            503 => retry.transient("groove answered 503", waited_for(answer), rng),
            500 if may_repeat => retry.transient("groove answered 500", Duration::ZERO, rng),
            500 => not_repeated(method, "500"),
            _ => Decision::Done,
        },
        Err(CallError::NotSent { reason }) => retry.transient(&format!("request not sent: {reason}"), Duration::ZERO, rng),
        Err(CallError::MaybeSent { reason }) if may_repeat => {
            retry.transient(&format!("no answer after sending: {reason}"), Duration::ZERO, rng)
        }
        Err(CallError::MaybeSent { reason }) => not_repeated(method, &format!("no answer after sending: {reason}")),
        Err(error @ (CallError::OutsideBaseUrl { .. } | CallError::InvalidHeader { .. })) => Decision::GiveUp {
            reason: error.to_string(),
        },
    }
}

/// Full jitter: uniform in `[0, min(BACKOFF_CAP, BACKOFF_BASE · 2^(attempt-1))]`, `attempt` counting from 1.
/// Jitter spreads the retries of calls that failed together.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    let doublings = attempt.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << doublings).min(BACKOFF_CAP);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

struct Budget {
    attempts: Attempts,
    max_attempts: u32,
}

impl Budget {
    fn transient(&self, what: &str, at_least: Duration, rng: &mut impl Rng) -> Decision {
        let counted = self.attempts.counted();
        if counted >= self.max_attempts {
            return Decision::GiveUp {
                reason: format!("gave up after {counted} attempts: {what}"),
            };
        }
        Decision::Retry {
            after: backoff(counted, rng).max(at_least),
        }
    }

    fn rate_limited(&self, at_least: Duration, rng: &mut impl Rng) -> Decision {
        let Attempts { total, rate_limited } = self.attempts;
        let spent = rate_limited >= RATE_LIMITED_ATTEMPTS
            || total >= self.max_attempts.saturating_add(RATE_LIMITED_ATTEMPTS);
        if spent {
            return Decision::GiveUp {
                reason: format!("gave up after {total} attempts: groove kept answering 429 (rate limited)"),
            };
        }
        Decision::Retry {
            after: backoff(rate_limited.max(1), rng).max(at_least),
        }
    }
}

fn waited_for(answer: &GrooveAnswer) -> Duration {
    retry_after(&answer.headers, SystemTime::now()).unwrap_or(Duration::ZERO)
}

fn not_repeated(method: HttpMethod, why: &str) -> Decision {
    Decision::GiveUp {
        reason: format!(
            "not retried: a {} may have reached groove ({why}); retrying could duplicate it",
            method.as_str().to_ascii_lowercase()
        ),
    }
}
