//! The embedded store: one SQLite file, `<data_dir>/groove-destination.db`, in WAL mode.
//!
//! rusqlite is blocking, so no query runs on the async runtime: writes go to a dedicated writer thread that
//! group-commits them (see `writer`), reads run on tokio's blocking pool over read-only connections
//! (see `readers`). API keys are encrypted before they reach the writer and decrypted on the reader side.
//! Likewise, record outcomes are checked and encoded before they are queued, so the writer thread, which every
//! write waits on, only runs SQL.

mod checkpointer;
pub(super) mod claims;
mod connection;
pub(super) mod credentials;
mod delivered_filter;
mod destinations;
pub(super) mod failed_records;
mod failure_free;
pub(super) mod key_check;
mod ledger;
mod migrations;
mod per_record;
mod readers;
pub(super) mod stored;
mod writer;

#[cfg(test)]
mod compat_tests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use rusqlite::TransactionBehavior;

use self::checkpointer::{Checkpointer, WRITER_BACKSTOP_PAGES};
use self::delivered_filter::{DeliveredFilter, Generation};
use self::failure_free::FailureFree;
use self::readers::Readers;
use self::writer::Writer;
use super::data_dir;
use super::error::{Context, StoreError};
use super::page::{Page, PageRequest};
use super::records::{
    FailedRecordEntry, FailedRecordFilter, FailedRecordSelection, FailedRecordSize, LedgerEntry,
    RecordClaim, RecordState, MAX_FAILED_RECORD_IDS,
};
use super::secrets::SecretBox;
use super::{CredentialUpdate, NewCredential, Store, PRUNE_STEP};
use crate::domain::credential::{ApiKey, Credential, Refusal, StoredKey};
use crate::domain::destination::Destination;

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "groove-destination.db";

/// [`Store`] on a local SQLite file. Cheap to share behind an `Arc`; one instance per data directory.
pub struct SqliteStore {
    path: PathBuf,
    secrets: Arc<SecretBox>,
    writer: Writer,
    readers: Arc<Readers>,
    delivered: Arc<DeliveredFilter>,
    failure_free: Arc<FailureFree>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/groove-destination.db`, creating `data_dir` too, and migrates
    /// its schema.
    ///
    /// Refuses, with [`StoreError::SecretKey`], a `secrets` key other than the one the stored credentials were
    /// encrypted with. Blocks while it opens and migrates: call it at startup, or from `spawn_blocking`.
    pub fn open(data_dir: &Path, secrets: SecretBox) -> Result<SqliteStore, StoreError> {
        data_dir::create_private_dir(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        // SQLite would create the database with mode 0644 less the umask, and gives its -wal and -shm files
        // the database's mode: created here first, 0600, they all stay private. Side files left loose by an
        // older version are tightened before SQLite opens them.
        data_dir::create_private_file(&path)?;
        for suffix in ["-wal", "-shm"] {
            data_dir::restrict_file(&side_file(&path, suffix))?;
        }
        let mut conn = connection::open_writer(&path)?;
        migrations::migrate(&mut conn)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .context(|| "checking the secret key".to_string())?;
        key_check::verify_or_record(&tx, &secrets, &path.display().to_string())?;
        tx.commit()
            .context(|| "recording the secret key check".to_string())?;
        conn.pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES)
            .context(|| "setting wal_autocheckpoint".to_string())?;
        let checkpointer = Checkpointer::spawn(connection::open_writer(&path)?)?;
        let writer = Writer::spawn(conn, Some(checkpointer))?;
        Ok(SqliteStore {
            readers: Readers::new(path.clone()),
            failure_free: Arc::new(FailureFree::new(writer.transactions_ended())),
            writer,
            secrets: Arc::new(secrets),
            delivered: Arc::default(),
            path,
        })
    }

    /// Builds the filter of delivered ids now, if one is due; whether it did.
    #[cfg(test)]
    pub(super) async fn build_delivered_filter_now(&self) -> bool {
        if !self.delivered.start_build() {
            return false;
        }
        self.delivered_filter_build().await;
        true
    }

    /// Starts building the filter of delivered ids in the background when one is due (see
    /// `delivered_filter.rs`); until it is in use, duplicate checks look every id up.
    fn build_delivered_filter_if_due(&self) {
        if self.delivered.start_build() {
            tokio::spawn(self.delivered_filter_build());
        }
    }

    /// A build of the filter of delivered ids, for a caller that has claimed it with `start_build`.
    fn delivered_filter_build(&self) -> impl Future<Output = ()> + Send + 'static {
        build_delivered_filter(
            self.writer.clone(),
            Arc::clone(&self.readers),
            Arc::clone(&self.delivered),
        )
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Decrypts the sealed key of credential `id`.
    fn open_key(&self, id: &str, sealed: &[u8]) -> Result<ApiKey, StoreError> {
        let decrypt_error = || StoreError::Decrypt {
            credential_id: id.to_string(),
        };
        let plaintext = self
            .secrets
            .open(&credentials::key_binding(id), sealed)
            .ok_or_else(decrypt_error)?;
        let key = String::from_utf8(plaintext).map_err(|_| decrypt_error())?;
        Ok(ApiKey::new(key))
    }
}

/// Sizes a new filter, has the writer announce it, fills it from a scan of the ledger, and has the writer swap it
/// in. The order is what keeps the filter from missing an id: see `delivered_filter.rs`.
async fn build_delivered_filter(
    writer: Writer,
    readers: Arc<Readers>,
    filter: Arc<DeliveredFilter>,
) {
    let built = async {
        let next = Generation::sized_for(readers.read(ledger::count_ids).await?);
        let (announcing, announced) = (Arc::clone(&filter), Arc::clone(&next));
        writer
            .write(move |_| {
                announcing.announce(announced);
                Ok(())
            })
            .await?;
        readers
            .read(move |conn| {
                ledger::scan_ids(conn, |destination_id, record_id| {
                    next.add_scanned(destination_id, record_id)
                })
            })
            .await?;
        let swapping = Arc::clone(&filter);
        writer
            .write(move |_| {
                swapping.swap_in();
                Ok(())
            })
            .await
    };
    if let Err(error) = built.await {
        tracing::warn!(%error, "cannot build the filter of delivered record ids; duplicate checks look every id up");
        filter.abandon();
    }
}

/// `<database>-wal` or `<database>-shm`: the side files SQLite keeps next to a database in WAL mode.
fn side_file(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}

impl Store for SqliteStore {
    fn create_credential(
        &self,
        new: NewCredential,
    ) -> BoxFuture<'_, Result<Credential, StoreError>> {
        Box::pin(async move {
            // Encrypt here, not on the writer thread, which every write waits on.
            let sealed = self.secrets.seal(
                &credentials::key_binding(&new.id),
                new.api_key.expose().as_bytes(),
            )?;
            let credential = Credential {
                api_key_hint: new.api_key.hint(),
                id: new.id,
                display_name: new.display_name,
                create_time_ms: new.now_ms,
                update_time_ms: new.now_ms,
                key_version: 1,
                refusal: None,
            };
            let stored = credential.clone();
            self.writer
                .write(move |conn| credentials::insert(conn, &stored, &sealed))
                .await?;
            Ok(credential)
        })
    }

    fn get_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Credential, StoreError>> {
        let id = id.to_string();
        Box::pin(self.readers.read(move |conn| credentials::get(conn, &id)))
    }

    fn list_credentials(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Credential>, StoreError>> {
        Box::pin(async move {
            let after = page.after_id()?;
            let size = page.effective_page_size();
            let rows = self
                .readers
                .read(move |conn| credentials::list(conn, after.as_deref(), size + 1))
                .await?;
            Ok(Page::from_overfetch(rows, size, |c| &c.id))
        })
    }

    fn credential_api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ApiKey, StoreError>> {
        Box::pin(async move {
            let owned = id.to_string();
            let sealed = self
                .readers
                .read(move |conn| credentials::sealed_key(conn, &owned))
                .await?;
            self.open_key(id, &sealed)
        })
    }

    fn credential_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredKey, StoreError>> {
        Box::pin(async move {
            let owned = id.to_string();
            let (sealed, key_version, refusal) = self
                .readers
                .read(move |conn| credentials::sealed_key_state(conn, &owned))
                .await?;
            Ok(StoredKey {
                key: self.open_key(id, &sealed)?,
                key_version,
                refusal,
            })
        })
    }

    fn update_credential(
        &self,
        update: CredentialUpdate,
    ) -> BoxFuture<'_, Result<Credential, StoreError>> {
        Box::pin(async move {
            // Encrypt here, not on the writer thread, which every write waits on.
            let new_key = match &update.api_key {
                Some(key) => Some((
                    self.secrets.seal(
                        &credentials::key_binding(&update.id),
                        key.expose().as_bytes(),
                    )?,
                    key.hint(),
                )),
                None => None,
            };
            let CredentialUpdate {
                id,
                display_name,
                now_ms,
                ..
            } = update;
            self.writer
                .write(move |conn| {
                    if let Some(display_name) = &display_name {
                        credentials::set_display_name(conn, &id, display_name, now_ms)?;
                    }
                    if let Some((sealed, hint)) = &new_key {
                        credentials::replace_key(conn, &id, sealed, hint, now_ms)?;
                    }
                    credentials::get(conn, &id)
                })
                .await
        })
    }

    fn set_credential_refusal<'a>(
        &'a self,
        id: &'a str,
        key_version: u64,
        refusal: Option<Refusal>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let id = id.to_string();
        Box::pin(
            self.writer.write(move |conn| {
                credentials::set_refusal(conn, &id, key_version, refusal.as_ref())
            }),
        )
    }

    fn delete_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_string();
        Box::pin(
            self.writer
                .write(move |conn| credentials::delete_unless_used(conn, &id)),
        )
    }

    fn create_destination(
        &self,
        destination: Destination,
    ) -> BoxFuture<'_, Result<Destination, StoreError>> {
        Box::pin(async move {
            let stored = destination.clone();
            self.writer
                .write(move |conn| destinations::insert(conn, &stored))
                .await?;
            Ok(destination)
        })
    }

    fn get_destination<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Destination, StoreError>> {
        let id = id.to_string();
        Box::pin(self.readers.read(move |conn| destinations::get(conn, &id)))
    }

    fn list_destinations(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Destination>, StoreError>> {
        Box::pin(async move {
            let after = page.after_id()?;
            let size = page.effective_page_size();
            let rows = self
                .readers
                .read(move |conn| destinations::list(conn, after.as_deref(), size + 1))
                .await?;
            Ok(Page::from_overfetch(rows, size, |d| &d.id))
        })
    }

    fn update_destination(
        &self,
        destination: Destination,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Destination, StoreError>> {
        Box::pin(
            self.writer
                .write(move |conn| destinations::update(conn, &destination, expected_revision)),
        )
    }

    fn delete_destination<'a>(
        &'a self,
        id: &'a str,
        expected_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let id = id.to_string();
        Box::pin(
            self.writer
                .write(move |conn| destinations::delete(conn, &id, expected_revision)),
        )
    }

    fn claim_records(
        &self,
        claims: Vec<RecordClaim>,
    ) -> BoxFuture<'_, Result<Vec<usize>, StoreError>> {
        Box::pin(async move {
            if claims.is_empty() {
                return Ok(Vec::new());
            }
            let claims = claims
                .into_iter()
                .map(claims::encode)
                .collect::<Result<Vec<_>, _>>()?;
            // One process: nothing else can hold a claim, so none is refused.
            self.writer
                .write(move |conn| claims::insert(conn, &claims))
                .await?;
            Ok(Vec::new())
        })
    }

    fn record_outcomes(
        &self,
        delivered: Vec<LedgerEntry>,
        failed: Vec<FailedRecordEntry>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if delivered.is_empty() && failed.is_empty() {
                return Ok(());
            }
            let delivered: Vec<LedgerEntry> = delivered.into_iter().map(ledger::capped).collect();
            let failed = failed
                .into_iter()
                .map(failed_records::encode)
                .collect::<Result<Vec<_>, _>>()?;
            let filter = Arc::clone(&self.delivered);
            let failure_free = Arc::clone(&self.failure_free);
            self.writer
                .write(move |conn| {
                    ledger::record(conn, &delivered)?;
                    filter.add(
                        delivered
                            .iter()
                            .map(|entry| (&*entry.destination_id, entry.record_id.as_str())),
                    );
                    failed_records::resolve(conn, &delivered)?;
                    failure_free.storing(failed.iter().map(|failure| failure.key().0));
                    failed_records::upsert(conn, &failed)?;
                    let delivered_keys = delivered
                        .iter()
                        .map(|entry| (&*entry.destination_id, entry.record_id.as_str()));
                    let failed_keys = failed.iter().map(failed_records::EncodedFailure::key);
                    claims::end(conn, delivered_keys.chain(failed_keys))
                })
                .await
        })
    }

    fn release_claims(
        &self,
        records: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            if records.is_empty() {
                return Ok(());
            }
            self.writer
                .write(move |conn| {
                    claims::end(
                        conn,
                        records.iter().map(|(destination_id, record_id)| {
                            (destination_id.as_str(), record_id.as_str())
                        }),
                    )
                })
                .await
        })
    }

    fn fail_orphaned_claims<'a>(
        &'a self,
        error: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let error = error.to_string();
        let failure_free = Arc::clone(&self.failure_free);
        Box::pin(self.writer.write(move |conn| {
            let failures = claims::take_all_as_failures(conn, &error, now_ms)?;
            failure_free.storing(failures.iter().map(|failure| failure.key().0));
            failed_records::upsert(conn, &failures)?;
            Ok(failures.len() as u64)
        }))
    }

    fn record_states<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<HashMap<String, RecordState>, StoreError>> {
        Box::pin(async move {
            if record_ids.is_empty() {
                return Ok(HashMap::new());
            }
            self.build_delivered_filter_if_due();
            let maybe_delivered: Vec<String> = self
                .delivered
                .maybe_delivered(destination_id, &record_ids)
                .into_iter()
                .cloned()
                .collect();
            // Nothing to look up: the answer is known without a hand-off to a reader thread.
            if maybe_delivered.is_empty() && self.failure_free.is_free(destination_id) {
                return Ok(HashMap::new());
            }
            let destination_id = destination_id.to_string();
            let failure_free = Arc::clone(&self.failure_free);
            let start = failure_free.read_starts();
            self.readers
                .read(move |conn| {
                    let mut states: HashMap<String, RecordState> =
                        ledger::lookup(conn, &destination_id, &maybe_delivered)?
                            .into_iter()
                            .map(|(record_id, entry)| (record_id, RecordState::Delivered(entry)))
                            .collect();
                    // A record that was delivered after an ambiguous failure left the failed list then; one that
                    // is in both is not possible, and if it were, delivered is the stronger fact.
                    match failed_records::maybe_delivered(conn, &destination_id, &record_ids)? {
                        None => failure_free.found_none(&destination_id, start),
                        Some(record_ids) => {
                            for record_id in record_ids {
                                states
                                    .entry(record_id)
                                    .or_insert(RecordState::MaybeDelivered);
                            }
                        }
                    }
                    Ok(states)
                })
                .await
        })
    }

    fn ledger_prune(
        &self,
        older_than_ms: i64,
        max_entries_per_destination: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut removed = 0;
            for destination_id in self.readers.read(destinations::ids).await? {
                let id = destination_id.clone();
                let bound = self
                    .readers
                    .read(move |conn| {
                        ledger::prune_bound(conn, &id, older_than_ms, max_entries_per_destination)
                    })
                    .await?;
                let Some(bound) = bound else {
                    continue;
                };
                loop {
                    let id = destination_id.clone();
                    let step = self
                        .writer
                        .write(move |conn| ledger::prune_through(conn, &id, bound, PRUNE_STEP))
                        .await?;
                    removed += step.removed;
                    if !step.more {
                        break;
                    }
                }
            }
            Ok(removed)
        })
    }

    fn list_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        filter: FailedRecordFilter,
        page: PageRequest,
        max_bytes: u64,
    ) -> BoxFuture<'a, Result<Page<FailedRecordEntry>, StoreError>> {
        Box::pin(async move {
            let after = page.after_time_and_id()?;
            let size = page.effective_page_size();
            let destination_id = destination_id.to_string();
            let (rows, more) = self
                .readers
                .read(move |conn| {
                    let after = after.as_ref().map(|(time, id)| (*time, id.as_str()));
                    let (rows, more) = failed_records::list(
                        conn,
                        &destination_id,
                        filter,
                        after,
                        size,
                        max_bytes,
                    )?;
                    Ok((found_in_destination(conn, &destination_id, rows)?, more))
                })
                .await?;
            Ok(Page::by_time(rows, more, |entry| {
                (entry.first_failure_ms, &entry.record_id)
            }))
        })
    }

    fn get_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<FailedRecordEntry>, StoreError>> {
        let destination_id = destination_id.to_string();
        Box::pin(self.readers.read(move |conn| {
            let rows = failed_records::get(conn, &destination_id, &record_ids)?;
            found_in_destination(conn, &destination_id, rows)
        }))
    }

    fn failed_record_sizes<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FailedRecordSize>, StoreError>> {
        let destination_id = destination_id.to_string();
        let limit = limit.min(MAX_FAILED_RECORD_IDS);
        Box::pin(self.readers.read(move |conn| {
            let sizes = match &selection {
                FailedRecordSelection::All => {
                    failed_records::oldest_sizes(conn, &destination_id, limit)?
                }
                FailedRecordSelection::Ids(record_ids) => {
                    failed_records::sizes_of(conn, &destination_id, record_ids, limit)?
                }
            };
            found_in_destination(conn, &destination_id, sizes)
        }))
    }

    fn delete_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let destination_id = destination_id.to_string();
        Box::pin(self.writer.write(move |conn| {
            destinations::ensure_exists(conn, &destination_id)?;
            match &selection {
                FailedRecordSelection::All => failed_records::delete_all(conn, &destination_id),
                FailedRecordSelection::Ids(record_ids) => {
                    failed_records::delete(conn, &destination_id, record_ids)
                }
            }
        }))
    }
}

/// Passes `rows` on, unless there are none because the destination itself does not exist. Rows prove it
/// exists (they are deleted with it), so the extra lookup is only paid for an empty answer.
fn found_in_destination<T>(
    conn: &rusqlite::Connection,
    destination_id: &str,
    rows: Vec<T>,
) -> Result<Vec<T>, StoreError> {
    if rows.is_empty() {
        destinations::ensure_exists(conn, destination_id)?;
    }
    Ok(rows)
}
