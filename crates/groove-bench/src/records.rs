//! The records every scenario sends, and the bodies the raw baseline POSTs: one generator for both, so the
//! service and the baseline carry byte-for-byte the same tickets.

use groove_destination::proto::{self, record, send_records_request};

/// Records per SendRecords message (the size the contract recommends).
pub const RECORDS_PER_MESSAGE: usize = 100;

/// Builds ticket bodies for one sandbox (its seeded mailbox is the `to`).
#[derive(Clone, Debug)]
pub struct Tickets {
    to: String,
    /// Bodies are padded (with a `note` field) to at least this many bytes; 0 leaves them as they are.
    min_bytes: usize,
}

impl Tickets {
    pub fn new(mailbox_email: &str) -> Self {
        Tickets {
            to: mailbox_email.to_string(),
            min_bytes: 0,
        }
    }

    /// The same tickets with each body padded to at least `min_bytes` bytes by a `note` field.
    pub fn padded_to(mut self, min_bytes: usize) -> Self {
        self.min_bytes = min_bytes;
        self
    }

    /// A valid Create Ticket body (about 100 bytes). One `from` for all, so the sandbox keeps one customer
    /// instead of growing a customer per ticket. Nothing in it needs changing, so the service forwards these
    /// bytes unchanged.
    pub fn body(&self, seq: u64) -> Vec<u8> {
        let body = format!(
            r#"{{"body":"groove-bench ticket {seq}","from":"customer@example.com","to":"{}"}}"#,
            self.to
        );
        // `,"note":""` is 10 bytes; the rest of the shortfall is the note's text.
        let short = self.min_bytes.saturating_sub(body.len());
        if short == 0 {
            return body.into_bytes();
        }
        let note = "n".repeat(short.saturating_sub(10));
        format!("{},\"note\":\"{note}\"}}", &body[..body.len() - 1]).into_bytes()
    }

    /// Record `seq` of a run, as raw JSON bytes (the fast ingest path). Ids are unique per `run` because the
    /// service remembers delivered ids and would answer a repeat as a duplicate without calling Groove.
    pub fn record(&self, run: &str, seq: u64) -> proto::Record {
        proto::Record {
            id: format!("{run}-{seq}"),
            data: Some(record::Data::RawJson(self.body(seq))),
        }
    }

    /// A SendRecords message with records `first..first + count` of a run.
    pub fn message(&self, run: &str, first: u64, count: u64) -> proto::SendRecordsRequest {
        let records = (first..first + count)
            .map(|seq| self.record(run, seq))
            .collect();
        proto::SendRecordsRequest {
            message: Some(send_records_request::Message::Records(proto::RecordBatch {
                records,
            })),
        }
    }
}

/// Where a stream goes and how much of each result it asks back.
#[derive(Clone, Debug)]
pub struct StreamTarget {
    /// `destinations/{id}`.
    pub destination: String,
    pub detail: proto::ResultDetail,
}

impl StreamTarget {
    /// The first message of the stream.
    pub fn start(&self) -> proto::SendRecordsRequest {
        proto::SendRecordsRequest {
            message: Some(send_records_request::Message::Start(proto::StreamStart {
                destination: self.destination.clone(),
                result_detail: self.detail as i32,
            })),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padded_bodies_are_json_of_the_asked_size() {
        let tickets = Tickets::new("support@bench.example").padded_to(320);
        for seq in [0, 7, 123_456_789] {
            let body = tickets.body(seq);
            assert_eq!(body.len(), 320, "{}", String::from_utf8_lossy(&body));
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(value["to"], "support@bench.example");
        }
        let plain = Tickets::new("support@bench.example").body(1);
        assert!(!String::from_utf8_lossy(&plain).contains("note"));
    }
}
