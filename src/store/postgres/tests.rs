//! What only the PostgreSQL store has: migrations shared by replicas starting together, the secret key check
//! across replicas, and group commits that keep each call's order. The `Store` behaviour itself is tested in
//! `store::conformance`, on both backends.

use std::sync::Arc;

use test_postgres::TestDatabase;

use super::*;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::conformance::crud::{destination, new_credential, KEY};

const SECRET: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn secrets() -> SecretBox {
    SecretBox::from_encoded(SECRET).unwrap()
}

async fn raw(database: &TestDatabase) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once() {
    let database = TestDatabase::create().await;
    let opening: Vec<_> = (0..4)
        .map(|_| {
            let url = database.url().to_string();
            tokio::spawn(async move { PostgresStore::open(&url, secrets()).await })
        })
        .collect();
    let mut stores = Vec::new();
    for store in opening {
        stores.push(store.await.unwrap().expect("every replica opens"));
    }
    let applied: Vec<(i32, String)> = raw(&database)
        .await
        .query(
            "SELECT version, name FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let expected: Vec<(i32, String)> = migrations::MIGRATIONS
        .iter()
        .map(|(version, name, _)| (*version, name.to_string()))
        .collect();
    assert_eq!(applied, expected);

    // What one replica writes, another reads.
    stores[0]
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    assert_eq!(
        stores[3].credential_api_key("main").await.unwrap().expose(),
        format!("{KEY}-main")
    );
}

#[tokio::test]
async fn a_database_from_a_newer_build_is_refused() {
    let database = TestDatabase::create().await;
    drop(
        PostgresStore::open(database.url(), secrets())
            .await
            .unwrap(),
    );
    raw(&database)
        .await
        .execute(
            "INSERT INTO schema_migrations (version, name) VALUES (9999, '9999_future')",
            &[],
        )
        .await
        .unwrap();
    let err = PostgresStore::open(database.url(), secrets())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("newer build"), "{err}");
}

#[tokio::test]
async fn a_replica_with_another_secret_key_is_refused_even_before_credentials_exist() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::open(database.url(), secrets())
        .await
        .unwrap();
    let err = PostgresStore::open(database.url(), SecretBox::generate().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::SecretKey { .. }), "{err:?}");
    assert!(err.to_string().contains("every replica"), "{err}");
    // The same key is welcome, however many replicas have it.
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let second = PostgresStore::open(database.url(), secrets())
        .await
        .unwrap();
    assert_eq!(
        second.credential_api_key("main").await.unwrap().expose(),
        format!("{KEY}-main")
    );
}

#[tokio::test]
async fn api_keys_are_sealed_before_they_reach_the_database() {
    let database = TestDatabase::create().await;
    let store = PostgresStore::open(database.url(), secrets())
        .await
        .unwrap();
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    let sealed: Vec<u8> = raw(&database)
        .await
        .query_one(
            "SELECT api_key_sealed FROM credentials WHERE id = 'main'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let key = format!("{KEY}-main");
    assert!(!sealed
        .windows(key.len())
        .any(|window| window == key.as_bytes()));
    // A ciphertext moved to another row does not open there.
    let client = raw(&database).await;
    client
        .execute(
            "INSERT INTO credentials (id, display_name, api_key_hint, api_key_sealed, create_time_ms,
                 update_time_ms)
             VALUES ('copy', 'copy', '****', $1, 0, 0)",
            &[&sealed],
        )
        .await
        .unwrap();
    assert!(matches!(
        store.credential_api_key("copy").await,
        Err(StoreError::Decrypt { .. })
    ));
}

fn failure(record_id: &str, attempts: u32, maybe_delivered: bool) -> FailedRecordEntry {
    FailedRecordEntry {
        destination_id: "a".to_string(),
        record_id: record_id.to_string(),
        record_json: b"{}".to_vec(),
        outcome: Outcome::Failed,
        request: None,
        http_status: 503,
        response_headers: Vec::new(),
        response_body: Vec::new(),
        error: "unavailable".to_string(),
        maybe_delivered,
        record_encoding: RecordEncoding::Struct,
        attempts,
        first_failure_ms: 10,
        last_failure_ms: 10,
    }
}

fn delivery(record_id: &str, status: u16) -> LedgerEntry {
    LedgerEntry {
        destination_id: "a".into(),
        record_id: record_id.to_string(),
        http_status: status,
        response_body: Vec::new(),
        attempts: 1,
        delivered_at_ms: 20,
    }
}

/// Calls queued together share a commit, yet end as if each had its own transaction, in the order they were
/// made: a record failing in several calls adds their attempts up, one failing and then delivered is only
/// delivered, and a record named twice in one call is written twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_commits_keep_the_order_of_calls() {
    let database = TestDatabase::create().await;
    let store = Arc::new(
        PostgresStore::open(database.url(), secrets())
            .await
            .unwrap(),
    );
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    store
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    // Many calls at once, so that they queue behind each other's commits.
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .record_outcomes(vec![], vec![failure("f", 1, i == 7)])
                    .await
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap().unwrap();
    }
    store
        .record_outcomes(vec![], vec![failure("g", 2, false), failure("g", 3, false)])
        .await
        .unwrap();
    let (fail_then_deliver, deliver_twice) = tokio::join!(
        async {
            store
                .record_outcomes(vec![], vec![failure("d", 1, true)])
                .await
                .unwrap();
            store
                .record_outcomes(vec![delivery("d", 201)], vec![])
                .await
        },
        store.record_outcomes(vec![delivery("e", 500), delivery("e", 201)], vec![]),
    );
    fail_then_deliver.unwrap();
    deliver_twice.unwrap();

    let failed = store
        .get_failed_records("a", vec!["f".into(), "g".into(), "d".into()])
        .await
        .unwrap();
    let attempts: Vec<(&str, u32, bool)> = failed
        .iter()
        .map(|entry| {
            (
                entry.record_id.as_str(),
                entry.attempts,
                entry.maybe_delivered,
            )
        })
        .collect();
    assert_eq!(attempts, [("f", 50, true), ("g", 5, false)]);
    let states = store
        .record_states("a", vec!["d".into(), "e".into()])
        .await
        .unwrap();
    assert!(matches!(&states["d"], RecordState::Delivered(entry) if entry.http_status == 201));
    assert!(matches!(&states["e"], RecordState::Delivered(entry) if entry.http_status == 201));
}

/// A destination deleted while its records were in flight: their outcomes are skipped, the others' stored,
/// also when the delete lands between the check that skips rows and the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_racing_a_destination_delete_are_skipped_not_failed() {
    let database = TestDatabase::create().await;
    let store = Arc::new(
        PostgresStore::open(database.url(), secrets())
            .await
            .unwrap(),
    );
    store
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    for id in ["a", "b"] {
        store
            .create_destination(destination(id, "main"))
            .await
            .unwrap();
    }
    let writers: Vec<_> = (0..20)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut in_b = delivery(&format!("r{i}"), 201);
                in_b.destination_id = "b".into();
                store
                    .record_outcomes(vec![delivery(&format!("r{i}"), 201), in_b], vec![])
                    .await
            })
        })
        .collect();
    store.delete_destination("a", None).await.unwrap();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let ids: Vec<String> = (0..20).map(|i| format!("r{i}")).collect();
    assert_eq!(store.record_states("b", ids).await.unwrap().len(), 20);
}

fn create_claim(record_id: &str) -> RecordClaim {
    RecordClaim {
        destination_id: "a".to_string(),
        records: vec![crate::store::ClaimedRecord {
            record_id: record_id.to_string(),
            record_json: b"{}".to_vec(),
            record_encoding: RecordEncoding::RawJson,
        }],
        request_method: "POST".to_string(),
        request_url: "https://api.groovehq.com/v1/tickets".to_string(),
        claimed_at_ms: 5,
        repeatable: false,
    }
}

const NO_RENEWAL: ReplicaOptions = ReplicaOptions {
    lease: std::time::Duration::from_secs(3600),
    heartbeat: std::time::Duration::from_secs(3600),
};

/// Two replicas: what one has claimed is in flight there, not an orphan for the other, until its lease runs
/// out; then it becomes an ambiguous failure. A replica never takes its own claims for orphans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_of_a_live_replica_are_left_to_it_until_its_lease_runs_out() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    let second = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    assert_ne!(first.replica_id(), second.replica_id());
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    first.claim_records(vec![create_claim("r1")]).await.unwrap();
    second
        .claim_records(vec![create_claim("r2")])
        .await
        .unwrap();

    assert_eq!(second.fail_orphaned_claims("stopped", 10).await.unwrap(), 0);
    assert_eq!(first.fail_orphaned_claims("stopped", 10).await.unwrap(), 0);
    // Each sees the other's claim as in flight elsewhere, and its own as nothing recorded yet.
    let asked = || vec!["r1".to_string(), "r2".to_string()];
    let seen_by_second = second.record_states("a", asked()).await.unwrap();
    assert_eq!(
        seen_by_second.into_iter().collect::<Vec<_>>(),
        [("r1".to_string(), RecordState::ClaimedElsewhere)]
    );
    let seen_by_first = first.record_states("a", asked()).await.unwrap();
    assert_eq!(
        seen_by_first.into_iter().collect::<Vec<_>>(),
        [("r2".to_string(), RecordState::ClaimedElsewhere)]
    );

    raw(&database)
        .await
        .execute(
            "UPDATE replicas SET lease_until = now() - interval '1 second' WHERE id = $1",
            &[&first.replica_id()],
        )
        .await
        .unwrap();
    // Lapsed but not yet settled: still not to be sent, or the other replica could send it a second time.
    assert_eq!(
        second.record_states("a", vec!["r1".into()]).await.unwrap()["r1"],
        RecordState::ClaimedElsewhere
    );
    assert_eq!(second.fail_orphaned_claims("stopped", 10).await.unwrap(), 1);
    let failed = second
        .get_failed_records("a", vec!["r1".into(), "r2".into()])
        .await
        .unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].record_id, "r1");
    assert!(failed[0].maybe_delivered);
    assert_eq!(
        second.record_states("a", vec!["r1".into()]).await.unwrap()["r1"],
        RecordState::MaybeDelivered
    );
}

/// The heartbeat keeps a replica's lease alive while its store lives, and stops with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_keeps_the_lease_until_the_store_is_dropped() {
    let database = TestDatabase::create().await;
    let short = ReplicaOptions {
        lease: std::time::Duration::from_millis(1500),
        heartbeat: std::time::Duration::from_millis(100),
    };
    let first = PostgresStore::open_with(database.url(), secrets(), short)
        .await
        .unwrap();
    let second = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    first.claim_records(vec![create_claim("r1")]).await.unwrap();
    // Longer than the lease: only renewals keep it.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(second.fail_orphaned_claims("stopped", 10).await.unwrap(), 0);

    drop(first);
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(second.fail_orphaned_claims("stopped", 10).await.unwrap(), 1);
}

fn update_claim(record_id: &str) -> RecordClaim {
    RecordClaim {
        request_method: "PUT".to_string(),
        repeatable: true,
        ..create_claim(record_id)
    }
}

async fn owners(database: &TestDatabase) -> Vec<(String, String, i64)> {
    raw(database)
        .await
        .query(
            "SELECT record_id, owner, claimed_at_ms FROM record_claims ORDER BY record_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect()
}

/// A claim another replica holds is refused, whatever the method, and left as it was; a replica's own claim
/// with the same key is replaced. Refusals are told by position among the claims of one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_held_by_another_replica_is_refused_and_an_own_one_replaced() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    let second = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    assert!(first.claims_repeatable_calls());
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    let refused = first
        .claim_records(vec![create_claim("r1"), update_claim("r2")])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");

    let later = |claim: RecordClaim| RecordClaim {
        claimed_at_ms: 9,
        ..claim
    };
    let refused = second
        .claim_records(vec![
            later(create_claim("r3")),
            later(create_claim("r1")),
            later(update_claim("r2")),
            // Of a destination that does not exist: skipped, not refused.
            RecordClaim {
                destination_id: "gone".to_string(),
                ..create_claim("r4")
            },
        ])
        .await
        .unwrap();
    assert_eq!(refused, [1, 2]);
    let first_id = first.replica_id().to_string();
    let second_id = second.replica_id().to_string();
    assert_eq!(
        owners(&database).await,
        [
            ("r1".to_string(), first_id.clone(), 5),
            ("r2".to_string(), first_id.clone(), 5),
            ("r3".to_string(), second_id, 9),
        ]
    );

    let refused = first
        .claim_records(vec![later(create_claim("r1"))])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(owners(&database).await[0], ("r1".to_string(), first_id, 9));

    // Letting go of a record it was refused leaves the holder's claim in place.
    second
        .release_claims(vec![("a".to_string(), "r1".to_string())])
        .await
        .unwrap();
    assert_eq!(owners(&database).await.len(), 3);
    // Once the holder has ended it, the key is free for the other.
    first
        .release_claims(vec![("a".to_string(), "r1".to_string())])
        .await
        .unwrap();
    let refused = second
        .claim_records(vec![create_claim("r1")])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
}

/// Two replicas claiming the same records at the same moment: each record is taken by exactly one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_claiming_at_once_take_each_record_once() {
    let database = TestDatabase::create().await;
    let first = Arc::new(
        PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
            .await
            .unwrap(),
    );
    let second = Arc::new(
        PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
            .await
            .unwrap(),
    );
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    for round in 0..20 {
        let claims = || {
            (0..10)
                .map(|index| create_claim(&format!("r{round}-{index}")))
                .collect::<Vec<_>>()
        };
        let (a, b) = tokio::join!(
            tokio::spawn({
                let store = first.clone();
                let claims = claims();
                async move { store.claim_records(claims).await.unwrap() }
            }),
            tokio::spawn({
                let store = second.clone();
                let claims = claims();
                async move { store.claim_records(claims).await.unwrap() }
            }),
        );
        let (a, b) = (a.unwrap(), b.unwrap());
        for index in 0..10 {
            assert!(
                a.contains(&index) != b.contains(&index),
                "round {round}, claim {index}: refused by first {a:?}, by second {b:?}"
            );
        }
    }
}

/// A stopped replica's claim on an idempotent call is let go by the orphan sweep (sending it again is safe),
/// while its claim on a create becomes a failed record that may have been delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_idempotent_claim_is_released_and_a_create_becomes_maybe_delivered() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    let second = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    first
        .claim_records(vec![create_claim("created"), update_claim("updated")])
        .await
        .unwrap();
    let asked = || vec!["created".to_string(), "updated".to_string()];
    assert_eq!(second.record_states("a", asked()).await.unwrap().len(), 2);

    raw(&database)
        .await
        .execute(
            "UPDATE replicas SET lease_until = now() - interval '1 second' WHERE id = $1",
            &[&first.replica_id()],
        )
        .await
        .unwrap();
    assert_eq!(second.fail_orphaned_claims("stopped", 10).await.unwrap(), 1);
    assert!(owners(&database).await.is_empty());
    let failed = second.get_failed_records("a", asked()).await.unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].record_id, "created");
    assert!(failed[0].maybe_delivered);
    let states = second.record_states("a", asked()).await.unwrap();
    assert_eq!(
        states.into_iter().collect::<Vec<_>>(),
        [("created".to_string(), RecordState::MaybeDelivered)]
    );
    // The update is free to be sent again.
    let refused = second
        .claim_records(vec![update_claim("updated")])
        .await
        .unwrap();
    assert!(refused.is_empty(), "{refused:?}");
}

/// A record another replica delivered after this one looked it up is not claimed: its claim is refused, so
/// the record is looked up again and answered from the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_on_a_record_delivered_meanwhile_is_refused() {
    let database = TestDatabase::create().await;
    let first = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    let second = PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
        .await
        .unwrap();
    first
        .create_credential(new_credential("main"))
        .await
        .unwrap();
    first
        .create_destination(destination("a", "main"))
        .await
        .unwrap();
    first.claim_records(vec![create_claim("r1")]).await.unwrap();
    let delivered = LedgerEntry {
        destination_id: "a".into(),
        record_id: "r1".to_string(),
        http_status: 201,
        response_body: b"{}".to_vec(),
        attempts: 1,
        delivered_at_ms: 7,
    };
    first
        .record_outcomes(vec![delivered], Vec::new())
        .await
        .unwrap();
    assert!(owners(&database).await.is_empty());

    let refused = second
        .claim_records(vec![create_claim("r2"), create_claim("r1")])
        .await
        .unwrap();
    assert_eq!(refused, [1]);
    let claimed: Vec<String> = owners(&database)
        .await
        .into_iter()
        .map(|(record_id, _, _)| record_id)
        .collect();
    assert_eq!(claimed, ["r2"]);
}

/// The call lines of two replicas on one database.
async fn two_pace_books(database: &TestDatabase) -> (PgPaceBook, PgPaceBook) {
    let open = || async {
        PostgresStore::open_with(database.url(), secrets(), NO_RENEWAL)
            .await
            .unwrap()
            .pace_book()
    };
    (open().await, open().await)
}

/// The call line hands out slots one gap apart to every replica, in the database's time, per credential; a
/// line left idle starts again at now rather than owing the slots it did not use.
#[tokio::test]
async fn replicas_take_slots_one_gap_apart_from_one_line() {
    use crate::store::PaceBook;

    let database = TestDatabase::create().await;
    let (first, second) = two_pace_books(&database).await;
    let gap = Duration::from_millis(200);
    let waits = [
        first.reserve("k1", gap).await.unwrap(),
        second.reserve("k1", gap).await.unwrap(),
        first.reserve("k1", gap).await.unwrap(),
    ];
    // Each wait is its slot less the time the earlier reservations took.
    assert!(waits[0] < Duration::from_millis(1), "{waits:?}");
    assert!(waits[1] > gap / 2 && waits[1] <= gap, "{waits:?}");
    assert!(waits[2] > gap && waits[2] <= gap * 2, "{waits:?}");
    assert!(
        second.reserve("k2", gap).await.unwrap() < Duration::from_millis(1),
        "another credential has a line of its own"
    );

    tokio::time::sleep(gap * 3).await;
    assert!(
        first.reserve("k1", gap).await.unwrap() < Duration::from_millis(1),
        "an idle line owes nothing"
    );
}

/// First calls that left without a slot push the next slot one gap back each, while they are recent; one
/// noted longer than the memory after the line's latest slot or note is forgotten by the next note.
#[tokio::test]
async fn unspaced_calls_are_charged_to_the_next_slot() {
    use crate::store::{PaceBook, UNSPACED_MEMORY};

    let database = TestDatabase::create().await;
    let (first, second) = two_pace_books(&database).await;
    let gap = Duration::from_millis(200);
    for book in [&first, &second, &first] {
        book.note_unspaced("k1").await.unwrap();
    }
    let wait = second.reserve("k1", gap).await.unwrap();
    assert!(wait > gap * 5 / 2 && wait <= gap * 3, "{wait:?}");
    let wait = first.reserve("k1", gap).await.unwrap();
    assert!(wait > gap * 7 / 2 && wait <= gap * 4, "{wait:?}");

    // Past the memory after the line's latest slot, and again after the next note: that note is forgotten.
    tokio::time::sleep(gap * 6 + UNSPACED_MEMORY).await;
    first.note_unspaced("k1").await.unwrap();
    tokio::time::sleep(UNSPACED_MEMORY + gap / 2).await;
    second.note_unspaced("k1").await.unwrap();
    let wait = first.reserve("k1", gap).await.unwrap();
    assert!(wait > gap / 2 && wait <= gap, "{wait:?}");
}
