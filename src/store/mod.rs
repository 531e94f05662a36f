//! Persistence behind one trait: credentials (API keys encrypted at rest), destinations, and per destination
//! the ledger of delivered record ids and the failed records.
//!
//! [`Store`] serves one process or several replicas: every write is atomic on its own, concurrent updates are
//! settled by compare-and-swap on a revision (not by in-process locks), and listings page by an opaque keyset
//! token. [`SqliteStore`] is the embedded default: one file in the data directory, for one process.
//! [`PostgresStore`] is the shared one (`--database-url`), for replicas.
//!
//! Layout: `sqlite/` and `postgres/` hold one query module per table group, and migrations as an ordered list
//! (`*/migrations/NNNN_*.sql`). Both group-commit the per-record writes (SQLite through its one writer thread,
//! PostgreSQL through one committer task per process): that is what lets the delivery layer record the outcome
//! of every record (ledger entries and failed records, [`Store::record_outcomes`]) and claim records before
//! they are sent ([`Store::claim_records`]) without a transaction per record. `conformance/` is the one test
//! suite both run.

mod changes;
#[cfg(test)]
mod conformance;
mod data_dir;
mod error;
mod pace_book;
mod page;
mod postgres;
mod records;
mod secrets;
mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::domain::credential::{ApiKey, Credential, Refusal, StoredKey};
use crate::domain::destination::Destination;

pub use changes::{Change, ChangeFeed, LocalChanges, Subscription};
pub use data_dir::{DataDirError, DataDirLock, LOCK_FILE};
pub use error::{StoreError, CREDENTIAL, DESTINATION};
pub use pace_book::{PaceBook, UNSPACED_MEMORY};
pub use page::{Page, PageRequest, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
pub use postgres::{redact_database_url, PgChangeFeed, PgPaceBook, PostgresStore, ReplicaOptions};
pub use records::{
    ClaimedRecord, FailedRecordEntry, FailedRecordFilter, FailedRecordSelection, FailedRecordSize,
    LedgerEntry, RecordClaim, RecordState, StoredRequest, LEDGER_BODY_CAP, MAX_FAILED_RECORD_IDS,
};
pub use secrets::{SecretBox, SECRET_KEY_ENV, SECRET_KEY_FILE};
pub use sqlite::{SqliteStore, DATABASE_FILE};

/// Ledger entries one retention step deletes: small enough that deliveries waiting behind it barely wait.
const PRUNE_STEP: u32 = 5_000;

/// At most this many destination ids are reported in [`StoreError::CredentialInUse`].
pub const MAX_LISTED_DESTINATIONS: usize = 100;

/// Input of [`Store::create_credential`]. `Debug` is safe: [`ApiKey`] prints only its hint.
#[derive(Clone, Debug)]
pub struct NewCredential {
    /// Last segment of `credentials/{id}`.
    pub id: String,
    pub display_name: String,
    pub api_key: ApiKey,
    /// Creation time (ms since the Unix epoch), passed in so callers and tests control the clock.
    pub now_ms: i64,
}

/// Input of [`Store::update_credential`]: the fields to change, `None` for the ones kept. `Debug` is safe:
/// [`ApiKey`] prints only its hint.
#[derive(Clone, Debug)]
pub struct CredentialUpdate {
    /// Last segment of `credentials/{id}`.
    pub id: String,
    pub display_name: Option<String>,
    pub api_key: Option<ApiKey>,
    /// Update time (ms since the Unix epoch).
    pub now_ms: i64,
}

/// Persistence operations the API and delivery layers need.
///
/// Methods return [`BoxFuture`]s rather than being `async fn` so the trait stays object-safe: the server holds
/// the store as `Arc<dyn Store>` and picks SQLite or PostgreSQL at startup. Implementations must not
/// block the async runtime.
///
/// A write that has returned `Ok` is durable. Dropping a write's future does not cancel it: it may still be
/// applied, just as with a request to a remote database.
pub trait Store: Send + Sync {
    /// Stores a credential with its API key encrypted. [`StoreError::AlreadyExists`] if the id is taken.
    fn create_credential(
        &self,
        new: NewCredential,
    ) -> BoxFuture<'_, Result<Credential, StoreError>>;

    /// The credential (without its key), or [`StoreError::NotFound`].
    fn get_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Credential, StoreError>>;

    /// Credentials in id order, one page at a time (see [`PageRequest`] for sizes).
    fn list_credentials(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Credential>, StoreError>>;

    /// The decrypted API key: the only way a key leaves the store. [`StoreError::Decrypt`] if it cannot be
    /// authenticated (wrong secret key, or ciphertext damaged or moved from another row).
    fn credential_api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ApiKey, StoreError>>;

    /// The decrypted API key with its version and refusal, read together. Errors as
    /// [`Store::credential_api_key`].
    fn credential_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredKey, StoreError>>;

    /// Changes the given fields as one atomic write and returns the credential as stored. A new key is
    /// encrypted like a created one, gets the next key version, and ends the refusal (which was about the old
    /// key); `update_time_ms` becomes `update.now_ms`. An update with no field changes nothing but still
    /// returns the credential. [`StoreError::NotFound`] if there is no such credential.
    fn update_credential(
        &self,
        update: CredentialUpdate,
    ) -> BoxFuture<'_, Result<Credential, StoreError>>;

    /// Records (`Some`) or clears (`None`) a refusal of the key at `key_version`, a compare-and-swap on the
    /// version: `Ok(false)`, with nothing written, when the credential holds another key by now.
    /// [`StoreError::NotFound`] if there is no such credential. Does not change `update_time_ms`: the refusal
    /// is Groove's verdict, not a change by a user.
    fn set_credential_refusal<'a>(
        &'a self,
        id: &'a str,
        key_version: u64,
        refusal: Option<Refusal>,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;

    /// Deletes a credential. Refused with [`StoreError::CredentialInUse`] while any destination refers to it;
    /// the check and the delete are one atomic step.
    fn delete_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Stores a new destination as given (its `revision` included) and returns it.
    /// [`StoreError::AlreadyExists`] if the id is taken, [`StoreError::CredentialNotFound`] if its credential
    /// does not exist.
    fn create_destination(
        &self,
        destination: Destination,
    ) -> BoxFuture<'_, Result<Destination, StoreError>>;

    /// The destination, or [`StoreError::NotFound`].
    fn get_destination<'a>(&'a self, id: &'a str)
        -> BoxFuture<'a, Result<Destination, StoreError>>;

    /// Destinations in id order, one page at a time (see [`PageRequest`] for sizes).
    fn list_destinations(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Destination>, StoreError>>;

    /// Replaces a destination if its stored revision is still `expected_revision` (compare-and-swap).
    ///
    /// `destination.revision` is the new revision and must be greater than `expected_revision`; the stored
    /// `create_time_ms` is kept whatever the input says. Returns the destination as stored.
    /// [`StoreError::RevisionMismatch`] when stale, [`StoreError::NotFound`] when missing,
    /// [`StoreError::CredentialNotFound`] if it now names a missing credential.
    fn update_destination(
        &self,
        destination: Destination,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Destination, StoreError>>;

    /// Deletes a destination; with `expected_revision`, only if it is still at that revision
    /// ([`StoreError::RevisionMismatch`] otherwise). [`StoreError::NotFound`] when missing. Its ledger and
    /// failed records are deleted with it, atomically.
    fn delete_destination<'a>(
        &'a self,
        id: &'a str,
        expected_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Commits claims on the records of calls, before those calls go out: one atomic write for any number of
    /// calls. A claim is one row however many records its call carries (a batch), keyed by its first record.
    /// Claims of a destination that no longer exists are skipped.
    ///
    /// Returns the positions in `claims` of those it did not take, in ascending order: a store shared by
    /// several processes (PostgreSQL) refuses a claim while another process holds one with the same key (in
    /// flight there, or left by a process that stopped and not yet settled), so that two processes never send
    /// the same record at once, or when one of the call's records is already delivered (another process may
    /// have delivered it since this one looked); a refused call must not be sent, its records are to be looked
    /// up again. Its own older claim with that key is replaced.
    /// A store of one process (SQLite) never refuses: within a process the delivery layer already lets one
    /// delivery of an id run at a time, and a claim replaces an older one keyed by the same record.
    fn claim_records(
        &self,
        claims: Vec<RecordClaim>,
    ) -> BoxFuture<'_, Result<Vec<usize>, StoreError>>;

    /// Whether calls that may be repeated (idempotent ones) are claimed too: `true` for a store shared by
    /// several processes, where a claim is what keeps two of them from sending the same record at once;
    /// `false` (the default) for a store of one process, which claims only the calls that must not be
    /// repeated blindly (creates), to leave a trace should it stop while they are in flight.
    fn claims_repeatable_calls(&self) -> bool {
        false
    }

    /// Records how a batch of records ended, as one atomic write: `delivered` entries enter the ledger
    /// (replacing an entry with the same destination and record id) and stop being failed records; `failed`
    /// entries become failed records, or update the stored ones (attempts add up, the first failure time
    /// stays, `maybe_delivered` stays set once set, the rest is replaced). This process's claims on every record
    /// named end in the same write.
    ///
    /// Meant to be called once per batch of results rather than per record, and a batch may mix destinations:
    /// calls queued together share one commit. Ledger response bodies are cut to [`LEDGER_BODY_CAP`] bytes.
    /// Entries of a destination that no longer exists (deleted while its records were in flight) are skipped,
    /// since its ledger and failed records were deleted with it; the rest are stored. A failed entry whose
    /// outcome is neither rejected nor failed is a caller bug: the whole call is refused before anything is
    /// written.
    fn record_outcomes(
        &self,
        delivered: Vec<LedgerEntry>,
        failed: Vec<FailedRecordEntry>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Ends this process's claims on records that were released without being sent (their stream stopped
    /// first), as `(destination id, record id)` pairs. Pairs without such a claim are ignored: another
    /// process's claim on the record stays, as it is still sending it.
    fn release_claims(
        &self,
        records: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Turns every claim left by a process that stopped without recording the outcome into a failed record
    /// that may have been delivered (failed, `maybe_delivered`, with `error`), in one atomic write, and returns
    /// how many failed records that made. A claim on a repeatable call is only let go: sending it again is
    /// safe.
    ///
    /// A store of one process (SQLite) calls this only at start-up, before any record is claimed: every claim
    /// is taken for an orphan. A store shared by several processes (PostgreSQL) takes only the claims of
    /// processes whose lease has run out, never its own, and wants to be called again every
    /// [`Store::orphan_check_interval`].
    fn fail_orphaned_claims<'a>(
        &'a self,
        error: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// How often the engine should settle orphaned claims while it serves: `Some` for a store other processes
    /// share, where one of them can stop while this one runs; `None` (the default) when orphans can only exist
    /// at start-up.
    fn orphan_check_interval(&self) -> Option<Duration> {
        None
    }

    /// What decides whether each of `record_ids` may be sent: delivered (with its ledger entry), or a failed
    /// record that may have been delivered. Ids with neither are absent, as is everything of a destination that
    /// does not exist; so are delivered ids whose entries retention has removed. Takes a whole message of ids at
    /// once (any number; split into few queries).
    ///
    /// Only recorded outcomes are known: a record that is still being delivered is absent.
    fn record_states<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<HashMap<String, RecordState>, StoreError>>;

    /// Applies ledger retention to every destination: removes entries delivered before `older_than_ms`, and
    /// those beyond the `max_entries_per_destination` most recently delivered. Returns how many it removed.
    /// `i64::MIN` or `u64::MAX` turns the respective rule off. A store may keep entries that share their
    /// answer (a batch's) together, and so keep up to one such group beyond the count.
    ///
    /// Removes in bounded steps, so deliveries' writes are not held up behind one long transaction; entries
    /// recorded while it runs are left for the next call.
    fn ledger_prune(
        &self,
        older_than_ms: i64,
        max_entries_per_destination: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// The destination's failed records that pass `filter`, oldest first (first failure, then record id), one
    /// page at a time (see [`PageRequest`] for sizes). A page also ends before the entry that would take the
    /// stored size of its entries ([`FailedRecordSize::bytes`]) past `max_bytes`, so a listing never reads more
    /// than that into memory; its first entry is there however large it is. [`StoreError::NotFound`] if the
    /// destination does not exist.
    fn list_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        filter: FailedRecordFilter,
        page: PageRequest,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Page<FailedRecordEntry>, StoreError>>;

    /// Those of `record_ids` that are failed records of the destination, oldest first; the others are
    /// absent. [`StoreError::NotFound`] if the destination does not exist.
    fn get_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<FailedRecordEntry>, StoreError>>;

    /// Ids and stored sizes of the selected failed records, oldest first, at most `limit` (clamped to
    /// [`MAX_FAILED_RECORD_IDS`]): with [`FailedRecordSelection::All`] the oldest ones, with
    /// [`FailedRecordSelection::Ids`] those of the ids that are failed records. Reads no record contents: what
    /// a retry works through a chunk at a time. [`StoreError::NotFound`] if the destination does not exist.
    fn failed_record_sizes<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FailedRecordSize>, StoreError>>;

    /// Deletes the selected failed records of the destination and returns how many there were; ids that are not
    /// failed records are ignored. [`StoreError::NotFound`] if the destination does not exist.
    fn delete_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;
}
