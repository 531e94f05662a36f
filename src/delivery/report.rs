//! What flows through the pipeline: records in, planned calls, reports out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use url::Url;

use crate::domain::destination::HttpMethod;
use crate::domain::outcome::Outcome;
use crate::groove::GrooveAnswer;

/// A record as the stream delivered it: its id and its JSON text, or why it has none.
#[derive(Clone, Debug)]
pub struct IncomingRecord {
    pub id: String,
    pub json: Result<Vec<u8>, String>,
}

/// One HTTP request to Groove, without the key.
#[derive(Clone, Debug)]
pub struct PlannedCall {
    pub method: HttpMethod,
    pub url: Url,
    /// The destination's extra headers, shared by all its calls.
    pub headers: Arc<[(String, String)]>,
    /// JSON text; empty for a call without a body (GET, DELETE).
    pub body: Bytes,
}

impl From<crate::domain::render::RenderedCall> for PlannedCall {
    fn from(call: crate::domain::render::RenderedCall) -> Self {
        PlannedCall {
            method: call.method,
            url: call.url,
            headers: call.headers,
            body: Bytes::from(call.body),
        }
    }
}

/// Records that travel together: one record (possibly fanned out into several calls) or one batch.
#[derive(Debug)]
pub struct DeliveryUnit {
    pub record_ids: Vec<String>,
    /// The records' JSON as received, kept for the failed-records store.
    pub records: Vec<Arc<[u8]>>,
    /// Sent one after the other; the unit is delivered when all are.
    pub calls: Vec<PlannedCall>,
    /// Units sharing a key are sent in arrival order.
    pub ordering_key: Option<String>,
}

/// How a unit ended.
#[derive(Clone, Debug)]
pub struct DeliveryReport {
    pub record_ids: Vec<String>,
    pub outcome: Outcome,
    /// Groove's answer to the last attempt, if one came.
    pub answer: Option<GrooveAnswer>,
    pub attempts: u32,
    pub latency: Duration,
    /// What went wrong; empty when delivered.
    pub error: String,
    /// For invalid records: the field at fault.
    pub field: String,
    /// The last call made (or planned), for display and for the failed-records store.
    pub call: Option<PlannedCall>,
    /// The records' JSON as received, kept when the outcome is rejected or failed.
    pub records: Vec<Arc<[u8]>>,
}

impl DeliveryReport {
    /// A record refused before any call.
    pub fn invalid(record_id: String, field: impl Into<String>, error: impl Into<String>) -> Self {
        DeliveryReport {
            record_ids: vec![record_id],
            outcome: Outcome::Invalid,
            answer: None,
            attempts: 0,
            latency: Duration::ZERO,
            error: error.into(),
            field: field.into(),
            call: None,
            records: Vec::new(),
        }
    }
}

/// Counts per outcome for one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub records_received: u64,
    pub delivered: u64,
    pub rejected: u64,
    pub invalid: u64,
    pub failed: u64,
    pub duplicate: u64,
    pub calls: u64,
}

impl Summary {
    pub fn count(&mut self, report: &DeliveryReport) {
        let records = report.record_ids.len() as u64;
        match report.outcome {
            Outcome::Delivered => self.delivered += records,
            Outcome::Rejected => self.rejected += records,
            Outcome::Invalid => self.invalid += records,
            Outcome::Failed => self.failed += records,
            Outcome::Duplicate => self.duplicate += records,
        }
        self.calls += u64::from(report.attempts);
    }
}

/// What a session sends back.
#[derive(Clone, Debug)]
pub enum StreamEvent {
    Report(Box<DeliveryReport>),
    /// The last event of a stream that ran its course; before [`StreamEvent::Interrupted`] otherwise.
    Summary(Summary),
    /// The stream stopped before its input ended.
    Interrupted(Interruption),
}

/// Why a stream stopped reading before the client finished.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// Paused (or otherwise not active) while the stream was open.
    NotActive(String),
    Deleted(String),
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::NotActive(why) | Interruption::Deleted(why) => f.write_str(why),
        }
    }
}
