//! Where every result of a session goes: counted for the summary, forwarded to the response webhook, queued
//! for the store (outcomes of deliveries) and sent to the client. Whoever produced a result (a dispatch worker,
//! or the session for records answered without a call) hands it over with no task in between; the session's
//! answering task then sends the results in the order they were handed over, each only once its outcome is
//! committed, so that a record answered delivered is found delivered by any replay, even after a crash.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::delivery::recorder::{Committed, Recorder};
use crate::delivery::report::{DeliveryReport, DeliveryUnit, StreamEvent, Summary};
use crate::delivery::webhook::{WebhookForwarder, WebhookTarget};
use crate::metrics::DestinationMetrics;

/// Results handed over and not yet sent (most wait for their outcome's commit); a full queue slows the
/// session's workers down, so the results of one slow commit or one slow client stay bounded.
const HELD_RESULTS: usize = 1024;

#[derive(Clone)]
pub(crate) struct ReportSink {
    inner: Arc<Inner>,
}

struct Inner {
    held: mpsc::Sender<Held>,
    recorder: Recorder,
    destination_id: String,
    summary: Arc<Mutex<Summary>>,
    /// The client is answered outcomes only: results need not keep the call made.
    outcomes_only: bool,
}

enum Held {
    /// A result, sent once its outcome is committed (`None`: nothing to commit).
    Result(Option<Committed>, Box<DeliveryReport>),
    /// Answered once every result before it is sent.
    Drained(oneshot::Sender<()>),
}

/// The answering task's side: what it needs to send a result.
struct Answering {
    output: mpsc::Sender<StreamEvent>,
    /// Cleared when the client is gone; delivery and recording go on regardless.
    client_listening: bool,
    webhooks: WebhookForwarder,
    destination_name: String,
    webhook: Option<Arc<WebhookTarget>>,
    summary: Arc<Mutex<Summary>>,
    metrics: DestinationMetrics,
}

/// Whose results a sink takes, and what they keep.
pub(crate) struct ResultsOf<'a> {
    pub destination_id: String,
    pub destination_name: String,
    pub webhook_url: Option<&'a str>,
    pub metrics: DestinationMetrics,
    /// The client is answered outcomes only.
    pub outcomes_only: bool,
}

impl ReportSink {
    /// Starts the session's answering task, which ends once every clone of the sink is dropped.
    pub fn start(
        output: mpsc::Sender<StreamEvent>,
        recorder: Recorder,
        webhooks: WebhookForwarder,
        results_of: ResultsOf<'_>,
    ) -> Self {
        let ResultsOf {
            destination_id,
            destination_name,
            webhook_url,
            metrics,
            outcomes_only,
        } = results_of;
        let webhook =
            webhook_url.and_then(|url| WebhookTarget::new(url, &destination_name, metrics.clone()));
        let summary = Arc::new(Mutex::new(Summary::default()));
        let (held, receiver) = mpsc::channel(HELD_RESULTS);
        let answering = Answering {
            output,
            client_listening: true,
            webhooks,
            destination_name,
            webhook,
            summary: summary.clone(),
            metrics,
        };
        tokio::spawn(answering.run(receiver).in_current_span());
        ReportSink {
            inner: Arc::new(Inner {
                held,
                recorder,
                destination_id,
                summary,
                outcomes_only,
            }),
        }
    }

    /// Takes the outcome of records this session claimed: it is stored, their claims end, and the client hears
    /// it once it is committed. Waits while the store's queue or the results held are full: that is the
    /// backpressure.
    pub async fn report(&self, report: DeliveryReport) {
        let inner = &*self.inner;
        let committed = inner.recorder.record(&inner.destination_id, &report).await;
        self.hold(Held::Result(Some(committed), self.lighter(report)))
            .await;
    }

    /// Takes a result that changes nothing in the store (an invalid record, a duplicate, a replay of a record
    /// that may have been delivered); the session holds no claim on it.
    pub async fn answer(&self, report: DeliveryReport) {
        self.hold(Held::Result(None, self.lighter(report))).await;
    }

    /// Lets a claimed unit go unsent: no result, and a later stream sends it.
    pub async fn release(&self, unit: DeliveryUnit) {
        let inner = &*self.inner;
        inner
            .recorder
            .release(&inner.destination_id, unit.record_ids)
            .await;
    }

    /// Waits until every result handed over so far is sent (or dropped, the client being gone).
    pub async fn drain(&self) {
        let (done, wait) = oneshot::channel();
        self.hold(Held::Drained(done)).await;
        let _ = wait.await;
    }

    /// The counts of the results sent so far.
    pub fn summary(&self) -> Summary {
        self.inner
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Drops what no answer shows before the result waits: the records' JSON (stored by now if kept at all)
    /// and, for outcome-only answers, the call made.
    fn lighter(&self, mut report: DeliveryReport) -> Box<DeliveryReport> {
        report.records = Vec::new();
        if self.inner.outcomes_only {
            report.call = None;
        }
        Box::new(report)
    }

    async fn hold(&self, held: Held) {
        if self.inner.held.send(held).await.is_err() {
            tracing::error!(destination = %self.inner.destination_id, "the answering task stopped; result not sent");
        }
    }
}

impl Answering {
    async fn run(mut self, mut held: mpsc::Receiver<Held>) {
        while let Some(next) = held.recv().await {
            match next {
                Held::Result(committed, report) => {
                    if let Some(committed) = committed {
                        committed.wait().await;
                    }
                    self.send(report).await;
                }
                Held::Drained(done) => {
                    let _ = done.send(());
                }
            }
        }
    }

    async fn send(&mut self, report: Box<DeliveryReport>) {
        self.summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(&report);
        self.metrics
            .records(report.outcome, report.record_ids.len());
        if let Some(webhook) = &self.webhook {
            self.webhooks.submit(webhook, &report);
        }
        if self.client_listening && self.output.send(StreamEvent::Report(report)).await.is_err() {
            self.client_listening = false;
            tracing::info!(destination = %self.destination_name, "client went away; recording what is in flight");
        }
    }
}
