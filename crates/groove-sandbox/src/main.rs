//! `groove-sandbox`: runs the in-memory Groove API fake (the `groove_sandbox` library) as a
//! process, for demos and child-process benchmarks.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use groove_sandbox::{Faults, RateLimit, SandboxConfig};

/// A local fake of the Groove helpdesk REST API v1.
#[derive(Debug, Parser)]
#[command(name = "groove-sandbox", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "GROOVE_SANDBOX_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The only API key accepted (as `Authorization: Bearer` or `?access_token=`).
    #[arg(long, env = "GROOVE_SANDBOX_API_KEY", default_value = groove_sandbox::DEFAULT_API_KEY)]
    api_key: String,

    /// Fixed-window rate limit as CALLS/WINDOW, e.g. 50/1s or 1000/500ms.
    #[arg(long, env = "GROOVE_SANDBOX_RATE_LIMIT")]
    rate_limit: Option<RateLimit>,

    /// Share of calls (0..=1) answered with a random 500, 502 or 503.
    #[arg(long, env = "GROOVE_SANDBOX_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,

    /// Milliseconds added before every API call is answered.
    #[arg(long, env = "GROOVE_SANDBOX_LATENCY_MS", default_value_t = 0)]
    latency_ms: u64,

    /// Share of calls (0..=1) whose connection is reset without a response.
    #[arg(long, env = "GROOVE_SANDBOX_DROP_RATE", default_value_t = 0.0)]
    drop_rate: f64,

    /// Share (0..=1) of the random errors and resets above that are carried out first (the ticket
    /// IS created) and only then answered with the fault. 429s are never carried out.
    #[arg(long, env = "GROOVE_SANDBOX_PROCESSED_SHARE", default_value_t = 0.0)]
    processed_share: f64,

    /// How many requests to keep for GET /_sandbox/requests.
    #[arg(long, env = "GROOVE_SANDBOX_MAX_RECORDED", default_value_t = groove_sandbox::DEFAULT_MAX_RECORDED_REQUESTS)]
    max_recorded: usize,

    /// How many tickets to keep; beyond it the oldest is evicted (then answered 404), so long
    /// benchmarks run in bounded memory. Ticket numbers keep increasing.
    #[arg(long, env = "GROOVE_SANDBOX_MAX_STORED_TICKETS", default_value_t = groove_sandbox::DEFAULT_MAX_STORED_TICKETS)]
    max_stored_tickets: usize,

    /// NOT Groove behaviour: accept a JSON array on create endpoints and create one resource per
    /// element, simulating a bulk-capable gateway in front of Groove (for batching tests and
    /// benchmarks only). Without it arrays are refused with 400, as Groove would.
    #[arg(long, env = "GROOVE_SANDBOX_ACCEPT_BATCHES", value_parser = clap::builder::BoolishValueParser::new())]
    accept_batches: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let faults = Faults {
        rate_limit: args.rate_limit,
        error_rate: args.error_rate,
        latency: Duration::from_millis(args.latency_ms),
        drop_rate: args.drop_rate,
        processed_share: args.processed_share,
        accept_batches: args.accept_batches,
        ..Faults::default()
    };
    if let Err(err) = faults.validate() {
        eprintln!("groove-sandbox: {err}");
        return ExitCode::from(2);
    }
    let listener = match tokio::net::TcpListener::bind(args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("groove-sandbox: cannot listen on {}: {err}", args.listen);
            return ExitCode::FAILURE;
        }
    };
    let config = SandboxConfig {
        api_key: args.api_key,
        faults,
        max_recorded_requests: args.max_recorded,
        max_stored_tickets: args.max_stored_tickets,
    };
    let handle = match groove_sandbox::start(listener, config).await {
        Ok(handle) => handle,
        Err(err) => {
            eprintln!("groove-sandbox: cannot start: {err}");
            return ExitCode::FAILURE;
        }
    };
    let seeds = handle.seeds();
    // One line, so a parent process can read the URL from the first line of stdout.
    println!(
        "groove-sandbox listening on {} seeds: mailbox={} mailbox_email={} agents={} group={} group_name={:?} kb={} article={} widget={}",
        handle.base_url(),
        seeds.mailbox_id,
        seeds.mailbox_email,
        seeds.agent_emails.join(","),
        seeds.group_id,
        seeds.group_name,
        seeds.knowledge_base_id,
        seeds.article_id,
        seeds.widget_id,
    );
    shutdown_signal().await;
    handle.shutdown().await;
    ExitCode::SUCCESS
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The service has the same function; the sandbox shares no code with it.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
