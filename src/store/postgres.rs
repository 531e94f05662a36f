//! The shared store: PostgreSQL, for several stateless replicas serving from one database.
//!
//! Queries go through a pool of connections (deadpool-postgres); TLS follows the URL's `sslmode` (see
//! `connection`). Every write is atomic on its own and concurrent writers are settled in SQL (compare-and-swap
//! on revisions, `ON CONFLICT`, foreign keys), never by in-process locks, so replicas need no coordination
//! beyond the database. The per-record writes (claims, outcomes, releases) are group-committed by one task per
//! process (see `committer`). Migrations run at start-up under an advisory lock (see `migrations`), followed by
//! the secret key check, which refuses a replica whose key differs from the one the credentials were sealed
//! with.

mod changes;
mod claims;
mod committer;
mod connection;
mod credentials;
mod destinations;
mod failed_records;
mod key_check;
mod ledger;
mod migrations;
mod pace_book;
mod replicas;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Client, Pool};
use futures::future::BoxFuture;
use tokio_postgres::error::SqlState;

pub use self::changes::PgChangeFeed;
use self::committer::{Committer, Write};
pub use self::connection::redact as redact_database_url;
use self::connection::DatabaseUrl;
pub use self::pace_book::PgPaceBook;
pub use self::replicas::ReplicaOptions;
use super::error::{Context, StoreError};
use super::page::{Page, PageRequest};
use super::records::{
    FailedRecordEntry, FailedRecordFilter, FailedRecordSelection, FailedRecordSize, LedgerEntry,
    RecordClaim, RecordState, MAX_FAILED_RECORD_IDS,
};
use super::secrets::SecretBox;
use super::sqlite::credentials::key_binding;
use super::{CredentialUpdate, NewCredential, Store, PRUNE_STEP};
use crate::domain::credential::{ApiKey, Credential, Refusal, StoredKey};
use crate::domain::destination::Destination;

/// [`Store`] on a PostgreSQL database that any number of processes may share.
pub struct PostgresStore {
    pool: Pool,
    /// How to open connections of its own (the change feed's listener).
    url: DatabaseUrl,
    secrets: Arc<SecretBox>,
    committer: Committer,
    /// The URL without its password.
    database: String,
    /// This process among the replicas: the owner of the claims it writes.
    replica_id: String,
    replica_options: ReplicaOptions,
    /// Renews the replica's lease until the store is dropped.
    _lease: tokio_util::sync::DropGuard,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://` or `postgresql://`), applies the migrations it lacks and
    /// checks the secret key.
    ///
    /// Refuses, with [`StoreError::SecretKey`], a `secrets` key other than the one the stored credentials were
    /// encrypted with: replicas must all be given the same key. Errors never contain the URL's password.
    pub async fn open(url: &str, secrets: SecretBox) -> Result<PostgresStore, StoreError> {
        Self::open_with(url, secrets, ReplicaOptions::default()).await
    }

    /// [`PostgresStore::open`] with a lease other than the default: for tests, which cannot wait for one.
    pub async fn open_with(
        url: &str,
        secrets: SecretBox,
        replica_options: ReplicaOptions,
    ) -> Result<PostgresStore, StoreError> {
        let url = DatabaseUrl::parse(url)?;
        let replica_id = uuid::Uuid::new_v4().to_string();
        let database = url.redacted().to_string();
        let pool = url.pool()?;
        let mut client = connect(&pool).await?;
        let context = || "preparing the database".to_string();
        let tx = client.transaction().await.context(context)?;
        migrations::migrate(&tx).await?;
        key_check::verify_or_record(&tx, &secrets, &database).await?;
        replicas::register(&tx, &replica_id, replica_options).await?;
        tx.commit().await.context(context)?;
        drop(client);
        tracing::info!(replica = %replica_id, "registered as a replica");
        Ok(PostgresStore {
            url,
            committer: Committer::spawn(pool.clone(), replica_id.clone()),
            _lease: replicas::keep_alive(pool.clone(), replica_id.clone(), replica_options),
            replica_id,
            replica_options,
            pool,
            secrets: Arc::new(secrets),
            database,
        })
    }

    /// This process's id among the replicas sharing the database.
    pub fn replica_id(&self) -> &str {
        &self.replica_id
    }

    /// The database URL without its password.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// Starts this replica's change feed on the database: changes are announced to the other replicas with
    /// NOTIFY and theirs heard on a connection of its own. Must run inside the runtime.
    pub fn change_feed(&self) -> Result<PgChangeFeed, StoreError> {
        let config = self.url.config().clone();
        Ok(match self.url.tls_connector()? {
            Some(tls) => PgChangeFeed::start(self.pool.clone(), config, tls, &self.replica_id),
            None => PgChangeFeed::start(
                self.pool.clone(),
                config,
                tokio_postgres::NoTls,
                &self.replica_id,
            ),
        })
    }

    /// The line of call slots every replica takes its calls' slots from.
    pub fn pace_book(&self) -> PgPaceBook {
        PgPaceBook::new(self.pool.clone())
    }

    async fn client(&self) -> Result<Client, StoreError> {
        connect(&self.pool).await
    }

    /// Decrypts the sealed key of credential `id`.
    fn open_key(&self, id: &str, sealed: &[u8]) -> Result<ApiKey, StoreError> {
        let decrypt_error = || StoreError::Decrypt {
            credential_id: id.to_string(),
        };
        let plaintext = self
            .secrets
            .open(&key_binding(id), sealed)
            .ok_or_else(decrypt_error)?;
        let key = String::from_utf8(plaintext).map_err(|_| decrypt_error())?;
        Ok(ApiKey::new(key))
    }

    fn seal(&self, id: &str, key: &ApiKey) -> Result<Vec<u8>, StoreError> {
        self.secrets.seal(&key_binding(id), key.expose().as_bytes())
    }
}

async fn connect(pool: &Pool) -> Result<Client, StoreError> {
    pool.get()
        .await
        .context(|| "connecting to the database".to_string())
}

/// The SQLSTATE of a store error caused by the database, if it is one.
fn sql_state(err: &StoreError) -> Option<&SqlState> {
    match err {
        StoreError::Internal { cause, .. } => cause
            .downcast_ref::<tokio_postgres::Error>()
            .and_then(tokio_postgres::Error::code),
        _ => None,
    }
}

impl Store for PostgresStore {
    fn create_credential(
        &self,
        new: NewCredential,
    ) -> BoxFuture<'_, Result<Credential, StoreError>> {
        Box::pin(async move {
            let sealed = self.seal(&new.id, &new.api_key)?;
            let credential = Credential {
                api_key_hint: new.api_key.hint(),
                id: new.id,
                display_name: new.display_name,
                create_time_ms: new.now_ms,
                update_time_ms: new.now_ms,
                key_version: 1,
                refusal: None,
            };
            let client = self.client().await?;
            credentials::insert(&**client, &credential, &sealed).await?;
            Ok(credential)
        })
    }

    fn get_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Credential, StoreError>> {
        Box::pin(async move { credentials::get(&**self.client().await?, id).await })
    }

    fn list_credentials(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Credential>, StoreError>> {
        Box::pin(async move {
            let after = page.after_id()?;
            let size = page.effective_page_size();
            let client = self.client().await?;
            let rows = credentials::list(&**client, after.as_deref(), size + 1).await?;
            Ok(Page::from_overfetch(rows, size, |c| &c.id))
        })
    }

    fn credential_api_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<ApiKey, StoreError>> {
        Box::pin(async move {
            let sealed = credentials::sealed_key(&**self.client().await?, id).await?;
            self.open_key(id, &sealed)
        })
    }

    fn credential_key<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoredKey, StoreError>> {
        Box::pin(async move {
            let (sealed, key_version, refusal) =
                credentials::sealed_key_state(&**self.client().await?, id).await?;
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
            let new_key = match &update.api_key {
                Some(key) => Some((self.seal(&update.id, key)?, key.hint())),
                None => None,
            };
            let id = &update.id;
            let context = || format!("updating credential credentials/{id}");
            let mut client = self.client().await?;
            let tx = client.transaction().await.context(context)?;
            if let Some(display_name) = &update.display_name {
                credentials::set_display_name(&*tx, id, display_name, update.now_ms).await?;
            }
            if let Some((sealed, hint)) = &new_key {
                credentials::replace_key(&*tx, id, sealed, hint, update.now_ms).await?;
            }
            let credential = credentials::get(&*tx, id).await?;
            tx.commit().await.context(context)?;
            Ok(credential)
        })
    }

    fn set_credential_refusal<'a>(
        &'a self,
        id: &'a str,
        key_version: u64,
        refusal: Option<Refusal>,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            credentials::set_refusal(&**client, id, key_version, refusal.as_ref()).await
        })
    }

    fn delete_credential<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let in_use = |destination_ids| StoreError::CredentialInUse {
                credential_id: id.to_string(),
                destination_ids,
            };
            let users = credentials::users(&**client, id).await?;
            if !users.is_empty() {
                return Err(in_use(users));
            }
            // The foreign key decides, also about a destination another replica created since the check.
            match credentials::delete(&**client, id).await {
                Ok(0) => Err(StoreError::not_found(super::CREDENTIAL, id)),
                Ok(_) => Ok(()),
                Err(err) if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) => {
                    Err(in_use(credentials::users(&**client, id).await?))
                }
                Err(err) => Err(StoreError::internal(
                    format!("deleting credential credentials/{id}"),
                    err,
                )),
            }
        })
    }

    fn create_destination(
        &self,
        destination: Destination,
    ) -> BoxFuture<'_, Result<Destination, StoreError>> {
        Box::pin(async move {
            destinations::insert(&**self.client().await?, &destination).await?;
            Ok(destination)
        })
    }

    fn get_destination<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Destination, StoreError>> {
        Box::pin(async move { destinations::get(&**self.client().await?, id).await })
    }

    fn list_destinations(
        &self,
        page: PageRequest,
    ) -> BoxFuture<'_, Result<Page<Destination>, StoreError>> {
        Box::pin(async move {
            let after = page.after_id()?;
            let size = page.effective_page_size();
            let client = self.client().await?;
            let rows = destinations::list(&**client, after.as_deref(), size + 1).await?;
            Ok(Page::from_overfetch(rows, size, |d| &d.id))
        })
    }

    fn update_destination(
        &self,
        destination: Destination,
        expected_revision: u64,
    ) -> BoxFuture<'_, Result<Destination, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            destinations::update(&**client, &destination, expected_revision).await
        })
    }

    fn delete_destination<'a>(
        &'a self,
        id: &'a str,
        expected_revision: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            destinations::delete(&**self.client().await?, id, expected_revision).await
        })
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
            self.committer.write(Write::Claims(claims)).await
        })
    }

    fn claims_repeatable_calls(&self) -> bool {
        true
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
            let delivered = delivered.into_iter().map(ledger::capped).collect();
            let failed = failed
                .into_iter()
                .map(failed_records::encode)
                .collect::<Result<Vec<_>, _>>()?;
            self.committer
                .write(Write::Outcomes { delivered, failed })
                .await?;
            Ok(())
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
            self.committer.write(Write::Release(records)).await?;
            Ok(())
        })
    }

    fn fail_orphaned_claims<'a>(
        &'a self,
        error: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let context = || "failing orphaned record claims".to_string();
            let mut client = self.client().await?;
            let tx = client.transaction().await.context(context)?;
            let failures = claims::take_orphans_as_failures(&tx, &self.replica_id, error, now_ms)
                .await?
                .into_iter()
                .map(failed_records::encode)
                .collect::<Result<Vec<_>, _>>()?;
            // One claim's records are distinct, but two orphaned claims may share a record: upsert them in
            // rounds, so no statement meets a key twice.
            let mut rounds: Vec<Vec<&failed_records::EncodedFailure>> = Vec::new();
            for failure in &failures {
                match rounds
                    .iter_mut()
                    .find(|round| round.iter().all(|other| other.key() != failure.key()))
                {
                    Some(round) => round.push(failure),
                    None => rounds.push(vec![failure]),
                }
            }
            for round in &rounds {
                failed_records::upsert(&tx, round).await?;
            }
            tx.commit().await.context(context)?;
            Ok(failures.len() as u64)
        })
    }

    fn orphan_check_interval(&self) -> Option<Duration> {
        Some(self.replica_options.lease / 2)
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
            let client = self.client().await?;
            // Both lookups go out together on the one connection (tokio-postgres pipelines them).
            let (delivered, maybe_delivered, claimed_elsewhere) = futures::try_join!(
                ledger::lookup(&client, destination_id, &record_ids),
                failed_records::maybe_delivered(&client, destination_id, &record_ids),
                claims::claimed_elsewhere(&client, destination_id, &record_ids, &self.replica_id),
            )?;
            let mut states: HashMap<String, RecordState> = delivered
                .into_iter()
                .map(|(record_id, entry)| (record_id, RecordState::Delivered(entry)))
                .collect();
            // Delivered is the stronger fact, should a record ever be in both.
            for record_id in maybe_delivered {
                states
                    .entry(record_id)
                    .or_insert(RecordState::MaybeDelivered);
            }
            // A recorded outcome is the stronger fact: a claim is only what is being tried now.
            for record_id in claimed_elsewhere {
                states
                    .entry(record_id)
                    .or_insert(RecordState::ClaimedElsewhere);
            }
            Ok(states)
        })
    }

    fn ledger_prune(
        &self,
        older_than_ms: i64,
        max_entries_per_destination: u64,
    ) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let mut removed = 0;
            for destination_id in destinations::ids(&**client).await? {
                let bound = ledger::prune_bound(
                    &**client,
                    &destination_id,
                    older_than_ms,
                    max_entries_per_destination,
                )
                .await?;
                let Some(bound) = bound else {
                    continue;
                };
                loop {
                    let deleted =
                        ledger::prune_through(&**client, &destination_id, &bound, PRUNE_STEP)
                            .await?;
                    removed += deleted;
                    if deleted < u64::from(PRUNE_STEP) {
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
            let mut client = self.client().await?;
            let after = after.as_ref().map(|(time, id)| (*time, id.as_str()));
            let (rows, more) =
                failed_records::list(&mut client, destination_id, filter, after, size, max_bytes)
                    .await?;
            let rows = found_in_destination(&client, destination_id, rows).await?;
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
        Box::pin(async move {
            let client = self.client().await?;
            let rows = failed_records::get(&**client, destination_id, &record_ids).await?;
            found_in_destination(&client, destination_id, rows).await
        })
    }

    fn failed_record_sizes<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<FailedRecordSize>, StoreError>> {
        let limit = limit.min(MAX_FAILED_RECORD_IDS);
        Box::pin(async move {
            let client = self.client().await?;
            let sizes = match &selection {
                FailedRecordSelection::All => {
                    failed_records::oldest_sizes(&**client, destination_id, limit).await?
                }
                FailedRecordSelection::Ids(record_ids) => {
                    failed_records::sizes_of(&**client, destination_id, record_ids, limit).await?
                }
            };
            found_in_destination(&client, destination_id, sizes).await
        })
    }

    fn delete_failed_records<'a>(
        &'a self,
        destination_id: &'a str,
        selection: FailedRecordSelection,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let client = self.client().await?;
            let deleted = match &selection {
                FailedRecordSelection::All => {
                    failed_records::delete_all(&**client, destination_id).await?
                }
                FailedRecordSelection::Ids(record_ids) => {
                    failed_records::delete(&**client, destination_id, record_ids).await?
                }
            };
            // Rows prove the destination exists (they are deleted with it).
            if deleted == 0 {
                destinations::ensure_exists(&**client, destination_id).await?;
            }
            Ok(deleted)
        })
    }
}

/// Passes `rows` on, unless there are none because the destination itself does not exist.
async fn found_in_destination<T>(
    client: &Client,
    destination_id: &str,
    rows: Vec<T>,
) -> Result<Vec<T>, StoreError> {
    if rows.is_empty() {
        destinations::ensure_exists(&***client, destination_id).await?;
    }
    Ok(rows)
}

#[cfg(test)]
mod tests;
