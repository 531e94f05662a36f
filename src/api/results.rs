//! Delivery results, requests and Groove answers as the contract shows them.

use crate::api::convert::{duration, method_to_proto, timestamp};
use crate::api::json_wire::{JsonObject, JsonValue};
use crate::delivery::GrooveAnswer;
use crate::delivery::{DeliveryReport, IncomingRecord, PlannedCall, Summary};
use crate::domain::destination::HttpMethod;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::proto;
use crate::store::{FailedRecordEntry, StoredRequest};

pub fn outcome_to_proto(outcome: Outcome) -> proto::Outcome {
    match outcome {
        Outcome::Delivered => proto::Outcome::Delivered,
        Outcome::Rejected => proto::Outcome::Rejected,
        Outcome::Invalid => proto::Outcome::Invalid,
        Outcome::Failed => proto::Outcome::Failed,
        Outcome::Duplicate => proto::Outcome::Duplicate,
    }
}

/// A record from the stream: a Struct is turned into JSON text once, raw JSON is taken as it is (and checked
/// when rendered).
pub fn incoming_record(record: proto::Record) -> IncomingRecord {
    let (json, encoding) = match record.data {
        Some(proto::record::Data::RawJson(bytes)) => (Ok(bytes), RecordEncoding::RawJson),
        Some(proto::record::Data::Json(object)) => {
            let json = object
                .to_json()
                .map_err(|error| format!("record json cannot be read: {error}"))
                .and_then(|json| {
                    serde_json::to_vec(&json)
                        .map_err(|error| format!("record cannot be written as json: {error}"))
                });
            (json, RecordEncoding::Struct)
        }
        None => (
            Err("record has neither json nor raw_json".to_string()),
            RecordEncoding::RawJson,
        ),
    };
    IncomingRecord {
        id: record.id,
        json,
        encoding,
    }
}

/// JSON bodies are shown as JSON, anything else as text.
pub fn groove_response(
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> proto::GrooveResponse {
    let body = if body.is_empty() {
        None
    } else {
        Some(match serde_json::from_slice::<serde_json::Value>(body) {
            Ok(json) => proto::groove_response::Body::Json(JsonValue::from_json(&json)),
            Err(_) => {
                proto::groove_response::Body::Text(String::from_utf8_lossy(body).into_owned())
            }
        })
    };
    proto::GrooveResponse {
        http_status: i32::from(status),
        headers: headers
            .iter()
            .map(|(name, value)| header(name, value))
            .collect(),
        body,
    }
}

fn header(name: &str, value: &str) -> proto::HttpHeader {
    proto::HttpHeader {
        name: name.to_string(),
        value: value.to_string(),
    }
}

pub fn answer_to_proto(answer: &GrooveAnswer) -> proto::GrooveResponse {
    groove_response(answer.status, &answer.header_pairs(), &answer.body)
}

/// The request as sent, `Authorization` redacted.
pub fn planned_request(call: &PlannedCall, record_ids: &[String]) -> proto::PlannedRequest {
    proto::PlannedRequest {
        method: method_to_proto(call.method) as i32,
        url: call.url.to_string(),
        headers: call
            .display_headers()
            .iter()
            .map(|(name, value)| header(name, value))
            .collect(),
        body: String::from_utf8_lossy(&call.body).into_owned(),
        record_ids: record_ids.to_vec(),
    }
}

/// The result without headers, bodies or request (`RESULT_DETAIL_OUTCOME_ONLY`).
pub fn report_outcome_to_proto(report: DeliveryReport) -> proto::DeliveryResult {
    proto::DeliveryResult {
        outcome: outcome_to_proto(report.outcome) as i32,
        response: report.answer.as_ref().map(|answer| proto::GrooveResponse {
            http_status: i32::from(answer.status),
            headers: Vec::new(),
            body: None,
        }),
        attempts: report.attempts,
        latency: Some(duration(report.latency)),
        request: None,
        error: report.error,
        field: report.field,
        record_ids: report.record_ids,
    }
}

pub fn report_to_proto(report: DeliveryReport) -> proto::DeliveryResult {
    proto::DeliveryResult {
        outcome: outcome_to_proto(report.outcome) as i32,
        response: report.answer.as_ref().map(answer_to_proto),
        attempts: report.attempts,
        latency: Some(duration(report.latency)),
        request: report
            .call
            .as_ref()
            .map(|call| planned_request(call, &report.record_ids)),
        error: report.error,
        field: report.field,
        record_ids: report.record_ids,
    }
}

pub fn summary_to_proto(summary: &Summary) -> proto::DeliverySummary {
    proto::DeliverySummary {
        records_received: summary.records_received,
        delivered: summary.delivered,
        rejected: summary.rejected,
        invalid: summary.invalid,
        failed: summary.failed,
        duplicate: summary.duplicate,
        calls: summary.calls,
        unanswered: summary.unanswered,
    }
}

fn stored_request(request: &StoredRequest, record_id: &str) -> proto::PlannedRequest {
    let method =
        HttpMethod::parse(&request.method).map_or(proto::HttpMethod::Unspecified, method_to_proto);
    proto::PlannedRequest {
        method: method as i32,
        url: request.url.clone(),
        headers: request
            .headers
            .iter()
            .map(|(name, value)| header(name, value))
            .collect(),
        body: String::from_utf8_lossy(&request.body).into_owned(),
        record_ids: vec![record_id.to_string()],
    }
}

/// A stored record in the form it arrived in: raw JSON byte for byte, a Struct as a Struct (readable in
/// grpcurl) — unless it does not hold an object, which only raw bytes can show.
fn stored_record(record_id: &str, json: &[u8], encoding: RecordEncoding) -> proto::Record {
    let as_struct = match encoding {
        RecordEncoding::RawJson => None,
        RecordEncoding::Struct => match serde_json::from_slice::<serde_json::Value>(json) {
            Ok(serde_json::Value::Object(object)) => Some(JsonObject::from_json(&object)),
            _ => None,
        },
    };
    let data = match as_struct {
        Some(object) => proto::record::Data::Json(object),
        None => proto::record::Data::RawJson(json.to_vec()),
    };
    proto::Record {
        id: record_id.to_string(),
        data: Some(data),
    }
}

pub fn failed_record_to_proto(
    destination_name: &str,
    entry: FailedRecordEntry,
) -> proto::FailedRecord {
    proto::FailedRecord {
        name: format!("{destination_name}/failedRecords/{}", entry.record_id),
        record: Some(stored_record(
            &entry.record_id,
            &entry.record_json,
            entry.record_encoding,
        )),
        outcome: outcome_to_proto(entry.outcome) as i32,
        request: entry
            .request
            .as_ref()
            .map(|request| stored_request(request, &entry.record_id)),
        response: Some(groove_response(
            entry.http_status,
            &entry.response_headers,
            &entry.response_body,
        )),
        error: entry.error,
        attempts: entry.attempts,
        first_failure_time: Some(timestamp(entry.first_failure_ms)),
        last_failure_time: Some(timestamp(entry.last_failure_ms)),
        maybe_delivered: entry.maybe_delivered,
        omitted_fields: Vec::new(),
    }
}
