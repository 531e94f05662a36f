//! Concurrency with order: `concurrency` workers take units from one ready queue, so no worker idles while a
//! unit could go. Units sharing an ordering key go one after another in arrival order: while a key has a unit
//! in flight (or in the ready queue), its later units wait in that key's own chain. When that unit ends, the
//! key's next one goes to the back of the ready queue if other units wait there (the worker carries it on itself
//! if none do). The keys with work thus take turns: no key's chain keeps a worker while other units are ready,
//! and a unit waits for a worker no longer than the units ready before it take — at most one per other key,
//! plus those without a key. Once the stream stops, units still queued are released instead of sent.
//!
//! Every queued unit — in the ready queue or in a chain — holds room in one semaphore: the dispatch waits for room
//! (this is the backpressure, and what keeps memory flat), and the room goes back when a worker takes the unit.
//! The room holds `concurrency × QUEUED_PER_WORKER` units, or more of them when they carry few records and no
//! ordering key (see [`Room`]).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::attempt::{deliver, CallContext, UnitEnd};
use crate::delivery::report::DeliveryUnit;
use crate::delivery::sink::ReportSink;
use crate::groove::GrooveConnection;
use crate::metrics::DestinationMetrics;

/// Units queued per worker beyond the ones in flight; small, so that memory stays flat and the stream is read
/// only as fast as Groove answers.
const QUEUED_PER_WORKER: usize = 4;

/// Single-record units without an ordering key the room holds at the least, whatever the concurrency. Creates
/// are claimed before they are queued, and a claim waits for a commit: the units queued must last the workers
/// through it, or they idle, and at low concurrency `QUEUED_PER_WORKER` units per worker last only a few
/// milliseconds of fast calls.
const LEAST_QUEUED_RECORDS: usize = 256;

/// The dispatcher's room, sized so that it holds `concurrency × QUEUED_PER_WORKER` units of any kind, and at
/// least [`LEAST_QUEUED_RECORDS`] single-record units without an ordering key: such a unit takes a permit per
/// record, up to `per_unit`, which every other unit takes. Large units (batches, whose bodies weigh most) are so
/// held to the same count as ever. Keyed units are too: a key's units wait in its chain one after another, and
/// a deeper room would only make chains longer, and a lone key's wait behind them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Room {
    /// The semaphore's size.
    permits: usize,
    /// What a unit takes at the most, and every keyed unit.
    per_unit: usize,
}

impl Room {
    fn for_concurrency(concurrency: usize) -> Room {
        let units = concurrency.max(1) * QUEUED_PER_WORKER;
        let per_unit = LEAST_QUEUED_RECORDS.div_ceil(units).max(1);
        Room {
            permits: units * per_unit,
            per_unit,
        }
    }

    /// The permits a unit takes.
    fn of(&self, unit: &DeliveryUnit) -> u32 {
        let permits = match unit.ordering_key {
            Some(_) => self.per_unit,
            None => unit.record_ids.len().clamp(1, self.per_unit),
        };
        // At most `per_unit`, which is at most `LEAST_QUEUED_RECORDS`.
        permits as u32
    }
}

/// A queued unit with its room in the queue.
type Queued = (OwnedSemaphorePermit, DeliveryUnit);

/// The keys with a unit in flight or ready, each with its chain. A key without an entry has nothing in flight.
#[derive(Default)]
struct Chains(Mutex<HashMap<String, Chain>>);

struct Chain {
    /// Where the key's next unit goes when its unit in flight ends. Why each busy key holds a sender: the workers
    /// stop once the ready queue closes, which is when its last sender goes, so this keeps the queue open exactly
    /// while a chain may still feed it, with no count to keep and no close to order against a chain's last send.
    /// A sender per worker would keep it open for ever; a weak one would let it close under a running chain.
    ready: async_channel::Sender<Queued>,
    /// The key's units that wait behind the one in flight, in arrival order.
    waiting: VecDeque<Queued>,
}

impl Chains {
    /// Queues `unit` behind its key's unit in flight; gives it back when the key has none (the key then has one:
    /// the unit given back, which goes to `ready`).
    fn wait_or_go(
        &self,
        key: String,
        unit: Queued,
        ready: &async_channel::Sender<Queued>,
    ) -> Option<Queued> {
        let mut chains = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        match chains.entry(key) {
            Entry::Occupied(mut chain) => {
                chain.get_mut().waiting.push_back(unit);
                None
            }
            Entry::Vacant(free) => {
                free.insert(Chain {
                    ready: ready.clone(),
                    waiting: VecDeque::new(),
                });
                Some(unit)
            }
        }
    }

    /// The next unit of `key`, whose unit in flight just ended, for the caller to carry on at once when no other
    /// unit is ready. Otherwise the next unit goes behind the ready ones, so that a worker does not keep to one
    /// key while other keys' units wait. The key is free when none waits.
    fn next(&self, key: &str) -> Option<Queued> {
        let mut chains = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let chain = chains.get_mut(key)?;
        let Some(next) = chain.waiting.pop_front() else {
            chains.remove(key);
            return None;
        };
        if chain.ready.is_empty() {
            // Through the queue it would cost a send and a wake-up, for the same order.
            return Some(next);
        }
        // The caller, a worker, holds a receiver and the chain a sender: the queue is open.
        if chain.ready.try_send(next).is_err() {
            tracing::error!("delivery worker stopped early");
        }
        None
    }
}

pub struct Dispatcher {
    ready: async_channel::Sender<Queued>,
    /// Room for queued units; the channel and the chains are unbounded themselves.
    room: Arc<Semaphore>,
    room_size: Room,
    chains: Arc<Chains>,
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
        Self::start_with(concurrency, metrics, stop.clone(), || GrooveCourier {
            connection: context.client.connection(),
            context: context.clone(),
            reports: reports.clone(),
            stop: stop.clone(),
        })
    }

    /// Starts `concurrency` workers, each with a courier of its own from `courier`.
    fn start_with<C: Courier>(
        concurrency: usize,
        metrics: DestinationMetrics,
        stop: CancellationToken,
        mut courier: impl FnMut() -> C,
    ) -> Self {
        let (ready, ready_rx) = async_channel::unbounded();
        let chains = Arc::new(Chains::default());
        let mut workers = JoinSet::new();
        for _ in 0..concurrency {
            workers.spawn(
                work(courier(), ready_rx.clone(), chains.clone(), metrics.clone())
                    // The stream's span: its Groove calls are children of it.
                    .in_current_span(),
            );
        }
        let room_size = Room::for_concurrency(concurrency);
        Dispatcher {
            ready,
            room: Arc::new(Semaphore::new(room_size.permits)),
            room_size,
            chains,
            workers,
            stop,
            metrics,
        }
    }

    /// Queues a unit, waiting while the queue is full (this is the backpressure). Gives the unit back if the
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
        let permit = tokio::select! {
            biased;
            () = self.stop.cancelled() => return Err(unit),
            permit = self.room.clone().acquire_many_owned(self.room_size.of(&unit)) => permit,
        };
        // The semaphore is never closed.
        let Ok(permit) = permit else {
            return Err(unit);
        };
        let queued = match &unit.ordering_key {
            Some(key) => match self
                .chains
                .wait_or_go(key.clone(), (permit, unit), &self.ready)
            {
                Some(queued) => queued,
                None => return Ok(()),
            },
            None => (permit, unit),
        };
        // Workers only stop after this sender is dropped, so this cannot fail while `self` lives.
        self.ready.try_send(queued).map_err(|error| {
            tracing::error!("delivery worker stopped early");
            error.into_inner().1
        })
    }

    /// Lets the workers finish everything queued, then returns.
    pub async fn finish(self) {
        let Dispatcher {
            ready, mut workers, ..
        } = self;
        // The queue closes once the busy keys' chains have run dry too.
        drop(ready);
        while let Some(joined) = workers.join_next().await {
            if let Err(error) = joined {
                tracing::error!(%error, "delivery worker failed");
            }
        }
    }
}

/// What a worker does with the units it takes: a trait so that tests can run the real workers with scripted
/// deliveries, and the workers are generic over it so that production makes no dynamic call for it.
trait Courier: Send + 'static {
    /// Delivers `unit` (or releases it once the stream stopped) and hands over how it ended.
    fn carry(&mut self, unit: DeliveryUnit) -> impl Future<Output = ()> + Send;

    /// Ends when something held while idle has to be let go; polled only while the worker waits for a unit.
    fn idle_end(&mut self) -> impl Future<Output = ()> + Send;
}

/// Sends units to Groove over the worker's own connection and hands their ends to the stream's sink.
struct GrooveCourier {
    context: CallContext,
    connection: GrooveConnection,
    reports: ReportSink,
    stop: CancellationToken,
}

impl Courier for GrooveCourier {
    async fn carry(&mut self, unit: DeliveryUnit) {
        // Once stopped, `deliver` releases the unit before anything of it is sent.
        match deliver(&self.context, &mut self.connection, unit, &self.stop).await {
            UnitEnd::Reported(report) => self.reports.report(*report).await,
            UnitEnd::Released(unit) => self.reports.release(unit).await,
        }
    }

    /// Lets go of the idle connection as soon as Groove closes it.
    fn idle_end(&mut self) -> impl Future<Output = ()> + Send {
        self.connection.closed()
    }
}

async fn work<C: Courier>(
    mut courier: C,
    ready: async_channel::Receiver<Queued>,
    chains: Arc<Chains>,
    metrics: DestinationMetrics,
) {
    loop {
        let mut queued = tokio::select! {
            biased;
            queued = ready.recv() => match queued {
                Ok(queued) => queued,
                Err(_) => return,
            },
            () = courier.idle_end() => continue,
        };
        // A key's units stay on this worker only while no other unit waits for one.
        loop {
            let (room, unit) = queued;
            // The unit leaves the queue: its room goes back.
            drop(room);
            metrics.queued(-(unit.record_ids.len() as i64));
            let key = unit.ordering_key.clone();
            courier.carry(unit).await;
            match key.and_then(|key| chains.next(&key)) {
                Some(next) => queued = next,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests;
