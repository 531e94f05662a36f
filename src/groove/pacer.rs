//! Client-side pacing of the calls made with one credential: one [`Pacer`] per credential, shared by every
//! destination that uses it (see [`PacerRegistry`]).
//!
//! Groove documents no rate limit (docs/groove-api.md §2), so the pacer learns from its answers:
//!
//! 1. **Rate-limit headers** (`X-RateLimit-Limit/-Remaining/-Reset`, or the draft `RateLimit-*` names), when
//!    present, describe a fixed window. The calls still allowed in it (Remaining minus our calls in flight) are
//!    spread evenly until the window's end; with none left, calls wait until the window has surely ended. Reset
//!    may be whole epoch seconds (up to 1 s off), so the window's length is learned too: the last call counted
//!    in a window and the first call counted in the next bracket its end. While the bracket is wide each window
//!    places its last call in its middle — a bisection — so within a few windows the steady state is `limit`
//!    calls per learned length (plus a margin for jitter), not a reaction to Reset's rounding.
//! 2. **429, or 503 with `Retry-After`**: every call of the credential waits until `Retry-After` (seconds or an
//!    HTTP date) or, without it, 1 s, 2 s, 4 s … 60 s; then calls resume one spacing apart, never all at once.
//! 3. **No header info**: after such a pause the pacer slow-starts at half the rate that met the refusal (at
//!    most 20/s) and grows by 1/16 per OK answer up to 90% of that rate, then by about 1% per second. A later
//!    refusal during the fast growth halves the rate; one during the slow growth resumes at 90% of it.
//! 4. Never faster than the configured maximum rate; with nothing learned and no maximum, `acquire` returns at
//!    once.
//!
//! Waiters queue in arrival order and only the first sleeps, so a pause releases them one spacing apart.
//!
//! Replicas calling with the same credential share its account's limit ([`PacerRegistry::shared`]):
//! - Every call, once this pacer released it, also takes a slot in the account's one line of calls
//!   ([`CallLine`], kept in the shared store), at least the account's spacing after the slot before it,
//!   whichever replica took that. The replicas' calls then form one evenly spaced line, as one caller's would,
//!   however their own schedules fall, and a replica that stops sending leaves its slots to the others at once.
//!   The account's spacing is the maximum rate's, or a learned window's length over its calls.
//! - In such a line Remaining tells a call's place in its window, so the window's opening is placed that many
//!   spacings before the call, whichever replica made the calls in between: each replica learns the window's
//!   length from its own calls alone.
//! - Until its first answer a shared pacer keeps one call in flight, so that a replica joining a busy account
//!   learns where the account stands before it spends anything rather than after a burst of refusals. That
//!   call takes no slot, its spacing being unknown, but the line is told of it ([`CallLine::note_unspaced`])
//!   and places the next slot one spacing further: replicas starting together send one such call each, all
//!   counted in the window they open.
//! - A pause a pacer begins on its own refusal is announced ([`PacerRegistry::throttles`]) so that the other
//!   replicas' pacers pause too ([`Pacer::pause_until`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::{broadcast, Notify};
use tokio::time::{sleep_until, Instant};

use crate::metrics::{CredentialMetrics, Metrics};

/// The longest wait a `Retry-After` can impose: a bigger value is more likely a bug than a plan.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);
/// The longest a call waits for the line to answer; after that it goes by this pacer's own spacing.
const LINE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a probing pacer's only waiter sleeps before looking again, should the probe's answer never come.
const PROBE_RECHECK: Duration = Duration::from_millis(100);
/// Pauses announced and not yet taken by the registry's listener; older ones are dropped first.
const THROTTLES_BUFFERED: usize = 256;
/// A pause heard from another replica that ends at most this much after the current one is the same pause:
/// wall clocks and delivery delays differ a little between replicas.
const SAME_PAUSE: Duration = Duration::from_millis(100);
/// Pause after a refusal without `Retry-After`; it doubles with each refusal in a row.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A Reset at least this big is unix-epoch seconds; a smaller one is seconds until the reset.
const EPOCH_RESET: f64 = 1e9;
/// The farthest Reset we believe: a day (a longer window is more likely a bug than a plan).
const MAX_RESET_AHEAD: Duration = Duration::from_secs(86_400);
/// Reset's resolution: whole seconds, rounded either way by the servers we know.
const RESET_ROUNDING: Duration = Duration::from_secs(1);
/// Timers fire late (tokio's resolution is 1 ms, a busy runtime adds more); a release up to this late still
/// counts from its slot, so lateness does not erode the rate.
const CATCH_UP: Duration = Duration::from_millis(5);
/// Slack added to a learned window end before sending into the next window: covers jitter between our clock
/// and the order in which Groove counts calls.
const MIN_BOUNDARY_MARGIN: Duration = Duration::from_millis(3);
const BOUNDARY_MARGIN_SHARE: u32 = 100;
/// Round-trip mean deviations that cover the spread of one-way latencies.
const JITTER_DEVIATIONS: f64 = 6.0;
/// Slow start (no header info): first rate after a refusal is half the refused rate, within these bounds.
const SLOW_START_MAX_RATE: f64 = 20.0;
const SLOW_START_MIN_RATE: f64 = 0.5;
/// First rate when the refused rate is unknown (a refusal before two calls were made).
const SLOW_START_UNKNOWN_RATE: f64 = 5.0;
const SLOW_START_GROWTH: f64 = 1.0 / 16.0;
const SLOW_START_CEILING_SHARE: f64 = 0.9;
const PROBE_GROWTH_PER_SEC: f64 = 0.01;

/// Paces the calls made with one credential. Share it through an `Arc`; see the module docs for the rules.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
    /// Waiters line up here in arrival order; only the one holding it sleeps on the schedule.
    turn: tokio::sync::Mutex<()>,
    /// Wakes the sleeping waiter when the schedule moves earlier (a fresh window, a higher maximum rate).
    earlier: Notify,
    /// Permits alive: calls released whose answer has not been observed yet.
    in_flight: AtomicU32,
    /// No answer observed yet and other replicas may be calling: one call at a time (see the module docs).
    probing: AtomicBool,
    /// The account's line shared with other replicas, with this pacer's credential id.
    line: Option<(String, Arc<dyn CallLine>)>,
    metrics: CredentialMetrics,
    /// Where the pauses this pacer begins on its own are announced, with its credential's id.
    throttles: Option<(String, broadcast::Sender<Throttle>)>,
}

/// The line of call slots an account's calls take across replicas (see the module docs).
pub trait CallLine: Send + Sync + std::fmt::Debug {
    /// Takes the next slot of `credential_id`'s line, at least `gap` after the slot before it; returns how long
    /// until it, or `None` when the line cannot be reached (the reason is logged by the line).
    fn reserve<'a>(
        &'a self,
        credential_id: &'a str,
        gap: Duration,
    ) -> BoxFuture<'a, Option<Duration>>;

    /// Tells the line that a call of `credential_id` leaves now without a slot, before anything told its
    /// pacer the account's spacing; the line charges it to the next slot taken with a gap. A line that cannot
    /// be reached logs why.
    fn note_unspaced<'a>(&'a self, credential_id: &'a str) -> BoxFuture<'a, ()>;
}

/// A pause a pacer began because Groove refused one of its calls for the rate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Throttle {
    pub credential_id: String,
    /// When calls may resume, by the wall clock (other replicas read it by theirs).
    pub until: SystemTime,
}

/// One released call. Hold it while the call is in flight and hand Groove's answer to [`Permit::observe`]:
/// the pacer then knows when the call left and how many others are still out. Dropping it without an answer
/// (a connection error, a cancelled call) is fine.
#[derive(Debug)]
pub struct Permit<'a> {
    pacer: &'a Pacer,
    release: Release,
}

impl Pacer {
    /// A pacer that never exceeds `max_rate_per_sec` calls per second (`None`, zero, negative or non-finite:
    /// no maximum) and otherwise learns from the answers it observes.
    pub fn new(max_rate_per_sec: Option<f64>) -> Self {
        Self::with_metrics(max_rate_per_sec, CredentialMetrics::default())
    }

    /// [`Pacer::new`], recording its waits, its rate and the 429s it sees into `metrics`.
    pub fn with_metrics(max_rate_per_sec: Option<f64>, metrics: CredentialMetrics) -> Self {
        Pacer {
            state: Mutex::new(State::new(min_interval(max_rate_per_sec), Instant::now())),
            turn: tokio::sync::Mutex::new(()),
            earlier: Notify::new(),
            in_flight: AtomicU32::new(0),
            probing: AtomicBool::new(false),
            line: None,
            metrics,
            throttles: None,
        }
    }

    /// Pauses every call until `until` (wall clock), as a refusal with that `Retry-After` would: another
    /// replica's call was refused. A pause already lasting as long changes nothing.
    pub fn pause_until(&self, until: SystemTime) {
        let Ok(wait) = until.duration_since(SystemTime::now()) else {
            return;
        };
        self.lock()
            .pause_for(Instant::now(), wait.min(MAX_RETRY_AFTER));
    }

    /// When this pacer last released a call.
    pub fn last_release(&self) -> Option<Instant> {
        self.lock().last_release
    }

    /// Changes the maximum rate; takes effect from the next release.
    pub fn set_max_rate(&self, max_rate_per_sec: Option<f64>) {
        let interval = min_interval(max_rate_per_sec);
        let looser = {
            let mut state = self.lock();
            let looser = interval < state.min_interval;
            state.min_interval = interval;
            looser
        };
        if looser {
            self.earlier.notify_waiters();
        }
    }

    /// Waits for this call's turn. Turns are handed out in call order, one spacing apart. Cancellation-safe:
    /// a dropped waiter leaves the line without holding anyone up.
    pub async fn acquire(&self) -> Permit<'_> {
        // `try_lock` cannot jump the line: tokio hands a released lock to the first waiter.
        // Set once this call has to wait: an unpaced call reads no clock for the metrics.
        let mut waiting_since = None;
        let _turn = match self.turn.try_lock() {
            Ok(turn) => turn,
            Err(_) => {
                waiting_since = Some(Instant::now());
                self.turn.lock().await
            }
        };
        loop {
            // Registered before looking at the schedule, so a change made right after is not missed.
            let earlier = self.earlier.notified();
            let in_flight = self.in_flight.load(Ordering::Relaxed);
            let now = Instant::now();
            let (released, spacing) = if in_flight > 0 && self.probing.load(Ordering::Relaxed) {
                (Err(now + PROBE_RECHECK), Duration::ZERO)
            } else {
                let mut state = self.lock();
                let released = state.try_release(now, in_flight);
                (released, state.spacing_used)
            };
            let wake = match released {
                Ok(release) => {
                    self.in_flight.fetch_add(1, Ordering::Relaxed);
                    let mut permit = Permit {
                        pacer: self,
                        release,
                    };
                    // Still holding the turn: the next caller takes its slot after this one.
                    let probe = self.probing.load(Ordering::Relaxed);
                    if let Some(slot) = self.wait_for_line(probe).await {
                        // The slot, not the moment this task woke: a late wake-up then shows in the round
                        // trips, and so in the margin kept before each window's end.
                        permit.release.at = slot;
                        if slot > now {
                            waiting_since.get_or_insert(now);
                        }
                    }
                    if let Some(since) = waiting_since {
                        self.metrics
                            .pacer_wait(permit.release.at.saturating_duration_since(since));
                    }
                    self.metrics
                        .pacer_rate((!spacing.is_zero()).then(|| 1.0 / spacing.as_secs_f64()));
                    return permit;
                }
                Err(wake) => wake,
            };
            waiting_since.get_or_insert(now);
            tokio::select! {
                () = sleep_until(wake) => {}
                () = earlier => {}
            }
        }
    }

    /// Takes this call's slot in the account's line and waits for it; returns the slot. Without a line, or
    /// before anything tells the account's spacing, there is nothing to wait for; a `probe` (a call before
    /// this pacer's first answer) is then still counted by the line, which other replicas may be filling.
    async fn wait_for_line(&self, probe: bool) -> Option<Instant> {
        let (credential_id, line) = self.line.as_ref()?;
        let gap = self.lock().account_gap();
        if gap.is_zero() {
            if probe
                && tokio::time::timeout(LINE_TIMEOUT, line.note_unspaced(credential_id))
                    .await
                    .is_err()
            {
                tracing::warn!(credential = %credential_id,
                    "the shared call line did not answer in time; calling without telling it");
            }
            return None;
        }
        match tokio::time::timeout(LINE_TIMEOUT, line.reserve(credential_id, gap)).await {
            Ok(Some(wait)) => {
                let slot = Instant::now() + wait;
                sleep_until(slot).await;
                Some(slot)
            }
            Ok(None) => None,
            Err(_) => {
                tracing::warn!(
                    credential = %credential_id,
                    "the shared call line did not answer in time; calling by this replica's own spacing"
                );
                None
            }
        }
    }

    /// Learns from an answer without its permit. Prefer [`Permit::observe`]: without the release time and the
    /// calls in flight the pacer can only assume the call left just now and nothing else is out, which costs
    /// 429s when latency is high.
    pub fn observe(&self, status: u16, headers: &[(String, String)]) {
        self.observe_at(status, headers, SystemTime::now());
    }

    /// [`Pacer::observe`] with the wall-clock time to read epoch `X-RateLimit-Reset` and HTTP-date
    /// `Retry-After` against.
    pub fn observe_at(&self, status: u16, headers: &[(String, String)], wall_now: SystemTime) {
        self.learn(status, headers, None, wall_now);
    }

    fn learn(
        &self,
        status: u16,
        headers: &[(String, String)],
        release: Option<Release>,
        wall_now: SystemTime,
    ) {
        if status == 429 {
            self.metrics.rate_limited();
        }
        let answer = Answer {
            status,
            headers,
            release,
            now: Instant::now(),
            wall_now,
            others_in_flight: self.in_flight.load(Ordering::Relaxed),
        };
        let observed = self.lock().observe(&answer);
        let probed = self.probing.swap(false, Ordering::Relaxed);
        if observed.earlier || probed {
            self.earlier.notify_waiters();
        }
        if let (Some(wait), Some((credential_id, throttles))) = (observed.paused, &self.throttles) {
            // Nobody listening (one replica alone) is fine.
            let _ = throttles.send(Throttle {
                credential_id: credential_id.clone(),
                until: wall_now + wait,
            });
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Permit<'_> {
    /// When the pacer released this call.
    pub fn sent_at(&self) -> Instant {
        self.release.at
    }

    /// Learns from Groove's answer to this call.
    pub fn observe(self, status: u16, headers: &[(String, String)]) {
        self.observe_at(status, headers, SystemTime::now());
    }

    /// [`Permit::observe`] with the wall-clock time to read epoch `X-RateLimit-Reset` and HTTP-date
    /// `Retry-After` against.
    pub fn observe_at(self, status: u16, headers: &[(String, String)], wall_now: SystemTime) {
        let (pacer, release) = (self.pacer, self.release);
        // Dropped first: this call is no longer in flight when its answer is weighed.
        drop(self);
        pacer.learn(status, headers, Some(release), wall_now);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        self.pacer.in_flight.fetch_sub(1, Ordering::Relaxed);
        if self.pacer.probing.load(Ordering::Relaxed) {
            // The probe ended without an answer (observed ones end probing first): the next call may go.
            self.pacer.earlier.notify_waiters();
        }
    }
}

/// One pacer per credential, created on first use and shared afterwards.
#[derive(Debug)]
pub struct PacerRegistry {
    pacers: Mutex<HashMap<String, Arc<Pacer>>>,
    metrics: Option<Arc<Metrics>>,
    throttles: broadcast::Sender<Throttle>,
    /// The account lines shared with other replicas (see the module docs); `None` alone.
    line: Option<Arc<dyn CallLine>>,
}

impl Default for PacerRegistry {
    fn default() -> Self {
        Self::with_metrics(None)
    }
}

impl PacerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry whose pacers record into `metrics` (`None`: metrics are off).
    pub fn with_metrics(metrics: Option<Arc<Metrics>>) -> Self {
        PacerRegistry {
            pacers: Mutex::default(),
            metrics,
            throttles: broadcast::Sender::new(THROTTLES_BUFFERED),
            line: None,
        }
    }

    /// A registry for a replica among others: its pacers take every call's slot from `line` and probe before
    /// they call (see the module docs).
    pub fn shared(metrics: Option<Arc<Metrics>>, line: Arc<dyn CallLine>) -> Self {
        PacerRegistry {
            line: Some(line),
            ..Self::with_metrics(metrics)
        }
    }

    /// Every pause a pacer of this registry begins on a refusal of its own, from now on.
    pub fn throttles(&self) -> broadcast::Receiver<Throttle> {
        self.throttles.subscribe()
    }

    /// The pacer of `credential_id`, if one was made.
    pub fn get(&self, credential_id: &str) -> Option<Arc<Pacer>> {
        self.pacers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(credential_id)
            .cloned()
    }

    /// Every pacer made so far, with its credential's id.
    pub fn all(&self) -> Vec<(String, Arc<Pacer>)> {
        self.pacers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(id, pacer)| (id.clone(), Arc::clone(pacer)))
            .collect()
    }

    /// The pacer of `credential_id`. `max_rate` applies to it from now on (the latest setting wins).
    pub fn pacer(&self, credential_id: &str, max_rate: Option<f64>) -> Arc<Pacer> {
        let mut pacers = self.pacers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(pacer) = pacers.get(credential_id) {
            pacer.set_max_rate(max_rate);
            return Arc::clone(pacer);
        }
        let metrics = CredentialMetrics::of(self.metrics.as_deref(), credential_id);
        let mut pacer = Pacer::with_metrics(max_rate, metrics);
        pacer.throttles = Some((credential_id.to_string(), self.throttles.clone()));
        if let Some(line) = &self.line {
            pacer.probing = AtomicBool::new(true);
            pacer.lock().in_line = true;
            pacer.line = Some((credential_id.to_string(), Arc::clone(line)));
        }
        let pacer = Arc::new(pacer);
        pacers.insert(credential_id.to_string(), Arc::clone(&pacer));
        pacer
    }

    /// Forgets a deleted credential's pacer; calls still holding it finish undisturbed.
    pub fn remove(&self, credential_id: &str) {
        self.pacers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(credential_id);
    }
}

/// How long `Retry-After` asks to wait: integer seconds or an HTTP date (relative to `now`), capped at
/// [`MAX_RETRY_AFTER`]. Fractional seconds are accepted too, leniently.
pub fn retry_after(headers: &[(String, String)], now: SystemTime) -> Option<Duration> {
    let value = header(headers, &["retry-after"])?.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else if let Ok(at) = httpdate::parse_http_date(value) {
        at.duration_since(now).unwrap_or(Duration::ZERO)
    } else {
        Duration::try_from_secs_f64(value.parse::<f64>().ok()?).ok()?
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

fn min_interval(max_rate_per_sec: Option<f64>) -> Duration {
    max_rate_per_sec
        .filter(|rate| rate.is_finite() && *rate > 0.0)
        .and_then(|rate| Duration::try_from_secs_f64(1.0 / rate).ok())
        .map_or(Duration::ZERO, |interval| interval.min(MAX_RETRY_AFTER))
}

/// When a call was released, and how many calls were released before it.
#[derive(Clone, Copy, Debug)]
struct Release {
    at: Instant,
    seq: u64,
}

/// An answer as the pacer sees it.
struct Answer<'a> {
    status: u16,
    headers: &'a [(String, String)],
    /// The answered call's release; unknown without a permit.
    release: Option<Release>,
    now: Instant,
    wall_now: SystemTime,
    /// Calls released and not yet answered, this one excluded.
    others_in_flight: u32,
}

#[derive(Debug)]
struct State {
    /// From the maximum rate; zero without one.
    min_interval: Duration,
    /// Earliest next release, by spacing alone.
    next_free: Instant,
    /// The latest credential-wide pause (429, 503 with Retry-After); kept after it ends to tell the answers
    /// of calls that were already in flight from new refusals.
    pause: Option<Pause>,
    /// Refusals in a row without `Retry-After`: drives the exponential backoff.
    backoff_level: u32,
    last_release: Option<Instant>,
    /// Calls released so far.
    released: u64,
    /// Smoothed seconds between releases: the rate that met a refusal, for slow start.
    release_gap: Option<f64>,
    round_trip: Option<RoundTrip>,
    learned: Option<Learned>,
    slow_start: Option<SlowStart>,
    /// The spacing set by the latest release: the rate the pacer allows now.
    spacing_used: Duration,
    /// Calls also take slots in a line shared with other replicas.
    in_line: bool,
}

/// What one answer changed.
struct Observed {
    /// The next release moved earlier.
    earlier: bool,
    /// A new pause began, this long.
    paused: Option<Duration>,
}

#[derive(Debug)]
struct Pause {
    started: Instant,
    until: Instant,
}

impl State {
    fn new(min_interval: Duration, now: Instant) -> Self {
        State {
            min_interval,
            next_free: now,
            pause: None,
            backoff_level: 0,
            last_release: None,
            released: 0,
            release_gap: None,
            round_trip: None,
            learned: None,
            slow_start: None,
            spacing_used: Duration::ZERO,
            in_line: false,
        }
    }

    /// The spacing the account needs between any two of its calls, whoever makes them: the maximum rate's, or
    /// a learned window's length (and margin) spread over its calls.
    fn account_gap(&self) -> Duration {
        let learned = self
            .learned
            .as_ref()
            .map_or(Duration::ZERO, Learned::account_gap);
        learned.max(self.min_interval)
    }

    /// Releases a call now, or says when to look again.
    fn try_release(&mut self, now: Instant, in_flight: u32) -> Result<Release, Instant> {
        let load = Load {
            in_flight,
            released: self.released,
        };
        let slot = self.next_release(now, load);
        if slot > now {
            return Err(slot);
        }
        let spacing = self.spacing(now, load);
        self.spacing_used = spacing;
        let from = slot.max(now.checked_sub(CATCH_UP).unwrap_or(now));
        self.next_free = from + spacing;
        self.note_release(now);
        let release = Release {
            at: now,
            seq: self.released,
        };
        self.released += 1;
        Ok(release)
    }

    /// The earliest time the next call may leave.
    fn next_release(&mut self, now: Instant, load: Load) -> Instant {
        let mut at = self.next_free;
        if let Some(pause) = &self.pause {
            at = at.max(pause.until);
        }
        if let Some(end) = self
            .learned
            .as_mut()
            .and_then(|l| l.blocked_until(now, load))
        {
            at = at.max(end);
        }
        at
    }

    fn spacing(&self, now: Instant, load: Load) -> Duration {
        let paced = match (&self.learned, &self.slow_start) {
            (Some(learned), _) => learned.spacing(now, load),
            (None, Some(slow_start)) => slow_start.interval(),
            (None, None) => Duration::ZERO,
        };
        paced.max(self.min_interval)
    }

    fn note_release(&mut self, now: Instant) {
        if let Some(last) = self.last_release {
            let gap = now.saturating_duration_since(last).as_secs_f64();
            self.release_gap = Some(self.release_gap.map_or(gap, |g| g + (gap - g) / 16.0));
        }
        self.last_release = Some(now);
    }

    /// Learns from one answer.
    fn observe(&mut self, answer: &Answer<'_>) -> Observed {
        let load = Load {
            in_flight: answer.others_in_flight,
            released: self.released,
        };
        let before = self.next_release(answer.now, load);
        let release = answer.release.unwrap_or(Release {
            at: answer.now,
            seq: self.released,
        });
        if let Some(known) = answer.release {
            let sample = answer.now.saturating_duration_since(known.at).as_secs_f64();
            self.round_trip = Some(match self.round_trip {
                Some(round_trip) => round_trip.add(sample),
                None => RoundTrip::first(sample),
            });
        }
        if let Some(limits) = RateHeaders::parse(answer.headers, answer.now, answer.wall_now) {
            // Groove's own numbers beat any guess.
            self.slow_start = None;
            // In a shared line the account's calls are one gap apart, so a call's Remaining tells how long
            // before it its window opened, whoever made the calls in between.
            let line_gap = if self.in_line {
                self.account_gap()
            } else {
                Duration::ZERO
            };
            let call = Counted {
                release,
                load,
                line_gap,
            };
            let learned = match &mut self.learned {
                Some(learned) => {
                    learned.observe(&limits, &call);
                    learned
                }
                None => self.learned.insert(Learned::new(&limits, &call)),
            };
            learned.jitter = self.round_trip.map_or(Duration::ZERO, RoundTrip::jitter);
        }
        let retry_after = retry_after(answer.headers, answer.wall_now);
        let refused = answer.status == 429 || (answer.status == 503 && retry_after.is_some());
        let after_pause = self
            .pause
            .as_ref()
            .is_none_or(|pause| release.at >= pause.started);
        let mut paused = None;
        if refused {
            paused = self.on_refused(answer.now, retry_after, after_pause);
        } else if answer.status < 500 && after_pause {
            self.backoff_level = 0;
            if let Some(slow_start) = &mut self.slow_start {
                slow_start.grow();
            }
        }
        Observed {
            earlier: self.next_release(answer.now, load) < before,
            paused,
        }
    }

    /// Pauses on a refusal; returns how long, if a new pause began.
    fn on_refused(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
        after_pause: bool,
    ) -> Option<Duration> {
        if !after_pause {
            // In flight when the current pause began: the same storm, already slowed down for.
            if let (Some(pause), Some(wait)) = (&mut self.pause, retry_after) {
                pause.until = pause.until.max(now + wait);
            }
            return None;
        }
        let wait = retry_after.unwrap_or_else(|| {
            self.backoff_level = self.backoff_level.saturating_add(1);
            backoff_pause(self.backoff_level)
        });
        self.begin_pause(now, wait);
        Some(wait)
    }

    /// A pause another replica began: taken like a refusal with `Retry-After`, unless the current pause
    /// already lasts about as long (it may be this pacer's own, heard back through the other replicas).
    fn pause_for(&mut self, now: Instant, wait: Duration) {
        let until = now + wait;
        if wait.is_zero()
            || self
                .pause
                .as_ref()
                .is_some_and(|pause| pause.until + SAME_PAUSE >= until)
        {
            return;
        }
        self.begin_pause(now, wait);
    }

    fn begin_pause(&mut self, now: Instant, wait: Duration) {
        self.pause = Some(Pause {
            started: now,
            until: now + wait,
        });
        if self.learned.is_none() {
            self.slow_start = Some(match &self.slow_start {
                Some(slow_start) => slow_start.refused(),
                None => SlowStart::first(self.release_gap.map(|gap| 1.0 / gap.max(1e-6))),
            });
        }
    }
}

/// Smoothed round trip and its mean deviation, in seconds (as TCP estimates them, RFC 6298).
#[derive(Clone, Copy, Debug)]
struct RoundTrip {
    mean: f64,
    deviation: f64,
}

impl RoundTrip {
    fn first(sample: f64) -> Self {
        RoundTrip {
            mean: sample,
            deviation: sample / 2.0,
        }
    }

    fn add(self, sample: f64) -> Self {
        RoundTrip {
            deviation: self.deviation + ((sample - self.mean).abs() - self.deviation) / 4.0,
            mean: self.mean + (sample - self.mean) / 8.0,
        }
    }

    /// A bound on how much two calls' one-way latencies differ.
    fn jitter(self) -> Duration {
        Duration::try_from_secs_f64(self.deviation * JITTER_DEVIATIONS)
            .unwrap_or(Duration::ZERO)
            .min(MAX_BACKOFF)
    }
}

/// 1 s, 2 s, 4 s … capped.
fn backoff_pause(level: u32) -> Duration {
    let doublings = level.saturating_sub(1).min(16);
    FIRST_BACKOFF
        .saturating_mul(1 << doublings)
        .min(MAX_BACKOFF)
}

/// Pacing without header info, after a refusal: like TCP's slow start, fast growth up to a threshold below the
/// refused rate, then a slow probe upwards.
#[derive(Debug)]
struct SlowStart {
    /// Calls per second.
    rate: f64,
    threshold: f64,
}

impl SlowStart {
    /// After the first refusal, at `refused_rate` calls per second when known (unpaced until then).
    fn first(refused_rate: Option<f64>) -> Self {
        match refused_rate {
            Some(rate) => SlowStart {
                rate: (rate / 2.0).clamp(SLOW_START_MIN_RATE, SLOW_START_MAX_RATE),
                threshold: rate * SLOW_START_CEILING_SHARE,
            },
            None => SlowStart {
                rate: SLOW_START_UNKNOWN_RATE,
                threshold: f64::INFINITY,
            },
        }
    }

    /// After a refusal at the paced rate: its limit is just below, so resume under it rather than from half.
    fn refused(&self) -> Self {
        let threshold = (self.rate * SLOW_START_CEILING_SHARE).max(SLOW_START_MIN_RATE);
        let rate = if self.rate < self.threshold {
            // Still in the fast growth: the threshold was a guess, halve like TCP.
            (self.rate / 2.0).max(SLOW_START_MIN_RATE)
        } else {
            threshold
        };
        SlowStart { rate, threshold }
    }

    fn grow(&mut self) {
        if self.rate < self.threshold {
            self.rate *= 1.0 + SLOW_START_GROWTH;
        } else {
            // One answer is 1/rate of a second: about PROBE_GROWTH_PER_SEC per second.
            self.rate *= 1.0 + PROBE_GROWTH_PER_SEC / self.rate.max(1.0);
        }
    }

    fn interval(&self) -> Duration {
        Duration::try_from_secs_f64(1.0 / self.rate).unwrap_or(MAX_BACKOFF)
    }
}

/// What the rate-limit headers taught, under a fixed-window model.
#[derive(Debug)]
struct Learned {
    /// Calls per window: `X-RateLimit-Limit`, or the largest Remaining seen plus one.
    limit: u32,
    window: Window,
    /// Bounds on the window's length, once a boundary was seen.
    length: Option<Bounds>,
    /// How much one call's one-way latency may differ from another's, from the round trips seen.
    jitter: Duration,
}

/// The window the latest answers belong to.
#[derive(Debug)]
struct Window {
    /// Its end according to Reset (rounded).
    reset_at: Instant,
    /// The earliest call seen in it, and its Remaining.
    start: Release,
    first_remaining: u32,
    /// Release time of the latest call seen in it.
    last: Instant,
    /// The lowest Remaining seen in it: the call Groove counted last, as far as we know.
    min_remaining: u32,
    min_seq: u64,
    /// Calls released when that Remaining arrived.
    min_seen_after: u64,
    /// Surely over, by what we learned: its budget no longer applies.
    ended: bool,
}

#[derive(Clone, Copy, Debug)]
struct Bounds {
    lo: Duration,
    hi: Duration,
}

impl Bounds {
    /// Where to place a window's last call. While the bounds are wide, in their middle: it lands either in the
    /// window (raising `lo`) or after it, opening the next one (lowering `hi`), a bisection that costs at most
    /// one unused call per window. Once narrow, a margin before `lo`, surely inside the window: the next
    /// window cannot open before `hi` anyway.
    fn last_call(&self, margin: Duration) -> Duration {
        let unknown = self.hi.saturating_sub(self.lo);
        if unknown > margin {
            self.lo + unknown / 2
        } else {
            self.lo.saturating_sub(margin)
        }
    }
}

/// One answered call, and the calls around it.
struct Counted {
    release: Release,
    load: Load,
    /// The spacing of the account's shared line when it was made; zero without a line.
    line_gap: Duration,
}

impl Counted {
    /// When the window this call was counted in opened, as far as this call tells: its own release, or in a
    /// shared line the release of the window's first call, `line_gap` before it for each call counted earlier.
    fn window_opened(&self, limit: u32, remaining: u32) -> Release {
        let counted_before = limit.saturating_sub(1).saturating_sub(remaining);
        let at = self
            .release
            .at
            .checked_sub(self.line_gap.saturating_mul(counted_before))
            .unwrap_or(self.release.at);
        Release { at, ..self.release }
    }
}

/// Calls in flight (permits alive) and released so far, at one moment.
#[derive(Clone, Copy, Debug)]
struct Load {
    in_flight: u32,
    released: u64,
}

impl Learned {
    fn new(limits: &RateHeaders, call: &Counted) -> Self {
        let limit = limits
            .limit
            .unwrap_or(0)
            .max(limits.remaining.saturating_add(1));
        Learned {
            limit,
            window: Window::new(limits, call, limit),
            length: None,
            jitter: Duration::ZERO,
        }
    }

    /// Slack between a learned window end and the first call sent into the next window. Our clock sees
    /// releases; Groove counts arrivals, each later by its own latency.
    /// Round trips include Groove's own work, whose spread says little about the network: at most a tenth
    /// of the window goes to jitter.
    fn margin(&self, length: Duration) -> Duration {
        (length / BOUNDARY_MARGIN_SHARE)
            .max(MIN_BOUNDARY_MARGIN)
            .max(self.jitter.min(length / 10))
    }

    fn observe(&mut self, limits: &RateHeaders, call: &Counted) {
        self.limit = match limits.limit {
            Some(limit) => limit.max(limits.remaining),
            None => self.limit.max(limits.remaining.saturating_add(1)),
        };
        let window = &mut self.window;
        if limits.reset_at + limits.same_within < window.reset_at {
            return; // an answer from an older window, overtaken
        }
        // Within a window a call released later is counted later, so its Remaining is lower — unless the
        // network reordered it, which can raise it by at most the calls in flight.
        let newer = limits.reset_at > window.reset_at + limits.same_within
            || (call.release.seq > window.min_seq
                && limits.remaining > window.min_remaining.saturating_add(call.load.in_flight + 1));
        if newer {
            self.learn_boundary(call.release.at);
            self.window = Window::new(limits, call, self.limit);
            return;
        }
        if call.release.seq < window.start.seq {
            if limits.remaining <= window.first_remaining {
                return; // released earlier yet counted later: the previous window's
            }
            window.start = call.window_opened(self.limit, limits.remaining);
            window.first_remaining = limits.remaining;
        }
        window.last = window.last.max(call.release.at);
        if limits.remaining < window.min_remaining {
            window.min_remaining = limits.remaining;
            window.min_seq = call.release.seq;
            window.min_seen_after = call.load.released;
            window.ended = false;
        }
        let lasted = window.last.saturating_duration_since(window.start.at);
        if let Some(length) = self.length {
            self.length = if lasted > length.hi + self.margin(length.hi) {
                // The window outlived what we learned (the limit changed): learn again.
                None
            } else {
                Some(Bounds {
                    lo: length.lo.max(lasted),
                    hi: length.hi,
                })
            };
        }
    }

    /// The current window ended between its last call and `first_of_next`.
    fn learn_boundary(&mut self, first_of_next: Instant) {
        let window = &self.window;
        let lo = window.last.saturating_duration_since(window.start.at);
        let hi = first_of_next.saturating_duration_since(window.start.at);
        // Only a boundary where Reset put it (within its rounding): an idle gap brackets nothing.
        let by_reset = window.reset_at.saturating_duration_since(window.start.at);
        let slack = RESET_ROUNDING + self.margin(by_reset);
        if hi < lo || hi > by_reset + slack || hi + slack < by_reset {
            return;
        }
        // Latencies blur every bracket by up to a margin: only a clear contradiction means the limit changed.
        let blur = self.margin(hi);
        self.length = Some(match self.length {
            Some(known) if hi + blur >= known.lo && lo <= known.hi + blur => {
                let hi = known.hi.min(hi);
                Bounds {
                    lo: known.lo.max(lo).min(hi),
                    hi,
                }
            }
            // First boundary, or one that contradicts what we knew (the limit changed): start over from it.
            _ => Bounds { lo, hi },
        });
    }

    /// When the current window's budget is spent: the time it has surely ended.
    fn blocked_until(&mut self, now: Instant, load: Load) -> Option<Instant> {
        if self.window.budget(load) != Some(0) {
            return None;
        }
        let window = &self.window;
        let length = self.length.map_or_else(
            || window.reset_at.saturating_duration_since(window.start.at),
            |b| b.hi,
        );
        let end = window.start.at + length + self.margin(length);
        if end <= now {
            self.window.ended = true;
            return None;
        }
        Some(end)
    }

    /// A window's length and margin over its calls.
    fn account_gap(&self) -> Duration {
        let window = &self.window;
        let length = self.length.map_or_else(
            || window.reset_at.saturating_duration_since(window.start.at),
            |b| b.hi,
        );
        (length + self.margin(length)) / self.limit.max(1)
    }

    fn spacing(&self, now: Instant, load: Load) -> Duration {
        let window = &self.window;
        let length = self.length.map_or_else(
            || window.reset_at.saturating_duration_since(window.start.at),
            |b| b.hi,
        );
        let steady = length / self.limit.max(1);
        match window.budget(load) {
            // The last call of the window: what follows waits for the window's end anyway.
            Some(1) => Duration::ZERO,
            Some(left) if left > 1 => {
                let end = match self.length {
                    Some(length) => window.start.at + length.last_call(self.margin(length.hi)),
                    None => window.reset_at,
                };
                let until_end = end.saturating_duration_since(now);
                if until_end.is_zero() {
                    steady
                } else {
                    // This call now, the last one at `end`.
                    until_end / (left - 1)
                }
            }
            _ => steady,
        }
    }
}

impl Window {
    fn new(limits: &RateHeaders, call: &Counted, limit: u32) -> Self {
        Window {
            reset_at: limits.reset_at,
            start: call.window_opened(limit, limits.remaining),
            first_remaining: limits.remaining,
            last: call.release.at,
            min_remaining: limits.remaining,
            min_seq: call.release.seq,
            min_seen_after: call.load.released,
            ended: false,
        }
    }

    /// Calls we may still release in it; `None` once it has surely ended. Calls Groove counted after the one
    /// that reported the lowest Remaining are all in flight (an answered one would report lower), and so are
    /// all calls released since that answer; without permits only the latter are known.
    fn budget(&self, load: Load) -> Option<u32> {
        if self.ended {
            return None;
        }
        let since =
            u32::try_from(load.released.saturating_sub(self.min_seen_after)).unwrap_or(u32::MAX);
        Some(self.min_remaining.saturating_sub(load.in_flight.max(since)))
    }
}

/// The rate-limit headers of one answer; only Remaining and Reset are required.
struct RateHeaders {
    limit: Option<u32>,
    remaining: u32,
    reset_at: Instant,
    same_within: Duration,
}

impl RateHeaders {
    fn parse(headers: &[(String, String)], now: Instant, wall_now: SystemTime) -> Option<Self> {
        let remaining = leading_number(header(
            headers,
            &["x-ratelimit-remaining", "ratelimit-remaining"],
        )?)?;
        let reset = leading_number(header(headers, &["x-ratelimit-reset", "ratelimit-reset"])?)?;
        let limit =
            header(headers, &["x-ratelimit-limit", "ratelimit-limit"]).and_then(leading_number);
        let (reset_at, same_within) = if reset >= EPOCH_RESET {
            let reset_wall = UNIX_EPOCH + Duration::try_from_secs_f64(reset).ok()?;
            let reset_at = match reset_wall.duration_since(wall_now) {
                Ok(ahead) => now + ahead.min(MAX_RESET_AHEAD),
                // Already past by our clock (skew): a window that just ended.
                Err(behind) => now
                    .checked_sub(behind.duration().min(MAX_RESET_AHEAD))
                    .unwrap_or(now),
            };
            // One window keeps one epoch value; tolerate clock drift between answers.
            (reset_at, RESET_ROUNDING / 2)
        } else {
            // Seconds-until-reset is rounded per answer, and answers arrive with varying latency.
            let ahead = Duration::try_from_secs_f64(reset)
                .ok()?
                .min(MAX_RESET_AHEAD);
            (now + ahead, RESET_ROUNDING + RESET_ROUNDING / 4)
        };
        Some(RateHeaders {
            // `as` saturates: absurd values become u32::MAX rather than wrapping.
            limit: limit.map(|limit| limit as u32),
            remaining: remaining as u32,
            reset_at,
            same_within,
        })
    }
}

/// The value of the first header named any of `names` (lowercase), ignoring case.
fn header<'h>(headers: &'h [(String, String)], names: &[&str]) -> Option<&'h str> {
    headers
        .iter()
        .find(|(name, _)| names.iter().any(|wanted| name.eq_ignore_ascii_case(wanted)))
        .map(|(_, value)| value.as_str())
}

/// The number a header value starts with: `100`, `1712345678.5`, or `100` from the draft's `100, 100;w=60`.
fn leading_number(value: &str) -> Option<f64> {
    let value = value.trim();
    let end = value
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(value.len());
    value[..end]
        .parse::<f64>()
        .ok()
        .filter(|number| number.is_finite())
}

/// A [`CallLine`]'s arithmetic on one clock, as the shared store keeps it: for tests of pacers that take slots.
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct LineClock {
    next: Option<Instant>,
    unspaced: u32,
    /// How long after the line's latest slot or note an unspaced call is still charged.
    memory: Duration,
}

#[cfg(test)]
impl LineClock {
    pub(crate) fn new(memory: Duration) -> Self {
        LineClock {
            next: None,
            unspaced: 0,
            memory,
        }
    }

    /// The slot a reservation at `now` with `gap` takes.
    pub(crate) fn reserve(&mut self, now: Instant, gap: Duration) -> Instant {
        let slot = self
            .next
            .map_or(now, |next| (next + gap * self.unspaced).max(now));
        self.next = Some(slot + gap);
        self.unspaced = 0;
        slot
    }

    /// An unspaced call leaving at `now`.
    pub(crate) fn note_unspaced(&mut self, now: Instant) {
        let next = self.next.unwrap_or(now);
        self.unspaced = if next + self.memory < now {
            1
        } else {
            self.unspaced + 1
        };
        self.next = Some(next.max(now));
    }
}

#[cfg(test)]
mod tests {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, VecDeque};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const SECOND: Duration = Duration::from_secs(1);

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// A wall clock with a fractional second, so whole-second Resets really are rounded.
    fn wall_base() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(1_700_000_000_370)
    }

    fn start() -> Instant {
        Instant::from_std(std::time::Instant::now())
    }

    /// An answer observed without a permit at `now`, the wall clock reading `wall_base()` then.
    fn answer(status: u16, headers: &[(String, String)], now: Instant) -> Answer<'_> {
        Answer {
            status,
            headers,
            release: None,
            now,
            wall_now: wall_base(),
            others_in_flight: 0,
        }
    }

    /// Releases `n` calls from `from` on, each as soon as the state allows (what `acquire` does in a loop).
    fn release_times(state: &mut State, from: Instant, n: usize) -> Vec<Instant> {
        let mut now = from;
        let mut times = Vec::new();
        while times.len() < n {
            match state.try_release(now, 0) {
                Ok(release) => times.push(release.at),
                Err(wake) => now = wake,
            }
        }
        times
    }

    fn gaps(times: &[Instant]) -> Vec<Duration> {
        times.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }

    #[test]
    fn nothing_learned_means_no_wait() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        state.observe(&answer(
            201,
            &headers(&[("Content-Type", "application/json")]),
            t0,
        ));
        assert!(release_times(&mut state, t0, 1000)
            .iter()
            .all(|at| *at == t0));
    }

    #[test]
    fn a_maximum_rate_spaces_calls() {
        let t0 = start();
        let mut state = State::new(min_interval(Some(10.0)), t0);
        let times = release_times(&mut state, t0, 10);
        assert!(
            gaps(&times).iter().all(|gap| *gap == 100 * MS),
            "{:?}",
            gaps(&times)
        );
    }

    #[test]
    fn a_retry_after_pauses_everyone_then_releases_them_spaced() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        state.observe(&answer(429, &headers(&[("Retry-After", "2")]), t0));
        let times = release_times(&mut state, t0, 5);
        assert!(times.iter().all(|at| *at >= t0 + 2 * SECOND), "{times:?}");
        // No header info: slow start decides the spacing.
        assert!(
            gaps(&times).iter().all(|gap| *gap >= 50 * MS),
            "{:?}",
            gaps(&times)
        );
    }

    #[test]
    fn after_a_retry_after_known_limits_space_the_calls() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        // 50 per window, the window ending at the next whole second (0.63 s away).
        let limits = |remaining: &str| {
            headers(&[
                ("X-RateLimit-Limit", "50"),
                ("X-RateLimit-Remaining", remaining),
                ("X-RateLimit-Reset", "1700000001"),
            ])
        };
        state.observe(&answer(201, &limits("49"), t0));
        let mut refusal = limits("0");
        refusal.push(("Retry-After".to_string(), "2".to_string()));
        state.observe(&answer(429, &refusal, t0 + 10 * MS));
        let times = release_times(&mut state, t0, 5);
        assert!(times.iter().all(|at| *at >= t0 + 2 * SECOND), "{times:?}");
        assert!(
            gaps(&times).iter().all(|gap| *gap >= 10 * MS),
            "{:?}",
            gaps(&times)
        );
    }

    #[test]
    fn an_http_date_retry_after_is_read_against_the_wall_clock() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        // HTTP dates have whole seconds: 3.37 s ahead is written as 3 s ahead of the whole second, 2.63 s.
        let date = httpdate::fmt_http_date(wall_base() + Duration::from_millis(3000));
        state.observe(&answer(503, &headers(&[("retry-after", &date)]), t0));
        let wake = state.try_release(t0, 0).expect_err("paused");
        assert_eq!(wake - t0, Duration::from_millis(2630));
    }

    #[test]
    fn no_remaining_calls_wait_until_the_epoch_reset() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        let limits = headers(&[
            ("x-ratelimit-limit", "10"),
            ("x-ratelimit-remaining", "0"),
            ("x-ratelimit-reset", "1700000003"),
        ]);
        state.observe(&answer(201, &limits, t0));
        let wake = state.try_release(t0, 0).expect_err("window spent");
        assert!(
            wake - t0 >= Duration::from_millis(2630) && wake - t0 < Duration::from_millis(2700),
            "{:?}",
            wake - t0
        );
    }

    #[test]
    fn a_small_reset_is_seconds_from_now() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        let limits = headers(&[("RateLimit-Remaining", "0"), ("RateLimit-Reset", "30")]);
        state.observe(&answer(201, &limits, t0));
        let wake = state.try_release(t0, 0).expect_err("window spent");
        assert!(
            wake - t0 >= 30 * SECOND && wake - t0 < 31 * SECOND,
            "{:?}",
            wake - t0
        );
    }

    #[test]
    fn refusals_of_calls_already_in_flight_do_not_stretch_the_backoff() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        let in_flight: Vec<Release> = (0..3)
            .map(|_| state.try_release(t0, 0).expect("free"))
            .collect();
        let refused = headers(&[]);
        for (i, release) in in_flight.into_iter().enumerate() {
            let now = t0 + (10 + i as u32) * MS;
            state.observe(&Answer {
                release: Some(release),
                ..answer(429, &refused, now)
            });
        }
        // One pause of 1 s from the first refusal, not 1 + 2 + 4 s.
        let wake = state.try_release(t0, 0).expect_err("paused");
        assert_eq!(wake, t0 + 10 * MS + SECOND);
        // A call sent after that pause and refused again doubles it.
        let next = state.try_release(wake, 0).expect("pause over");
        let now = wake + 5 * MS;
        state.observe(&Answer {
            release: Some(next),
            ..answer(429, &refused, now)
        });
        assert_eq!(
            state.try_release(now, 0).expect_err("paused again"),
            now + 2 * SECOND
        );
    }

    #[test]
    fn slow_start_speeds_up_while_answers_are_ok() {
        let t0 = start();
        let mut state = State::new(Duration::ZERO, t0);
        state.observe(&answer(429, &headers(&[("Retry-After", "1")]), t0));
        let resumed = t0 + SECOND;
        let first = gaps(&release_times(&mut state, resumed, 2))[0];
        for i in 0..40 {
            state.observe(&answer(201, &[], resumed + i * MS));
        }
        let later = gaps(&release_times(&mut state, resumed + SECOND, 2))[0];
        assert!(later < first / 4, "{first:?} then {later:?}");
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        let now = wall_base();
        let read = |value: &str| retry_after(&headers(&[("Retry-After", value)]), now);
        assert_eq!(read("5"), Some(5 * SECOND));
        assert_eq!(read(" 5 "), Some(5 * SECOND));
        assert_eq!(read("1.5"), Some(1500 * MS));
        assert_eq!(read("0"), Some(Duration::ZERO));
        assert_eq!(read("99999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            read(&httpdate::fmt_http_date(now + 10 * SECOND)),
            Some(Duration::from_millis(9630))
        );
        assert_eq!(
            read(&httpdate::fmt_http_date(now - 10 * SECOND)),
            Some(Duration::ZERO)
        );
        assert_eq!(read("soon"), None);
        assert_eq!(read("-3"), None);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "7")]), now),
            Some(7 * SECOND)
        );
        assert_eq!(retry_after(&[], now), None);
    }

    #[test]
    fn rate_limit_headers_parse_leniently() {
        let now = start();
        let parse = |pairs: &[(&str, &str)]| RateHeaders::parse(&headers(pairs), now, wall_base());
        let draft = parse(&[
            ("RateLimit-Limit", "100, 100;w=60"),
            ("RateLimit-Remaining", "7"),
            ("RateLimit-Reset", "12"),
        ])
        .expect("draft headers");
        assert_eq!(
            (draft.limit, draft.remaining, draft.reset_at - now),
            (Some(100), 7, 12 * SECOND)
        );
        let epoch = parse(&[
            ("X-RateLimit-Remaining", "3"),
            ("X-RateLimit-Reset", "1700000002"),
        ])
        .expect("epoch");
        assert_eq!(
            (epoch.limit, epoch.reset_at - now),
            (None, Duration::from_millis(1630))
        );
        assert!(parse(&[("X-RateLimit-Remaining", "3")]).is_none());
        assert!(parse(&[
            ("X-RateLimit-Remaining", "many"),
            ("X-RateLimit-Reset", "1")
        ])
        .is_none());
    }

    // The tests that wait run on paused time: the clock only moves when every task is idle, straight to the
    // next timer, so a sleep shows up as elapsed time however fast the machine is, and no real time passes.

    #[tokio::test(start_paused = true)]
    async fn acquire_returns_at_once_when_nothing_is_known() {
        let pacer = Pacer::new(None);
        let began = Instant::now();
        for _ in 0..1_000 {
            pacer.acquire().await.observe(201, &[]);
        }
        // Any sleep would have moved the paused clock.
        assert_eq!(began.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn acquire_keeps_to_the_maximum_rate() {
        let pacer = Pacer::new(Some(100.0));
        let began = Instant::now();
        for _ in 0..11 {
            drop(pacer.acquire().await);
        }
        // Ten intervals of 10 ms; a late timer may take back up to CATCH_UP, which paused time never needs.
        let elapsed = began.elapsed();
        assert!(
            (100 * MS - CATCH_UP..=100 * MS).contains(&elapsed),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_resume_one_by_one_after_a_429() {
        let pacer = Arc::new(Pacer::new(None));
        let began = Instant::now();
        pacer.observe(429, &headers(&[("Retry-After", "1")]));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let pacer = Arc::clone(&pacer);
                tokio::spawn(async move {
                    let permit = pacer.acquire().await;
                    let sent_at = permit.sent_at();
                    permit.observe(201, &[]);
                    sent_at
                })
            })
            .collect();
        let mut times = Vec::new();
        for waiter in waiters {
            times.push(waiter.await.expect("waiter"));
        }
        times.sort();
        assert!(times[0] >= began + SECOND, "{:?}", times[0] - began);
        assert!(
            times[0] <= began + SECOND + 10 * MS,
            "{:?}",
            times[0] - began
        );
        assert!(
            gaps(&times).iter().all(|gap| *gap >= 50 * MS),
            "{:?}",
            gaps(&times)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_does_not_hold_up_the_line() {
        let pacer = Arc::new(Pacer::new(Some(20.0)));
        drop(pacer.acquire().await);
        let spawn_waiter = || {
            let pacer = Arc::clone(&pacer);
            tokio::spawn(async move { drop(pacer.acquire().await) })
        };
        let first = spawn_waiter();
        tokio::time::sleep(5 * MS).await;
        let second = spawn_waiter();
        tokio::time::sleep(5 * MS).await;
        first.abort();
        tokio::time::timeout(SECOND, second)
            .await
            .expect("second waiter served")
            .expect("no panic");
        tokio::time::timeout(SECOND, pacer.acquire())
            .await
            .expect("line still moves");
    }

    #[test]
    fn a_registry_shares_one_pacer_per_credential() {
        let registry = PacerRegistry::new();
        let a = registry.pacer("a", Some(5.0));
        assert!(Arc::ptr_eq(&a, &registry.pacer("a", None)));
        assert!(!Arc::ptr_eq(&a, &registry.pacer("b", None)));
        registry.remove("a");
        assert!(!Arc::ptr_eq(&a, &registry.pacer("a", None)));
    }

    /// The sandbox's limiter (crates/groove-sandbox/src/faults.rs): a window opens at the first call after the
    /// previous one ended; Reset is its end in epoch seconds rounded up; a refused call still counts.
    struct FakeGroove {
        limit: u32,
        window: Duration,
        t0: Instant,
        /// The wall clock at `t0`.
        wall_t0: SystemTime,
        started: Option<Instant>,
        count: u32,
        /// Sends `X-RateLimit-*`; without them only a 429's `Retry-After` tells anything.
        headers: bool,
    }

    impl FakeGroove {
        fn wall(&self, at: Instant) -> SystemTime {
            self.wall_t0 + at.saturating_duration_since(self.t0)
        }

        fn call(&mut self, now: Instant) -> (u16, Vec<(String, String)>) {
            let started = match self.started {
                Some(started) if now.saturating_duration_since(started) < self.window => started,
                _ => {
                    self.count = 0;
                    self.started = Some(now);
                    now
                }
            };
            self.count += 1;
            let end = started + self.window;
            let reset = ceil_secs(
                self.wall(end)
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default(),
            );
            let mut answer = Vec::new();
            if self.headers {
                answer = headers(&[
                    ("X-RateLimit-Limit", &self.limit.to_string()),
                    (
                        "X-RateLimit-Remaining",
                        &self.limit.saturating_sub(self.count).to_string(),
                    ),
                    ("X-RateLimit-Reset", &reset.to_string()),
                ]);
            }
            if self.count <= self.limit {
                return (201, answer);
            }
            let retry = ceil_secs(end.saturating_duration_since(now)).max(1);
            answer.push(("Retry-After".to_string(), retry.to_string()));
            (429, answer)
        }
    }

    /// A call in the simulation: its release, then Groove's status and headers once it arrived.
    type Call = (Release, u16, Vec<(String, String)>);

    fn ceil_secs(d: Duration) -> u64 {
        d.as_secs() + u64::from(d.subsec_nanos() > 0)
    }

    #[derive(Clone)]
    struct Scenario {
        limit: u32,
        window: Duration,
        workers: usize,
        /// One-way latency, uniform in this range.
        latency: (Duration, Duration),
        run_for: Duration,
        /// Answers observed through their permits (else as `Pacer::observe` sees them).
        permits: bool,
        /// At this time the limit becomes (calls, window), as when the sandbox's faults are replaced.
        change: Option<(Duration, u32, Duration)>,
        /// Groove sends rate-limit headers.
        headers: bool,
        /// Replicas sharing the account, taking their calls' slots from one line when more than one; worker
        /// `w` is replica `w % replicas`'s. A pause one begins is heard by the others at once.
        replicas: usize,
        /// The wall clock when the run begins: its fraction of a second decides how far the whole-second
        /// Reset of the first window is from the window's real end.
        wall_t0: SystemTime,
    }

    impl Scenario {
        /// Eight callers against a local sandbox for a minute.
        fn sandbox(limit: u32, window: Duration) -> Self {
            Scenario {
                limit,
                window,
                workers: 8,
                latency: (MS / 5, MS),
                run_for: 60 * SECOND,
                permits: true,
                change: None,
                headers: true,
                replicas: 1,
                wall_t0: wall_base(),
            }
        }
    }

    #[derive(Debug)]
    struct Results {
        ok: u32,
        refused: u32,
        /// Achieved calls per second over the allowed ones.
        share_of_allowed: f64,
        releases: Vec<Instant>,
        learned_length: Option<Duration>,
    }

    impl Results {
        fn refused_share(&self) -> f64 {
            f64::from(self.refused) / f64::from(self.ok + self.refused)
        }
    }

    /// Discrete-event simulation of `workers` tasks that each acquire, call the fake Groove and observe the
    /// answer, over and over. It drives the pacer's state machine with synthetic time, as `acquire` does with
    /// the real clock: the head of the line retries whenever something happened or its timer fired.
    fn simulate(scenario: &Scenario, seed: u64) -> Results {
        const READY: u8 = 0;
        const ARRIVE: u8 = 1;
        const ANSWER: u8 = 2;
        const WAKE: u8 = 3;
        let mut rng = StdRng::seed_from_u64(seed);
        let t0 = start();
        let end = t0 + scenario.run_for;
        let mut groove = FakeGroove {
            limit: scenario.limit,
            window: scenario.window,
            t0,
            wall_t0: scenario.wall_t0,
            started: None,
            count: 0,
            headers: scenario.headers,
        };
        let replicas = scenario.replicas.max(1);
        let in_line = replicas > 1;
        let mut states: Vec<State> = (0..replicas)
            .map(|_| {
                let mut state = State::new(Duration::ZERO, t0);
                state.in_line = in_line;
                state
            })
            .collect();
        // The shared line; each replica's turn is held until its latest slot; a replica in a line keeps one
        // call out until its first answer, which takes no slot but is noted.
        let mut line = LineClock::new(SECOND);
        let mut turn_held_until: Vec<Option<Instant>> = vec![None; replicas];
        let mut answered = vec![!in_line; replicas];
        let mut events = BinaryHeap::new();
        let mut seq = 0u64;
        let mut push = |events: &mut BinaryHeap<_>, at: Instant, kind: u8, worker: usize| {
            seq += 1;
            events.push(Reverse((at, seq, kind, worker)));
        };
        for worker in 0..scenario.workers {
            push(&mut events, t0, READY, worker);
        }
        let (lo, hi) = scenario.latency;
        let latency = |rng: &mut StdRng| lo + (hi - lo).mul_f64(rng.random::<f64>());
        let mut waiting = vec![VecDeque::new(); replicas];
        let mut in_flights = vec![0u32; replicas];
        let mut next_wakes: Vec<Option<Instant>> = vec![None; replicas];
        let mut calls: Vec<Option<Call>> = vec![None; scenario.workers];
        let mut results = Results {
            ok: 0,
            refused: 0,
            share_of_allowed: 0.0,
            releases: Vec::new(),
            learned_length: None,
        };
        while let Some(Reverse((now, _, kind, worker))) = events.pop() {
            if now > end {
                break;
            }
            if let Some((at, limit, window)) = scenario.change {
                if now >= t0 + at && (groove.limit, groove.window) != (limit, window) {
                    (groove.limit, groove.window, groove.started) = (limit, window, None);
                }
            }
            let replica = worker % replicas;
            match kind {
                READY => waiting[replica].push_back(worker),
                ARRIVE => {
                    if let Some((release, _, _)) = calls[worker].take() {
                        let (status, answer) = groove.call(now);
                        calls[worker] = Some((release, status, answer));
                        push(&mut events, now + latency(&mut rng), ANSWER, worker);
                    }
                }
                ANSWER => {
                    in_flights[replica] -= 1;
                    answered[replica] = true;
                    if let Some((release, status, answer)) = calls[worker].take() {
                        let observed = states[replica].observe(&Answer {
                            status,
                            headers: &answer,
                            release: Some(release).filter(|_| scenario.permits),
                            now,
                            wall_now: groove.wall(now),
                            others_in_flight: if scenario.permits {
                                in_flights[replica]
                            } else {
                                0
                            },
                        });
                        if let Some(wait) = observed.paused {
                            for state in &mut states {
                                state.pause_for(now, wait);
                            }
                        }
                        if status == 429 {
                            results.refused += 1;
                        } else {
                            results.ok += 1;
                        }
                        push(&mut events, now, READY, worker);
                    }
                }
                _ if next_wakes[replica] == Some(now) => next_wakes[replica] = None,
                _ => {}
            }
            for (replica, state) in states.iter_mut().enumerate() {
                let queue = &mut waiting[replica];
                let in_flight = &mut in_flights[replica];
                if turn_held_until[replica].is_some_and(|until| until > now) {
                    continue;
                }
                while let Some(&worker) = queue.front() {
                    if !answered[replica] && *in_flight > 0 {
                        break;
                    }
                    match state.try_release(now, if scenario.permits { *in_flight } else { 0 }) {
                        Ok(mut release) => {
                            queue.pop_front();
                            *in_flight += 1;
                            let gap = state.account_gap();
                            if in_line && !gap.is_zero() {
                                release.at = line.reserve(now, gap);
                            } else if in_line && !answered[replica] {
                                line.note_unspaced(now);
                            }
                            results.releases.push(release.at);
                            calls[worker] = Some((release, 0, Vec::new()));
                            push(&mut events, release.at + latency(&mut rng), ARRIVE, worker);
                            if release.at > now {
                                // The turn is held until the slot: this replica's next call waits behind it.
                                turn_held_until[replica] = Some(release.at);
                                push(&mut events, release.at, WAKE, worker);
                                break;
                            }
                        }
                        Err(wake) => {
                            // Timers fire on the next millisecond tick, sometimes later.
                            let at = wake + Duration::from_micros(rng.random_range(0..1500));
                            if next_wakes[replica].is_none_or(|pending| at < pending) {
                                next_wakes[replica] = Some(at);
                                push(&mut events, at, WAKE, worker);
                            }
                            break;
                        }
                    }
                }
            }
        }
        let allowed = f64::from(scenario.limit) / scenario.window.as_secs_f64()
            * scenario.run_for.as_secs_f64();
        results.share_of_allowed = f64::from(results.ok) / allowed;
        results.learned_length = states
            .swap_remove(0)
            .learned
            .and_then(|learned| learned.length)
            .map(|length| length.hi);
        results
    }

    /// The benchmark's bar: at least 95% of the allowed rate, at most 1% of calls refused.
    fn assert_efficient(scenario: &Scenario) -> Vec<Results> {
        (1..=3)
            .map(|seed| {
                let results = simulate(scenario, seed);
                assert!(
                    results.share_of_allowed >= 0.95 && results.refused_share() <= 0.01,
                    "{}/{:?}, seed {seed}: {:.1}% of the allowed rate, {:.2}% refused ({} ok, {} refused)",
                    scenario.limit,
                    scenario.window,
                    results.share_of_allowed * 100.0,
                    results.refused_share() * 100.0,
                    results.ok,
                    results.refused
                );
                results
            })
            .collect()
    }

    #[test]
    fn learns_a_50_per_second_limit_from_the_headers() {
        for results in assert_efficient(&Scenario::sandbox(50, SECOND)) {
            let length = results.learned_length.expect("a window length learned");
            assert!(length >= SECOND && length <= SECOND + 30 * MS, "{length:?}");
        }
    }

    #[test]
    fn learns_through_a_slow_sandbox() {
        assert_efficient(&Scenario {
            latency: (50 * MS, 51 * MS),
            ..Scenario::sandbox(50, SECOND)
        });
    }

    #[test]
    fn learns_without_permits_on_a_fast_network() {
        assert_efficient(&Scenario {
            permits: false,
            ..Scenario::sandbox(50, SECOND)
        });
    }

    #[test]
    fn learns_short_and_long_windows() {
        assert_efficient(&Scenario::sandbox(10, 250 * MS));
        assert_efficient(&Scenario::sandbox(200, SECOND));
        assert_efficient(&Scenario {
            workers: 2,
            ..Scenario::sandbox(5, SECOND)
        });
        assert_efficient(&Scenario {
            run_for: 120 * SECOND,
            ..Scenario::sandbox(20, 2 * SECOND)
        });
        assert_efficient(&Scenario {
            run_for: 900 * SECOND,
            ..Scenario::sandbox(1000, 60 * SECOND)
        });
    }

    #[test]
    fn follows_a_limit_that_changes() {
        let results = simulate(
            &Scenario {
                run_for: 120 * SECOND,
                change: Some((60 * SECOND, 20, SECOND)),
                ..Scenario::sandbox(50, SECOND)
            },
            1,
        );
        let second_minute = results
            .releases
            .iter()
            .filter(|at| **at >= results.releases[0] + 60 * SECOND)
            .count();
        assert!((1140..=1220).contains(&second_minute), "{second_minute}");
        assert!(results.refused_share() <= 0.01, "{results:?}");
    }

    #[test]
    fn three_replicas_in_one_line_share_one_limit() {
        assert_efficient(&Scenario {
            replicas: 3,
            workers: 24,
            ..Scenario::sandbox(50, SECOND)
        });
    }

    /// Replicas starting together each send one call before they know the account's spacing. When the
    /// first window's Reset is rounded up least (the run begins just before a whole second), the calls sent
    /// after those still fit the window.
    #[test]
    fn replicas_starting_together_do_not_overrun_the_first_window() {
        for fraction_ms in [990, 995, 999] {
            let scenario = Scenario {
                replicas: 3,
                workers: 24,
                run_for: 5 * SECOND,
                wall_t0: UNIX_EPOCH + Duration::from_millis(1_700_000_000_000 + fraction_ms),
                ..Scenario::sandbox(50, SECOND)
            };
            for seed in 1..=5 {
                let results = simulate(&scenario, seed);
                assert_eq!(
                    results.refused, 0,
                    "wall clock at .{fraction_ms}, seed {seed}: {results:?}"
                );
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_heard_from_another_replica_holds_every_call() {
        let registry = PacerRegistry::new();
        let pacer = registry.pacer("k1", None);
        let mut announced = registry.throttles();
        pacer.pause_until(SystemTime::now() + 2 * SECOND);
        let began = Instant::now();
        drop(pacer.acquire().await);
        let waited = began.elapsed();
        assert!(
            waited > SECOND + 900 * MS && waited <= 2 * SECOND,
            "{waited:?}"
        );
        assert!(
            announced.try_recv().is_err(),
            "a pause heard is not announced again"
        );
        // A refusal of its own is announced for the others.
        pacer.observe(429, &headers(&[("Retry-After", "3")]));
        let throttle = announced.try_recv().expect("announced");
        assert_eq!(throttle.credential_id, "k1");
        let ahead = throttle
            .until
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        assert!(ahead > 2 * SECOND && ahead <= 3 * SECOND, "{ahead:?}");
        // Heard back from the others, it is the same pause.
        pacer.pause_until(throttle.until);
        assert!(announced.try_recv().is_err());
    }

    #[test]
    fn more_callers_than_the_limit_do_not_stampede() {
        let scenario = Scenario {
            workers: 64,
            ..Scenario::sandbox(50, SECOND)
        };
        for results in assert_efficient(&scenario) {
            // The first burst is all callers at once; after that, even the calls released when a pause ends
            // leave one at a time.
            let t0 = results.releases[0];
            let later: Vec<Instant> = results
                .releases
                .into_iter()
                .filter(|at| *at > t0 + SECOND)
                .collect();
            assert!(gaps(&later).iter().all(|gap| !gap.is_zero()));
        }
    }

    #[test]
    #[ignore = "prints a table of simulated runs; cargo test --release --lib pacer -- --ignored --nocapture"]
    fn print_scenarios() {
        let mut table = Vec::new();
        for (limit, window_ms) in [
            (50, 1000),
            (10, 250),
            (5, 1000),
            (200, 1000),
            (1000, 60_000),
        ] {
            let base = Scenario::sandbox(limit, Duration::from_millis(window_ms));
            let run_for = (base.window * 60).max(base.run_for);
            table.push((
                format!("{limit}/{window_ms}ms"),
                Scenario {
                    run_for,
                    ..base.clone()
                },
            ));
            table.push((
                format!("{limit}/{window_ms}ms no headers"),
                Scenario {
                    run_for,
                    headers: false,
                    ..base.clone()
                },
            ));
        }
        let jittery = Scenario {
            workers: 16,
            latency: (20 * MS, 60 * MS),
            ..Scenario::sandbox(50, SECOND)
        };
        table.push(("50/1s, 20-60 ms one way".into(), jittery.clone()));
        table.push((
            "50/1s, 20-60 ms one way, no permits".into(),
            Scenario {
                permits: false,
                ..jittery
            },
        ));
        for (limit, window_ms) in [(50, 1000), (200, 1000), (10, 250), (20, 2000)] {
            let base = Scenario::sandbox(limit, Duration::from_millis(window_ms));
            table.push((
                format!("{limit}/{window_ms}ms, 3 replicas in one line"),
                Scenario {
                    replicas: 3,
                    workers: 24,
                    run_for: (base.window * 60).max(base.run_for),
                    ..base
                },
            ));
        }
        for (name, scenario) in table {
            let results = simulate(&scenario, 1);
            println!(
                "{name}: {:.1}% of the allowed rate, {:.2}% refused ({} ok, {} refused)",
                results.share_of_allowed * 100.0,
                results.refused_share() * 100.0,
                results.ok,
                results.refused
            );
        }
    }
}
