//! What flows through the pipeline: records in, planned calls, reports out.

use std::sync::Arc;
use std::time::Duration;

pub use crate::domain::call::PlannedCall;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::groove::GrooveAnswer;

/// A record as the stream delivered it: its id and its JSON text, or why it has none.
#[derive(Clone, Debug)]
pub struct IncomingRecord {
    pub id: String,
    pub json: Result<Vec<u8>, String>,
    pub encoding: RecordEncoding,
}

/// A record's JSON as received, kept while it is delivered so that a failure can store it.
#[derive(Clone, Debug)]
pub struct RecordJson {
    pub bytes: Arc<[u8]>,
    pub encoding: RecordEncoding,
}

/// Records that travel together: one record (possibly fanned out into several calls) or one batch.
#[derive(Debug)]
pub struct DeliveryUnit {
    pub record_ids: Vec<String>,
    /// The records' JSON as received, kept for the failed-records store.
    pub records: Vec<RecordJson>,
    /// Sent one after the other; the unit is delivered when all are.
    pub calls: Vec<PlannedCall>,
    /// Units sharing a key are sent in arrival order.
    pub ordering_key: Option<String>,
    /// Sending the unit twice is harmless (every call idempotent, or the destination allows repeating
    /// creates). A unit that is not is claimed in the store before it is sent, and once it may have reached
    /// Groove it is never sent again on its own.
    pub repeatable: bool,
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
    pub records: Vec<RecordJson>,
    /// For a failure: a call may have reached Groove, so the records are not sent again on their own.
    pub maybe_delivered: bool,
}

impl DeliveryReport {
    /// How one call ended after its retries, before it is known which records it carried: the unit's
    /// delivery fills in the records, the call shown, the attempts of all its calls and the time taken.
    pub(crate) fn call_ended(
        outcome: Outcome,
        answer: Option<GrooveAnswer>,
        attempts: u32,
        error: impl Into<String>,
        maybe_delivered: bool,
    ) -> Self {
        DeliveryReport {
            answer,
            attempts,
            maybe_delivered,
            ..DeliveryReport::unsent_records(Vec::new(), Vec::new(), outcome, error)
        }
    }

    /// Records refused before any call, with the field at fault, keeping their JSON.
    pub fn invalid_records(
        record_ids: Vec<String>,
        records: Vec<RecordJson>,
        field: impl Into<String>,
        error: impl Into<String>,
    ) -> Self {
        DeliveryReport {
            field: field.into(),
            ..DeliveryReport::unsent_records(record_ids, records, Outcome::Invalid, error)
        }
    }

    /// A record refused before any call.
    pub fn invalid(record_id: String, field: impl Into<String>, error: impl Into<String>) -> Self {
        DeliveryReport {
            field: field.into(),
            ..DeliveryReport::unsent(record_id, Outcome::Invalid, error)
        }
    }

    /// A record that ends without a call of its own.
    pub fn unsent(record_id: String, outcome: Outcome, error: impl Into<String>) -> Self {
        DeliveryReport::unsent_records(vec![record_id], Vec::new(), outcome, error)
    }

    /// Records that end without a call, keeping their JSON for the failed-records store.
    pub fn unsent_records(
        record_ids: Vec<String>,
        records: Vec<RecordJson>,
        outcome: Outcome,
        error: impl Into<String>,
    ) -> Self {
        DeliveryReport {
            record_ids,
            outcome,
            answer: None,
            attempts: 0,
            latency: Duration::ZERO,
            error: error.into(),
            field: String::new(),
            call: None,
            records,
            maybe_delivered: false,
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
    /// Records received that got no result: the stream stopped before they were sent.
    pub unanswered: u64,
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

    /// Records that got a result.
    pub fn answered(&self) -> u64 {
        self.delivered + self.rejected + self.invalid + self.failed + self.duplicate
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

/// Why a stream stopped before every record it read got its result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// Paused (or otherwise not active) while the stream was open.
    NotActive(String),
    Deleted(String),
    /// The server is shutting down.
    ShuttingDown(String),
    /// The client cancelled or its connection broke: nobody is listening any more.
    ClientGone,
    /// A message could not be read; the records before it were delivered.
    Unreadable(Unreadable),
}

/// A client message the server could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreadable {
    /// Over the size limit.
    TooLarge(String),
    /// Not a well-formed message (bad protobuf, nested too deep).
    Malformed(String),
}

impl Interruption {
    /// Whether the records not yet sent are let go (the stream is over for them) rather than delivered.
    pub fn abandons_unsent(&self) -> bool {
        !matches!(self, Interruption::Unreadable(_))
    }
}

impl std::fmt::Display for Interruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Interruption::NotActive(why)
            | Interruption::Deleted(why)
            | Interruption::ShuttingDown(why)
            | Interruption::Unreadable(Unreadable::TooLarge(why) | Unreadable::Malformed(why)) => {
                f.write_str(why)
            }
            Interruption::ClientGone => f.write_str("the client went away"),
        }
    }
}
