//! Record ids being delivered right now, in this process: one delivery per (destination, record id) at a time,
//! and a way for another copy of the id to wait until that delivery has ended.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};

use foldhash::fast::RandomState;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// Record ids being delivered right now, per destination, with whoever waits for each to be let go: a record
/// in flight must not be answered (nor sent again) until its delivery has ended.
#[derive(Default)]
pub struct InFlight {
    ids: Mutex<HashMap<String, Held>>,
    /// Hashes the ids into their keys in [`Held`].
    keys: RandomState,
    metrics: Option<Arc<Metrics>>,
}

/// A destination's ids in flight, each with the senders that wake its waiters when dropped, and the gauge
/// that shows how many there are.
///
/// Every id a stream reads passes through here twice (held, then let go), so an id is kept as a 64-bit hash of
/// it rather than a copy, and the hasher is foldhash rather than SipHash. Two ids with the same hash are taken
/// for one: the second waits until the first is let go, and is then looked up in the store like any copy that
/// waited, so a collision costs time, never a wrong answer. Clients choose the ids, but foldhash is seeded at
/// random per process, and the table holds only the ids in flight, which the streams' queues bound.
#[derive(Default)]
struct Held {
    ids: HashMap<u64, Vec<oneshot::Sender<()>>, RandomState>,
    gauge: Option<Gauge>,
}

impl Held {
    fn show_count(&self) {
        if let Some(gauge) = &self.gauge {
            gauge.set(self.ids.len() as i64);
        }
    }
}

/// The answer to a claim on one record id.
pub enum Claim {
    /// The caller now delivers it.
    Taken,
    /// Another delivery holds it; this resolves (with an error, as no value is ever sent) once it is let go.
    Held(oneshot::Receiver<()>),
}

impl InFlight {
    /// A table whose count per destination shows in `metrics` (`None`: metrics are off).
    pub fn with_metrics(metrics: Option<Arc<Metrics>>) -> Self {
        InFlight {
            ids: Mutex::default(),
            keys: RandomState::default(),
            metrics,
        }
    }

    /// Claims each id for delivery, in order: an id listed twice is held by its first copy.
    pub fn claim(&self, destination_id: &str, record_ids: &[&str]) -> Vec<Claim> {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = ids
            .entry(destination_id.to_string())
            .or_insert_with(|| Held {
                ids: HashMap::default(),
                gauge: self
                    .metrics
                    .as_ref()
                    .map(|metrics| metrics.in_flight(destination_id)),
            });
        let claims = record_ids
            .iter()
            .map(|id| match held.ids.entry(self.keys.hash_one(id)) {
                Entry::Occupied(mut waiters) => {
                    let (wake, wait) = oneshot::channel();
                    waiters.get_mut().push(wake);
                    Claim::Held(wait)
                }
                Entry::Vacant(vacant) => {
                    vacant.insert(Vec::new());
                    Claim::Taken
                }
            })
            .collect();
        held.show_count();
        claims
    }

    /// Lets the ids go and wakes whoever waits for them.
    pub fn release(&self, destination_id: &str, record_ids: &[String]) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = ids.get_mut(destination_id) {
            for id in record_ids {
                // Dropping the senders is the wake-up.
                held.ids.remove(&self.keys.hash_one(id.as_str()));
            }
            held.show_count();
            if held.ids.is_empty() {
                ids.remove(destination_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_held_id_wakes_its_waiters_when_let_go() {
        let in_flight = InFlight::default();
        let claims = in_flight.claim("d", &["a", "b", "a"]);
        assert!(matches!(claims[0], Claim::Taken));
        assert!(matches!(claims[1], Claim::Taken));
        let Claim::Held(mut waiting) = claims.into_iter().nth(2).unwrap() else {
            panic!("the second copy of a must wait for the first")
        };
        // Another destination's ids are apart.
        assert!(matches!(in_flight.claim("e", &["a"])[0], Claim::Taken));
        assert!(waiting
            .try_recv()
            .is_err_and(|error| error == oneshot::error::TryRecvError::Empty));
        in_flight.release("d", &["b".to_string()]);
        assert!(waiting
            .try_recv()
            .is_err_and(|error| error == oneshot::error::TryRecvError::Empty));
        in_flight.release("d", &["a".to_string()]);
        assert!(
            waiting.await.is_err(),
            "woken by the release, with no value"
        );
        assert!(matches!(in_flight.claim("d", &["a"])[0], Claim::Taken));
    }
}
