//! SQL for the `delivered_records` ledger: written in bulk by the writer thread, looked up a message at a time
//! by readers, trimmed by retention.

use std::collections::HashMap;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::per_record::{is_missing_destination, padded_chunks, placeholders};
use crate::store::error::{Context, StoreError};
use crate::store::records::{LedgerEntry, LEDGER_BODY_CAP};

const COLUMNS: &str =
    "destination_id, record_id, http_status, response_body, attempts, delivered_at_ms";

/// Cuts the response body to what the ledger keeps. Done before the entry reaches the writer thread, which
/// every write waits on.
pub(super) fn capped(mut entry: LedgerEntry) -> LedgerEntry {
    entry.response_body.truncate(LEDGER_BODY_CAP);
    entry
}

/// Adds the entries, replacing any with the same destination and record id. Entries of a destination that no
/// longer exists are skipped: its ledger was deleted with it.
pub(super) fn record(conn: &Connection, entries: &[LedgerEntry]) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached(&format!(
            "INSERT INTO delivered_records ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 http_status = excluded.http_status,
                 response_body = excluded.response_body,
                 attempts = excluded.attempts,
                 delivered_at_ms = excluded.delivered_at_ms"
        ))
        .context(|| "preparing to record delivered records".to_string())?;
    for entry in entries {
        let inserted = statement.execute(params![
            entry.destination_id,
            entry.record_id,
            entry.http_status,
            entry.response_body,
            entry.attempts,
            entry.delivered_at_ms,
        ]);
        match inserted {
            Err(err) if !is_missing_destination(&err) => {
                return Err(StoreError::internal(
                    format!(
                        "recording delivered record {} of destination destinations/{}",
                        entry.record_id, entry.destination_id
                    ),
                    err,
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

/// The entries of those `record_ids` the destination has delivered, by record id.
pub(super) fn lookup(
    conn: &Connection,
    destination_id: &str,
    record_ids: &[String],
) -> Result<HashMap<String, LedgerEntry>, StoreError> {
    let context =
        || format!("looking up delivered records of destination destinations/{destination_id}");
    let mut found = HashMap::new();
    for chunk in padded_chunks(record_ids) {
        let rows = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM delivered_records
                 WHERE destination_id = ? AND record_id IN ({})",
                placeholders(chunk.len())
            ))
            .and_then(|mut statement| {
                let values = std::iter::once(destination_id).chain(chunk.iter().copied());
                statement
                    .query_map(params_from_iter(values), StoredRow::read)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(context)?;
        for row in rows {
            let entry = row.into_entry()?;
            found.insert(entry.record_id.clone(), entry);
        }
    }
    Ok(found)
}

/// Where retention cuts a destination's ledger: the latest entry, in (delivered_at_ms, record_id) order, that
/// is older than `older_than_ms` or not among the `max_entries` most recent. `None` when nothing goes.
///
/// Both rules remove a prefix of that order, so one bound covers both and the deletes can walk the age index.
pub(super) fn prune_bound(
    conn: &Connection,
    destination_id: &str,
    older_than_ms: i64,
    max_entries: u64,
) -> Result<Option<(i64, String)>, StoreError> {
    let context = || {
        format!("finding expired delivered records of destination destinations/{destination_id}")
    };
    let by_age: Option<(i64, String)> = conn
        .prepare_cached(
            "SELECT delivered_at_ms, record_id FROM delivered_records
             WHERE destination_id = ?1 AND delivered_at_ms < ?2
             ORDER BY delivered_at_ms DESC, record_id DESC LIMIT 1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![destination_id, older_than_ms], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .context(context)?;
    // Beyond i64::MAX no destination can hold more than the limit.
    let by_count: Option<(i64, String)> = match i64::try_from(max_entries) {
        Err(_) => None,
        Ok(keep) => conn
            .prepare_cached(
                "SELECT delivered_at_ms, record_id FROM delivered_records
                 WHERE destination_id = ?1
                 ORDER BY delivered_at_ms DESC, record_id DESC LIMIT 1 OFFSET ?2",
            )
            .and_then(|mut statement| {
                statement
                    .query_row(params![destination_id, keep], |row| {
                        Ok((row.get(0)?, row.get(1)?))
                    })
                    .optional()
            })
            .context(context)?,
    };
    Ok(by_age.max(by_count))
}

/// Deletes up to `limit` of the destination's entries at or before `bound`, oldest first; returns how many.
/// Bounded so that one retention pass never holds the writer, and the deliveries queued behind it, for long.
pub(super) fn prune_through(
    conn: &Connection,
    destination_id: &str,
    bound: &(i64, String),
    limit: u32,
) -> Result<u64, StoreError> {
    let deleted = conn
        .prepare_cached(
            "DELETE FROM delivered_records
             WHERE destination_id = ?1 AND record_id IN (
                 SELECT record_id FROM delivered_records
                 WHERE destination_id = ?1 AND (delivered_at_ms, record_id) <= (?2, ?3)
                 ORDER BY delivered_at_ms, record_id
                 LIMIT ?4)",
        )
        .and_then(|mut statement| {
            statement.execute(params![destination_id, bound.0, bound.1, limit])
        })
        .context(|| {
            format!(
                "removing expired delivered records of destination destinations/{destination_id}"
            )
        })?;
    Ok(deleted as u64)
}

/// A row as SQLite returns it, before the range checks that can find it corrupt.
struct StoredRow {
    destination_id: String,
    record_id: String,
    http_status: i64,
    response_body: Vec<u8>,
    attempts: i64,
    delivered_at_ms: i64,
}

impl StoredRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            destination_id: row.get(0)?,
            record_id: row.get(1)?,
            http_status: row.get(2)?,
            response_body: row.get(3)?,
            attempts: row.get(4)?,
            delivered_at_ms: row.get(5)?,
        })
    }

    fn into_entry(self) -> Result<LedgerEntry, StoreError> {
        let what = || {
            format!(
                "delivered record {} of destination destinations/{}",
                self.record_id, self.destination_id
            )
        };
        let http_status = u16::try_from(self.http_status).map_err(|_| {
            StoreError::corrupt(what(), format!("http status {}", self.http_status))
        })?;
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| StoreError::corrupt(what(), format!("attempts {}", self.attempts)))?;
        Ok(LedgerEntry {
            destination_id: self.destination_id,
            record_id: self.record_id,
            http_status,
            response_body: self.response_body,
            attempts,
            delivered_at_ms: self.delivered_at_ms,
        })
    }
}
