//! One line of call slots per credential, shared by every replica: Groove's limit is per account, so the calls
//! all replicas make with one credential are spaced as one caller's would be. Alone (the SQLite default) the
//! pacer's own spacing is the whole story and there is no book.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::store::StoreError;

/// The shared line of call slots.
pub trait PaceBook: Send + Sync + std::fmt::Debug {
    /// Takes the next slot of `credential_id`'s line, at least `gap` after the slot taken before it (and one
    /// more `gap` for each unspaced call noted since) and not before now (by the database's clock); returns how
    /// long from now until the slot.
    fn reserve<'a>(
        &'a self,
        credential_id: &'a str,
        gap: Duration,
    ) -> BoxFuture<'a, Result<Duration, StoreError>>;

    /// Notes a call of `credential_id` that leaves now without a slot, because its replica does not know the
    /// account's spacing yet (its first call). Replicas starting together each send one such call; the next
    /// reservation counts them, so the calls after them do not overrun the window they opened. Notes older
    /// than [`UNSPACED_MEMORY`] before the latest one (or the line's latest slot) are forgotten.
    fn note_unspaced<'a>(&'a self, credential_id: &'a str)
        -> BoxFuture<'a, Result<(), StoreError>>;
}

/// How long an unspaced call is charged to the line: replicas started together send their first calls within
/// a round trip of one another, and a call older than this has left the window it was counted in (for all but
/// long windows, where one call more matters little).
pub const UNSPACED_MEMORY: Duration = Duration::from_secs(1);
