//! Forwards every result to the destination's response webhook, from a bounded queue with its own retries.
//! It never carries the Groove API key, and it never slows delivery: when the queue is full, results are
//! dropped, counted and logged.
//!
//! The webhook is a URL a caller chose, so the calls are guarded: redirects are not followed (a 3xx is a
//! failed forward), the address policy of `--webhook-allowed-hosts` is applied to the addresses actually
//! connected to (see `webhook_guard`), no proxy from the environment is used (the policy could not see past
//! it), and logs show the URL with its password redacted.
//!
//! reqwest rather than the hyper connections Groove calls use: those are tuned for one known host, while a
//! webhook needs a resolver that applies the address policy (`PolicyResolver`), redirects turned off and no
//! proxy, all of which reqwest offers as settings. The webhook is off the hot path, so its cost does not matter.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use url::Url;

use crate::delivery::backoff::Backoff;
use crate::delivery::report::DeliveryReport;
use crate::delivery::webhook_guard::{self, PolicyResolver};
use crate::domain::host_policy::HostPolicy;
use crate::domain::webhook_url;
use crate::metrics::{DestinationMetrics, WebhookResult};

/// Results waiting to be forwarded, over all destinations.
const QUEUE_CAPACITY: usize = 10_000;
/// Payload bytes waiting, over all destinations.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Forwarding requests in flight at once.
const WORKERS: usize = 4;
const ATTEMPTS: u32 = 3;
/// Waits between attempts: ceilings 0.4 and 0.8 s, about 0.6 s in all on average.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(400), Duration::from_secs(10));
const TIMEOUT: Duration = Duration::from_secs(10);
/// A drop is logged for the first one and then once per this many, so a dead webhook cannot flood the log.
const DROP_LOG_EVERY: u64 = 1000;

/// Where one session's results go: the webhook URL, the same URL as logs show it (password redacted), and the
/// destination they come from.
pub(crate) struct WebhookTarget {
    url: Url,
    shown: String,
    destination: String,
    /// The host when it is an IP address: checked before each call, since no resolver sees it.
    literal: Option<IpAddr>,
    /// A refused address is logged as a warning once per target, then at debug level.
    refusal_logged: AtomicBool,
    metrics: DestinationMetrics,
}

impl WebhookTarget {
    /// `None` (logged) for a URL that does not parse, which validation keeps out of stored configurations.
    pub fn new(
        url: &str,
        destination: &str,
        metrics: DestinationMetrics,
    ) -> Option<Arc<WebhookTarget>> {
        let shown = webhook_url::redact(url);
        match Url::parse(url) {
            Ok(parsed) => Some(Arc::new(WebhookTarget {
                literal: webhook_guard::literal_address(&parsed),
                url: parsed,
                shown,
                destination: destination.to_string(),
                refusal_logged: AtomicBool::new(false),
                metrics,
            })),
            Err(error) => {
                tracing::warn!(%destination, webhook = %shown, %error, "response webhook is not a valid url; results are not forwarded");
                None
            }
        }
    }

    fn refused(&self, reason: &dyn std::fmt::Display) {
        if self.refusal_logged.swap(true, Ordering::Relaxed) {
            tracing::debug!(destination = %self.destination, webhook = %self.shown, %reason, "response webhook address refused; result not forwarded");
        } else {
            tracing::warn!(destination = %self.destination, webhook = %self.shown, %reason, "response webhook address refused; result not forwarded (logged once per stream)");
        }
    }
}

struct Job {
    target: Arc<WebhookTarget>,
    payload: Vec<u8>,
}

#[derive(Clone)]
pub struct WebhookForwarder {
    /// Every worker receives from it: a multi-consumer queue, so no worker waits on another to take a job.
    queue: async_channel::Sender<Job>,
    dropped: Arc<AtomicU64>,
    /// Payload bytes waiting; a batch's result can carry a large Groove answer, so the queue is bounded in bytes
    /// as well as in results.
    queued_bytes: Arc<AtomicUsize>,
}

impl WebhookForwarder {
    /// Starts the workers; `policy` says which internal addresses webhooks may reach.
    pub fn start(policy: HostPolicy) -> Result<Self, reqwest::Error> {
        let policy = Arc::new(policy);
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "groove-destination/",
                env!("CARGO_PKG_VERSION"),
                " webhook"
            ))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver::new(policy.clone())))
            .build()?;
        let (queue, receiver) = async_channel::bounded(QUEUE_CAPACITY);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        for _ in 0..WORKERS {
            tokio::spawn(forward(
                client.clone(),
                policy.clone(),
                receiver.clone(),
                queued_bytes.clone(),
            ));
        }
        Ok(WebhookForwarder {
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
            queued_bytes,
        })
    }

    /// Queues a result for `target` without waiting.
    pub(crate) fn submit(&self, target: &Arc<WebhookTarget>, report: &DeliveryReport) {
        let payload = payload(&target.destination, report)
            .to_string()
            .into_bytes();
        let size = payload.len();
        let job = Job {
            target: target.clone(),
            payload,
        };
        // Counted before sending, so a worker that takes the job at once never subtracts first.
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let queued = before + size <= MAX_QUEUED_BYTES && self.queue.try_send(job).is_ok();
        if !queued {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            target.metrics.webhook(WebhookResult::Dropped);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(DROP_LOG_EVERY) {
                tracing::warn!(dropped, destination = %target.destination, webhook = %target.shown, "response webhook queue full; results dropped");
            }
        }
    }
}

/// What the webhook receives: the result, without the request (whose headers could carry secrets of the
/// user's own) and never with the Groove key.
pub fn payload(destination_name: &str, report: &DeliveryReport) -> Value {
    let response = report.answer.as_ref().map(|answer| {
        let body = serde_json::from_slice::<Value>(&answer.body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&answer.body).into_owned()));
        json!({ "http_status": answer.status, "body": body })
    });
    json!({
        "destination": destination_name,
        "record_ids": report.record_ids,
        "outcome": report.outcome.as_str(),
        "http_status": report.answer.as_ref().map_or(0, |answer| answer.status),
        "attempts": report.attempts,
        "latency_ms": report.latency.as_millis() as u64,
        "error": report.error,
        "field": report.field,
        "response": response,
        "time_unix_ms": crate::delivery::clock::now_ms(),
    })
}

async fn forward(
    client: reqwest::Client,
    policy: Arc<HostPolicy>,
    receiver: async_channel::Receiver<Job>,
    queued_bytes: Arc<AtomicUsize>,
) {
    while let Ok(job) = receiver.recv().await {
        queued_bytes.fetch_sub(job.payload.len(), Ordering::Relaxed);
        let result = deliver(&client, &policy, &job).await;
        job.target.metrics.webhook(result);
    }
}

/// Sends one result, retrying 5xx, 429 and connection failures; everything else ends it, logged.
async fn deliver(client: &reqwest::Client, policy: &HostPolicy, job: &Job) -> WebhookResult {
    let target = &*job.target;
    if let Some(ip) = target.literal {
        if let Err(refused) = policy.check(None, ip) {
            target.refused(&refused);
            return WebhookResult::Failed;
        }
    }
    for attempt in 1..=ATTEMPTS {
        let sent = client
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(job.payload.clone())
            .send()
            .await;
        let reason = match sent {
            Ok(response) => {
                let status = response.status();
                if status.is_success() {
                    return WebhookResult::Delivered;
                }
                if status.is_redirection() {
                    tracing::warn!(destination = %target.destination, webhook = %target.shown, status = status.as_u16(), "response webhook answered with a redirect, which is not followed; result not forwarded");
                    return WebhookResult::Failed;
                }
                if !status.is_server_error() && status.as_u16() != 429 {
                    tracing::warn!(destination = %target.destination, webhook = %target.shown, status = status.as_u16(), "response webhook refused a result");
                    return WebhookResult::Failed;
                }
                format!("status {}", status.as_u16())
            }
            Err(error) => {
                if let Some(refused) = webhook_guard::refusal(&error) {
                    target.refused(refused);
                    return WebhookResult::Failed;
                }
                describe(error)
            }
        };
        if attempt == ATTEMPTS {
            tracing::warn!(destination = %target.destination, webhook = %target.shown, %reason, "response webhook unreachable; result not forwarded");
            return WebhookResult::Failed;
        }
        BACKOFF.wait(attempt).await;
    }
    WebhookResult::Failed
}

/// The error and its causes, without the URL reqwest would print (it may carry a password).
fn describe(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut cause = std::error::Error::source(&error);
    while let Some(current) = cause {
        text.push_str(": ");
        text.push_str(&current.to_string());
        cause = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::outcome::Outcome;
    use crate::groove::GrooveAnswer;

    impl WebhookForwarder {
        fn dropped(&self) -> u64 {
            self.dropped.load(Ordering::Relaxed)
        }
    }

    fn allowing(entries: &[&str]) -> HostPolicy {
        let parsed: Vec<crate::domain::host_policy::AllowedHost> =
            entries.iter().map(|entry| entry.parse().unwrap()).collect();
        HostPolicy::new(&parsed)
    }

    /// Log lines written while the guard lives, from this thread (a current-thread runtime runs the
    /// forwarder's workers on it too).
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    impl Captured {
        fn start() -> (Captured, tracing::subscriber::DefaultGuard) {
            let captured = Captured::default();
            let subscriber = tracing_subscriber::fmt()
                .with_writer(captured.clone())
                .with_ansi(false)
                .with_max_level(tracing::Level::DEBUG)
                .finish();
            let guard = tracing::subscriber::set_default(subscriber);
            (captured, guard)
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
        }
    }

    /// A local HTTP receiver counting the POSTs it gets; with `redirect_to`, it answers each with a 302 there.
    struct Receiver {
        port: u16,
        hits: Arc<AtomicUsize>,
    }

    impl Receiver {
        async fn start(redirect_to: Option<String>) -> Receiver {
            use axum::response::{IntoResponse, Response};
            let hits = Arc::new(AtomicUsize::new(0));
            let counted = hits.clone();
            let app = axum::Router::new().fallback(move || {
                let counted = counted.clone();
                let redirect_to = redirect_to.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let response: Response = match redirect_to {
                        Some(location) => (
                            http::StatusCode::FOUND,
                            [(http::header::LOCATION, location)],
                        )
                            .into_response(),
                        None => http::StatusCode::NO_CONTENT.into_response(),
                    };
                    response
                }
            });
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            tokio::spawn(async move { axum::serve(listener, app).await });
            Receiver { port, hits }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    /// Waits up to two seconds for `done`.
    async fn eventually(done: impl Fn() -> bool) -> bool {
        for _ in 0..200 {
            if done() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        done()
    }

    /// Forwards one result to `url` under `policy`; true if `receiver` got it.
    async fn forwarded(policy: &[&str], url: &str, receiver: &Receiver) -> bool {
        let forwarder = WebhookForwarder::start(allowing(policy)).unwrap();
        let target =
            WebhookTarget::new(url, "destinations/d", DestinationMetrics::default()).unwrap();
        let before = receiver.hits();
        forwarder.submit(&target, &big_report(3));
        eventually(|| receiver.hits() > before).await
    }

    /// Forwards one result to `url` under `policy` and waits for it to be refused; true if `receiver` got
    /// nothing.
    async fn refused(policy: &[&str], url: &str, receiver: &Receiver, logs: &Captured) -> bool {
        let forwarder = WebhookForwarder::start(allowing(policy)).unwrap();
        let target =
            WebhookTarget::new(url, "destinations/d", DestinationMetrics::default()).unwrap();
        let (before, refusals) = (
            receiver.hits(),
            logs.text().matches("address refused").count(),
        );
        forwarder.submit(&target, &big_report(3));
        // The refusal is logged as the job ends, before any connection: nothing can reach `receiver` after it.
        let logged = eventually(|| logs.text().matches("address refused").count() > refusals).await;
        logged && receiver.hits() == before
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (logs, _guard) = Captured::start();
        let second = Receiver::start(None).await;
        let first = Receiver::start(Some(format!("http://127.0.0.1:{}/stolen", second.port))).await;
        let url = format!("http://user:s3cret@127.0.0.1:{}/hook", first.port);
        assert!(forwarded(&["127.0.0.1/32"], &url, &first).await);
        // Logged as the job ends: had the redirect been followed, `second` would have been hit already.
        assert!(eventually(|| logs.text().contains("redirect")).await);
        assert_eq!(second.hits(), 0, "the redirect was followed");
        assert_eq!(first.hits(), 1, "a 3xx is not retried");
        let log = logs.text();
        assert!(
            log.contains("response webhook answered with a redirect, which is not followed"),
            "{log}"
        );
        assert!(log.contains("status=302"), "{log}");
        assert!(log.contains("user:***@127.0.0.1"), "{log}");
        assert!(!log.contains("s3cret"), "{log}");
    }

    #[tokio::test]
    async fn loopback_is_refused_unless_listed() {
        let (logs, _guard) = Captured::start();
        let receiver = Receiver::start(None).await;
        let by_address = format!("http://user:s3cret@127.0.0.1:{}/hook", receiver.port);
        let by_name = format!("http://localhost:{}/hook", receiver.port);

        assert!(refused(&[], &by_address, &receiver, &logs).await);
        assert!(
            refused(
                &["10.0.0.0/8", "hooks.internal"],
                &by_address,
                &receiver,
                &logs
            )
            .await
        );
        // A host name that resolves to loopback is caught after resolution.
        assert!(refused(&[], &by_name, &receiver, &logs).await);
        assert_eq!(receiver.hits(), 0);
        let log = logs.text();
        assert!(
            log.contains("response webhook address refused; result not forwarded"),
            "{log}"
        );
        assert!(log.contains("destination=destinations/d"), "{log}");
        assert!(
            log.contains("127.0.0.1 is loopback; list it or the webhook's host name in --webhook-allowed-hosts"),
            "{log}"
        );
        assert!(log.contains("webhook host localhost:"), "{log}");
        assert!(log.contains("user:***@127.0.0.1"), "{log}");
        assert!(!log.contains("s3cret"), "{log}");

        assert!(forwarded(&["127.0.0.1/32"], &by_address, &receiver).await);
        assert!(forwarded(&["localhost"], &by_name, &receiver).await);
        // A listed network covers what a name resolves to.
        assert!(forwarded(&["127.0.0.0/8"], &by_name, &receiver).await);
    }

    #[tokio::test]
    async fn metadata_addresses_are_refused_even_when_everything_is_listed() {
        let (logs, _guard) = Captured::start();
        let forwarder = WebhookForwarder::start(allowing(&["0.0.0.0/0", "::/0"])).unwrap();
        for url in [
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/latest/meta-data/",
            "http://[::ffff:169.254.169.254]/",
        ] {
            let target =
                WebhookTarget::new(url, "destinations/d", DestinationMetrics::default()).unwrap();
            forwarder.submit(&target, &big_report(3));
        }
        assert!(eventually(|| logs.text().matches("address refused").count() == 3).await);
        let log = logs.text();
        assert!(
            log.contains("169.254.169.254 is link-local (cloud metadata), which a response webhook may never reach"),
            "{log}"
        );
        assert!(log.contains("fd00:ec2::254 is cloud metadata"), "{log}");
    }

    fn big_report(body_bytes: usize) -> DeliveryReport {
        let mut report = DeliveryReport::unsent("r-1".into(), Outcome::Delivered, "");
        report.attempts = 1;
        report.answer = Some(GrooveAnswer {
            status: 201,
            headers: Default::default(),
            body: format!("\"{}\"", "x".repeat(body_bytes)).into_bytes(),
            latency: std::time::Duration::ZERO,
        });
        report
    }

    #[tokio::test]
    async fn a_stalled_webhook_costs_a_bounded_number_of_bytes_then_drops() {
        // A receiver that accepts connections and never answers: every forward hangs until its timeout.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let _hold = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let forwarder = WebhookForwarder::start(allowing(&["127.0.0.1/32"])).unwrap();
        let target =
            WebhookTarget::new(&url, "destinations/d", DestinationMetrics::default()).unwrap();
        let report = big_report(1024 * 1024);
        for _ in 0..40 {
            forwarder.submit(&target, &report);
        }
        // 4 in the workers' hands, 16 MiB queued at most; the rest of the 40 MiB is dropped, not buffered.
        assert!(
            forwarder.dropped() >= 40 - 4 - 16,
            "dropped {}",
            forwarder.dropped()
        );
        assert!(forwarder.queued_bytes.load(Ordering::Relaxed) <= MAX_QUEUED_BYTES);
    }

    #[test]
    fn the_payload_carries_the_result_but_no_request() {
        let payload = payload("destinations/d", &big_report(3));
        assert_eq!(payload["destination"], "destinations/d");
        assert_eq!(payload["outcome"], "delivered");
        assert_eq!(payload["http_status"], 201);
        assert_eq!(payload["response"]["body"], "xxx");
        assert!(payload.get("request").is_none());
    }
}
