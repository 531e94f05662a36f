//! Failed records in bounded memory: ListFailedRecords pages and RetryFailedRecords responses that stay within
//! what a gRPC client accepts, and a retry that reads the records from the store a chunk at a time, only as
//! fast as their answers come back.
//!
//! A failed record can weigh tens of MiB (a record of up to 16 MiB, and the request that carried it). Without
//! these bounds a page or a retry answer of a few such records is far larger than a client with the default
//! 4 MiB message limit can read, and the server holds all of them in memory at once (the ignored measurement
//! in `tests/bounded.rs` prints the figures).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Semaphore;
use tokio_stream::Stream;

use crate::api::results::{failed_record_to_proto, report_to_proto};
use crate::delivery::{DeliveryReport, IncomingRecord, Interruption};
use crate::proto;
use crate::store::{FailedRecordEntry, FailedRecordSize, Page, Store, StoreError};

/// Most bytes a ListFailedRecords page or a RetryFailedRecords response takes encoded: the largest message gRPC
/// clients accept unless told otherwise (tonic, grpc-go and grpc-java all default to 4 MiB).
pub const ANSWER_BYTES: usize = 4 * 1024 * 1024;
/// Most failed records one RetryFailedRecords call takes on, and most ids it accepts.
pub const MAX_RETRY: u32 = 10_000;
/// Room kept in a page for `next_page_token`: a time and a record id of at most 256 bytes, in base64.
const TOKEN_ROOM: usize = 512;
/// Room kept in a retry response for everything but its results: summary, duration, omitted count.
const SUMMARY_ROOM: usize = 256;
/// Most failed records a retry reads from the store at once.
const RETRY_CHUNK_RECORDS: usize = 100;
/// Most stored bytes a retry reads from the store at once; a record larger than this is read alone.
const RETRY_CHUNK_BYTES: u64 = 4 * 1024 * 1024;
/// Stored bytes of the records a retry has handed to delivery and not yet seen answered. The next chunk is read
/// only once answers make room for it, so a retry holds about this much of its records however many there are;
/// a record larger than this goes alone.
const RETRY_WINDOW_BYTES: u64 = 16 * 1024 * 1024;

/// A page of failed records as a response of at most [`ANSWER_BYTES`]. The store bounds what it reads by stored
/// size; this bounds the encoded size, which a record kept as a Struct or a JSON answer can make larger. The
/// page ends before the first record that does not fit, and the next page starts there; a first record too
/// large on its own comes with parts left out ([`fitted`]).
pub fn bounded_page(
    destination: &str,
    mut page: Page<FailedRecordEntry>,
) -> proto::ListFailedRecordsResponse {
    let room = ANSWER_BYTES - TOKEN_ROOM;
    let keys: Vec<(i64, String)> = page
        .items
        .iter()
        .map(|entry| (entry.first_failure_ms, entry.record_id.clone()))
        .collect();
    let mut failed_records = Vec::with_capacity(page.items.len());
    let mut used = 0;
    for entry in std::mem::take(&mut page.items) {
        let record = failed_record_to_proto(destination, entry);
        if failed_records.is_empty() {
            let record = fitted(record, room);
            used += field_len(&record);
            failed_records.push(record);
            continue;
        }
        let len = field_len(&record);
        if used + len > room {
            break;
        }
        used += len;
        failed_records.push(record);
    }
    let mut cut = Page {
        items: keys,
        next_page_token: page.next_page_token,
    };
    cut.truncate_by_time(failed_records.len(), |(time, id)| (*time, id.as_str()));
    proto::ListFailedRecordsResponse {
        failed_records,
        next_page_token: cut.next_page_token.unwrap_or_default(),
    }
}

/// Bytes `message` takes as one element of a repeated message field: tag, length and the message.
fn field_len(message: &impl prost::Message) -> usize {
    prost::encoding::message::encoded_len(1, message)
}

/// `record` as a page entry of at most `room` bytes: whole when it fits, else without its bulky parts, in a
/// fixed order and only as many as needed, each named in `omitted_fields`. The request body goes first (it
/// usually repeats the record), Groove's answer last (it says why the record failed, and is kept to 16 KiB).
fn fitted(mut record: proto::FailedRecord, room: usize) -> proto::FailedRecord {
    type Omit = fn(&mut proto::FailedRecord) -> bool;
    let parts: [(&str, Omit); 3] = [
        ("request.body", |record| {
            record
                .request
                .as_mut()
                .is_some_and(|request| !std::mem::take(&mut request.body).is_empty())
        }),
        ("record.data", |record| {
            record
                .record
                .as_mut()
                .is_some_and(|stored| stored.data.take().is_some())
        }),
        ("response.body", |record| {
            record
                .response
                .as_mut()
                .is_some_and(|response| response.body.take().is_some())
        }),
    ];
    for (path, omit) in parts {
        if field_len(&record) <= room {
            break;
        }
        if omit(&mut record) {
            record.omitted_fields.push(path.to_string());
        }
    }
    record
}

/// The results of a RetryFailedRecords response, within [`ANSWER_BYTES`] with its summary: whole while they
/// fit; a result that does not comes without its request and Groove's headers and body (as
/// `RESULT_DETAIL_OUTCOME_ONLY` shows it); once even that does not fit, results are only counted.
#[derive(Default)]
pub struct BoundedResults {
    results: Vec<proto::DeliveryResult>,
    used: usize,
    omitted: u64,
}

impl BoundedResults {
    pub fn push(&mut self, report: DeliveryReport) {
        let room = ANSWER_BYTES - SUMMARY_ROOM;
        let mut result = report_to_proto(report);
        if self.used + field_len(&result) > room {
            result.request = None;
            if let Some(response) = result.response.as_mut() {
                response.headers.clear();
                response.body = None;
            }
        }
        let len = field_len(&result);
        if self.used + len > room {
            self.omitted += 1;
            return;
        }
        self.used += len;
        self.results.push(result);
    }

    /// How many results there were in all, kept or not.
    pub fn count(&self) -> u64 {
        self.results.len() as u64 + self.omitted
    }

    /// The results kept, and how many were left out.
    pub fn into_parts(self) -> (Vec<proto::DeliveryResult>, u64) {
        (self.results, self.omitted)
    }
}

/// Feeds a retry's records to its session from the store, a chunk at a time, and only while the records
/// handed over and not yet answered weigh less than [`RETRY_WINDOW_BYTES`]. Report every answer with
/// [`RetryFeed::answered`] so that the next chunk can follow.
pub struct RetryFeed {
    window: Arc<Semaphore>,
    /// What each record not yet answered holds of the window.
    weights: HashMap<String, u32>,
    /// Why the store could not be read, if it could not: the retry then ends with this error.
    failure: Arc<Mutex<Option<StoreError>>>,
}

/// What a record holds of the window: its stored size, or the whole window for a record larger than that.
fn weight(size: &FailedRecordSize) -> u32 {
    u32::try_from(size.bytes.min(RETRY_WINDOW_BYTES)).unwrap_or(u32::MAX)
}

/// Consecutive records of at most [`RETRY_CHUNK_RECORDS`] and [`RETRY_CHUNK_BYTES`]; a larger record alone.
fn chunks(sizes: Vec<FailedRecordSize>) -> Vec<Vec<FailedRecordSize>> {
    let mut chunks = Vec::new();
    let mut current: Vec<FailedRecordSize> = Vec::new();
    let mut bytes: u64 = 0;
    for size in sizes {
        let full = current.len() == RETRY_CHUNK_RECORDS
            || bytes.saturating_add(size.bytes) > RETRY_CHUNK_BYTES;
        if !current.is_empty() && full {
            chunks.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes = bytes.saturating_add(size.bytes);
        current.push(size);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

impl RetryFeed {
    /// The feed of the records `sizes` names (oldest first), and the session input that reads them from the
    /// store. Records gone from the store by the time their chunk is read (delivered or deleted meanwhile) are
    /// skipped.
    pub fn new(
        store: Arc<dyn Store>,
        destination_id: String,
        sizes: Vec<FailedRecordSize>,
    ) -> (
        RetryFeed,
        impl Stream<Item = Result<Vec<IncomingRecord>, Interruption>> + Send + Unpin,
    ) {
        let window = Arc::new(Semaphore::new(
            usize::try_from(RETRY_WINDOW_BYTES).unwrap_or(usize::MAX),
        ));
        let failure = Arc::new(Mutex::new(None));
        let weights = sizes
            .iter()
            .map(|size| (size.record_id.clone(), weight(size)))
            .collect();
        let reader = ChunkReader {
            store,
            destination_id,
            window: window.clone(),
            failure: failure.clone(),
        };
        let input = Box::pin(futures::stream::unfold(
            (reader, chunks(sizes).into_iter()),
            |(reader, mut chunks)| async move {
                loop {
                    let chunk = chunks.next()?;
                    if let Some(records) = reader.read(chunk).await? {
                        return Some((Ok(records), (reader, chunks)));
                    }
                }
            },
        ));
        (
            RetryFeed {
                window,
                weights,
                failure,
            },
            input,
        )
    }

    /// Gives back the room of records that got their answer.
    pub fn answered(&mut self, record_ids: &[String]) {
        let freed: usize = record_ids
            .iter()
            .filter_map(|record_id| self.weights.remove(record_id))
            .map(|weight| weight as usize)
            .sum();
        self.window.add_permits(freed);
    }

    /// Why the store could not be read part-way, if it could not.
    pub fn failure(&self) -> Option<StoreError> {
        self.failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

struct ChunkReader {
    store: Arc<dyn Store>,
    destination_id: String,
    window: Arc<Semaphore>,
    failure: Arc<Mutex<Option<StoreError>>>,
}

impl ChunkReader {
    /// Waits for room for `chunk` in the window, then reads it. `Some(None)` when none of its records are left;
    /// `None` ends the input (the store failed, or the window was closed).
    async fn read(&self, chunk: Vec<FailedRecordSize>) -> Option<Option<Vec<IncomingRecord>>> {
        let room: u32 = chunk.iter().map(weight).sum();
        self.window.acquire_many(room).await.ok()?.forget();
        let ids = chunk.iter().map(|size| size.record_id.clone()).collect();
        let entries = match self
            .store
            .get_failed_records(&self.destination_id, ids)
            .await
        {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, destination = %self.destination_id, "retry cannot read failed records");
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) = Some(error);
                return None;
            }
        };
        // Records no longer there never get an answer: their room is free at once.
        let gone: usize = chunk
            .iter()
            .filter(|size| {
                !entries
                    .iter()
                    .any(|entry| entry.record_id == size.record_id)
            })
            .map(|size| weight(size) as usize)
            .sum();
        self.window.add_permits(gone);
        if entries.is_empty() {
            return Some(None);
        }
        Some(Some(
            entries
                .into_iter()
                .map(|entry| IncomingRecord {
                    id: entry.record_id,
                    json: Ok(entry.record_json),
                    encoding: entry.record_encoding,
                })
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(record_id: &str, bytes: u64) -> FailedRecordSize {
        FailedRecordSize {
            record_id: record_id.to_string(),
            bytes,
        }
    }

    fn ids(chunks: &[Vec<FailedRecordSize>]) -> Vec<Vec<&str>> {
        chunks
            .iter()
            .map(|chunk| chunk.iter().map(|size| size.record_id.as_str()).collect())
            .collect()
    }

    #[test]
    fn chunks_end_at_their_count_or_their_bytes_and_a_large_record_goes_alone() {
        let mib = 1024 * 1024;
        let sizes = vec![
            size("a", mib),
            size("b", 2 * mib),
            size("c", 2 * mib),
            size("huge", 40 * mib),
            size("d", 10),
        ];
        assert_eq!(
            ids(&chunks(sizes)),
            [vec!["a", "b"], vec!["c"], vec!["huge"], vec!["d"]]
        );
        let many: Vec<FailedRecordSize> = (0..250).map(|i| size(&format!("r{i}"), 10)).collect();
        let lengths: Vec<usize> = chunks(many).iter().map(Vec::len).collect();
        assert_eq!(lengths, [100, 100, 50]);
        assert!(chunks(Vec::new()).is_empty());
    }

    #[test]
    fn a_record_never_holds_more_than_the_whole_window() {
        assert_eq!(weight(&size("x", 5)), 5);
        assert_eq!(u64::from(weight(&size("x", u64::MAX))), RETRY_WINDOW_BYTES);
    }

    fn failed_record(body: usize, record: usize, response: usize) -> proto::FailedRecord {
        proto::FailedRecord {
            name: "destinations/d/failedRecords/r".to_string(),
            record: Some(proto::Record {
                id: "r".to_string(),
                data: Some(proto::record::Data::RawJson(vec![b'x'; record])),
            }),
            request: Some(proto::PlannedRequest {
                body: "y".repeat(body),
                ..Default::default()
            }),
            response: Some(proto::GrooveResponse {
                http_status: 422,
                headers: Vec::new(),
                body: Some(proto::groove_response::Body::Text("z".repeat(response))),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_record_too_large_for_a_page_loses_only_what_it_must() {
        let room = 1000;
        let small = fitted(failed_record(100, 100, 100), room);
        assert!(small.omitted_fields.is_empty());
        assert_eq!(small, failed_record(100, 100, 100));

        let body_too_much = fitted(failed_record(900, 100, 100), room);
        assert_eq!(body_too_much.omitted_fields, ["request.body"]);
        assert!(body_too_much.request.as_ref().unwrap().body.is_empty());
        assert!(body_too_much.record.as_ref().unwrap().data.is_some());

        let all_large = fitted(failed_record(900, 900, 1100), room);
        assert_eq!(
            all_large.omitted_fields,
            ["request.body", "record.data", "response.body"]
        );
        assert_eq!(all_large.record.as_ref().unwrap().id, "r");
        assert_eq!(all_large.response.as_ref().unwrap().http_status, 422);
        assert!(field_len(&all_large) <= room);
    }

    fn report(record_id: &str, body: usize) -> DeliveryReport {
        let mut report = DeliveryReport::unsent(
            record_id.to_string(),
            crate::domain::outcome::Outcome::Rejected,
            "groove answered 422",
        );
        report.answer = Some(crate::delivery::GrooveAnswer {
            status: 422,
            headers: Default::default(),
            body: vec![b'a'; body],
            latency: std::time::Duration::ZERO,
        });
        report
    }

    #[test]
    fn retry_results_stay_within_the_answer_and_are_all_counted() {
        let mut results = BoundedResults::default();
        for index in 0..30 {
            results.push(report(&format!("r{index}"), 1024 * 1024));
        }
        for index in 0..100_000 {
            results.push(report(&format!("small-{index}"), 10));
        }
        assert_eq!(results.count(), 100_030);
        let (kept, omitted) = results.into_parts();
        assert!(omitted > 0);
        // Three whole answers of 1 MiB fit; the rest of the large ones come without their bodies.
        let whole = kept[..30]
            .iter()
            .filter(|result| result.response.as_ref().unwrap().body.is_some())
            .count();
        assert_eq!(whole, 3);
        assert!(kept[30..]
            .iter()
            .all(|result| result.record_ids[0].starts_with("small-")));
        let response = proto::RetryFailedRecordsResponse {
            results: kept,
            summary: Some(proto::DeliverySummary {
                records_received: u64::MAX,
                delivered: u64::MAX,
                rejected: u64::MAX,
                invalid: u64::MAX,
                failed: u64::MAX,
                duplicate: u64::MAX,
                calls: u64::MAX,
                unanswered: u64::MAX,
            }),
            duration: Some(prost_types::Duration {
                seconds: i64::MAX,
                nanos: i32::MAX,
            }),
            omitted_results: u64::MAX,
        };
        assert!(prost::Message::encoded_len(&response) <= ANSWER_BYTES);
    }
}
