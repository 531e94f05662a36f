//! Scenario 7: the batched path against a bare counting sink instead of the sandbox, so the figure is the
//! service's own cost: records of about 320 bytes as raw JSON, a manual `POST tickets` destination with
//! batches of 1,000, outcome-only results, one stream. Reports records/s, the service's CPU time per record
//! and its peak resident memory.

use std::time::Instant;

use groove_destination::proto::ResultDetail;

use crate::children::ScratchDir;
use crate::database::ScratchDatabase;
use crate::fail::{BenchError, BenchResult, Context};
use crate::procfs;
use crate::records::{StreamTarget, Tickets};
use crate::report::{thousands, Report};
use crate::service::{batched_tickets_config, ServiceChild};
use crate::sink::CountingSink;
use crate::stream::{self, StreamPlan};

use super::Env;

pub const BATCH_SIZE: u32 = 1_000;
/// The service's default `delivery.concurrency`.
pub const CONCURRENCY: u32 = 8;
/// Bytes of each record's JSON.
pub const RECORD_BYTES: usize = 320;

pub async fn run(env: &Env<'_>, report: &mut Report) -> BenchResult<()> {
    let plan = env.plan;
    let scratch = ScratchDir::create("batched-sink")?;
    let sink = CountingSink::start().await?;
    let database = match &env.binaries.database_url {
        Some(admin_url) => Some(ScratchDatabase::create(admin_url, "batched-sink").await?),
        None => None,
    };
    let mut args = env.binaries.service_args.clone();
    if let Some(database) = &database {
        args.extend(["--database-url".to_string(), database.url().to_string()]);
    }
    let mut service =
        ServiceChild::start(&env.binaries.service, &args, &sink.base_url(), &scratch).await?;
    service.create_credential("bench-sink-key").await?;
    let destination = service
        .active_destination("sink", batched_tickets_config(BATCH_SIZE, CONCURRENCY))
        .await?;
    let tickets = Tickets::new("support@bench.example").padded_to(RECORD_BYTES);
    let target = StreamTarget {
        destination: destination.clone(),
        detail: ResultDetail::OutcomeOnly,
    };
    let pid = service.pid();

    let cpu_before = procfs::cpu_seconds(pid).context("cannot read the service's CPU time")?;
    let bench_before = procfs::cpu_seconds(std::process::id()).unwrap_or(0.0);
    let started = Instant::now();
    let outcome = stream::throughput(
        service.delivery(),
        &tickets,
        &StreamPlan {
            target,
            run: "sink".to_string(),
            max_records: plan.sink_records,
            duration: plan.sink_time_limit,
            drain_limit: plan.batched_drain_limit,
        },
    )
    .await?;
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = procfs::cpu_seconds(pid).context("cannot read the service's CPU time")?;
    // The producer and the sink both run in the bench process: if it is near a core, it bounds the figure.
    let bench_cores =
        (procfs::cpu_seconds(std::process::id()).unwrap_or(0.0) - bench_before) / wall.max(1e-9);
    service.guard.ensure_running()?;
    let peak_mib =
        procfs::peak_rss_kib(pid).context("cannot read the service's VmHWM")? as f64 / 1024.0;
    if outcome.delivered < plan.sink_records {
        return Err(BenchError::new(format!(
            "batched-sink run delivered {} of {} records within {:?} ({})",
            outcome.delivered,
            plan.sink_records,
            plan.sink_time_limit,
            outcome.problems()
        )));
    }
    let received = sink.records();
    if received != outcome.delivered {
        return Err(BenchError::new(format!(
            "the sink counted {received} records, the service reported {} delivered",
            outcome.delivered
        )));
    }
    let rate = outcome.delivered_per_s();
    let service_cores = (cpu_after - cpu_before) / wall.max(1e-9);
    let cpu_us_per_record = (cpu_after - cpu_before) * 1e6 / outcome.delivered.max(1) as f64;
    report.row(
        format!("7 batched-sink {BATCH_SIZE}/call"),
        "service, to summary",
        format!("{} rec/s", thousands(rate)),
        outcome.elapsed.as_secs_f64(),
        None,
        format!(
            "{} records of {RECORD_BYTES} B, outcome-only; service {service_cores:.2} cores, \
             {cpu_us_per_record:.2} µs CPU/record, peak RSS {peak_mib:.1} MiB; bench (producer and sink) \
             {bench_cores:.2} cores; {}",
            thousands(outcome.delivered as f64),
            outcome.timeline()
        ),
    );
    report.headline.batched_sink_records_per_s = Some(rate);
    report.headline.batched_sink_service_cpu_us_per_record = Some(cpu_us_per_record);
    report.headline.batched_sink_peak_rss_mib = Some(peak_mib);
    drop(service);
    drop(database);
    Ok(())
}
