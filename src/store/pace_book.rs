//! One line of call slots per credential, shared by every replica: Groove's limit is per account, so the calls
//! all replicas make with one credential are spaced as one caller's would be. Alone (the SQLite default) the
//! pacer's own spacing is the whole story and there is no book.

use std::time::Duration;

use futures::future::BoxFuture;

use crate::store::StoreError;

/// The shared line of call slots.
pub trait PaceBook: Send + Sync + std::fmt::Debug {
    /// Takes the next slot of `credential_id`'s line, at least `gap` after the slot taken before it and not
    /// before now (by the database's clock); returns how long from now until the slot.
    fn reserve<'a>(
        &'a self,
        credential_id: &'a str,
        gap: Duration,
    ) -> BoxFuture<'a, Result<Duration, StoreError>>;
}
