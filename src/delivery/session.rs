//! One stream of records for one destination: validate, de-duplicate, render, batch, dispatch, and report
//! every record's outcome exactly once — also when the client goes away or the server shuts down.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};

use crate::delivery::attempt::CallContext;
use crate::delivery::dispatch::Dispatcher;
use crate::delivery::recorder::{InFlight, Recorder};
use crate::delivery::report::{
    DeliveryReport, DeliveryUnit, IncomingRecord, Interruption, PlannedCall, StreamEvent, Summary,
};
use crate::delivery::sink::ReportSink;
use crate::delivery::webhook::WebhookForwarder;
use crate::domain::batching::{Batch, Batcher};
use crate::domain::destination::{Destination, DestinationState};
use crate::domain::outcome::Outcome;
use crate::domain::render::Renderer;
use crate::groove::GrooveAnswer;
use crate::store::{Store, StoreError};

/// Longest record id accepted.
pub const MAX_RECORD_ID_LEN: usize = 256;
/// How often an open stream checks that its destination is still active.
const STATE_CHECK_EVERY: Duration = Duration::from_secs(1);

/// What a session shares with the engine.
#[derive(Clone)]
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub recorder: Recorder,
    pub in_flight: Arc<InFlight>,
    pub webhooks: WebhookForwarder,
    pub shutdown: watch::Receiver<bool>,
}

/// A stream being delivered. Built by [`crate::delivery::Engine::open_session`].
pub struct Session {
    pub(crate) destination: Destination,
    pub(crate) name: String,
    pub(crate) renderer: Arc<Renderer>,
    pub(crate) context: CallContext,
    pub(crate) shared: Shared,
}

/// A record that passed the checks and is on its way to Groove.
struct Accepted {
    id: String,
    json: Arc<[u8]>,
}

impl Session {
    /// Delivers everything `input` yields, sending a report per unit and, last, the summary to `output`.
    /// Returns when every accepted record has an outcome that is committed to the store. If `output` is
    /// closed (the client went away), delivery and recording go on regardless.
    pub async fn run<S>(self, input: S, output: mpsc::Sender<StreamEvent>) -> Summary
    where
        S: Stream<Item = Vec<IncomingRecord>> + Send + Unpin,
    {
        let reports = ReportSink::new(
            output.clone(),
            self.shared.recorder.clone(),
            self.shared.webhooks.clone(),
            self.destination.id.clone(),
            self.name.clone(),
            self.destination.config.response_webhook.clone(),
        );
        let dispatcher = Dispatcher::start(self.context.clone(), reports.clone());
        let (received, interruption) = self.pump(input, &dispatcher, &reports).await;
        dispatcher.finish().await;
        let mut summary = reports.summary();
        self.shared.recorder.flush().await;
        summary.records_received = received;
        let _ = output.send(StreamEvent::Summary(summary.clone())).await;
        if let Some(interruption) = interruption {
            let _ = output.send(StreamEvent::Interrupted(interruption)).await;
        }
        summary
    }

    /// Reads the input until it ends, the server shuts down or the destination stops being active; returns how
    /// many records it received, and why it stopped early when it did.
    async fn pump<S>(
        &self,
        mut input: S,
        dispatcher: &Dispatcher,
        reports: &ReportSink,
    ) -> (u64, Option<Interruption>)
    where
        S: Stream<Item = Vec<IncomingRecord>> + Send + Unpin,
    {
        let mut received = 0;
        let mut interruption = None;
        // Polled rather than pushed: it works the same when another replica pauses the destination.
        let mut state_checks =
            tokio::time::interval_at(Instant::now() + STATE_CHECK_EVERY, STATE_CHECK_EVERY);
        let mut batcher = self
            .destination
            .config
            .batching
            .enabled
            .then(|| Batcher::new(&self.destination.config.batching));
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            let deadline = batcher.as_ref().and_then(|batcher| batcher.next_deadline());
            tokio::select! {
                biased;
                () = stopping(&mut shutdown) => {
                    tracing::info!(destination = %self.name, "shutting down: no more records read from the stream");
                    break;
                }
                _ = state_checks.tick() => {
                    if let Some(stop) = self.check_still_active().await {
                        tracing::info!(destination = %self.name, reason = %stop, "stream stopped: destination no longer active");
                        interruption = Some(stop);
                        break;
                    }
                }
                () = sleep_until_deadline(deadline) => {
                    if let Some(batcher) = batcher.as_mut() {
                        for batch in batcher.take_due(std::time::Instant::now()) {
                            dispatcher.dispatch(batch_unit(batch)).await;
                        }
                    }
                }
                message = input.next() => match message {
                    Some(records) => {
                        received += records.len() as u64;
                        self.accept(records, dispatcher, batcher.as_mut(), reports).await;
                    }
                    None => break,
                },
            }
        }
        if let Some(mut batcher) = batcher {
            for batch in batcher.flush() {
                dispatcher.dispatch(batch_unit(batch)).await;
            }
        }
        (received, interruption)
    }

    /// `None` while the destination is active; a store hiccup is not a reason to stop.
    async fn check_still_active(&self) -> Option<Interruption> {
        match self
            .shared
            .store
            .get_destination(&self.destination.id)
            .await
        {
            Ok(current) if current.state == DestinationState::Active => None,
            Ok(current) => Some(Interruption::NotActive(format!(
                "destination {} is {}; records after the last result were not read",
                self.name,
                current.state.as_str()
            ))),
            Err(StoreError::NotFound { .. }) => Some(Interruption::Deleted(format!(
                "destination {} was deleted; records after the last result were not read",
                self.name
            ))),
            Err(error) => {
                tracing::warn!(%error, destination = %self.name, "cannot check the destination's state");
                None
            }
        }
    }

    async fn accept(
        &self,
        records: Vec<IncomingRecord>,
        dispatcher: &Dispatcher,
        mut batcher: Option<&mut Batcher<Accepted>>,
        reports: &ReportSink,
    ) {
        let accepted = self.admit(records, reports).await;
        for record in accepted {
            let rendered = match self.renderer.render(&record.json) {
                Ok(rendered) => rendered,
                Err(violations) => {
                    let field = violations
                        .0
                        .first()
                        .map(|violation| violation.field.clone())
                        .unwrap_or_default();
                    reports
                        .report(DeliveryReport::invalid(
                            record.id,
                            field,
                            violations.to_string(),
                        ))
                        .await;
                    continue;
                }
            };
            match batcher.as_deref_mut() {
                Some(batcher) => {
                    let now = std::time::Instant::now();
                    for call in rendered.calls {
                        for batch in batcher.push(
                            now,
                            call,
                            rendered.group_key.clone(),
                            Accepted {
                                id: record.id.clone(),
                                json: record.json.clone(),
                            },
                        ) {
                            dispatcher.dispatch(batch_unit(batch)).await;
                        }
                    }
                }
                None => {
                    let unit = DeliveryUnit {
                        record_ids: vec![record.id],
                        records: vec![record.json],
                        calls: rendered.calls.into_iter().map(PlannedCall::from).collect(),
                        ordering_key: rendered.ordering_key,
                    };
                    dispatcher.dispatch(unit).await;
                }
            }
        }
    }

    /// Checks ids and JSON, refuses repeats (in this message, in flight elsewhere, or already delivered) and
    /// claims the rest for delivery.
    async fn admit(&self, records: Vec<IncomingRecord>, reports: &ReportSink) -> Vec<Accepted> {
        let mut seen = HashSet::with_capacity(records.len());
        let mut candidates = Vec::with_capacity(records.len());
        for record in records {
            if record.id.is_empty() {
                reports
                    .report(DeliveryReport::invalid(
                        record.id,
                        "record.id",
                        "record id is required",
                    ))
                    .await;
                continue;
            }
            if record.id.len() > MAX_RECORD_ID_LEN {
                reports
                    .report(DeliveryReport::invalid(
                        record.id,
                        "record.id",
                        format!("record id is longer than {MAX_RECORD_ID_LEN} bytes"),
                    ))
                    .await;
                continue;
            }
            if !seen.insert(record.id.clone()) {
                reports
                    .report(duplicate(
                        record.id,
                        None,
                        "record id repeated in the same message",
                    ))
                    .await;
                continue;
            }
            match record.json {
                Ok(json) => candidates.push(Accepted {
                    id: record.id,
                    json: Arc::from(json),
                }),
                Err(problem) => {
                    reports
                        .report(DeliveryReport::invalid(record.id, "record", problem))
                        .await
                }
            }
        }
        let ids: Vec<&str> = candidates.iter().map(|record| record.id.as_str()).collect();
        let claims = self.shared.in_flight.claim(&self.destination.id, &ids);
        let mut claimed = Vec::with_capacity(candidates.len());
        for (record, claimed_now) in candidates.into_iter().zip(claims) {
            if claimed_now {
                claimed.push(record);
            } else {
                reports
                    .report(duplicate(
                        record.id,
                        None,
                        "record id is being delivered by another stream",
                    ))
                    .await;
            }
        }
        if claimed.is_empty() {
            return claimed;
        }
        let ids = claimed.iter().map(|record| record.id.clone()).collect();
        let delivered_before = match self
            .shared
            .store
            .ledger_lookup(&self.destination.id, ids)
            .await
        {
            Ok(found) => found,
            Err(error) => {
                // Without the ledger a replay cannot be told apart; sending could duplicate, so don't.
                tracing::error!(%error, destination = %self.name, "ledger lookup failed; records kept as failed");
                let failed: Vec<String> = claimed.iter().map(|record| record.id.clone()).collect();
                let records = claimed.iter().map(|record| record.json.clone()).collect();
                reports
                    .report(DeliveryReport {
                        record_ids: failed,
                        outcome: Outcome::Failed,
                        answer: None,
                        attempts: 0,
                        latency: Duration::ZERO,
                        error: "cannot check the delivery ledger; not sent".to_string(),
                        field: String::new(),
                        call: None,
                        records,
                    })
                    .await;
                return Vec::new();
            }
        };
        if delivered_before.is_empty() {
            return claimed;
        }
        let mut fresh = Vec::with_capacity(claimed.len());
        let mut repeated = Vec::new();
        for record in claimed {
            match delivered_before.get(&record.id) {
                Some(entry) => {
                    repeated.push(record.id.clone());
                    let original = GrooveAnswer {
                        status: entry.http_status,
                        headers: Default::default(),
                        body: entry.response_body.clone(),
                        latency: Duration::ZERO,
                    };
                    reports
                        .report(duplicate(
                            record.id,
                            Some(original),
                            "record id was delivered before; not sent again",
                        ))
                        .await;
                }
                None => fresh.push(record),
            }
        }
        self.shared
            .in_flight
            .release(&self.destination.id, &repeated);
        fresh
    }
}

fn duplicate(record_id: String, original: Option<GrooveAnswer>, why: &str) -> DeliveryReport {
    DeliveryReport {
        record_ids: vec![record_id],
        outcome: Outcome::Duplicate,
        answer: original,
        attempts: 0,
        latency: Duration::ZERO,
        error: why.to_string(),
        field: String::new(),
        call: None,
        records: Vec::new(),
    }
}

fn batch_unit(batch: Batch<Accepted>) -> DeliveryUnit {
    let (record_ids, records) = batch
        .items
        .into_iter()
        .map(|record| (record.id, record.json))
        .unzip();
    DeliveryUnit {
        record_ids,
        records,
        calls: vec![PlannedCall {
            method: batch.method,
            url: batch.url,
            headers: batch.headers,
            body: batch.body.into(),
        }],
        // A batch's records travel together; batches themselves go out in parallel.
        ordering_key: None,
    }
}

/// Resolves once the server begins shutting down (never, if the engine is gone without shutting down).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_deadline(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}
