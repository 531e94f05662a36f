//! Persists outcomes in group commits: delivered ids into the ledger, rejected and failed records into the
//! failed-records store. One task for the whole server; whatever queued up while the previous commit ran goes
//! into the next one, so the number of transactions stays small however fast results arrive.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::delivery::report::DeliveryReport;
use crate::domain::outcome::Outcome;
use crate::domain::render::display_headers;
use crate::store::{FailedRecordEntry, LedgerEntry, Store, StoredRequest, LEDGER_BODY_CAP};

/// Reports waiting for the next commit (a report covers up to a batch of records); a full queue slows the
/// sessions down, never loses a result. Small, because memory must stay flat however fast records arrive.
const QUEUE_CAPACITY: usize = 256;
/// Most reports in one commit.
const MAX_GROUP: usize = 512;
/// How long the recorder gathers outcomes into one commit; bounds the fsyncs to a few hundred per second.
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(2);
/// Groove's answer kept with a failed record is cut to this many bytes.
const FAILED_BODY_CAP: usize = 16 * 1024;
/// Tries of one group commit against a failing store (about 6 s in all).
const PERSIST_ATTEMPTS: u32 = 6;
const PERSIST_FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(200);

enum Message {
    /// One report's entries, built by the caller so the report itself can move on to the client.
    Outcome {
        delivered: Vec<LedgerEntry>,
        failed: Vec<FailedRecordEntry>,
        /// Claims to release once committed: (destination id, record ids).
        release: Option<(String, Vec<String>)>,
    },
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Record ids being delivered right now, per destination: a replay that arrives before the first delivery is
/// committed must still be caught.
#[derive(Default)]
pub struct InFlight {
    ids: Mutex<HashMap<String, HashSet<String>>>,
}

impl InFlight {
    /// Claims each id for delivery; `false` where another delivery already holds it.
    pub fn claim(&self, destination_id: &str, record_ids: &[&str]) -> Vec<bool> {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = ids.entry(destination_id.to_string()).or_default();
        record_ids
            .iter()
            .map(|id| held.insert((*id).to_string()))
            .collect()
    }

    pub fn release(&self, destination_id: &str, record_ids: &[String]) {
        let mut ids = self
            .ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(held) = ids.get_mut(destination_id) {
            for id in record_ids {
                held.remove(id);
            }
            if held.is_empty() {
                ids.remove(destination_id);
            }
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Message>,
}

impl Recorder {
    pub fn start(store: Arc<dyn Store>, in_flight: Arc<InFlight>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(store, in_flight, receiver));
        Recorder { queue }
    }

    /// Queues an outcome. Claims on its record ids are released once it is committed (duplicates hold none).
    pub async fn record(&self, destination_id: &str, report: &DeliveryReport) {
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let now_ms = crate::delivery::engine::now_ms();
        collect(destination_id, report, now_ms, &mut delivered, &mut failed);
        let release = (report.outcome != Outcome::Duplicate)
            .then(|| (destination_id.to_string(), report.record_ids.clone()));
        let message = Message::Outcome {
            delivered,
            failed,
            release,
        };
        if self.queue.send(message).await.is_err() {
            tracing::error!(destination = %destination_id, "outcome recorder stopped; outcome not persisted");
        }
    }

    /// Waits until every outcome queued so far is committed.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.queue.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn run(
    store: Arc<dyn Store>,
    in_flight: Arc<InFlight>,
    mut receiver: mpsc::Receiver<Message>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = receiver.recv().await {
        group.push(first);
        // Gather for a moment: every commit costs an fsync, and results do not wait for commits.
        let deadline = tokio::time::Instant::now() + GATHER_FOR;
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(message) => group.push(message),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(message)) => group.push(message),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        commit(&*store, &in_flight, group.drain(..)).await;
    }
}

async fn commit(store: &dyn Store, in_flight: &InFlight, messages: impl Iterator<Item = Message>) {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    let mut released: Vec<(String, Vec<String>)> = Vec::new();
    let mut flushes = Vec::new();
    for message in messages {
        match message {
            Message::Flush(done) => flushes.push(done),
            Message::Outcome {
                delivered: mut more_delivered,
                failed: mut more_failed,
                release,
            } => {
                delivered.append(&mut more_delivered);
                failed.append(&mut more_failed);
                released.extend(release);
            }
        }
    }
    if !delivered.is_empty() || !failed.is_empty() {
        persist(store, delivered, failed).await;
    }
    for (destination_id, record_ids) in released {
        in_flight.release(&destination_id, &record_ids);
    }
    for done in flushes {
        let _ = done.send(());
    }
}

/// Writes one group, retrying a failing store for a while: an outcome that never reaches the ledger would let a
/// replay send its record again.
async fn persist(store: &dyn Store, delivered: Vec<LedgerEntry>, failed: Vec<FailedRecordEntry>) {
    let mut backoff = PERSIST_FIRST_BACKOFF;
    for attempt in 1..=PERSIST_ATTEMPTS {
        match store
            .record_outcomes(delivered.clone(), failed.clone())
            .await
        {
            Ok(()) => return,
            Err(error) if attempt < PERSIST_ATTEMPTS => {
                tracing::warn!(%error, attempt, "cannot persist delivery outcomes; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(error) => tracing::error!(
                %error,
                delivered = delivered.len(),
                failed = failed.len(),
                "delivery outcomes lost: the store refused them; replays of these records will be sent again"
            ),
        }
    }
}

fn collect(
    destination_id: &str,
    report: &DeliveryReport,
    now_ms: i64,
    delivered: &mut Vec<LedgerEntry>,
    failed: &mut Vec<FailedRecordEntry>,
) {
    let status = report.answer.as_ref().map_or(0, |answer| answer.status);
    match report.outcome {
        Outcome::Delivered => {
            // A batch's answer is about all its records: copying it into every record's entry would multiply
            // it by the batch size, so batched records keep the status only.
            let body = match (&report.answer, report.record_ids.len()) {
                (Some(answer), 1) => &answer.body[..answer.body.len().min(LEDGER_BODY_CAP)],
                _ => &[][..],
            };
            delivered.extend(report.record_ids.iter().map(|record_id| LedgerEntry {
                destination_id: destination_id.to_string(),
                record_id: record_id.clone(),
                http_status: status,
                response_body: body.to_vec(),
                attempts: report.attempts,
                delivered_at_ms: now_ms,
            }));
        }
        Outcome::Rejected | Outcome::Failed => {
            // A batch's body holds every record of the batch; each record is kept on its own anyway, so the
            // stored request of a batched record has no body.
            let batched = report.record_ids.len() > 1;
            let request = report.call.as_ref().map(|call| StoredRequest {
                method: call.method.as_str().to_string(),
                url: call.url.to_string(),
                headers: display_headers(&call.headers, !call.body.is_empty()),
                body: if batched {
                    Vec::new()
                } else {
                    call.body.to_vec()
                },
            });
            let (headers, body) = report
                .answer
                .as_ref()
                .map(|answer| {
                    let body = &answer.body[..answer.body.len().min(FAILED_BODY_CAP)];
                    (answer.header_pairs(), body.to_vec())
                })
                .unwrap_or_default();
            for (record_id, record) in report.record_ids.iter().zip(&report.records) {
                failed.push(FailedRecordEntry {
                    destination_id: destination_id.to_string(),
                    record_id: record_id.clone(),
                    record_json: record.to_vec(),
                    outcome: report.outcome,
                    request: request.clone(),
                    http_status: status,
                    response_headers: headers.clone(),
                    response_body: body.clone(),
                    error: report.error.clone(),
                    attempts: report.attempts,
                    first_failure_ms: now_ms,
                    last_failure_ms: now_ms,
                });
            }
        }
        Outcome::Invalid | Outcome::Duplicate => {}
    }
}
