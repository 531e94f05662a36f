//! The credential lifecycle through a real server and the sandbox: a key replaced while a stream sends, a key
//! Groove keeps refusing (the stop, what it keeps, and the way back), and UpdateCredential's own rules.

mod common;

use common::flows::{self, active_destination, raw, send};
use common::GrpcServer;
use common::{fields_of, start_sandbox, TestServer, SANDBOX_KEY};
use groove_destination::delivery::REFUSALS_TO_STOP;
use groove_destination::proto::{self, credential::State, Outcome};
use groove_sandbox::SandboxHandle;
use prost_types::FieldMask;
use serde_json::{json, Value};
use tonic::Code;

/// A key the sandbox does not accept (until a test says so).
const WRONG_KEY: &str = "wrong-groove-key-0000";
/// The key a rotation moves to.
const NEW_KEY: &str = "rotated-groove-key-5678";

fn ticket(record_id: &str) -> Value {
    json!({"body": format!("[{record_id}] help"), "from": "customer@example.com", "to": "support@sandbox.example.com"})
}

fn records(prefix: &str, range: std::ops::Range<usize>) -> Vec<proto::Record> {
    range
        .map(|index| {
            let id = format!("{prefix}-{index:03}");
            raw(&id, ticket(&id))
        })
        .collect()
}

fn ticket_count(sandbox: &SandboxHandle) -> usize {
    sandbox.snapshot()["tickets"].as_array().map_or(0, Vec::len)
}

/// A create_ticket destination sending `concurrency` calls at a time.
fn tickets_config(concurrency: u32) -> proto::DestinationConfig {
    proto::DestinationConfig {
        delivery: Some(proto::DeliveryOptions {
            concurrency,
            ..Default::default()
        }),
        ..flows::template("create_ticket", &[])
    }
}

async fn create_credential(server: &impl GrpcServer, id: &str, key: &str) {
    flows::credential_with_key(server, id, key).await;
}

async fn get_credential(server: &impl GrpcServer, name: &str) -> proto::Credential {
    server
        .credentials()
        .await
        .get_credential(proto::GetCredentialRequest {
            name: name.to_string(),
        })
        .await
        .expect("get credential")
        .into_inner()
        .credential
        .expect("credential")
}

fn new_key(name: &str, key: &str) -> proto::UpdateCredentialRequest {
    proto::UpdateCredentialRequest {
        name: name.to_string(),
        api_key: key.to_string(),
        update_mask: Some(mask(&["api_key"])),
        ..Default::default()
    }
}

fn mask(paths: &[&str]) -> FieldMask {
    FieldMask {
        paths: paths.iter().map(|path| path.to_string()).collect(),
    }
}

async fn update(
    server: &impl GrpcServer,
    request: proto::UpdateCredentialRequest,
) -> Result<proto::Credential, tonic::Status> {
    Ok(server
        .credentials()
        .await
        .update_credential(request)
        .await?
        .into_inner()
        .credential
        .expect("credential in response"))
}

fn bearer(request: &groove_sandbox::ReceivedRequest) -> &str {
    request.header("authorization").unwrap_or_default()
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_key_replaced_mid_stream_is_used_from_the_next_call() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let name = active_destination(&server, "tickets", tickets_config(4)).await;

    let (requests, mut stream) = flows::open(&server, &name).await;
    requests
        .send(flows::batch(records("before", 0..20)))
        .await
        .unwrap();
    let before = flows::next_results(&mut stream, 20).await;
    assert!(before
        .iter()
        .all(|result| result.outcome() == Outcome::Delivered));

    // The key is rotated in Groove: only the new one works from now on. The stream stays open.
    sandbox.set_api_keys(&[NEW_KEY]);
    let last_seq = sandbox.requests().last().expect("calls so far").seq;
    let updated = update(&server, new_key("credentials/main", NEW_KEY))
        .await
        .expect("update the key");
    assert_eq!(updated.api_key_hint, "****5678");
    assert_eq!(updated.state(), State::Active);

    requests
        .send(flows::batch(records("after", 0..20)))
        .await
        .unwrap();
    requests
        .send(flows::batch(records("later", 0..5)))
        .await
        .unwrap();
    drop(requests);
    let after = flows::drain(&mut stream).await.expect("stream ends ok");
    let summary = after.summary.expect("summary");
    assert_eq!(summary.records_received, 45);
    assert_eq!(summary.delivered, 45, "{summary:?}");
    assert_eq!(summary.unanswered, 0);
    assert_eq!(summary.calls, 45, "no call was refused and retried");
    assert!(after
        .results
        .iter()
        .all(|result| result.outcome() == Outcome::Delivered));

    // Before the update every call carried the old key; after it, the check of the new key and every delivery.
    let calls = sandbox.requests();
    let (old, new): (Vec<_>, Vec<_>) = calls.iter().partition(|call| call.seq <= last_seq);
    assert_eq!(old.len(), 20);
    assert!(old
        .iter()
        .all(|call| bearer(call) == format!("Bearer {SANDBOX_KEY}")));
    assert_eq!(new.len(), 1 + 25, "one verification, then the records");
    assert_eq!(
        (new[0].method.as_str(), new[0].path.as_str()),
        ("GET", "/v1/mailboxes")
    );
    assert!(
        new.iter()
            .all(|call| bearer(call) == format!("Bearer {NEW_KEY}") && call.status != 401),
        "{:?}",
        new.iter()
            .map(|call| (bearer(call), call.status))
            .collect::<Vec<_>>()
    );
    assert_eq!(ticket_count(&sandbox), 45, "no record lost, none twice");
    server.stop().await;
}

#[tokio::test]
async fn a_key_groove_keeps_refusing_stops_its_destinations_until_it_is_replaced() {
    const CONCURRENCY: u32 = 8;
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    // Created without a check: today's mistake, a key Groove does not accept.
    create_credential(&server, "main", WRONG_KEY).await;
    let name = active_destination(&server, "tickets", tickets_config(CONCURRENCY)).await;

    let started = now_secs();
    let messages = (0..4)
        .map(|part| records("r", part * 50..(part + 1) * 50))
        .collect();
    let answered = send(&server, &name, messages)
        .await
        .expect("the stream ends ok");
    let finished = now_secs();

    // Only the calls made before the refusal was known reached Groove, all refused.
    let calls = sandbox.requests();
    assert!(
        calls.len() as u32 <= REFUSALS_TO_STOP + CONCURRENCY,
        "{} calls reached groove",
        calls.len()
    );
    assert!(calls.len() as u32 >= REFUSALS_TO_STOP);
    assert!(calls.iter().all(|call| call.status == 401));
    let summary = answered.summary.expect("summary");
    assert_eq!(summary.records_received, 200);
    assert_eq!(summary.unanswered, 0);
    assert_eq!(summary.rejected, calls.len() as u64, "{summary:?}");
    assert_eq!(summary.failed, 200 - calls.len() as u64, "{summary:?}");
    assert_eq!(summary.calls, calls.len() as u64);
    for result in &answered.results {
        match result.outcome() {
            // Records that got Groove's answer keep it.
            Outcome::Rejected => {
                assert_eq!(result.response.as_ref().unwrap().http_status, 401)
            }
            Outcome::Failed => {
                assert_eq!(result.attempts, 0, "{result:?}");
                assert!(
                    result.error.starts_with(
                        "groove refused the api key of credentials/main (401 unauthorized); not sent"
                    ) && result.error.contains("UpdateCredential")
                        && result.error.contains("RetryFailedRecords"),
                    "{}",
                    result.error
                );
                assert!(result.request.is_none(), "nothing was sent");
            }
            other => panic!("unexpected outcome {other:?}: {result:?}"),
        }
    }

    // Every record is kept for a retry.
    let failed = server
        .delivery()
        .await
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failed_records;
    assert_eq!(failed.len(), 200);
    assert!(failed.iter().all(|record| !record.maybe_delivered));

    // The credential says what happened and when.
    let credential = get_credential(&server, "credentials/main").await;
    assert_eq!(credential.state(), State::Refused);
    let refusal = credential.refusal.expect("refusal");
    assert_eq!(refusal.http_status, 401);
    let refused_at = refusal.refuse_time.expect("refuse time").seconds;
    assert!(
        (started..=finished).contains(&refused_at),
        "{refused_at} not in {started}..={finished}"
    );
    assert!(
        refusal.detail.contains("destinations/tickets"),
        "{}",
        refusal.detail
    );
    assert!(!refusal.detail.contains(WRONG_KEY));

    // It outlives a restart: a new stream sends nothing and keeps its records.
    server.stop().await;
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let again = send(&server, &name, vec![records("n", 0..10)])
        .await
        .unwrap();
    assert_eq!(sandbox.requests().len(), calls.len(), "no call");
    assert_eq!(again.summary.unwrap().failed, 10);

    // A key Groove refuses is not taken; the right one is, and ends the refusal.
    let refused = update(&server, new_key("credentials/main", "still-wrong-key-1111"))
        .await
        .expect_err("groove refuses it");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(
        get_credential(&server, "credentials/main").await.state(),
        State::Refused
    );
    let fixed = update(&server, new_key("credentials/main", SANDBOX_KEY))
        .await
        .expect("the right key");
    assert_eq!(fixed.state(), State::Active);
    assert!(fixed.refusal.is_none());
    assert_eq!(
        get_credential(&server, "credentials/main").await.state(),
        State::Active
    );

    let retried = server
        .delivery()
        .await
        .retry_failed_records(proto::RetryFailedRecordsRequest {
            destination: name.clone(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let summary = retried.summary.expect("summary");
    assert_eq!(summary.delivered, 210, "{summary:?}");
    assert_eq!(ticket_count(&sandbox), 210);
    server.stop().await;
}

#[tokio::test]
async fn verify_credential_that_groove_accepts_again_ends_the_refusal() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", WRONG_KEY).await;
    let name = active_destination(&server, "tickets", tickets_config(1)).await;
    let answered = send(&server, &name, vec![records("v", 0..6)])
        .await
        .unwrap();
    let summary = answered.summary.unwrap();
    // One call at a time: exactly the streak reaches Groove.
    assert_eq!(
        (summary.rejected, summary.failed),
        (u64::from(REFUSALS_TO_STOP), 6 - u64::from(REFUSALS_TO_STOP))
    );
    assert_eq!(
        get_credential(&server, "credentials/main").await.state(),
        State::Refused
    );

    // Groove takes the key again (an account re-enabled, say): a successful check ends the refusal.
    sandbox.set_api_keys(&[SANDBOX_KEY, WRONG_KEY]);
    let verified = server
        .credentials()
        .await
        .verify_credential(proto::VerifyCredentialRequest {
            name: "credentials/main".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verified.http_status, 200);
    let credential = get_credential(&server, "credentials/main").await;
    assert_eq!(credential.state(), State::Active);
    assert!(credential.refusal.is_none());
    let more = send(&server, &name, vec![records("w", 0..3)])
        .await
        .unwrap();
    assert_eq!(more.summary.unwrap().delivered, 3);
    server.stop().await;
}

#[tokio::test]
async fn update_credential_checks_a_new_key_and_its_mask() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let original = get_credential(&server, "credentials/main").await;

    // Groove refuses the new key: nothing changes, and the error names the credential and Groove's status.
    let refused = update(&server, new_key("credentials/main", WRONG_KEY))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert_eq!(
        refused.message(),
        "groove refused the new api key for credential credentials/main (401 unauthorized); the credential \
         was not changed"
    );
    assert_eq!(get_credential(&server, "credentials/main").await, original);
    let check = sandbox.requests();
    assert_eq!(check.len(), 1);
    assert_eq!(bearer(&check[0]), format!("Bearer {WRONG_KEY}"));

    // Unchecked, it is stored as given: no call.
    let unchecked = update(
        &server,
        proto::UpdateCredentialRequest {
            skip_verification: true,
            ..new_key("credentials/main", "unverified-key-4321")
        },
    )
    .await
    .unwrap();
    assert_eq!(unchecked.api_key_hint, "****4321");
    assert_eq!(unchecked.display_name, original.display_name);
    assert_eq!(sandbox.requests().len(), 1);

    // A new display name alone asks nothing of Groove; an empty mask changes what is given.
    let renamed = update(
        &server,
        proto::UpdateCredentialRequest {
            name: "credentials/main".into(),
            display_name: " Support team key ".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(renamed.display_name, "Support team key");
    assert_eq!(renamed.api_key_hint, "****4321");
    let seconds =
        |time: &Option<prost_types::Timestamp>| time.as_ref().map(|t| (t.seconds, t.nanos));
    assert!(seconds(&renamed.update_time) >= seconds(&unchecked.update_time));
    assert_eq!(renamed.create_time, original.create_time);
    assert_eq!(sandbox.requests().len(), 1);

    // `*` changes both, the key checked first.
    let both = update(
        &server,
        proto::UpdateCredentialRequest {
            name: "credentials/main".into(),
            display_name: "Both".into(),
            api_key: SANDBOX_KEY.into(),
            update_mask: Some(mask(&["*"])),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(both.display_name, "Both");
    assert_eq!(both.api_key_hint, "****6789");
    assert_eq!(sandbox.requests().len(), 2);

    // Bad input names its field, and nothing reaches Groove.
    let cases: Vec<(proto::UpdateCredentialRequest, &str, &str)> = vec![
        (
            proto::UpdateCredentialRequest {
                update_mask: Some(mask(&["display_name", "colour"])),
                display_name: "x".into(),
                ..new_key("credentials/main", SANDBOX_KEY)
            },
            "update_mask",
            "colour",
        ),
        (
            proto::UpdateCredentialRequest {
                update_mask: Some(mask(&["api_key_hint"])),
                ..new_key("credentials/main", SANDBOX_KEY)
            },
            "update_mask",
            "output only",
        ),
        (
            proto::UpdateCredentialRequest {
                name: "credentials/main".into(),
                ..Default::default()
            },
            "update_mask",
            "nothing to change",
        ),
        (
            proto::UpdateCredentialRequest {
                update_mask: Some(mask(&["display_name"])),
                ..new_key("credentials/main", SANDBOX_KEY)
            },
            "display_name",
            "required",
        ),
        (
            new_key("credentials/main", "key with spaces"),
            "api_key",
            "spaces",
        ),
        (new_key("credentials/main", ""), "api_key", "required"),
        (new_key("main", SANDBOX_KEY), "name", "credentials/"),
        (new_key("", SANDBOX_KEY), "name", "required"),
    ];
    for (request, field, says) in cases {
        let status = update(&server, request.clone()).await.unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{request:?}: {status:?}"
        );
        assert_eq!(fields_of(&status), [field], "{request:?}: {status:?}");
        assert!(status.message().contains(says), "{}", status.message());
        assert!(!status.message().contains(SANDBOX_KEY));
    }
    assert_eq!(sandbox.requests().len(), 2);

    // A credential that does not exist is not found, without a call to Groove.
    let missing = update(&server, new_key("credentials/nope", SANDBOX_KEY))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(missing.message(), "credential credentials/nope not found");
    let missing = update(
        &server,
        proto::UpdateCredentialRequest {
            skip_verification: true,
            ..new_key("credentials/nope", SANDBOX_KEY)
        },
    )
    .await
    .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(sandbox.requests().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn a_new_key_that_cannot_be_checked_is_stored_only_when_told_to() {
    // Groove unreachable: a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &closed_url).await;
    create_credential(&server, "main", SANDBOX_KEY).await;

    let unavailable = update(&server, new_key("credentials/main", NEW_KEY))
        .await
        .unwrap_err();
    assert_eq!(unavailable.code(), Code::Unavailable, "{unavailable:?}");
    assert!(
        unavailable.message().starts_with(
            "cannot verify the new api key for credential credentials/main with groove"
        ),
        "{}",
        unavailable.message()
    );
    assert!(unavailable.message().contains("skip_verification"));
    assert!(!unavailable.message().contains(NEW_KEY));
    assert_eq!(
        get_credential(&server, "credentials/main")
            .await
            .api_key_hint,
        "****6789"
    );

    let stored = update(
        &server,
        proto::UpdateCredentialRequest {
            skip_verification: true,
            ..new_key("credentials/main", NEW_KEY)
        },
    )
    .await
    .unwrap();
    assert_eq!(stored.api_key_hint, "****5678");
    server.stop().await;
}
