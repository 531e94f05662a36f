//! The groove-destination server: read settings, set up logging, serve until SIGTERM or SIGINT.

use clap::Parser;
use groove_destination::cli::send::SendArgs;
use groove_destination::settings::Settings;
use groove_destination::telemetry::Telemetry;

/// Blocking threads serve the store's reads. A few suffice (the store keeps four reader connections), and
/// every extra thread would keep its own allocator cache alive.
const MAX_BLOCKING_THREADS: usize = 8;

fn main() -> std::process::ExitCode {
    if std::env::args_os().nth(1).is_some_and(|arg| arg == "send") {
        // `send` is a client: its flags are its own, and it logs nothing.
        return send(SendArgs::parse_from(std::env::args_os().skip(1)));
    }
    let settings = Settings::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the OTLP exporter's channel is served by it.
    let telemetry = match runtime.block_on(async { Telemetry::init(&settings) }) {
        Ok(telemetry) => telemetry,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(settings));
    // The runtime still runs here, so the last spans can be sent.
    telemetry.shutdown();
    code
}

async fn run(settings: Settings) -> std::process::ExitCode {
    let listener = match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "error: cannot listen on {} (--listen): {error}",
                settings.listen
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    match groove_destination::serve(settings, listener, groove_destination::shutdown_signal()).await
    {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn send(args: SendArgs) -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match runtime.block_on(groove_destination::cli::send::run(args)) {
        Ok(finished) => {
            println!("{}", finished.tally);
            if let Some(error) = &finished.stream_error {
                eprintln!("error: {error}");
                eprintln!(
                    "the input was read up to line {}; nothing after it was sent",
                    finished.last_line_read
                );
            }
            std::process::ExitCode::from(finished.exit_code())
        }
        Err(error) => {
            eprintln!("error: {error}");
            std::process::ExitCode::from(2)
        }
    }
}

/// jemalloc rather than glibc's malloc: less CPU per record on the per-record path with a peak memory as low
/// as glibc's (compared with groove-bench, alternating runs). mimalloc took less CPU still but held several
/// times the memory.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`. One arena instead of four per core: records are allocated by the
/// thread reading a stream and freed by the workers, the recorder and the store's threads, so with many arenas
/// each kept freed pages of its own, which raised the peak resident memory of a batched stream well beyond what
/// it held live. Freed pages go back to the system after a second instead of ten. `_RJEM_MALLOC_CONF` in the
/// environment still overrides these.
///
/// A thin pointer to a C string, as jemalloc declares it; its weak default is replaced by this symbol.
#[export_name = "_rjem_malloc_conf"]
static MALLOC_CONF: &[u8; 30] = b"narenas:1,dirty_decay_ms:1000\0";
