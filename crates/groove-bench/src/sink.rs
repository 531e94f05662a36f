//! A counting HTTP sink: answers every request 201 at once and counts the records of JSON-array bodies. It
//! stands in for Groove where the bench measures the service's own cost on the batched path, with nothing of
//! the sandbox's ticket building on the other side; it runs in the bench process, whose CPU the table shows
//! apart from the service's.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::fail::{BenchResult, Context};

/// What the sink has received.
#[derive(Debug, Default)]
pub struct SinkCounts {
    pub requests: AtomicU64,
    pub records: AtomicU64,
}

/// The running sink; it stops when dropped.
pub struct CountingSink {
    pub addr: SocketAddr,
    pub counts: Arc<SinkCounts>,
    accept: JoinHandle<()>,
}

impl CountingSink {
    pub async fn start() -> BenchResult<CountingSink> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("cannot bind the sink")?;
        let addr = listener.local_addr().context("sink address")?;
        let counts = Arc::new(SinkCounts::default());
        let accept = tokio::spawn(accept(listener, Arc::clone(&counts)));
        Ok(CountingSink {
            addr,
            counts,
            accept,
        })
    }

    /// The base URL to give the service as `--groove-url`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn records(&self) -> u64 {
        self.counts.records.load(Ordering::Relaxed)
    }
}

impl Drop for CountingSink {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn accept(listener: TcpListener, counts: Arc<SinkCounts>) {
    while let Ok((stream, _)) = listener.accept().await {
        let counts = Arc::clone(&counts);
        tokio::spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&counts)));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(
    request: Request<hyper::body::Incoming>,
    counts: Arc<SinkCounts>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match request.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    counts.requests.fetch_add(1, Ordering::Relaxed);
    counts
        .records
        .fetch_add(records_in(&body), Ordering::Relaxed);
    let response = Response::builder()
        .status(StatusCode::CREATED)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap_or_default();
    Ok(response)
}

/// Records in a body: the elements of a JSON array, or 1 for any other JSON value (0 for no body).
fn records_in(body: &[u8]) -> u64 {
    if body.is_empty() {
        return 0;
    }
    match serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(body) {
        Ok(elements) => elements.len() as u64,
        Err(_) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_counts_its_elements_and_an_object_counts_one() {
        assert_eq!(records_in(br#"[{"a":1},{"b":[1,2]},{}]"#), 3);
        assert_eq!(records_in(br#"{"a":[1,2,3]}"#), 1);
        assert_eq!(records_in(b""), 0);
    }
}
