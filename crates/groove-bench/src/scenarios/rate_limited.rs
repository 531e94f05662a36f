//! Scenario 3: a rate-limited sandbox (a fixed-window limit the service is not told about) and a per-record
//! stream that always has work queued. Over a window after a warm-up (the pacer needs a few 429s to learn the
//! limit): utilization = calls answered 2xx per second ÷ calls allowed per second, and the share of all calls
//! answered 429 — both from the sandbox's own counters (`GET /_sandbox/stats`), not from the service.

use std::time::Instant;

use groove_sandbox::SandboxStats;

use crate::fail::{BenchResult, Context};
use crate::report::{thousands, Report};
use crate::sandbox::{self, SandboxFlags};
use crate::service::create_ticket_config;
use crate::stack::Stack;
use crate::stream::{self, StreamPlan};

use super::Env;

/// The service's default concurrency: 8 calls in flight against a limit they could exceed many times over.
const CONCURRENCY: u32 = 8;

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let plan = env.plan;
    let flags = SandboxFlags {
        rate_limit: Some(plan.rate_limit_flag()),
        ..SandboxFlags::default()
    };
    let mut stack = Stack::start(env.binaries, "rate-limited", &flags).await?;
    let destination = stack
        .service
        .active_destination("rate-limited", create_ticket_config(CONCURRENCY))
        .await?;
    let total = plan.rate_warm_up + plan.rate_measure;
    let stream_plan = StreamPlan {
        target: plan.target(&destination),
        run: "rate-limited".to_string(),
        // Several times what the limit lets through: the stream must never run dry in the window.
        max_records: (plan.allowed_rate() * total.as_secs_f64() * 4.0) as u64 + 1_000,
        duration: total,
        // What is still queued in the service drains at the limited rate; it is not measured, so cut it short.
        drain_limit: std::time::Duration::from_secs(2),
    };
    let client = stack.service.delivery();
    let tickets = stack.tickets.clone();
    let streaming =
        tokio::spawn(async move { stream::throughput(client, &tickets, &stream_plan).await });

    tokio::time::sleep(plan.rate_warm_up).await;
    let first = sandbox::stats(&stack.control, &stack.sandbox.control_url).await?;
    let measured_from = Instant::now();
    let before = stack.cpu_mark();
    tokio::time::sleep(plan.rate_measure).await;
    let last = sandbox::stats(&stack.control, &stack.sandbox.control_url).await?;
    let seconds = measured_from.elapsed().as_secs_f64();
    let usage = before.until(&stack.cpu_mark());
    let outcome = streaming.await.context("stream task")??;
    let whole_run = sandbox::stats(&stack.control, &stack.sandbox.control_url).await?;
    stack.ensure_running()?;

    let window = Window::between(&first, &last);
    let achieved = window.ok as f64 / seconds;
    let utilization = achieved / plan.allowed_rate();
    let share_429 = window.rate_limited as f64 / window.total.max(1) as f64;
    let mut note = format!(
        "{:.1} ok calls/s of {:.0} allowed; {} calls: {} 2xx, {} 429, {} other; {:.0} s warm-up",
        achieved,
        plan.allowed_rate(),
        window.total,
        window.ok,
        window.rate_limited,
        window.total - window.ok - window.rate_limited,
        plan.rate_warm_up.as_secs_f64()
    );
    let problems = outcome.problems();
    if !problems.is_empty() && !outcome.cut {
        note.push_str(&format!("; PROBLEMS: {problems}"));
    }
    let scenario = format!("3 rate-limited {}", plan.rate_limit_flag());
    report.row(
        &scenario,
        "utilization",
        format!("{utilization:.3}"),
        seconds,
        Some(usage),
        note,
    );
    report.row(
        &scenario,
        "429 share",
        format!("{share_429:.4}"),
        seconds,
        None,
        format!(
            "whole run with warm-up and drain: {} calls, {} answered 429; {} records delivered",
            thousands(whole_run.total as f64),
            thousands(whole_run.count(429) as f64),
            thousands(outcome.delivered as f64)
        ),
    );
    report.headline.rate_limited_utilization = Some(utilization);
    report.headline.rate_limited_429_share = Some(share_429);
    Ok(())
}

/// Sandbox counters between two snapshots.
struct Window {
    total: u64,
    ok: u64,
    rate_limited: u64,
}

impl Window {
    fn between(first: &SandboxStats, last: &SandboxStats) -> Window {
        let delta = |status: u16| last.count(status).saturating_sub(first.count(status));
        let ok = last
            .by_status
            .keys()
            .filter(|status| (200..300).contains(*status))
            .map(|&status| delta(status))
            .sum();
        Window {
            total: last.total.saturating_sub(first.total),
            ok,
            rate_limited: delta(429),
        }
    }
}
