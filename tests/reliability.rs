//! The delivery promise under in-flight replays, ambiguous failures, stopped streams and restarts: every record
//! read gets one true answer, and nothing reaches Groove twice unless the user asks for it.

mod common;

use std::time::Duration;

use common::flows::{self, active_destination, credential, raw, send, template};
use common::GrpcServer;
use common::{start_sandbox, TestServer};
use groove_destination::api::json_wire::JsonObject;
use groove_destination::proto::{self, Outcome};
use groove_destination::store::{ClaimedRecord, RecordClaim, SecretBox, SqliteStore, Store};
use groove_sandbox::{Faults, SandboxHandle, ScriptedAnswer};
use serde_json::{json, Value};
use tonic::Code;

async fn setup() -> (SandboxHandle, tempfile::TempDir, TestServer) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    (sandbox, dir, server)
}

/// A ticket whose body names its record, so the sandbox's tickets can be counted per record.
fn ticket(record_id: &str) -> Value {
    json!({"body": format!("[{record_id}] help"), "from": "customer@example.com", "to": "support@sandbox.example.com"})
}

/// Tickets in the sandbox created from `record_id`.
fn tickets_of(sandbox: &SandboxHandle, record_id: &str) -> usize {
    let marker = format!("[{record_id}]");
    sandbox.snapshot()["tickets"]
        .as_array()
        .map_or(0, |tickets| {
            tickets
                .iter()
                .filter(|ticket| ticket.to_string().contains(&marker))
                .count()
        })
}

fn ticket_count(sandbox: &SandboxHandle) -> usize {
    sandbox.snapshot()["tickets"].as_array().map_or(0, Vec::len)
}

fn faults(script: &[ScriptedAnswer], latency_ms: u64) -> Faults {
    Faults {
        script: script.to_vec(),
        latency: Duration::from_millis(latency_ms),
        ..Faults::default()
    }
}

/// A create_ticket destination with these delivery options.
fn tickets_config(concurrency: u32, max_attempts: u32) -> proto::DestinationConfig {
    proto::DestinationConfig {
        delivery: Some(proto::DeliveryOptions {
            concurrency,
            max_attempts,
            ..Default::default()
        }),
        ..template("create_ticket", &[])
    }
}

/// Waits until `count` creates are on their way to Groove: their claims are committed just before the calls go
/// out. (The sandbox records a call only once it has answered it.)
async fn until_claimed(data_dir: &std::path::Path, count: i64) {
    let database = data_dir.join(groove_destination::store::DATABASE_FILE);
    for _ in 0..500 {
        let conn = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        let claimed: i64 = conn
            .query_row("SELECT count(*) FROM record_claims", [], |row| row.get(0))
            .unwrap();
        if claimed >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{count} creates were not claimed");
}

async fn failed_records(
    server: &TestServer,
    request: proto::ListFailedRecordsRequest,
) -> Result<Vec<proto::FailedRecord>, tonic::Status> {
    Ok(server
        .delivery()
        .await
        .list_failed_records(request)
        .await?
        .into_inner()
        .failed_records)
}

fn records(ids: &[String]) -> Vec<proto::Record> {
    ids.iter().map(|id| raw(id, ticket(id))).collect()
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index:03}"))
        .collect()
}

/// Reads a stream that must stop early: everything it answers, the summary, then `code` with a message saying
/// `says`. Returns the results and the summary.
async fn stopped_with(
    stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
    code: Code,
    says: &str,
) -> (Vec<proto::DeliveryResult>, proto::DeliverySummary) {
    let (answered, ended) = flows::drain_to_end(stream).await;
    let status = ended.expect_err("the stream ends with a status, not OK");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(status.message().contains(says), "{}", status.message());
    let summary = answered
        .summary
        .expect("the summary comes before the status");
    (answered.results, summary)
}

/// Sends `record_id` on a first stream, and again on a second one while the first call is provably still
/// unanswered (claimed, and the sandbox has answered nothing). Returns the one result of each stream.
async fn replay_while_in_flight(
    server: &TestServer,
    data_dir: &std::path::Path,
    sandbox: &SandboxHandle,
    name: &str,
    record_id: &str,
) -> (proto::DeliveryResult, proto::DeliveryResult) {
    sandbox.clear_requests();
    let (requests, mut first) = flows::open(server, name).await;
    requests
        .send(flows::batch(vec![raw(record_id, ticket(record_id))]))
        .await
        .unwrap();
    until_claimed(data_dir, 1).await;
    assert!(
        sandbox.requests().is_empty(),
        "the first call is still on the wire"
    );
    let second = send(server, name, vec![vec![raw(record_id, ticket(record_id))]])
        .await
        .unwrap();
    drop(requests);
    let first = flows::drain(&mut first).await.unwrap();
    (first.of(record_id).clone(), second.of(record_id).clone())
}

#[tokio::test]
async fn a_record_in_flight_on_another_stream_is_answered_only_when_that_delivery_ends() {
    let (sandbox, dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;

    // The issue's reproduction: A's call is slow and ends in a 500 that created nothing.
    sandbox.set_faults(faults(&[ScriptedAnswer::fail(500)], 400));
    let (first, refused) = replay_while_in_flight(&server, dir.path(), &sandbox, &name, "x1").await;
    assert_eq!(refused.outcome(), Outcome::Failed, "{refused:?}");
    assert_eq!(refused.attempts, 0);
    assert!(refused.error.contains("may have"), "{}", refused.error);
    assert_eq!(first.outcome(), Outcome::Failed);
    assert_eq!(first.attempts, 1);
    assert_eq!(
        sandbox.requests().len(),
        1,
        "the second stream sent nothing"
    );
    assert_eq!(tickets_of(&sandbox, "x1"), 0);

    // When the first delivery succeeds, the copy waiting for it is a true duplicate.
    sandbox.set_faults(faults(&[], 300));
    let (first, duplicate) =
        replay_while_in_flight(&server, dir.path(), &sandbox, &name, "y1").await;
    assert_eq!(duplicate.outcome(), Outcome::Duplicate, "{duplicate:?}");
    assert_eq!(duplicate.response.as_ref().unwrap().http_status, 201);
    assert_eq!(first.outcome(), Outcome::Delivered);
    assert_eq!(tickets_of(&sandbox, "y1"), 1);
    server.stop().await;
}

#[tokio::test]
async fn an_id_repeated_in_one_stream_gets_a_true_answer() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 2)).await;
    let answered = send(
        &server,
        &name,
        vec![vec![raw("z1", ticket("z1")), raw("z1", ticket("z1"))]],
    )
    .await
    .unwrap();
    let mut outcomes: Vec<Outcome> = answered.results.iter().map(|r| r.outcome()).collect();
    outcomes.sort_by_key(|outcome| *outcome as i32);
    assert_eq!(outcomes, [Outcome::Delivered, Outcome::Duplicate]);
    assert_eq!(tickets_of(&sandbox, "z1"), 1);

    // The first copy fails after its attempts without reaching Groove: the second is not "delivered before",
    // it is sent, and delivered.
    sandbox.set_faults(faults(
        &[ScriptedAnswer::fail(503), ScriptedAnswer::fail(503)],
        0,
    ));
    let answered = send(
        &server,
        &name,
        vec![vec![raw("z2", ticket("z2"))], vec![raw("z2", ticket("z2"))]],
    )
    .await
    .unwrap();
    assert_eq!(answered.results.len(), 2);
    assert_eq!(answered.results[0].outcome(), Outcome::Failed);
    assert_eq!(answered.results[0].attempts, 2);
    assert_eq!(answered.results[1].outcome(), Outcome::Delivered);
    assert_eq!(tickets_of(&sandbox, "z2"), 1);
    let summary = answered.summary.unwrap();
    assert_eq!(
        (summary.failed, summary.delivered, summary.duplicate),
        (1, 1, 0)
    );
    // Delivered in the end: no longer a failed record.
    let listed = failed_records(
        &server,
        proto::ListFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(listed.is_empty(), "{listed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_create_that_may_have_reached_groove_is_sent_again_only_when_asked() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    // A 500 after the ticket was created, a 502 and a 504 that created nothing, a connection lost after the
    // ticket was created: the service cannot tell these apart, and none is repeated.
    sandbox.set_faults(faults(
        &[
            ScriptedAnswer::fail(500).once_processed(),
            ScriptedAnswer::fail(502),
            ScriptedAnswer::fail(504),
            ScriptedAnswer::drop_connection().once_processed(),
        ],
        0,
    ));
    let ids: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let mut messages = Vec::new();
    for id in &ids {
        // One message each, so the scripted answers meet the records in order.
        messages.push(vec![raw(id, ticket(id))]);
    }
    let (requests, mut stream) = flows::open(&server, &name).await;
    let mut answered = Vec::new();
    for message in messages {
        requests.send(flows::batch(message)).await.unwrap();
        answered.extend(flows::next_results(&mut stream, 1).await);
    }
    drop(requests);
    flows::drain(&mut stream).await.unwrap();
    for result in &answered {
        assert_eq!(result.outcome(), Outcome::Failed, "{result:?}");
        assert_eq!(result.attempts, 1, "{result:?}");
    }
    assert_eq!(
        ids.iter()
            .map(|id| tickets_of(&sandbox, id))
            .collect::<Vec<_>>(),
        [1, 0, 0, 1]
    );

    let listed = failed_records(
        &server,
        proto::ListFailedRecordsRequest {
            destination: name.clone(),
            maybe_delivered_only: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 4);
    assert!(listed.iter().all(|record| record.maybe_delivered));

    // A replay sends none of them.
    sandbox.clear_requests();
    let replay = send(&server, &name, vec![records(&ids)]).await.unwrap();
    for id in &ids {
        let result = replay.of(id);
        assert_eq!(result.outcome(), Outcome::Failed);
        assert_eq!(result.attempts, 0);
        assert!(
            result.error.contains("RetryFailedRecords"),
            "{}",
            result.error
        );
    }
    assert!(sandbox.requests().is_empty());
    assert_eq!(replay.summary.unwrap().failed, 4);

    // The user decides: a and d are in Groove already (delete them), b and c are sent again.
    let deleted = server
        .delivery()
        .await
        .delete_failed_records(proto::DeleteFailedRecordsRequest {
            destination: name.clone(),
            record_ids: vec!["a".into(), "d".into(), "never-failed".into()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_count, 2);
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
    assert_eq!(retried.summary.unwrap().delivered, 2);
    assert_eq!(
        ids.iter()
            .map(|id| tickets_of(&sandbox, id))
            .collect::<Vec<_>>(),
        [1, 1, 1, 1]
    );
    let replay = send(&server, &name, vec![records(&ids[1..3])])
        .await
        .unwrap();
    assert_eq!(replay.summary.unwrap().duplicate, 2);
    server.stop().await;
}

#[tokio::test]
async fn claims_left_by_a_stopped_process_become_failures_that_may_have_been_delivered() {
    let (sandbox, dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    server.stop().await;
    // What a process killed mid-call leaves: claims committed, no outcome.
    let record = ticket("orphan").to_string().into_bytes();
    {
        let secrets = SecretBox::load_or_create(dir.path()).unwrap();
        let store = SqliteStore::open(dir.path(), secrets).unwrap();
        store
            .claim_records(vec![RecordClaim {
                destination_id: "tickets".into(),
                records: vec![ClaimedRecord {
                    record_id: "orphan".into(),
                    record_json: record.clone(),
                    record_encoding: groove_destination::domain::record::RecordEncoding::RawJson,
                }],
                request_method: "POST".into(),
                request_url: format!("{}/tickets", sandbox.base_url()),
                claimed_at_ms: 1,
                repeatable: false,
            }])
            .await
            .unwrap();
    }
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let listed = failed_records(
        &server,
        proto::ListFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(listed.len(), 1);
    let orphan = &listed[0];
    assert!(orphan.maybe_delivered);
    assert_eq!(orphan.outcome(), Outcome::Failed);
    assert!(orphan.error.contains("server stopped"), "{}", orphan.error);
    assert_eq!(
        orphan.record.as_ref().unwrap().data,
        Some(proto::record::Data::RawJson(record))
    );
    assert_eq!(
        orphan.request.as_ref().unwrap().method(),
        proto::HttpMethod::Post
    );
    let replay = send(&server, &name, vec![vec![raw("orphan", ticket("orphan"))]])
        .await
        .unwrap();
    assert_eq!(replay.of("orphan").outcome(), Outcome::Failed);
    assert_eq!(tickets_of(&sandbox, "orphan"), 0);
    server.stop().await;
}

#[tokio::test]
async fn a_cancelled_stream_stops_sending_and_a_replay_gets_true_answers() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(2, 5)).await;
    sandbox.set_faults(faults(&[], 30));
    let all = ids("c", 200);
    let (requests, mut stream) = flows::open(&server, &name).await;
    for chunk in all.chunks(100) {
        requests.send(flows::batch(records(chunk))).await.unwrap();
    }
    flows::next_results(&mut stream, 4).await;
    drop(stream);
    drop(requests);
    // Calls on the wire finish; nothing new starts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_cancel = ticket_count(&sandbox);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ticket_count(&sandbox),
        after_cancel,
        "tickets kept coming after the cancel"
    );
    assert!(
        after_cancel < 20,
        "{after_cancel} tickets after reading 4 results"
    );

    let replay = send(&server, &name, vec![records(&all)]).await.unwrap();
    let summary = replay.summary.unwrap();
    assert_eq!(summary.duplicate as usize, after_cancel, "{summary:?}");
    assert_eq!(
        summary.delivered as usize,
        200 - after_cancel,
        "{summary:?}"
    );
    assert_eq!(summary.unanswered, 0);
    for id in &all {
        assert_eq!(tickets_of(&sandbox, id), 1, "{id}");
    }
    server.stop().await;
}

#[tokio::test]
async fn pausing_lets_go_of_what_was_not_sent() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(1, 5)).await;
    sandbox.set_faults(faults(&[], 100));
    let all = ids("p", 20);
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests.send(flows::batch(records(&all))).await.unwrap();
    flows::next_results(&mut stream, 1).await;
    let mut destinations = server.destinations().await;
    destinations
        .pause_destination(proto::PauseDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    let (_, summary) = stopped_with(&mut stream, Code::FailedPrecondition, "paused").await;
    assert_eq!(summary.records_received, 20);
    assert!(summary.unanswered > 0, "{summary:?}");
    assert_eq!(
        summary.delivered + summary.unanswered,
        20,
        "every record is delivered or unanswered: {summary:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ticket_count(&sandbox) as u64, summary.delivered);
    drop(requests);

    destinations
        .activate_destination(proto::ActivateDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    sandbox.set_faults(Faults::default());
    let replay = send(&server, &name, vec![records(&all)]).await.unwrap();
    let again = replay.summary.unwrap();
    assert_eq!(again.duplicate, summary.delivered);
    assert_eq!(again.delivered, summary.unanswered);
    assert_eq!(ticket_count(&sandbox), 20);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_ends_open_streams_unavailable_after_their_summary() {
    let (sandbox, dir, mut server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(1, 5)).await;
    sandbox.set_faults(faults(&[], 100));
    let all = ids("s", 20);
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests.send(flows::batch(records(&all))).await.unwrap();
    let first = flows::next_results(&mut stream, 1).await;
    server.signal_shutdown();
    let (rest, summary) = stopped_with(&mut stream, Code::Unavailable, "shutting down").await;
    assert_eq!(first.len() + rest.len(), summary.delivered as usize);
    assert!(summary.unanswered > 0, "{summary:?}");
    assert_eq!(summary.delivered + summary.unanswered, 20);
    drop(requests);
    server.stop().await;
    assert_eq!(ticket_count(&sandbox) as u64, summary.delivered);

    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    sandbox.set_faults(Faults::default());
    let replay = send(&server, &name, vec![records(&all)]).await.unwrap();
    let again = replay.summary.unwrap();
    assert_eq!(again.duplicate, summary.delivered);
    assert_eq!(again.delivered, summary.unanswered);
    assert_eq!(ticket_count(&sandbox), 20);
    server.stop().await;
}

#[tokio::test]
async fn a_message_over_the_size_limit_ends_the_stream_resource_exhausted() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    let mut huge = ticket("huge");
    huge["padding"] = Value::String("x".repeat(17 * 1024 * 1024));
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests
        .send(flows::batch(records(&ids("ok", 3))))
        .await
        .unwrap();
    requests
        .send(flows::batch(vec![raw("huge", huge)]))
        .await
        .unwrap();
    let (_, summary) = stopped_with(&mut stream, Code::ResourceExhausted, "too large").await;
    assert_eq!(summary.delivered, 3);
    assert_eq!(ticket_count(&sandbox), 3);
    drop(requests);
    server.stop().await;
}

/// Bytes sent as a message as they are, so a test can send what no generated client would.
#[derive(Clone, Debug, Default, PartialEq)]
struct RawMessage(Vec<u8>);

impl prost::Message for RawMessage {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.0.len()
    }

    fn clear(&mut self) {
        self.0.clear();
    }
}

#[tokio::test]
async fn a_malformed_message_ends_the_stream_invalid_argument_after_earlier_results() {
    use prost::Message;

    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    let messages = vec![
        RawMessage(flows::start(&name).encode_to_vec()),
        RawMessage(flows::batch(records(&ids("ok", 2))).encode_to_vec()),
        // Field 2 (records), length-delimited, with a length far past the end.
        RawMessage(vec![0x12, 0xff, 0xff, 0xff, 0x0f, 0x01]),
        RawMessage(flows::batch(records(&ids("late", 2))).encode_to_vec()),
    ];
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let mut stream = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            http::uri::PathAndQuery::from_static(
                "/groove.destination.v1.DeliveryService/SendRecords",
            ),
            tonic_prost::ProstCodec::<RawMessage, proto::SendRecordsResponse>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let (_, summary) = stopped_with(&mut stream, Code::InvalidArgument, "cannot be decoded").await;
    assert_eq!(summary.delivered, 2);
    assert_eq!(ticket_count(&sandbox), 2, "nothing after the bad message");
    server.stop().await;
}

/// `{"a": {"a": … {"leaf": true}}}`, `levels` objects deep.
fn nested(levels: usize) -> Value {
    let mut json = json!({"leaf": true});
    for _ in 1..levels {
        json = json!({ "a": json });
    }
    json
}

fn struct_record(id: &str, json: &Value) -> proto::Record {
    proto::Record {
        id: id.to_string(),
        data: Some(proto::record::Data::Json(JsonObject::from_json(
            json.as_object().unwrap(),
        ))),
    }
}

#[tokio::test]
async fn a_struct_record_nested_64_levels_is_delivered_and_a_deeper_one_refused_alone() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    let mut deep = ticket("deep");
    deep["custom"] = nested(63);
    let mut too_deep = ticket("too-deep");
    too_deep["custom"] = nested(200);
    let answered = send(
        &server,
        &name,
        vec![vec![
            struct_record("deep", &deep),
            struct_record("too-deep", &too_deep),
            raw("plain", ticket("plain")),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("deep").outcome(), Outcome::Delivered);
    assert_eq!(answered.of("plain").outcome(), Outcome::Delivered);
    let refused = answered.of("too-deep");
    assert_eq!(refused.outcome(), Outcome::Invalid);
    assert_eq!(refused.field, "record");
    assert!(
        refused.error.contains("nested too deeply"),
        "{}",
        refused.error
    );
    assert_eq!(tickets_of(&sandbox, "deep"), 1);
    server.stop().await;
}

#[tokio::test]
async fn failed_records_come_back_as_sent_and_can_be_filtered_and_deleted() {
    let (_sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", tickets_config(8, 5)).await;
    // A `mailbox` passes our checks, but Groove (and the sandbox) require `to`: rejected with a 422.
    let raw_text = br#"{"body": "[big] help",  "from": "a@example.com", "mailbox": "support@sandbox.example.com", "n": 12345678901234567890}"#;
    let by_struct = json!({"body": "[struct] help", "from": "a@example.com", "mailbox": "support@sandbox.example.com", "n": 1.5});
    let answered = send(
        &server,
        &name,
        vec![vec![
            proto::Record {
                id: "big".into(),
                data: Some(proto::record::Data::RawJson(raw_text.to_vec())),
            },
            struct_record("struct", &by_struct),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("big").outcome(), Outcome::Rejected);
    assert_eq!(answered.of("struct").outcome(), Outcome::Rejected);

    let listing = |outcome: Outcome| proto::ListFailedRecordsRequest {
        destination: name.clone(),
        outcome: outcome as i32,
        ..Default::default()
    };
    let listed = failed_records(&server, listing(Outcome::Rejected))
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    let big = listed.iter().find(|r| r.name.ends_with("/big")).unwrap();
    assert_eq!(
        big.record.as_ref().unwrap().data,
        Some(proto::record::Data::RawJson(raw_text.to_vec())),
        "raw json comes back byte for byte"
    );
    assert!(!big.maybe_delivered);
    let kept_struct = listed.iter().find(|r| r.name.ends_with("/struct")).unwrap();
    let Some(proto::record::Data::Json(object)) = &kept_struct.record.as_ref().unwrap().data else {
        panic!("a struct comes back as a struct")
    };
    assert_eq!(object.to_json().unwrap(), by_struct);
    assert!(failed_records(&server, listing(Outcome::Failed))
        .await
        .unwrap()
        .is_empty());
    let status = failed_records(&server, listing(Outcome::Delivered))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("outcome"), "{}", status.message());

    let mut delivery = server.delivery().await;
    let status = delivery
        .delete_failed_records(proto::DeleteFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("record_ids"),
        "{}",
        status.message()
    );
    let status = delivery
        .delete_failed_records(proto::DeleteFailedRecordsRequest {
            destination: "destinations/nope".into(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let deleted = delivery
        .delete_failed_records(proto::DeleteFailedRecordsRequest {
            destination: name.clone(),
            all: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deleted.deleted_count, 2);
    assert!(failed_records(&server, listing(Outcome::Unspecified))
        .await
        .unwrap()
        .is_empty());
    server.stop().await;
}
