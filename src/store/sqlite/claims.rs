//! SQL for `record_claims`: claims on records whose call must not be repeated blindly, written before the call,
//! ended with the record's outcome, and turned into failed records when a process left them behind.

use rusqlite::{params, Connection, Row};

use super::failed_records::EncodedFailure;
use super::per_record::is_missing_destination;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::error::{Context, StoreError};
use crate::store::records::{FailedRecordEntry, RecordClaim, StoredRequest};

/// Adds the claims, replacing any on the same record. Claims of a destination that no longer exists are
/// skipped: nothing of it is kept.
pub(super) fn insert(conn: &Connection, claims: &[RecordClaim]) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached(
            "INSERT OR REPLACE INTO record_claims (destination_id, record_id, record_json, record_encoding,
                 request_method, request_url, claimed_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .context(|| "preparing to claim records".to_string())?;
    for claim in claims {
        let inserted = statement.execute(params![
            claim.destination_id,
            claim.record_id,
            claim.record_json,
            claim.record_encoding.as_str(),
            claim.request_method,
            claim.request_url,
            claim.claimed_at_ms,
        ]);
        match inserted {
            Err(err) if !is_missing_destination(&err) => {
                return Err(StoreError::internal(
                    format!(
                        "claiming record {} of destination destinations/{}",
                        claim.record_id, claim.destination_id
                    ),
                    err,
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Ends the claims on these records, where there are any.
pub(super) fn end<'a>(
    conn: &Connection,
    records: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), StoreError> {
    // Most records never had a claim (updates need none), and the table holds only what is in flight: one
    // probe spares a delete per record.
    if !any(conn)? {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached("DELETE FROM record_claims WHERE destination_id = ?1 AND record_id = ?2")
        .context(|| "preparing to end record claims".to_string())?;
    for (destination_id, record_id) in records {
        statement
            .execute(params![destination_id, record_id])
            .context(|| {
                format!("ending the claim on record {record_id} of destination destinations/{destination_id}")
            })?;
    }
    Ok(())
}

fn any(conn: &Connection) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM record_claims)")
        .and_then(|mut statement| statement.query_row([], |row| row.get(0)))
        .context(|| "checking for record claims".to_string())
}

/// Removes every claim and returns them as failed records that may have been delivered, ready to be stored.
pub(super) fn take_all_as_failures(
    conn: &Connection,
    error: &str,
    now_ms: i64,
) -> Result<Vec<EncodedFailure>, StoreError> {
    let context = || "reading orphaned record claims".to_string();
    let rows = conn
        .prepare_cached(
            "SELECT destination_id, record_id, record_json, record_encoding, request_method, request_url
             FROM record_claims ORDER BY claimed_at_ms, destination_id, record_id",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], OrphanRow::read)?
                .collect::<Result<Vec<_>, _>>()
        })
        .context(context)?;
    conn.execute("DELETE FROM record_claims", [])
        .context(|| "removing orphaned record claims".to_string())?;
    rows.into_iter()
        .map(|row| super::failed_records::encode(row.into_failure(error, now_ms)))
        .collect()
}

struct OrphanRow {
    destination_id: String,
    record_id: String,
    record_json: Vec<u8>,
    record_encoding: String,
    request_method: String,
    request_url: String,
}

impl OrphanRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<OrphanRow> {
        Ok(OrphanRow {
            destination_id: row.get(0)?,
            record_id: row.get(1)?,
            record_json: row.get(2)?,
            record_encoding: row.get(3)?,
            request_method: row.get(4)?,
            request_url: row.get(5)?,
        })
    }

    fn into_failure(self, error: &str, now_ms: i64) -> FailedRecordEntry {
        FailedRecordEntry {
            destination_id: self.destination_id,
            record_id: self.record_id,
            record_json: self.record_json,
            outcome: Outcome::Failed,
            request: Some(StoredRequest {
                method: self.request_method,
                url: self.request_url,
                headers: Vec::new(),
                body: Vec::new(),
            }),
            http_status: 0,
            response_headers: Vec::new(),
            response_body: Vec::new(),
            error: error.to_string(),
            maybe_delivered: true,
            // A name this build does not know shows the record as a Struct rather than losing it.
            record_encoding: RecordEncoding::parse(&self.record_encoding).unwrap_or_default(),
            attempts: 0,
            first_failure_ms: now_ms,
            last_failure_ms: now_ms,
        }
    }
}
