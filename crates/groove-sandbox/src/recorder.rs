//! Request recording (a bounded ring buffer) and status counters.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};

use super::{clock, params};

/// One request as the sandbox received it, with the status it was answered with. Deserializable
/// so a test driving a sandbox child process can read `GET /_sandbox/requests` back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceivedRequest {
    /// Arrival order, starting at 1; survives [`clear`](super::SandboxHandle::clear_requests).
    pub seq: u64,
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// Raw (still percent-encoded) path, e.g. `/v1/tickets/12/state`.
    pub path: String,
    /// Raw query string without `?`, if any.
    pub query: Option<String>,
    /// Headers in received order; names are lowercase, values lossily decoded as UTF-8.
    pub headers: Vec<(String, String)>,
    /// Body, lossily decoded as UTF-8.
    pub body: String,
    /// The body as the sandbox parsed it: JSON as sent, or form fields turned into a JSON object.
    /// `None` when the body was empty, malformed or of another content type.
    pub json: Option<serde_json::Value>,
    /// Status answered; `0` when the connection was dropped without a response.
    pub status: u16,
    /// Headers the sandbox answered with (e.g. `location`, `retry-after`, `x-ratelimit-*`,
    /// `content-type`), names lowercase; empty when the connection was dropped. Headers the HTTP
    /// layer adds while writing (`content-length`, `date`) are not included.
    #[serde(default)]
    pub response_headers: Vec<(String, String)>,
    /// `true` when the call took effect and was then answered with a fault anyway (a scripted
    /// answer with `after_processing`, or a random fault picked by `processed_share`): `status`
    /// then says what the client was told, not what happened.
    #[serde(default)]
    pub fault_after_processing: bool,
    /// Arrival time, unix epoch milliseconds.
    pub received_at_ms: u64,
}

impl ReceivedRequest {
    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The value of the first response header named `name` (case-insensitive), e.g.
    /// `response_header("Retry-After")`.
    pub fn response_header(&self, name: &str) -> Option<&str> {
        self.response_headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Counters over every recorded (non-control) request since start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStats {
    /// Requests answered or dropped.
    pub total: u64,
    /// Requests whose connection was dropped without a response.
    pub dropped: u64,
    /// Count per answered HTTP status (dropped calls are not included).
    pub by_status: BTreeMap<u16, u64>,
}

impl SandboxStats {
    /// The count for one status, 0 if never answered.
    pub fn count(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }
}

/// Where a request was when it arrived; taken before the body is read so `seq` reflects arrival.
pub(crate) struct Arrival {
    seq: u64,
    at_ms: u64,
}

/// The raw parts of a request, handed over once the call is answered.
pub(crate) struct Capture {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A recorded request in compact form: a few owned allocations, decoded only when someone reads
/// the recording. hyper's header values, URI and body are views into its connection read buffer;
/// keeping those views would pin a whole buffer per recorded request.
#[derive(Clone)]
struct Entry {
    seq: u64,
    at_ms: u64,
    status: u16,
    fault_after_processing: bool,
    method: Method,
    /// Path and query, as received.
    target: Box<str>,
    query_at: Option<usize>,
    /// `name:value` lines; neither part can contain a newline and names cannot contain `:`.
    headers: Box<str>,
    /// The response's headers, encoded like `headers`.
    response_headers: Box<str>,
    body: Box<[u8]>,
}

impl Entry {
    fn new(
        arrival: Arrival,
        capture: Capture,
        status: u16,
        response_headers: Option<&HeaderMap>,
        fault_after_processing: bool,
    ) -> Self {
        let (target, query_at) = match capture.uri.path_and_query() {
            Some(pq) => (pq.as_str().into(), pq.query().map(|_| pq.path().len())),
            None => (capture.uri.path().into(), None),
        };
        Entry {
            seq: arrival.seq,
            at_ms: arrival.at_ms,
            status,
            fault_after_processing,
            method: capture.method,
            target,
            query_at,
            headers: encode_headers(&capture.headers, 256),
            response_headers: response_headers
                .map(|headers| encode_headers(headers, 128))
                .unwrap_or_default(),
            body: capture.body.as_ref().into(),
        }
    }

    fn decode(&self) -> ReceivedRequest {
        let (path, query) = match self.query_at {
            Some(at) => (&self.target[..at], Some(self.target[at + 1..].to_owned())),
            None => (&self.target[..], None),
        };
        let headers = decode_headers(&self.headers);
        let content_type = headers
            .iter()
            .find(|(name, _)| name == CONTENT_TYPE.as_str())
            .map(|(_, value)| value.as_str());
        let json = params::parse_body(content_type, &self.body)
            .ok()
            .filter(|v| !v.is_null());
        ReceivedRequest {
            seq: self.seq,
            method: self.method.as_str().to_owned(),
            path: path.to_owned(),
            query,
            body: String::from_utf8_lossy(&self.body).into_owned(),
            headers,
            json,
            status: self.status,
            response_headers: decode_headers(&self.response_headers),
            fault_after_processing: self.fault_after_processing,
            received_at_ms: self.at_ms,
        }
    }
}

fn encode_headers(headers: &HeaderMap, capacity: usize) -> Box<str> {
    let mut encoded = String::with_capacity(capacity);
    for (name, value) in headers {
        encoded.push_str(name.as_str());
        encoded.push(':');
        encoded.push_str(&String::from_utf8_lossy(value.as_bytes()));
        encoded.push('\n');
    }
    encoded.into_boxed_str()
}

fn decode_headers(encoded: &str) -> Vec<(String, String)> {
    encoded
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

// Statuses are three digits, so a flat array indexed by status keeps counting lock-free.
const STATUS_SLOTS: usize = 600;

pub(crate) struct Recorder {
    capacity: usize,
    next_seq: AtomicU64,
    ring: Mutex<VecDeque<Entry>>,
    total: AtomicU64,
    by_status: Box<[AtomicU64]>,
}

impl Recorder {
    pub(crate) fn new(capacity: usize) -> Self {
        Recorder {
            capacity,
            next_seq: AtomicU64::new(1),
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            total: AtomicU64::new(0),
            by_status: (0..STATUS_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn arrival(&self) -> Arrival {
        Arrival {
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            at_ms: clock::unix_ms(SystemTime::now()),
        }
    }

    /// Counts the answer and keeps the request with the response's headers (`None`: dropped) and
    /// whether the call took effect behind a fault, evicting the oldest beyond capacity.
    pub(crate) fn record(
        &self,
        arrival: Arrival,
        capture: Capture,
        status: u16,
        response_headers: Option<&HeaderMap>,
        fault_after_processing: bool,
    ) {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(slot) = self.by_status.get(usize::from(status)) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
        if self.capacity == 0 {
            return;
        }
        let entry = Entry::new(
            arrival,
            capture,
            status,
            response_headers,
            fault_after_processing,
        );
        // The evicted entry is freed after the lock is released.
        let evicted = {
            let mut ring = self.lock_ring();
            ring.push_back(entry);
            if ring.len() > self.capacity {
                ring.pop_front()
            } else {
                None
            }
        };
        drop(evicted);
    }

    /// Recorded requests in arrival order. Answers can complete out of order (latency,
    /// concurrency), so the ring is sorted by `seq` on the way out.
    pub(crate) fn requests(&self) -> Vec<ReceivedRequest> {
        // Copy out under the lock, decode outside it.
        let mut entries: Vec<Entry> = self.lock_ring().iter().cloned().collect();
        entries.sort_by_key(|e| e.seq);
        entries.iter().map(Entry::decode).collect()
    }

    pub(crate) fn clear(&self) {
        let old = std::mem::take(&mut *self.lock_ring());
        drop(old);
    }

    pub(crate) fn stats(&self) -> SandboxStats {
        let by_status: BTreeMap<u16, u64> = self
            .by_status
            .iter()
            .enumerate()
            .filter_map(|(status, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then(|| (u16::try_from(status).unwrap_or(0), count))
            })
            .collect();
        let dropped = by_status.get(&0).copied().unwrap_or(0);
        let mut by_status = by_status;
        by_status.remove(&0);
        SandboxStats {
            total: self.total.load(Ordering::Relaxed),
            dropped,
            by_status,
        }
    }

    fn lock_ring(&self) -> std::sync::MutexGuard<'_, VecDeque<Entry>> {
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
