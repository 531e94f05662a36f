//! Group commit of the per-record writes: claims, record outcomes and released claims queued by many calls are
//! written by one task, whatever is queued when it looks in one transaction, each table's rows in one
//! multi-row statement (`unnest` of arrays) rather than a statement per record.
//!
//! Calls are merged in queue order into segments whose records do not overlap, and segments run one after the
//! other inside the transaction. So a record claimed and then delivered, or failing twice, is written in the
//! order its calls were made, exactly as if each call had its own transaction; and no `ON CONFLICT` statement
//! meets the same key twice, which PostgreSQL refuses.

use std::collections::HashSet;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;

use super::claims::{self, EncodedClaim};
use super::failed_records::{self, EncodedFailure};
use super::ledger;
use crate::store::error::{Context, StoreError};
use crate::store::records::LedgerEntry;

/// Writes queued beyond this make callers wait (backpressure instead of unbounded memory).
const QUEUE_CAPACITY: usize = 1024;
/// Upper bound on writes sharing one transaction.
const MAX_WRITES_PER_COMMIT: usize = 256;
/// Transactions tried again after losing to a concurrent writer: a deadlock with another replica, or a
/// destination deleted between the check that skips its rows and the commit.
const ATTEMPTS: usize = 3;

/// One call's per-record write.
pub(super) enum Write {
    Claims(Vec<EncodedClaim>),
    Outcomes {
        delivered: Vec<LedgerEntry>,
        failed: Vec<EncodedFailure>,
    },
    Release(Vec<(String, String)>),
}

struct Queued {
    write: Write,
    reply: oneshot::Sender<Result<Vec<usize>, StoreError>>,
}

/// Keys `(destination id, first record id)` of the claims another replica holds.
type Refused = HashSet<(String, String)>;

/// Handle to the committer task; the task ends when every handle is dropped and the queue is empty.
#[derive(Clone)]
pub(super) struct Committer {
    queue: mpsc::Sender<Queued>,
}

impl Committer {
    /// Starts the task; claims it writes are owned by replica `owner`.
    pub(super) fn spawn(pool: Pool, owner: String) -> Committer {
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run(pool, owner, receiver));
        Committer { queue }
    }

    /// Queues `write` and returns once the transaction holding it has committed: for [`Write::Claims`], with
    /// the positions of the claims refused because another replica holds their key (empty for other writes).
    pub(super) async fn write(&self, write: Write) -> Result<Vec<usize>, StoreError> {
        let (reply, outcome) = oneshot::channel();
        self.queue
            .send(Queued { write, reply })
            .await
            .map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::internal("writing records", "the database committer has stopped")
}

async fn run(pool: Pool, owner: String, mut receiver: mpsc::Receiver<Queued>) {
    let mut batch = Vec::with_capacity(MAX_WRITES_PER_COMMIT);
    while receiver.recv_many(&mut batch, MAX_WRITES_PER_COMMIT).await > 0 {
        let (writes, replies): (Vec<Write>, Vec<_>) = batch
            .drain(..)
            .map(|queued| (queued.write, queued.reply))
            .unzip();
        let segments = segments(&writes);
        let mut result = commit(&pool, &owner, &segments).await;
        for _ in 1..ATTEMPTS {
            match &result {
                Err(Failure::Retry(_)) => result = commit(&pool, &owner, &segments).await,
                _ => break,
            }
        }
        let outcome = result.map_err(|(Failure::Retry(err) | Failure::Fatal(err))| err.to_string());
        for (write, reply) in writes.iter().zip(replies) {
            let _ = reply.send(match &outcome {
                Ok(refused) => Ok(refused_in(write, refused)),
                Err(message) => Err(StoreError::internal("writing records", message.clone())),
            });
        }
    }
}

/// Rows of several calls that touch no record twice, written together.
#[derive(Default)]
struct Segment<'a> {
    claims: Vec<&'a EncodedClaim>,
    delivered: Vec<&'a LedgerEntry>,
    failed: Vec<&'a EncodedFailure>,
    /// Records whose claims end: those delivered, failed or released.
    ended: Vec<(&'a str, &'a str)>,
    keys: HashSet<(&'a str, &'a str)>,
}

impl<'a> Segment<'a> {
    fn overlaps(&self, keys: &[(&'a str, &'a str)]) -> bool {
        keys.iter().any(|key| self.keys.contains(key))
    }
}

/// Splits the queued writes into segments, in order: a write joins the current segment unless one of its
/// records is already there. A write that names one record twice among its failures is split too.
fn segments(writes: &[Write]) -> Vec<Segment<'_>> {
    let mut segments: Vec<Segment<'_>> = vec![Segment::default()];
    for write in writes {
        let parts = parts_of(write);
        for part in parts {
            let keys = part.keys();
            let current = segments
                .last_mut()
                .filter(|segment| !segment.overlaps(&keys));
            let segment = match current {
                Some(segment) => segment,
                None => {
                    segments.push(Segment::default());
                    segments.last_mut().expect("just pushed")
                }
            };
            segment.keys.extend(keys);
            part.add_to(segment);
        }
    }
    segments
}

/// A write, or the piece of one, whose failures name each record once.
struct Part<'a> {
    claims: &'a [EncodedClaim],
    delivered: &'a [LedgerEntry],
    failed: Vec<&'a EncodedFailure>,
    released: &'a [(String, String)],
}

fn parts_of(write: &Write) -> Vec<Part<'_>> {
    let empty = Part {
        claims: &[],
        delivered: &[],
        failed: Vec::new(),
        released: &[],
    };
    match write {
        Write::Claims(claims) => vec![Part { claims, ..empty }],
        Write::Release(released) => vec![Part { released, ..empty }],
        Write::Outcomes { delivered, failed } => {
            // Rounds: a record's first failure in the first part, its second in the next, and so on.
            let mut rounds: Vec<Vec<&EncodedFailure>> = Vec::new();
            let mut seen: Vec<HashSet<(&str, &str)>> = Vec::new();
            for failure in failed {
                let round = seen
                    .iter()
                    .position(|keys| !keys.contains(&failure.key()))
                    .unwrap_or_else(|| {
                        seen.push(HashSet::new());
                        rounds.push(Vec::new());
                        seen.len() - 1
                    });
                seen[round].insert(failure.key());
                rounds[round].push(failure);
            }
            let mut rounds = rounds.into_iter();
            let mut parts = vec![Part {
                delivered,
                failed: rounds.next().unwrap_or_default(),
                ..empty
            }];
            parts.extend(rounds.map(|failed| Part {
                claims: &[],
                delivered: &[],
                failed,
                released: &[],
            }));
            parts
        }
    }
}

impl<'a> Part<'a> {
    fn keys(&self) -> Vec<(&'a str, &'a str)> {
        let claimed = self.claims.iter().flat_map(|claim| {
            claim
                .record_ids
                .iter()
                .map(|record_id| (claim.destination_id.as_str(), record_id.as_str()))
        });
        let delivered = self
            .delivered
            .iter()
            .map(|entry| (&*entry.destination_id, entry.record_id.as_str()));
        let failed = self.failed.iter().map(|failure| failure.key());
        let released = self
            .released
            .iter()
            .map(|(destination_id, record_id)| (destination_id.as_str(), record_id.as_str()));
        claimed
            .chain(delivered)
            .chain(failed)
            .chain(released)
            .collect()
    }

    fn add_to(self, segment: &mut Segment<'a>) {
        segment.claims.extend(self.claims);
        segment.delivered.extend(self.delivered);
        segment.ended.extend(
            self.delivered
                .iter()
                .map(|entry| (&*entry.destination_id, entry.record_id.as_str())),
        );
        segment
            .ended
            .extend(self.failed.iter().map(|failure| failure.key()));
        segment.failed.extend(self.failed);
        segment.ended.extend(
            self.released
                .iter()
                .map(|(destination_id, record_id)| (destination_id.as_str(), record_id.as_str())),
        );
    }
}

enum Failure {
    /// Lost to a concurrent writer; the same transaction may succeed when tried again.
    Retry(StoreError),
    Fatal(StoreError),
}

/// Positions of `write`'s claims among those refused.
fn refused_in(write: &Write, refused: &Refused) -> Vec<usize> {
    let Write::Claims(claims) = write else {
        return Vec::new();
    };
    if refused.is_empty() {
        return Vec::new();
    }
    claims
        .iter()
        .enumerate()
        .filter(|(_, claim)| {
            refused.contains(&(claim.destination_id.clone(), claim.first_record_id.clone()))
        })
        .map(|(index, _)| index)
        .collect()
}

async fn commit(pool: &Pool, owner: &str, segments: &[Segment<'_>]) -> Result<Refused, Failure> {
    let mut client = pool
        .get()
        .await
        .context(|| "connecting to the database".to_string())
        .map_err(Failure::Fatal)?;
    let written = async {
        let context = || "writing records".to_string();
        let tx = client.transaction().await.context(context)?;
        let mut refused = Refused::new();
        for segment in segments {
            refused.extend(write_segment(&tx, owner, segment).await?);
        }
        tx.commit().await.context(context)?;
        Ok(refused)
    }
    .await;
    written.map_err(|err| {
        let retry = matches!(
            super::sql_state(&err),
            Some(
                &SqlState::FOREIGN_KEY_VIOLATION
                    | &SqlState::T_R_DEADLOCK_DETECTED
                    | &SqlState::T_R_SERIALIZATION_FAILURE
            )
        );
        if retry {
            Failure::Retry(err)
        } else {
            Failure::Fatal(err)
        }
    })
}

/// The segment's statements, rows in key order so that transactions of several replicas lock rows in the same
/// order and do not deadlock. Returns the keys of the claims refused.
async fn write_segment(
    tx: &deadpool_postgres::Transaction<'_>,
    owner: &str,
    segment: &Segment<'_>,
) -> Result<Refused, StoreError> {
    // Within one call a record may come twice; the last word counts, as with one write after another. The
    // reversal puts it first among its equals, where the (stable) sort keeps it and `dedup_by` retains it.
    let mut claims = segment.claims.clone();
    claims.reverse();
    claims.sort_by(|a, b| {
        (&a.destination_id, &a.first_record_id).cmp(&(&b.destination_id, &b.first_record_id))
    });
    claims.dedup_by(|a, b| {
        a.destination_id == b.destination_id && a.first_record_id == b.first_record_id
    });
    let mut delivered = segment.delivered.clone();
    delivered.reverse();
    delivered
        .sort_by(|a, b| (&a.destination_id, &a.record_id).cmp(&(&b.destination_id, &b.record_id)));
    delivered.dedup_by(|a, b| a.destination_id == b.destination_id && a.record_id == b.record_id);
    let mut failed = segment.failed.clone();
    failed.sort_by(|a, b| a.key().cmp(&b.key()));
    let mut ended = segment.ended.clone();
    ended.sort_unstable();
    ended.dedup();
    let (ended_destinations, ended_records): (Vec<&str>, Vec<&str>) = ended.into_iter().unzip();
    let delivered_destinations: Vec<&str> = delivered.iter().map(|e| &*e.destination_id).collect();
    let delivered_records: Vec<&str> = delivered.iter().map(|e| e.record_id.as_str()).collect();

    let mut refused = claims::insert(tx, owner, &claims).await?;
    refused.extend(claims::drop_delivered(tx, owner, &claims).await?);
    ledger::record(tx, &delivered).await?;
    failed_records::resolve(tx, &delivered_destinations, &delivered_records).await?;
    failed_records::upsert(tx, &failed).await?;
    claims::end(tx, owner, &ended_destinations, &ended_records).await?;
    Ok(refused)
}
