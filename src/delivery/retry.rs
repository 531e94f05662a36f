//! The retry rules for one Groove call, all in [`decide`], and the backoff they use.
//!
//! | outcome | decision |
//! |---|---|
//! | 2xx | done |
//! | 429 | retry after max(`Retry-After`, backoff), up to [`RATE_LIMITED_ATTEMPTS`] 429s |
//! | 408, 503 (at least its `Retry-After`), not sent | retry with backoff, up to `max_attempts` |
//! | 500, 502, 504, or no answer after sending | idempotent method (GET, PUT, DELETE) or `retry_unsafe`: retry as above; POST/PATCH: ambiguous, it may have reached Groove |
//! | other status (other 4xx: rejected) | done |
//! | URL outside the base URL, a request that cannot be built (header, URL too long) | give up at once |
//!
//! 408 says the server did not receive the whole request, 503 and 429 that it refused to handle it (RFC 9110
//! §15.5.9, §15.6.4; RFC 6585 §4): nothing was done, so even a create is repeated. A 502 or 504 comes from a
//! gateway that passed the request on and then got a bad answer or none (RFC 9110 §15.6.3, §15.6.5): Groove
//! may have created the resource, exactly as after a 500 or a connection lost after sending.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::delivery::backoff::Backoff;
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
    /// Stop: the call may have reached Groove and repeating it could do it twice.
    Ambiguous { reason: String },
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
    /// Counts one more attempt and its outcome. A request refused here before any connection
    /// ([`CallError::is_local`]) is not an attempt: nothing was sent.
    pub fn record(&mut self, outcome: &Result<GrooveAnswer, CallError>) {
        if matches!(outcome, Err(error) if error.is_local()) {
            return;
        }
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

/// Decides what follows one attempt of a call with `method` (the table in the module docs). `retry_unsafe`
/// allows repeating a POST/PATCH that may have reached Groove (risking a duplicate). `attempts` includes this
/// attempt — an [`Attempts`], or a bare number from 1; `max_attempts` counts the first attempt and excludes 429s,
/// which have their own budget ([`RATE_LIMITED_ATTEMPTS`]). A retry after 429 or 503 waits at least the answer's
/// `Retry-After`.
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
            408 => retry.transient("groove answered 408", Duration::ZERO, rng),
            503 => retry.transient("groove answered 503", waited_for(answer), rng),
            500 | 502 | 504 if may_repeat => retry.transient(
                &format!("groove answered {}", answer.status),
                Duration::ZERO,
                rng,
            ),
            500 | 502 | 504 => not_repeated(method, &answer.status.to_string()),
            _ => Decision::Done,
        },
        Err(CallError::NotSent { reason }) => {
            retry.transient(&format!("request not sent: {reason}"), Duration::ZERO, rng)
        }
        Err(CallError::MaybeSent { reason }) if may_repeat => retry.transient(
            &format!("no answer after sending: {reason}"),
            Duration::ZERO,
            rng,
        ),
        Err(CallError::MaybeSent { reason }) => {
            not_repeated(method, &format!("no answer after sending: {reason}"))
        }
        Err(error @ (CallError::OutsideBaseUrl { .. } | CallError::Unbuildable { .. })) => {
            Decision::GiveUp {
                reason: error.to_string(),
            }
        }
    }
}

/// The backoff of Groove calls: the shared policy ([`Backoff`]) with this module's base and cap.
pub const BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);

/// Full jitter: uniform in `[0, min(BACKOFF_CAP, BACKOFF_BASE · 2^(attempt-1))]`, `attempt` counting from 1.
pub fn backoff(attempt: u32, rng: &mut impl Rng) -> Duration {
    BACKOFF.delay(attempt, rng)
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
                reason: format!(
                    "gave up after {} attempts: {what}",
                    self.attempts.total.max(counted)
                ),
            };
        }
        Decision::Retry {
            after: backoff(counted, rng).max(at_least),
        }
    }

    fn rate_limited(&self, at_least: Duration, rng: &mut impl Rng) -> Decision {
        let Attempts {
            total,
            rate_limited,
        } = self.attempts;
        let spent = rate_limited >= RATE_LIMITED_ATTEMPTS
            || total >= self.max_attempts.saturating_add(RATE_LIMITED_ATTEMPTS);
        if spent {
            return Decision::GiveUp {
                reason: format!(
                    "gave up after {total} attempts: groove kept answering 429 (rate limited)"
                ),
            };
        }
        Decision::Retry {
            after: backoff(rate_limited.max(1), rng).max(at_least),
        }
    }
}

fn waited_for(answer: &GrooveAnswer) -> Duration {
    retry_after(&answer.pacing_headers(), SystemTime::now()).unwrap_or(Duration::ZERO)
}

fn not_repeated(method: HttpMethod, why: &str) -> Decision {
    Decision::Ambiguous {
        reason: format!(
            "not retried: a {} may have reached groove ({why}); retrying could duplicate it",
            method.as_str().to_ascii_lowercase()
        ),
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    fn status(status: u16) -> Result<GrooveAnswer, CallError> {
        with_headers(status, &[])
    }

    fn with_headers(status: u16, headers: &[(&str, &str)]) -> Result<GrooveAnswer, CallError> {
        Ok(GrooveAnswer {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        http::HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            body: Vec::new(),
            latency: Duration::from_millis(3),
        })
    }

    fn maybe_sent() -> Result<GrooveAnswer, CallError> {
        Err(CallError::MaybeSent {
            reason: "operation timed out".to_string(),
        })
    }

    fn not_sent() -> Result<GrooveAnswer, CallError> {
        Err(CallError::NotSent {
            reason: "connection refused".to_string(),
        })
    }

    /// The decision for a first attempt out of five.
    fn first(
        method: HttpMethod,
        retry_unsafe: bool,
        outcome: &Result<GrooveAnswer, CallError>,
    ) -> Decision {
        decide(method, retry_unsafe, outcome, 1, 5, &mut rng())
    }

    fn is_retry(decision: &Decision) -> bool {
        matches!(decision, Decision::Retry { .. })
    }

    #[test]
    fn successes_and_refusals_are_final() {
        for method in HttpMethod::ALL {
            for code in [200, 201, 204, 301, 400, 401, 403, 404, 409, 422, 501, 505] {
                assert_eq!(
                    first(method, false, &status(code)),
                    Decision::Done,
                    "{method:?} {code}"
                );
            }
        }
    }

    #[test]
    fn transient_failures_are_retried_for_every_method() {
        for method in HttpMethod::ALL {
            for outcome in [status(408), status(429), status(503), not_sent()] {
                assert!(
                    is_retry(&first(method, false, &outcome)),
                    "{method:?} {outcome:?}"
                );
            }
        }
    }

    #[test]
    fn a_call_that_may_have_reached_groove_is_retried_only_when_repeating_is_harmless() {
        for outcome in [status(500), status(502), status(504), maybe_sent()] {
            for method in [HttpMethod::Get, HttpMethod::Put, HttpMethod::Delete] {
                assert!(
                    is_retry(&first(method, false, &outcome)),
                    "{method:?} {outcome:?}"
                );
            }
            for method in [HttpMethod::Post, HttpMethod::Patch] {
                assert!(
                    is_retry(&first(method, true, &outcome)),
                    "{method:?} {outcome:?} with retry_unsafe"
                );
                assert!(
                    matches!(first(method, false, &outcome), Decision::Ambiguous { .. }),
                    "{method:?} {outcome:?}"
                );
            }
        }
        assert_eq!(
            first(HttpMethod::Post, false, &status(500)),
            Decision::Ambiguous {
                reason:
                    "not retried: a post may have reached groove (500); retrying could duplicate it"
                        .to_string()
            }
        );
        assert_eq!(
            first(HttpMethod::Post, false, &status(504)),
            Decision::Ambiguous {
                reason:
                    "not retried: a post may have reached groove (504); retrying could duplicate it"
                        .to_string()
            }
        );
        assert_eq!(
            first(HttpMethod::Patch, false, &maybe_sent()),
            Decision::Ambiguous {
                reason: "not retried: a patch may have reached groove (no answer after sending: operation timed out); \
                         retrying could duplicate it"
                    .to_string()
            }
        );
    }

    #[test]
    fn a_request_that_cannot_be_sent_gives_up_at_once() {
        let outside = Err(CallError::OutsideBaseUrl {
            url: "https://evil.example/v1/tickets".to_string(),
            base: "https://api.groovehq.com/v1/".to_string(),
        });
        let header = Err(CallError::Unbuildable {
            reason: "the value of header x-bad holds characters an http header cannot carry"
                .to_string(),
        });
        for method in HttpMethod::ALL {
            for outcome in [&outside, &header] {
                let Decision::GiveUp { reason } = decide(method, true, outcome, 1, 20, &mut rng())
                else {
                    panic!("{method:?} {outcome:?} retried");
                };
                assert!(
                    reason.contains("outside the groove base url")
                        || reason.starts_with("request could not be built, so it was not sent: ")
                );
            }
        }
    }

    #[test]
    fn retry_after_sets_the_least_delay() {
        for code in [429, 503] {
            for _ in 0..50 {
                let outcome = with_headers(code, &[("Retry-After", "3")]);
                let Decision::Retry { after } = first(HttpMethod::Post, false, &outcome) else {
                    panic!("{code} not retried");
                };
                assert!(
                    after >= Duration::from_secs(3)
                        && after <= Duration::from_secs(3) + BACKOFF_BASE
                );
            }
        }
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let Decision::Retry { after } = first(
            HttpMethod::Get,
            false,
            &with_headers(429, &[("retry-after", &date)]),
        ) else {
            panic!("429 not retried");
        };
        assert!(
            after >= Duration::from_secs(28) && after <= Duration::from_secs(30),
            "{after:?}"
        );
    }

    #[test]
    fn max_attempts_ends_transient_retries() {
        let outcome = status(503);
        assert!(is_retry(&decide(
            HttpMethod::Get,
            false,
            &outcome,
            4,
            5,
            &mut rng()
        )));
        assert_eq!(
            decide(HttpMethod::Get, false, &outcome, 5, 5, &mut rng()),
            Decision::GiveUp {
                reason: "gave up after 5 attempts: groove answered 503".to_string()
            }
        );
        // One attempt allowed: nothing is retried; zero is read as one.
        for max_attempts in [0, 1] {
            assert!(!is_retry(&decide(
                HttpMethod::Get,
                false,
                &not_sent(),
                1,
                max_attempts,
                &mut rng()
            )));
        }
    }

    #[test]
    fn rate_limits_have_their_own_budget() {
        let refused = status(429);
        let attempts = |total, rate_limited| Attempts {
            total,
            rate_limited,
        };
        // 429s do not use up max_attempts …
        assert!(is_retry(&decide(
            HttpMethod::Post,
            false,
            &refused,
            attempts(30, 30),
            5,
            &mut rng()
        )));
        assert!(is_retry(&decide(
            HttpMethod::Post,
            false,
            &status(503),
            attempts(12, 10),
            5,
            &mut rng()
        )));
        // … but have a budget of their own.
        assert!(is_retry(&decide(
            HttpMethod::Post,
            false,
            &refused,
            attempts(49, 49),
            5,
            &mut rng()
        )));
        assert_eq!(
            decide(
                HttpMethod::Post,
                false,
                &refused,
                attempts(50, 50),
                5,
                &mut rng()
            ),
            Decision::GiveUp {
                reason: "gave up after 50 attempts: groove kept answering 429 (rate limited)"
                    .to_string()
            }
        );
        // A bare attempt number cannot tell 429s apart: they get max_attempts + 50 attempts in all.
        assert!(is_retry(&decide(
            HttpMethod::Get,
            false,
            &refused,
            54,
            5,
            &mut rng()
        )));
        assert!(!is_retry(&decide(
            HttpMethod::Get,
            false,
            &refused,
            55,
            5,
            &mut rng()
        )));
        assert!(!is_retry(&decide(
            HttpMethod::Get,
            false,
            &status(502),
            5,
            5,
            &mut rng()
        )));
    }

    #[test]
    fn attempts_count_429s_apart() {
        let mut attempts = Attempts::default();
        for outcome in [status(429), status(503), status(429), not_sent()] {
            attempts.record(&outcome);
        }
        assert_eq!(
            attempts,
            Attempts {
                total: 4,
                rate_limited: 2
            }
        );
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let mut rng = rng();
        for attempt in 0..=40u32 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1 << attempt.saturating_sub(1).min(16))
                .min(BACKOFF_CAP);
            let samples: Vec<Duration> = (0..2000).map(|_| backoff(attempt, &mut rng)).collect();
            let (least, most) = (samples.iter().min().unwrap(), samples.iter().max().unwrap());
            assert!(
                *most <= ceiling,
                "attempt {attempt}: {most:?} above {ceiling:?}"
            );
            // Full jitter: the whole range is used, down to nearly nothing and up to nearly the ceiling.
            assert!(
                *least < ceiling / 50 && *most > ceiling * 49 / 50,
                "attempt {attempt}: {least:?}..{most:?}"
            );
        }
        assert!(backoff(u32::MAX, &mut rng) <= BACKOFF_CAP);
        assert_eq!(
            BACKOFF_BASE.saturating_mul(1 << 7).min(BACKOFF_CAP),
            BACKOFF_CAP
        );
    }
}
