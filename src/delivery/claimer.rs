//! The stage between a session's intake and its workers: claims the creates among the units in the store,
//! a group at a time, and then queues every unit for the workers in the order it came.
//!
//! A claim must be committed before its call is sent, and a commit waits for the disk. Done here rather than
//! by the intake, that wait overlaps with reading and rendering the next messages, and units that arrive
//! meanwhile share the next commit.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::delivery::clock::now_ms;
use crate::delivery::dispatch::Dispatcher;
use crate::delivery::report::{DeliveryReport, DeliveryUnit};
use crate::delivery::sink::ReportSink;
use crate::domain::outcome::Outcome;
use crate::store::{ClaimedRecord, RecordClaim, Store};

/// Groups of units (one per intake step) waiting for their claims; beyond it the intake waits.
const QUEUE_CAPACITY: usize = 4;
/// Most groups claimed in one write.
const MAX_GROUPS_PER_WRITE: usize = 64;

/// Hands units to the claim stage.
pub(crate) struct Claimer {
    queue: mpsc::Sender<Vec<DeliveryUnit>>,
}

/// The units the claim stage did not take: it has ended.
pub(crate) struct Refused(pub Vec<DeliveryUnit>);

impl Claimer {
    /// Starts the stage in front of `dispatcher`, which it finishes once every [`Claimer`] handle is gone and
    /// its queue is empty; the returned task ends then.
    pub fn start(
        store: Arc<dyn Store>,
        destination_id: String,
        destination_name: String,
        dispatcher: Dispatcher,
        reports: ReportSink,
        stop: CancellationToken,
    ) -> (Claimer, JoinHandle<()>) {
        let (queue, groups) = mpsc::channel(QUEUE_CAPACITY);
        let stage = Stage {
            store,
            destination_id,
            destination_name,
            reports,
            stop,
        };
        let task = tokio::spawn(stage.run(groups, dispatcher).in_current_span());
        (Claimer { queue }, task)
    }

    /// Queues units, waiting while the stage is behind (backpressure).
    pub async fn send(&self, units: Vec<DeliveryUnit>) -> Result<(), Refused> {
        self.queue
            .send(units)
            .await
            .map_err(|refused| Refused(refused.0))
    }
}

struct Stage {
    store: Arc<dyn Store>,
    destination_id: String,
    destination_name: String,
    reports: ReportSink,
    stop: CancellationToken,
}

impl Stage {
    async fn run(self, mut groups: mpsc::Receiver<Vec<DeliveryUnit>>, dispatcher: Dispatcher) {
        let mut ready = Vec::with_capacity(MAX_GROUPS_PER_WRITE);
        while groups.recv_many(&mut ready, MAX_GROUPS_PER_WRITE).await > 0 {
            let units: Vec<DeliveryUnit> = ready.drain(..).flatten().collect();
            self.claim_and_dispatch(units, &dispatcher).await;
        }
        dispatcher.finish().await;
    }

    /// Claims the units that must not be sent twice (one write for all of them), then queues every unit for
    /// the workers. Once the session has stopped, units are let go instead.
    async fn claim_and_dispatch(&self, mut units: Vec<DeliveryUnit>, dispatcher: &Dispatcher) {
        if self.stop.is_cancelled() {
            for unit in units {
                self.reports.release(unit).await;
            }
            return;
        }
        let claims = durable_claims(&self.destination_id, &units);
        if !claims.is_empty() {
            if let Err(error) = self.store.claim_records(claims).await {
                tracing::error!(%error, destination = %self.destination_name, "cannot claim records; creates kept as failed");
                let (unclaimed, claimed): (Vec<_>, Vec<_>) =
                    units.into_iter().partition(|unit| !unit.repeatable);
                units = claimed;
                for unit in unclaimed {
                    let failed = DeliveryReport::unsent_records(
                        unit.record_ids,
                        unit.records,
                        Outcome::Failed,
                        format!("cannot record the claim before sending; not sent: {error}"),
                    );
                    self.reports.report(failed).await;
                }
            }
        }
        for unit in units {
            if let Err(unit) = dispatcher.dispatch(unit).await {
                self.reports.release(unit).await;
            }
        }
    }
}

/// A claim for each unit that must not be sent twice, covering all its records.
fn durable_claims(destination_id: &str, units: &[DeliveryUnit]) -> Vec<RecordClaim> {
    let claimed_at_ms = now_ms();
    units
        .iter()
        .filter(|unit| !unit.repeatable)
        .map(|unit| {
            let call = unit.calls.first();
            RecordClaim {
                destination_id: destination_id.to_string(),
                records: unit
                    .record_ids
                    .iter()
                    .zip(&unit.records)
                    .map(|(record_id, record)| ClaimedRecord {
                        record_id: record_id.clone(),
                        record_json: record.bytes.to_vec(),
                        record_encoding: record.encoding,
                    })
                    .collect(),
                request_method: call.map_or("", |call| call.method.as_str()).to_string(),
                request_url: call.map(|call| call.url.to_string()).unwrap_or_default(),
                claimed_at_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::report::{PlannedCall, RecordJson};
    use crate::domain::destination::HttpMethod;
    use crate::domain::record::RecordEncoding;

    #[test]
    fn only_units_that_must_not_be_repeated_are_claimed() {
        let unit = |method: HttpMethod, ids: &[&str]| DeliveryUnit {
            record_ids: ids.iter().map(|id| id.to_string()).collect(),
            records: ids
                .iter()
                .map(|id| RecordJson {
                    bytes: Arc::from(format!(r#"{{"id":"{id}"}}"#).into_bytes()),
                    encoding: RecordEncoding::RawJson,
                })
                .collect(),
            calls: vec![PlannedCall {
                method,
                url: "https://api.groovehq.com/v1/tickets".parse().unwrap(),
                headers: Arc::from(Vec::new()),
                body: Default::default(),
            }],
            ordering_key: None,
            repeatable: method.is_idempotent(),
        };
        let claims = durable_claims(
            "d",
            &[
                unit(HttpMethod::Post, &["a", "b"]),
                unit(HttpMethod::Put, &["c"]),
            ],
        );
        assert_eq!(claims.len(), 1, "one claim per unit");
        let ids: Vec<&str> = claims[0]
            .records
            .iter()
            .map(|record| record.record_id.as_str())
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(claims[0].records[1].record_json, br#"{"id":"b"}"#);
        assert_eq!(
            claims[0].records[1].record_encoding,
            RecordEncoding::RawJson
        );
        assert_eq!(claims[0].request_method, "POST");
        assert!(claims[0].request_url.ends_with("/v1/tickets"));
    }
}
