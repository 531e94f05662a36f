//! Concurrency with order: `concurrency` workers; units sharing an ordering key always go to the same worker
//! (its lane), so they are sent one after another in arrival order; units without a key go to whichever worker
//! is free. Once the stream stops, units still queued are released instead of sent.
//!
//! Each lane is a channel with one receiver, its worker. The units without a key share a multi-consumer channel
//! (`async-channel`) that every worker receives from; its capacity is a semaphore whose permit travels with the
//! unit, so that a dispatch waiting for room can still give its unit back when the stream stops.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::delivery::attempt::{deliver, CallContext, UnitEnd};
use crate::delivery::report::DeliveryUnit;
use crate::delivery::sink::ReportSink;
use crate::metrics::DestinationMetrics;

/// Units queued per lane beyond the one in flight; small, so that memory stays flat and the stream is read
/// only as fast as Groove answers.
const LANE_CAPACITY: usize = 4;

/// A unit without a key, with its place in the shared queue: given back when a worker takes the unit.
type Shared = (OwnedSemaphorePermit, DeliveryUnit);

pub struct Dispatcher {
    lanes: Vec<mpsc::Sender<DeliveryUnit>>,
    shared: async_channel::Sender<Shared>,
    /// Room in `shared`, which is unbounded itself.
    shared_room: Arc<Semaphore>,
    workers: JoinSet<()>,
    stop: CancellationToken,
    metrics: DestinationMetrics,
}

impl Dispatcher {
    /// Starts the workers; each finished unit's report goes to `reports`. Once `stop` is cancelled no unit is
    /// sent any more: calls on the wire finish, the rest is released.
    pub fn start(context: CallContext, reports: ReportSink, stop: CancellationToken) -> Self {
        let concurrency = context.options.concurrency.max(1) as usize;
        let metrics = context.metrics.clone();
        let (shared, shared_rx) = async_channel::unbounded();
        let shared_room = Arc::new(Semaphore::new(concurrency * LANE_CAPACITY));
        let mut lanes = Vec::with_capacity(concurrency);
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            let (lane, lane_rx) = mpsc::channel(LANE_CAPACITY);
            lanes.push(lane);
            workers.spawn(work(
                context.clone(),
                lane_rx,
                shared_rx.clone(),
                reports.clone(),
                stop.clone(),
            ));
        }
        Dispatcher {
            lanes,
            shared,
            shared_room,
            workers,
            stop,
            metrics,
        }
    }

    /// Queues a unit, waiting while its queue is full (this is the backpressure). Gives the unit back if the
    /// stream stops first.
    pub async fn dispatch(&self, unit: DeliveryUnit) -> Result<(), DeliveryUnit> {
        // Counted before it is queued, so a worker that takes it at once never counts it out first.
        let records = unit.record_ids.len() as i64;
        self.metrics.queued(records);
        let queued = self.queue(unit).await;
        if queued.is_err() {
            self.metrics.queued(-records);
        }
        queued
    }

    async fn queue(&self, unit: DeliveryUnit) -> Result<(), DeliveryUnit> {
        let sender = match &unit.ordering_key {
            Some(key) => &self.lanes[lane_of(key, self.lanes.len())],
            None => return self.dispatch_shared(unit).await,
        };
        let slot = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(unit),
            slot = sender.reserve() => slot,
        };
        match slot {
            Ok(slot) => {
                slot.send(unit);
                Ok(())
            }
            // Workers only stop after the senders are dropped, so this cannot happen while `self` lives.
            Err(_) => {
                tracing::error!("delivery worker stopped early");
                Err(unit)
            }
        }
    }

    /// Queues a unit without a key for whichever worker is free; as [`Dispatcher::dispatch`].
    async fn dispatch_shared(&self, unit: DeliveryUnit) -> Result<(), DeliveryUnit> {
        let permit = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(unit),
            permit = self.shared_room.clone().acquire_owned() => permit,
        };
        // The semaphore is never closed, and the workers only stop after the sender is dropped.
        let Ok(permit) = permit else {
            return Err(unit);
        };
        self.shared.try_send((permit, unit)).map_err(|error| {
            tracing::error!("delivery worker stopped early");
            error.into_inner().1
        })
    }

    /// Lets the workers finish everything queued, then returns.
    pub async fn finish(self) {
        let Dispatcher {
            lanes,
            shared,
            mut workers,
            ..
        } = self;
        drop(lanes);
        drop(shared);
        while let Some(joined) = workers.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "delivery worker failed");
            }
        }
    }
}

fn lane_of(key: &str, lanes: usize) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

async fn work(
    context: CallContext,
    mut lane: mpsc::Receiver<DeliveryUnit>,
    shared: async_channel::Receiver<Shared>,
    reports: ReportSink,
    stop: CancellationToken,
) {
    let mut connection = context.client.connection();
    let mut lane_open = true;
    let mut shared_open = true;
    while lane_open || shared_open {
        // The lane first: keyed units wait behind nothing but their own key.
        let unit = tokio::select! {
            biased;
            unit = lane.recv(), if lane_open => match unit {
                Some(unit) => unit,
                None => {
                    lane_open = false;
                    continue;
                }
            },
            unit = shared.recv(), if shared_open => match unit {
                // The unit leaves the queue: its room goes back.
                Ok((_room, unit)) => unit,
                Err(_) => {
                    shared_open = false;
                    continue;
                }
            },
            // Idle: let go of the connection as soon as Groove closes it.
            () = connection.closed() => continue,
        };
        context.metrics.queued(-(unit.record_ids.len() as i64));
        // Once stopped, `deliver` releases the unit before anything of it is sent.
        match deliver(&context, &mut connection, unit, &stop).await {
            UnitEnd::Reported(report) => reports.report(*report).await,
            UnitEnd::Released(unit) => reports.release(unit).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_maps_to_the_same_lane() {
        // Computed twice, on separately built keys: a hasher seeded per call (`RandomState`) would scatter a
        // key over lanes and lose its order.
        let keys: Vec<String> = (0..200).map(|n| format!("tickets/{n}/state")).collect();
        for lanes in [1, 8, 16] {
            let first: Vec<usize> = keys.iter().map(|key| lane_of(key, lanes)).collect();
            let again: Vec<usize> = keys
                .iter()
                .map(|key| lane_of(&key.clone(), lanes))
                .collect();
            assert_eq!(first, again);
        }
    }

    #[test]
    fn keys_spread_over_every_lane() {
        for lanes in [1, 8, 16] {
            let mut used = vec![false; lanes];
            for n in 0..1_000 {
                let lane = lane_of(&format!("customers/{n}"), lanes);
                assert!(lane < lanes, "{lane} of {lanes}");
                used[lane] = true;
            }
            assert!(used.iter().all(|used| *used), "{used:?}");
        }
    }
}
