//! Compatibility with databases written by earlier releases.
//!
//! `fixtures/release-0.1.0.db` was written by [`write_fixture`] at commit 0adc304 (the release before stored
//! formats were versioned), with the secret key in `fixtures/release-0.1.0.key`, then checkpointed into one file
//! (`PRAGMA journal_mode=DELETE; VACUUM`). Never regenerate it with a newer build: its point is to be what that
//! release left on disk.

use std::collections::BTreeMap;
use std::path::Path;

use crate::domain::credential::{ApiKey, Refusal};
use crate::domain::destination::{
    BatchEnvelope, Batching, ContentFormat, DeliveryOptions, Destination, DestinationConfig,
    DestinationState, Endpoint, GroupingAlgorithm, HttpMethod, ManualEndpoint, TemplateEndpoint,
};
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::{
    ClaimedRecord, CredentialUpdate, FailedRecordEntry, FailedRecordFilter, LedgerEntry,
    NewCredential, PageRequest, RecordClaim, RecordState, SecretBox, SqliteStore, Store,
    StoredRequest,
};

/// The secret key of the fixture: 32 bytes of 0x2a.
const FIXTURE_KEY: &str = "KioqKioqKioqKioqKioqKioqKioqKioqKioqKioqKio=";

fn template_destination() -> Destination {
    Destination {
        id: "tickets".into(),
        display_name: "New tickets".into(),
        credential_id: "main".into(),
        state: DestinationState::Active,
        config: DestinationConfig {
            endpoint: Endpoint::Template(TemplateEndpoint {
                template_id: "create_ticket".into(),
                parameters: BTreeMap::new(),
            }),
            ..DestinationConfig::default()
        },
        create_time_ms: 1_700_000_000_000,
        update_time_ms: 1_700_000_000_000,
        revision: 1,
    }
}

fn template_with_parameters() -> Destination {
    Destination {
        id: "notes".into(),
        display_name: "Ticket notes".into(),
        credential_id: "rotated".into(),
        state: DestinationState::Paused,
        config: DestinationConfig {
            endpoint: Endpoint::Template(TemplateEndpoint {
                template_id: "create_message".into(),
                parameters: BTreeMap::from([("ticket_number".into(), "{ticket.number}".into())]),
            }),
            exclude_attributes: vec!["customer.email".into(), "internal".into()],
            batching: Batching::default(),
            response_webhook: None,
            delivery: DeliveryOptions {
                concurrency: 2,
                max_attempts: 3,
                request_timeout_ms: 10_000,
                ordering_key_attribute: Some("ticket.number".into()),
                retry_unsafe_requests: true,
            },
        },
        create_time_ms: 1_700_000_001_000,
        update_time_ms: 1_700_000_002_000,
        revision: 4,
    }
}

fn manual_destination() -> Destination {
    Destination {
        id: "manual".into(),
        display_name: "Customers by hand".into(),
        credential_id: "main".into(),
        state: DestinationState::Inactive,
        config: DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method: HttpMethod::Put,
                url: "/customers/{customer.email}".into(),
                content_format: ContentFormat::Json,
                headers: vec![
                    ("X-Source".into(), "warehouse".into()),
                    ("X-Tenant".into(), "{tenant}".into()),
                ],
            }),
            exclude_attributes: vec![],
            batching: Batching {
                enabled: true,
                batch_size: 50,
                max_wait_ms: 2_500,
                grouping: GroupingAlgorithm::AttributeValue,
                group_by_attribute: Some("tenant".into()),
                envelope: BatchEnvelope::Wrapped {
                    key: "customers".into(),
                },
            },
            response_webhook: Some("https://hooks.example.com/groove".into()),
            delivery: DeliveryOptions::default(),
        },
        create_time_ms: 1_700_000_003_000,
        update_time_ms: 1_700_000_003_000,
        revision: 1,
    }
}

fn rendered_batch_destination() -> Destination {
    Destination {
        id: "rendered".into(),
        display_name: "Rendered batches".into(),
        credential_id: "main".into(),
        state: DestinationState::Active,
        config: DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method: HttpMethod::Post,
                url: "/tickets/{ticket.number}/messages".into(),
                content_format: ContentFormat::Json,
                headers: vec![],
            }),
            exclude_attributes: vec![],
            batching: Batching {
                enabled: true,
                batch_size: 10,
                max_wait_ms: 100,
                grouping: GroupingAlgorithm::RenderedRequest,
                group_by_attribute: None,
                envelope: BatchEnvelope::JsonArray,
            },
            response_webhook: None,
            delivery: DeliveryOptions::default(),
        },
        create_time_ms: 1_700_000_004_000,
        update_time_ms: 1_700_000_004_000,
        revision: 2,
    }
}

fn destinations() -> Vec<Destination> {
    vec![
        manual_destination(),
        template_with_parameters(),
        rendered_batch_destination(),
        template_destination(),
    ]
}

fn ledger_entries() -> Vec<LedgerEntry> {
    vec![
        LedgerEntry {
            destination_id: "tickets".into(),
            record_id: "t-1".into(),
            http_status: 201,
            response_body: br#"{"ticket":{"number":1}}"#.to_vec(),
            attempts: 1,
            delivered_at_ms: 1_700_000_010_000,
        },
        LedgerEntry {
            destination_id: "tickets".into(),
            record_id: "t-2".into(),
            http_status: 201,
            response_body: br#"{"ticket":{"number":2}}"#.to_vec(),
            attempts: 3,
            delivered_at_ms: 1_700_000_011_000,
        },
        LedgerEntry {
            destination_id: "manual".into(),
            record_id: "c-1".into(),
            http_status: 200,
            response_body: Vec::new(),
            attempts: 1,
            delivered_at_ms: 1_700_000_012_000,
        },
    ]
}

fn failed_entries() -> Vec<FailedRecordEntry> {
    vec![
        FailedRecordEntry {
            destination_id: "tickets".into(),
            record_id: "t-3".into(),
            record_json: br#"{"body":"help","from":"a@example.com"}"#.to_vec(),
            outcome: Outcome::Rejected,
            request: Some(StoredRequest {
                method: "POST".into(),
                url: "https://api.groovehq.com/v1/tickets".into(),
                headers: vec![
                    ("authorization".into(), "Bearer [redacted]".into()),
                    ("content-type".into(), "application/json".into()),
                ],
                body: br#"{"body":"help"}"#.to_vec(),
            }),
            http_status: 422,
            response_headers: vec![("content-type".into(), "application/json".into())],
            response_body: br#"{"errors":["to is missing"]}"#.to_vec(),
            error: "groove rejected the record: to is missing".into(),
            maybe_delivered: false,
            record_encoding: RecordEncoding::Struct,
            attempts: 1,
            first_failure_ms: 1_700_000_020_000,
            last_failure_ms: 1_700_000_020_000,
        },
        FailedRecordEntry {
            destination_id: "manual".into(),
            record_id: "c-2".into(),
            record_json: br#"{"n": 12345678901234567890}"#.to_vec(),
            outcome: Outcome::Failed,
            request: None,
            http_status: 0,
            response_headers: vec![],
            response_body: Vec::new(),
            error: "record field customer.email is missing".into(),
            maybe_delivered: true,
            record_encoding: RecordEncoding::RawJson,
            attempts: 2,
            first_failure_ms: 1_700_000_021_000,
            last_failure_ms: 1_700_000_022_000,
        },
    ]
}

fn claims() -> Vec<RecordClaim> {
    vec![RecordClaim {
        destination_id: "rendered".into(),
        records: vec![
            ClaimedRecord {
                record_id: "r-1".into(),
                record_json: br#"{"ticket":{"number":7}}"#.to_vec(),
                record_encoding: RecordEncoding::Struct,
            },
            ClaimedRecord {
                record_id: "r-2".into(),
                record_json: "{\"ticket\":{\"number\":7},\"x\":\"é\"}"
                    .as_bytes()
                    .to_vec(),
                record_encoding: RecordEncoding::RawJson,
            },
        ],
        request_method: "POST".into(),
        request_url: "https://api.groovehq.com/v1/tickets/7/messages".into(),
        claimed_at_ms: 1_700_000_030_000,
        repeatable: false,
    }]
}

/// Writes the fixture into `$GROOVE_FIXTURE_DIR`: run with
/// `GROOVE_FIXTURE_DIR=… cargo test --lib write_fixture -- --ignored`.
#[tokio::test]
#[ignore = "writes the fixture; only for making it, with the release it stands for"]
async fn write_fixture() {
    let dir = std::env::var("GROOVE_FIXTURE_DIR").expect("GROOVE_FIXTURE_DIR");
    let dir = Path::new(&dir);
    let store = SqliteStore::open(dir, SecretBox::from_encoded(FIXTURE_KEY).unwrap()).unwrap();
    for (id, key) in [
        ("main", "groove-key-main-1234"),
        ("rotated", "groove-key-old-0000"),
    ] {
        store
            .create_credential(NewCredential {
                id: id.into(),
                display_name: format!("Credential {id}"),
                api_key: ApiKey::new(key),
                now_ms: 1_699_999_999_000,
            })
            .await
            .unwrap();
    }
    store
        .update_credential(CredentialUpdate {
            id: "rotated".into(),
            display_name: None,
            api_key: Some(ApiKey::new("groove-key-new-5678")),
            now_ms: 1_700_000_000_500,
        })
        .await
        .unwrap();
    store
        .set_credential_refusal(
            "rotated",
            2,
            Some(Refusal {
                http_status: 401,
                refuse_time_ms: 1_700_000_040_000,
                detail: "groove refused the key".into(),
            }),
        )
        .await
        .unwrap();
    for destination in destinations() {
        store.create_destination(destination).await.unwrap();
    }
    store
        .record_outcomes(ledger_entries(), failed_entries())
        .await
        .unwrap();
    store.claim_records(claims()).await.unwrap();
}

/// A copy of the fixture in a private directory of its own, opened with its key.
fn open_fixture() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(crate::store::DATABASE_FILE),
        include_bytes!("fixtures/release-0.1.0.db"),
    )
    .unwrap();
    let key = include_str!("fixtures/release-0.1.0.key");
    assert_eq!(key.trim(), FIXTURE_KEY);
    let store = SqliteStore::open(dir.path(), SecretBox::from_encoded(key).unwrap()).unwrap();
    (dir, store)
}

#[tokio::test]
async fn a_database_of_release_0_1_0_reads_in_full() {
    let (_dir, store) = open_fixture();

    let credentials = store
        .list_credentials(PageRequest::first(0))
        .await
        .unwrap()
        .items;
    let ids: Vec<&str> = credentials.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["main", "rotated"]);
    assert_eq!(credentials[0].display_name, "Credential main");
    assert_eq!(
        credentials[0].api_key_hint,
        ApiKey::new("groove-key-main-1234").hint()
    );
    assert_eq!(credentials[0].key_version, 1);
    assert_eq!(credentials[0].refusal, None);
    assert_eq!(credentials[1].create_time_ms, 1_699_999_999_000);
    assert_eq!(credentials[1].update_time_ms, 1_700_000_000_500);
    let main = store.credential_key("main").await.unwrap();
    assert_eq!(main.key.expose(), "groove-key-main-1234");
    let rotated = store.credential_key("rotated").await.unwrap();
    assert_eq!(rotated.key.expose(), "groove-key-new-5678");
    assert_eq!(rotated.key_version, 2);
    assert_eq!(
        rotated.refusal,
        Some(Refusal {
            http_status: 401,
            refuse_time_ms: 1_700_000_040_000,
            detail: "groove refused the key".into(),
        })
    );

    let mut expected = destinations();
    expected.sort_by(|a, b| a.id.cmp(&b.id));
    let stored = store
        .list_destinations(PageRequest::first(0))
        .await
        .unwrap()
        .items;
    assert_eq!(stored, expected);
    for destination in &expected {
        assert_eq!(
            &store.get_destination(&destination.id).await.unwrap(),
            destination
        );
    }

    for (destination, ids) in [
        ("tickets", ["t-1", "t-2", "t-3"]),
        ("manual", ["c-1", "c-2", "x"]),
    ] {
        let states = store
            .record_states(destination, ids.iter().map(|id| id.to_string()).collect())
            .await
            .unwrap();
        for entry in ledger_entries()
            .into_iter()
            .filter(|entry| *entry.destination_id == *destination)
        {
            assert_eq!(
                states.get(&entry.record_id),
                Some(&RecordState::Delivered(entry.clone()))
            );
        }
        let maybe = destination == "manual";
        assert_eq!(
            states.get(if maybe { "c-2" } else { "t-3" }),
            maybe.then_some(&RecordState::MaybeDelivered)
        );
    }

    for expected in failed_entries() {
        let listed = store
            .list_failed_records(
                &expected.destination_id,
                FailedRecordFilter::default(),
                PageRequest::first(0),
                u64::MAX,
            )
            .await
            .unwrap()
            .items;
        assert_eq!(listed, vec![expected]);
    }

    // The claim left behind (one call of two records) reads back as the failed records it stands for.
    assert_eq!(
        store
            .fail_orphaned_claims("orphaned", 1_700_000_050_000)
            .await
            .unwrap(),
        2
    );
    let orphans = store
        .get_failed_records("rendered", vec!["r-1".into(), "r-2".into()])
        .await
        .unwrap();
    let claim = &claims()[0];
    assert_eq!(orphans.len(), 2);
    for (orphan, record) in orphans.iter().zip(&claim.records) {
        assert_eq!(orphan.record_id, record.record_id);
        assert_eq!(orphan.record_json, record.record_json);
        assert_eq!(orphan.record_encoding, record.record_encoding);
        assert_eq!(orphan.outcome, Outcome::Failed);
        assert!(orphan.maybe_delivered);
        let request = orphan.request.as_ref().unwrap();
        assert_eq!(request.method, claim.request_method);
        assert_eq!(request.url, claim.request_url);
    }
}

#[tokio::test]
async fn a_destination_of_release_0_1_0_updates_into_the_current_format() {
    let (_dir, store) = open_fixture();
    let mut destination = manual_destination();
    destination.revision = 2;
    destination.display_name = "Renamed".into();
    let updated = store
        .update_destination(destination.clone(), 1)
        .await
        .unwrap();
    assert_eq!(updated, destination);
    assert_eq!(store.get_destination("manual").await.unwrap(), destination);
}

#[tokio::test]
async fn rows_with_unknown_fields_or_without_newer_ones_read() {
    let (dir, store) = open_fixture();
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join(crate::store::DATABASE_FILE)).unwrap();
    conn.execute(
        r#"UPDATE destinations SET config_json = '{"format":1,"endpoint":{"template":
            {"template_id":"create_ticket","parameters":{},"locale":"fr"}},"priority":"high"}'
           WHERE id = 'tickets'"#,
        [],
    )
    .unwrap();
    conn.execute(
        r#"UPDATE destinations SET config_json = '{"endpoint":{"manual":{"method":"PUT",
            "url":"/customers/{customer.email}"}},"batching":{"enabled":true}}'
           WHERE id = 'manual'"#,
        [],
    )
    .unwrap();
    drop(conn);
    let store =
        SqliteStore::open(dir.path(), SecretBox::from_encoded(FIXTURE_KEY).unwrap()).unwrap();
    assert_eq!(
        store.get_destination("tickets").await.unwrap(),
        template_destination()
    );
    let manual = store.get_destination("manual").await.unwrap();
    assert_eq!(
        manual.config.endpoint,
        Endpoint::Manual(ManualEndpoint {
            method: HttpMethod::Put,
            url: "/customers/{customer.email}".into(),
            content_format: ContentFormat::Json,
            headers: vec![],
        })
    );
    assert!(manual.config.batching.enabled);
    assert_eq!(
        manual.config.batching.batch_size,
        Batching::default().batch_size
    );
    assert_eq!(manual.config.delivery, DeliveryOptions::default());
}
