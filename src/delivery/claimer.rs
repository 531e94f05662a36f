//! The stage between a session's intake and its workers: claims the units in the store (the creates, or every
//! unit where the store is shared by replicas), a group at a time, and then queues every unit for the workers
//! in the order it came. A unit whose claim the store refused (another replica is sending its records) is not
//! sent: it goes back to the session, which waits for the other replica's outcome.
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

/// What the stage did with groups the intake handed it, sent back once they are claimed and dispatched (or
/// let go), so the intake knows when nothing it sent can come back any more.
pub(crate) struct Handed {
    /// How many groups ([`Claimer::send`] calls) this answers.
    pub groups: usize,
    /// Units not sent because another process holds a claim on them; their ids are still held in memory.
    pub refused: Vec<DeliveryUnit>,
}

impl Claimer {
    /// Starts the stage in front of `dispatcher`, which it finishes once every [`Claimer`] handle is gone and
    /// its queue is empty; the returned task ends then. The receiver hears of every group handed to the stage.
    pub fn start(
        store: Arc<dyn Store>,
        destination_id: String,
        destination_name: String,
        dispatcher: Dispatcher,
        reports: ReportSink,
        stop: CancellationToken,
    ) -> (Claimer, mpsc::UnboundedReceiver<Handed>, JoinHandle<()>) {
        let (queue, groups) = mpsc::channel(QUEUE_CAPACITY);
        // Unbounded so the stage never waits for the intake, which may itself wait for the stage's queue; what
        // it holds is bounded by the units in that queue.
        let (handed, handed_back) = mpsc::unbounded_channel();
        let stage = Stage {
            store,
            destination_id,
            destination_name,
            reports,
            stop,
        };
        let task = tokio::spawn(stage.run(groups, dispatcher, handed).in_current_span());
        (Claimer { queue }, handed_back, task)
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
    async fn run(
        self,
        mut groups: mpsc::Receiver<Vec<DeliveryUnit>>,
        dispatcher: Dispatcher,
        handed: mpsc::UnboundedSender<Handed>,
    ) {
        let mut ready = Vec::with_capacity(MAX_GROUPS_PER_WRITE);
        while groups.recv_many(&mut ready, MAX_GROUPS_PER_WRITE).await > 0 {
            let count = ready.len();
            let units: Vec<DeliveryUnit> = ready.drain(..).flatten().collect();
            let refused = self.claim_and_dispatch(units, &dispatcher).await;
            if let Err(unheard) = handed.send(Handed {
                groups: count,
                refused,
            }) {
                for unit in unheard.0.refused {
                    self.reports.release(unit).await;
                }
            }
        }
        dispatcher.finish().await;
    }

    /// Claims the units the store wants claimed (one write for all of them), then queues every unit for the
    /// workers, except those whose claim was refused: those are returned. Once the session has stopped, units
    /// are let go instead.
    async fn claim_and_dispatch(
        &self,
        mut units: Vec<DeliveryUnit>,
        dispatcher: &Dispatcher,
    ) -> Vec<DeliveryUnit> {
        if self.stop.is_cancelled() {
            for unit in units {
                self.reports.release(unit).await;
            }
            return Vec::new();
        }
        let every_call = self.store.claims_repeatable_calls();
        let (positions, claims): (Vec<usize>, Vec<RecordClaim>) =
            claims_of(&self.destination_id, &units, every_call)
                .into_iter()
                .unzip();
        let mut refused = vec![false; units.len()];
        if !claims.is_empty() {
            match self.store.claim_records(claims).await {
                Ok(not_taken) => {
                    for index in not_taken {
                        if let Some(&position) = positions.get(index) {
                            refused[position] = true;
                        }
                    }
                }
                Err(error) => {
                    tracing::error!(%error, destination = %self.destination_name, "cannot claim records; creates kept as failed");
                    let (unclaimed, claimed): (Vec<_>, Vec<_>) =
                        units.into_iter().partition(|unit| !unit.repeatable);
                    units = claimed;
                    refused = vec![false; units.len()];
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
        }
        let mut not_sent = Vec::new();
        for (unit, refused) in units.into_iter().zip(refused) {
            if refused {
                not_sent.push(unit);
            } else if let Err(unit) = dispatcher.dispatch(unit).await {
                self.reports.release(unit).await;
            }
        }
        not_sent
    }
}

/// A claim, with the unit's position, for each unit that must not be sent twice (or for every unit, with
/// `every_call`), covering all its records.
fn claims_of(
    destination_id: &str,
    units: &[DeliveryUnit],
    every_call: bool,
) -> Vec<(usize, RecordClaim)> {
    let claimed_at_ms = now_ms();
    units
        .iter()
        .enumerate()
        .filter(|(_, unit)| every_call || !unit.repeatable)
        .map(|(position, unit)| {
            let call = unit.calls.first();
            let claim = RecordClaim {
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
                repeatable: unit.repeatable,
            };
            (position, claim)
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
    fn units_that_must_not_be_repeated_are_claimed_and_every_unit_where_asked() {
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
        let units = [
            unit(HttpMethod::Post, &["a", "b"]),
            unit(HttpMethod::Put, &["c"]),
        ];
        let every = claims_of("d", &units, true);
        let positions: Vec<usize> = every.iter().map(|(position, _)| *position).collect();
        assert_eq!(
            positions,
            [0, 1],
            "every unit, where the store claims every call"
        );
        assert!(!every[0].1.repeatable);
        assert!(every[1].1.repeatable);
        let claims: Vec<RecordClaim> = claims_of("d", &units, false)
            .into_iter()
            .map(|(_, claim)| claim)
            .collect();
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
