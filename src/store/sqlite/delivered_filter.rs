//! An in-memory Bloom filter of the ids in the ledger, so that the duplicate check of a fresh record — nearly
//! every record — needs no b-tree probe.
//!
//! A Bloom filter can answer "maybe" for an id it never saw (about 1 % of the time when sized right, then a
//! probe finds out), but never "no" for one it saw. The filter must therefore hold every id whose delivery
//! has committed before its duplicate check can run:
//!
//! - ids are added by the writer job that records them, before their transaction commits (an id of a write
//!   that is then undone only costs a probe);
//! - a record's duplicate check runs only after the delivery holding its id has recorded its outcome (the
//!   in-flight ids of `delivery::in_flight`), so that addition happens before the check;
//! - a filter is built from a scan of the table, and is not used until the build is complete. While a new one is
//!   built, the writer adds to both; the build's scan starts after a writer job has announced the new filter, so
//!   whatever the scan cannot see was added to it directly. The writer then swaps it in.
//!
//! Retention removes ids from the table but not from the filter: they only cost a probe, and the next build
//! leaves them out. A build runs at the first duplicate check after start-up, and again once the filter holds
//! more ids than it was sized for.
//!
//! This works for one process only: the SQLite store's data dir lock makes sure of it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use fastbloom::AtomicBloomFilter;
use foldhash::fast::RandomState;

/// False positives the filter is sized for: one fresh id in a hundred still takes a probe.
const FALSE_POSITIVE_RATE: f64 = 0.01;
/// Ids a filter is sized for at least (about 1.2 MB): small ledgers grow without a build at every step.
const MIN_CAPACITY: u64 = 1 << 20;
/// Ids a filter is sized for at most (about 40 MB). A larger ledger overfills it: more probes, never a wrong
/// answer.
const MAX_CAPACITY: u64 = 1 << 25;

/// The filter in use, and the one being built.
pub(super) struct DeliveredFilter {
    current: ArcSwap<Generation>,
    /// Set and swapped in by writer jobs, so the writer thread sees a consistent pair. A failed build clears it
    /// from elsewhere; the writer then adds to the filter in use alone, which is all there is.
    next: Mutex<Option<Arc<Generation>>>,
    building: AtomicBool,
}

/// One filter and what it was sized for.
pub(super) struct Generation {
    bloom: AtomicBloomFilter<RandomState>,
    capacity: u64,
    /// Ids added since the build started, the scanned ones included.
    added: AtomicU64,
    /// Ids found by the build's scan.
    scanned: AtomicU64,
    /// Whether the build's scan has finished; until then nothing is known.
    complete: AtomicBool,
}

impl Generation {
    /// An empty filter for about `ids` ids, within the size limits.
    pub(super) fn sized_for(ids: u64) -> Arc<Generation> {
        Generation::with_capacity(ids.saturating_mul(2).clamp(MIN_CAPACITY, MAX_CAPACITY))
    }

    /// What is in use before the first build: it answers "maybe" for every id, so its bits are never read.
    fn unknown() -> Arc<Generation> {
        Generation::with_capacity(1)
    }

    fn with_capacity(capacity: u64) -> Arc<Generation> {
        Arc::new(Generation {
            bloom: AtomicBloomFilter::with_false_pos(FALSE_POSITIVE_RATE)
                .hasher(RandomState::default())
                .expected_items(usize::try_from(capacity).unwrap_or(usize::MAX)),
            capacity,
            added: AtomicU64::new(0),
            scanned: AtomicU64::new(0),
            complete: AtomicBool::new(false),
        })
    }

    /// Adds an id the build's scan found.
    pub(super) fn add_scanned(&self, destination_id: &str, record_id: &str) {
        self.add(destination_id, record_id);
        self.scanned.fetch_add(1, Ordering::Relaxed);
    }

    fn add(&self, destination_id: &str, record_id: &str) {
        self.bloom.insert(&(destination_id, record_id));
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    fn may_hold(&self, destination_id: &str, record_id: &str) -> bool {
        !self.complete.load(Ordering::Acquire) || self.bloom.contains(&(destination_id, record_id))
    }

    /// Whether a new build is due: none has completed yet, or this one holds more ids than it was sized for
    /// and at least half as many again were added since it was built (so that a ledger larger than the
    /// largest filter is not rescanned without end).
    fn outgrown(&self) -> bool {
        let added = self.added.load(Ordering::Relaxed);
        let since_build = added.saturating_sub(self.scanned.load(Ordering::Relaxed));
        !self.complete.load(Ordering::Acquire)
            || (added > self.capacity && since_build > self.capacity / 2)
    }
}

impl Default for DeliveredFilter {
    fn default() -> Self {
        DeliveredFilter {
            current: ArcSwap::from(Generation::unknown()),
            next: Mutex::new(None),
            building: AtomicBool::new(false),
        }
    }
}

impl DeliveredFilter {
    /// The ids among `record_ids` that may be in the ledger: all of them until a build has completed.
    pub(super) fn maybe_delivered<'a>(
        &self,
        destination_id: &str,
        record_ids: &'a [String],
    ) -> Vec<&'a String> {
        let current = self.current.load();
        record_ids
            .iter()
            .filter(|record_id| current.may_hold(destination_id, record_id))
            .collect()
    }

    /// Adds ids being recorded. Called by writer jobs only.
    pub(super) fn add<'a>(&self, ids: impl IntoIterator<Item = (&'a str, &'a str)>) {
        let current = self.current.load();
        let next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        for (destination_id, record_id) in ids {
            current.add(destination_id, record_id);
            if let Some(next) = next.as_ref() {
                next.add(destination_id, record_id);
            }
        }
    }

    /// Claims the right to build a new filter, when one is due and no build runs; the caller then calls
    /// [`DeliveredFilter::announce`], scans, and [`DeliveredFilter::swap_in`], or
    /// [`DeliveredFilter::abandon`] on failure.
    pub(super) fn start_build(&self) -> bool {
        self.current.load().outgrown()
            && self
                .building
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Makes the writer add to `next` too, from the writer job calling it on.
    pub(super) fn announce(&self, next: Arc<Generation>) {
        *self.next.lock().unwrap_or_else(PoisonError::into_inner) = Some(next);
    }

    /// Puts the announced filter, its scan complete, in use. Called by a writer job.
    pub(super) fn swap_in(&self) {
        if let Some(next) = self
            .next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            next.complete.store(true, Ordering::Release);
            self.current.store(next);
        }
        self.building.store(false, Ordering::Release);
    }

    /// Drops a build that failed; the filter in use stays, and a later check tries again.
    pub(super) fn abandon(&self) {
        self.next
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        self.building.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(prefix: &str, count: usize) -> Vec<String> {
        (0..count).map(|i| format!("{prefix}{i}")).collect()
    }

    /// A build as the store runs it, with `scan` standing for what the table holds at the scan.
    fn build(filter: &DeliveredFilter, scan: &[(&str, &str)], during_scan: &[(&str, &str)]) {
        assert!(filter.start_build());
        let next = Generation::sized_for(scan.len() as u64);
        filter.announce(Arc::clone(&next));
        filter.add(during_scan.iter().copied());
        for (destination_id, record_id) in scan {
            next.add_scanned(destination_id, record_id);
        }
        filter.swap_in();
    }

    #[test]
    fn until_a_build_completes_every_id_may_be_delivered() {
        let filter = DeliveredFilter::default();
        let wanted = ids("r", 10);
        assert_eq!(filter.maybe_delivered("a", &wanted).len(), 10);
        assert!(filter.start_build());
        // One build at a time.
        assert!(!filter.start_build());
        filter.announce(Generation::sized_for(0));
        assert_eq!(filter.maybe_delivered("a", &wanted).len(), 10);
        filter.abandon();
        assert_eq!(filter.maybe_delivered("a", &wanted).len(), 10);
        assert!(filter.start_build());
    }

    #[test]
    fn ids_scanned_added_during_the_scan_or_after_are_never_missed() {
        let filter = DeliveredFilter::default();
        // Added before the build was announced: the scan finds them in the table.
        filter.add([("a", "before")]);
        build(
            &filter,
            &[("a", "before"), ("b", "scanned")],
            &[("a", "during")],
        );
        filter.add([("a", "after")]);

        let wanted: Vec<String> = ["before", "during", "after"].map(String::from).to_vec();
        assert_eq!(filter.maybe_delivered("a", &wanted).len(), 3);
        assert_eq!(
            filter.maybe_delivered("b", &["scanned".to_string()]).len(),
            1
        );
        // The same id of another destination is another id.
        let fresh = ids("fresh", 1000);
        let maybe =
            filter.maybe_delivered("a", &fresh).len() + filter.maybe_delivered("b", &wanted).len();
        assert!(maybe < 50, "{maybe} of 1003 fresh ids may be delivered");
    }

    #[test]
    fn a_new_build_is_due_once_the_filter_is_outgrown() {
        let filter = DeliveredFilter::default();
        build(&filter, &[], &[]);
        assert!(!filter.start_build());
        let many = ids("r", MIN_CAPACITY as usize + 1);
        filter.add(many.iter().map(|id| ("a", id.as_str())));
        assert!(filter.start_build());
        let next = Generation::sized_for(many.len() as u64);
        assert_eq!(next.capacity, 2 * many.len() as u64);
        filter.announce(Arc::clone(&next));
        for id in &many {
            next.add_scanned("a", id);
        }
        filter.swap_in();
        assert!(!filter.start_build());
        assert_eq!(filter.maybe_delivered("a", &many).len(), many.len());
    }

    #[test]
    fn a_ledger_beyond_the_largest_filter_is_not_rescanned_at_once() {
        let full = Generation::sized_for(u64::MAX);
        assert_eq!(full.capacity, MAX_CAPACITY);
        full.complete.store(true, Ordering::Release);
        full.added.store(MAX_CAPACITY + 10, Ordering::Relaxed);
        full.scanned.store(MAX_CAPACITY + 10, Ordering::Relaxed);
        assert!(!full.outgrown());
        full.added
            .fetch_add(MAX_CAPACITY / 2 + 1, Ordering::Relaxed);
        assert!(full.outgrown());
    }
}
