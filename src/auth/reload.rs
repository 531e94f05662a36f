//! Files read once at start-up and again when they change or the process gets SIGHUP: the callers file,
//! the TLS certificate, its key and the client CA. A reload swaps the value for new calls and connections;
//! calls and streams already open keep what they started with. A file that fails to load leaves the last
//! good value in force and is tried again at its next change.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::task::AbortOnDropHandle;

/// How often the files' metadata is compared. Kubernetes swaps a mounted Secret by replacing a symlink, and
/// inotify on the old file misses that; a metadata poll of a few small files costs nothing and sees it.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What identifies one version of a file without reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamps(paths: &[PathBuf]) -> Vec<Option<Stamp>> {
    paths
        .iter()
        .map(|path| {
            std::fs::metadata(path).ok().map(|metadata| Stamp {
                modified: metadata.modified().ok(),
                len: metadata.len(),
                inode: inode(&metadata),
            })
        })
        .collect()
}

#[cfg(unix)]
fn inode(metadata: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(metadata)
}

#[cfg(not(unix))]
fn inode(_metadata: &std::fs::Metadata) -> u64 {
    0
}

/// Keeps `target` loaded from `paths` until the returned handle is dropped.
pub fn keep_reloaded<T, E, L>(
    what: &'static str,
    paths: Vec<PathBuf>,
    target: Arc<ArcSwap<T>>,
    load: L,
) -> AbortOnDropHandle<()>
where
    T: Send + Sync + 'static,
    E: Display,
    L: Fn() -> Result<T, E> + Send + 'static,
{
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut hangups = hangup_signals();
        let mut seen = stamps(&paths);
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let hangup = tokio::select! {
                _ = ticks.tick() => false,
                () = next_hangup(&mut hangups) => true,
            };
            let now = stamps(&paths);
            if !hangup && now == seen {
                continue;
            }
            seen = now;
            match load() {
                Ok(value) => {
                    target.store(Arc::new(value));
                    tracing::info!(what, hangup, "reloaded");
                }
                Err(error) => {
                    tracing::error!(what, %error, "reload failed; the previous version stays in force");
                }
            }
        }
    }))
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for sighup; files are reloaded only when they change");
            None
        }
    }
}

#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) {
    let received = match hangups {
        Some(signal) => signal.recv().await.is_some(),
        None => false,
    };
    if !received {
        std::future::pending::<()>().await;
    }
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

#[cfg(not(unix))]
async fn next_hangup(_hangups: &mut Hangups) {
    std::future::pending().await
}
