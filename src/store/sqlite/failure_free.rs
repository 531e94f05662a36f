//! Destinations known to hold no failed records. A duplicate check asks which of a stream's ids were delivered
//! (the delivered filter rules most out) and which failed in a way that may have reached Groove; for a
//! destination known to have no failed records at all, and ids the filter rules out, the answer needs no read
//! of the database, which spares a hand-off to a reader thread per message of records.
//!
//! Why a destination is never taken as free while it holds a failed record:
//! - only the writer thread stores failed records, and a job that stores some for a destination says so here
//!   first, with the number of the write transaction it runs in; from then on the destination is not free;
//! - a destination becomes free only when a read found none, and only if no failed record of it was stored in a
//!   transaction that had not ended when that read began: the read notes the writer's count of ended
//!   transactions before it starts, and a transaction that ended by then is either in what the read sees or
//!   rolled back.
//!
//! Failed records that go away (delivered at last, deleted, pruned) leave the destination as it is until the
//! next read finds none. One process only, like the delivered filter: the data directory's lock keeps other
//! writers out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// What is known per destination; one entry per destination that was read or had failed records stored.
#[derive(Default)]
struct Known {
    /// A read found no failed records, and none were stored since.
    free: bool,
    /// The last write transaction that stored failed records of the destination (0: none yet).
    last_stored: u64,
}

pub(super) struct FailureFree {
    /// The writer's count of ended transactions.
    ended: Arc<AtomicU64>,
    known: Mutex<HashMap<String, Known>>,
}

/// Where the writer stood when a read began, for [`FailureFree::found_none`].
#[derive(Clone, Copy, Debug)]
pub(super) struct ReadStart {
    ended: u64,
}

impl FailureFree {
    /// `ended` is the writer's count of ended transactions (`Writer::transactions_ended`).
    pub(super) fn new(ended: Arc<AtomicU64>) -> Self {
        FailureFree {
            ended,
            known: Mutex::default(),
        }
    }

    /// Whether the destination is known to hold no failed records.
    pub(super) fn is_free(&self, destination_id: &str) -> bool {
        self.lock()
            .get(destination_id)
            .is_some_and(|known| known.free)
    }

    /// Taken before a read whose finding goes to [`FailureFree::found_none`].
    pub(super) fn read_starts(&self) -> ReadStart {
        ReadStart {
            ended: self.ended.load(Ordering::Acquire),
        }
    }

    /// A read that began at `start` found no failed records of the destination.
    pub(super) fn found_none(&self, destination_id: &str, start: ReadStart) {
        let mut known = self.lock();
        let entry = known.entry(destination_id.to_string()).or_default();
        if entry.last_stored <= start.ended {
            entry.free = true;
        }
    }

    /// Called by a writer job, before it stores failed records of these destinations.
    pub(super) fn storing<'a>(&self, destination_ids: impl IntoIterator<Item = &'a str>) {
        let running = self.ended.load(Ordering::Acquire) + 1;
        let mut known = self.lock();
        for destination_id in destination_ids {
            let entry = known.entry(destination_id.to_string()).or_default();
            entry.free = false;
            entry.last_stored = running;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Known>> {
        self.known.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table and the writer's count it reads, which the tests move by hand.
    fn table() -> (FailureFree, Arc<AtomicU64>) {
        let ended = Arc::new(AtomicU64::new(0));
        (FailureFree::new(Arc::clone(&ended)), ended)
    }

    #[test]
    fn nothing_is_free_until_a_read_found_no_failed_records() {
        let (table, _) = table();
        assert!(!table.is_free("d"));
        table.found_none("d", table.read_starts());
        assert!(table.is_free("d"));
        assert!(!table.is_free("e"), "each destination apart");
    }

    #[test]
    fn storing_failed_records_ends_freedom_at_once() {
        let (table, ended) = table();
        table.found_none("d", table.read_starts());
        table.storing(["d"]);
        assert!(!table.is_free("d"));
        // Once that transaction ended, a read that starts afterwards sees its records or their rollback.
        ended.fetch_add(1, Ordering::Release);
        table.found_none("d", table.read_starts());
        assert!(table.is_free("d"));
    }

    #[test]
    fn a_read_that_began_before_a_transaction_ended_cannot_free_what_it_stored() {
        let (table, ended) = table();
        // The read begins, then a writer job of the running transaction stores a failed record, and the read,
        // which may not see it, finds none.
        let start = table.read_starts();
        table.storing(["d"]);
        table.found_none("d", start);
        assert!(!table.is_free("d"));
        // Still not, once the transaction ended, for a read that began before it did.
        ended.fetch_add(1, Ordering::Release);
        table.found_none("d", start);
        assert!(!table.is_free("d"));
        table.found_none("d", table.read_starts());
        assert!(table.is_free("d"));
    }

    #[test]
    fn a_store_after_the_read_found_none_wins() {
        let (table, _) = table();
        let start = table.read_starts();
        table.found_none("d", start);
        table.storing(["d", "e"]);
        assert!(!table.is_free("d"));
        assert!(!table.is_free("e"));
    }
}
