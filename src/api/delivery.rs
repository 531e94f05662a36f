//! DeliveryService: streaming delivery and failed records.

use std::collections::HashSet;
use std::error::Error as _;
use std::pin::Pin;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::api::convert::{duration, page_request};
use crate::api::error::ApiError;
use crate::api::failed::{bounded_page, BoundedResults, RetryFeed, ANSWER_BYTES, MAX_RETRY};
use crate::api::guard;
use crate::api::names::DESTINATIONS;
use crate::api::results::{
    incoming_record, report_outcome_to_proto, report_to_proto, summary_to_proto,
};
use crate::api::AppState;
use crate::auth::check_destination;
use crate::delivery::{IncomingRecord, Interruption, StreamEvent, Unreadable};
use crate::domain::outcome::Outcome;
use crate::proto::delivery_service_server::DeliveryService;
use crate::proto::{self, send_records_request};
use crate::store::{FailedRecordFilter, FailedRecordSelection};

/// Events buffered towards a client that reads slowly; beyond it, delivery waits for the client.
const OUTPUT_BUFFER: usize = 64;
/// Most results in one stream message: enough to save per-message costs, few enough that full results (each
/// may carry a batch's whole answer) stay well under a client's default 4 MiB message limit.
const COALESCE_FULL: usize = 8;
const COALESCE_OUTCOME_ONLY: usize = 256;

pub struct Delivery {
    state: AppState,
}

impl Delivery {
    pub fn new(state: AppState) -> Self {
        Delivery { state }
    }
}

type ResultStream = Pin<Box<dyn Stream<Item = Result<proto::SendRecordsResponse, Status>> + Send>>;

/// Events that are ready together, as one stream message: results coalesce, the summary rides along with the
/// last of them, and an interruption ends the stream with its status after whatever came before it.
struct Coalesce {
    events: mpsc::Receiver<StreamEvent>,
    detail: proto::ResultDetail,
    /// An interruption seen while building a message; it becomes the next item.
    pending_error: Option<Status>,
}

impl Coalesce {
    async fn next_message(mut self) -> Option<(Result<proto::SendRecordsResponse, Status>, Self)> {
        if let Some(error) = self.pending_error.take() {
            return Some((Err(error), self));
        }
        let limit = match self.detail {
            proto::ResultDetail::OutcomeOnly => COALESCE_OUTCOME_ONLY,
            proto::ResultDetail::Full | proto::ResultDetail::Unspecified => COALESCE_FULL,
        };
        let mut ready = Vec::with_capacity(limit);
        if self.events.recv_many(&mut ready, limit).await == 0 {
            return None;
        }
        let mut message = proto::SendRecordsResponse::default();
        for event in ready {
            match event {
                StreamEvent::Report(report) => message.results.push(match self.detail {
                    proto::ResultDetail::OutcomeOnly => report_outcome_to_proto(*report),
                    proto::ResultDetail::Full | proto::ResultDetail::Unspecified => {
                        report_to_proto(*report)
                    }
                }),
                StreamEvent::Summary(summary) => message.summary = Some(summary_to_proto(&summary)),
                StreamEvent::Interrupted(interruption) => {
                    self.pending_error = Some(ApiError::from(interruption).into());
                }
            }
        }
        if message.results.is_empty() && message.summary.is_none() {
            let error = self.pending_error.take()?;
            return Some((Err(error), self));
        }
        Some((Ok(message), self))
    }
}

/// The failed records a request names: `all`, or the ids it lists (exactly one of the two).
fn selection(all: bool, record_ids: Vec<String>) -> Result<FailedRecordSelection, ApiError> {
    match (all, record_ids.is_empty()) {
        (true, true) => Ok(FailedRecordSelection::All),
        (false, false) => Ok(FailedRecordSelection::Ids(record_ids)),
        _ => Err(ApiError::invalid(
            "record_ids",
            "give record_ids or set all, not both and not neither",
        )),
    }
}

/// The client's record messages as batches of records; ends when the client half-closes. A message that cannot
/// be read, or a broken connection, is the last item.
fn record_batches(
    inbound: Streaming<proto::SendRecordsRequest>,
) -> impl Stream<Item = Result<Vec<IncomingRecord>, Interruption>> + Send + Unpin {
    Box::pin(futures::stream::unfold(
        Some(inbound),
        |inbound| async move {
            let mut inbound = inbound?;
            loop {
                match inbound.message().await {
                    Ok(Some(request)) => match request.message {
                        Some(send_records_request::Message::Records(batch)) => {
                            let records = batch.records.into_iter().map(incoming_record).collect();
                            return Some((Ok(records), Some(inbound)));
                        }
                        Some(send_records_request::Message::Start(_)) => {
                            tracing::warn!("start sent again in the middle of a stream; ignored");
                        }
                        None => {}
                    },
                    Ok(None) => return None,
                    Err(status) => return Some((Err(why_input_ended(&status)), None)),
                }
            }
        },
    ))
}

/// Tells a message the server cannot read from a client or connection that went away. tonic reports both as
/// a status: transport failures carry their h2 or hyper error as the source, decoding failures carry none.
fn why_input_ended(status: &Status) -> Interruption {
    use tonic::Code;
    let unreadable = status.source().is_none();
    match status.code() {
        Code::OutOfRange | Code::ResourceExhausted if unreadable => {
            Interruption::Unreadable(Unreadable::TooLarge(format!(
                "a records message is too large ({}); the records before it were delivered, the ones in it \
                 and after it were not read: send at most 16 MiB per message",
                status.message()
            )))
        }
        // A message cut short by the end of the stream is a client that went away mid-message.
        Code::Internal if unreadable && !status.message().starts_with("Unexpected EOF") => {
            Interruption::Unreadable(Unreadable::Malformed(format!(
                "a records message cannot be decoded ({}); the records before it were delivered, the ones \
                 in it and after it were not read",
                status.message()
            )))
        }
        code => {
            tracing::info!(code = code.description(), message = status.message(), "record stream broken by the client or its connection");
            Interruption::ClientGone
        }
    }
}

#[tonic::async_trait]
impl DeliveryService for Delivery {
    type SendRecordsStream = ResultStream;

    async fn send_records(
        &self,
        request: Request<Streaming<proto::SendRecordsRequest>>,
    ) -> Result<Response<Self::SendRecordsStream>, Status> {
        let caller = guard::caller(&request)?;
        let mut inbound = request.into_inner();
        let first = inbound.message().await?;
        let Some(proto::SendRecordsRequest {
            message: Some(send_records_request::Message::Start(start)),
        }) = first
        else {
            return Err(ApiError::invalid(
                "start",
                "the first message must carry start with the destination",
            )
            .into());
        };
        let id = DESTINATIONS.parse_name("start.destination", &start.destination)?;
        check_destination(&caller, &id).map_err(ApiError::from)?;
        let session = self
            .state
            .engine
            .open_session(&id, &start.destination)
            .await
            .map_err(ApiError::from)?;
        let detail = start.result_detail();
        let session = match detail {
            proto::ResultDetail::OutcomeOnly => session.answering_outcomes_only(),
            proto::ResultDetail::Full | proto::ResultDetail::Unspecified => session,
        };
        // The stream's span lives as long as its task, so its Groove calls and its summary are in its trace.
        let stream_id = uuid::Uuid::new_v4().simple().to_string();
        let span = tracing::info_span!("record stream", destination = %start.destination, stream_id = %stream_id);
        span.in_scope(|| tracing::info!(caller = caller.name(), "record stream opened"));
        let (output, events) = mpsc::channel(OUTPUT_BUFFER);
        let name = start.destination;
        let started = Instant::now();
        tokio::spawn(
            async move {
                let summary = session.run(record_batches(inbound), output).await;
                tracing::info!(
                    destination = %name,
                    caller = caller.name(),
                    stream_id = %stream_id,
                    received = summary.records_received,
                    delivered = summary.delivered,
                    rejected = summary.rejected,
                    invalid = summary.invalid,
                    failed = summary.failed,
                    duplicate = summary.duplicate,
                    unanswered = summary.unanswered,
                    calls = summary.calls,
                    duration_ms = started.elapsed().as_millis() as u64,
                    "record stream closed"
                );
            }
            .instrument(span),
        );
        let coalesce = Coalesce {
            events,
            detail,
            pending_error: None,
        };
        let responses = futures::stream::unfold(coalesce, Coalesce::next_message);
        Ok(Response::new(Box::pin(responses)))
    }

    async fn list_failed_records(
        &self,
        request: Request<proto::ListFailedRecordsRequest>,
    ) -> Result<Response<proto::ListFailedRecordsResponse>, Status> {
        guard::destination_caller(&request, "destination", &request.get_ref().destination)?;
        let request = request.into_inner();
        let id = DESTINATIONS.parse_name("destination", &request.destination)?;
        let page = page_request(request.page_size, &request.page_token)?;
        let filter = FailedRecordFilter {
            outcome: match request.outcome() {
                proto::Outcome::Unspecified => None,
                proto::Outcome::Rejected => Some(Outcome::Rejected),
                proto::Outcome::Failed => Some(Outcome::Failed),
                _ => {
                    return Err(ApiError::invalid(
                        "outcome",
                        "failed records are OUTCOME_REJECTED or OUTCOME_FAILED; leave it unspecified for both",
                    )
                    .into())
                }
            },
            maybe_delivered_only: request.maybe_delivered_only,
        };
        // A listing for a destination that does not exist is an error, not an empty page.
        self.state
            .store
            .get_destination(&id)
            .await
            .map_err(ApiError::from)?;
        let page = self
            .state
            .store
            .list_failed_records(&id, filter, page, ANSWER_BYTES as u64)
            .await
            .map_err(ApiError::from)?;
        Ok(Response::new(bounded_page(&request.destination, page)))
    }

    async fn retry_failed_records(
        &self,
        request: Request<proto::RetryFailedRecordsRequest>,
    ) -> Result<Response<proto::RetryFailedRecordsResponse>, Status> {
        let started = Instant::now();
        let caller =
            guard::destination_caller(&request, "destination", &request.get_ref().destination)?;
        let request = request.into_inner();
        let id = DESTINATIONS.parse_name("destination", &request.destination)?;
        let selection = selection(request.all, request.record_ids)?;
        if let FailedRecordSelection::Ids(asked) = &selection {
            if asked.len() > MAX_RETRY as usize {
                return Err(ApiError::invalid(
                    "record_ids",
                    format!(
                        "{} record ids given; at most {MAX_RETRY} per call",
                        asked.len()
                    ),
                )
                .into());
            }
        }
        let session = self
            .state
            .engine
            .open_session(&id, &request.destination)
            .await
            .map_err(ApiError::from)?
            .resending_maybe_delivered();
        // Ids and sizes only: the records themselves are read a chunk at a time as delivery takes them.
        let sizes = self
            .state
            .store
            .failed_record_sizes(&id, selection.clone(), MAX_RETRY)
            .await
            .map_err(ApiError::from)?;
        // With `all`, a record delivered meanwhile by another stream has simply left the list.
        if let FailedRecordSelection::Ids(asked) = &selection {
            let found: HashSet<&str> = sizes.iter().map(|size| size.record_id.as_str()).collect();
            let mut missing: Vec<&String> = asked
                .iter()
                .filter(|record_id| !found.contains(record_id.as_str()))
                .collect();
            missing.sort();
            missing.dedup();
            if !missing.is_empty() {
                return Err(ApiError::NotFound(format!(
                    "no failed record {missing:?} in destination {}",
                    request.destination
                ))
                .into());
            }
        }
        let (mut feed, input) = RetryFeed::new(self.state.store.clone(), id, sizes);
        let (output, mut events) = mpsc::channel(OUTPUT_BUFFER);
        let run = tokio::spawn(session.run(input, output).in_current_span());
        let mut results = BoundedResults::default();
        let mut summary = None;
        while let Some(event) = events.recv().await {
            match event {
                StreamEvent::Report(report) => {
                    feed.answered(&report.record_ids);
                    results.push(*report);
                }
                StreamEvent::Summary(done) => summary = Some(summary_to_proto(&done)),
                StreamEvent::Interrupted(interruption) => {
                    tracing::info!(destination = %request.destination, %interruption, "retry stopped early");
                }
            }
        }
        if let Err(error) = run.await {
            tracing::error!(%error, destination = %request.destination, "retry session failed");
        }
        if let Some(error) = feed.failure() {
            return Err(ApiError::from(error).into());
        }
        tracing::info!(destination = %request.destination, caller = caller.name(), results = results.count(), "failed records retried");
        let (results, omitted_results) = results.into_parts();
        Ok(Response::new(proto::RetryFailedRecordsResponse {
            results,
            summary,
            duration: Some(duration(started.elapsed())),
            omitted_results,
        }))
    }

    async fn delete_failed_records(
        &self,
        request: Request<proto::DeleteFailedRecordsRequest>,
    ) -> Result<Response<proto::DeleteFailedRecordsResponse>, Status> {
        let caller =
            guard::destination_caller(&request, "destination", &request.get_ref().destination)?;
        let request = request.into_inner();
        let id = DESTINATIONS.parse_name("destination", &request.destination)?;
        let selection = selection(request.all, request.record_ids)?;
        let deleted_count = self
            .state
            .store
            .delete_failed_records(&id, selection)
            .await
            .map_err(ApiError::from)?;
        tracing::info!(destination = %request.destination, caller = caller.name(), deleted_count, "failed records deleted");
        Ok(Response::new(proto::DeleteFailedRecordsResponse {
            deleted_count,
        }))
    }
}
