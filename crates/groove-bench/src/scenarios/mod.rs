//! The six scenarios of the benchmark, one module each. Every scenario starts its own sandbox + service
//! stack, so a scenario's state (ledger size, memory peak, rate-limit window) never leaks into another's.

pub mod batched;
pub mod batched_sink;
pub mod latency;
pub mod latency_bound;
pub mod memory;
pub mod per_record;
pub mod rate_limited;

use crate::children::Binaries;
use crate::plan::Plan;

/// What every scenario needs.
pub struct Env<'a> {
    pub binaries: &'a Binaries,
    pub plan: &'a Plan,
}
