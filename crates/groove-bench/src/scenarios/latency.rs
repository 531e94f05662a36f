//! Scenario 5: latency the service adds to one call, at concurrency 1 with one record in flight.
//!
//! Definition (printed with the results):
//! - raw: at the client, from sending one POST to having read its whole answer, one call at a time;
//! - service: at the client, from queueing a one-record SendRecords message to receiving its result, one
//!   record at a time on one open stream (so stream setup is not counted, as it is paid once per stream);
//! - added pN = service pN − raw pN, quantile against quantile (the two sets are not paired call by call).
//!
//! The result's own `latency` field (first attempt to Groove's answer, measured inside the service) is shown
//! too: service end-to-end minus it is what gRPC, validation, the ledger and result building cost.

use crate::fail::{BenchError, BenchResult};
use crate::raw::{self, RawPlan, RawTarget};
use crate::report::Report;
use crate::sandbox::{SandboxFlags, API_KEY};
use crate::service::create_ticket_config;
use crate::stack::Stack;
use crate::stats::Samples;
use crate::stream;

use super::Env;

/// Unmeasured calls on each path first.
const WARM_UP_CALLS: u64 = 200;

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let plan = env.plan;
    let mut stack = Stack::start(env.binaries, "latency", &SandboxFlags::default()).await?;
    let destination = stack
        .service
        .active_destination("latency", create_ticket_config(1))
        .await?;
    let preview = stack
        .service
        .preview(&destination, stack.tickets.record("preview", 0))
        .await?;
    let target = RawTarget::from_preview(&preview, API_KEY, &stack.tickets, 0)?;
    let http = raw::client()?;
    let raw_plan = |calls, first_seq| RawPlan {
        concurrency: 1,
        duration: plan.latency_round_limit,
        max_calls: calls,
        first_seq,
    };

    raw::run(&http, &target, &stack.tickets, raw_plan(WARM_UP_CALLS, 0)).await;
    stream::lockstep(
        stack.service.delivery(),
        &stack.tickets,
        &plan.target(&destination),
        "latency-warm",
        WARM_UP_CALLS,
        plan.latency_round_limit,
    )
    .await?;

    let mut raw_samples = Samples::default();
    let mut end_to_end = Samples::default();
    let mut internal = Samples::default();
    let mut problems = 0;
    for round in 0..plan.latency_rounds {
        let first_seq = (round as u64 + 1) * 1_000_000;
        let raw_run = raw::run(
            &http,
            &target,
            &stack.tickets,
            raw_plan(plan.latency_calls, first_seq),
        )
        .await;
        problems += raw_run.errors;
        raw_samples.extend(raw_run.latencies);
        let service_run = stream::lockstep(
            stack.service.delivery(),
            &stack.tickets,
            &plan.target(&destination),
            &format!("latency-r{round}"),
            plan.latency_calls,
            plan.latency_round_limit,
        )
        .await?;
        problems += service_run.not_delivered;
        end_to_end.extend(service_run.end_to_end);
        internal.extend(service_run.internal);
        stack.ensure_running()?;
    }

    let quantiles = |samples: &Samples| -> BenchResult<(f64, f64)> {
        match (samples.quantile_ms(0.5), samples.quantile_ms(0.99)) {
            (Some(p50), Some(p99)) => Ok((p50, p99)),
            _ => Err(BenchError::new("latency scenario collected no samples")),
        }
    };
    let (raw_p50, raw_p99) = quantiles(&raw_samples)?;
    let (e2e_p50, e2e_p99) = quantiles(&end_to_end)?;
    let (internal_p50, internal_p99) = quantiles(&internal)?;
    let scenario = "5 latency c1";
    let problem_note = if problems > 0 {
        format!("; PROBLEMS: {problems} calls not delivered")
    } else {
        String::new()
    };
    report.row(
        scenario,
        "raw POST",
        format!("p50 {raw_p50:.3} p99 {raw_p99:.3} ms"),
        0.0,
        None,
        format!("{} calls{problem_note}", raw_samples.len()),
    );
    report.row(
        scenario,
        "service end-to-end",
        format!("p50 {e2e_p50:.3} p99 {e2e_p99:.3} ms"),
        0.0,
        None,
        format!("{} records, message queued → result read", end_to_end.len()),
    );
    report.row(
        scenario,
        "service latency field",
        format!("p50 {internal_p50:.3} p99 {internal_p99:.3} ms"),
        0.0,
        None,
        "first attempt → answer, inside the service",
    );
    let added_p50 = e2e_p50 - raw_p50;
    let added_p99 = e2e_p99 - raw_p99;
    report.row(
        scenario,
        "added by the service",
        format!("p50 {added_p50:.3} p99 {added_p99:.3} ms"),
        0.0,
        None,
        "service end-to-end pN − raw pN",
    );
    report.note(
        "latency: at concurrency 1, one record in flight; raw = client-side POST time (send → whole answer \
         read); service = client-side time from queueing a one-record SendRecords message on an open stream \
         to reading its result; added pN = service pN − raw pN (quantile vs quantile, not paired)",
    );
    report.headline.p50_added_ms = Some(added_p50);
    report.headline.p99_added_ms = Some(added_p99);
    Ok(())
}
