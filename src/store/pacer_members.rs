//! Which replicas are pacing calls with a credential right now, so that each takes its share of the Groove
//! account's limit. Alone (the SQLite default) there is nothing to share and no membership is kept.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::store::StoreError;

/// The members of each credential's pacing, kept by heartbeats that expire.
pub trait PacerMembers: Send + Sync + std::fmt::Debug {
    /// Makes `replica_id` a member for `credential_ids` until `ttl` from now (by the database's clock), ends
    /// its membership for every other credential, and returns how many live members each of `credential_ids`
    /// has, this replica included (so at least 1).
    fn heartbeat<'a>(
        &'a self,
        replica_id: &'a str,
        credential_ids: &'a [String],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<HashMap<String, u32>, StoreError>>;
}
