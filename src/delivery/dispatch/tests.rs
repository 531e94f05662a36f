use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::MutexGuard;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::*;

fn unit(id: &str, key: &str) -> DeliveryUnit {
    DeliveryUnit {
        record_ids: vec![id.to_string()],
        records: Vec::new(),
        calls: Vec::new(),
        ordering_key: Some(key.to_string()),
        repeatable: true,
    }
}

async fn queued(room: &Arc<Semaphore>, id: &str, key: &str) -> Queued {
    (room.clone().acquire_owned().await.unwrap(), unit(id, key))
}

fn id(queued: Option<Queued>) -> Option<String> {
    queued.map(|(_, unit)| unit.record_ids[0].clone())
}

#[tokio::test]
async fn a_key_goes_at_once_when_free_and_its_later_units_follow_in_order() {
    let room = Arc::new(Semaphore::new(10));
    let (ready, ready_rx) = async_channel::unbounded();
    let chains = Chains::default();
    let next_ready = || id(ready_rx.try_recv().ok());
    assert_eq!(
        id(chains.wait_or_go("t/1".into(), queued(&room, "a1", "t/1").await, &ready)),
        Some("a1".into())
    );
    assert_eq!(
        id(chains.wait_or_go("t/2".into(), queued(&room, "b1", "t/2").await, &ready)),
        Some("b1".into())
    );
    for later in ["a2", "a3", "a4"] {
        assert_eq!(
            id(chains.wait_or_go("t/1".into(), queued(&room, later, "t/1").await, &ready)),
            None
        );
    }
    assert_eq!(room.available_permits(), 7, "waiting units hold their room");
    assert_eq!(
        id(chains.next("t/1")),
        Some("a2".into()),
        "nothing else is ready"
    );
    ready.try_send(queued(&room, "c1", "t/3").await).unwrap();
    assert_eq!(id(chains.next("t/1")), None, "c1 is ready");
    assert_eq!(
        room.available_permits(),
        7,
        "a unit made ready keeps its room"
    );
    assert_eq!(next_ready(), Some("c1".into()));
    assert_eq!(next_ready(), Some("a3".into()), "a3 goes after c1");
    assert_eq!(id(chains.next("t/2")), None);
    assert_eq!(next_ready(), None, "t/2 is free again");
    assert_eq!(
        id(chains.wait_or_go("t/2".into(), queued(&room, "b2", "t/2").await, &ready)),
        Some("b2".into())
    );
    assert_eq!(id(chains.next("t/1")), Some("a4".into()));
    assert_eq!(id(chains.next("t/1")), None);
    assert_eq!(
        id(chains.wait_or_go("t/1".into(), queued(&room, "a5", "t/1").await, &ready)),
        Some("a5".into())
    );
    drop(ready);
    assert_eq!(id(chains.next("t/1")), None);
    assert!(!ready_rx.is_closed(), "t/2 may still make a unit ready");
    assert_eq!(id(chains.next("t/2")), None);
    assert!(
        ready_rx.is_closed(),
        "no chain can make a unit ready any more"
    );
}

// The real dispatcher and workers, with a scripted courier in place of Groove, in paused time.

/// What the workers did, as the scripted courier saw it. Unit numbers are arrival order.
#[derive(Default)]
struct Log {
    /// Each unit's place among all starts and ends.
    started: Vec<Option<usize>>,
    /// Each unit's place among all starts and ends, and when it ended.
    ended: Vec<Option<(usize, Instant)>>,
    events: usize,
    done: usize,
    in_flight: usize,
    max_in_flight: usize,
    keys_in_flight: HashSet<String>,
    /// What should never happen: a key with two units in flight, a unit started twice.
    problems: Vec<String>,
    /// Units in flight integrated over virtual time, for the mean number in flight.
    busy: Duration,
    changed_at: Option<Instant>,
}

impl Log {
    fn new(units: usize) -> Self {
        Log {
            started: vec![None; units],
            ended: vec![None; units],
            ..Log::default()
        }
    }

    fn count_in_flight(&mut self, change: isize) {
        let now = Instant::now();
        if let Some(changed_at) = self.changed_at {
            self.busy += (now - changed_at) * self.in_flight as u32;
        }
        self.changed_at = Some(now);
        self.in_flight = self.in_flight.checked_add_signed(change).unwrap();
        self.max_in_flight = self.max_in_flight.max(self.in_flight);
    }

    fn start(&mut self, number: usize, key: Option<&str>) {
        self.count_in_flight(1);
        if self.started[number].replace(self.events).is_some() {
            self.problems.push(format!("unit {number} started twice"));
        }
        self.events += 1;
        if let Some(key) = key {
            if !self.keys_in_flight.insert(key.to_string()) {
                self.problems.push(format!(
                    "unit {number} started while {key} had one in flight"
                ));
            }
        }
    }

    fn end(&mut self, number: usize, key: Option<&str>) {
        self.count_in_flight(-1);
        self.ended[number] = Some((self.events, Instant::now()));
        self.events += 1;
        self.done += 1;
        if let Some(key) = key {
            self.keys_in_flight.remove(key);
        }
    }

    fn ended_at(&self, number: usize) -> Instant {
        self.ended[number].expect("every unit ends").1
    }

    /// The mean number of units in flight from `since` to the last end.
    fn mean_in_flight(&self, since: Instant) -> f64 {
        let elapsed = self.changed_at.expect("something ran") - since;
        self.busy.as_secs_f64() / elapsed.as_secs_f64()
    }
}

/// How long each unit's delivery takes, by unit number, and what the workers did with them.
struct Script {
    took: Vec<Duration>,
    /// Deliveries in flight wait for a permit of this: none, and every worker hangs on its unit.
    gate: Semaphore,
    log: Mutex<Log>,
}

impl Script {
    fn new(took: Vec<Duration>) -> Arc<Self> {
        Self::with_gate(took, Semaphore::MAX_PERMITS)
    }

    fn with_gate(took: Vec<Duration>, permits: usize) -> Arc<Self> {
        Arc::new(Script {
            log: Mutex::new(Log::new(took.len())),
            took,
            gate: Semaphore::new(permits),
        })
    }

    fn log(&self) -> MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

struct ScriptedCourier(Arc<Script>);

impl Courier for ScriptedCourier {
    async fn carry(&mut self, unit: DeliveryUnit) {
        let script = &*self.0;
        let number: usize = unit.record_ids[0].parse().unwrap();
        let key = unit.ordering_key.as_deref();
        script.log().start(number, key);
        script.gate.acquire().await.unwrap().forget();
        tokio::time::sleep(script.took[number]).await;
        script.log().end(number, key);
    }

    fn idle_end(&mut self) -> impl Future<Output = ()> + Send {
        std::future::pending()
    }
}

impl Chains {
    /// The units waiting in chains.
    fn waiting(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .values()
            .map(|chain| chain.waiting.len())
            .sum()
    }
}

/// How many of the tests' units the room of `concurrency` workers holds: they carry one record each.
fn room_for(concurrency: usize, keyed: bool) -> usize {
    let room = Room::for_concurrency(concurrency);
    let key = keyed.then_some("t/1");
    room.permits / room.of(&numbered(0, key)) as usize
}

fn start(concurrency: usize, script: &Arc<Script>) -> Dispatcher {
    Dispatcher::start_with(
        concurrency,
        DestinationMetrics::default(),
        CancellationToken::new(),
        || ScriptedCourier(script.clone()),
    )
}

fn numbered(number: usize, key: Option<&str>) -> DeliveryUnit {
    DeliveryUnit {
        record_ids: vec![number.to_string()],
        records: Vec::new(),
        calls: Vec::new(),
        ordering_key: key.map(str::to_string),
        repeatable: true,
    }
}

/// Dispatches every unit, `key_of` giving each one's key, and waits until all are done.
async fn run(concurrency: usize, script: &Arc<Script>, key_of: &[Option<String>]) {
    let dispatcher = start(concurrency, script);
    for (number, key) in key_of.iter().enumerate() {
        assert!(dispatcher
            .dispatch(numbered(number, key.as_deref()))
            .await
            .is_ok());
    }
    dispatcher.finish().await;
}

/// Every unit was delivered once, and each key's units one at a time in arrival order.
fn assert_in_order_per_key(log: &Log, key_of: &[Option<String>]) {
    assert_eq!(log.problems, Vec::<String>::new());
    assert_eq!(log.done, key_of.len());
    let mut last_of_key: HashMap<&str, usize> = HashMap::new();
    for (number, key) in key_of.iter().enumerate() {
        let started = log.started[number].expect("every unit starts");
        let Some(key) = key else { continue };
        if let Some(earlier) = last_of_key.insert(key, number) {
            let (earlier_end, _) = log.ended[earlier].expect("every unit ends");
            assert!(
                earlier_end < started,
                "unit {number} of {key} started before unit {earlier}, which arrived earlier, ended"
            );
        }
    }
}

const MS: Duration = Duration::from_millis(1);

#[tokio::test(start_paused = true)]
async fn each_key_keeps_arrival_order_whatever_each_delivery_takes() {
    for (keys, units, seed) in [(64, 6_000, 1), (3_000, 12_000, 2)] {
        let mut rng = StdRng::seed_from_u64(seed);
        // One unit in twenty has no key: it may go along with anything.
        let key_of: Vec<Option<String>> = (0..units)
            .map(|_| {
                let keyed = !rng.random_ratio(1, 20);
                let key = rng.random_range(0..keys);
                keyed.then(|| format!("t/{key}"))
            })
            .collect();
        let took = (0..units).map(|_| rng.random_range(1..=50) * MS).collect();
        let script = Script::new(took);
        let dispatcher = start(8, &script);
        for (number, key) in key_of.iter().enumerate() {
            // Now and then the stream pauses: chains run dry and their keys go free.
            if rng.random_ratio(1, 100) {
                tokio::time::sleep(rng.random_range(1..=100) * MS).await;
            }
            assert!(dispatcher
                .dispatch(numbered(number, key.as_deref()))
                .await
                .is_ok());
        }
        dispatcher.finish().await;
        let log = script.log();
        assert_in_order_per_key(&log, &key_of);
        assert_eq!(log.max_in_flight, 8, "{keys} keys");
    }
}

/// `units` units whose keys take turns among `keys` keys.
fn keys_in_turn(units: usize, keys: usize) -> Vec<Option<String>> {
    (0..units)
        .map(|n| Some(format!("t/{}", n % keys)))
        .collect()
}

/// Keys in turn, every delivery taking the same time: as many units are in flight as there are workers, or
/// keys when they are fewer, and each round of units takes one latency.
#[tokio::test(start_paused = true)]
async fn as_many_units_are_in_flight_as_workers_or_keys_with_work() {
    let concurrency = 8;
    let latency = 10 * MS;
    let units = 800;
    for keys in [1, 3, 8, 16, 33, 64] {
        let key_of = keys_in_turn(units, keys);
        let script = Script::new(vec![latency; units]);
        let started = Instant::now();
        run(concurrency, &script, &key_of).await;
        let log = script.log();
        assert_in_order_per_key(&log, &key_of);
        let busy_workers = keys.min(concurrency);
        assert_eq!(log.max_in_flight, busy_workers, "{keys} keys");
        assert_eq!(
            started.elapsed(),
            latency * units.div_ceil(busy_workers) as u32,
            "{keys} keys"
        );
        let mean = log.mean_in_flight(started);
        assert!(mean > busy_workers as f64 - 0.01, "{keys} keys: {mean}");
    }
}

/// Keys drawn at random and random delivery times: chains form whenever a key comes again while busy, yet
/// the workers stay busy and the throughput is that of `concurrency` workers.
#[tokio::test(start_paused = true)]
async fn random_keys_keep_the_workers_busy() {
    let concurrency = 8;
    let units = 8_000;
    for (keys, seed) in [(64, 3), (3_000, 4)] {
        let mut rng = StdRng::seed_from_u64(seed);
        let key_of: Vec<_> = (0..units)
            .map(|_| Some(format!("t/{}", rng.random_range(0..keys))))
            .collect();
        let took: Vec<_> = (0..units).map(|_| rng.random_range(5..=15) * MS).collect();
        let ideal = took.iter().sum::<Duration>() / concurrency as u32;
        let script = Script::new(took);
        let started = Instant::now();
        run(concurrency, &script, &key_of).await;
        let log = script.log();
        assert_in_order_per_key(&log, &key_of);
        assert_eq!(log.max_in_flight, concurrency);
        let mean = log.mean_in_flight(started);
        assert!(mean > 7.9, "{keys} keys: mean {mean} in flight");
        // A tail of at most one long delivery past the ideal.
        assert!(
            started.elapsed() <= ideal + 15 * MS,
            "{keys} keys: {:?}, ideal {ideal:?}",
            started.elapsed()
        );
    }
}

/// One key has every other unit of the stream. Its units go one at a time, so its chain fills the whole room
/// and the stream, read in order, moves at that key's pace: the other keys get two workers of eight. That is
/// the price of bounded memory: using more workers would mean reading further past the hot key's units than
/// the room holds. The other keys are not starved (each of their units ends soon after the producer offers
/// it), and the whole run takes no longer than the hot key's units one after another, but for one turn: at
/// the start a full room is offered at once, half of it other keys' units, and the hot key's next unit, like
/// any key's, queues behind the units ready before it. The same backlog costs a turn to another key with
/// more than one unit in it.
#[tokio::test(start_paused = true)]
async fn a_hot_key_fills_the_room_and_paces_the_other_keys_without_starving_them() {
    let concurrency = 8;
    let latency = 10 * MS;
    let units = 2_000;
    let mut rng = StdRng::seed_from_u64(5);
    let key_of: Vec<_> = (0..units)
        .map(|n| {
            Some(if n % 2 == 0 {
                "hot".to_string()
            } else {
                format!("t/{}", rng.random_range(0..63))
            })
        })
        .collect();
    let script = Script::new(vec![latency; units]);
    let dispatcher = start(concurrency, &script);
    let started = Instant::now();
    let mut offered = Vec::with_capacity(units);
    let mut most_waiting_on_hot = 0;
    for (number, key) in key_of.iter().enumerate() {
        offered.push(Instant::now());
        assert!(dispatcher
            .dispatch(numbered(number, key.as_deref()))
            .await
            .is_ok());
        let chains = dispatcher.chains.0.lock().unwrap();
        let waiting_on_hot = chains.get("hot").map_or(0, |chain| chain.waiting.len());
        most_waiting_on_hot = most_waiting_on_hot.max(waiting_on_hot);
    }
    dispatcher.finish().await;
    let log = script.log();
    assert_in_order_per_key(&log, &key_of);
    assert_eq!(most_waiting_on_hot, concurrency * QUEUED_PER_WORKER);
    let mean = log.mean_in_flight(started);
    assert!((1.9..2.1).contains(&mean), "mean {mean} in flight");
    assert_eq!(started.elapsed(), latency * (units / 2 + 1) as u32);
    let slowest_other = (1..units)
        .step_by(2)
        .map(|n| log.ended_at(n) - offered[n])
        .max()
        .unwrap();
    assert!(slowest_other <= 4 * latency, "{slowest_other:?}");
}

/// Every worker follows a busy key's chain when one more key comes with a single unit: that unit should get
/// a worker about as soon as the units queued before it have.
#[tokio::test(start_paused = true)]
async fn a_key_queued_while_every_worker_follows_a_chain_gets_a_worker() {
    let concurrency = 8;
    let latency = 10 * MS;
    let units = 4_000;
    let lone = 100;
    let key_of: Vec<_> = (0..units)
        .map(|n| {
            Some(if n == lone {
                "lone".to_string()
            } else {
                format!("t/{}", n % concurrency)
            })
        })
        .collect();
    let script = Script::new(vec![latency; units]);
    let dispatcher = start(concurrency, &script);
    let mut queued_at = Instant::now();
    for (number, key) in key_of.iter().enumerate() {
        assert!(dispatcher
            .dispatch(numbered(number, key.as_deref()))
            .await
            .is_ok());
        if number == lone {
            queued_at = Instant::now();
        }
    }
    dispatcher.finish().await;
    let log = script.log();
    assert_in_order_per_key(&log, &key_of);
    // Ahead of it at most a full room, which the workers take in `QUEUED_PER_WORKER` rounds; then its own.
    let fair = latency * (QUEUED_PER_WORKER as u32 + 1);
    let waited = log.ended_at(lone) - queued_at;
    assert!(waited <= fair, "done {waited:?} after it was queued");
}

/// One key more than there are workers, in turn: the workers should stay busy, as they do with eight or
/// sixteen keys.
#[tokio::test(start_paused = true)]
async fn one_key_more_than_the_workers_keeps_them_all_busy() {
    let concurrency = 8;
    let latency = 10 * MS;
    let units = 800;
    let keys = concurrency + 1;
    let key_of = keys_in_turn(units, keys);
    let script = Script::new(vec![latency; units]);
    let started = Instant::now();
    run(concurrency, &script, &key_of).await;
    let log = script.log();
    assert_in_order_per_key(&log, &key_of);
    let mean = log.mean_in_flight(started);
    let ideal = latency * units.div_ceil(concurrency) as u32;
    assert!(
        started.elapsed() <= ideal + latency,
        "{:?} for {ideal:?} of work, mean {mean:.2} in flight",
        started.elapsed()
    );
}

/// Deliveries hang while the producer pushes 100 000 units: the dispatcher takes a full room beyond the
/// units in flight, and the producer waits for the rest.
#[tokio::test(start_paused = true)]
async fn a_producer_is_held_back_once_the_room_is_full() {
    let concurrency = 4;
    let keyed_room = concurrency * QUEUED_PER_WORKER;
    let units = 100_000;
    // Unkeyed, all in one key (one in flight, the rest in its chain), and keys in turn. Unkeyed single records
    // fill a larger room.
    for (keys, in_flight, in_chains) in
        [(None, 4, 0), (Some(1), 1, keyed_room), (Some(1_000), 4, 0)]
    {
        let room = room_for(concurrency, keys.is_some());
        let script = Script::with_gate(vec![MS; units], 0);
        let dispatcher = start(concurrency, &script);
        let free_room = dispatcher.room.clone();
        let chains = dispatcher.chains.clone();
        let offered = Arc::new(AtomicUsize::new(0));
        let producer = tokio::spawn({
            let offered = offered.clone();
            async move {
                for number in 0..units {
                    let key = keys.map(|keys| format!("t/{}", number % keys));
                    assert!(dispatcher
                        .dispatch(numbered(number, key.as_deref()))
                        .await
                        .is_ok());
                    offered.store(number + 1, Ordering::SeqCst);
                }
            }
        });
        // Paused: the clock jumps ahead once everything that can run has run.
        tokio::time::sleep(Duration::from_secs(3_600)).await;
        assert_eq!(
            offered.load(Ordering::SeqCst),
            room + in_flight,
            "{keys:?} keys"
        );
        assert_eq!(script.log().in_flight, in_flight, "{keys:?} keys");
        assert_eq!(free_room.available_permits(), 0, "{keys:?} keys");
        assert_eq!(chains.waiting(), in_chains, "{keys:?} keys");
        // Once deliveries go on, so does the producer.
        script.gate.add_permits(units);
        tokio::time::sleep(10 * MS).await;
        assert!(
            offered.load(Ordering::SeqCst) > room + in_flight,
            "{keys:?} keys"
        );
        assert!(!producer.is_finished());
        producer.abort();
    }
}

/// Units flowing through with random keys and delivery times, the producer always ahead: what the dispatcher
/// holds (ready or in a chain) never exceeds the room, and the room counts exactly those units.
#[tokio::test(start_paused = true)]
async fn what_the_dispatcher_holds_stays_within_the_room_while_units_flow() {
    let concurrency = 4;
    let room = room_for(concurrency, true);
    let units = 30_000;
    let mut rng = StdRng::seed_from_u64(6);
    let key_of: Vec<_> = (0..units)
        .map(|_| Some(format!("t/{}", rng.random_range(0..100))))
        .collect();
    let script = Script::new((0..units).map(|_| rng.random_range(1..=5) * MS).collect());
    let dispatcher = start(concurrency, &script);
    let mut most_held = 0;
    for (number, key) in key_of.iter().enumerate() {
        assert!(dispatcher
            .dispatch(numbered(number, key.as_deref()))
            .await
            .is_ok());
        // Only a dispatch adds to what is held: right after one is when it is most.
        let held = dispatcher.ready.len() + dispatcher.chains.waiting();
        let taken = dispatcher.room_size.permits - dispatcher.room.available_permits();
        assert_eq!(held * dispatcher.room_size.per_unit, taken);
        assert!(held <= room);
        assert!(number + 1 - script.log().done <= room + concurrency);
        most_held = most_held.max(held);
    }
    dispatcher.finish().await;
    let log = script.log();
    assert_in_order_per_key(&log, &key_of);
    assert_eq!(most_held, room, "the producer was ahead");
    assert_eq!(log.max_in_flight, concurrency);
}

#[test]
fn the_room_holds_as_many_large_or_keyed_units_as_ever_and_many_more_lone_records() {
    let batch = |records: usize| {
        let mut unit = numbered(0, None);
        unit.record_ids.resize(records, "r".to_string());
        unit
    };
    for concurrency in [1, 2, 8, 32, 64, 200] {
        let room = Room::for_concurrency(concurrency);
        let units = concurrency * QUEUED_PER_WORKER;
        assert_eq!(
            room.permits / room.of(&batch(1_000)) as usize,
            units,
            "batches at concurrency {concurrency}"
        );
        assert_eq!(
            room_for(concurrency, true),
            units,
            "keyed units at {concurrency}"
        );
        assert_eq!(
            room_for(concurrency, false),
            units.max(LEAST_QUEUED_RECORDS),
            "single records at concurrency {concurrency}"
        );
        assert!(room.of(&batch(2)) <= 2 && room.of(&batch(0)) == 1);
    }
}

/// Batches of a hundred records hang in flight: the room takes as many of them as `QUEUED_PER_WORKER` allows
/// each worker, not the many more a room of single records holds.
#[tokio::test(start_paused = true)]
async fn large_units_fill_the_room_at_its_unit_count() {
    let concurrency = 8;
    let script = Script::with_gate(vec![MS; 1_000], 0);
    let dispatcher = start(concurrency, &script);
    let offered = Arc::new(AtomicUsize::new(0));
    let producer = tokio::spawn({
        let offered = offered.clone();
        async move {
            for number in 0..1_000 {
                let mut unit = numbered(number, None);
                unit.record_ids
                    .extend((1..100).map(|n| format!("{number}-{n}")));
                assert!(dispatcher.dispatch(unit).await.is_ok());
                offered.store(number + 1, Ordering::SeqCst);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    assert_eq!(
        offered.load(Ordering::SeqCst),
        concurrency * QUEUED_PER_WORKER + concurrency
    );
    producer.abort();
}

/// The producer stops for 20 ms after every 400 units, as the claim stage does while a claim is committed. The
/// room holds enough single records for the workers to go on meanwhile: no worker idles before the end.
#[tokio::test(start_paused = true)]
async fn queued_single_records_last_the_workers_through_a_claim_s_commit() {
    let concurrency = 8;
    let latency = MS;
    let (claims, per_claim) = (5, 400);
    let units = claims * per_claim;
    let script = Script::new(vec![latency; units]);
    let dispatcher = start(concurrency, &script);
    let started = Instant::now();
    for number in 0..units {
        assert!(dispatcher.dispatch(numbered(number, None)).await.is_ok());
        if (number + 1) % per_claim == 0 {
            tokio::time::sleep(20 * MS).await;
        }
    }
    dispatcher.finish().await;
    let ideal = latency * units.div_ceil(concurrency) as u32;
    assert!(
        started.elapsed() <= ideal + 2 * latency,
        "{:?} for {ideal:?} of work",
        started.elapsed()
    );
}
