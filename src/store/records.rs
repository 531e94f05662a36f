//! What the store keeps about individual records: the ledger of delivered ids, claims on records being sent,
//! and failed records.
//!
//! The ledger lets a record replayed by a reconnecting upstream be answered as a duplicate, with its original
//! result, instead of being sent to Groove twice. A claim is written before a create is sent, so a crash while
//! it is in flight leaves a trace. Failed records keep what an operator needs to see why a record did not go
//! through and to send it again, and whether Groove may hold it already.

use std::sync::Arc;

use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;

/// Longest response body kept in a [`LedgerEntry`]; longer bodies are cut to this many bytes when recorded.
///
/// The ledger answers duplicates, it is not an archive: the start of Groove's answer (the created object's id
/// and links) is what a replaying caller needs, and the cap bounds what each of the tens of thousands of
/// entries written per second costs. The cut may split a multi-byte UTF-8 character.
pub const LEDGER_BODY_CAP: usize = 4096;

/// Most failed records [`Store::failed_record_sizes`](crate::store::Store::failed_record_sizes) returns in one
/// call; larger limits are clamped to it.
pub const MAX_FAILED_RECORD_IDS: u32 = 10_000;

/// A record a destination has delivered, and Groove's answer to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerEntry {
    /// Shared by the entries of one delivery, which are many for a batch.
    pub destination_id: Arc<str>,
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
    /// An attempt may have reached Groove, so a replay must not send it again on its own. Once set it stays set
    /// when the record fails again.
    pub maybe_delivered: bool,
    /// The form the record arrived in, to show it back the same way.
    pub record_encoding: RecordEncoding,
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

/// The records one call carries (one record, or a batch), about to be sent by a call that must not be repeated
/// blindly; committed before the call goes out. If the process stops before their outcome is recorded, the claim
/// becomes failed records that may have been delivered
/// ([`Store::fail_orphaned_claims`](crate::store::Store::fail_orphaned_claims)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordClaim {
    pub destination_id: String,
    /// The records, in the call's order; at least one. The claim ends when any of them gets its outcome or is
    /// released (they always end together).
    pub records: Vec<ClaimedRecord>,
    /// The call's method and URL, shown with the failed records an orphaned claim becomes.
    pub request_method: String,
    pub request_url: String,
    pub claimed_at_ms: i64,
    /// Sending the call twice is harmless (an idempotent call): only stores that claim every call
    /// ([`Store::claims_repeatable_calls`](crate::store::Store::claims_repeatable_calls)) are given such claims,
    /// and when their process stops the claim is simply let go, not turned into failed records.
    pub repeatable: bool,
}

/// One record of a [`RecordClaim`], kept as received so that an orphaned claim can still be shown and retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimedRecord {
    pub record_id: String,
    pub record_json: Vec<u8>,
    pub record_encoding: RecordEncoding,
}

/// What the store knows of a record id that decides whether it may be sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordState {
    /// Delivered; the entry holds Groove's original answer.
    Delivered(LedgerEntry),
    /// A failed record an attempt of which may have reached Groove: only an explicit retry sends it again.
    MaybeDelivered,
    /// Claimed by another process sharing the store: being sent there, or left by a process that stopped and
    /// not yet settled as a failed record. Neither send nor answer it here until that ends, then ask again.
    /// Only a store shared by several processes reports it.
    ClaimedElsewhere,
}

/// Which failed records a listing shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FailedRecordFilter {
    /// Only this outcome (rejected or failed); `None` for both.
    pub outcome: Option<Outcome>,
    /// Only records that may have been delivered.
    pub maybe_delivered_only: bool,
}

/// A failed record's id and what it weighs in the store, read without its contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FailedRecordSize {
    pub record_id: String,
    /// Bytes of everything kept for it: the record, the last request and response, the error and the id. What
    /// reading the whole entry costs, give or take the framing.
    pub bytes: u64,
}

/// Failed records to act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FailedRecordSelection {
    Ids(Vec<String>),
    All,
}
