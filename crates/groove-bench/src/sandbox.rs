//! The groove-sandbox child: start it with the flags a scenario needs, wait for its "listening" line, and
//! read its counters.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use groove_sandbox::SandboxStats;

use crate::children::{free_port, log_tail, ChildGuard, ScratchDir};
use crate::fail::{BenchError, BenchResult, Context};

/// The key the sandbox accepts and the service is given as its credential.
pub const API_KEY: &str = "bench-key-0123456789abcdef";
/// How long the sandbox gets to print its first line.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// Tickets the sandbox keeps: small, so its memory and CPU stay flat over millions of creates.
const MAX_STORED_TICKETS: &str = "1000";

/// How the sandbox should behave for a scenario.
#[derive(Clone, Debug, Default)]
pub struct SandboxFlags {
    /// `--rate-limit`, e.g. `50/1s`.
    pub rate_limit: Option<String>,
    /// `--accept-batches`: take JSON arrays on create endpoints (the batched path).
    pub accept_batches: bool,
    /// `--max-stored-tickets`, when a scenario updates more tickets than the default keeps.
    pub max_stored_tickets: Option<u64>,
}

pub struct SandboxChild {
    pub guard: ChildGuard,
    /// `http://127.0.0.1:PORT/v1`, as printed by the sandbox.
    pub base_url: String,
    /// `http://127.0.0.1:PORT/_sandbox`.
    pub control_url: String,
    /// The seeded mailbox address: a valid `to` for tickets.
    pub mailbox_email: String,
}

impl SandboxChild {
    pub fn start(
        binary: &std::path::Path,
        flags: &SandboxFlags,
        scratch: &ScratchDir,
    ) -> BenchResult<Self> {
        let port = free_port()?;
        let log = scratch.path().join("sandbox.log");
        let mut command = Command::new(binary);
        command
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .args(["--api-key", API_KEY])
            // Recording every request would grow and cost CPU; the counters behind /_sandbox/stats still run.
            .args(["--max-recorded", "0"])
            .arg("--max-stored-tickets")
            .arg(
                flags
                    .max_stored_tickets
                    .map_or_else(|| MAX_STORED_TICKETS.to_string(), |count| count.to_string()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).context("cannot create sandbox.log")?);
        if let Some(limit) = &flags.rate_limit {
            command.args(["--rate-limit", limit]);
        }
        if flags.accept_batches {
            command.arg("--accept-batches");
        }
        let mut child = command
            .spawn()
            .context(format!("cannot start {}", binary.display()))?;
        let stdout = child.stdout.take().context("sandbox stdout not piped")?;
        let mut guard = ChildGuard::new("groove-sandbox", child);
        let line = first_line(stdout).map_err(|error| {
            let exited = guard
                .ensure_running()
                .err()
                .map(|exit| format!(" ({exit})"))
                .unwrap_or_default();
            BenchError::new(format!(
                "groove-sandbox did not start{exited}: {error}\n{}",
                log_tail(&log, 20)
            ))
        })?;
        let base_url = line
            .split_whitespace()
            .find(|word| word.starts_with("http://"))
            .context(format!("no URL in the sandbox's first line: {line}"))?
            .trim_end_matches('/')
            .to_string();
        let control_url = base_url
            .strip_suffix("/v1")
            .map(|root| format!("{root}/_sandbox"))
            .context(format!("sandbox URL {base_url} does not end in /v1"))?;
        let mailbox_email = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("mailbox_email="))
            .unwrap_or("support@sandbox.example.com")
            .to_string();
        Ok(SandboxChild {
            guard,
            base_url,
            control_url,
            mailbox_email,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }
}

/// Reads the sandbox's one-line announcement, then keeps draining stdout on the same thread so the child can
/// never block on a full pipe.
fn first_line(stdout: impl Read + Send + 'static) -> BenchResult<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        let read = reader.read_line(&mut line).map(|_| line);
        let _ = tx.send(read);
        let _ = std::io::copy(&mut reader, &mut std::io::sink());
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(Ok(line)) if !line.trim().is_empty() => Ok(line.trim().to_string()),
        Ok(Ok(_)) => Err(BenchError::new("stdout closed before the listening line")),
        Ok(Err(error)) => Err(BenchError::new(format!("cannot read stdout: {error}"))),
        Err(_) => Err(BenchError::new(format!(
            "no listening line within {START_TIMEOUT:?}"
        ))),
    }
}

/// Reads `GET /_sandbox/stats` (calls by HTTP status since start).
pub async fn stats(http: &reqwest::Client, control_url: &str) -> BenchResult<SandboxStats> {
    let url = format!("{control_url}/stats");
    http.get(&url)
        .send()
        .await
        .context(format!("GET {url}"))?
        .error_for_status()
        .context(format!("GET {url}"))?
        .json::<SandboxStats>()
        .await
        .context(format!("GET {url}: unexpected body"))
}

/// Sets the sandbox's faults (`PUT /_sandbox/faults`); fields left out are off.
pub async fn set_faults(
    http: &reqwest::Client,
    control_url: &str,
    faults: &serde_json::Value,
) -> BenchResult<()> {
    let url = format!("{control_url}/faults");
    http.put(&url)
        .json(faults)
        .send()
        .await
        .context(format!("PUT {url}"))?
        .error_for_status()
        .context(format!("PUT {url}"))?;
    Ok(())
}
