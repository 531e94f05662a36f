//! Scenario 4: the service's peak resident memory (`VmHWM`) while one stream delivers a fixed number of
//! records on the batched path. A fresh service process, so the high-water mark belongs to this run alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::fail::{BenchError, BenchResult, Context};
use crate::procfs;
use crate::report::{thousands, Report};
use crate::sandbox::SandboxFlags;
use crate::service::batched_tickets_config;
use crate::stack::Stack;
use crate::stream::{self, StreamPlan};

use super::batched::{BATCH_SIZE, CONCURRENCY};
use super::Env;

/// How often the current RSS is sampled, to report when the peak happens to be reached (VmHWM has the peak).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let flags = SandboxFlags {
        accept_batches: true,
        ..SandboxFlags::default()
    };
    let mut stack = Stack::start(env.binaries, "memory", &flags).await?;
    let plan = env.plan;
    let destination = stack
        .service
        .active_destination("memory", batched_tickets_config(BATCH_SIZE, CONCURRENCY))
        .await?;
    let pid = stack.service.pid();
    let idle_kib = procfs::rss_kib(pid).context("cannot read the service's VmRSS")?;

    let sampling = Arc::new(AtomicBool::new(true));
    let last_kib = Arc::new(AtomicU64::new(idle_kib));
    let sampler = tokio::spawn({
        let sampling = Arc::clone(&sampling);
        let last_kib = Arc::clone(&last_kib);
        async move {
            while sampling.load(Ordering::Relaxed) {
                if let Some(kib) = procfs::rss_kib(pid) {
                    last_kib.store(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        }
    });

    let before = stack.cpu_mark();
    let outcome = stream::throughput(
        stack.service.delivery(),
        &stack.tickets,
        &StreamPlan {
            target: plan.target(&destination),
            run: "memory".to_string(),
            max_records: plan.memory_records,
            duration: plan.memory_time_limit,
            drain_limit: plan.batched_drain_limit,
        },
    )
    .await;
    let usage = before.until(&stack.cpu_mark());
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let outcome = outcome?;
    stack.ensure_running()?;
    let peak_kib = procfs::peak_rss_kib(pid).context("cannot read the service's VmHWM")?;
    let end_kib = last_kib.load(Ordering::Relaxed);
    if outcome.delivered < plan.memory_records {
        return Err(BenchError::new(format!(
            "memory run delivered {} of {} records within {:?} ({})",
            outcome.delivered,
            plan.memory_records,
            plan.memory_time_limit,
            outcome.problems()
        )));
    }
    let peak_mib = peak_kib as f64 / 1024.0;
    let problems = match outcome.problems() {
        problems if problems.is_empty() => problems,
        problems => format!("; PROBLEMS: {problems}"),
    };
    report.row(
        format!("4 memory {} rec", thousands(plan.memory_records as f64)),
        "service VmHWM",
        format!("{peak_mib:.1} MiB"),
        outcome.elapsed.as_secs_f64(),
        Some(usage),
        format!(
            "idle before {:.1} MiB, at end {:.1} MiB, {} rec/s; {}{problems}",
            idle_kib as f64 / 1024.0,
            end_kib as f64 / 1024.0,
            thousands(outcome.delivered_per_s()),
            outcome.timeline()
        ),
    );
    report.headline.peak_rss_mib = Some(peak_mib);
    Ok(())
}
