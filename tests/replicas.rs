//! Several replicas (separate processes) on one PostgreSQL database, delivering to one sandbox: what running
//! more than one instance promises. A record reaches Groove once whichever replica it is sent through, even
//! through two at the same moment; a replica killed mid-stream leaves nothing lost and nothing sent twice
//! (except records answered as maybe delivered); a pause or a new key on one replica holds for streams on the
//! others; and together the replicas keep to the account's one rate limit.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::child::{ChildOptions, ChildServer};
use common::flows::{self, active_destination, credential, raw, send, template};
use common::{start_sandbox, GrpcServer, SANDBOX_KEY};
use groove_destination::proto::{self, Outcome};
use groove_sandbox::{Faults, SandboxHandle};
use serde_json::{json, Value};
use test_postgres::TestDatabase;
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use tonic::Code;

/// How long a replica's claims outlive it: short, so the kill test does not wait long for them.
const LEASE: &str = "2s";

/// Tests of this file run side by side, except one that measures a rate: it runs alone, so that the other
/// tests' processes do not take the cores its replicas pace by.
static SIDE_BY_SIDE: RwLock<()> = RwLock::const_new(());

/// A test's hold on [`SIDE_BY_SIDE`].
enum Turn {
    SideBySide {
        _guard: RwLockReadGuard<'static, ()>,
    },
    Alone {
        _guard: RwLockWriteGuard<'static, ()>,
    },
}

/// Replicas of one service on one fresh database, each with its own work dir (logs; no data of its own).
struct Replicas {
    servers: Vec<ChildServer>,
    _dirs: Vec<tempfile::TempDir>,
    _database: TestDatabase,
    _turn: Turn,
}

impl Replicas {
    async fn start(count: usize, sandbox: &SandboxHandle) -> Replicas {
        let turn = Turn::SideBySide {
            _guard: SIDE_BY_SIDE.read().await,
        };
        Self::start_in_turn(count, sandbox, turn).await
    }

    /// [`Replicas::start`], with no other test of this file running meanwhile.
    async fn start_alone(count: usize, sandbox: &SandboxHandle) -> Replicas {
        let turn = Turn::Alone {
            _guard: SIDE_BY_SIDE.write().await,
        };
        Self::start_in_turn(count, sandbox, turn).await
    }

    async fn start_in_turn(count: usize, sandbox: &SandboxHandle, turn: Turn) -> Replicas {
        let database = TestDatabase::create().await;
        let mut servers = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..count {
            let dir = tempfile::tempdir().unwrap();
            let options = ChildOptions {
                args: vec![
                    "--database-url".into(),
                    database.url().into(),
                    "--replica-lease".into(),
                    LEASE.into(),
                ],
                ..ChildOptions::default()
            };
            servers.push(ChildServer::start_with(dir.path(), &sandbox.base_url(), options).await);
            dirs.push(dir);
        }
        Replicas {
            servers,
            _dirs: dirs,
            _database: database,
            _turn: turn,
        }
    }

    /// Credential `main` and the active destination `tickets` creating tickets with `concurrency` calls in
    /// flight, made through the first replica; returns the destination's name.
    async fn tickets_destination(&self, concurrency: u32) -> String {
        credential(self.get(0), "main").await;
        active_destination(self.get(0), "tickets", tickets_config(concurrency)).await
    }

    fn get(&self, index: usize) -> &ChildServer {
        &self.servers[index]
    }

    async fn stop(mut self) {
        for server in &mut self.servers {
            if server.pid().is_some() {
                let status = server.stop().await;
                assert!(status.success(), "{status}\n{}", server.log_tail());
            }
        }
    }
}

/// A ticket whose body names its record, so the sandbox's tickets can be counted per record.
fn ticket(record_id: &str) -> Value {
    json!({"body": format!("[{record_id}] help"), "from": "customer@example.com", "to": "support@sandbox.example.com"})
}

fn records(ids: &[String]) -> Vec<proto::Record> {
    ids.iter().map(|id| raw(id, ticket(id))).collect()
}

fn ids(prefix: &str, count: usize) -> Vec<String> {
    (0..count)
        .map(|index| format!("{prefix}-{index:04}"))
        .collect()
}

/// Tickets in the sandbox per record id (from the `[id] help` body of the tickets made from [`ticket`]).
fn tickets_per_record(sandbox: &SandboxHandle) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for ticket in sandbox.snapshot()["tickets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let text = ticket.to_string();
        if let Some(end) = text.find("] help") {
            if let Some(start) = text[..end].rfind('[') {
                *counts.entry(text[start + 1..end].to_string()).or_insert(0) += 1;
            }
        }
    }
    counts
}

fn tickets_config(concurrency: u32) -> proto::DestinationConfig {
    proto::DestinationConfig {
        delivery: Some(proto::DeliveryOptions {
            concurrency,
            ..Default::default()
        }),
        ..template("create_ticket", &[])
    }
}

#[tokio::test]
async fn what_one_replica_creates_the_others_read() {
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(3, &sandbox).await;
    let name = replicas.tickets_destination(4).await;

    for index in 1..3 {
        let read = replicas
            .get(index)
            .destinations()
            .await
            .get_destination(proto::GetDestinationRequest { name: name.clone() })
            .await
            .unwrap()
            .into_inner()
            .destination
            .unwrap();
        assert_eq!(read.name, name);
        assert_eq!(read.state(), proto::destination::State::Active);
        let credentials = replicas
            .get(index)
            .credentials()
            .await
            .list_credentials(proto::ListCredentialsRequest::default())
            .await
            .unwrap()
            .into_inner()
            .credentials;
        assert_eq!(credentials.len(), 1, "{credentials:?}");
    }
    replicas.stop().await;
}

#[tokio::test]
async fn a_replay_through_another_replica_answers_duplicates_and_creates_nothing() {
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(3, &sandbox).await;
    let name = replicas.tickets_destination(8).await;
    let all = ids("r", 120);

    let first = send(replicas.get(0), &name, vec![records(&all)])
        .await
        .unwrap();
    assert_eq!(first.summary.unwrap().delivered, 120);
    for replica in 1..3 {
        let replay = send(replicas.get(replica), &name, vec![records(&all)])
            .await
            .unwrap();
        let summary = replay.summary.unwrap();
        assert_eq!(summary.duplicate, 120, "replica {replica}: {summary:?}");
        assert_eq!(summary.calls, 0, "replica {replica}: {summary:?}");
    }
    let tickets = tickets_per_record(&sandbox);
    assert_eq!(tickets.len(), 120);
    assert!(tickets.values().all(|count| *count == 1), "{tickets:?}");
    replicas.stop().await;
}

#[tokio::test]
async fn records_sent_through_two_replicas_at_once_are_created_once() {
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(2, &sandbox).await;
    let name = replicas.tickets_destination(4).await;
    // Slow enough that both replicas look the records up before either has an outcome.
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    });
    let all = ids("t", 60);

    let (first, second) = tokio::join!(
        send(replicas.get(0), &name, vec![records(&all)]),
        send(replicas.get(1), &name, vec![records(&all)]),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    for answered in [&first, &second] {
        let summary = answered.summary.unwrap();
        assert_eq!(summary.unanswered, 0, "{summary:?}");
    }
    for id in &all {
        let mut outcomes = [first.of(id).outcome(), second.of(id).outcome()];
        outcomes.sort_by_key(|outcome| *outcome as i32);
        let mut expected = [Outcome::Delivered, Outcome::Duplicate];
        expected.sort_by_key(|outcome| *outcome as i32);
        assert_eq!(outcomes, expected, "{id}");
    }
    let tickets = tickets_per_record(&sandbox);
    assert_eq!(tickets.len(), 60);
    assert!(tickets.values().all(|count| *count == 1), "{tickets:?}");
    replicas.stop().await;
}

/// Updates may be repeated, but replicas still do not send one at the same time: each record's call is made
/// once, and the other replica answers it as a duplicate.
#[tokio::test]
async fn updates_sent_through_two_replicas_at_once_are_sent_once() {
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(2, &sandbox).await;
    let tickets = replicas.tickets_destination(1).await;
    send(replicas.get(0), &tickets, vec![records(&ids("new", 1))])
        .await
        .unwrap();
    let number = sandbox.snapshot()["tickets"][0]["number"].clone();
    let states = active_destination(
        replicas.get(0),
        "states",
        proto::DestinationConfig {
            delivery: Some(proto::DeliveryOptions {
                concurrency: 4,
                ..Default::default()
            }),
            ..template("update_ticket_state", &[("ticket_number", "{number}")])
        },
    )
    .await;
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    });
    sandbox.clear_requests();
    let all = ids("s", 40);
    let updates: Vec<proto::Record> = all
        .iter()
        .map(|id| raw(id, json!({"number": number, "state": "pending"})))
        .collect();

    let (first, second) = tokio::join!(
        send(replicas.get(0), &states, vec![updates.clone()]),
        send(replicas.get(1), &states, vec![updates]),
    );
    let (first, second) = (first.unwrap(), second.unwrap());
    for id in &all {
        let mut outcomes = [first.of(id).outcome(), second.of(id).outcome()];
        outcomes.sort_by_key(|outcome| *outcome as i32);
        let mut expected = [Outcome::Delivered, Outcome::Duplicate];
        expected.sort_by_key(|outcome| *outcome as i32);
        assert_eq!(outcomes, expected, "{id}");
    }
    let puts = sandbox
        .requests()
        .iter()
        .filter(|request| request.method == "PUT")
        .count();
    assert_eq!(puts, all.len());
    replicas.stop().await;
}

#[tokio::test]
async fn a_replica_killed_mid_stream_loses_nothing_and_creates_nothing_twice() {
    let sandbox = start_sandbox().await;
    let mut replicas = Replicas::start(2, &sandbox).await;
    let name = replicas.tickets_destination(8).await;
    // Slow enough that the kill lands with calls on the wire.
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(150),
        ..Faults::default()
    });
    let all = ids("k", 200);

    let (requests, mut stream) = flows::open(replicas.get(0), &name).await;
    requests.send(flows::batch(records(&all))).await.unwrap();
    let before_kill = flows::next_results(&mut stream, 24).await;
    let killed = replicas.servers[0].kill_9();
    assert!(!killed.success(), "{killed}");
    drop(requests);
    let delivered_before: Vec<String> = before_kill
        .iter()
        .filter(|result| result.outcome() == Outcome::Delivered)
        .flat_map(|result| result.record_ids.clone())
        .collect();
    assert!(!delivered_before.is_empty());

    let resent = send(replicas.get(1), &name, vec![records(&all)])
        .await
        .unwrap();
    let summary = resent.summary.unwrap();
    assert_eq!(summary.unanswered, 0, "{summary:?}");
    let tickets = tickets_per_record(&sandbox);
    let mut maybe_delivered = 0;
    for id in &all {
        let result = resent.of(id);
        let created = tickets.get(id).copied().unwrap_or(0);
        match result.outcome() {
            Outcome::Delivered | Outcome::Duplicate => {
                assert_eq!(created, 1, "{id} answered {:?}", result.outcome())
            }
            Outcome::Failed => {
                maybe_delivered += 1;
                assert!(created <= 1, "{id} created {created} times");
                assert!(
                    result.error.contains("may have"),
                    "{id} failed without being ambiguous: {}",
                    result.error
                );
            }
            other => panic!("{id} answered {other:?}: {result:?}"),
        }
    }
    // A result streams back only once its outcome is committed: whatever was answered delivered stays so.
    for id in &delivered_before {
        assert_eq!(
            resent.of(id).outcome(),
            Outcome::Duplicate,
            "{id} was delivered before the kill"
        );
    }
    assert!(maybe_delivered > 0, "the kill left nothing in flight");
    let failed = replicas
        .get(1)
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
    assert_eq!(failed.len(), maybe_delivered);
    assert!(failed.iter().all(|record| record.maybe_delivered));
    replicas.servers.remove(0);
    replicas.stop().await;
}

#[tokio::test]
async fn pausing_on_one_replica_stops_a_stream_on_another_within_a_second() {
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(2, &sandbox).await;
    let name = replicas.tickets_destination(1).await;
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(50),
        ..Faults::default()
    });
    let all = ids("p", 200);
    let (requests, mut stream) = flows::open(replicas.get(1), &name).await;
    requests.send(flows::batch(records(&all))).await.unwrap();
    flows::next_results(&mut stream, 1).await;

    replicas
        .get(0)
        .destinations()
        .await
        .pause_destination(proto::PauseDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    let paused_at = Instant::now();
    let (answered, ended) = flows::drain_to_end(&mut stream).await;
    let stopped_after = paused_at.elapsed();
    let status = ended.expect_err("the stream ends with a status, not OK");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("paused"), "{}", status.message());
    assert!(
        stopped_after < Duration::from_secs(1),
        "the stream on the other replica stopped {stopped_after:?} after the pause"
    );
    let summary = answered.summary.unwrap();
    assert!(summary.unanswered > 0, "{summary:?}");
    drop(requests);
    replicas.stop().await;
}

/// Sends five records named `prefix-N` through an open stream and waits until each is answered delivered.
async fn deliver_five(
    requests: &tokio::sync::mpsc::Sender<proto::SendRecordsRequest>,
    stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
    prefix: &str,
) {
    requests
        .send(flows::batch(records(&ids(prefix, 5))))
        .await
        .unwrap();
    let results = flows::next_results(stream, 5).await;
    assert!(
        results.iter().all(|r| r.outcome() == Outcome::Delivered),
        "{results:?}"
    );
}

/// A key stored through one replica is the one a stream open on another replica sends from then on: a second
/// after the change, the old key is refused by Groove and every call carries the new one.
#[tokio::test]
async fn a_key_changed_on_one_replica_is_sent_by_a_stream_on_another() {
    const NEW_KEY: &str = "sandbox-new-key-9876543210";
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start(2, &sandbox).await;
    let name = replicas.tickets_destination(1).await;
    let (requests, mut stream) = flows::open(replicas.get(1), &name).await;
    deliver_five(&requests, &mut stream, "before").await;

    // UpdateCredential checks the new key with Groove: both work until the change is made.
    sandbox.set_api_keys(&[SANDBOX_KEY, NEW_KEY]);
    replicas
        .get(0)
        .credentials()
        .await
        .update_credential(proto::UpdateCredentialRequest {
            name: "credentials/main".into(),
            api_key: NEW_KEY.into(),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["api_key".into()],
            }),
            ..Default::default()
        })
        .await
        .expect("update credential");
    sandbox.set_api_keys(&[NEW_KEY]);
    tokio::time::sleep(Duration::from_secs(1)).await;

    deliver_five(&requests, &mut stream, "after").await;
    drop(requests);
    let (_, ended) = flows::drain_to_end(&mut stream).await;
    ended.unwrap();
    let keys_after: Vec<String> = sandbox
        .requests()
        .iter()
        .filter(|request| request.method == "POST" && request.body.contains("[after-"))
        .map(|request| {
            request
                .header("authorization")
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(keys_after.len(), 5);
    assert!(
        keys_after
            .iter()
            .all(|key| key == &format!("Bearer {NEW_KEY}")),
        "{keys_after:?}"
    );
    replicas.stop().await;
}

/// The calls each replica (by the `[rN-…]` record ids in the bodies) made in each of the sandbox's rate-limit
/// windows, told apart by the first call of a window being answered `X-RateLimit-Remaining: limit - 1`.
fn calls_per_window(sandbox: &SandboxHandle, limit: u32) -> Vec<[u32; 3]> {
    let mut windows: Vec<[u32; 3]> = Vec::new();
    for request in sandbox.requests().iter().filter(|r| r.method == "POST") {
        let remaining = request
            .response_header("x-ratelimit-remaining")
            .and_then(|value| value.parse::<u32>().ok());
        if remaining == Some(limit - 1) && request.status != 429 {
            windows.push([0; 3]);
        }
        let replica = request
            .body
            .find("[r")
            .and_then(|at| request.body[at + 2..].chars().next())
            .and_then(|digit| digit.to_digit(10));
        if let (Some(window), Some(replica)) = (windows.last_mut(), replica) {
            window[replica as usize % 3] += 1;
        }
    }
    windows
}

/// The account's limit is one for all replicas: three replicas sending at once together reach at least 95% of
/// it, and Groove refuses at most 1% of their calls. The first window or two go to learning the window's length
/// (Reset is whole seconds, so the first window is paced as though it could last up to two): a run of over half
/// a minute keeps that one-time cost from passing for the steady rate.
#[tokio::test]
async fn three_replicas_share_one_rate_limit() {
    const LIMIT: u32 = 50;
    const PER_REPLICA: usize = 600;
    let sandbox = start_sandbox().await;
    let replicas = Replicas::start_alone(3, &sandbox).await;
    let name = replicas.tickets_destination(8).await;
    sandbox.set_faults(Faults {
        rate_limit: Some(format!("{LIMIT}/1s").parse().unwrap()),
        ..Faults::default()
    });

    let sends = (0..3).map(|replica| {
        let all = ids(&format!("r{replica}"), PER_REPLICA);
        let server = replicas.get(replica);
        let name = name.clone();
        async move { send(server, &name, vec![records(&all)]).await }
    });
    for answered in futures::future::join_all(sends).await {
        let answered = answered.unwrap();
        let summary = answered.summary.unwrap();
        assert_eq!(summary.unanswered, 0, "{summary:?}");
        assert_eq!(summary.delivered as usize, PER_REPLICA, "{summary:?}");
    }

    let calls: Vec<(u64, u16)> = sandbox
        .requests()
        .iter()
        .filter(|request| request.method == "POST")
        .map(|request| (request.received_at_ms, request.status))
        .collect();
    let refused = calls.iter().filter(|(_, status)| *status == 429).count();
    let first = calls.iter().map(|(at, _)| *at).min().unwrap();
    let last = calls.iter().map(|(at, _)| *at).max().unwrap();
    let mut per_second = vec![0u32; ((last - first) / 1000 + 1) as usize];
    for (at, status) in &calls {
        if *status != 429 {
            per_second[((at - first) / 1000) as usize] += 1;
        }
    }
    // From the first call to the last: the whole run, its ramp-up and its tail included.
    let rate = (3 * PER_REPLICA) as f64 / ((last - first) as f64 / 1000.0);
    let report = format!(
        "{rate:.1} calls/s of {LIMIT}, {refused} of {} calls refused; per second {per_second:?}; \
         per window of the sandbox, calls from each replica: {:?}",
        calls.len(),
        calls_per_window(&sandbox, LIMIT)
    );
    eprintln!("{report}");
    assert!(rate >= 0.95 * f64::from(LIMIT), "{report}");
    assert!(refused as f64 <= 0.01 * calls.len() as f64, "{report}");
    replicas.stop().await;
}
