//! The delivery engine: what all streams share — pacers per credential, the outcome recorder, the webhook
//! forwarder, the in-flight ids — and the checks that open a stream.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::watch;
use url::Url;

use crate::delivery::attempt::CallContext;
use crate::delivery::clock::now_ms;
use crate::delivery::follow::follow_credentials;
use crate::delivery::in_flight::InFlight;
use crate::delivery::keys::{CredentialKeys, Evidence};
use crate::delivery::plan::{Planned, Planner};
use crate::delivery::rate_share::{share_pauses, BookLine};
use crate::delivery::recorder::Recorder;
use crate::delivery::report::IncomingRecord;
use crate::delivery::session::{Replays, Session, Shared};
use crate::delivery::webhook::WebhookForwarder;
use crate::domain::call::PlannedCall;
use crate::domain::credential::{status_text, ApiKey, Credential};
use crate::domain::destination::{Destination, DestinationConfig, DestinationState};
use crate::domain::host_policy::HostPolicy;
use crate::domain::render::Renderer;
use crate::domain::validation::{FieldViolation, Violations};
use crate::groove::pacer::PacerRegistry;
use crate::groove::{CallError, GrooveAnswer, GrooveClient, Verification};
use crate::metrics::{DestinationMetrics, Metrics};
use crate::store::{
    Change, ChangeFeed, CredentialUpdate, LocalChanges, PaceBook, Store, StoreError, Subscription,
};

/// Engine-wide knobs.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Most calls per second per credential; `None` leaves pacing to what Groove's answers teach.
    pub max_rate_per_credential: Option<f64>,
    /// How long a delivered record id is remembered for duplicate detection.
    pub ledger_retention: Duration,
    /// Most record ids remembered per destination; the oldest go first.
    pub ledger_max_entries_per_destination: u64,
    /// Which internal addresses response webhooks may reach (`--webhook-allowed-hosts`).
    pub webhook_hosts: HostPolicy,
    /// Where delivery records its metrics; `None`: metrics are off.
    pub metrics: Option<Arc<Metrics>>,
    /// Where changes made here are announced and changes made by other replicas heard: open streams stop when
    /// their destination is paused or deleted, and a re-keyed credential's new key is loaded.
    pub changes: Arc<dyn ChangeFeed>,
    /// How often an open stream also reads its destination's state, in case a change was not heard.
    pub destination_check_every: Duration,
    /// The account lines every replica on a shared store takes its calls' slots from; `None` (alone): each
    /// pacer's own spacing is the whole story.
    pub pace_book: Option<Arc<dyn PaceBook>>,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_rate_per_credential: None,
            ledger_retention: Duration::from_secs(7 * 24 * 3600),
            ledger_max_entries_per_destination: 10_000_000,
            webhook_hosts: HostPolicy::default(),
            metrics: None,
            changes: Arc::new(LocalChanges::new()),
            destination_check_every: Duration::from_secs(1),
            pace_book: None,
        }
    }
}

/// How often the ledger retention is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// Why a record claimed by a process that stopped is kept as failed.
const ORPHANED_CLAIM: &str = "the server stopped while this record was being sent; groove may have received \
     it, so it is not sent again on its own: retry it with RetryFailedRecords if a second copy is acceptable";

#[derive(Debug, Error)]
pub enum DeliveryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("destination {name} is {state}; activate it to send records")]
    NotActive { name: String, state: &'static str },
    #[error("destination {name} has a configuration this server cannot use: {violations}")]
    BadConfig {
        name: String,
        violations: Violations,
    },
}

/// Why UpdateCredential changed nothing.
#[derive(Debug, Error)]
pub enum CredentialUpdateError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Groove answered 401 or 403 to the new key.
    #[error(
        "groove refused the new api key for credential credentials/{credential_id} ({}); the credential was \
         not changed",
        status_text(*status)
    )]
    KeyRefused { credential_id: String, status: u16 },
    /// Groove could not be asked, or gave no verdict.
    #[error(
        "cannot verify the new api key for credential credentials/{credential_id} with groove ({detail}); the \
         credential was not changed: try again, or set skip_verification to store the key unverified"
    )]
    CannotVerify {
        credential_id: String,
        detail: String,
    },
}

/// What a test send sends: a record rendered by the destination's configuration, or a request given whole.
pub enum TestPayload {
    Record(IncomingRecord),
    Request(PlannedCall),
}

/// What a test send sent and what came back.
#[derive(Debug)]
pub struct TestSent {
    pub call: PlannedCall,
    /// Groove's answer, if one came.
    pub answer: Option<GrooveAnswer>,
    /// Why no answer came; empty when one did.
    pub error: String,
    pub latency: Duration,
}

impl TestSent {
    fn answered(call: PlannedCall, answer: GrooveAnswer, latency: Duration) -> Self {
        TestSent {
            call,
            answer: Some(answer),
            error: String::new(),
            latency,
        }
    }

    fn unanswered(call: PlannedCall, error: String, latency: Duration) -> Self {
        TestSent {
            call,
            answer: None,
            error,
            latency,
        }
    }
}

/// Why a test send sent nothing.
#[derive(Debug, Error)]
pub enum TestSendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("destination {name} cannot render: {violations}")]
    BadConfig {
        name: String,
        violations: Violations,
    },
    /// The record's JSON could not be read.
    #[error("{0}")]
    UnreadableRecord(String),
    #[error("{0}")]
    InvalidRecord(Violations),
    #[error("record renders to no request")]
    NoRequest,
    #[error("url is outside the groove base url")]
    OutsideBaseUrl,
}

/// What a preview shows: each planned request with the ids of the records it carries, and each record refused
/// with the field at fault.
#[derive(Debug, Default)]
pub struct Preview {
    pub requests: Vec<(PlannedCall, Vec<String>)>,
    pub errors: Vec<(String, FieldViolation)>,
}

/// What the RPCs that check a key call the caller in a refusal's detail.
const VERIFY_CALLER: &str = "VerifyCredential";

#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn Store>,
    groove: GrooveClient,
    pacers: Arc<PacerRegistry>,
    keys: Arc<CredentialKeys>,
    options: EngineOptions,
    shared: Shared,
    stopping: Arc<watch::Sender<bool>>,
}

/// Why the engine could not start.
#[derive(Debug, Error)]
pub enum EngineStartError {
    #[error("cannot build the webhook http client: {0}")]
    WebhookClient(#[from] reqwest::Error),
    #[error("cannot settle the records a previous run left in flight: {0}")]
    Orphans(#[from] StoreError),
}

impl Engine {
    /// Settles what a previous process left in flight, then starts the engine's background tasks (recorder,
    /// webhook forwarders, ledger pruning).
    ///
    /// Every claim in the store at this point belongs to a process that stopped (crashed, or was killed) while
    /// sending: its record becomes a failed record that may have been delivered, never silently sent again.
    pub async fn start(
        store: Arc<dyn Store>,
        groove: GrooveClient,
        options: EngineOptions,
    ) -> Result<Self, EngineStartError> {
        let orphans = store.fail_orphaned_claims(ORPHANED_CLAIM, now_ms()).await?;
        if orphans > 0 {
            tracing::warn!(
                records = orphans,
                "records left in flight by a previous run are kept as failed records that may have been delivered"
            );
        }
        let in_flight = Arc::new(InFlight::with_metrics(options.metrics.clone()));
        let (stopping, shutdown) = watch::channel(false);
        let shared = Shared {
            store: store.clone(),
            recorder: Recorder::start(store.clone(), in_flight.clone(), options.metrics.clone()),
            in_flight,
            webhooks: WebhookForwarder::start(options.webhook_hosts.clone())?,
            shutdown,
            destination_check_every: options.destination_check_every,
        };
        tokio::spawn(prune_ledger(store.clone(), options.clone()));
        let keys = Arc::new(CredentialKeys::new(store.clone()));
        tokio::spawn(follow_credentials(
            options.changes.subscribe(),
            store.clone(),
            keys.clone(),
        ));
        let pacers = Arc::new(match &options.pace_book {
            Some(book) => {
                let line = Arc::new(BookLine(book.clone()));
                PacerRegistry::shared(options.metrics.clone(), line)
            }
            None => PacerRegistry::with_metrics(options.metrics.clone()),
        });
        if options.pace_book.is_some() {
            tokio::spawn(share_pauses(pacers.clone(), options.changes.clone()));
        }
        if let Some(every) = store.orphan_check_interval() {
            tokio::spawn(settle_orphans(Arc::downgrade(&store), every));
        }
        Ok(Engine {
            keys,
            store,
            groove,
            pacers,
            options,
            shared,
            stopping: Arc::new(stopping),
        })
    }

    /// The Groove base URL every call goes under (ends in `/`), for checking what callers give.
    pub fn base_url(&self) -> &Url {
        self.groove.base_url()
    }

    /// Sends one call with `key` as a delivery does, through the credential's pacer (shared with every
    /// delivery of that credential), without retries. What Groove answers steers the pacer.
    async fn paced_send(
        &self,
        credential_id: &str,
        key: &ApiKey,
        call: &PlannedCall,
        timeout: Duration,
    ) -> Result<GrooveAnswer, CallError> {
        let pacer = self
            .pacers
            .pacer(credential_id, self.options.max_rate_per_credential);
        let permit = pacer.acquire().await;
        let result = self.groove.send(key, call, timeout).await;
        match &result {
            Ok(answer) => permit.observe(answer.status, &answer.pacing_headers()),
            Err(_) => drop(permit),
        }
        result
    }

    /// One cheap authenticated call to Groove with `key`, paced as the credential's calls are: does Groove
    /// accept it? Changes nothing.
    async fn verify_key(&self, credential_id: &str, key: &ApiKey) -> Verification {
        let (call, timeout) = match self.groove.verification_call() {
            Ok(call) => call,
            Err(verification) => return verification,
        };
        Verification::of(&self.paced_send(credential_id, key, &call, timeout).await)
    }

    /// What a configuration would send for sample records, by the path a stream takes (render, then batch),
    /// and which records it refuses; no call is made. Violations of the configuration itself are named from
    /// `config`.
    pub fn preview(
        &self,
        config: &DestinationConfig,
        records: Vec<IncomingRecord>,
    ) -> Result<Preview, Violations> {
        let renderer = Renderer::new(config, self.groove.base_url())?;
        let mut planner = Planner::new(Arc::new(renderer), &config.batching);
        let mut planned = Vec::new();
        let mut errors = Vec::new();
        for record in records {
            let rendered = record
                .json
                .map_err(|problem| Violations(vec![FieldViolation::new("record", problem)]))
                .and_then(|json| planner.render(&json));
            match rendered {
                Ok(rendered) => planner.place(record.id, rendered, &mut planned),
                Err(violations) => errors.extend(
                    violations
                        .0
                        .into_iter()
                        .map(|violation| (record.id.clone(), violation)),
                ),
            }
        }
        planned.extend(planner.flush().into_iter().map(Planned::Batch));
        let mut requests = Vec::new();
        for planned in planned {
            match planned {
                Planned::Record { item, calls, .. } => {
                    requests.extend(calls.into_iter().map(|call| (call, vec![item.clone()])))
                }
                Planned::Batch(batch) => requests.push((batch.call, batch.items)),
            }
        }
        Ok(Preview { requests, errors })
    }

    /// Sends one request of a destination (saved, or a draft) for real, through the credential's pacer as a
    /// delivery is, once and without retries; nothing is recorded. `name` names the destination in messages.
    pub async fn test_send(
        &self,
        name: &str,
        credential_id: &str,
        config: &DestinationConfig,
        payload: TestPayload,
    ) -> Result<TestSent, TestSendError> {
        let call = match payload {
            TestPayload::Request(call) => call,
            TestPayload::Record(record) => {
                let json = record.json.map_err(TestSendError::UnreadableRecord)?;
                let renderer =
                    Renderer::new(config, self.groove.base_url()).map_err(|violations| {
                        TestSendError::BadConfig {
                            name: name.to_string(),
                            violations,
                        }
                    })?;
                let rendered = renderer
                    .render(&json)
                    .map_err(TestSendError::InvalidRecord)?;
                rendered
                    .calls
                    .into_iter()
                    .next()
                    .ok_or(TestSendError::NoRequest)?
            }
        };
        let stored = self.store.credential_key(credential_id).await?;
        let key = self.keys.bind(credential_id, stored).current();
        let timeout = Duration::from_millis(config.delivery.request_timeout_ms);
        let started = Instant::now();
        let sent = self
            .paced_send(credential_id, &key.key, &call, timeout)
            .await;
        let latency = started.elapsed();
        match sent {
            Ok(answer) => Ok(TestSent::answered(call, answer, latency)),
            Err(CallError::OutsideBaseUrl { .. }) => Err(TestSendError::OutsideBaseUrl),
            Err(error) => Ok(TestSent::unanswered(call, error.to_string(), latency)),
        }
    }

    /// Checks the stored key of a credential with Groove, and how long that took. What Groove answers counts
    /// like a delivery's answer: an accepted key ends a refusal, a refused one adds to the streak.
    pub async fn verify_credential(
        &self,
        credential_id: &str,
    ) -> Result<(Verification, Duration), StoreError> {
        let stored = self.store.credential_key(credential_id).await?;
        let entry = self.keys.bind(credential_id, stored);
        let key = entry.current();
        let started = Instant::now();
        let verification = self.verify_key(credential_id, &key.key).await;
        let latency = started.elapsed();
        let evidence = match &verification {
            Verification::Valid { status }
            | Verification::Invalid { status }
            | Verification::Unreachable {
                status: Some(status),
                ..
            } => Evidence::of_status(*status),
            Verification::Unreachable { status: None, .. } => Evidence::Unknown,
        };
        entry.observe(key.version, evidence, VERIFY_CALLER).await;
        Ok((verification, latency))
    }

    /// Changes a credential's display name and/or key. A new key is first checked with Groove when `verify`
    /// is set, and refused if Groove does not accept it; once stored, open streams use it from their next call
    /// and a refusal of the old key ends.
    pub async fn update_credential(
        &self,
        update: CredentialUpdate,
        verify: bool,
    ) -> Result<Credential, CredentialUpdateError> {
        if let (true, Some(key)) = (verify, &update.api_key) {
            // A credential that does not exist is not worth a call to Groove.
            self.store.get_credential(&update.id).await?;
            match self.verify_key(&update.id, key).await {
                Verification::Valid { .. } => {}
                Verification::Invalid { status } => {
                    return Err(CredentialUpdateError::KeyRefused {
                        credential_id: update.id,
                        status,
                    })
                }
                Verification::Unreachable { detail, .. } => {
                    return Err(CredentialUpdateError::CannotVerify {
                        credential_id: update.id,
                        detail,
                    })
                }
            }
        }
        let new_key = update.api_key.clone();
        let credential = self.store.update_credential(update).await?;
        if let (Some(key), Some(entry)) = (new_key, self.keys.get(&credential.id)) {
            entry.replace(key, credential.key_version);
        }
        self.announce(Change::CredentialChanged {
            id: credential.id.clone(),
        })
        .await;
        Ok(credential)
    }

    /// Deletes a credential (refused while a destination uses it) and forgets what delivery knows of it, here
    /// and in every replica.
    pub async fn delete_credential(&self, credential_id: &str) -> Result<(), StoreError> {
        self.store.delete_credential(credential_id).await?;
        self.keys.forget(credential_id);
        self.announce(Change::CredentialChanged {
            id: credential_id.to_string(),
        })
        .await;
        Ok(())
    }

    /// Where changes are announced: what the admin layer publishes its writes to.
    pub fn changes(&self) -> Arc<dyn ChangeFeed> {
        self.options.changes.clone()
    }

    /// Tells every replica of a change already stored; one that misses it reads the store later anyway.
    async fn announce(&self, change: Change) {
        if let Err(error) = self.options.changes.publish(change).await {
            tracing::warn!(%error, "cannot announce a credential change to other replicas");
        }
    }

    /// Sessions stop reading their streams, deliver what they accepted and end.
    pub fn begin_shutdown(&self) {
        self.stopping.send_replace(true);
    }

    /// Prepares delivery for an active destination: loads it and its key and compiles its configuration.
    pub async fn open_session(
        &self,
        destination_id: &str,
        name: &str,
    ) -> Result<Session, DeliveryError> {
        // Subscribed before the state is read: a change made after the read is heard.
        let changes = self.options.changes.subscribe();
        let destination = self.store.get_destination(destination_id).await?;
        if destination.state != DestinationState::Active {
            return Err(DeliveryError::NotActive {
                name: name.to_string(),
                state: destination.state.as_str(),
            });
        }
        self.session_for(destination, name, changes).await
    }

    /// Compiles the destination's configuration and binds its key and pacer.
    async fn session_for(
        &self,
        destination: Destination,
        name: &str,
        changes: Subscription,
    ) -> Result<Session, DeliveryError> {
        let renderer =
            Renderer::new(&destination.config, self.groove.base_url()).map_err(|violations| {
                DeliveryError::BadConfig {
                    name: name.to_string(),
                    violations,
                }
            })?;
        let stored = self
            .store
            .credential_key(&destination.credential_id)
            .await?;
        let key = self.keys.bind(&destination.credential_id, stored);
        let pacer = self.pacers.pacer(
            &destination.credential_id,
            self.options.max_rate_per_credential,
        );
        let context = CallContext {
            client: self.groove.clone(),
            key,
            pacer,
            options: destination.config.delivery.clone(),
            destination_name: name.to_string(),
            metrics: DestinationMetrics::of(self.options.metrics.as_deref(), &destination.id),
        };
        Ok(Session {
            name: name.to_string(),
            renderer: Arc::new(renderer),
            context,
            shared: self.shared.clone(),
            destination,
            replays: Replays::Refuse,
            outcomes_only: false,
            changes,
        })
    }
}

/// Settles, every `every`, the claims of other processes sharing the store that stopped while sending; ends
/// with the store.
async fn settle_orphans(store: std::sync::Weak<dyn Store>, every: std::time::Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate, and start-up has just settled them.
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        match store.fail_orphaned_claims(ORPHANED_CLAIM, now_ms()).await {
            Ok(0) => {}
            Ok(records) => tracing::warn!(
                records,
                "records left in flight by a stopped replica are kept as failed records that may have been delivered"
            ),
            Err(error) => tracing::warn!(%error, "cannot settle the records stopped replicas left in flight"),
        }
    }
}

async fn prune_ledger(store: Arc<dyn Store>, options: EngineOptions) {
    let mut every = tokio::time::interval(PRUNE_EVERY);
    loop {
        every.tick().await;
        let older_than = now_ms() - options.ledger_retention.as_millis() as i64;
        match store
            .ledger_prune(older_than, options.ledger_max_entries_per_destination)
            .await
        {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "delivery ledger pruned"),
            Err(error) => tracing::warn!(%error, "cannot prune the delivery ledger"),
        }
    }
}
