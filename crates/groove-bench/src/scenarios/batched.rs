//! Scenario 2: the batched path — a manual `POST tickets` destination with batching on (100 records per
//! call, the default 8 calls in flight) against a sandbox that accepts JSON arrays. Records/s through one
//! SendRecords stream of 100-record messages.

use crate::cpu::CpuUse;
use crate::fail::BenchResult;
use crate::report::{thousands, Report};
use crate::sandbox::SandboxFlags;
use crate::service::batched_tickets_config;
use crate::stack::Stack;
use crate::stream::{self, StreamPlan};

use super::Env;

/// Records per Groove call.
pub const BATCH_SIZE: u32 = 100;
/// The service's default `delivery.concurrency`, written out so the figure says what it measured.
pub const CONCURRENCY: u32 = 8;

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let flags = SandboxFlags {
        accept_batches: true,
        ..SandboxFlags::default()
    };
    let mut stack = Stack::start(env.binaries, "batched", &flags).await?;
    let plan = env.plan;
    let destination = stack
        .service
        .active_destination("batched", batched_tickets_config(BATCH_SIZE, CONCURRENCY))
        .await?;
    let stream_plan = |run: String, duration| StreamPlan {
        target: plan.target(&destination),
        run,
        max_records: plan.max_records_per_run,
        duration,
        drain_limit: plan.batched_drain_limit,
    };
    stream::throughput(
        stack.service.delivery(),
        &stack.tickets,
        &stream_plan("batched-warm".to_string(), plan.warm_up),
    )
    .await?;

    let mut delivered = 0;
    let mut calls = 0;
    // Until the summary: the service sends it once every outcome of the stream is persisted.
    let mut to_summary = 0.0;
    // Until the last result: how fast records get through to Groove and back, persistence aside.
    let mut to_last_result = 0.0;
    let mut cpu = Vec::new();
    let mut problems = Vec::new();
    for round in 0..plan.batched_runs {
        let before = stack.cpu_mark();
        let outcome = stream::throughput(
            stack.service.delivery(),
            &stack.tickets,
            &stream_plan(format!("batched-r{round}"), plan.batched_run),
        )
        .await?;
        let usage = before.until(&stack.cpu_mark());
        eprintln!(
            "    batched run {round}: {} records, {}",
            outcome.delivered,
            outcome.timeline()
        );
        let elapsed = outcome.elapsed.as_secs_f64();
        delivered += outcome.delivered;
        calls += outcome.calls;
        to_summary += elapsed;
        to_last_result += outcome.last_result.as_secs_f64();
        cpu.push((usage, elapsed));
        let problem = outcome.problems();
        if !problem.is_empty() {
            problems.push(problem);
        }
        stack.ensure_running()?;
    }
    let rate = delivered as f64 / to_summary.max(1e-9);
    let mut note = format!(
        "{} runs; results alone at {}/s (persisting the outcomes is the rest); {:.1} records per call",
        plan.batched_runs,
        thousands(delivered as f64 / to_last_result.max(1e-9)),
        delivered as f64 / calls.max(1) as f64
    );
    if !problems.is_empty() {
        note.push_str(&format!("; PROBLEMS: {}", problems.join("; ")));
    }
    report.row(
        format!("2 batched {BATCH_SIZE}/call c{CONCURRENCY}"),
        "service, to summary",
        format!("{} rec/s", thousands(rate)),
        to_summary,
        Some(CpuUse::weighted(&cpu)),
        note,
    );
    report.note(
        "batched rec/s = records delivered / time from opening the stream to its summary, which the service \
         sends only after every outcome is persisted (ledger); `results alone` stops the clock at the last result",
    );
    report.headline.batched_records_per_s = Some(rate);
    Ok(())
}
