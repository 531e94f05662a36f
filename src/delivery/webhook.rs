//! Forwards every result to the destination's response webhook, from a bounded queue with its own retries.
//! It never carries the Groove API key, and it never slows delivery: when the queue is full, results are
//! dropped, counted and logged.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Mutex};

use crate::delivery::report::DeliveryReport;

/// Results waiting to be forwarded, over all destinations.
const QUEUE_CAPACITY: usize = 10_000;
/// Payload bytes waiting, over all destinations.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// Forwarding requests in flight at once.
const WORKERS: usize = 4;
const ATTEMPTS: u32 = 3;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const TIMEOUT: Duration = Duration::from_secs(10);
/// A drop is logged for the first one and then once per this many, so a dead webhook cannot flood the log.
const DROP_LOG_EVERY: u64 = 1000;

struct Job {
    url: String,
    payload: Vec<u8>,
}

#[derive(Clone)]
pub struct WebhookForwarder {
    queue: mpsc::Sender<Job>,
    dropped: Arc<AtomicU64>,
    /// Payload bytes waiting; a batch's result can carry a large Groove answer, so the queue is bounded in bytes
    /// as well as in results.
    queued_bytes: Arc<AtomicUsize>,
}

impl WebhookForwarder {
    pub fn start() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!(
                "groove-destination/",
                env!("CARGO_PKG_VERSION"),
                " webhook"
            ))
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()?;
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let receiver = Arc::new(Mutex::new(receiver));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        for _ in 0..WORKERS {
            tokio::spawn(forward(
                client.clone(),
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

    /// Queues a result for `url` without waiting.
    pub fn submit(&self, url: &str, destination_name: &str, report: &DeliveryReport) {
        let payload = payload(destination_name, report).to_string().into_bytes();
        let size = payload.len();
        let job = Job {
            url: url.to_string(),
            payload,
        };
        // Counted before sending, so a worker that takes the job at once never subtracts first.
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let queued = before + size <= MAX_QUEUED_BYTES && self.queue.try_send(job).is_ok();
        if !queued {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped == 1 || dropped.is_multiple_of(DROP_LOG_EVERY) {
                tracing::warn!(dropped, webhook = %url, "response webhook queue full; results dropped");
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
        "time_unix_ms": crate::delivery::engine::now_ms(),
    })
}

async fn forward(
    client: reqwest::Client,
    receiver: Arc<Mutex<mpsc::Receiver<Job>>>,
    queued_bytes: Arc<AtomicUsize>,
) {
    loop {
        let job = { receiver.lock().await.recv().await };
        let Some(job) = job else { return };
        queued_bytes.fetch_sub(job.payload.len(), Ordering::Relaxed);
        let mut backoff = FIRST_BACKOFF;
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(&job.url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(job.payload.clone())
                .send()
                .await;
            let retry = match &sent {
                Ok(response) if response.status().is_success() => false,
                Ok(response) => {
                    response.status().is_server_error() || response.status().as_u16() == 429
                }
                Err(_) => true,
            };
            if !retry {
                if let Ok(response) = &sent {
                    if !response.status().is_success() {
                        tracing::warn!(webhook = %job.url, status = response.status().as_u16(), "response webhook refused a result");
                    }
                }
                break;
            }
            if attempt == ATTEMPTS {
                let reason = match &sent {
                    Ok(response) => format!("status {}", response.status().as_u16()),
                    Err(error) => error.to_string(),
                };
                tracing::warn!(webhook = %job.url, %reason, "response webhook unreachable; result not forwarded");
                break;
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
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
        let forwarder = WebhookForwarder::start().unwrap();
        let report = big_report(1024 * 1024);
        for _ in 0..40 {
            forwarder.submit(&url, "destinations/d", &report);
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
