//! Claims, record states and the failed-record controls, through the `Store` trait.

use super::records::{delivered, failed, ids, store_with_destinations};
use super::*;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::ClaimedRecord;

fn record(record_id: &str) -> ClaimedRecord {
    ClaimedRecord {
        record_id: record_id.to_string(),
        record_json: format!(r#"{{"id": "{record_id}", "n": 12345678901234567890}}"#).into_bytes(),
        record_encoding: RecordEncoding::RawJson,
    }
}

/// A claim on one call carrying these records.
fn claim_of(destination_id: &str, record_ids: &[&str]) -> RecordClaim {
    RecordClaim {
        destination_id: destination_id.to_string(),
        records: record_ids.iter().map(|id| record(id)).collect(),
        request_method: "POST".to_string(),
        request_url: "https://api.groovehq.com/v1/tickets".to_string(),
        claimed_at_ms: 5,
        repeatable: false,
    }
}

fn claim(destination_id: &str, record_id: &str) -> RecordClaim {
    claim_of(destination_id, &[record_id])
}

const ORPHANED: &str = "the server stopped while sending";

pub(super) async fn a_claim_ends_with_its_outcome_or_its_release(h: Harness) {
    let store = store_with_destinations(&h).await;
    store
        .claim_records(["a1", "a2", "a3", "a4"].map(|id| claim("a", id)).to_vec())
        .await
        .unwrap();
    store.claim_records(vec![claim("b", "a1")]).await.unwrap();
    assert_eq!(h.count("record_claims", "a").await, 4);
    store
        .record_outcomes(vec![delivered("a", "a1", 10)], vec![failed("a", "a2", 10)])
        .await
        .unwrap();
    store
        .release_claims(vec![
            ("a".to_string(), "a3".to_string()),
            ("a".to_string(), "never-claimed".to_string()),
        ])
        .await
        .unwrap();
    assert_eq!(h.count("record_claims", "a").await, 1);
    // The same record id of another destination is another claim.
    assert_eq!(h.count("record_claims", "b").await, 1);

    // What is left when the process stops: a4 of a, a1 of b.
    let store = h.restart().await;
    assert_eq!(store.fail_orphaned_claims(ORPHANED, 99).await.unwrap(), 2);
    assert_eq!(h.count("record_claims", "a").await, 0);
    let kept = store
        .get_failed_records("a", ids(&["a4"]))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(kept.outcome, Outcome::Failed);
    assert!(kept.maybe_delivered);
    assert_eq!(kept.error, ORPHANED);
    assert_eq!(kept.record_json, record("a4").record_json);
    assert_eq!(kept.record_encoding, RecordEncoding::RawJson);
    assert_eq!(kept.attempts, 0);
    assert_eq!((kept.first_failure_ms, kept.last_failure_ms), (99, 99));
    let request = kept.request.unwrap();
    assert_eq!(request.method, "POST");
    assert!(request.url.ends_with("/v1/tickets"));
    // Nothing is left for a second start.
    assert_eq!(store.fail_orphaned_claims(ORPHANED, 100).await.unwrap(), 0);
}

pub(super) async fn a_batch_is_one_claim_that_ends_with_its_records(h: Harness) {
    let store = store_with_destinations(&h).await;
    store
        .claim_records(vec![
            claim_of("a", &["b1", "b2", "b3"]),
            claim_of("a", &["c1", "c2"]),
        ])
        .await
        .unwrap();
    assert_eq!(h.count("record_claims", "a").await, 2);
    store
        .record_outcomes(
            ["b1", "b2", "b3"].map(|id| delivered("a", id, 10)).to_vec(),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(h.count("record_claims", "a").await, 1);
    // The other batch is orphaned: each of its records becomes a failed record of its own.
    let store = h.restart().await;
    assert_eq!(store.fail_orphaned_claims(ORPHANED, 50).await.unwrap(), 2);
    let kept = store
        .get_failed_records("a", ids(&["c1", "c2", "b1"]))
        .await
        .unwrap();
    let kept_ids: Vec<&str> = kept.iter().map(|entry| entry.record_id.as_str()).collect();
    assert_eq!(kept_ids, ["c1", "c2"]);
    assert_eq!(kept[1].record_json, record("c2").record_json);
    assert!(kept.iter().all(|entry| entry.maybe_delivered));
}

pub(super) async fn a_claim_ends_among_many_open_ones(h: Harness) {
    let store = store_with_destinations(&h).await;
    let keys: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
    store
        .claim_records(keys.iter().map(|id| claim("a", id)).collect())
        .await
        .unwrap();
    // Fewer records end than claims are open, and theirs are the last claims in key order.
    store
        .record_outcomes(vec![delivered("a", "k19", 10)], vec![])
        .await
        .unwrap();
    store
        .release_claims(vec![("a".to_string(), "k18".to_string())])
        .await
        .unwrap();
    assert_eq!(h.count("record_claims", "a").await, 18);
    // More records end than claims are open, most of them never claimed.
    let mut ending: Vec<LedgerEntry> = (0..100)
        .map(|i| delivered("a", &format!("unclaimed{i}"), 11))
        .collect();
    ending.extend(keys[..18].iter().map(|id| delivered("a", id, 11)));
    store.record_outcomes(ending, vec![]).await.unwrap();
    assert_eq!(h.count("record_claims", "a").await, 0);
}

pub(super) async fn record_states_tell_delivered_from_maybe_delivered(h: Harness) {
    let store = store_with_destinations(&h).await;
    let mut ambiguous = failed("a", "maybe", 10);
    ambiguous.maybe_delivered = true;
    store
        .record_outcomes(
            vec![delivered("a", "done", 10)],
            vec![ambiguous, failed("a", "refused", 10)],
        )
        .await
        .unwrap();
    let states = store
        .record_states("a", ids(&["done", "maybe", "refused", "new"]))
        .await
        .unwrap();
    assert_eq!(states.len(), 2, "{states:?}");
    assert!(matches!(&states["done"], RecordState::Delivered(entry) if entry.http_status == 201));
    assert_eq!(states["maybe"], RecordState::MaybeDelivered);
    // Another destination knows none of them.
    assert!(store
        .record_states("b", ids(&["done", "maybe"]))
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn maybe_delivered_stays_set_until_the_record_is_delivered(h: Harness) {
    let store = store_with_destinations(&h).await;
    let mut ambiguous = failed("a", "r", 10);
    ambiguous.maybe_delivered = true;
    store
        .record_outcomes(vec![], vec![ambiguous])
        .await
        .unwrap();
    // An explicit retry that fails plainly (a 503 every time) does not make the first attempt less ambiguous.
    let mut plain = failed("a", "r", 20);
    plain.error = "gave up after 5 attempts: groove answered 503".to_string();
    store.record_outcomes(vec![], vec![plain]).await.unwrap();
    let kept = store.get_failed_records("a", ids(&["r"])).await.unwrap();
    assert!(kept[0].maybe_delivered);
    assert!(kept[0].error.contains("503"));
    assert_eq!(
        store.record_states("a", ids(&["r"])).await.unwrap()["r"],
        RecordState::MaybeDelivered
    );
    store
        .record_outcomes(vec![delivered("a", "r", 30)], vec![])
        .await
        .unwrap();
    assert!(matches!(
        store.record_states("a", ids(&["r"])).await.unwrap()["r"],
        RecordState::Delivered(_)
    ));
    assert!(store
        .get_failed_records("a", ids(&["r"]))
        .await
        .unwrap()
        .is_empty());
}

pub(super) async fn failed_records_are_listed_by_outcome_and_ambiguity_and_deleted(h: Harness) {
    let store = store_with_destinations(&h).await;
    let mut rejected = failed("a", "rejected", 1);
    rejected.outcome = Outcome::Rejected;
    let mut ambiguous = failed("a", "maybe", 2);
    ambiguous.maybe_delivered = true;
    store
        .record_outcomes(
            vec![],
            vec![
                rejected,
                ambiguous,
                failed("a", "plain", 3),
                failed("b", "other", 1),
            ],
        )
        .await
        .unwrap();
    let listed = |outcome, maybe_delivered_only| {
        let store = store.clone();
        async move {
            store
                .list_failed_records(
                    "a",
                    FailedRecordFilter {
                        outcome,
                        maybe_delivered_only,
                    },
                    PageRequest::first(1),
                    u64::MAX,
                )
                .await
                .unwrap()
        }
    };
    let names = |page: &Page<FailedRecordEntry>| -> Vec<String> {
        page.items
            .iter()
            .map(|entry| entry.record_id.clone())
            .collect()
    };
    assert_eq!(
        names(&listed(Some(Outcome::Rejected), false).await),
        ["rejected"]
    );
    // Paged: the filter applies on every page.
    let failed_first = listed(Some(Outcome::Failed), false).await;
    assert_eq!(names(&failed_first), ["maybe"]);
    let next = store
        .list_failed_records(
            "a",
            FailedRecordFilter {
                outcome: Some(Outcome::Failed),
                maybe_delivered_only: false,
            },
            PageRequest::next(1, &failed_first).unwrap(),
            u64::MAX,
        )
        .await
        .unwrap();
    assert_eq!(names(&next), ["plain"]);
    assert_eq!(names(&listed(None, true).await), ["maybe"]);

    let deleted = store
        .delete_failed_records("a", FailedRecordSelection::Ids(ids(&["plain", "unknown"])))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    assert_eq!(
        store
            .delete_failed_records("a", FailedRecordSelection::All)
            .await
            .unwrap(),
        2
    );
    assert_eq!(h.count("failed_records", "a").await, 0);
    assert_eq!(h.count("failed_records", "b").await, 1);
    assert!(matches!(
        store
            .delete_failed_records("ghost", FailedRecordSelection::All)
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

pub(super) async fn claims_of_a_deleted_destination_go_with_it(h: Harness) {
    let store = store_with_destinations(&h).await;
    store.claim_records(vec![claim("a", "r")]).await.unwrap();
    store.delete_destination("a", None).await.unwrap();
    // Claiming for a destination deleted meanwhile is skipped rather than an error.
    store.claim_records(vec![claim("a", "late")]).await.unwrap();
    assert_eq!(h.count("record_claims", "a").await, 0);
    assert_eq!(store.fail_orphaned_claims(ORPHANED, 1).await.unwrap(), 0);
}
