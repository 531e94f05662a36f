//! `groove-bench`: measures groove-destination end to end against groove-sandbox, both run as child
//! processes on loopback, and compares the per-record path with a bare reqwest baseline in the same run.
//!
//! Build everything first (`cargo build --release --bins`), then `target/release/groove-bench [--quick]
//! [--json PATH] [--only LIST]`. It prints a table (absolute figures and each process's CPU per run) and one
//! JSON object with the headline numbers. Children are killed when the bench ends, fails, panics or is
//! interrupted.

mod children;
mod cpu;
mod database;
mod fail;
mod plan;
mod procfs;
mod raw;
mod records;
mod report;
mod sandbox;
mod scenarios;
mod service;
mod sink;
mod stack;
mod stats;
mod stream;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use groove_destination::proto::ResultDetail;

use crate::children::Binaries;
use crate::fail::{BenchError, BenchResult, Context};
use crate::plan::{Plan, Scenario};
use crate::report::Report;
use crate::scenarios::Env;

/// Benchmark of groove-destination against groove-sandbox (both started as child processes).
#[derive(Debug, Parser)]
#[command(name = "groove-bench")]
struct Args {
    /// Short runs (under 3 minutes) with the same outputs; the full mode takes several minutes.
    #[arg(long)]
    quick: bool,

    /// Also write the JSON object to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,

    /// How much of each result the streams ask back: `full` (the contract's default: Groove's answer and the
    /// request as sent) or `outcome-only`.
    #[arg(long, value_name = "DETAIL", default_value = "full", value_parser = parse_detail)]
    result_detail: ResultDetail,

    /// Run only these scenarios (comma-separated): per-record, per-record-c1, per-record-c8, per-record-c32,
    /// batched, rate-limited, memory, latency, latency-bound, batched-sink. Keys of scenarios not run are null in the JSON.
    #[arg(long, value_name = "LIST")]
    only: Option<String>,

    /// Start the service with metrics kept and served (`--metrics-listen` on an ephemeral loopback port), to
    /// compare against a run without.
    #[arg(long)]
    service_metrics: bool,

    /// Store the service's data in PostgreSQL: the admin URL of a server on which the bench creates (and
    /// afterwards drops) a fresh database per scenario. Without it, the embedded SQLite store in a scratch dir.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("groove-bench: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            outcome = run(&args) => outcome,
            // Returning drops the run future, and with it every child guard: the children are killed.
            () = interrupted() => Err(BenchError::new("interrupted")),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("groove-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: &Args) -> BenchResult<()> {
    let started = Instant::now();
    let mut binaries = Binaries::locate()?;
    if args.service_metrics {
        binaries.service_args = vec!["--metrics-listen".into(), "127.0.0.1:0".into()];
    }
    binaries.database_url.clone_from(&args.database_url);
    let plan = Plan::new(args.quick, args.result_detail);
    let scenarios = match &args.only {
        Some(list) => Scenario::parse_list(list)?,
        None => Scenario::all(),
    };
    let machine = procfs::machine();
    eprintln!(
        "groove-bench: {} mode on {machine}; service {}, sandbox {}",
        if plan.quick { "quick" } else { "full" },
        binaries.service.display(),
        binaries.sandbox.display()
    );
    let env = Env {
        binaries: &binaries,
        plan: &plan,
    };
    let mut report = Report::default();
    report.note(binaries.describe());
    report.note(format!(
        "streams ask for result detail {} (--result-detail)",
        args.result_detail.as_str_name()
    ));
    report.note(format!(
        "service store: {} (--database-url)",
        args.database_url
            .as_deref()
            .map_or_else(|| "sqlite in a scratch dir".to_string(), database::describe)
    ));
    report.note(format!(
        "service metrics {} (--service-metrics)",
        if args.service_metrics { "on" } else { "off" }
    ));
    let levels: Vec<u32> = scenarios
        .iter()
        .filter_map(|scenario| match scenario {
            Scenario::PerRecord(level) => Some(*level),
            _ => None,
        })
        .collect();
    if !levels.is_empty() {
        scenarios::per_record::run(&env, &levels, &mut report).await?;
    }
    if scenarios.contains(&Scenario::Batched) {
        scenarios::batched::run(&env, &mut report).await?;
    }
    if scenarios.contains(&Scenario::RateLimited) {
        scenarios::rate_limited::run(&env, &mut report).await?;
    }
    if scenarios.contains(&Scenario::Memory) {
        scenarios::memory::run(&env, &mut report).await?;
    }
    if scenarios.contains(&Scenario::Latency) {
        scenarios::latency::run(&env, &mut report).await?;
    }
    if scenarios.contains(&Scenario::LatencyBound) {
        scenarios::latency_bound::run(&env, &mut report).await?;
    }
    if scenarios.contains(&Scenario::BatchedSink) {
        scenarios::batched_sink::run(&env, &mut report).await?;
    }

    let json = report.json(&machine);
    let text = serde_json::to_string_pretty(&json).context("cannot encode the JSON result")?;
    println!("\n{}", report.table());
    println!("{text}");
    if let Some(path) = &args.json {
        std::fs::write(path, format!("{text}\n"))
            .context(format!("cannot write {}", path.display()))?;
    }
    eprintln!(
        "groove-bench: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn parse_detail(text: &str) -> Result<ResultDetail, String> {
    match text {
        "full" => Ok(ResultDetail::Full),
        "outcome-only" => Ok(ResultDetail::OutcomeOnly),
        other => Err(format!("{other:?} is not full or outcome-only")),
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
