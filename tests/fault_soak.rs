//! Fault soak: thousands of create_ticket records through the real service binary while Groove (the
//! in-process sandbox) fails about a fifth of the calls, some of them after creating the ticket. One
//! stream is cancelled midway and the server is killed with SIGKILL while another is in flight. The
//! end state must keep the delivery promise: every record ends delivered or kept failed with a
//! reason (exactly one of the two), a record gets a second ticket only when the caller retried an
//! ambiguous failure explicitly, and a record is called a duplicate only when it was delivered.
//!
//! Structure and pacing are fixed; only the sandbox's fault draws and the scheduling vary between
//! runs, so the counts printed vary a little while the rules checked do not.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child::ChildServer;
use common::flows::{self, active_destination, credential, raw, template};
use common::GrpcServer;
use common::{start_sandbox_with, SANDBOX_KEY};
use groove_destination::proto::{self, send_records_request, Outcome};
use groove_sandbox::{Faults, SandboxConfig, SandboxHandle};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;

const RECORDS: usize = 5_000;
const RECORDS_PER_MESSAGE: usize = 100;
const CONCURRENCY: u32 = 16;
/// Stream A's pause between messages: slow enough that it is still sending when it is cancelled.
const FIRST_STREAM_PACE: Duration = Duration::from_millis(40);
/// The replays' pause between messages.
const REPLAY_PACE: Duration = Duration::from_millis(10);
/// Longest wait for the next message of a stream; a stream silent this long counts as hung.
const READ_IDLE: Duration = Duration::from_secs(15);
/// Longest a whole stream may take, so a slow trickle of results cannot hold CI either. A whole
/// run takes seconds; these bounds only turn a hang into a failure with evidence.
const STREAM_DEADLINE: Duration = Duration::from_secs(30);
/// Longest a unary call (listing a page, the explicit retry) may take.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
const FAILED_PAGE_SIZE: i32 = 1_000;
/// Ids shown per violated rule.
const EXAMPLES: usize = 5;
/// Room for every call the soak makes, so the recording is never cut.
const RECORDED_CALLS: usize = 200_000;

fn record_id(index: usize) -> String {
    format!("soak-{index:05}")
}

fn all_ids() -> Vec<String> {
    (0..RECORDS).map(record_id).collect()
}

/// A ticket whose subject (the sandbox's `title`) and body carry the record id, so tickets can be
/// counted per record.
fn record(index: usize) -> proto::Record {
    let id = record_id(index);
    raw(
        &id,
        json!({
            "subject": id,
            "body": format!("soak record {id}"),
            "from": "customer@example.com",
            "to": "support@sandbox.example.com",
        }),
    )
}

fn all_messages() -> Vec<Vec<proto::Record>> {
    let records: Vec<_> = (0..RECORDS).map(record).collect();
    records
        .chunks(RECORDS_PER_MESSAGE)
        .map(<[proto::Record]>::to_vec)
        .collect()
}

/// About a fifth of the calls fail: 8% resets, and 12% of the rest answered 500, 502 or 503; 30% of
/// those faults happen after the ticket was created. The latency keeps calls in flight.
fn main_phase_faults() -> Faults {
    Faults {
        error_rate: 0.12,
        error_statuses: vec![500, 502, 503],
        drop_rate: 0.08,
        processed_share: 0.3,
        latency: Duration::from_millis(3),
        ..Faults::default()
    }
}

/// Whether a result's error says the record may have reached Groove. Results will carry no
/// flag for it; their error text is the contract.
fn says_maybe_delivered(error: &str) -> bool {
    error.contains("may have")
}

/// Whether a kept failed record may have been delivered. The error text decides until the
/// planned `FailedRecord.maybe_delivered` field exists; this is the only place to switch to it.
fn failed_record_maybe_delivered(failed: &proto::FailedRecord) -> bool {
    failed.maybe_delivered
}

fn is_delivered(outcome: Outcome) -> bool {
    matches!(outcome, Outcome::Delivered | Outcome::Duplicate)
}

/// Wall-clock milliseconds, the clock the in-process sandbox stamps its calls with.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

// --- streams ---

/// How a stream ended.
#[derive(Debug)]
enum Ending {
    /// Closed by the server with OK.
    Ok,
    /// Closed by the server (or the transport) with this status.
    Status(tonic::Status),
    /// The test gave up waiting.
    TimedOut(&'static str),
    /// The test cancelled it.
    Cancelled,
}

impl Ending {
    fn label(&self) -> String {
        match self {
            Ending::Ok => "OK".into(),
            Ending::Status(status) => {
                let message: String = status.message().chars().take(80).collect();
                format!("{:?}: {message}", status.code())
            }
            Ending::TimedOut(what) => format!("timed out ({what})"),
            Ending::Cancelled => "cancelled by the test".into(),
        }
    }
}

/// What the reader of a stream collected.
struct Read {
    results: Vec<proto::DeliveryResult>,
    /// When each result arrived ([`now_ms`]), in the order of `results`.
    arrived_ms: Vec<u64>,
    summary: Option<proto::DeliverySummary>,
    ending: Ending,
}

/// A stream being fed and read by two tasks.
struct OpenStream {
    name: &'static str,
    started: Instant,
    cancel: tonic::CancellationHandle,
    messages: Vec<Vec<proto::Record>>,
    messages_sent: Arc<AtomicUsize>,
    feeder: JoinHandle<()>,
    /// Record ids answered so far.
    answered: Arc<AtomicUsize>,
    stop_reading: oneshot::Sender<()>,
    reader: JoinHandle<Read>,
}

/// A finished stream.
struct StreamRun {
    name: &'static str,
    sent: Vec<String>,
    results: Vec<proto::DeliveryResult>,
    /// When each result arrived ([`now_ms`]), in the order of `results`.
    arrived_ms: Vec<u64>,
    summary: Option<proto::DeliverySummary>,
    ending: Ending,
    elapsed: Duration,
}

impl StreamRun {
    fn failed_to_open(name: &'static str, started: Instant, ending: Ending) -> Self {
        StreamRun {
            name,
            sent: Vec::new(),
            results: Vec::new(),
            arrived_ms: Vec::new(),
            summary: None,
            ending,
            elapsed: started.elapsed(),
        }
    }

    fn outcomes(&self) -> impl Iterator<Item = (&str, &proto::DeliveryResult)> {
        self.results.iter().flat_map(|result| {
            result
                .record_ids
                .iter()
                .map(move |id| (id.as_str(), result))
        })
    }

    /// The record ids answered DUPLICATE, with when the answer arrived.
    fn duplicates(&self) -> impl Iterator<Item = (&str, u64)> {
        self.results
            .iter()
            .zip(&self.arrived_ms)
            .filter(|(result, _)| result.outcome() == Outcome::Duplicate)
            .flat_map(|(result, at)| result.record_ids.iter().map(move |id| (id.as_str(), *at)))
    }
}

fn start_message(destination: &str) -> proto::SendRecordsRequest {
    proto::SendRecordsRequest {
        message: Some(send_records_request::Message::Start(proto::StreamStart {
            destination: destination.to_string(),
            result_detail: proto::ResultDetail::OutcomeOnly as i32,
        })),
    }
}

/// Opens a stream that sends every message with `pace` between them. With `hold_open` the
/// request side stays open after the last message (until the test cancels); otherwise it
/// half-closes.
async fn open_stream(
    server: &ChildServer,
    name: &'static str,
    destination: &str,
    pace: Duration,
    hold_open: bool,
) -> Result<OpenStream, StreamRun> {
    let started = Instant::now();
    let (requests, receiver) = mpsc::channel(4);
    requests
        .send(start_message(destination))
        .await
        .expect("queue start");
    let mut request = tonic::Request::new(ReceiverStream::new(receiver));
    // Cancelling through tonic resets the HTTP/2 stream without ending the request side first,
    // which dropping the sender would do: the server must see a cancel, not a half-close.
    let cancel = request.cancellation_handle();
    let mut client = server.delivery().await;
    let opened = tokio::time::timeout(READ_IDLE, client.send_records(request)).await;
    let mut stream = match opened {
        Ok(Ok(response)) => response.into_inner(),
        Ok(Err(status)) => {
            return Err(StreamRun::failed_to_open(
                name,
                started,
                Ending::Status(status),
            ))
        }
        Err(_) => {
            return Err(StreamRun::failed_to_open(
                name,
                started,
                Ending::TimedOut("opening"),
            ))
        }
    };

    let messages = all_messages();
    let messages_sent = Arc::new(AtomicUsize::new(0));
    let feeder = {
        let messages = messages.clone();
        let messages_sent = Arc::clone(&messages_sent);
        tokio::spawn(async move {
            for message in messages {
                if requests.send(flows::batch(message)).await.is_err() {
                    return;
                }
                messages_sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(pace).await;
            }
            if hold_open {
                let _open = requests;
                std::future::pending::<()>().await;
            }
        })
    };

    let answered = Arc::new(AtomicUsize::new(0));
    let (stop_reading, mut stop) = oneshot::channel::<()>();
    let reader = {
        let answered = Arc::clone(&answered);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + STREAM_DEADLINE;
            let mut read = Read {
                results: Vec::new(),
                arrived_ms: Vec::new(),
                summary: None,
                ending: Ending::Ok,
            };
            loop {
                let next = tokio::time::timeout(READ_IDLE, stream.message());
                let message = tokio::select! {
                    biased;
                    _ = &mut stop => {
                        read.ending = Ending::Cancelled;
                        return read;
                    }
                    () = tokio::time::sleep_until(deadline) => {
                        read.ending = Ending::TimedOut("the whole stream");
                        return read;
                    }
                    message = next => message,
                };
                match message {
                    Err(_) => {
                        read.ending = Ending::TimedOut("the next message");
                        return read;
                    }
                    Ok(Err(status)) => {
                        read.ending = Ending::Status(status);
                        return read;
                    }
                    Ok(Ok(None)) => return read,
                    Ok(Ok(Some(message))) => {
                        let ids: usize = message.results.iter().map(|r| r.record_ids.len()).sum();
                        answered.fetch_add(ids, Ordering::SeqCst);
                        let at = now_ms();
                        read.arrived_ms.extend(message.results.iter().map(|_| at));
                        read.results.extend(message.results);
                        if message.summary.is_some() {
                            read.summary = message.summary;
                        }
                    }
                }
            }
        })
    };
    Ok(OpenStream {
        name,
        started,
        cancel,
        messages,
        messages_sent,
        feeder,
        answered,
        stop_reading,
        reader,
    })
}

impl OpenStream {
    /// Waits until `count` record ids were answered or the stream ended; false if neither came
    /// within `within`.
    async fn wait_for_answers(&self, count: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.answered.load(Ordering::SeqCst) >= count || self.reader.is_finished() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }

    /// Cancels without half-closing: the HTTP/2 stream is reset, then the response stream and
    /// the request sender are dropped.
    async fn cancel(self) -> StreamRun {
        self.cancel.cancel();
        let _ = self.stop_reading.send(());
        let read = self.reader.await.expect("reader task");
        self.feeder.abort();
        let sent = self.messages_sent.load(Ordering::SeqCst);
        finished(
            self.name,
            self.started,
            &self.messages,
            sent,
            read,
            Some(Ending::Cancelled),
        )
    }

    /// Reads to the end (or the deadline).
    async fn finish(self) -> StreamRun {
        let read = self.reader.await.expect("reader task");
        if !self.feeder.is_finished() {
            self.cancel.cancel();
            self.feeder.abort();
        }
        let sent = self.messages_sent.load(Ordering::SeqCst);
        finished(self.name, self.started, &self.messages, sent, read, None)
    }
}

fn finished(
    name: &'static str,
    started: Instant,
    messages: &[Vec<proto::Record>],
    messages_sent: usize,
    read: Read,
    ending: Option<Ending>,
) -> StreamRun {
    StreamRun {
        name,
        sent: messages[..messages_sent.min(messages.len())]
            .iter()
            .flatten()
            .map(|record| record.id.clone())
            .collect(),
        results: read.results,
        arrived_ms: read.arrived_ms,
        summary: read.summary,
        ending: ending.unwrap_or(read.ending),
        elapsed: started.elapsed(),
    }
}

/// Streams every record to the end: the replays C and D.
async fn replay_all(server: &ChildServer, name: &'static str, destination: &str) -> StreamRun {
    match open_stream(server, name, destination, REPLAY_PACE, false).await {
        Ok(open) => open.finish().await,
        Err(run) => run,
    }
}

// --- failed records ---

async fn list_failed(
    server: &ChildServer,
    destination: &str,
) -> Result<BTreeMap<String, proto::FailedRecord>, String> {
    let mut client = server.delivery().await;
    let mut listed = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let page = tokio::time::timeout(
            CALL_DEADLINE,
            client.list_failed_records(proto::ListFailedRecordsRequest {
                destination: destination.to_string(),
                page_size: FAILED_PAGE_SIZE,
                page_token: page_token.clone(),
                ..Default::default()
            }),
        )
        .await
        .map_err(|_| "ListFailedRecords timed out".to_string())?
        .map_err(|status| format!("ListFailedRecords failed: {status}"))?
        .into_inner();
        for failed in page.failed_records {
            let id = failed
                .record
                .as_ref()
                .map(|record| record.id.clone())
                .filter(|id| !id.is_empty())
                .or_else(|| failed.name.rsplit('/').next().map(str::to_string))
                .unwrap_or_default();
            if let Some(twice) = listed.insert(id.clone(), failed) {
                return Err(format!("ListFailedRecords listed {id} twice ({twice:?})"));
            }
        }
        if page.next_page_token.is_empty() {
            return Ok(listed);
        }
        page_token = page.next_page_token;
    }
}

// --- the sandbox's side ---

/// One create call as the sandbox saw it.
#[derive(Clone, Copy)]
struct SandboxCall {
    status: u16,
    fault_after_processing: bool,
    arrived_ms: u64,
}

impl SandboxCall {
    fn created_a_ticket(self) -> bool {
        self.fault_after_processing || (200..300).contains(&self.status)
    }

    /// The status, starred when the call took effect behind a fault; 0 is a reset connection.
    fn label(self) -> String {
        if self.fault_after_processing {
            format!("{}*", self.status)
        } else {
            self.status.to_string()
        }
    }
}

/// The create calls per record id, in arrival order.
fn sandbox_calls(sandbox: &SandboxHandle) -> BTreeMap<String, Vec<SandboxCall>> {
    let mut calls: BTreeMap<String, Vec<SandboxCall>> = BTreeMap::new();
    for request in sandbox.requests() {
        if request.method != "POST" || !request.path.ends_with("/tickets") {
            continue;
        }
        let Some(id) = request
            .json
            .as_ref()
            .and_then(|body| body["subject"].as_str())
        else {
            continue;
        };
        calls.entry(id.to_string()).or_default().push(SandboxCall {
            status: request.status,
            fault_after_processing: request.fault_after_processing,
            arrived_ms: request.received_at_ms,
        });
    }
    calls
}

/// Tickets per record id, from the sandbox's own data; tickets that name no record are counted
/// under the empty id.
fn tickets_per_record(sandbox: &SandboxHandle) -> BTreeMap<String, usize> {
    let snapshot = sandbox.snapshot();
    let mut counts = BTreeMap::new();
    for ticket in snapshot["tickets"].as_array().into_iter().flatten() {
        let title = ticket["title"].as_str().unwrap_or_default();
        let id = if title.starts_with("soak-") {
            title.to_string()
        } else {
            String::new()
        };
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

// --- checking ---

/// Everything every stream said about each record, for examples in failure messages.
struct History<'a> {
    runs: &'a [&'a StreamRun],
    retry: &'a [proto::DeliveryResult],
    tickets: &'a BTreeMap<String, usize>,
    calls: &'a BTreeMap<String, Vec<SandboxCall>>,
}

impl History<'_> {
    fn calls_of(&self, id: &str) -> &[SandboxCall] {
        self.calls.get(id).map_or(&[], Vec::as_slice)
    }

    /// The sandbox's answers to the calls that created a ticket for `id`, e.g. `502*,201`.
    fn creating_calls(&self, id: &str) -> String {
        let created: Vec<String> = self
            .calls_of(id)
            .iter()
            .filter(|call| call.created_a_ticket())
            .map(|call| call.label())
            .collect();
        created.join(",")
    }

    fn of(&self, id: &str) -> String {
        let calls: Vec<String> = self.calls_of(id).iter().map(|call| call.label()).collect();
        let mut text = format!(
            "{id} [tickets: {}; sandbox answered: {}]",
            self.tickets.get(id).copied().unwrap_or(0),
            calls.join(",")
        );
        for run in self.runs {
            for (_, result) in run.outcomes().filter(|(answered, _)| *answered == id) {
                let _ = write!(text, " {}: {}", run.name, describe(result));
            }
        }
        for result in self
            .retry
            .iter()
            .filter(|result| result.record_ids.iter().any(|answered| answered == id))
        {
            let _ = write!(text, " retry: {}", describe(result));
        }
        text
    }
}

fn describe(result: &proto::DeliveryResult) -> String {
    let status = result
        .response
        .as_ref()
        .map_or(0, |response| response.http_status);
    if result.error.is_empty() {
        format!("{:?}/{status}", result.outcome())
    } else {
        format!(
            "{:?}/{status} after {} attempts ({})",
            result.outcome(),
            result.attempts,
            result.error
        )
    }
}

/// Every rule checked, in order, and the broken ones with examples.
#[derive(Default)]
struct Verdicts {
    checked: Vec<String>,
    violations: Vec<String>,
}

impl Verdicts {
    fn rule(&mut self, rule: &str, offenders: Vec<String>) {
        let line = if offenders.is_empty() {
            format!("ok    {rule}")
        } else {
            format!("FAIL  {rule}: {} ids", offenders.len())
        };
        self.checked.push(line.clone());
        if !offenders.is_empty() {
            let mut text = line;
            for example in offenders.iter().take(EXAMPLES) {
                let _ = write!(text, "\n        e.g. {example}");
            }
            self.violations.push(text);
        }
    }

    fn fact(&mut self, what: &str, holds: bool, detail: String) {
        self.rule(what, if holds { Vec::new() } else { vec![detail] });
    }
}

/// Per-id counts of one stream's results, and whether they agree with what it sent and its summary.
fn check_stream(run: &StreamRun, verdicts: &mut Verdicts, history: &History<'_>) {
    let mut per_id: BTreeMap<&str, usize> = BTreeMap::new();
    for (id, _) in run.outcomes() {
        *per_id.entry(id).or_insert(0) += 1;
    }
    let repeated: Vec<String> = per_id
        .iter()
        .filter(|(_, count)| **count > 1)
        .map(|(id, count)| format!("{count} results: {}", history.of(id)))
        .collect();
    verdicts.rule(
        &format!("R4 stream {} answers each record id at most once", run.name),
        repeated,
    );
    if !matches!(run.ending, Ending::Ok) {
        return;
    }
    let sent: BTreeSet<&str> = run.sent.iter().map(String::as_str).collect();
    let mut unanswered: Vec<String> = sent
        .iter()
        .filter(|id| !per_id.contains_key(*id))
        .map(|id| history.of(id))
        .collect();
    unanswered.extend(
        per_id
            .keys()
            .filter(|id| !sent.contains(*id))
            .map(|id| format!("answered but never sent: {id}")),
    );
    verdicts.rule(
        &format!(
            "R4 stream {} ended OK and has a result for every record id it sent",
            run.name
        ),
        unanswered,
    );
    let mut counted = proto::DeliverySummary {
        records_received: run.sent.len() as u64,
        ..Default::default()
    };
    for (_, result) in run.outcomes() {
        match result.outcome() {
            Outcome::Delivered => counted.delivered += 1,
            Outcome::Rejected => counted.rejected += 1,
            Outcome::Invalid => counted.invalid += 1,
            Outcome::Failed => counted.failed += 1,
            Outcome::Duplicate => counted.duplicate += 1,
            Outcome::Unspecified => {}
        }
    }
    let mismatch = match &run.summary {
        None => vec!["no summary".to_string()],
        Some(summary) => {
            let reported = proto::DeliverySummary {
                calls: 0,
                ..*summary
            };
            if reported == counted {
                Vec::new()
            } else {
                vec![format!(
                    "summary {reported:?} but the results count {counted:?}"
                )]
            }
        }
    };
    verdicts.rule(
        &format!(
            "R4 stream {} summary matches its results and what was sent",
            run.name
        ),
        mismatch,
    );
}

fn outcome_counts(run: &StreamRun) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (_, result) in run.outcomes() {
        let label = match result.outcome() {
            Outcome::Delivered => "delivered",
            Outcome::Duplicate => "duplicate",
            Outcome::Failed if says_maybe_delivered(&result.error) => "failed_maybe",
            Outcome::Failed => "failed_other",
            Outcome::Rejected => "rejected",
            Outcome::Invalid => "invalid",
            Outcome::Unspecified => "unspecified",
        };
        *counts.entry(label).or_insert(0) += 1;
    }
    counts
}

fn print_stream_table(runs: &[&StreamRun]) {
    println!(
        "{:<6} {:>6} {:>8} {:>9} {:>9} {:>12} {:>12} {:>8} {:>7} {:>8}  ending",
        "stream",
        "sent",
        "answered",
        "delivered",
        "duplicate",
        "failed_maybe",
        "failed_other",
        "rejected",
        "invalid",
        "secs"
    );
    for run in runs {
        let counts = outcome_counts(run);
        let count = |label| counts.get(label).copied().unwrap_or(0);
        println!(
            "{:<6} {:>6} {:>8} {:>9} {:>9} {:>12} {:>12} {:>8} {:>7} {:>8.1}  {}",
            run.name,
            run.sent.len(),
            run.outcomes().count(),
            count("delivered"),
            count("duplicate"),
            count("failed_maybe"),
            count("failed_other"),
            count("rejected"),
            count("invalid"),
            run.elapsed.as_secs_f64(),
            run.ending.label()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_keep_the_delivery_promise_through_faults_a_cancel_and_a_kill() {
    let soak_started = Instant::now();
    let sandbox = start_sandbox_with(SandboxConfig {
        api_key: SANDBOX_KEY.to_string(),
        max_recorded_requests: RECORDED_CALLS,
        ..SandboxConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = ChildServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let mut config = template("create_ticket", &[]);
    config.delivery = Some(proto::DeliveryOptions {
        concurrency: CONCURRENCY,
        ..Default::default()
    });
    let destination = active_destination(&server, "soak", config).await;
    sandbox.set_faults(main_phase_faults());

    // A: paced and held open, cancelled after a quarter of the results.
    let a = match open_stream(&server, "A", &destination, FIRST_STREAM_PACE, true).await {
        Ok(open) => {
            let reached = open.wait_for_answers(RECORDS / 4, STREAM_DEADLINE).await;
            println!(
                "A: {} record ids answered when cancelled (waited for {}: {reached})",
                open.answered.load(Ordering::SeqCst),
                RECORDS / 4
            );
            open.cancel().await
        }
        Err(run) => run,
    };

    // B, opened right after, replays everything from the start; the server is killed with SIGKILL
    // after half of B's results and restarts on the same data dir.
    let b = match open_stream(&server, "B", &destination, REPLAY_PACE, false).await {
        Ok(open) => {
            let reached = open.wait_for_answers(RECORDS / 2, STREAM_DEADLINE).await;
            let answered = open.answered.load(Ordering::SeqCst);
            let killed = server.kill_9();
            println!(
                "B: {answered} record ids answered when the server was killed ({killed}; waited for {}: {reached})",
                RECORDS / 2
            );
            open.finish().await
        }
        Err(run) => {
            server.kill_9();
            run
        }
    };
    server.restart().await;

    let c = replay_all(&server, "C", &destination).await;

    sandbox.set_faults(Faults::default());
    let d = replay_all(&server, "D", &destination).await;

    let mut verdicts = Verdicts::default();
    verdicts.fact(
        "stream D ends OK with a summary",
        matches!(d.ending, Ending::Ok) && d.summary.is_some(),
        format!("D ended {} with summary {:?}", d.ending.label(), d.summary),
    );

    let failed_after_d = match list_failed(&server, &destination).await {
        Ok(listed) => listed,
        Err(problem) => {
            verdicts.fact("ListFailedRecords after D works", false, problem);
            BTreeMap::new()
        }
    };

    // Explicit retries of the records that may have been delivered.
    let retried: Vec<String> = failed_after_d
        .iter()
        .filter(|(_, failed)| failed_record_maybe_delivered(failed))
        .map(|(id, _)| id.clone())
        .collect();
    let mut retry_results = Vec::new();
    let mut retry_answered_ms = 0;
    if !retried.is_empty() {
        let mut client = server.delivery().await;
        let retry = tokio::time::timeout(
            CALL_DEADLINE,
            client.retry_failed_records(proto::RetryFailedRecordsRequest {
                destination: destination.clone(),
                record_ids: retried.clone(),
                all: false,
            }),
        )
        .await;
        match retry {
            Ok(Ok(response)) => {
                retry_answered_ms = now_ms();
                retry_results = response.into_inner().results;
            }
            Ok(Err(status)) => verdicts.fact(
                "RetryFailedRecords of the ambiguous records works",
                false,
                status.to_string(),
            ),
            Err(_) => verdicts.fact(
                "RetryFailedRecords of the ambiguous records works",
                false,
                "timed out".into(),
            ),
        }
    }
    let failed_at_end = list_failed(&server, &destination)
        .await
        .unwrap_or_else(|problem| {
            verdicts.fact("ListFailedRecords after the retries works", false, problem);
            BTreeMap::new()
        });
    let stopped = server.stop().await;

    let tickets = tickets_per_record(&sandbox);
    let calls = sandbox_calls(&sandbox);
    let runs = [&a, &b, &c, &d];
    let history = History {
        runs: &runs,
        retry: &retry_results,
        tickets: &tickets,
        calls: &calls,
    };
    let ids = all_ids();
    let tickets_of = |id: &str| tickets.get(id).copied().unwrap_or(0);

    // --- the table ---
    println!("\n=== fault soak: {RECORDS} records, {RECORDS_PER_MESSAGE} per message, concurrency {CONCURRENCY} ===");
    print_stream_table(&runs);
    let mut retry_counts: BTreeMap<String, usize> = BTreeMap::new();
    for result in &retry_results {
        *retry_counts
            .entry(format!("{:?}", result.outcome()))
            .or_insert(0) += result.record_ids.len();
    }
    let mut ticket_histogram: BTreeMap<usize, usize> = BTreeMap::new();
    for id in &ids {
        *ticket_histogram.entry(tickets_of(id)).or_insert(0) += 1;
    }
    let ambiguous: BTreeSet<&str> = runs
        .iter()
        .flat_map(|run| run.outcomes())
        .filter(|(_, result)| {
            result.outcome() == Outcome::Failed && says_maybe_delivered(&result.error)
        })
        .map(|(id, _)| id)
        .chain(
            failed_after_d
                .iter()
                .filter(|(_, failed)| failed_record_maybe_delivered(failed))
                .map(|(id, _)| id.as_str()),
        )
        .collect();
    let stats = sandbox.stats();
    println!(
        "sandbox: {} tickets created ({} naming no record); calls: {} total, 201: {}, 500: {}, 502: {}, 503: {}, dropped: {}",
        tickets.values().sum::<usize>(),
        tickets_of(""),
        stats.total,
        stats.count(201),
        stats.count(500),
        stats.count(502),
        stats.count(503),
        stats.dropped
    );
    println!(
        "record ids by tickets: {}",
        ticket_histogram
            .iter()
            .map(|(tickets, ids)| format!("{tickets} ticket(s): {ids}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "ambiguous ids (failed, may have been delivered): {}; failed records after D: {}; explicitly retried: {} -> {retry_counts:?}; failed records at the end: {}",
        ambiguous.len(),
        failed_after_d.len(),
        retried.len(),
        failed_at_end.len()
    );
    println!(
        "server stopped with SIGTERM: {stopped}; elapsed {:.1} s",
        soak_started.elapsed().as_secs_f64()
    );

    // --- the rules ---
    let d_outcome: BTreeMap<&str, Outcome> = d
        .outcomes()
        .map(|(id, result)| (id, result.outcome()))
        .collect();
    let retry_outcome: BTreeMap<&str, Outcome> = retry_results
        .iter()
        .flat_map(|result| {
            result
                .record_ids
                .iter()
                .map(move |id| (id.as_str(), result.outcome()))
        })
        .collect();
    let final_state = |delivered: &dyn Fn(&str) -> bool,
                       listed: &BTreeMap<String, proto::FailedRecord>| {
        ids.iter()
            .filter_map(|id| {
                let delivered = delivered(id);
                match listed.get(id) {
                    Some(_) if delivered => Some(format!(
                        "delivered and also listed as failed: {}",
                        history.of(id)
                    )),
                    Some(failed) if failed.error.is_empty() => Some(format!(
                        "listed as failed without a reason: {}",
                        history.of(id)
                    )),
                    Some(_) => None,
                    None if delivered => None,
                    None => Some(format!(
                        "neither delivered nor listed as failed: {}",
                        history.of(id)
                    )),
                }
            })
            .collect::<Vec<_>>()
    };
    let delivered_by_d = |id: &str| d_outcome.get(id).is_some_and(|o| is_delivered(*o));
    verdicts.rule(
        "R1 after D, each record id is either delivered (D: DELIVERED or DUPLICATE) or listed failed with a reason",
        final_state(&delivered_by_d, &failed_after_d),
    );
    let delivered_in_the_end =
        |id: &str| delivered_by_d(id) || retry_outcome.get(id).is_some_and(|o| is_delivered(*o));
    verdicts.rule(
        "R1 after the explicit retries, the same holds (a retry's delivery counts as delivered)",
        final_state(&delivered_in_the_end, &failed_at_end),
    );

    let retried_set: BTreeSet<&str> = retried.iter().map(String::as_str).collect();
    let allowed_tickets = |id: &str| 1 + usize::from(retried_set.contains(id));
    let over: Vec<&String> = ids
        .iter()
        .filter(|id| tickets_of(id) > allowed_tickets(id))
        .collect();
    let mut by_pattern: BTreeMap<String, Vec<&String>> = BTreeMap::new();
    for id in &over {
        by_pattern
            .entry(history.creating_calls(id))
            .or_default()
            .push(id);
    }
    let mut patterns: Vec<(String, Vec<&String>)> = by_pattern.into_iter().collect();
    patterns.sort_by_key(|(_, ids)| std::cmp::Reverse(ids.len()));
    println!(
        "ids over their ticket allowance, by the sandbox's answers to the calls that created their tickets (* = took effect behind the fault): {}",
        patterns
            .iter()
            .map(|(pattern, ids)| format!("{pattern}: {}", ids.len()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    // One example of each pattern first, the commonest first, so the examples show the causes.
    let firsts: Vec<&String> = patterns.iter().map(|(_, ids)| ids[0]).collect();
    let examples = firsts
        .iter()
        .chain(over.iter().filter(|id| !firsts.contains(id)));
    let extra_tickets: Vec<String> = examples
        .map(|id| {
            let retried = if retried_set.contains(id.as_str()) {
                "retried explicitly"
            } else {
                "not retried"
            };
            format!(
                "{retried}, created by {}: {}",
                history.creating_calls(id),
                history.of(id)
            )
        })
        .collect();
    verdicts.rule(
        "R2 at most one ticket per record id (plus one if retried explicitly)",
        extra_tickets,
    );
    verdicts.fact(
        "the sandbox recorded every call",
        sandbox.requests().len() as u64 == sandbox.stats().total,
        format!(
            "{} of {} calls recorded",
            sandbox.requests().len(),
            sandbox.stats().total
        ),
    );
    verdicts.fact(
        "R2 no ticket names an unknown record",
        tickets_of("") == 0,
        format!("{} tickets without a soak record id", tickets_of("")),
    );

    let answered_duplicate: BTreeSet<&str> = runs
        .iter()
        .flat_map(|run| run.outcomes())
        .chain(retry_results.iter().flat_map(|result| {
            result
                .record_ids
                .iter()
                .map(move |id| (id.as_str(), result))
        }))
        .filter(|(_, result)| result.outcome() == Outcome::Duplicate)
        .map(|(id, _)| id)
        .collect();
    let phantom_duplicates: Vec<String> = answered_duplicate
        .iter()
        .filter(|id| tickets_of(id) == 0)
        .map(|id| history.of(id))
        .collect();
    verdicts.rule(
        "R3 a record answered DUPLICATE (any stream) has a ticket",
        phantom_duplicates,
    );
    // Stricter: the ticket must exist when the duplicate is answered, not only by the end (a
    // replay can create it later). Both stamps come from this machine's wall clock; a create
    // call arrives at the sandbox before any answer that depends on it.
    let retry_duplicates = retry_results
        .iter()
        .filter(|result| result.outcome() == Outcome::Duplicate)
        .flat_map(|result| {
            result
                .record_ids
                .iter()
                .map(|id| ("retry", id.as_str(), retry_answered_ms))
        });
    let premature_duplicates: Vec<String> = runs
        .iter()
        .flat_map(|run| run.duplicates().map(|(id, at)| (run.name, id, at)))
        .chain(retry_duplicates)
        .filter(|(_, id, at)| {
            !history
                .calls_of(id)
                .iter()
                .any(|call| call.created_a_ticket() && call.arrived_ms <= *at)
        })
        .map(|(stream, id, at)| {
            let first_ticket = history
                .calls_of(id)
                .iter()
                .find(|call| call.created_a_ticket())
                .map_or("never".to_string(), |call| {
                    format!("{} ms later", call.arrived_ms.saturating_sub(at))
                });
            format!(
                "{stream} answered DUPLICATE before any ticket existed (first create call: {first_ticket}): {}",
                history.of(id)
            )
        })
        .collect();
    verdicts.rule(
        "R3 a record is answered DUPLICATE only once its ticket exists",
        premature_duplicates,
    );

    for run in runs {
        check_stream(run, &mut verdicts, &history);
    }

    println!("--- rules ---\n{}", verdicts.checked.join("\n"));
    assert!(
        verdicts.violations.is_empty(),
        "the delivery promise was broken ({} rules):\n{}",
        verdicts.violations.len(),
        verdicts.violations.join("\n")
    );
}
