//! Drives SendRecords the way a producer would: a throughput mode (send 100-record messages as fast as the
//! service reads them, bounded by count and time) and a lockstep mode (one one-record message at a time, for
//! latency).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use groove_destination::proto::{self, delivery_service_client::DeliveryServiceClient, Outcome};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::fail::{BenchError, BenchResult, Context};
use crate::records::{StreamTarget, Tickets, RECORDS_PER_MESSAGE};
use crate::stats::Samples;

/// Messages the client keeps ready beyond what the service has read. Small: the service's own queues are the
/// backpressure being measured, not ours.
const CLIENT_QUEUE: usize = 4;

/// One throughput stream.
#[derive(Clone, Debug)]
pub struct StreamPlan {
    pub target: StreamTarget,
    /// Record-id prefix, unique per run (the service answers repeated ids as duplicates).
    pub run: String,
    pub max_records: u64,
    /// The producer stops sending after this long, then half-closes.
    pub duration: Duration,
    /// After half-closing, how long to wait for the remaining results before dropping the stream.
    pub drain_limit: Duration,
}

#[derive(Debug, Default)]
pub struct StreamOutcome {
    pub sent: u64,
    pub delivered: u64,
    /// Records per outcome other than delivered (e.g. `Failed`), to flag a run that measured errors.
    pub not_delivered: BTreeMap<String, u64>,
    /// Groove calls the service reported in its summary (retries included).
    pub calls: u64,
    /// From opening the stream to its summary (or to the drain cut-off).
    pub elapsed: Duration,
    /// From opening the stream to the producer's last message being queued to the gRPC client (or given up).
    pub sending: Duration,
    /// From opening the stream to the last result before the summary.
    pub last_result: Duration,
    /// The drain limit was hit: the stream was dropped before its summary.
    pub cut: bool,
    /// Each delivered result's `latency` field (first attempt → Groove's answer, inside the service): compared
    /// with the rate it tells time in the Groove call from time queued inside the service.
    pub call_latencies: Samples,
}

impl StreamOutcome {
    pub fn delivered_per_s(&self) -> f64 {
        self.delivered as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// When the producer finished, the last result and the summary came, in seconds from the stream's start:
    /// a big gap between the last result and the summary is time spent persisting outcomes.
    pub fn timeline(&self) -> String {
        format!(
            "sent by {:.1} s, last result {:.1} s, {} {:.1} s",
            self.sending.as_secs_f64(),
            self.last_result.as_secs_f64(),
            if self.cut { "cut at" } else { "summary" },
            self.elapsed.as_secs_f64()
        )
    }

    /// "" when every record was delivered, else e.g. "12 Failed, 3 Rejected".
    pub fn problems(&self) -> String {
        let mut parts: Vec<String> = self
            .not_delivered
            .iter()
            .map(|(outcome, count)| format!("{count} {outcome}"))
            .collect();
        if self.cut {
            parts.push("stream cut before its summary".to_string());
        }
        parts.join(", ")
    }
}

/// Streams records until the plan's count or time is used up, and counts the results.
pub async fn throughput(
    mut client: DeliveryServiceClient<Channel>,
    tickets: &Tickets,
    plan: &StreamPlan,
) -> BenchResult<StreamOutcome> {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    // The server answers the call only after reading `start`, so it must be queued before the call.
    tx.send(plan.target.start()).await.context("queue start")?;
    let started = Instant::now();
    let stop_sending = tokio::time::Instant::now() + plan.duration;
    let cut_off = stop_sending + plan.drain_limit;
    let mut responses = client
        .send_records(ReceiverStream::new(rx))
        .await
        .context(format!("SendRecords to {}", plan.target.destination))?
        .into_inner();
    let producer = tokio::spawn(produce(
        tx,
        tickets.clone(),
        plan.run.clone(),
        plan.max_records,
        stop_sending,
        started,
    ));
    let mut outcome = StreamOutcome::default();
    loop {
        let message = match tokio::time::timeout_at(cut_off, responses.message()).await {
            Err(_) => {
                outcome.cut = true;
                break;
            }
            Ok(message) => message.context("SendRecords stream failed")?,
        };
        let Some(message) = message else {
            return Err(BenchError::new(
                "SendRecords ended without a summary".to_string(),
            ));
        };
        if !message.results.is_empty() {
            for result in &message.results {
                count_result(&mut outcome, result);
            }
            outcome.last_result = started.elapsed();
        }
        if let Some(summary) = message.summary {
            outcome.calls = summary.calls;
            break;
        }
    }
    outcome.elapsed = started.elapsed();
    // Dropping `responses` cancels the call if it was cut; the producer then stops on its closed channel.
    drop(responses);
    (outcome.sent, outcome.sending) = producer.await.context("producer task")?;
    Ok(outcome)
}

/// Sends 100-record messages until `max_records` or `stop_sending`; returns how many records went out and
/// when the last one was taken.
async fn produce(
    tx: mpsc::Sender<proto::SendRecordsRequest>,
    tickets: Tickets,
    run: String,
    max_records: u64,
    stop_sending: tokio::time::Instant,
    started: Instant,
) -> (u64, Duration) {
    let mut sent = 0;
    while sent < max_records && tokio::time::Instant::now() < stop_sending {
        let count = (max_records - sent).min(RECORDS_PER_MESSAGE as u64);
        let message = tickets.message(&run, sent, count);
        // Bounded by time too: a slow (rate-limited) service must not keep the producer past its end.
        match tokio::time::timeout_at(stop_sending, tx.send(message)).await {
            Ok(Ok(())) => sent += count,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    (sent, started.elapsed())
}

fn count_result(outcome: &mut StreamOutcome, result: &proto::DeliveryResult) {
    let records = result.record_ids.len() as u64;
    match result.outcome() {
        Outcome::Delivered => {
            outcome.delivered += records;
            if let Some(latency) = result
                .latency
                .and_then(|latency| Duration::try_from(latency).ok())
            {
                outcome.call_latencies.push(latency);
            }
        }
        other => {
            *outcome
                .not_delivered
                .entry(format!("{other:?}"))
                .or_default() += records;
        }
    }
}

/// Latency samples of a lockstep run.
#[derive(Debug, Default)]
pub struct LockstepOutcome {
    /// At the client: from queueing a one-record message to receiving its result.
    pub end_to_end: Samples,
    /// The result's own `latency` field: first attempt to Groove's answer, measured inside the service.
    pub internal: Samples,
    pub delivered: u64,
    pub not_delivered: u64,
}

/// One record in flight at a time: send a one-record message, wait for its result, repeat; at most `calls`
/// times or for `duration`.
pub async fn lockstep(
    mut client: DeliveryServiceClient<Channel>,
    tickets: &Tickets,
    target: &StreamTarget,
    run: &str,
    calls: u64,
    duration: Duration,
) -> BenchResult<LockstepOutcome> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(target.start()).await.context("queue start")?;
    let mut responses = client
        .send_records(ReceiverStream::new(rx))
        .await
        .context(format!("SendRecords to {}", target.destination))?
        .into_inner();
    let deadline = Instant::now() + duration;
    let mut outcome = LockstepOutcome::default();
    let mut seq = 0;
    while seq < calls && Instant::now() < deadline {
        let sent = Instant::now();
        tx.send(tickets.message(run, seq, 1))
            .await
            .context("SendRecords request stream closed")?;
        let answer = tokio::time::timeout(Duration::from_secs(30), responses.message())
            .await
            .context("no result within 30 s")?
            .context("SendRecords stream failed")?;
        let elapsed = sent.elapsed();
        let Some(result) = answer.and_then(|answer| answer.results.into_iter().next()) else {
            return Err(BenchError::new("expected a result in lockstep mode"));
        };
        if result.outcome() == Outcome::Delivered {
            outcome.delivered += 1;
            outcome.end_to_end.push(elapsed);
            if let Some(latency) = result
                .latency
                .and_then(|latency| Duration::try_from(latency).ok())
            {
                outcome.internal.push(latency);
            }
        } else {
            outcome.not_delivered += 1;
        }
        seq += 1;
    }
    drop(tx);
    // The summary closes the stream; its content adds nothing here.
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = responses.message().await {}
    })
    .await;
    Ok(outcome)
}

/// Sends `records` (100 per message) on one stream, half-closes, and waits for the summary, at most `limit`
/// in all.
pub async fn send_all(
    mut client: DeliveryServiceClient<Channel>,
    target: &StreamTarget,
    records: Vec<proto::Record>,
    limit: Duration,
) -> BenchResult<StreamOutcome> {
    let (tx, rx) = mpsc::channel(CLIENT_QUEUE);
    tx.send(target.start()).await.context("queue start")?;
    let started = Instant::now();
    let mut responses = client
        .send_records(ReceiverStream::new(rx))
        .await
        .context(format!("SendRecords to {}", target.destination))?
        .into_inner();
    let sent = records.len() as u64;
    let producer = tokio::spawn(async move {
        let mut records = records.into_iter().peekable();
        while records.peek().is_some() {
            let message: Vec<proto::Record> = records.by_ref().take(RECORDS_PER_MESSAGE).collect();
            let request = proto::SendRecordsRequest {
                message: Some(proto::send_records_request::Message::Records(
                    proto::RecordBatch { records: message },
                )),
            };
            if tx.send(request).await.is_err() {
                break;
            }
        }
        started.elapsed()
    });
    let mut outcome = StreamOutcome {
        sent,
        ..StreamOutcome::default()
    };
    let read = async {
        while let Some(message) = responses
            .message()
            .await
            .context("SendRecords stream failed")?
        {
            for result in &message.results {
                count_result(&mut outcome, result);
            }
            if !message.results.is_empty() {
                outcome.last_result = started.elapsed();
            }
            if let Some(summary) = message.summary {
                outcome.calls = summary.calls;
                return Ok(());
            }
        }
        Err(BenchError::new("SendRecords ended without a summary"))
    };
    match tokio::time::timeout(limit, read).await {
        Ok(result) => result?,
        Err(_) => outcome.cut = true,
    }
    outcome.elapsed = started.elapsed();
    drop(responses);
    outcome.sending = producer.await.context("producer task")?;
    Ok(outcome)
}
