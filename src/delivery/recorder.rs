//! Persists outcomes in group commits: delivered ids into the ledger, rejected and failed records into the
//! failed-records store, and ends the records' claims with them. One task for the whole server; whatever queued
//! up while the previous commit ran goes into the next one, so the number of transactions stays small however
//! fast results arrive. A record id is let go in memory, and its result may be sent, only once its outcome is
//! committed: a stream waiting for the id then finds the outcome in the store, and a record answered delivered
//! stays known as delivered through a crash.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::delivery::backoff::Backoff;
use crate::delivery::in_flight::InFlight;
use crate::delivery::report::DeliveryReport;
use crate::domain::outcome::Outcome;
use crate::metrics::Metrics;
use crate::store::{
    FailedRecordEntry, LedgerEntry, Store, StoreError, StoredRequest, LEDGER_BODY_CAP,
};

/// Reports waiting for the next commit (a report covers up to a batch of records); a full queue slows the
/// sessions down, never loses a result. Small, because memory must stay flat however fast records arrive.
const QUEUE_CAPACITY: usize = 256;
/// Most reports in one commit.
const MAX_GROUP: usize = 512;
/// How long the recorder gathers outcomes into one commit when they come together; bounds the fsyncs to a few
/// hundred per second.
const GATHER_FOR: std::time::Duration = std::time::Duration::from_millis(2);
/// Groove's answer kept with a failed record is cut to this many bytes.
const FAILED_BODY_CAP: usize = 16 * 1024;
/// Tries of one group commit against a failing store.
const PERSIST_ATTEMPTS: u32 = 6;
/// Waits between them: ceilings 0.4, 0.8, 1.6, 3.2 and 6.4 s, so about 6 s in all on average (at most 12.4 s).
const PERSIST_BACKOFF: Backoff = Backoff::new(
    std::time::Duration::from_millis(400),
    std::time::Duration::from_millis(6_400),
);

enum Message {
    /// One report's entries, built by the caller so the report itself can move on to the client.
    Outcome {
        delivered: Vec<LedgerEntry>,
        failed: Vec<FailedRecordEntry>,
        /// Records whose claims end without a stored outcome (an outcome that is not kept).
        unrecorded: Vec<(String, String)>,
        /// Ids to let go in memory once committed: (destination id, record ids).
        in_flight: (String, Vec<String>),
        /// Told once the commit is over.
        committed: oneshot::Sender<()>,
    },
    /// Records let go unsent: their claims end, and their ids are let go in memory.
    Release {
        destination_id: String,
        record_ids: Vec<String>,
    },
    /// Answered once everything queued before it is committed.
    Flush(oneshot::Sender<()>),
}

/// Resolves once an outcome's commit is over (stored, or given up on after the store kept refusing it).
pub struct Committed(oneshot::Receiver<()>);

impl Committed {
    pub async fn wait(self) {
        // An error means the recorder is gone, which only happens when the server stops: nothing more to wait
        // for.
        let _ = self.0.await;
    }
}

#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<Message>,
}

impl Recorder {
    /// Starts the recorder task; its commits show in `metrics` (`None`: metrics are off).
    pub fn start(
        store: Arc<dyn Store>,
        in_flight: Arc<InFlight>,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(store, in_flight, metrics, receiver));
        Recorder { queue }
    }

    /// Queues the outcome of records this server claimed; their claims end once it is committed, which the
    /// returned [`Committed`] tells.
    pub async fn record(&self, destination_id: &str, report: &DeliveryReport) -> Committed {
        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let now_ms = crate::delivery::clock::now_ms();
        collect(destination_id, report, now_ms, &mut delivered, &mut failed);
        let unrecorded = if report.outcome.is_recorded() {
            Vec::new()
        } else {
            report
                .record_ids
                .iter()
                .map(|record_id| (destination_id.to_string(), record_id.clone()))
                .collect()
        };
        let (committed, when_committed) = oneshot::channel();
        let message = Message::Outcome {
            delivered,
            failed,
            unrecorded,
            in_flight: (destination_id.to_string(), report.record_ids.clone()),
            committed,
        };
        if self.queue.send(message).await.is_err() {
            tracing::error!(destination = %destination_id, "outcome recorder stopped; outcome not persisted");
        }
        Committed(when_committed)
    }

    /// Lets claimed records go unsent: a later stream sends them.
    pub async fn release(&self, destination_id: &str, record_ids: Vec<String>) {
        let message = Message::Release {
            destination_id: destination_id.to_string(),
            record_ids,
        };
        if self.queue.send(message).await.is_err() {
            tracing::error!(destination = %destination_id, "outcome recorder stopped; claims not released");
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
    metrics: Option<Arc<Metrics>>,
    mut receiver: mpsc::Receiver<Message>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    let mut last_group = 0;
    while let Some(first) = receiver.recv().await {
        group.push(first);
        // Results wait for their commit, so gathering costs every result its time; it pays only when outcomes
        // arrive together, which the last group tells. Alone, a commit goes at once.
        let gather_for = if last_group > 1 {
            GATHER_FOR
        } else {
            std::time::Duration::ZERO
        };
        let deadline = tokio::time::Instant::now() + gather_for;
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(message) => group.push(message),
                Err(mpsc::error::TryRecvError::Disconnected) => break,
                Err(mpsc::error::TryRecvError::Empty) if gather_for.is_zero() => break,
                Err(mpsc::error::TryRecvError::Empty) => {
                    match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(message)) => group.push(message),
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
        last_group = group.len();
        commit(&*store, &in_flight, metrics.as_deref(), group.drain(..)).await;
    }
}

async fn commit(
    store: &dyn Store,
    in_flight: &InFlight,
    metrics: Option<&Metrics>,
    messages: impl Iterator<Item = Message>,
) {
    let mut delivered = Vec::new();
    let mut failed = Vec::new();
    let mut unclaimed: Vec<(String, String)> = Vec::new();
    let mut let_go: Vec<(String, Vec<String>)> = Vec::new();
    let mut waiting = Vec::new();
    for message in messages {
        match message {
            Message::Flush(done) => waiting.push(done),
            Message::Outcome {
                delivered: mut more_delivered,
                failed: mut more_failed,
                mut unrecorded,
                in_flight,
                committed,
            } => {
                delivered.append(&mut more_delivered);
                failed.append(&mut more_failed);
                unclaimed.append(&mut unrecorded);
                let_go.push(in_flight);
                waiting.push(committed);
            }
            Message::Release {
                destination_id,
                record_ids,
            } => {
                unclaimed.extend(
                    record_ids
                        .iter()
                        .map(|record_id| (destination_id.clone(), record_id.clone())),
                );
                let_go.push((destination_id, record_ids));
            }
        }
    }
    if !delivered.is_empty() || !failed.is_empty() {
        let (outcomes, records) = (delivered.len(), failed.len());
        let started = std::time::Instant::now();
        let stored = persist("delivery outcomes", outcomes + records, || {
            store.record_outcomes(delivered.clone(), failed.clone())
        })
        .await;
        if let (true, Some(metrics)) = (stored, metrics) {
            metrics.ledger_commit(started.elapsed(), outcomes + records);
            count_failed_stored(metrics, &failed);
        }
    }
    if !unclaimed.is_empty() {
        persist("record claims to release", unclaimed.len(), || {
            store.release_claims(unclaimed.clone())
        })
        .await;
    }
    for (destination_id, record_ids) in let_go {
        in_flight.release(&destination_id, &record_ids);
    }
    for done in waiting {
        let _ = done.send(());
    }
}

/// Counts the failed records a commit stored, per destination: one series lookup per run of a destination's
/// entries, which a group holds together.
fn count_failed_stored(metrics: &Metrics, failed: &[FailedRecordEntry]) {
    for run in failed.chunk_by(|a, b| a.destination_id == b.destination_id) {
        metrics.failed_stored(&run[0].destination_id, run.len() as u64);
    }
}

/// Runs one group's write, retrying a failing store for a while: an outcome that never reaches the store would
/// let a replay send its record again, and a claim never released would turn into a failure at the next start.
/// Says whether the write was stored.
async fn persist<F, W>(what: &str, records: usize, mut write: W) -> bool
where
    W: FnMut() -> F,
    F: Future<Output = Result<(), StoreError>>,
{
    for attempt in 1..=PERSIST_ATTEMPTS {
        match write().await {
            Ok(()) => return true,
            Err(error) if attempt < PERSIST_ATTEMPTS => {
                tracing::warn!(%error, attempt, what, "cannot write to the store; retrying");
                PERSIST_BACKOFF.wait(attempt).await;
            }
            Err(error) => tracing::error!(
                %error,
                what,
                records,
                "lost: the store refused them; replays of these records may be sent again"
            ),
        }
    }
    false
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
            let destination: Arc<str> = Arc::from(destination_id);
            delivered.extend(report.record_ids.iter().map(|record_id| LedgerEntry {
                destination_id: Arc::clone(&destination),
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
                headers: call.display_headers(),
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
                    record_json: record.bytes.to_vec(),
                    record_encoding: record.encoding,
                    maybe_delivered: report.maybe_delivered,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    fn failing_store() -> StoreError {
        StoreError::internal("writing", "disk on fire")
    }

    /// Runs `persist` against a store that fails `failures` times; the writes made and the time waited.
    async fn persist_failing(failures: u32) -> (u32, Duration) {
        let writes = AtomicU32::new(0);
        let began = tokio::time::Instant::now();
        persist("outcomes", 1, || {
            let write = writes.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                if write <= failures {
                    Err(failing_store())
                } else {
                    Ok(())
                }
            }
        })
        .await;
        (writes.load(Ordering::SeqCst), began.elapsed())
    }

    fn ceilings(retries: u32) -> Duration {
        (1..=retries).map(|n| PERSIST_BACKOFF.ceiling(n)).sum()
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_outcome_is_committed_at_once_and_outcomes_that_came_together_are_gathered() {
        use crate::store::{SecretBox, SqliteStore};

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(dir.path(), SecretBox::generate().unwrap()).unwrap());
        let recorder = Recorder::start(store, Arc::new(InFlight::default()), None);
        let delivered = |id: &str| DeliveryReport::unsent(id.to_string(), Outcome::Delivered, "");
        // Paused time moves only when every task waits for a timer: a commit that does not gather takes none.
        let began = tokio::time::Instant::now();
        recorder.record("d", &delivered("a")).await.wait().await;
        assert_eq!(began.elapsed(), Duration::ZERO);

        // Queued before the recorder runs again, so they share a commit; the next one is then gathered for.
        let first = recorder.record("d", &delivered("b")).await;
        let second = recorder.record("d", &delivered("c")).await;
        first.wait().await;
        second.wait().await;
        assert_eq!(began.elapsed(), Duration::ZERO);
        recorder.record("d", &delivered("e")).await.wait().await;
        assert_eq!(began.elapsed(), GATHER_FOR);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_store_is_retried_with_backoff() {
        assert_eq!(persist_failing(0).await, (1, Duration::ZERO));
        let (writes, waited) = persist_failing(3).await;
        assert_eq!(writes, 4);
        assert!(waited <= ceilings(3), "{waited:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_keeps_failing_is_given_up_on() {
        let (writes, waited) = persist_failing(u32::MAX).await;
        assert_eq!(writes, PERSIST_ATTEMPTS);
        assert!(waited <= ceilings(PERSIST_ATTEMPTS - 1), "{waited:?}");
    }
}
