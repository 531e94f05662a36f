//! One test suite for every [`Store`]: each test is an async function taking a [`Harness`], run once on
//! SQLite and once on PostgreSQL (a fresh database from `test_postgres`). What only one backend has (SQLite's
//! file and key file, PostgreSQL's migrations and replicas) is tested next to that backend.

mod claims;
pub(in crate::store) mod crud;
pub(in crate::store) mod records;

use std::collections::HashMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use futures::future::BoxFuture;

use super::error::StoreError;
use super::page::{Page, PageRequest};
use super::records::{
    FailedRecordEntry, FailedRecordFilter, FailedRecordSelection, LedgerEntry, RecordClaim,
    RecordState,
};
use super::secrets::SecretBox;
use super::{NewCredential, PostgresStore, ReplicaOptions, SqliteStore, Store, PRUNE_STEP};
use crate::domain::credential::ApiKey;
use crate::domain::destination::Destination;

const LONG_LEASE: ReplicaOptions = ReplicaOptions {
    lease: std::time::Duration::from_secs(3600),
    heartbeat: std::time::Duration::from_secs(3600),
};

/// A store under test, and what a test needs besides the trait: reopening it, and counting rows.
pub(in crate::store) struct Harness {
    store: Arc<dyn Store>,
    /// The secret key, base64: a reopened store gets the same one.
    key: String,
    backend: Backend,
}

enum Backend {
    Sqlite(tempfile::TempDir),
    Postgres(test_postgres::TestDatabase),
}

impl Harness {
    pub(in crate::store) async fn sqlite() -> Harness {
        let dir = tempfile::tempdir().expect("temporary directory");
        Self::open_new(Backend::Sqlite(dir)).await
    }

    pub(in crate::store) async fn postgres() -> Harness {
        Self::open_new(Backend::Postgres(
            test_postgres::TestDatabase::create().await,
        ))
        .await
    }

    async fn open_new(backend: Backend) -> Harness {
        let key = STANDARD.encode(rand::random::<[u8; 32]>());
        let store = open(&backend, &key).await;
        Harness {
            store,
            key,
            backend,
        }
    }

    pub(in crate::store) fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.store)
    }

    /// Another store on the same data, as after a restart.
    pub(in crate::store) async fn reopen(&self) -> Arc<dyn Store> {
        open(&self.backend, &self.key).await
    }

    /// Another store on the same data, as when the process restarts after being killed: what the old store
    /// left in flight is left by a stopped process (on PostgreSQL, its lease has run out).
    pub(in crate::store) async fn restart(&self) -> Arc<dyn Store> {
        if let Backend::Postgres(database) = &self.backend {
            let (client, connection) =
                tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
                    .await
                    .expect("connecting to the test database");
            tokio::spawn(connection);
            client
                .execute(
                    "UPDATE replicas SET lease_until = now() - interval '1 second'",
                    &[],
                )
                .await
                .expect("ending the leases");
        }
        self.reopen().await
    }

    /// Delivered record ids the destination's ledger holds, whatever tables the store keeps them in.
    pub(in crate::store) async fn delivered_count(&self, destination_id: &str) -> i64 {
        let table = match &self.backend {
            Backend::Sqlite(_) => "delivered_ids",
            Backend::Postgres(_) => "delivered_records",
        };
        self.count(table, destination_id).await
    }

    /// Rows of `table` that belong to the destination.
    pub(in crate::store) async fn count(&self, table: &str, destination_id: &str) -> i64 {
        let sql = format!("SELECT count(*) FROM {table} WHERE destination_id = $1");
        match &self.backend {
            Backend::Sqlite(dir) => {
                rusqlite::Connection::open(dir.path().join(super::DATABASE_FILE))
                    .and_then(|conn| conn.query_row(&sql, [destination_id], |row| row.get(0)))
                    .expect("counting rows")
            }
            Backend::Postgres(database) => {
                let (client, connection) =
                    tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
                        .await
                        .expect("connecting to the test database");
                tokio::spawn(connection);
                client
                    .query_one(&sql, &[&destination_id])
                    .await
                    .expect("counting rows")
                    .get(0)
            }
        }
    }
}

async fn open(backend: &Backend, key: &str) -> Arc<dyn Store> {
    let secrets = SecretBox::from_encoded(key).expect("secret key");
    match backend {
        Backend::Sqlite(dir) => {
            Arc::new(SqliteStore::open(dir.path(), secrets).expect("open store"))
        }
        Backend::Postgres(database) => Arc::new(
            // Leases that do not run out while a test runs: tests end them by hand (`Harness::restart`).
            PostgresStore::open_with(database.url(), secrets, LONG_LEASE)
                .await
                .expect("open store"),
        ),
    }
}

/// Instantiates each listed test body once per backend, as `store::conformance::{sqlite,postgres}::<name>`.
macro_rules! conformance_tests {
    ($($(#[$attribute:meta])* $module:ident :: $name:ident),* $(,)?) => {
        mod sqlite {
            $(
                $(#[$attribute])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(super::Harness::sqlite().await).await
                }
            )*
        }

        mod postgres {
            $(
                $(#[$attribute])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$module::$name(super::Harness::postgres().await).await
                }
            )*
        }
    };
}

conformance_tests! {
 crud::credential_crud,
 crud::credential_updates_change_only_the_fields_given,
 crud::a_refusal_is_stored_against_its_key_version_and_ends_with_the_key,
 crud::a_refusal_survives_a_restart,
 crud::destination_crud,
 crud::duplicate_ids_are_refused,
 crud::destinations_need_an_existing_credential,
 crud::credential_in_use_cannot_be_deleted_until_released,
 crud::stale_revisions_are_refused,
 crud::concurrent_compare_and_swap_has_exactly_one_winner,
 crud::listings_page_through_everything_in_id_order,
 crud::default_page_size_applies_to_large_listings,
 crud::errors_never_show_the_api_key,
 records::a_recorded_delivery_is_found_as_a_duplicate,
 records::lookups_of_more_ids_than_one_statement_binds_find_them_all,
 records::recording_again_replaces_the_ledger_entry,
 records::prune_removes_entries_older_than_the_cutoff,
 records::prune_keeps_the_most_recent_entries_of_each_destination,
 records::prune_works_through_large_ledgers_in_steps,
 records::deleting_a_destination_deletes_its_ledger_and_failed_records,
 records::failing_again_adds_attempts_and_keeps_the_first_failure_time,
 records::attempts_saturate_instead_of_overflowing,
 records::only_rejected_and_failed_records_are_kept,
 records::deliveries_of_several_destinations_in_one_group_resolve_only_their_own_failures,
 records::delivering_a_failed_record_resolves_it,
 records::failed_records_page_oldest_first,
 records::failed_records_are_fetched_by_id,
 records::a_hundred_thousand_entries_in_a_hundred_calls,
#[ignore = "a measurement, not a check"] records::ledger_throughput,
 records::failed_record_pages_end_at_their_byte_bound_and_go_on_from_there,
 claims::a_claim_ends_with_its_outcome_or_its_release,
 claims::a_batch_is_one_claim_that_ends_with_its_records,
 claims::a_claim_ends_among_many_open_ones,
 claims::record_states_tell_delivered_from_maybe_delivered,
 claims::maybe_delivered_stays_set_until_the_record_is_delivered,
 claims::failed_records_are_listed_by_outcome_and_ambiguity_and_deleted,
 claims::claims_of_a_deleted_destination_go_with_it,
}
