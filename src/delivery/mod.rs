//! The delivery pipeline: records in, Groove calls out, one outcome per record back.
//!
//! Stages, each a small module: `session` (per stream: parse, check each id's state, render, batch, claim) →
//! `dispatch` (concurrency and per-key order) → `attempt` (pacing and retries for one call, with the credential's
//! current key from `keys`, which stops the calls of a key Groove keeps refusing) → `recorder` (ledger, failed
//! records and the end of claims, in group commits) and `webhook` (forwarding results). Queues between stages
//! are bounded, so a stream is read only as fast as it is delivered.

mod attempt;
mod backoff;
mod claimer;
mod clock;
mod dispatch;
mod engine;
mod follow;
mod in_flight;
mod keys;
mod plan;
mod rate_share;
mod recorder;
mod report;
pub mod retry;
mod session;
mod sink;
mod webhook;
mod webhook_guard;

/// Groove's answer and a key check's verdict, as delivery reports them: `api/` reads them from here and never
/// from the Groove client.
pub use crate::groove::{GrooveAnswer, Verification};
pub use backoff::Backoff;
pub use clock::now_ms;
pub use engine::{
    CredentialUpdateError, DeliveryError, Engine, EngineOptions, EngineStartError, Preview,
    TestPayload, TestSendError, TestSent,
};
pub use keys::REFUSALS_TO_STOP;
pub use report::{
    DeliveryReport, IncomingRecord, Interruption, PlannedCall, RecordJson, StreamEvent, Summary,
    Unreadable,
};
pub use session::{Session, MAYBE_DELIVERED_REPLAY};
