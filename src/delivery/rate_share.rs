//! One rate limit per Groove account across replicas: every replica pacing calls with a credential is a
//! member of its pacing (renewed by heartbeat in the shared store), and each member's pacer keeps to 1/N of
//! what it learns, N being the live members. A pause one replica's pacer begins on a refusal is announced on the
//! change feed and pauses the pacers of every replica.
//!
//! Only replicas on a shared store run this; alone, pacers keep their whole rate.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::groove::pacer::{Pacer, PacerRegistry, Throttle};
use crate::store::{Change, ChangeFeed, PacerMembers};

/// How often memberships are renewed and shares recomputed.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);
/// How long a membership outlives its last heartbeat: a replica that stops is no longer counted after this.
pub const MEMBERSHIP_TTL: Duration = Duration::from_secs(3);
/// A pacer no stream holds that has released nothing for this long is not a member any more.
const IDLE_AFTER: Duration = Duration::from_secs(5);

/// What the task needs; see [`share_rates`].
pub(crate) struct RateShare {
    pub members: Arc<dyn PacerMembers>,
    pub replica_id: String,
    pub pacers: Arc<PacerRegistry>,
    pub changes: Arc<dyn ChangeFeed>,
}

/// Runs until the change feed is gone: heartbeats, shares, and pauses both ways.
pub(crate) async fn share_rates(share: RateShare) {
    let mut beats = tokio::time::interval(HEARTBEAT_EVERY);
    beats.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = share.changes.subscribe();
    let mut throttles = share.pacers.throttles();
    loop {
        tokio::select! {
            _ = beats.tick() => heartbeat(&share).await,
            throttle = throttles.recv() => match throttle {
                Ok(throttle) => announce(&share, throttle).await,
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            change = heard.next() => match change {
                Some(Change::CredentialThrottled { id, until_unix_ms }) => {
                    if let Some(pacer) = share.pacers.get(&id) {
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

/// Whether this replica paces calls with the credential now: a stream holds its pacer (besides the registry
/// and the caller's copy), or it released a call lately.
fn active(pacer: &Arc<Pacer>, now: Instant) -> bool {
    Arc::strong_count(pacer) > 2
        || pacer
            .last_release()
            .is_some_and(|at| now.saturating_duration_since(at) < IDLE_AFTER)
}

async fn heartbeat(share: &RateShare) {
    let now = Instant::now();
    let active: HashMap<String, Arc<Pacer>> = share
        .pacers
        .all()
        .into_iter()
        .filter(|(_, pacer)| active(pacer, now))
        .collect();
    let ids: Vec<String> = active.keys().cloned().collect();
    match share
        .members
        .heartbeat(&share.replica_id, &ids, MEMBERSHIP_TTL)
        .await
    {
        Ok(members) => {
            for (id, pacer) in &active {
                let n = members.get(id).copied().unwrap_or(1).max(1);
                pacer.set_share(1.0 / f64::from(n));
            }
        }
        // Shares stay as they were: the replicas counted a second ago are the best guess.
        Err(error) => {
            tracing::warn!(%error, "cannot renew pacing membership; rate shares unchanged")
        }
    }
}

async fn announce(share: &RateShare, throttle: Throttle) {
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
    if let Err(error) = share.changes.publish(change).await {
        tracing::warn!(%error, "cannot tell other replicas that groove throttled a credential");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::future::BoxFuture;

    use super::*;
    use crate::store::{LocalChanges, StoreError};

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

    /// Members as a shared store would count them: a fixed number of other replicas.
    #[derive(Debug, Default)]
    struct Others {
        others: u32,
        beats: Mutex<Vec<Vec<String>>>,
    }

    impl PacerMembers for Others {
        fn heartbeat<'a>(
            &'a self,
            _replica_id: &'a str,
            credential_ids: &'a [String],
            _ttl: Duration,
        ) -> BoxFuture<'a, Result<HashMap<String, u32>, StoreError>> {
            self.beats.lock().unwrap().push(credential_ids.to_vec());
            let members = credential_ids
                .iter()
                .map(|id| (id.clone(), 1 + self.others))
                .collect();
            Box::pin(async move { Ok(members) })
        }
    }

    fn start(others: u32) -> (Arc<PacerRegistry>, Arc<LocalChanges>, Arc<Others>) {
        let pacers = Arc::new(PacerRegistry::new());
        let changes = Arc::new(LocalChanges::new());
        let members = Arc::new(Others {
            others,
            ..Others::default()
        });
        tokio::spawn(share_rates(RateShare {
            members: members.clone(),
            replica_id: "a".into(),
            pacers: pacers.clone(),
            changes: changes.clone(),
        }));
        (pacers, changes, members)
    }

    #[tokio::test(start_paused = true)]
    async fn a_pacer_in_use_takes_its_share_of_the_members() {
        let (pacers, _changes, members) = start(2);
        let used = pacers.pacer("k1", Some(30.0));
        let idle = pacers.pacer("k2", Some(30.0));
        drop(idle);
        tokio::time::sleep(HEARTBEAT_EVERY * 2).await;
        assert!((used.share() - 1.0 / 3.0).abs() < 1e-9, "{}", used.share());
        assert_eq!(pacers.get("k2").unwrap().share(), 1.0);
        assert_eq!(
            members.beats.lock().unwrap().last().unwrap(),
            &vec!["k1".to_string()]
        );
        // A third of 30 a second: 10 calls take 900 ms after the first.
        let began = Instant::now();
        for _ in 0..10 {
            drop(used.acquire().await);
        }
        let took = began.elapsed();
        assert!(
            took >= Duration::from_millis(890) && took <= Duration::from_millis(1000),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_throttle_heard_pauses_the_pacer_and_one_seen_is_announced() {
        let (pacers, changes, _members) = start(0);
        let pacer = pacers.pacer("k1", None);
        let mut heard = changes.subscribe();
        tokio::time::sleep(HEARTBEAT_EVERY).await;
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
