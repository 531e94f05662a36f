//! One rate limit per Groove account across replicas. Every call a replica's pacer releases also takes a slot
//! in the account's line kept in the shared store ([`BookLine`] over [`PaceBook`]), so the calls of all
//! replicas are spaced as one caller's would be (see `groove/pacer.rs`). A pause one replica's pacer begins on a
//! refusal is announced on the change feed and pauses the pacers of every replica.
//!
//! Only replicas on a shared store run this; alone, a pacer's own spacing is the whole story.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use futures::future::BoxFuture;
use tokio::sync::broadcast::error::RecvError;

use crate::groove::pacer::{CallLine, PacerRegistry, Throttle};
use crate::store::{Change, ChangeFeed, PaceBook};

/// The account lines of the shared store, as pacers take slots from them.
#[derive(Debug)]
pub(crate) struct BookLine(pub Arc<dyn PaceBook>);

impl CallLine for BookLine {
    fn reserve<'a>(
        &'a self,
        credential_id: &'a str,
        gap: Duration,
    ) -> BoxFuture<'a, Option<Duration>> {
        Box::pin(async move {
            match self.0.reserve(credential_id, gap).await {
                Ok(wait) => Some(wait),
                Err(error) => {
                    tracing::warn!(%error, credential = %credential_id,
                        "cannot take a slot in the shared call line; calling by this replica's own spacing");
                    None
                }
            }
        })
    }

    fn note_unspaced<'a>(&'a self, credential_id: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(error) = self.0.note_unspaced(credential_id).await {
                tracing::warn!(%error, credential = %credential_id,
                    "cannot tell the shared call line of a first call; calling without telling it");
            }
        })
    }
}

/// Runs until the change feed is gone: tells the other replicas of each pause a pacer here begins, and pauses
/// the pacers here for each pause they begin.
pub(crate) async fn share_pauses(pacers: Arc<PacerRegistry>, changes: Arc<dyn ChangeFeed>) {
    let mut heard = changes.subscribe();
    let mut throttles = pacers.throttles();
    loop {
        tokio::select! {
            throttle = throttles.recv() => match throttle {
                Ok(throttle) => announce(changes.as_ref(), throttle).await,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            change = heard.next() => match change {
                Some(Change::CredentialThrottled { id, until_unix_ms }) => {
                    if let Some(pacer) = pacers.get(&id) {
                        let until = UNIX_EPOCH
                            + Duration::from_millis(u64::try_from(until_unix_ms).unwrap_or(0));
                        pacer.pause_until(until);
                    }
                }
                Some(_) => {}
                None => return,
            },
        }
    }
}

async fn announce(changes: &dyn ChangeFeed, throttle: Throttle) {
    let until_unix_ms = throttle
        .until
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        });
    let change = Change::CredentialThrottled {
        id: throttle.credential_id,
        until_unix_ms,
    };
    if let Err(error) = changes.publish(change).await {
        tracing::warn!(%error, "cannot tell other replicas that groove throttled a credential");
    }
}

#[cfg(test)]
mod tests {

    use std::sync::{Mutex, PoisonError};

    use tokio::time::Instant;

    use super::*;
    use crate::groove::pacer::{LineClock, Pacer};
    use crate::store::{LocalChanges, StoreError, UNSPACED_MEMORY};

    /// Wall-clock milliseconds `ahead` from now, as a throttle event carries them.
    fn unix_ms_in(ahead: Duration) -> i64 {
        i64::try_from(
            (std::time::SystemTime::now() + ahead)
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
        )
        .unwrap_or(i64::MAX)
    }

    /// [`PaceBook`] over a [`LineClock`] in this process, on tokio's clock (paused in tests).
    #[derive(Debug)]
    struct MemoryPaceBook(Mutex<LineClock>);

    impl Default for MemoryPaceBook {
        fn default() -> Self {
            MemoryPaceBook(Mutex::new(LineClock::new(UNSPACED_MEMORY)))
        }
    }

    impl PaceBook for MemoryPaceBook {
        fn reserve<'a>(
            &'a self,
            _credential_id: &'a str,
            gap: Duration,
        ) -> BoxFuture<'a, Result<Duration, StoreError>> {
            let now = Instant::now();
            let slot = self
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .reserve(now, gap);
            Box::pin(async move { Ok(slot - now) })
        }

        fn note_unspaced<'a>(
            &'a self,
            _credential_id: &'a str,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .note_unspaced(Instant::now());
            Box::pin(async { Ok(()) })
        }
    }

    /// Three replicas' registries over one line, and each one's pacer for credential `k1`.
    fn three_replicas_in_one_line(max_rate: Option<f64>) -> (Vec<PacerRegistry>, Vec<Arc<Pacer>>) {
        let book: Arc<dyn PaceBook> = Arc::new(MemoryPaceBook::default());
        let replicas: Vec<PacerRegistry> = (0..3)
            .map(|_| PacerRegistry::shared(None, Arc::new(BookLine(book.clone()))))
            .collect();
        let pacers = replicas
            .iter()
            .map(|registry| registry.pacer("k1", max_rate))
            .collect();
        (replicas, pacers)
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_calls_form_one_line_spaced_for_the_account() {
        // Ten calls a second for the account: each replica alone would make ten a second too.
        let (_replicas, pacers) = three_replicas_in_one_line(Some(10.0));
        let began = Instant::now();
        let calls = pacers.iter().map(|pacer| async move {
            let mut released = Vec::new();
            for _ in 0..5 {
                let permit = pacer.acquire().await;
                released.push(permit.sent_at());
                permit.observe(201, &[]);
            }
            released
        });
        let mut released: Vec<Instant> = futures::future::join_all(calls)
            .await
            .into_iter()
            .flatten()
            .collect();
        released.sort();
        for pair in released.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(gap >= Duration::from_millis(99), "{gap:?} in {released:?}");
        }
        // Fifteen calls, one line: 1.4 s, where three separate replicas would have taken 0.4 s.
        let took = released[14] - began;
        assert!(
            took >= Duration::from_millis(1390) && took <= Duration::from_millis(1500),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_pacer_keeps_one_call_out_until_its_first_answer() {
        let book: Arc<dyn PaceBook> = Arc::new(MemoryPaceBook::default());
        let registry = PacerRegistry::shared(None, Arc::new(BookLine(book)));
        let pacer = registry.pacer("k1", None);
        let first = pacer.acquire().await;
        let second = tokio::time::timeout(Duration::from_secs(5), pacer.acquire()).await;
        assert!(second.is_err(), "a second call left before any answer");
        first.observe(201, &[]);
        let second = tokio::time::timeout(Duration::from_millis(10), pacer.acquire()).await;
        let second = second.expect("released once the first answer came");
        let third = tokio::time::timeout(Duration::from_millis(10), pacer.acquire()).await;
        assert!(third.is_ok(), "unpaced after the first answer");
        drop(second);
    }

    /// Replicas starting together each send a first call without a slot; the line counts them, so the first
    /// call sent with a slot leaves one account gap after the others for each of them.
    #[tokio::test(start_paused = true)]
    async fn first_calls_without_a_slot_push_the_line_back() {
        let (_replicas, pacers) = three_replicas_in_one_line(None);
        let began = Instant::now();
        let mut first_calls = Vec::new();
        for pacer in &pacers {
            first_calls.push(pacer.acquire().await);
        }
        assert!(first_calls.iter().all(|permit| permit.sent_at() == began));
        // 50 calls a window of one second: the account's gap is a fiftieth of it, and a little margin.
        for (permit, remaining) in first_calls.into_iter().zip([49, 48, 47]) {
            let headers = [
                ("X-RateLimit-Limit".to_string(), "50".to_string()),
                ("X-RateLimit-Remaining".to_string(), remaining.to_string()),
                ("X-RateLimit-Reset".to_string(), "1".to_string()),
            ];
            permit.observe(201, &headers);
        }
        let next = pacers[0].acquire().await;
        let waited = next.sent_at() - began;
        assert!(
            waited >= Duration::from_millis(60) && waited <= Duration::from_millis(70),
            "{waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_heard_pauses_the_pacer_and_one_seen_is_announced() {
        let pacers = Arc::new(PacerRegistry::new());
        let changes = Arc::new(LocalChanges::new());
        tokio::spawn(share_pauses(pacers.clone(), changes.clone()));
        let pacer = pacers.pacer("k1", None);
        let mut heard = changes.subscribe();
        tokio::task::yield_now().await;
        changes.send(Change::CredentialThrottled {
            id: "k1".into(),
            until_unix_ms: unix_ms_in(Duration::from_secs(2)),
        });
        assert!(matches!(
            heard.next().await,
            Some(Change::CredentialThrottled { .. })
        ));
        // The task hears it too; the next call waits out the pause.
        tokio::task::yield_now().await;
        let began = Instant::now();
        drop(pacer.acquire().await);
        assert!(
            began.elapsed() > Duration::from_millis(1500),
            "{:?}",
            began.elapsed()
        );
        // A refusal seen here is announced to the others.
        pacer.observe(429, &[("Retry-After".to_string(), "5".to_string())]);
        let announced = tokio::time::timeout(Duration::from_secs(1), heard.next())
            .await
            .expect("announced")
            .expect("feed open");
        let Change::CredentialThrottled { id, until_unix_ms } = announced else {
            panic!("{announced:?}");
        };
        assert_eq!(id, "k1");
        let ahead = until_unix_ms - unix_ms_in(Duration::ZERO);
        assert!((4000..=5000).contains(&ahead), "{ahead}");
    }
}
