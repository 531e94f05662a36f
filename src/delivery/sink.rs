//! Where every result of a session goes: counted for the summary, forwarded to the response webhook, queued
//! for the store (outcomes of deliveries) and sent to the client — called directly by whoever produced it (a
//! dispatch worker, or the session for records answered without a call), with no task in between.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use crate::delivery::recorder::Recorder;
use crate::delivery::report::{DeliveryReport, DeliveryUnit, StreamEvent, Summary};
use crate::delivery::webhook::{WebhookForwarder, WebhookTarget};
use crate::metrics::DestinationMetrics;

#[derive(Clone)]
pub(crate) struct ReportSink {
    inner: Arc<Inner>,
}

struct Inner {
    output: mpsc::Sender<StreamEvent>,
    /// Cleared when the client is gone; delivery and recording go on regardless.
    client_listening: AtomicBool,
    recorder: Recorder,
    webhooks: WebhookForwarder,
    destination_id: String,
    destination_name: String,
    webhook: Option<Arc<WebhookTarget>>,
    summary: Mutex<Summary>,
    metrics: DestinationMetrics,
}

impl ReportSink {
    pub fn new(
        output: mpsc::Sender<StreamEvent>,
        recorder: Recorder,
        webhooks: WebhookForwarder,
        destination_id: String,
        destination_name: String,
        webhook_url: Option<&str>,
        metrics: DestinationMetrics,
    ) -> Self {
        let webhook =
            webhook_url.and_then(|url| WebhookTarget::new(url, &destination_name, metrics.clone()));
        ReportSink {
            inner: Arc::new(Inner {
                output,
                client_listening: AtomicBool::new(true),
                recorder,
                webhooks,
                destination_id,
                destination_name,
                webhook,
                summary: Mutex::new(Summary::default()),
                metrics,
            }),
        }
    }

    /// Takes the outcome of records this session claimed: it is stored, and their claims end. Waits while the
    /// store's or the client's queue is full: that is the backpressure.
    pub async fn report(&self, report: DeliveryReport) {
        let inner = &*self.inner;
        inner.recorder.record(&inner.destination_id, &report).await;
        self.answer(report).await;
    }

    /// Takes a result that changes nothing in the store (an invalid record, a duplicate, a replay of a record
    /// that may have been delivered); the session holds no claim on it.
    pub async fn answer(&self, report: DeliveryReport) {
        let inner = &*self.inner;
        inner
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .count(&report);
        inner
            .metrics
            .records(report.outcome, report.record_ids.len());
        if let Some(webhook) = &inner.webhook {
            inner.webhooks.submit(webhook, &report);
        }
        if inner.client_listening.load(Ordering::Relaxed)
            && inner
                .output
                .send(StreamEvent::Report(Box::new(report)))
                .await
                .is_err()
            && inner.client_listening.swap(false, Ordering::Relaxed)
        {
            tracing::info!(destination = %inner.destination_name, "client went away; recording what is in flight");
        }
    }

    /// Lets a claimed unit go unsent: no result, and a later stream sends it.
    pub async fn release(&self, unit: DeliveryUnit) {
        let inner = &*self.inner;
        inner
            .recorder
            .release(&inner.destination_id, unit.record_ids)
            .await;
    }

    /// The counts so far.
    pub fn summary(&self) -> Summary {
        self.inner
            .summary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}
