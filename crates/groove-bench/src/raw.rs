//! The raw baseline: a bare reqwest loop in this process sending the requests the service would send (same
//! URL, headers, bodies and key) straight to the sandbox. Its rate is the ceiling the service is compared to:
//! what this machine does for one-record POSTs with no gRPC, no ledger and no results in between.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use groove_destination::proto;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION};

use crate::fail::{BenchError, BenchResult, Context};
use crate::records::Tickets;
use crate::stats::Samples;

/// The per-call timeout the service uses by default; set here too so both sides pay for the same timer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and how the baseline POSTs: taken from the service's own preview of a bench record.
#[derive(Clone, Debug)]
pub struct RawTarget {
    url: String,
    headers: HeaderMap,
}

impl RawTarget {
    /// Builds the target from the service's rendering of `sample_seq`, and checks that the baseline's body is
    /// byte-for-byte what the service sends (otherwise the comparison would be meaningless).
    pub fn from_preview(
        preview: &proto::PlannedRequest,
        api_key: &str,
        tickets: &Tickets,
        sample_seq: u64,
    ) -> BenchResult<Self> {
        if preview.method != proto::HttpMethod::Post as i32 {
            return Err(BenchError::new(format!(
                "the service would not POST the bench record: {preview:?}"
            )));
        }
        let expected = tickets.body(sample_seq);
        if preview.body.as_bytes() != expected.as_slice() {
            return Err(BenchError::new(format!(
                "the service rewrites the bench body, so the raw baseline would not send the same bytes:\n  service: {}\n  raw:     {}",
                preview.body,
                String::from_utf8_lossy(&expected)
            )));
        }
        let mut headers = HeaderMap::new();
        for header in &preview.headers {
            // The preview shows the key as `Bearer ****`; the real one is set below.
            if header.name.eq_ignore_ascii_case("authorization") {
                continue;
            }
            let name = HeaderName::from_bytes(header.name.as_bytes())
                .context(format!("header name {:?}", header.name))?;
            let value = HeaderValue::from_str(&header.value)
                .context(format!("header value {:?}", header.value))?;
            headers.insert(name, value);
        }
        let bearer = HeaderValue::from_str(&format!("Bearer {api_key}")).context("api key")?;
        headers.insert(AUTHORIZATION, bearer);
        Ok(RawTarget {
            url: preview.url.clone(),
            headers,
        })
    }

    /// Header names sent, for the report.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = self.headers.keys().map(|name| name.as_str()).collect();
        format!("POST {} with {}", self.url, names.join(", "))
    }
}

/// A client configured like the service's Groove client (`src/groove/client.rs`): HTTP/1.1 keep-alive pool,
/// no redirects, Nagle off.
pub fn client() -> BenchResult<reqwest::Client> {
    reqwest::Client::builder()
        .user_agent(concat!("groove-destination/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the raw HTTP client")
}

/// One baseline run: `concurrency` loops until `duration` has passed or `max_calls` were made.
#[derive(Clone, Copy, Debug)]
pub struct RawPlan {
    pub concurrency: usize,
    pub duration: Duration,
    pub max_calls: u64,
    /// Numbering of the bodies starts here, so runs do not repeat each other's tickets.
    pub first_seq: u64,
}

#[derive(Debug, Default)]
pub struct RawOutcome {
    /// Calls answered 2xx.
    pub ok: u64,
    /// Calls answered otherwise, or failed.
    pub errors: u64,
    pub elapsed: Duration,
    /// Per-call time from sending to the end of the answer's body.
    pub latencies: Samples,
    pub first_error: Option<String>,
}

pub async fn run(
    http: &reqwest::Client,
    target: &RawTarget,
    tickets: &Tickets,
    plan: RawPlan,
) -> RawOutcome {
    let next = Arc::new(AtomicU64::new(plan.first_seq));
    let last = plan.first_seq + plan.max_calls;
    let started = Instant::now();
    let deadline = started + plan.duration;
    let loops: Vec<_> = (0..plan.concurrency.max(1))
        .map(|_| {
            let http = http.clone();
            let target = target.clone();
            let tickets = tickets.clone();
            let next = Arc::clone(&next);
            tokio::spawn(
                async move { call_loop(&http, &target, &tickets, &next, last, deadline).await },
            )
        })
        .collect();
    let mut outcome = RawOutcome::default();
    for handle in loops {
        match handle.await {
            Ok(part) => {
                outcome.ok += part.ok;
                outcome.errors += part.errors;
                outcome.latencies.extend(part.latencies);
                outcome.first_error = outcome.first_error.or(part.first_error);
            }
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error = Some(format!("raw loop panicked: {error}"));
            }
        }
    }
    outcome.elapsed = started.elapsed();
    outcome
}

async fn call_loop(
    http: &reqwest::Client,
    target: &RawTarget,
    tickets: &Tickets,
    next: &AtomicU64,
    last: u64,
    deadline: Instant,
) -> RawOutcome {
    let mut outcome = RawOutcome::default();
    while Instant::now() < deadline {
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= last {
            break;
        }
        let body = tickets.body(seq);
        let sent = Instant::now();
        let answer = http
            .post(&target.url)
            .headers(target.headers.clone())
            .timeout(CALL_TIMEOUT)
            .body(body)
            .send()
            .await;
        // Read the whole answer, as the service does before it can report the call.
        let result = match answer {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|_| status)
            }
            Err(error) => Err(error),
        };
        outcome.latencies.push(sent.elapsed());
        match result {
            Ok(status) if status.is_success() => outcome.ok += 1,
            Ok(status) => {
                outcome.errors += 1;
                outcome
                    .first_error
                    .get_or_insert_with(|| format!("status {status}"));
            }
            Err(error) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert_with(|| error.to_string());
            }
        }
    }
    outcome
}
