//! The delivery ledger and failed records, through the `Store` trait.

use std::sync::Arc;
use std::time::Instant;

use super::crud::{destination, new_credential};
use super::*;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::{StoredRequest, LEDGER_BODY_CAP};

/// The delivered part of `record_states`: what most of these tests are about.
pub(in crate::store) trait LedgerLookup {
    fn ledger_lookup<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<HashMap<String, LedgerEntry>, StoreError>>;
}

impl LedgerLookup for Arc<dyn Store> {
    fn ledger_lookup<'a>(
        &'a self,
        destination_id: &'a str,
        record_ids: Vec<String>,
    ) -> BoxFuture<'a, Result<HashMap<String, LedgerEntry>, StoreError>> {
        Box::pin(async move {
            let states = self.record_states(destination_id, record_ids).await?;
            Ok(states
                .into_iter()
                .filter_map(|(record_id, state)| match state {
                    RecordState::Delivered(entry) => Some((record_id, entry)),
                    RecordState::MaybeDelivered | RecordState::ClaimedElsewhere => None,
                })
                .collect())
        })
    }
}

/// A store with credential `main` and destinations `a` and `b`.
pub(in crate::store) async fn store_with_destinations(h: &Harness) -> Arc<dyn Store> {
    let store = h.store();
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
    store
}

pub(in crate::store) fn delivered(
    destination_id: &str,
    record_id: &str,
    delivered_at_ms: i64,
) -> LedgerEntry {
    LedgerEntry {
        destination_id: destination_id.into(),
        record_id: record_id.to_string(),
        http_status: 201,
        response_body: format!(r#"{{"ticket":{{"number":"{record_id}"}}}}"#).into_bytes(),
        attempts: 1,
        delivered_at_ms,
    }
}

pub(in crate::store) fn failed(
    destination_id: &str,
    record_id: &str,
    at_ms: i64,
) -> FailedRecordEntry {
    FailedRecordEntry {
        destination_id: destination_id.to_string(),
        record_id: record_id.to_string(),
        record_json: format!(r#"{{"id":"{record_id}"}}"#).into_bytes(),
        outcome: Outcome::Failed,
        request: None,
        http_status: 0,
        response_headers: Vec::new(),
        response_body: Vec::new(),
        error: "connection refused".to_string(),
        maybe_delivered: false,
        record_encoding: RecordEncoding::RawJson,
        attempts: 3,
        first_failure_ms: at_ms,
        last_failure_ms: at_ms,
    }
}

pub(in crate::store) fn ids(ids: &[&str]) -> Vec<String> {
    ids.iter().map(|id| id.to_string()).collect()
}

/// Ids of the destination's oldest failed records, as "retry all" finds them.
async fn oldest_ids(store: &dyn Store, destination_id: &str, limit: u32) -> Vec<String> {
    store
        .failed_record_sizes(destination_id, FailedRecordSelection::All, limit)
        .await
        .unwrap()
        .into_iter()
        .map(|size| size.record_id)
        .collect()
}

async fn all_failed_ids(store: &dyn Store, destination_id: &str, page_size: u32) -> Vec<String> {
    let mut seen = Vec::new();
    let mut request = Some(PageRequest::first(page_size));
    while let Some(current) = request {
        let page = store
            .list_failed_records(
                destination_id,
                FailedRecordFilter::default(),
                current,
                u64::MAX,
            )
            .await
            .unwrap();
        assert!(page.items.len() <= PageRequest::first(page_size).effective_page_size() as usize);
        seen.extend(page.items.iter().map(|entry| entry.record_id.clone()));
        request = PageRequest::next(page_size, &page);
    }
    seen
}

pub(super) async fn a_recorded_delivery_is_found_as_a_duplicate(h: Harness) {
    let store = store_with_destinations(&h).await;
    let mut long = delivered("a", "r2", 1_001);
    long.response_body = vec![b'x'; LEDGER_BODY_CAP + 500];
    store
        .record_outcomes(vec![delivered("a", "r1", 1_000), long], vec![])
        .await
        .unwrap();

    let found = store
        .ledger_lookup("a", ids(&["r1", "r2", "never-sent"]))
        .await
        .unwrap();
    assert_eq!(found.len(), 2);
    assert_eq!(found["r1"], delivered("a", "r1", 1_000));
    assert_eq!(found["r2"].response_body.len(), LEDGER_BODY_CAP);
    // Ledgers are per destination, and an unknown destination has delivered nothing.
    assert!(store
        .ledger_lookup("b", ids(&["r1"]))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .ledger_lookup("ghost", ids(&["r1"]))
        .await
        .unwrap()
        .is_empty());
    assert!(store.ledger_lookup("a", vec![]).await.unwrap().is_empty());
}

pub(super) async fn lookups_of_more_ids_than_one_statement_binds_find_them_all(h: Harness) {
    let store = store_with_destinations(&h).await;
    let entries: Vec<LedgerEntry> = (0..1500)
        .map(|i| delivered("a", &format!("r{i:04}"), i))
        .collect();
    store.record_outcomes(entries, vec![]).await.unwrap();

    // Every other id was delivered; the rest were not.
    let asked: Vec<String> = (0..3000).map(|i| format!("r{:04}", i / 2)).collect();
    let mut asked_with_unknown = asked.clone();
    asked_with_unknown.extend((0..10).map(|i| format!("unknown{i}")));
    let found = store.ledger_lookup("a", asked_with_unknown).await.unwrap();
    assert_eq!(found.len(), 1500);
    assert_eq!(found["r1499"].delivered_at_ms, 1499);
}

pub(super) async fn recording_again_replaces_the_ledger_entry(h: Harness) {
    let store = store_with_destinations(&h).await;
    store
        .record_outcomes(vec![delivered("a", "r1", 1_000)], vec![])
        .await
        .unwrap();
    let mut again = delivered("a", "r1", 2_000);
    again.http_status = 200;
    store
        .record_outcomes(vec![again.clone()], vec![])
        .await
        .unwrap();
    let found = store.ledger_lookup("a", ids(&["r1"])).await.unwrap();
    assert_eq!(found["r1"], again);
}

pub(super) async fn prune_removes_entries_older_than_the_cutoff(h: Harness) {
    let store = store_with_destinations(&h).await;
    let entries = (0..10)
        .flat_map(|i| {
            [
                delivered("a", &format!("r{i}"), i * 100),
                delivered("b", &format!("r{i}"), i * 100),
            ]
        })
        .collect();
    store.record_outcomes(entries, vec![]).await.unwrap();

    let removed = store.ledger_prune(500, u64::MAX).await.unwrap();
    assert_eq!(removed, 10);
    for destination_id in ["a", "b"] {
        let all: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
        let mut kept: Vec<String> = store
            .ledger_lookup(destination_id, all)
            .await
            .unwrap()
            .into_keys()
            .collect();
        kept.sort();
        assert_eq!(kept, ids(&["r5", "r6", "r7", "r8", "r9"]));
    }
    assert_eq!(store.ledger_prune(500, u64::MAX).await.unwrap(), 0);
    // i64::MIN turns the age rule off.
    assert_eq!(store.ledger_prune(i64::MIN, u64::MAX).await.unwrap(), 0);
}

pub(super) async fn prune_keeps_the_most_recent_entries_of_each_destination(h: Harness) {
    let store = store_with_destinations(&h).await;
    // Entries of `a` come in pairs delivered in the same millisecond with the same answer, as a batch's records
    // are: a store may keep such entries together, so the limits below fall between pairs.
    let mut entries: Vec<LedgerEntry> = (0..20)
        .map(|i| delivered("a", &format!("r{i:02}"), i / 2))
        .collect();
    entries.extend((0..3).map(|i| delivered("b", &format!("r{i}"), i)));
    store.record_outcomes(entries, vec![]).await.unwrap();

    let removed = store.ledger_prune(i64::MIN, 6).await.unwrap();
    assert_eq!(removed, 14);
    let all: Vec<String> = (0..20).map(|i| format!("r{i:02}")).collect();
    let mut kept: Vec<String> = store
        .ledger_lookup("a", all)
        .await
        .unwrap()
        .into_keys()
        .collect();
    kept.sort();
    assert_eq!(kept, ids(&["r14", "r15", "r16", "r17", "r18", "r19"]));
    assert_eq!(h.delivered_count("b").await, 3);

    // Both rules at once: an entry goes if either says so. For `a` the count rule reaches further (r14-r17),
    // for `b` the age rule (all of it).
    assert_eq!(store.ledger_prune(8, 2).await.unwrap(), 7);
    assert_eq!(h.delivered_count("a").await, 2);
    assert_eq!(h.delivered_count("b").await, 0);
}

pub(super) async fn prune_works_through_large_ledgers_in_steps(h: Harness) {
    let store = store_with_destinations(&h).await;
    let total = PRUNE_STEP as i64 * 2 + 7;
    let entries = (0..total)
        .map(|i| delivered("a", &format!("r{i}"), i))
        .collect();
    store.record_outcomes(entries, vec![]).await.unwrap();
    let removed = store.ledger_prune(i64::MIN, 0).await.unwrap();
    assert_eq!(removed, total as u64);
    assert_eq!(h.delivered_count("a").await, 0);
}

pub(super) async fn deleting_a_destination_deletes_its_ledger_and_failed_records(h: Harness) {
    let store = store_with_destinations(&h).await;
    for destination_id in ["a", "b"] {
        store
            .record_outcomes(
                vec![delivered(destination_id, "ok", 1)],
                vec![failed(destination_id, "bad", 1)],
            )
            .await
            .unwrap();
    }
    store.delete_destination("a", None).await.unwrap();

    assert_eq!(h.delivered_count("a").await, 0);
    assert_eq!(h.delivered_count("b").await, 1);
    assert_eq!(h.count("failed_records", "a").await, 0);
    assert_eq!(h.count("failed_records", "b").await, 1);
    // A destination deleted while its records were in flight: their outcomes have nowhere to go, and must not
    // take the outcomes of other destinations in the same batch down with them.
    store
        .record_outcomes(
            vec![delivered("a", "late", 2), delivered("b", "ok2", 2)],
            vec![failed("a", "late-bad", 2), failed("b", "bad2", 2)],
        )
        .await
        .unwrap();
    assert_eq!(h.delivered_count("a").await, 0);
    assert_eq!(h.delivered_count("b").await, 2);
    assert_eq!(h.count("failed_records", "a").await, 0);
    assert_eq!(h.count("failed_records", "b").await, 2);
    assert!(matches!(
        store
            .list_failed_records(
                "a",
                FailedRecordFilter::default(),
                PageRequest::default(),
                u64::MAX,
            )
            .await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        store
            .failed_record_sizes("a", FailedRecordSelection::All, 10)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(super) async fn failing_again_adds_attempts_and_keeps_the_first_failure_time(h: Harness) {
    let store = store_with_destinations(&h).await;
    store
        .record_outcomes(vec![], vec![failed("a", "r1", 1_000)])
        .await
        .unwrap();
    let second = FailedRecordEntry {
        outcome: Outcome::Rejected,
        request: Some(StoredRequest {
            method: "POST".to_string(),
            url: "https://api.groovehq.com/v1/tickets".to_string(),
            headers: vec![
                ("authorization".to_string(), "Bearer ****".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
            ],
            body: br#"{"body":"hi"}"#.to_vec(),
        }),
        http_status: 422,
        response_headers: vec![("x-ratelimit-remaining".to_string(), "99".to_string())],
        response_body: br#"{"errors":["to is missing"]}"#.to_vec(),
        error: "groove rejected the ticket".to_string(),
        attempts: 1,
        ..failed("a", "r1", 5_000)
    };
    store
        .record_outcomes(vec![], vec![second.clone()])
        .await
        .unwrap();

    let stored = store.get_failed_records("a", ids(&["r1"])).await.unwrap();
    let expected = FailedRecordEntry {
        attempts: 4,
        first_failure_ms: 1_000,
        ..second
    };
    assert_eq!(stored, [expected]);
}

pub(super) async fn attempts_saturate_instead_of_overflowing(h: Harness) {
    let store = store_with_destinations(&h).await;
    let many = FailedRecordEntry {
        attempts: u32::MAX - 1,
        ..failed("a", "r1", 1)
    };
    for _ in 0..2 {
        store
            .record_outcomes(vec![], vec![many.clone()])
            .await
            .unwrap();
    }
    let stored = store.get_failed_records("a", ids(&["r1"])).await.unwrap();
    assert_eq!(stored[0].attempts, u32::MAX);
}

pub(super) async fn only_rejected_and_failed_records_are_kept(h: Harness) {
    let store = store_with_destinations(&h).await;
    for outcome in [Outcome::Delivered, Outcome::Invalid, Outcome::Duplicate] {
        let entry = FailedRecordEntry {
            outcome,
            ..failed("a", "r1", 1)
        };
        let err = store
            .record_outcomes(vec![], vec![entry])
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("is not kept as a failed record"),
            "{err}"
        );
    }
    assert_eq!(h.count("failed_records", "a").await, 0);
}

pub(super) async fn deliveries_of_several_destinations_in_one_group_resolve_only_their_own_failures(
    h: Harness,
) {
    let store = store_with_destinations(&h).await;
    store
        .record_outcomes(vec![], vec![failed("b", "r1", 1), failed("b", "r2", 1)])
        .await
        .unwrap();
    // "a" has no failures and comes first; "b"'s entries between its own must still be resolved.
    store
        .record_outcomes(
            vec![
                delivered("a", "r1", 5),
                delivered("b", "r1", 5),
                delivered("a", "r2", 5),
                delivered("b", "r2", 5),
            ],
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(oldest_ids(store.as_ref(), "b", 100).await, ids(&[]));
    assert_eq!(
        store
            .ledger_lookup("a", ids(&["r1", "r2"]))
            .await
            .unwrap()
            .len(),
        2
    );
}

pub(super) async fn delivering_a_failed_record_resolves_it(h: Harness) {
    let store = store_with_destinations(&h).await;
    store
        .record_outcomes(
            vec![],
            vec![
                failed("a", "r1", 1),
                failed("a", "r2", 2),
                failed("b", "r1", 1),
            ],
        )
        .await
        .unwrap();
    // A retry: r1 goes through in the same batch as r3 failing for the first time.
    store
        .record_outcomes(vec![delivered("a", "r1", 10)], vec![failed("a", "r3", 10)])
        .await
        .unwrap();

    assert_eq!(
        oldest_ids(store.as_ref(), "a", 100).await,
        ids(&["r2", "r3"])
    );
    assert_eq!(oldest_ids(store.as_ref(), "b", 100).await, ids(&["r1"]));
    assert!(store
        .ledger_lookup("a", ids(&["r1"]))
        .await
        .unwrap()
        .contains_key("r1"));
}

pub(super) async fn failed_records_page_oldest_first(h: Harness) {
    let store = store_with_destinations(&h).await;
    // Recorded out of order; "c" and "d" failed in the same millisecond, so the record id orders them.
    let times = [
        ("e", 500),
        ("d", 300),
        ("a", 900),
        ("c", 300),
        ("b", 100),
        ("g", -5),
        ("f", 700),
    ];
    let entries = times.iter().map(|(id, at)| failed("a", id, *at)).collect();
    store.record_outcomes(vec![], entries).await.unwrap();
    store
        .record_outcomes(vec![], vec![failed("b", "other", 0)])
        .await
        .unwrap();

    let expected = ids(&["g", "b", "c", "d", "e", "f", "a"]);
    assert_eq!(all_failed_ids(store.as_ref(), "a", 3).await, expected);
    assert_eq!(all_failed_ids(store.as_ref(), "a", 7).await, expected);
    assert_eq!(all_failed_ids(store.as_ref(), "a", 0).await, expected);
    assert_eq!(oldest_ids(store.as_ref(), "a", 3).await, expected[..3]);

    // A record resolved between pages does not disturb the next page.
    let first = store
        .list_failed_records(
            "a",
            FailedRecordFilter::default(),
            PageRequest::first(3),
            u64::MAX,
        )
        .await
        .unwrap();
    store
        .record_outcomes(vec![delivered("a", "c", 1_000)], vec![])
        .await
        .unwrap();
    let next = store
        .list_failed_records(
            "a",
            FailedRecordFilter::default(),
            PageRequest::next(3, &first).unwrap(),
            u64::MAX,
        )
        .await
        .unwrap();
    let next_ids: Vec<&str> = next.items.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(next_ids, ["d", "e", "f"]);

    // An empty destination lists nothing; garbage and other listings' tokens are refused.
    store
        .create_destination(destination("empty", "main"))
        .await
        .unwrap();
    let empty = store
        .list_failed_records(
            "empty",
            FailedRecordFilter::default(),
            PageRequest::default(),
            u64::MAX,
        )
        .await
        .unwrap();
    assert!(empty.items.is_empty() && empty.next_page_token.is_none());
    let destinations = store
        .list_destinations(PageRequest::first(1))
        .await
        .unwrap();
    for token in [
        "not a token!".to_string(),
        destinations.next_page_token.unwrap(),
    ] {
        let request = PageRequest {
            page_size: 3,
            after: Some(token),
        };
        assert!(matches!(
            store
                .list_failed_records("a", FailedRecordFilter::default(), request, u64::MAX)
                .await,
            Err(StoreError::InvalidPageToken)
        ));
    }
}

pub(super) async fn failed_records_are_fetched_by_id(h: Harness) {
    let store = store_with_destinations(&h).await;
    let entries = (0..600)
        .map(|i| failed("a", &format!("r{i:03}"), 600 - i))
        .collect();
    store.record_outcomes(vec![], entries).await.unwrap();

    // Asked for twice, across more ids than one statement binds, mixed with unknown ones.
    let mut asked = ids(&["r005", "nope", "r599", "r005"]);
    asked.extend((0..600).map(|i| format!("missing{i}")));
    let found = store.get_failed_records("a", asked).await.unwrap();
    let found_ids: Vec<&str> = found.iter().map(|e| e.record_id.as_str()).collect();
    assert_eq!(found_ids, ["r599", "r005"], "oldest first, each once");
    assert_eq!(found[1], failed("a", "r005", 595));

    assert!(store
        .get_failed_records("b", ids(&["r005"]))
        .await
        .unwrap()
        .is_empty());
    assert!(matches!(
        store.get_failed_records("ghost", ids(&["r005"])).await,
        Err(StoreError::NotFound { .. })
    ));
    assert_eq!(oldest_ids(store.as_ref(), "a", u32::MAX).await.len(), 600);
}

/// Many concurrent calls, as delivery workers make them: the writer folds them into few commits. Correctness
/// only; `ledger_throughput` measures.
pub(super) async fn a_hundred_thousand_entries_in_a_hundred_calls(h: Harness) {
    let store = store_with_destinations(&h).await;
    record_concurrently(&store, 100, 1000).await;
    assert_eq!(h.delivered_count("a").await, 100_000);
}

async fn record_concurrently(store: &Arc<dyn Store>, calls: usize, per_call: usize) {
    let tasks: Vec<_> = (0..calls)
        .map(|call| {
            let store = Arc::clone(store);
            let entries = (0..per_call)
                .map(|i| delivered("a", &format!("c{call}-r{i}"), (call * per_call + i) as i64))
                .collect();
            tokio::spawn(async move { store.record_outcomes(entries, vec![]).await })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
}

/// Prints ledger write and lookup rates: `cargo test --release --lib ledger_throughput -- --ignored --nocapture`.
pub(super) async fn ledger_throughput(h: Harness) {
    let store = store_with_destinations(&h).await;
    let (calls, per_call) = (1000, 100);
    let started = Instant::now();
    record_concurrently(&store, calls, per_call).await;
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "recorded {} entries in {calls} calls: {:.0} entries/s",
        calls * per_call,
        (calls * per_call) as f64 / elapsed
    );

    let started = Instant::now();
    for call in 0..calls {
        let asked = (0..per_call).map(|i| format!("c{call}-r{i}")).collect();
        let found = store.ledger_lookup("a", asked).await.unwrap();
        assert_eq!(found.len(), per_call);
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "looked up {calls} messages of {per_call} ids: {:.0} ids/s",
        (calls * per_call) as f64 / elapsed
    );
}

pub(super) async fn failed_record_pages_end_at_their_byte_bound_and_go_on_from_there(h: Harness) {
    let store = store_with_destinations(&h).await;
    // Sizes in KiB, oldest first; "big" alone is over the bound.
    let kib = [3, 3, 3, 12, 1, 1, 1, 1, 5];
    let names = ["a", "b", "c", "big", "d", "e", "f", "g", "h"];
    let entries = names
        .iter()
        .zip(kib)
        .enumerate()
        .map(|(index, (id, size))| {
            let mut entry = failed("a", id, index as i64);
            entry.record_json = vec![b'x'; size * 1024];
            entry
        })
        .collect();
    store.record_outcomes(vec![], entries).await.unwrap();

    let sizes = store
        .failed_record_sizes("a", FailedRecordSelection::All, 100)
        .await
        .unwrap();
    assert_eq!(
        sizes
            .iter()
            .map(|size| size.record_id.as_str())
            .collect::<Vec<_>>(),
        names
    );
    for (size, kib) in sizes.iter().zip(kib) {
        // The record, plus its id, error and headers columns.
        let record = kib as u64 * 1024;
        assert!((record..record + 100).contains(&size.bytes), "{size:?}");
    }

    let max_bytes = 8 * 1024;
    let mut pages = Vec::new();
    let mut request = Some(PageRequest::first(4));
    while let Some(current) = request {
        let page = store
            .list_failed_records("a", FailedRecordFilter::default(), current, max_bytes)
            .await
            .unwrap();
        pages.push(
            page.items
                .iter()
                .map(|entry| entry.record_id.clone())
                .collect::<Vec<_>>(),
        );
        request = PageRequest::next(4, &page);
    }
    assert_eq!(
        pages,
        [
            ids(&["a", "b"]),
            ids(&["c"]),
            ids(&["big"]),
            ids(&["d", "e", "f", "g"]),
            ids(&["h"]),
        ]
    );

    // The same sizes by id: those that exist, oldest first, at most `limit`.
    let asked = FailedRecordSelection::Ids(ids(&["h", "nope", "big", "a", "h"]));
    let found = store
        .failed_record_sizes("a", asked.clone(), 100)
        .await
        .unwrap();
    assert_eq!(
        found
            .iter()
            .map(|size| size.record_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "big", "h"]
    );
    assert_eq!(found[1], sizes[3]);
    assert_eq!(
        store
            .failed_record_sizes("a", asked, 2)
            .await
            .unwrap()
            .len(),
        2
    );
    assert!(matches!(
        store
            .failed_record_sizes("ghost", FailedRecordSelection::All, 10)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}
