//! `groove-sandbox`: an in-memory fake of the Groove helpdesk REST API v1, for integration tests,
//! demos and benchmarks.
//!
//! It follows `docs/groove-api.md` (our description of the real API) and is deliberately strict
//! where the document is: required fields, the five ticket states, the 14 webhook events, one
//! record per call. Where Groove's behaviour is unknown (error bodies, rate-limit headers,
//! responses of some PUTs) the choice made is documented next to the code. It depends on nothing
//! of the service: a fake that shared the client's validation would agree with its bugs.
//!
//! `docs/groove-api.md §N` in this crate's comments is the service repository's
//! `docs/groove-api.md` (`../../docs/groove-api.md` from this crate), section N.
//!
//! Beyond Groove, for tests and benchmarks: random faults and deterministic scripted answers
//! ([`Faults`], [`ScriptedAnswer`]), a recording of every request with the answer's status and
//! headers ([`ReceivedRequest`]), an opt-in bulk-capable gateway mode
//! ([`Faults::accept_batches`], off by default because Groove has none), a bound on stored
//! tickets ([`SandboxConfig::max_stored_tickets`]) and a set of accepted API keys that can be
//! replaced while it runs, as when a key is rotated or revoked ([`SandboxHandle::set_api_keys`]).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use groove_sandbox::SandboxConfig;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let handle = groove_sandbox::start(listener, SandboxConfig::default()).await?;
//! println!("groove at {}", handle.base_url()); // http://127.0.0.1:PORT/v1
//! handle.shutdown().await;
//! # Ok(())
//! # }
//! ```

mod api;
mod clock;
mod conn;
mod control;
mod faults;
mod params;
mod recorder;
mod server;
mod store;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use faults::{Faults, FaultsError, RateLimit, ScriptedAnswer};
pub use recorder::{ReceivedRequest, SandboxStats};
pub use store::Seeds;

use conn::{KillSwitch, KillableListener};
use server::App;

/// The API key a sandbox accepts unless configured otherwise.
pub const DEFAULT_API_KEY: &str = "sandbox-key";

/// How many requests are kept for [`SandboxHandle::requests`] unless configured otherwise.
pub const DEFAULT_MAX_RECORDED_REQUESTS: usize = 100_000;

/// How many tickets a sandbox keeps unless configured otherwise
/// ([`SandboxConfig::max_stored_tickets`]).
pub const DEFAULT_MAX_STORED_TICKETS: usize = 100_000;

/// How long [`SandboxHandle::shutdown`] waits for in-flight calls before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run a sandbox.
#[derive(Clone, Debug)]
pub struct SandboxConfig {
    /// The only token accepted at start, as `Authorization: Bearer` or `?access_token=`; change the accepted
    /// tokens later with [`SandboxHandle::set_api_keys`].
    pub api_key: String,
    /// Fault knobs at start; change them later with [`SandboxHandle::set_faults`].
    pub faults: Faults,
    /// Ring-buffer size of the request recording; 0 records nothing (counters still run).
    pub max_recorded_requests: usize,
    /// How many tickets are kept, so a long benchmark runs in bounded memory. Beyond it the
    /// oldest ticket (with its messages) is evicted; numbers keep increasing and are never
    /// reused. An evicted ticket is answered 404 like one never created, and is gone from
    /// `GET /tickets` (and its `total_count`), `GET /tickets/count` and the snapshot. Customers
    /// the ticket created stay. 0 keeps no ticket at all.
    pub max_stored_tickets: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            api_key: DEFAULT_API_KEY.to_owned(),
            faults: Faults::default(),
            max_recorded_requests: DEFAULT_MAX_RECORDED_REQUESTS,
            max_stored_tickets: DEFAULT_MAX_STORED_TICKETS,
        }
    }
}

/// Starts serving on `listener` (bind it to port 0 for tests) and returns at once.
///
/// Fails with `InvalidInput` if `config.faults` does not [validate](Faults::validate).
pub async fn start(listener: TcpListener, config: SandboxConfig) -> io::Result<SandboxHandle> {
    config
        .faults
        .validate()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let addr = listener.local_addr()?;
    let base_url = format!("http://{}/v1", reachable(addr));
    let app = Arc::new(App::new(
        config.api_key,
        base_url.clone(),
        config.faults,
        config.max_recorded_requests,
        config.max_stored_tickets,
    ));
    let service =
        server::router(Arc::clone(&app)).into_make_service_with_connect_info::<KillSwitch>();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let served = axum::serve(KillableListener::new(listener), service)
            .with_graceful_shutdown(async {
                // A dropped sender (handle dropped) stops the server too.
                let _ = stop_rx.await;
            })
            .await;
        if let Err(err) = served {
            tracing::error!("sandbox server failed: {err}");
        }
    });
    Ok(SandboxHandle {
        addr,
        base_url,
        app,
        stop: Some(stop_tx),
        task: Some(task),
    })
}

/// A listener bound to all interfaces is still reached through loopback by local clients.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// A running sandbox. Dropping it stops the server too (without waiting); prefer
/// [`shutdown`](Self::shutdown) to wait for it.
pub struct SandboxHandle {
    addr: SocketAddr,
    base_url: String,
    app: Arc<App>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl SandboxHandle {
    /// The address the sandbox listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The API base URL, e.g. `http://127.0.0.1:PORT/v1`, with no trailing slash.
    pub fn base_url(&self) -> String {
        self.base_url.clone()
    }

    /// The control-endpoint root, e.g. `http://127.0.0.1:PORT/_sandbox`.
    pub fn control_url(&self) -> String {
        format!("http://{}/_sandbox", reachable(self.addr))
    }

    /// The API keys the sandbox accepts now.
    pub fn api_keys(&self) -> Vec<String> {
        self.app.api_keys()
    }

    /// From now on only `keys` are accepted (any of them); calls with another token are answered 401. Like a
    /// Groove admin generating a new token, or revoking one; an empty list refuses every call. Same as
    /// `PUT /_sandbox/api_keys` with `{"api_keys": [...]}`.
    pub fn set_api_keys(&self, keys: &[&str]) {
        self.app
            .set_api_keys(keys.iter().map(|key| key.to_string()).collect());
    }

    /// Ids of the seeded data.
    pub fn seeds(&self) -> Seeds {
        self.app.store().seeds.clone()
    }

    /// Recorded requests (API and unknown paths, not control calls) in arrival order; at most
    /// `max_recorded_requests`, the oldest evicted first.
    pub fn requests(&self) -> Vec<ReceivedRequest> {
        self.app.recorder.requests()
    }

    /// Forgets recorded requests; counters and `seq` numbering continue.
    pub fn clear_requests(&self) {
        self.app.recorder.clear();
    }

    /// The fault knobs in force; `script` holds the scripted answers not yet consumed.
    pub fn faults(&self) -> Faults {
        self.app.gate.current()
    }

    /// Replaces the fault knobs (including the remaining script) and restarts the rate-limit
    /// window.
    ///
    /// # Panics
    /// If `faults` does not [validate](Faults::validate): a test set it up wrong.
    pub fn set_faults(&self, faults: Faults) {
        if let Err(err) = self.try_set_faults(faults) {
            panic!("invalid sandbox faults: {err}");
        }
    }

    /// Like [`set_faults`](Self::set_faults), reporting invalid knobs instead of panicking.
    pub fn try_set_faults(&self, faults: Faults) -> Result<(), FaultsError> {
        faults.validate()?;
        self.app.gate.replace(faults);
        Ok(())
    }

    /// Counters since start.
    pub fn stats(&self) -> SandboxStats {
        self.app.recorder.stats()
    }

    /// Everything the sandbox holds (tickets with messages, customers, groups, webhooks with ids,
    /// knowledge bases with articles, categories and settings, widgets with settings) as JSON,
    /// for asserting side effects. Same as `GET /_sandbox/data`.
    pub fn snapshot(&self) -> serde_json::Value {
        let ctx = self.app.ctx();
        api::snapshot(&self.app.store(), &ctx)
    }

    /// Stops accepting, lets in-flight calls finish (up to a few seconds) and waits for the server.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for SandboxHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl std::fmt::Debug for SandboxHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SandboxHandle")
            .field("addr", &self.addr)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}
