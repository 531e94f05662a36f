//! One stream of records for one destination: validate, check each id's state, render, batch, claim, dispatch,
//! and answer every record it read exactly once and truthfully — or, when the stream stops early, let go of
//! what it has not sent so that a replay sends it.
//!
//! A record id is held in memory by one delivery at a time ([`InFlight`]). A copy that arrives while its id is
//! held (from another stream, or earlier in this one) waits until that delivery has ended and its outcome is
//! stored, and is then answered from the store: a duplicate only if it was delivered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::{FuturesOrdered, FuturesUnordered};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::attempt::CallContext;
use crate::delivery::claimer::{Claimer, Handed};
use crate::delivery::dispatch::Dispatcher;
use crate::delivery::in_flight::{Claim, InFlight};
use crate::delivery::plan::{Planned, Planner};
use crate::delivery::recorder::Recorder;
use crate::delivery::report::{
    DeliveryReport, DeliveryUnit, IncomingRecord, Interruption, PlannedCall, RecordJson,
    StreamEvent, Summary,
};
use crate::delivery::sink::{ReportSink, ResultsOf};
use crate::delivery::webhook::WebhookForwarder;
use crate::domain::batching::Batch;
use crate::domain::destination::{Destination, DestinationState};
use crate::domain::outcome::Outcome;
use crate::domain::render::Renderer;
use crate::groove::GrooveAnswer;
use crate::store::{Change, RecordState, Store, StoreError, Subscription};

/// Longest record id accepted.
pub const MAX_RECORD_ID_LEN: usize = 256;
/// How often a record another replica is sending is looked up again.
const CLAIMED_ELSEWHERE_RECHECK: Duration = Duration::from_millis(200);
/// Records of one stream waiting for another delivery of their id; beyond it the stream is not read until
/// some of them are answered, so memory stays bounded.
const MAX_WAITING: usize = 1024;
/// Messages whose ids are being looked up in the store while the intake reads on: a lookup is a round trip to
/// the store, and one at a time it, not the work, would set the pace of a stream of small messages.
const LOOKUPS_AHEAD: usize = 4;

/// What the answer to a record that may have been delivered says.
pub const MAYBE_DELIVERED_REPLAY: &str =
    "an earlier attempt may have created it in groove; not sent again on \
     its own: retry it with RetryFailedRecords if a second copy is acceptable";

/// What a session shares with the engine.
#[derive(Clone)]
pub(crate) struct Shared {
    pub store: Arc<dyn Store>,
    pub recorder: Recorder,
    pub in_flight: Arc<InFlight>,
    pub webhooks: WebhookForwarder,
    pub shutdown: watch::Receiver<bool>,
    /// How often an open stream also reads its destination's state.
    pub destination_check_every: Duration,
}

/// What a session does with a record id that failed in a way that may have reached Groove.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replays {
    /// Answer it failed without sending: a stream replaying its input must not create it twice.
    Refuse,
    /// Send it again: the caller asked for exactly these records to be retried.
    Resend,
}

/// A stream being delivered. Built by [`crate::delivery::Engine::open_session`].
pub struct Session {
    pub(crate) destination: Destination,
    pub(crate) name: String,
    pub(crate) renderer: Arc<Renderer>,
    pub(crate) context: CallContext,
    pub(crate) shared: Shared,
    pub(crate) replays: Replays,
    /// Whether the client is answered outcomes only, so results need not keep the requests sent.
    pub(crate) outcomes_only: bool,
    /// Changes heard since just before the destination was read for this session.
    pub(crate) changes: Subscription,
}

/// A record that passed the first checks: its id is well-formed and its JSON is there.
#[derive(Clone)]
struct Candidate {
    id: String,
    json: RecordJson,
}

/// Why the session stopped, set once by whoever noticed first; the token tells everything waiting.
#[derive(Clone, Default)]
struct Stop {
    token: CancellationToken,
    reason: Arc<Mutex<Option<Interruption>>>,
}

impl Stop {
    fn stop(&self, why: Interruption) {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert(why);
        self.token.cancel();
    }

    fn reason(&self) -> Option<Interruption> {
        self.reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Session {
    /// Makes the session send records that may have been delivered (an explicit retry) instead of refusing
    /// them.
    pub fn resending_maybe_delivered(mut self) -> Self {
        self.replays = Replays::Resend;
        self
    }

    /// Makes the session keep only what an outcome-only answer shows while its results wait to be sent: a
    /// batch's request body can be far larger than its result.
    pub fn answering_outcomes_only(mut self) -> Self {
        self.outcomes_only = true;
        self
    }

    /// Delivers what `input` yields, sending a report per unit and, last, the summary (and why the stream
    /// stopped, if it stopped early) to `output`. Returns when every record sent has an outcome committed to
    /// the store. If the client goes away (`output` closes), the server shuts down or the destination stops
    /// being active, it stops reading and sending: calls on the wire finish and are recorded, the rest is let
    /// go unanswered.
    pub async fn run<S>(mut self, input: S, output: mpsc::Sender<StreamEvent>) -> Summary
    where
        S: Stream<Item = Result<Vec<IncomingRecord>, Interruption>> + Send + Unpin,
    {
        let _open = self.context.metrics.open_stream();
        let reports = ReportSink::start(
            output.clone(),
            self.shared.recorder.clone(),
            self.shared.webhooks.clone(),
            ResultsOf {
                destination_id: self.destination.id.clone(),
                destination_name: self.name.clone(),
                webhook_url: self.destination.config.response_webhook.as_deref(),
                metrics: self.context.metrics.clone(),
                outcomes_only: self.outcomes_only,
            },
        );
        let stop = Stop::default();
        let watcher = tokio::spawn(
            watch_for_stop(
                Watched {
                    store: self.shared.store.clone(),
                    changes: std::mem::replace(&mut self.changes, Subscription::closed()),
                    check_every: self.shared.destination_check_every,
                    destination_id: self.destination.id.clone(),
                    name: self.name.clone(),
                },
                self.shared.shutdown.clone(),
                output.clone(),
                stop.clone(),
            )
            .in_current_span(),
        );
        let dispatcher =
            Dispatcher::start(self.context.clone(), reports.clone(), stop.token.clone());
        let (claimer, mut handed, sending) = Claimer::start(
            self.shared.store.clone(),
            self.destination.id.clone(),
            self.name.clone(),
            dispatcher,
            reports.clone(),
            stop.token.clone(),
        );
        let mut intake = Intake {
            session: &self,
            claimer,
            reports: &reports,
            stop: &stop,
            planner: Planner::new(self.renderer.clone(), &self.destination.config.batching),
            waiting: FuturesUnordered::new(),
            lookups: FuturesOrdered::new(),
            handed: &mut handed,
            unsettled: 0,
            received: 0,
        };
        let unreadable = intake.read(input).await;
        let received = intake.received;
        intake.let_go_of_lookups().await;
        intake.flush_batcher().await;
        // Dropping the intake ends the claim stage's input (records still waiting for another delivery of
        // their id are forgotten with it: unanswered); the stage then lets the workers finish.
        drop(intake);
        if let Err(error) = sending.await {
            tracing::error!(%error, destination = %self.name, "the claim stage failed");
        }
        // Only a stopped session leaves units refused by the store behind: they stay unanswered, and their ids
        // are let go in memory (the claims on them are another process's).
        while let Ok(Handed { refused, .. }) = handed.try_recv() {
            for unit in refused {
                self.shared
                    .in_flight
                    .release(&self.destination.id, &unit.record_ids);
            }
        }
        watcher.abort();
        self.shared.recorder.flush().await;
        reports.drain().await;
        let mut summary = reports.summary();
        summary.records_received = received;
        summary.unanswered = received.saturating_sub(summary.answered());
        let _ = output.send(StreamEvent::Summary(summary.clone())).await;
        if let Some(interruption) = stop.reason().or(unreadable) {
            let _ = output.send(StreamEvent::Interrupted(interruption)).await;
        }
        summary
    }
}

/// The reading side of a session: from client messages to dispatched units.
struct Intake<'a> {
    session: &'a Session,
    claimer: Claimer,
    reports: &'a ReportSink,
    stop: &'a Stop,
    /// Render, then batch: the one way from a record to its calls.
    planner: Planner<Candidate>,
    /// Records whose id another delivery holds, each resolving once it is let go.
    waiting: FuturesUnordered<BoxFuture<'static, Candidate>>,
    /// Records whose ids this delivery holds, with their states as the store tells them, in the order read.
    lookups: FuturesOrdered<BoxFuture<'static, Lookup>>,
    /// What the claim stage did with the groups sent to it, and those refused by the store.
    handed: &'a mut mpsc::UnboundedReceiver<Handed>,
    /// Groups sent to the claim stage that it has not handed on yet: their units may still come back.
    unsettled: usize,
    received: u64,
}

impl Intake<'_> {
    /// Reads the input until it ends, every record waiting for its id is answered and the claim stage has
    /// handed on everything sent to it, or until the session stops. Returns the unreadable message that ended
    /// the input, if one did.
    async fn read<S>(&mut self, mut input: S) -> Option<Interruption>
    where
        S: Stream<Item = Result<Vec<IncomingRecord>, Interruption>> + Send + Unpin,
    {
        let mut input_open = true;
        let mut unreadable = None;
        while input_open
            || !self.waiting.is_empty()
            || !self.lookups.is_empty()
            || self.unsettled > 0
        {
            let deadline = self.planner.next_deadline();
            tokio::select! {
                biased;
                () = self.stop.token.cancelled() => break,
                () = sleep_until_deadline(deadline) => {
                    let due = self.planner.take_due();
                    self.send_batches(due).await;
                }
                handed = self.handed.recv(), if self.unsettled > 0 => match handed {
                    Some(handed) => {
                        self.unsettled = self.unsettled.saturating_sub(handed.groups);
                        let refused = handed.refused.into_iter().flat_map(|unit| {
                            unit.record_ids
                                .into_iter()
                                .zip(unit.records)
                                .map(|(id, json)| Candidate { id, json })
                        });
                        self.wait_elsewhere(refused.collect());
                    }
                    // The stage is gone: nothing more comes back.
                    None => self.unsettled = 0,
                },
                Some(lookup) = self.lookups.next(), if !self.lookups.is_empty() => {
                    self.place(lookup).await;
                    if !input_open {
                        self.flush_batcher().await;
                    }
                }
                Some(candidate) = self.waiting.next(), if !self.waiting.is_empty() => {
                    self.take(vec![candidate]);
                }
                message = input.next(), if input_open
                    && self.waiting.len() < MAX_WAITING
                    && self.lookups.len() < LOOKUPS_AHEAD => match message {
                    Some(Ok(records)) => {
                        self.received += records.len() as u64;
                        let candidates = self.check(records).await;
                        self.take(candidates);
                    }
                    Some(Err(why)) if why.abandons_unsent() => {
                        self.stop.stop(why);
                        break;
                    }
                    Some(Err(why)) => {
                        tracing::info!(destination = %self.session.name, reason = %why, "stream stopped: unreadable message");
                        unreadable = Some(why);
                        input_open = false;
                        self.flush_batcher().await;
                    }
                    None => {
                        input_open = false;
                        self.flush_batcher().await;
                    }
                },
            }
        }
        unreadable
    }

    /// Sends what the batcher holds, or lets it go if the session stopped.
    async fn flush_batcher(&mut self) {
        let batches = self.planner.flush();
        self.send_batches(batches).await;
    }

    /// Answers records whose id or JSON is unusable; passes the rest on.
    async fn check(&mut self, records: Vec<IncomingRecord>) -> Vec<Candidate> {
        let mut candidates = Vec::with_capacity(records.len());
        for record in records {
            let problem = if record.id.is_empty() {
                Some(("record.id", "record id is required".to_string()))
            } else if record.id.len() > MAX_RECORD_ID_LEN {
                Some((
                    "record.id",
                    format!("record id is longer than {MAX_RECORD_ID_LEN} bytes"),
                ))
            } else {
                None
            };
            let outcome = match (problem, record.json) {
                (Some((field, problem)), _) => Err((field, problem)),
                (None, Err(problem)) => Err(("record", problem)),
                (None, Ok(json)) => Ok(json),
            };
            match outcome {
                Ok(json) => candidates.push(Candidate {
                    id: record.id,
                    json: RecordJson {
                        bytes: Arc::from(json),
                        encoding: record.encoding,
                    },
                }),
                Err((field, problem)) => {
                    self.reports
                        .answer(DeliveryReport::invalid(record.id, field, problem))
                        .await
                }
            }
        }
        candidates
    }

    /// Holds the candidates' ids and starts looking up their states in the store ([`Intake::place`] goes on once
    /// it has them); a candidate whose id another delivery holds waits for it.
    fn take(&mut self, candidates: Vec<Candidate>) {
        let session = self.session;
        let destination_id = &session.destination.id;
        let ids: Vec<&str> = candidates.iter().map(|record| record.id.as_str()).collect();
        let claims = session.shared.in_flight.claim(destination_id, &ids);
        let mut taken = Vec::with_capacity(candidates.len());
        for (candidate, claim) in candidates.into_iter().zip(claims) {
            match claim {
                Claim::Taken => taken.push(candidate),
                Claim::Held(released) => self.waiting.push(Box::pin(async move {
                    let _ = released.await;
                    candidate
                })),
            }
        }
        if taken.is_empty() {
            return;
        }
        let store = session.shared.store.clone();
        let destination_id = destination_id.clone();
        self.lookups.push_back(Box::pin(async move {
            let ids = taken.iter().map(|record| record.id.clone()).collect();
            let states = store.record_states(&destination_id, ids).await;
            Lookup { taken, states }
        }));
    }

    /// Lookups still running when the intake stops reading: their records stay unanswered and their ids are let
    /// go, so that a replay sends them.
    async fn let_go_of_lookups(&mut self) {
        let session = self.session;
        while let Some(Lookup { taken, .. }) = self.lookups.next().await {
            let ids: Vec<String> = taken.into_iter().map(|record| record.id).collect();
            session
                .shared
                .in_flight
                .release(&session.destination.id, &ids);
        }
    }

    /// Answers the records the store already settles and sends the rest.
    async fn place(&mut self, lookup: Lookup) {
        let session = self.session;
        let destination_id = &session.destination.id;
        let Lookup { taken, states } = lookup;
        let states = match states {
            Ok(states) => states,
            Err(error) => {
                // Without the store a replay cannot be told apart; sending could duplicate, so don't.
                tracing::error!(%error, destination = %session.name, "cannot read record states; records kept as failed");
                let (record_ids, records) = taken.into_iter().map(|r| (r.id, r.json)).unzip();
                self.reports
                    .report(DeliveryReport::unsent_records(
                        record_ids,
                        records,
                        Outcome::Failed,
                        "cannot check the delivery ledger; not sent",
                    ))
                    .await;
                return;
            }
        };
        let mut fresh = Vec::with_capacity(taken.len());
        let mut answers = Vec::new();
        let mut elsewhere = Vec::new();
        for record in taken {
            match states.get(&record.id) {
                Some(RecordState::ClaimedElsewhere) => elsewhere.push(record),
                Some(RecordState::Delivered(entry)) => {
                    let original = GrooveAnswer {
                        status: entry.http_status,
                        headers: Default::default(),
                        body: entry.response_body.clone(),
                        latency: Duration::ZERO,
                    };
                    let mut duplicate = DeliveryReport::unsent(
                        record.id,
                        Outcome::Duplicate,
                        "record id was delivered before; not sent again",
                    );
                    duplicate.answer = Some(original);
                    answers.push(duplicate);
                }
                Some(RecordState::MaybeDelivered) if session.replays == Replays::Refuse => {
                    let mut refused =
                        DeliveryReport::unsent(record.id, Outcome::Failed, MAYBE_DELIVERED_REPLAY);
                    refused.maybe_delivered = true;
                    answers.push(refused);
                }
                _ => fresh.push(record),
            }
        }
        let mut planned = Vec::new();
        for record in fresh {
            match self.planner.render(&record.json.bytes) {
                Ok(rendered) => self.planner.place(record, rendered, &mut planned),
                Err(violations) => {
                    let field = violations
                        .0
                        .first()
                        .map(|violation| violation.field.clone())
                        .unwrap_or_default();
                    answers.push(DeliveryReport::invalid(
                        record.id,
                        field,
                        violations.to_string(),
                    ));
                }
            }
        }
        // Let the answered ids go before answering, so a copy waiting for one of them finds the same state.
        let answered: Vec<String> = answers
            .iter()
            .flat_map(|answer| answer.record_ids.iter().cloned())
            .collect();
        session.shared.in_flight.release(destination_id, &answered);
        self.wait_elsewhere(elsewhere);
        for answer in answers {
            self.reports.answer(answer).await;
        }
        let retry_unsafe = session.context.options.retry_unsafe_requests;
        let units = planned
            .into_iter()
            .map(|planned| unit(planned, retry_unsafe))
            .collect();
        self.send(units).await;
    }

    /// Another process is sending these records: lets their ids go here too, and asks the store again in a
    /// moment, as a record in flight in this process is waited for.
    fn wait_elsewhere(&mut self, records: Vec<Candidate>) {
        if records.is_empty() {
            return;
        }
        let ids: Vec<String> = records.iter().map(|record| record.id.clone()).collect();
        self.session
            .shared
            .in_flight
            .release(&self.session.destination.id, &ids);
        for record in records {
            self.waiting.push(Box::pin(async move {
                tokio::time::sleep(CLAIMED_ELSEWHERE_RECHECK).await;
                record
            }));
        }
    }

    async fn send_batches(&mut self, batches: Vec<Batch<Candidate>>) {
        let retry_unsafe = self.session.context.options.retry_unsafe_requests;
        let units = batches
            .into_iter()
            .map(|batch| batch_unit(batch, retry_unsafe))
            .collect();
        self.send(units).await;
    }

    /// Hands units to the claimer, which claims the creates among them and queues them for the workers,
    /// while this reads on. Once the session has stopped, units are let go instead.
    async fn send(&mut self, units: Vec<DeliveryUnit>) {
        if units.is_empty() {
            return;
        }
        match self.claimer.send(units).await {
            Ok(()) => self.unsettled += 1,
            Err(refused) => {
                for unit in refused.0 {
                    self.reports.release(unit).await;
                }
            }
        }
    }
}

/// Records whose ids a session holds, and what the store says of them.
struct Lookup {
    taken: Vec<Candidate>,
    states: Result<HashMap<String, RecordState>, StoreError>,
}

/// Whether sending these calls twice is harmless.
fn repeatable(calls: &[PlannedCall], retry_unsafe: bool) -> bool {
    retry_unsafe || calls.iter().all(|call| call.method.is_idempotent())
}

/// What the planner made of records, as a unit to deliver.
fn unit(planned: Planned<Candidate>, retry_unsafe: bool) -> DeliveryUnit {
    match planned {
        Planned::Record {
            item,
            calls,
            ordering_key,
        } => DeliveryUnit {
            record_ids: vec![item.id],
            records: vec![item.json],
            repeatable: repeatable(&calls, retry_unsafe),
            calls,
            ordering_key,
        },
        Planned::Batch(batch) => batch_unit(batch, retry_unsafe),
    }
}

fn batch_unit(batch: Batch<Candidate>, retry_unsafe: bool) -> DeliveryUnit {
    let (record_ids, records) = batch
        .items
        .into_iter()
        .map(|record| (record.id, record.json))
        .unzip();
    DeliveryUnit {
        record_ids,
        records,
        repeatable: retry_unsafe || batch.call.method.is_idempotent(),
        calls: vec![batch.call],
        // A batch's records travel together; batches themselves go out in parallel.
        ordering_key: None,
    }
}

/// The destination a session watches, and how it hears of changes to it.
struct Watched {
    store: Arc<dyn Store>,
    changes: Subscription,
    check_every: Duration,
    destination_id: String,
    name: String,
}

impl Watched {
    /// Whether a change heard may concern the destination.
    fn concerns(&self, change: &Change) -> bool {
        match change {
            Change::DestinationChanged { id } | Change::DestinationDeleted { id } => {
                *id == self.destination_id
            }
            Change::Resync => true,
            Change::CredentialChanged { .. } | Change::CredentialThrottled { .. } => false,
        }
    }

    async fn check(&self) -> Option<Interruption> {
        check_still_active(&*self.store, &self.destination_id, &self.name).await
    }
}

/// Stops the session when the client goes away, the server shuts down or the destination stops being active.
async fn watch_for_stop(
    mut watched: Watched,
    mut shutdown: watch::Receiver<bool>,
    output: mpsc::Sender<StreamEvent>,
    stop: Stop,
) {
    let name = watched.name.clone();
    // A change is heard at once; the poll catches what the feed lost.
    let mut state_checks =
        tokio::time::interval_at(Instant::now() + watched.check_every, watched.check_every);
    let mut feed_open = true;
    let why = loop {
        tokio::select! {
            biased;
            () = stop.token.cancelled() => return,
            () = output.closed() => break Interruption::ClientGone,
            () = stopping(&mut shutdown) => break Interruption::ShuttingDown(format!(
                "the server is shutting down; records of destination {name} without a result were not \
                 delivered by this stream: send them again"
            )),
            change = watched.changes.next(), if feed_open => match change {
                Some(change) if watched.concerns(&change) => {
                    if let Some(why) = watched.check().await {
                        break why;
                    }
                }
                Some(_) => {}
                None => feed_open = false,
            },
            _ = state_checks.tick() => {
                if let Some(why) = watched.check().await {
                    break why;
                }
            }
        }
    };
    tracing::info!(destination = %name, reason = %why, "stream stopped: no more records read or sent");
    stop.stop(why);
}

/// `None` while the destination is active; a store hiccup is not a reason to stop.
async fn check_still_active(
    store: &dyn Store,
    destination_id: &str,
    name: &str,
) -> Option<Interruption> {
    match store.get_destination(destination_id).await {
        Ok(current) if current.state == DestinationState::Active => None,
        Ok(current) => Some(Interruption::NotActive(format!(
            "destination {name} is {}; records without a result were not sent",
            current.state.as_str()
        ))),
        Err(StoreError::NotFound { .. }) => Some(Interruption::Deleted(format!(
            "destination {name} was deleted; records without a result were not sent"
        ))),
        Err(error) => {
            tracing::warn!(%error, destination = %name, "cannot check the destination's state");
            None
        }
    }
}

/// Resolves once the server begins shutting down (never, if the engine is gone without shutting down).
async fn stopping(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn sleep_until_deadline(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::destination::HttpMethod;

    fn call(method: HttpMethod) -> PlannedCall {
        PlannedCall {
            method,
            url: "https://api.groovehq.com/v1/tickets".parse().unwrap(),
            headers: Arc::from(Vec::new()),
            body: Default::default(),
        }
    }

    #[test]
    fn only_units_of_idempotent_calls_are_repeatable_unless_the_destination_allows_it() {
        assert!(repeatable(&[call(HttpMethod::Put)], false));
        assert!(repeatable(
            &[call(HttpMethod::Get), call(HttpMethod::Delete)],
            false
        ));
        assert!(!repeatable(&[call(HttpMethod::Post)], false));
        assert!(!repeatable(
            &[call(HttpMethod::Put), call(HttpMethod::Patch)],
            false
        ));
        assert!(repeatable(&[call(HttpMethod::Post)], true));
    }
}
