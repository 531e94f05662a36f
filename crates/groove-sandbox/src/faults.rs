//! Fault injection: the knobs ([`Faults`]), scripted answers ([`ScriptedAnswer`]) and the
//! per-call decision ([`FaultGate`]).
//!
//! Groove documents no rate limit at all (docs/groove-api.md §2), so the 429 shape, `Retry-After`
//! and the `X-RateLimit-*` headers produced here are our assumption of a typical API, chosen so the
//! client's retry and pacing paths can be exercised.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
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

/// One deterministic answer in [`Faults::script`]: the fate of one `/v1/` API call.
///
/// ```
/// use groove_sandbox::ScriptedAnswer;
/// let script = [
///     ScriptedAnswer::fail(503).with_retry_after(2), // refused, nothing happens
///     ScriptedAnswer::fail(500).once_processed(),    // done, but the answer says 500
///     ScriptedAnswer::drop_connection(),             // reset, nothing happens
/// ];
/// # let _ = script;
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptedAnswer {
    /// `429`, a `5xx`, or `0` to reset the connection without any HTTP response.
    pub status: u16,
    /// `false` (default): the call is refused before anything happens, like the random knobs.
    /// `true`: the call is carried out as usual (e.g. the ticket IS created) and only then is the
    /// fault answered instead of the real result: the "Groove did it but the answer was lost"
    /// case that makes retrying a POST dangerous (docs/groove-api.md §8).
    #[serde(default)]
    pub after_processing: bool,
    /// For 429 and 503 only: the `Retry-After` seconds to send; `None` sends no `Retry-After`.
    #[serde(default)]
    pub retry_after_s: Option<u32>,
}

impl ScriptedAnswer {
    /// Answer `status` (429 or 5xx) without carrying the call out.
    pub const fn fail(status: u16) -> Self {
        ScriptedAnswer {
            status,
            after_processing: false,
            retry_after_s: None,
        }
    }

    /// Reset the connection without carrying the call out.
    pub const fn drop_connection() -> Self {
        Self::fail(0)
    }

    /// The same answer, sent with `Retry-After: secs` (429 and 503 only).
    pub const fn with_retry_after(self, secs: u32) -> Self {
        ScriptedAnswer {
            retry_after_s: Some(secs),
            ..self
        }
    }

    /// The same answer, given only after the call has taken effect
    /// ([`after_processing`](Self::after_processing)).
    pub const fn once_processed(self) -> Self {
        ScriptedAnswer {
            after_processing: true,
            ..self
        }
    }

    fn validate(&self) -> Result<(), String> {
        if !(self.status == 0 || self.status == 429 || (500..=599).contains(&self.status)) {
            return Err(format!(
                "status must be 0 (drop the connection), 429 or 5xx, got {}",
                self.status
            ));
        }
        if self.retry_after_s.is_some() && !matches!(self.status, 429 | 503) {
            return Err(format!(
                "retry_after_s is only sent with 429 or 503, not with {}",
                self.status
            ));
        }
        Ok(())
    }
}

/// Runtime-adjustable failure knobs, applied only to `/v1/` API calls.
///
/// Each call first takes the next [`script`](Self::script) entry, if any; only calls the script
/// does not decide go through `drop_rate`, `rate_limit` and `error_rate` (in that order).
/// `latency` applies to every call. A call that is refused by the rate limit, by a scripted answer
/// without [`after_processing`](ScriptedAnswer::after_processing), or by `drop_rate` or
/// `error_rate` without being picked by [`processed_share`](Self::processed_share) has no side
/// effect on the sandbox's data.
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
    /// Share (0.0..=1.0) of the faults injected by `drop_rate` and `error_rate` that are carried
    /// out first (e.g. the ticket IS created) and only then answered with the fault, like a
    /// scripted answer with [`after_processing`](ScriptedAnswer::after_processing): the random
    /// "Groove did it but the answer was lost" case. 0 (default): every random fault refuses the
    /// call before anything happens. 429s from `rate_limit` and 503s (both say the call was not
    /// handled) are never carried out, and a dropped
    /// call picked here counts against `rate_limit` (it reached Groove) and is carried out only if
    /// the limit lets it through. Left out of the JSON while 0, so the faults of a sandbox that
    /// does not use it read as they did before it existed.
    #[serde(skip_serializing_if = "is_zero")]
    pub processed_share: f64,
    /// Deterministic answers, consumed one per `/v1/` API call in arrival (`seq`) order, before
    /// the random knobs. A call answered from the script neither consults nor counts against
    /// `drop_rate`, `rate_limit`, `error_rate` or `processed_share` (its own
    /// [`after_processing`](ScriptedAnswer::after_processing) decides), and carries no
    /// `X-RateLimit-*` headers.
    /// [`SandboxHandle::faults`](super::SandboxHandle::faults) and `GET /_sandbox/faults` show
    /// the entries not yet consumed; setting faults replaces the remaining script.
    pub script: Vec<ScriptedAnswer>,
    /// **Not Groove behaviour** (Groove has no bulk endpoint, docs/groove-api.md §7): when `true`,
    /// the sandbox simulates a bulk-capable gateway in front of Groove, for batching tests and
    /// benchmarks only. A JSON array sent to a create endpoint (`POST` tickets, messages, groups,
    /// webhooks, kb, articles, categories, widgets) then creates one resource per element, each
    /// validated as a single body would be; if any element is invalid nothing is created and the
    /// 422 names each bad element as `<plural>[<index>]: <problem>`. Success answers 201 with
    /// `{"<plural>": [...]}` (e.g. `tickets`, `knowledge_bases`) and no `Location`. The same
    /// wrapped shape is accepted as a request too: an object whose only key is the plural root
    /// key, holding an array. An empty array or a non-object element is a 400. When `false`
    /// (default), arrays are refused with 400 like Groove, and a wrapped body is an ordinary
    /// (invalid) single body.
    pub accept_batches: bool,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            rate_limit: None,
            error_rate: 0.0,
            error_statuses: vec![500, 502, 503],
            latency: Duration::ZERO,
            drop_rate: 0.0,
            processed_share: 0.0,
            script: Vec::new(),
            accept_batches: false,
        }
    }
}

impl Faults {
    /// Checks that rates are shares, that error statuses are 5xx and that every scripted answer
    /// is 0, 429 or 5xx (with `retry_after_s` only on 429 and 503).
    pub fn validate(&self) -> Result<(), FaultsError> {
        for (name, rate) in [
            ("error_rate", self.error_rate),
            ("drop_rate", self.drop_rate),
            ("processed_share", self.processed_share),
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
        for (index, answer) in self.script.iter().enumerate() {
            answer
                .validate()
                .map_err(|problem| FaultsError(format!("script[{index}]: {problem}")))?;
        }
        Ok(())
    }
}

fn is_zero(share: &f64) -> bool {
    *share == 0.0
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
    /// Reset the connection without answering; after carrying the call out if `after_processing`.
    Drop { after_processing: bool },
    /// Answer 429; the value is the whole seconds until the window resets (at least 1).
    RateLimited { retry_after_secs: u64 },
    /// Answer with this 5xx status; after carrying the call out if `after_processing`.
    Fail { status: u16, after_processing: bool },
}

/// Values for the `X-RateLimit-*` headers of one call.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LimitHeaders {
    pub limit: u32,
    pub remaining: u32,
    /// Unix epoch seconds at which the current window ends, rounded up.
    pub reset_epoch_secs: u64,
}

/// The gate every API call passes: holds the current knobs, the rest of the script and the
/// rate-limit window.
pub(crate) struct FaultGate {
    /// The knobs, with an always empty `script`: the script lives in `script`.
    faults: RwLock<Arc<Faults>>,
    script: Mutex<VecDeque<ScriptedAnswer>>,
    /// `script.len()`, so calls skip the script lock while no script is set.
    scripted: AtomicUsize,
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
        let gate = FaultGate {
            faults: RwLock::new(Arc::new(Faults::default())),
            script: Mutex::new(VecDeque::new()),
            scripted: AtomicUsize::new(0),
            window: Mutex::new(Window::fresh()),
        };
        gate.replace(faults);
        gate
    }

    /// The knobs in force now (without the script); one snapshot is used for a whole call so a
    /// concurrent change cannot half-apply.
    pub(crate) fn snapshot(&self) -> Arc<Faults> {
        match self.faults.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The knobs in force now with the part of the script not yet consumed.
    pub(crate) fn current(&self) -> Faults {
        let script = self.lock_script();
        let mut faults = self.snapshot().as_ref().clone();
        faults.script = script.iter().copied().collect();
        faults
    }

    /// Replaces the knobs and the remaining script, and starts a new rate-limit window.
    pub(crate) fn replace(&self, mut faults: Faults) {
        let script = std::mem::take(&mut faults.script);
        let faults = Arc::new(faults);
        // Under the script lock, so a call never pairs the new knobs with the old script.
        let mut queue = self.lock_script();
        match self.faults.write() {
            Ok(mut guard) => *guard = faults,
            Err(poisoned) => *poisoned.into_inner() = faults,
        }
        self.scripted.store(script.len(), Ordering::Release);
        *queue = script.into();
        drop(queue);
        *self.lock_window() = Window::fresh();
    }

    /// Runs `arrive` (which numbers the call) and takes the next scripted answer in one step, so
    /// scripted answers go to API calls in the order of their numbers.
    pub(crate) fn arrive<T>(&self, arrive: impl FnOnce() -> T) -> (T, Option<ScriptedAnswer>) {
        if self.scripted.load(Ordering::Acquire) == 0 {
            return (arrive(), None);
        }
        let mut script = self.lock_script();
        let arrival = arrive();
        let answer = script.pop_front();
        self.scripted.store(script.len(), Ordering::Release);
        (arrival, answer)
    }

    /// Decides the fate of one call. A dropped call that is not carried out does not consume
    /// rate-limit quota: it models a network failure that never reached Groove's limiter.
    pub(crate) fn decide(&self, faults: &Faults) -> (Verdict, Option<LimitHeaders>) {
        self.decide_with(faults, &mut rand::rng())
    }

    /// [`decide`](Self::decide) with the caller's randomness, so tests can seed it.
    fn decide_with(&self, faults: &Faults, rng: &mut impl Rng) -> (Verdict, Option<LimitHeaders>) {
        if hit(rng, faults.drop_rate) {
            let mut after_processing = hit(rng, faults.processed_share);
            if after_processing {
                if let Some(limit) = &faults.rate_limit {
                    // The call reached Groove, so Groove's limiter may refuse it: then nothing
                    // happened, and the 429 is lost with the connection.
                    after_processing = self.count_call(limit).0;
                }
            }
            return (Verdict::Drop { after_processing }, None);
        }
        let mut headers = None;
        if let Some(limit) = &faults.rate_limit {
            let (allowed, h, retry_after_secs) = self.count_call(limit);
            headers = Some(h);
            if !allowed {
                return (Verdict::RateLimited { retry_after_secs }, headers);
            }
        }
        if hit(rng, faults.error_rate) {
            let statuses = &faults.error_statuses;
            let status = if statuses.is_empty() {
                500
            } else {
                statuses[rng.random_range(0..statuses.len())]
            };
            // A 503 says the server did not handle the call (RFC 9110 §15.6.4): never carried out.
            let after_processing = status != 503 && hit(rng, faults.processed_share);
            return (
                Verdict::Fail {
                    status,
                    after_processing,
                },
                headers,
            );
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

    fn lock_window(&self) -> MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_script(&self) -> MutexGuard<'_, VecDeque<ScriptedAnswer>> {
        self.script
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
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::*;

    fn seeded() -> StdRng {
        StdRng::seed_from_u64(11)
    }

    /// How many of `calls` decisions carried the fault out, and how many were faults at all.
    fn carried_out(gate: &FaultGate, faults: &Faults, calls: usize) -> (usize, usize) {
        let mut rng = seeded();
        let (mut processed, mut faulted) = (0, 0);
        for _ in 0..calls {
            match gate.decide_with(faults, &mut rng).0 {
                Verdict::Drop { after_processing }
                | Verdict::Fail {
                    after_processing, ..
                } => {
                    faulted += 1;
                    processed += usize::from(after_processing);
                }
                Verdict::Pass | Verdict::RateLimited { .. } => {}
            }
        }
        (processed, faulted)
    }

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
    fn validates_scripts() {
        let ok = Faults {
            script: vec![
                ScriptedAnswer::drop_connection().once_processed(),
                ScriptedAnswer::fail(429).with_retry_after(3),
                ScriptedAnswer::fail(503).with_retry_after(1),
                ScriptedAnswer::fail(599),
            ],
            ..Faults::default()
        };
        assert!(ok.validate().is_ok());
        for bad in [
            ScriptedAnswer::fail(404),
            ScriptedAnswer::fail(200),
            ScriptedAnswer::fail(600),
            ScriptedAnswer::fail(500).with_retry_after(1),
            ScriptedAnswer::drop_connection().with_retry_after(1),
        ] {
            let faults = Faults {
                script: vec![ScriptedAnswer::fail(500), bad],
                ..Faults::default()
            };
            let err = faults.validate().unwrap_err().to_string();
            assert!(err.starts_with("script[1]: "), "{err}");
        }
    }

    #[test]
    fn script_is_consumed_in_order_and_shown_as_remaining() {
        let gate = FaultGate::new(Faults {
            script: vec![ScriptedAnswer::fail(503), ScriptedAnswer::drop_connection()],
            ..Faults::default()
        });
        assert!(gate.snapshot().script.is_empty());
        assert_eq!(gate.current().script.len(), 2);
        assert_eq!(gate.arrive(|| 1), (1, Some(ScriptedAnswer::fail(503))));
        assert_eq!(
            gate.current().script,
            vec![ScriptedAnswer::drop_connection()]
        );
        assert_eq!(gate.arrive(|| 2).1, Some(ScriptedAnswer::drop_connection()));
        assert_eq!(gate.arrive(|| 3), (3, None));
        assert!(gate.current().script.is_empty());
    }

    #[test]
    fn scripted_answers_deserialize_with_defaults() {
        let faults: Faults =
            serde_json::from_str(r#"{"script": [{"status": 503, "retry_after_s": 2}, {"status": 0, "after_processing": true}]}"#)
                .unwrap();
        assert_eq!(
            faults.script,
            vec![
                ScriptedAnswer::fail(503).with_retry_after(2),
                ScriptedAnswer::drop_connection().once_processed()
            ]
        );
        assert!(!faults.accept_batches);
        assert!(
            serde_json::from_str::<Faults>(r#"{"script": [{"status": 500, "later": true}]}"#)
                .is_err()
        );
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

    #[test]
    fn processed_share_is_validated_like_the_rates() {
        for bad in [-0.1, 1.5, f64::NAN] {
            let faults = Faults {
                processed_share: bad,
                ..Faults::default()
            };
            let err = faults.validate().unwrap_err().to_string();
            assert!(
                err.starts_with("processed_share must be between 0 and 1"),
                "{err}"
            );
        }
        for good in [0.0, 0.3, 1.0] {
            let faults = Faults {
                processed_share: good,
                ..Faults::default()
            };
            assert!(faults.validate().is_ok(), "{good}");
        }
    }

    #[test]
    fn processed_share_of_one_or_zero_decides_every_random_fault() {
        for knobs in [
            Faults {
                error_rate: 1.0,
                error_statuses: vec![500],
                ..Faults::default()
            },
            Faults {
                drop_rate: 1.0,
                ..Faults::default()
            },
        ] {
            let always = Faults {
                processed_share: 1.0,
                ..knobs.clone()
            };
            let gate = FaultGate::new(always.clone());
            assert_eq!(carried_out(&gate, &always, 50), (50, 50), "{always:?}");
            let never = Faults {
                processed_share: 0.0,
                ..knobs
            };
            let gate = FaultGate::new(never.clone());
            assert_eq!(carried_out(&gate, &never, 50), (0, 50), "{never:?}");
        }
        let gate = FaultGate::new(Faults::default());
        let mut rng = seeded();
        assert_eq!(
            gate.decide_with(
                &Faults {
                    error_rate: 1.0,
                    error_statuses: vec![502],
                    processed_share: 1.0,
                    ..Faults::default()
                },
                &mut rng
            )
            .0,
            Verdict::Fail {
                status: 502,
                after_processing: true
            }
        );
    }

    #[test]
    fn processed_share_picks_about_its_share_of_the_random_faults() {
        let faults = Faults {
            error_rate: 0.2,
            error_statuses: vec![500, 502, 504],
            drop_rate: 0.1,
            processed_share: 0.3,
            ..Faults::default()
        };
        let gate = FaultGate::new(faults.clone());
        let (processed, faulted) = carried_out(&gate, &faults, 10_000);
        // Seeded, so the counts are fixed; the bounds only say what the seed must look like.
        assert!((2_400..=3_200).contains(&faulted), "{faulted} faults");
        let share = processed as f64 / faulted as f64;
        assert!((0.25..=0.35).contains(&share), "{processed} of {faulted}");
    }

    #[test]
    fn a_503_is_never_carried_out() {
        let faults = Faults {
            error_rate: 1.0,
            error_statuses: vec![503],
            processed_share: 1.0,
            ..Faults::default()
        };
        let gate = FaultGate::new(faults.clone());
        assert_eq!(carried_out(&gate, &faults, 50), (0, 50));
    }

    #[test]
    fn rate_limited_calls_are_never_carried_out() {
        let faults = Faults {
            rate_limit: Some(RateLimit {
                calls: 1,
                window: Duration::from_secs(60),
            }),
            processed_share: 1.0,
            ..Faults::default()
        };
        let gate = FaultGate::new(faults.clone());
        let mut rng = seeded();
        assert_eq!(gate.decide_with(&faults, &mut rng).0, Verdict::Pass);
        assert!(matches!(
            gate.decide_with(&faults, &mut rng).0,
            Verdict::RateLimited { .. }
        ));
        // A dropped call that would be carried out meets the limiter too, and is refused by it.
        let dropping = Faults {
            drop_rate: 1.0,
            ..faults
        };
        assert_eq!(
            gate.decide_with(&dropping, &mut rng).0,
            Verdict::Drop {
                after_processing: false
            }
        );
    }

    #[test]
    fn a_carried_out_drop_uses_rate_limit_quota_and_a_plain_drop_does_not() {
        let limit = Some(RateLimit {
            calls: 1,
            window: Duration::from_secs(60),
        });
        let plain = Faults {
            rate_limit: limit,
            drop_rate: 1.0,
            ..Faults::default()
        };
        let gate = FaultGate::new(plain.clone());
        let mut rng = seeded();
        for _ in 0..3 {
            assert_eq!(
                gate.decide_with(&plain, &mut rng).0,
                Verdict::Drop {
                    after_processing: false
                }
            );
        }
        let carried = Faults {
            processed_share: 1.0,
            ..plain
        };
        assert_eq!(
            gate.decide_with(&carried, &mut rng).0,
            Verdict::Drop {
                after_processing: true
            }
        );
        let passing = Faults {
            rate_limit: limit,
            ..Faults::default()
        };
        assert!(matches!(
            gate.decide_with(&passing, &mut rng).0,
            Verdict::RateLimited { .. }
        ));
    }

    #[test]
    fn processed_share_is_serialised_only_when_set() {
        let json = serde_json::to_value(Faults::default()).unwrap();
        assert!(json.get("processed_share").is_none(), "{json}");
        let faults: Faults = serde_json::from_str(r#"{"processed_share": 0.25}"#).unwrap();
        assert_eq!(faults.processed_share, 0.25);
        let json = serde_json::to_value(&faults).unwrap();
        assert_eq!(json["processed_share"], 0.25);
        assert_eq!(serde_json::from_value::<Faults>(json).unwrap(), faults);
    }
}
