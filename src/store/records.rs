//! What the store keeps about individual records: the ledger of delivered ids, and failed records.
//!
//! The ledger lets a record replayed by a reconnecting upstream be answered as a duplicate, with its original
//! result, instead of being sent to Groove twice. Failed records keep what an operator needs to see why a
//! record did not go through and to send it again.

use crate::domain::outcome::Outcome;

/// Longest response body kept in a [`LedgerEntry`]; longer bodies are cut to this many bytes when recorded.
///
/// The ledger answers duplicates, it is not an archive: the start of Groove's answer (the created object's id
/// and links) is what a replaying caller needs, and the cap bounds what each of the tens of thousands of
/// entries written per second costs. The cut may split a multi-byte UTF-8 character.
pub const LEDGER_BODY_CAP: usize = 4096;

/// Most record ids [`Store::failed_record_ids`](crate::store::Store::failed_record_ids) returns in one call;
/// larger limits are clamped to it.
pub const MAX_FAILED_RECORD_IDS: u32 = 10_000;

/// A record a destination has delivered, and Groove's answer to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    pub destination_id: String,
    /// The caller-chosen record id, unique within the destination.
    pub record_id: String,
    pub http_status: u16,
    /// Groove's response body, at most [`LEDGER_BODY_CAP`] bytes once stored.
    pub response_body: Vec<u8>,
    pub attempts: u32,
    /// When it was delivered (ms since the Unix epoch); retention is measured from here.
    pub delivered_at_ms: i64,
}

/// A record that ended [`Outcome::Rejected`] or [`Outcome::Failed`], kept for inspection and retry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecordEntry {
    pub destination_id: String,
    pub record_id: String,
    /// The record as received, JSON: what a retry sends again.
    pub record_json: Vec<u8>,
    /// [`Outcome::Rejected`] or [`Outcome::Failed`]; the store refuses any other.
    pub outcome: Outcome,
    /// The last request made for it; `None` when it failed before a request could be built.
    pub request: Option<StoredRequest>,
    /// Status of Groove's last answer; 0 when there was none (connection error, timeout).
    pub http_status: u16,
    pub response_headers: Vec<(String, String)>,
    pub response_body: Vec<u8>,
    /// Why it failed, in words.
    pub error: String,
    /// Calls made for it. When it fails again, the store adds the new attempts to the stored ones.
    pub attempts: u32,
    /// When it first failed (ms since the Unix epoch). Kept from the first failure whatever later ones say.
    pub first_failure_ms: i64,
    /// When it last failed (ms since the Unix epoch).
    pub last_failure_ms: i64,
}

/// An HTTP request as it was sent, kept with a failed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredRequest {
    pub method: String,
    pub url: String,
    /// As sent, except that the caller has already redacted credentials: the store keeps them verbatim.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}
