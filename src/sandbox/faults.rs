//! Fault injection: the knobs ([`Faults`]) and the per-call decision ([`FaultGate`]).
//!
//! Groove documents no rate limit at all (groove-api.md §2), so the 429 shape, `Retry-After` and
//! the `X-RateLimit-*` headers produced here are our assumption of a typical API, chosen so the
//! client's retry and pacing paths can be exercised.

use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use serde::{Deserialize, Serialize};

/// A fixed-window rate limit: at most `calls` API calls per `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls allowed per window; the call after that is answered 429.
    pub calls: u32,
    /// Window length, serialised as whole milliseconds in `window_ms`.
    #[serde(rename = "window_ms", with = "millis")]
    pub window: Duration,
}

impl FromStr for RateLimit {
    type Err = FaultsError;

    /// Parses `CALLS/WINDOW`, e.g. `50/1s`, `1000/500ms`, `600/1m`; a bare window is seconds.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            FaultsError(format!(
                "invalid rate limit {text:?}, expected CALLS/WINDOW like 50/1s"
            ))
        };
        let (calls, window) = text.trim().split_once('/').ok_or_else(invalid)?;
        let calls = calls.trim().parse::<u32>().map_err(|_| invalid())?;
        let window = parse_duration(window.trim()).ok_or_else(invalid)?;
        let limit = RateLimit { calls, window };
        limit.validate()?;
        Ok(limit)
    }
}

impl RateLimit {
    fn validate(&self) -> Result<(), FaultsError> {
        if self.window.is_zero() {
            return Err(FaultsError(
                "rate limit window must be longer than zero".into(),
            ));
        }
        Ok(())
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" | "sec" | "secs" => number,
        "ms" => number / 1000.0,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(secs).ok()
}

/// Runtime-adjustable failure knobs. Applied only to `/v1/` API calls; a call that is rate limited,
/// failed with a 5xx or dropped has no side effect on the sandbox's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fixed-window limit; `None` means unlimited and no `X-RateLimit-*` headers.
    pub rate_limit: Option<RateLimit>,
    /// Share (0.0..=1.0) of calls answered with a status from `error_statuses`.
    pub error_rate: f64,
    /// The 5xx statuses `error_rate` picks from uniformly.
    pub error_statuses: Vec<u16>,
    /// Delay added before every API call is answered (or dropped), serialised as `latency_ms`.
    #[serde(rename = "latency_ms", with = "millis")]
    pub latency: Duration,
    /// Share (0.0..=1.0) of calls whose TCP connection is reset without any HTTP response.
    pub drop_rate: f64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            error_rate: 0.0,
            error_statuses: vec![500, 502, 503],
            latency: Duration::ZERO,
            drop_rate: 0.0,
        }
    }
}

impl Faults {
    /// Checks that rates are shares and that error statuses are 5xx.
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(FaultsError(format!(
                    "{name} must be between 0 and 1, got {rate}"
                )));
            }
        }
        if let Some(bad) = self
            .error_statuses
            .iter()
            .find(|s| !(500..=599).contains(*s))
        {
            return Err(FaultsError(format!(
                "error_statuses must be 5xx, got {bad}"
            )));
        }
        if self.error_rate > 0.0 && self.error_statuses.is_empty() {
            return Err(FaultsError(
                "error_statuses must not be empty when error_rate is above 0".into(),
            ));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        Ok(())
    }
}

/// Why a [`Faults`] value was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FaultsError(String);

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

/// What to do with one API call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Handle the call normally.
    Pass,
    /// Reset the connection without answering.
    Drop,
    /// Answer 429; the value is the whole seconds until the window resets (at least 1).
    RateLimited { retry_after_secs: u64 },
    /// Answer with this 5xx status.
    Fail(u16),
}

/// Values for the `X-RateLimit-*` headers of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LimitHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Unix epoch seconds at which the current window ends, rounded up.
    pub reset_epoch_secs: u64,
}

/// The gate every API call passes: holds the current knobs and the rate-limit window.
pub(crate) struct FaultGate {
    faults: RwLock<Arc<Faults>>,
    window: Mutex<Window>,
}

struct Window {
    started: Instant,
    ends: SystemTime,
    count: u32,
}

impl Window {
    fn fresh() -> Self {
        Window {
            started: Instant::now(),
            ends: SystemTime::now(),
            count: 0,
        }
    }
}

impl FaultGate {
    pub(crate) fn new(faults: Faults) -> Self {
        FaultGate {
            faults: RwLock::new(Arc::new(faults)),
            window: Mutex::new(Window::fresh()),
        }
    }

    /// The knobs in force now; one snapshot is used for a whole call so a concurrent change cannot
    /// half-apply.
    pub(crate) fn snapshot(&self) -> Arc<Faults> {
        match self.faults.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Replaces the knobs and starts a new rate-limit window.
    pub(crate) fn replace(&self, faults: Faults) {
        let faults = Arc::new(faults);
        match self.faults.write() {
            Ok(mut guard) => *guard = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
        *self.lock_window() = Window::fresh();
    }

    /// Decides the fate of one call. A dropped call does not consume rate-limit quota: it models a
    /// network failure that never reached Groove's limiter.
    pub(crate) fn decide(&self, faults: &Faults) -> (Verdict, Option<LimitHeaders>) {
        let mut rng = rand::rng();
        if hit(&mut rng, faults.drop_rate) {
            return (Verdict::Drop, None);
        }
        let mut headers = None;
        if let Some(limit) = &faults.rate_limit {
            let (allowed, h, retry_after_secs) = self.count_call(limit);
            headers = Some(h);
            if !allowed {
                return (Verdict::RateLimited { retry_after_secs }, headers);
            }
        }
        if hit(&mut rng, faults.error_rate) {
            let statuses = &faults.error_statuses;
            let status = if statuses.is_empty() {
                500
            } else {
                statuses[rng.random_range(0..statuses.len())]
            };
            return (Verdict::Fail(status), headers);
        }
        (Verdict::Pass, headers)
    }

    fn count_call(&self, limit: &RateLimit) -> (bool, LimitHeaders, u64) {
        let now = Instant::now();
        let mut window = self.lock_window();
        if now.duration_since(window.started) >= limit.window || window.count == 0 {
            *window = Window {
                started: now,
                ends: SystemTime::now() + limit.window,
                count: 0,
            };
        }
        window.count = window.count.saturating_add(1);
        let allowed = window.count <= limit.calls;
        let left = (window.started + limit.window).saturating_duration_since(now);
        let headers = LimitHeaders {
            limit: limit.calls,
            remaining: limit.calls.saturating_sub(window.count),
            reset_epoch_secs: ceil_secs(window.ends.duration_since(UNIX_EPOCH).unwrap_or_default()),
        };
        (allowed, headers, ceil_secs(left).max(1))
    }

    fn lock_window(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn hit(rng: &mut impl Rng, rate: f64) -> bool {
    rate >= 1.0 || (rate > 0.0 && rng.random::<f64>() < rate)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}ms", self.calls, self.window.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rate_limits() {
        let limit: RateLimit = "50/1s".parse().unwrap();
        assert_eq!(
            limit,
            RateLimit {
                calls: 50,
                window: Duration::from_secs(1)
            }
        );
        let limit: RateLimit = "10/250ms".parse().unwrap();
        assert_eq!(limit.window, Duration::from_millis(250));
        assert_eq!(
            "5/2".parse::<RateLimit>().unwrap().window,
            Duration::from_secs(2)
        );
        assert!("5/0s".parse::<RateLimit>().is_err());
        assert!("x/1s".parse::<RateLimit>().is_err());
        assert!("5".parse::<RateLimit>().is_err());
    }

    #[test]
    fn window_refuses_beyond_quota() {
        let faults = Faults {
            rate_limit: Some(RateLimit {
                calls: 2,
                window: Duration::from_secs(60),
            }),
            ..Faults::default()
        };
        let gate = FaultGate::new(faults.clone());
        assert_eq!(gate.decide(&faults).0, Verdict::Pass);
        let (verdict, headers) = gate.decide(&faults);
        assert_eq!(verdict, Verdict::Pass);
        assert_eq!(headers.unwrap().remaining, 0);
        match gate.decide(&faults).0 {
            Verdict::RateLimited { retry_after_secs } => {
                assert!((1..=60).contains(&retry_after_secs))
            }
            other => panic!("expected 429, got {other:?}"),
        }
    }

    #[test]
    fn validates_knobs() {
        assert!(Faults::default().validate().is_ok());
        assert!(Faults {
            error_rate: 1.5,
            ..Faults::default()
        }
        .validate()
        .is_err());
        assert!(Faults {
            error_statuses: vec![404],
            ..Faults::default()
        }
        .validate()
        .is_err());
    }

    #[test]
    fn serde_uses_millis() {
        let faults = Faults {
            rate_limit: Some(RateLimit {
                calls: 3,
                window: Duration::from_millis(1500),
            }),
            latency: Duration::from_millis(20),
            ..Faults::default()
        };
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["latency_ms"], 20);
        assert_eq!(json["rate_limit"]["window_ms"], 1500);
        let back: Faults = serde_json::from_value(json).unwrap();
        assert_eq!(back, faults);
        let partial: Faults = serde_json::from_str(r#"{"error_rate": 0.5}"#).unwrap();
        assert_eq!(partial.error_statuses, vec![500, 502, 503]);
    }
}
