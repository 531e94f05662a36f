//! The delivery pipeline: records in, Groove calls out, one outcome per record back.
//!
//! Stages, each a small module: `session` (per stream: parse, de-duplicate, render, batch) → `dispatch`
//! (concurrency and per-key order) → `attempt` (pacing and retries for one call) → `recorder` (ledger and
//! failed records in group commits) and `webhook` (forwarding results). Queues between stages are bounded, so
//! a stream is read only as fast as it is delivered.

mod attempt;
mod dispatch;
mod engine;
mod recorder;
mod report;
pub mod retry;
mod session;
mod sink;
mod webhook;

pub use engine::{now_ms, DeliveryError, Engine, EngineOptions};
pub use report::{DeliveryReport, IncomingRecord, Interruption, PlannedCall, StreamEvent, Summary};
pub use session::Session;
