//! The service's metric families and the per-destination and per-credential handles the delivery path keeps.
//!
//! A handle holds the series of one destination (or credential) fetched once, so the per-record path only
//! touches atomics. A handle made while metrics are off holds nothing and every call on it is a no-op.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::domain::outcome::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DestinationLabel {
    destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CredentialLabel {
    credential: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RecordLabels {
    destination: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    destination: String,
    status_class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WebhookLabels {
    destination: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

const OUTCOMES: [Outcome; 5] = [
    Outcome::Delivered,
    Outcome::Rejected,
    Outcome::Invalid,
    Outcome::Failed,
    Outcome::Duplicate,
];

/// How a Groove call ended, as `status_class` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallClass {
    Success,
    Redirect,
    ClientError,
    RateLimited,
    ServerError,
    /// No HTTP answer: connect error, reset, timeout.
    Transport,
}

impl CallClass {
    const ALL: [CallClass; 6] = [
        CallClass::Success,
        CallClass::Redirect,
        CallClass::ClientError,
        CallClass::RateLimited,
        CallClass::ServerError,
        CallClass::Transport,
    ];

    /// The class of an HTTP status; `None` for no answer.
    pub fn of(status: Option<u16>) -> CallClass {
        match status {
            None => CallClass::Transport,
            Some(429) => CallClass::RateLimited,
            Some(200..=299) => CallClass::Success,
            Some(300..=399) => CallClass::Redirect,
            Some(500..) => CallClass::ServerError,
            Some(_) => CallClass::ClientError,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            CallClass::Success => "2xx",
            CallClass::Redirect => "3xx",
            CallClass::ClientError => "4xx",
            CallClass::RateLimited => "429",
            CallClass::ServerError => "5xx",
            CallClass::Transport => "transport",
        }
    }
}

/// What happened to one result forwarded to a response webhook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookResult {
    Delivered,
    /// Refused, unreachable after its retries, or its address not allowed.
    Failed,
    /// The forwarding queue was full.
    Dropped,
}

impl WebhookResult {
    const ALL: [WebhookResult; 3] = [
        WebhookResult::Delivered,
        WebhookResult::Failed,
        WebhookResult::Dropped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            WebhookResult::Delivered => "delivered",
            WebhookResult::Failed => "failed",
            WebhookResult::Dropped => "dropped",
        }
    }
}

/// Every family the service exports, registered once; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    records: Family<RecordLabels, Counter>,
    calls: Family<CallLabels, Counter>,
    call_duration: HistogramFamily<DestinationLabel>,
    retries: Family<DestinationLabel, Counter>,
    rate_limited: Family<CredentialLabel, Counter>,
    pacer_wait: Family<CredentialLabel, FloatCounter>,
    pacer_rate: Family<CredentialLabel, FloatGauge>,
    in_flight: Family<DestinationLabel, Gauge>,
    queued: Family<DestinationLabel, Gauge>,
    open_streams: Family<DestinationLabel, Gauge>,
    ledger_commit_duration: Histogram,
    ledger_commit_rows: Histogram,
    webhooks: Family<WebhookLabels, Counter>,
    failed_stored: Family<DestinationLabel, Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn call_duration_histogram() -> Histogram {
    // 5 ms to about 41 s: past the longest request timeout.
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("groove_destination");
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "Build of the running server; always 1", build);
        let metrics = Metrics {
            records: Family::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(call_duration_histogram),
            retries: Family::default(),
            rate_limited: Family::default(),
            pacer_wait: Family::default(),
            pacer_rate: Family::default(),
            in_flight: Family::default(),
            queued: Family::default(),
            open_streams: Family::default(),
            // 0.5 ms to about 4 s.
            ledger_commit_duration: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            // 1 to 8192 rows.
            ledger_commit_rows: Histogram::new(exponential_buckets(1.0, 2.0, 14)),
            webhooks: Family::default(),
            failed_stored: Family::default(),
            registry,
        };
        metrics.register_all()
    }

    fn register_all(mut self) -> Self {
        let registry = &mut self.registry;
        registry.register(
            "records",
            "Records answered, by outcome",
            self.records.clone(),
        );
        registry.register(
            "groove_calls",
            "Groove calls made by deliveries, by status class (transport: no HTTP answer)",
            self.calls.clone(),
        );
        registry.register(
            "groove_call_duration_seconds",
            "Time from sending a Groove call to its answer or error",
            self.call_duration.clone(),
        );
        registry.register(
            "groove_retries",
            "Groove calls retried",
            self.retries.clone(),
        );
        registry.register(
            "rate_limited",
            "Groove answers 429 to calls of the credential",
            self.rate_limited.clone(),
        );
        registry.register(
            "pacer_wait_seconds",
            "Time calls of the credential waited for the pacer",
            self.pacer_wait.clone(),
        );
        registry.register(
            "pacer_rate_per_second",
            "Calls per second the credential's pacer allows now (+Inf: unpaced)",
            self.pacer_rate.clone(),
        );
        registry.register(
            "records_in_flight",
            "Records accepted whose outcome is not stored yet",
            self.in_flight.clone(),
        );
        registry.register(
            "records_queued",
            "Records waiting for a delivery worker",
            self.queued.clone(),
        );
        registry.register(
            "open_streams",
            "SendRecords streams open",
            self.open_streams.clone(),
        );
        registry.register(
            "ledger_commit_duration_seconds",
            "Time of one group commit of outcomes to the store",
            self.ledger_commit_duration.clone(),
        );
        registry.register(
            "ledger_commit_rows",
            "Ledger entries and failed records written by one group commit",
            self.ledger_commit_rows.clone(),
        );
        registry.register(
            "webhook_deliveries",
            "Results forwarded to response webhooks, by result",
            self.webhooks.clone(),
        );
        registry.register(
            "failed_records_stored",
            "Rejected and failed records written to the failed-records store",
            self.failed_stored.clone(),
        );
        self
    }

    /// The OpenMetrics text exposition of every family.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The series of one destination, to keep for a stream.
    pub fn destination(&self, destination_id: &str) -> DestinationMetrics {
        let label = DestinationLabel {
            destination: destination_id.to_string(),
        };
        let records = OUTCOMES.map(|outcome| {
            self.records.get_or_create_owned(&RecordLabels {
                destination: destination_id.to_string(),
                outcome: outcome.as_str(),
            })
        });
        let calls = CallClass::ALL.map(|class| {
            self.calls.get_or_create_owned(&CallLabels {
                destination: destination_id.to_string(),
                status_class: class.as_str(),
            })
        });
        let webhooks = WebhookResult::ALL.map(|result| {
            self.webhooks.get_or_create_owned(&WebhookLabels {
                destination: destination_id.to_string(),
                result: result.as_str(),
            })
        });
        DestinationMetrics(Some(Arc::new(DestinationSeries {
            records,
            calls,
            call_duration: self.call_duration.get_or_create_owned(&label),
            retries: self.retries.get_or_create_owned(&label),
            queued: self.queued.get_or_create_owned(&label),
            open_streams: self.open_streams.get_or_create_owned(&label),
            webhooks,
        })))
    }

    /// The series of one credential, to keep with its pacer.
    pub fn credential(&self, credential_id: &str) -> CredentialMetrics {
        let label = CredentialLabel {
            credential: credential_id.to_string(),
        };
        CredentialMetrics(Some(Arc::new(CredentialSeries {
            rate_limited: self.rate_limited.get_or_create_owned(&label),
            pacer_wait: self.pacer_wait.get_or_create_owned(&label),
            pacer_rate: self.pacer_rate.get_or_create_owned(&label),
        })))
    }

    /// The records-in-flight gauge of a destination.
    pub fn in_flight(&self, destination_id: &str) -> Gauge {
        self.in_flight.get_or_create_owned(&DestinationLabel {
            destination: destination_id.to_string(),
        })
    }

    /// One group commit of outcomes: how long it took and how many rows it wrote.
    pub fn ledger_commit(&self, took: Duration, rows: usize) {
        self.ledger_commit_duration.observe(took.as_secs_f64());
        self.ledger_commit_rows.observe(rows as f64);
    }

    /// Failed records a group commit stored for a destination.
    pub fn failed_stored(&self, destination_id: &str, records: u64) {
        self.failed_stored
            .get_or_create(&DestinationLabel {
                destination: destination_id.to_string(),
            })
            .inc_by(records);
    }
}

struct DestinationSeries {
    records: [Counter; 5],
    calls: [Counter; 6],
    call_duration: Histogram,
    retries: Counter,
    queued: Gauge,
    open_streams: Gauge,
    webhooks: [Counter; 3],
}

/// One destination's series; cheap to clone.
#[derive(Clone, Default)]
pub struct DestinationMetrics(Option<Arc<DestinationSeries>>);

impl DestinationMetrics {
    /// The destination's series, or a handle that records nothing when metrics are off.
    pub fn of(metrics: Option<&Metrics>, destination_id: &str) -> Self {
        metrics.map_or_else(Self::default, |metrics| metrics.destination(destination_id))
    }

    pub fn records(&self, outcome: Outcome, records: usize) {
        if let Some(series) = &self.0 {
            let index = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
            series.records[index].inc_by(records as u64);
        }
    }

    pub fn call(&self, class: CallClass, took: Duration) {
        if let Some(series) = &self.0 {
            let index = CallClass::ALL.iter().position(|c| *c == class).unwrap_or(0);
            series.calls[index].inc();
            series.call_duration.observe(took.as_secs_f64());
        }
    }

    pub fn retry(&self) {
        if let Some(series) = &self.0 {
            series.retries.inc();
        }
    }

    /// Records entering (positive) or leaving (negative) the queues in front of the delivery workers.
    pub fn queued(&self, change: i64) {
        if let Some(series) = &self.0 {
            series.queued.inc_by(change);
        }
    }

    /// Counts an open stream until the guard is dropped.
    pub fn open_stream(&self) -> OpenStream {
        if let Some(series) = &self.0 {
            series.open_streams.inc();
        }
        OpenStream(self.clone())
    }

    pub fn webhook(&self, result: WebhookResult) {
        if let Some(series) = &self.0 {
            let index = WebhookResult::ALL
                .iter()
                .position(|r| *r == result)
                .unwrap_or(0);
            series.webhooks[index].inc();
        }
    }
}

/// An open stream, counted while it lives.
pub struct OpenStream(DestinationMetrics);

impl Drop for OpenStream {
    fn drop(&mut self) {
        if let Some(series) = &self.0 .0 {
            series.open_streams.dec();
        }
    }
}

struct CredentialSeries {
    rate_limited: Counter,
    pacer_wait: FloatCounter,
    pacer_rate: FloatGauge,
}

/// One credential's series; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct CredentialMetrics(Option<Arc<CredentialSeries>>);

impl std::fmt::Debug for CredentialSeries {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("CredentialSeries")
    }
}

impl CredentialMetrics {
    pub fn of(metrics: Option<&Metrics>, credential_id: &str) -> Self {
        metrics.map_or_else(Self::default, |metrics| metrics.credential(credential_id))
    }

    pub fn rate_limited(&self) {
        if let Some(series) = &self.0 {
            series.rate_limited.inc();
        }
    }

    pub fn pacer_wait(&self, waited: Duration) {
        if let Some(series) = &self.0 {
            series.pacer_wait.inc_by(waited.as_secs_f64());
        }
    }

    /// The pacer's allowed rate now: `None` while it does not pace.
    pub fn pacer_rate(&self, per_second: Option<f64>) {
        if let Some(series) = &self.0 {
            series.pacer_rate.set(per_second.unwrap_or(f64::INFINITY));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_the_agreed_names() {
        let classes: Vec<&str> = [
            None,
            Some(200),
            Some(204),
            Some(301),
            Some(404),
            Some(429),
            Some(503),
        ]
        .into_iter()
        .map(|status| CallClass::of(status).as_str())
        .collect();
        assert_eq!(
            classes,
            ["transport", "2xx", "2xx", "3xx", "4xx", "429", "5xx"]
        );
    }

    #[test]
    fn handles_count_into_the_exposition() {
        let metrics = Metrics::new();
        let destination = metrics.destination("42");
        destination.records(Outcome::Rejected, 3);
        destination.call(CallClass::of(Some(422)), Duration::from_millis(20));
        let text = metrics.encode();
        assert!(
            text.contains(
                "groove_destination_records_total{destination=\"42\",outcome=\"rejected\"} 3"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "groove_destination_groove_calls_total{destination=\"42\",status_class=\"4xx\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("groove_destination_build_info{version="),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
