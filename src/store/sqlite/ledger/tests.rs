//! How the SQLite store keeps its ledger: entries that share an answer in one group, retention a group at a
//! time. What every store does with the ledger is tested in `store::conformance`.

use std::path::Path;
use std::sync::Arc;

use super::*;
use crate::store::conformance::crud::{destination, new_credential};
use crate::store::conformance::records::LedgerLookup;
use crate::store::sqlite::tests::{open, raw};
use crate::store::{RecordState, SecretBox, SqliteStore, Store, PRUNE_STEP};

/// A batch's entries: the same answer (status, no body, attempts, time) for every record.
fn batch(
    destination_id: &str,
    record_ids: impl IntoIterator<Item = String>,
    at_ms: i64,
) -> Vec<LedgerEntry> {
    record_ids
        .into_iter()
        .map(|record_id| LedgerEntry {
            destination_id: destination_id.into(),
            record_id,
            http_status: 201,
            response_body: Vec::new(),
            attempts: 1,
            delivered_at_ms: at_ms,
        })
        .collect()
}

fn numbered(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}{i}")).collect()
}

async fn store_with_destination(dir: &Path) -> Arc<dyn Store> {
    sqlite_with_destination(dir).await
}

/// The store as its own type, for what only tests of the SQLite store may call.
async fn sqlite_with_destination(dir: &Path) -> Arc<SqliteStore> {
    let secrets = SecretBox::load_or_create(dir).unwrap();
    let store = Arc::new(SqliteStore::open(dir, secrets).unwrap());
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    store
}

async fn record(store: &Arc<dyn Store>, delivered: Vec<LedgerEntry>) {
    store.record_outcomes(delivered, vec![]).await.unwrap();
}

fn rows(dir: &Path, table: &str) -> i64 {
    raw(dir)
        .query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
            row.get(0)
        })
        .unwrap()
}

#[tokio::test]
async fn a_batch_is_one_group_and_each_of_its_records_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_destination(dir.path()).await;
    let mut entries = batch("a", numbered("r", 0..1000), 7);
    let mut single = batch("a", ["one".to_string()], 7);
    single[0].response_body = b"{\"ticket\":{}}".to_vec();
    entries.extend(single.clone());
    entries.extend(batch("a", numbered("s", 0..3), 8));
    record(&store, entries).await;

    assert_eq!(rows(dir.path(), "delivered_groups"), 3);
    assert_eq!(rows(dir.path(), "delivered_ids"), 1004);
    let mut wanted = numbered("r", 0..1000);
    wanted.extend(["one".to_string(), "s2".to_string(), "unknown".to_string()]);
    let found = store.ledger_lookup("a", wanted).await.unwrap();
    assert_eq!(found.len(), 1002);
    assert_eq!(found["r999"], batch("a", ["r999".to_string()], 7)[0]);
    assert_eq!(found["one"], single[0]);
    assert_eq!(found["s2"].delivered_at_ms, 8);
}

#[tokio::test]
async fn the_count_rule_keeps_a_group_it_would_cut_through() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_destination(dir.path()).await;
    for (at_ms, prefix) in [(1, "x"), (2, "y"), (3, "z")] {
        record(&store, batch("a", numbered(prefix, 0..10), at_ms)).await;
    }
    // 15 to keep: z and y hold 20, so only x goes.
    assert_eq!(store.ledger_prune(i64::MIN, 15).await.unwrap(), 10);
    assert_eq!(rows(dir.path(), "delivered_groups"), 2);
    assert!(store
        .ledger_lookup("a", numbered("x", 0..10))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store
            .ledger_lookup("a", numbered("y", 0..10))
            .await
            .unwrap()
            .len(),
        10
    );
    // Exactly at a group's edge: nothing is cut.
    assert_eq!(store.ledger_prune(i64::MIN, 20).await.unwrap(), 0);
    assert_eq!(store.ledger_prune(i64::MIN, 10).await.unwrap(), 10);
    assert_eq!(rows(dir.path(), "delivered_ids"), 10);
}

#[tokio::test]
async fn a_record_delivered_again_outlives_its_first_group() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_destination(dir.path()).await;
    record(&store, batch("a", numbered("r", 0..2), 1)).await;
    let mut again = batch("a", ["r1".to_string()], 5);
    again[0].attempts = 2;
    record(&store, again.clone()).await;

    // The first group still lists r1, but removing it only removes the key still pointing at it.
    assert_eq!(store.ledger_prune(3, u64::MAX).await.unwrap(), 1);
    let found = store.ledger_lookup("a", numbered("r", 0..2)).await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found["r1"], again[0]);
    assert_eq!(rows(dir.path(), "delivered_groups"), 1);
}

#[tokio::test]
async fn retention_steps_through_groups_larger_than_a_step() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_destination(dir.path()).await;
    let large = PRUNE_STEP as usize * 2 + 1;
    record(&store, batch("a", numbered("big", 0..large), 1)).await;
    for at_ms in 2..5 {
        record(
            &store,
            batch("a", numbered(&format!("t{at_ms}-"), 0..3), at_ms),
        )
        .await;
    }
    let removed = store.ledger_prune(i64::MIN, 0).await.unwrap();
    assert_eq!(removed, large as u64 + 9);
    assert_eq!(rows(dir.path(), "delivered_groups"), 0);
    assert_eq!(rows(dir.path(), "delivered_ids"), 0);
}

#[tokio::test]
async fn a_damaged_id_list_is_reported_when_retention_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_with_destination(dir.path()).await;
    record(&store, batch("a", numbered("r", 0..2), 1)).await;
    raw(dir.path())
        .execute("UPDATE delivered_groups SET record_ids = x'00000009'", [])
        .unwrap();
    let err = store
        .ledger_prune(i64::MIN, 0)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("is corrupt"), "{err}");
    assert_eq!(rows(dir.path(), "delivered_ids"), 2);
}

#[tokio::test]
async fn duplicate_checks_go_through_the_filter_once_it_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_with_destination(dir.path()).await;
    let store: Arc<dyn Store> = sqlite.clone();
    record(&store, batch("a", numbered("before", 0..500), 1)).await;
    assert!(sqlite.build_delivered_filter_now().await);
    assert!(
        !sqlite.build_delivered_filter_now().await,
        "a second build is not due"
    );
    record(&store, batch("a", numbered("after", 0..500), 2)).await;

    let mut wanted = numbered("before", 0..500);
    wanted.extend(numbered("after", 0..500));
    wanted.extend(numbered("fresh", 0..500));
    let found = store.ledger_lookup("a", wanted).await.unwrap();
    assert_eq!(found.len(), 1000);
    assert!(found.keys().all(|id| !id.starts_with("fresh")));

    // A row written behind the store's back is not in the filter, so the check does not look it up: proof that
    // fresh ids skip the lookup. (The store itself never writes an id without adding it to the filter.)
    raw(dir.path())
        .execute_batch(
            "INSERT INTO delivered_groups (destination_id, http_status, response_body, attempts,
                 delivered_at_ms, record_count, record_ids)
             VALUES ('a', 201, x'', 1, 3, 1, x'00000006736563726574');
             INSERT INTO delivered_ids VALUES ('a', 'secret', last_insert_rowid());",
        )
        .unwrap();
    let hidden = store
        .ledger_lookup("a", vec!["secret".to_string()])
        .await
        .unwrap();
    assert!(hidden.is_empty());

    // After a restart the ledger is the truth again: every id is looked up until a new filter is built.
    drop(store);
    drop(sqlite);
    let store = open(dir.path());
    let found = store
        .ledger_lookup("a", vec!["secret".to_string(), "after499".to_string()])
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
}

/// The states the store reports for these ids of destination `a`, sorted.
async fn states(store: &Arc<dyn Store>, record_ids: &[&str]) -> Vec<(String, &'static str)> {
    let ids = record_ids.iter().map(|id| id.to_string()).collect();
    let mut states: Vec<_> = store
        .record_states("a", ids)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, state)| {
            let state = match state {
                RecordState::Delivered(_) => "delivered",
                RecordState::MaybeDelivered => "maybe delivered",
                RecordState::ClaimedElsewhere => "claimed elsewhere",
            };
            (id, state)
        })
        .collect();
    states.sort();
    states
}

/// A failed record that may have been delivered, written behind the store's back.
fn hide_failed_record(dir: &Path, record_id: &str) {
    raw(dir)
        .execute(
            "INSERT INTO failed_records (destination_id, record_id, record_json, outcome, http_status,
                 response_headers, response_body, error, attempts, first_failure_ms, last_failure_ms,
                 maybe_delivered, record_encoding)
             VALUES ('a', ?1, x'7b7d', 'failed', 0, '[]', x'', 'reset', 1, 1, 1, 1, 'raw_json')",
            [record_id],
        )
        .unwrap();
}

/// Clears the failed records, lets a check find none (the destination is free again), then hides a failed
/// record that may have been delivered, which a check no longer sees.
async fn free_again_with_a_hidden_failure(store: &Arc<dyn Store>, dir: &Path) {
    raw(dir).execute("DELETE FROM failed_records", []).unwrap();
    assert_eq!(states(store, &["fresh"]).await, []);
    hide_failed_record(dir, "hidden");
    assert_eq!(states(store, &["hidden"]).await, []);
}

fn maybe_delivered(record_id: &str) -> (String, &'static str) {
    (record_id.to_string(), "maybe delivered")
}

#[tokio::test]
async fn duplicate_checks_read_nothing_for_a_destination_known_to_have_no_failed_records() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = sqlite_with_destination(dir.path()).await;
    let store: Arc<dyn Store> = sqlite.clone();
    record(&store, batch("a", numbered("r", 0..3), 1)).await;
    assert!(sqlite.build_delivered_filter_now().await);

    // The first check reads, and finds no failed records: from then on the destination is known to have none.
    assert_eq!(states(&store, &["fresh"]).await, []);
    hide_failed_record(dir.path(), "hidden");
    assert_eq!(
        states(&store, &["hidden", "fresh"]).await,
        [],
        "proof that the check did not read: a row written behind the store's back is not seen"
    );
    // An id the filter may hold is still looked up, and the failed records with it.
    assert_eq!(
        states(&store, &["hidden", "r1"]).await,
        [maybe_delivered("hidden"), ("r1".to_string(), "delivered")]
    );

    // Failed records stored by the store itself end it at once.
    free_again_with_a_hidden_failure(&store, dir.path()).await;
    let mut failure = crate::store::conformance::records::failed("a", "reset", 2);
    failure.maybe_delivered = true;
    store.record_outcomes(vec![], vec![failure]).await.unwrap();
    assert_eq!(
        states(&store, &["hidden", "reset", "fresh"]).await,
        [maybe_delivered("hidden"), maybe_delivered("reset")]
    );

    // So do the failed records an orphaned claim becomes.
    free_again_with_a_hidden_failure(&store, dir.path()).await;
    store
        .claim_records(vec![crate::store::RecordClaim {
            destination_id: "a".to_string(),
            records: vec![crate::store::ClaimedRecord {
                record_id: "orphan".to_string(),
                record_json: b"{}".to_vec(),
                record_encoding: crate::domain::record::RecordEncoding::RawJson,
            }],
            request_method: "POST".to_string(),
            request_url: "https://api.groovehq.com/v1/tickets".to_string(),
            claimed_at_ms: 3,
            repeatable: false,
        }])
        .await
        .unwrap();
    assert_eq!(store.fail_orphaned_claims("stopped", 4).await.unwrap(), 1);
    assert_eq!(
        states(&store, &["hidden", "orphan"]).await,
        [maybe_delivered("hidden"), maybe_delivered("orphan")]
    );
}

#[test]
fn ids_survive_encoding_and_cut_lists_are_refused() {
    let ids = ["r1", "", "ünïcödé", "a-much-longer-record-id-0123456789"];
    let encoded = encode_ids(ids.iter().copied());
    assert_eq!(decode_ids(&encoded).unwrap(), ids);
    assert_eq!(decode_ids(&[]).unwrap(), Vec::<String>::new());
    for cut in 1..encoded.len() {
        if let Some(decoded) = decode_ids(&encoded[..cut]) {
            // Only a cut at an id's end reads, and then as the ids before it.
            assert_eq!(decoded, ids[..decoded.len()], "cut at {cut}");
        }
    }
    assert!(decode_ids(&[0, 0, 0, 2, b'a']).is_none());
    assert!(decode_ids(&[0, 0, 0, 1, 0xff]).is_none());
}

#[test]
fn the_migration_turns_each_entry_into_a_group_of_its_own() {
    let mut conn = rusqlite::Connection::open_in_memory().unwrap();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    super::super::migrations::migrate_to(&mut conn, 4).unwrap();
    conn.execute_batch(
        "INSERT INTO credentials (id, display_name, api_key_hint, api_key_sealed, create_time_ms,
             update_time_ms) VALUES ('main', '', '', x'00', 0, 0);
         INSERT INTO destinations (id, display_name, credential_id, state, config_json, revision,
             create_time_ms, update_time_ms) VALUES ('a', '', 'main', 'active', '{}', 1, 0, 0);",
    )
    .unwrap();
    let ids = ["r1", "", "ünïcödé"];
    for (at_ms, id) in ids.iter().enumerate() {
        conn.execute(
            "INSERT INTO delivered_records VALUES ('a', ?1, 201, x'7b7d', 1, ?2)",
            rusqlite::params![id, at_ms as i64],
        )
        .unwrap();
    }
    super::super::migrations::migrate(&mut conn).unwrap();

    let wanted: Vec<String> = ids.iter().map(|id| id.to_string()).collect();
    let found = lookup(&conn, "a", &wanted).unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(found["ünïcödé"].delivered_at_ms, 2);
    assert_eq!(found[""].response_body, b"{}");
    let groups: i64 = conn
        .query_row(
            "SELECT count(*) FROM delivered_groups WHERE record_count = 1",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert_eq!(groups, 3);
    // Retention reads the migrated id lists.
    let bound = prune_bound(&conn, "a", i64::MAX, u64::MAX)
        .unwrap()
        .unwrap();
    assert_eq!(prune_through(&conn, "a", bound, 10).unwrap().removed, 3);
}

#[test]
fn a_group_s_keys_take_a_statement_per_bit_of_its_size_and_are_never_padded() {
    for size in [1, 3, 16, 200, 511, 512, 1000, 1537] {
        let mut statements = Vec::new();
        let mut remaining = size;
        while remaining > 0 {
            let rows = key_rows(remaining);
            statements.push(rows);
            remaining -= rows;
        }
        assert_eq!(statements.iter().sum::<usize>(), size, "{statements:?}");
        assert!(statements
            .iter()
            .all(|&rows| rows.is_power_of_two() && rows <= MOST_KEY_ROWS));
        let bits = (size % MOST_KEY_ROWS).count_ones() as usize;
        assert_eq!(statements.len(), size / MOST_KEY_ROWS + bits, "{size}");
        assert!(statements
            .iter()
            .all(|&rows| matches!(insert_keys_sql(rows), Cow::Borrowed(_))));
    }
}
