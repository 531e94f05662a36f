//! SQL for `record_claims`: claims on the records of calls that must not be repeated blindly, written before
//! the call, ended with the records' outcome, and turned into failed records when a process left them behind.

use std::collections::HashSet;

use rusqlite::{params, Connection, Row};

use super::failed_records::EncodedFailure;
use super::per_record::is_missing_destination;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::error::{Context, StoreError};
use crate::store::records::{ClaimedRecord, FailedRecordEntry, RecordClaim, StoredRequest};

/// A claim checked and encoded for its columns before it reaches the writer thread, which every write waits on.
pub(super) struct EncodedClaim {
    destination_id: String,
    first_record_id: String,
    records: Vec<u8>,
    request_method: String,
    request_url: String,
    claimed_at_ms: i64,
}

pub(super) fn encode(claim: RecordClaim) -> Result<EncodedClaim, StoreError> {
    let first_record_id = claim
        .records
        .first()
        .map(|record| record.record_id.clone())
        .ok_or_else(|| {
            StoreError::internal(
                format!(
                    "claiming records of destination destinations/{}",
                    claim.destination_id
                ),
                "a claim without records",
            )
        })?;
    Ok(EncodedClaim {
        records: encode_records(&claim.records),
        destination_id: claim.destination_id,
        first_record_id,
        request_method: claim.request_method,
        request_url: claim.request_url,
        claimed_at_ms: claim.claimed_at_ms,
    })
}

/// Adds the claims, replacing any keyed by the same first record. Claims of a destination that no longer exists
/// are skipped: nothing of it is kept.
pub(super) fn insert(conn: &Connection, claims: &[EncodedClaim]) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    // An upsert rather than `INSERT OR REPLACE`: a replace may delete a row, which makes SQLite copy each page
    // the statement changes into a statement journal first, so the statement alone can be undone.
    let mut statement = conn
        .prepare_cached(
            "INSERT INTO record_claims (destination_id, record_id, records, request_method, request_url,
                 claimed_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 records = excluded.records,
                 request_method = excluded.request_method,
                 request_url = excluded.request_url,
                 claimed_at_ms = excluded.claimed_at_ms",
        )
        .context(|| "preparing to claim records".to_string())?;
    for claim in claims {
        let inserted = statement.execute(params![
            claim.destination_id,
            claim.first_record_id,
            claim.records,
            claim.request_method,
            claim.request_url,
            claim.claimed_at_ms,
        ]);
        match inserted {
            Err(err) if !is_missing_destination(&err) => {
                return Err(StoreError::internal(
                    format!(
                        "claiming record {} of destination destinations/{}",
                        claim.first_record_id, claim.destination_id
                    ),
                    err,
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Ends the claims these records belong to, where there are any. A claim is keyed by its first record, and the
/// records of one call always end together, so looking every record up finds each claim once.
pub(super) fn end<'a>(
    conn: &Connection,
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), StoreError> {
    // Most records never had a claim (updates need none), and the table holds only what is in flight: one
    // probe spares the rest.
    if !any(conn)? {
        return Ok(());
    }
    let mut by_destination: Vec<(&str, Vec<&str>)> = Vec::new();
    for (destination_id, record_id) in records {
        match by_destination.last_mut() {
            Some((current, ids)) if *current == destination_id => ids.push(record_id),
            _ => by_destination.push((destination_id, vec![record_id])),
        }
    }
    let mut delete = conn
        .prepare_cached("DELETE FROM record_claims WHERE destination_id = ?1 AND record_id = ?2")
        .context(|| "preparing to end record claims".to_string())?;
    for (destination_id, record_ids) in &by_destination {
        let context =
            || format!("ending record claims of destination destinations/{destination_id}");
        // A destination's open claims are its calls in flight, as a rule far fewer than the records of a
        // batch ending: their keys are read once and matched here, sparing a b-tree probe per record. Should
        // the destination hold more claims than there are records, each record is probed instead.
        let open = open_keys(conn, destination_id, record_ids.len() + 1).context(context)?;
        let probe_each = open.len() > record_ids.len();
        for record_id in record_ids {
            if probe_each || open.contains(*record_id) {
                delete
                    .execute(params![destination_id, record_id])
                    .context(context)?;
            }
        }
    }
    Ok(())
}

/// Up to `limit` keys of the destination's open claims.
fn open_keys(
    conn: &Connection,
    destination_id: &str,
    limit: usize,
) -> rusqlite::Result<HashSet<String>> {
    let mut statement = conn
        .prepare_cached("SELECT record_id FROM record_claims WHERE destination_id = ?1 LIMIT ?2")?;
    let keys = statement.query_map(
        params![destination_id, i64::try_from(limit).unwrap_or(i64::MAX)],
        |row| row.get(0),
    )?;
    keys.collect()
}

fn any(conn: &Connection) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM record_claims)")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .context(|| "checking for record claims".to_string())
}

/// Removes every claim and returns its records as failed records that may have been delivered, ready to be
/// stored.
pub(super) fn take_all_as_failures(
    conn: &Connection,
    error: &str,
    now_ms: i64,
) -> Result<Vec<EncodedFailure>, StoreError> {
    let rows = conn
        .prepare_cached(
            "SELECT destination_id, record_id, records, request_method, request_url
             FROM record_claims ORDER BY claimed_at_ms, destination_id, record_id",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], OrphanRow::read)?
                .collect::<Result<Vec<_>, _>>()
        })
        .context(|| "reading orphaned record claims".to_string())?;
    conn.execute("DELETE FROM record_claims", [])
        .context(|| "removing orphaned record claims".to_string())?;
    let mut failures = Vec::new();
    for row in rows {
        for failure in row.into_failures(error, now_ms)? {
            failures.push(super::failed_records::encode(failure)?);
        }
    }
    Ok(failures)
}

/// A claim row as read back when its process is gone; shared with the PostgreSQL store, which keeps claims in
/// the same layout.
pub(in crate::store) struct OrphanRow {
    pub(in crate::store) destination_id: String,
    pub(in crate::store) record_id: String,
    pub(in crate::store) records: Vec<u8>,
    pub(in crate::store) request_method: String,
    pub(in crate::store) request_url: String,
}

impl OrphanRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<OrphanRow> {
        Ok(OrphanRow {
            destination_id: row.get(0)?,
            record_id: row.get(1)?,
            records: row.get(2)?,
            request_method: row.get(3)?,
            request_url: row.get(4)?,
        })
    }

    /// Its records as failed records that may have been delivered.
    pub(in crate::store) fn into_failures(
        self,
        error: &str,
        now_ms: i64,
    ) -> Result<Vec<FailedRecordEntry>, StoreError> {
        let records = decode_records(&self.records).ok_or_else(|| {
            StoreError::corrupt(
                format!(
                    "claim on record {} of destination destinations/{}",
                    self.record_id, self.destination_id
                ),
                "its records cannot be read",
            )
        })?;
        let request = StoredRequest {
            method: self.request_method,
            url: self.request_url,
            headers: Vec::new(),
            body: Vec::new(),
        };
        Ok(records
            .into_iter()
            .map(|record| FailedRecordEntry {
                destination_id: self.destination_id.clone(),
                record_id: record.record_id,
                record_json: record.record_json,
                outcome: Outcome::Failed,
                request: Some(request.clone()),
                http_status: 0,
                response_headers: Vec::new(),
                response_body: Vec::new(),
                error: error.to_string(),
                maybe_delivered: true,
                record_encoding: record.record_encoding,
                attempts: 0,
                first_failure_ms: now_ms,
                last_failure_ms: now_ms,
            })
            .collect())
    }
}

/// Each record as a little-endian u32 id length, the id, an encoding byte, a u32 JSON length and the JSON.
pub(in crate::store) fn encode_records(records: &[ClaimedRecord]) -> Vec<u8> {
    let size = records
        .iter()
        .map(|record| 9 + record.record_id.len() + record.record_json.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for record in records {
        put_bytes(&mut out, record.record_id.as_bytes());
        out.push(match record.record_encoding {
            RecordEncoding::Struct => 0,
            RecordEncoding::RawJson => 1,
        });
        put_bytes(&mut out, &record.record_json);
    }
    out
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    // Record ids are at most 256 bytes and a record fits a 16 MiB message: u32 lengths always hold.
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// `None` if the bytes are not what [`encode_records`] writes.
fn decode_records(mut bytes: &[u8]) -> Option<Vec<ClaimedRecord>> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let record_id = String::from_utf8(take_bytes(&mut bytes)?.to_vec()).ok()?;
        let (&encoding, rest) = bytes.split_first()?;
        bytes = rest;
        let record_encoding = match encoding {
            0 => RecordEncoding::Struct,
            1 => RecordEncoding::RawJson,
            _ => return None,
        };
        let record_json = take_bytes(&mut bytes)?.to_vec();
        records.push(ClaimedRecord {
            record_id,
            record_json,
            record_encoding,
        });
    }
    Some(records)
}

fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (length, rest) = bytes.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_le_bytes(*length)).ok()?;
    if rest.len() < length {
        return None;
    }
    let (taken, rest) = rest.split_at(length);
    *bytes = rest;
    Some(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let records = vec![
            ClaimedRecord {
                record_id: "r-1".to_string(),
                record_json: br#"{"n": 12345678901234567890}"#.to_vec(),
                record_encoding: RecordEncoding::RawJson,
            },
            ClaimedRecord {
                record_id: "é".to_string(),
                record_json: Vec::new(),
                record_encoding: RecordEncoding::Struct,
            },
        ];
        let encoded = encode_records(&records);
        assert_eq!(decode_records(&encoded), Some(records));
        assert_eq!(decode_records(&[]), Some(Vec::new()));
        for cut in 1..encoded.len() {
            let decoded = decode_records(&encoded[..cut]);
            assert!(
                decoded.is_none() || decoded.is_some_and(|records| records.len() == 1),
                "cut at {cut}"
            );
        }
        let mut bad_encoding = encoded.clone();
        bad_encoding[4 + 3] = 7;
        assert_eq!(decode_records(&bad_encoding), None);
    }
}
