//! SQL for the `failed_records` table: records that ended rejected or failed, with their last request and
//! response, listed oldest first.

use rusqlite::{params, params_from_iter, Connection, Row};

use super::per_record::{is_missing_destination, padded_chunks, placeholders};
use super::stored;
use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::error::{Context, StoreError};
use crate::store::records::{
    FailedRecordEntry, FailedRecordFilter, FailedRecordSize, LedgerEntry, StoredRequest,
};

const COLUMNS: &str =
    "destination_id, record_id, record_json, outcome, request_method, request_url, \
     request_headers, request_body, http_status, response_headers, response_body, error, attempts, \
     first_failure_ms, last_failure_ms, maybe_delivered, record_encoding";

/// A failed record checked and encoded for its columns: built before it is queued for a commit (the SQLite
/// writer thread, or the PostgreSQL committer task, which every write waits on), so that a bad entry is refused
/// before anything is queued. Both stores keep the headers in this encoding.
pub(in crate::store) struct EncodedFailure {
    pub(in crate::store) entry: FailedRecordEntry,
    pub(in crate::store) request_headers: Option<String>,
    pub(in crate::store) response_headers: String,
}

impl EncodedFailure {
    /// `(destination id, record id)`.
    pub(in crate::store) fn key(&self) -> (&str, &str) {
        (&self.entry.destination_id, &self.entry.record_id)
    }
}

pub(in crate::store) fn encode(entry: FailedRecordEntry) -> Result<EncodedFailure, StoreError> {
    let what = || {
        format!(
            "storing failed record {} of destination destinations/{}",
            entry.record_id, entry.destination_id
        )
    };
    if !entry.outcome.is_kept_as_failed() {
        return Err(StoreError::internal(
            what(),
            format!(
                "outcome {} is not kept as a failed record",
                entry.outcome.as_str()
            ),
        ));
    }
    let request_headers = entry
        .request
        .as_ref()
        .map(|request| stored::headers::encode(&request.headers))
        .transpose()
        .context(what)?;
    let response_headers = stored::headers::encode(&entry.response_headers).context(what)?;
    Ok(EncodedFailure {
        entry,
        request_headers,
        response_headers,
    })
}

/// Inserts each failure, or updates the stored one: the first failure time stays, attempts add up,
/// `maybe_delivered` stays set once set, everything else is replaced by the latest failure. Failures of a
/// destination that no longer exists are skipped.
pub(super) fn upsert(conn: &Connection, failures: &[EncodedFailure]) -> Result<(), StoreError> {
    if failures.is_empty() {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached(&format!(
            "INSERT INTO failed_records ({COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 record_json = excluded.record_json,
                 outcome = excluded.outcome,
                 request_method = excluded.request_method,
                 request_url = excluded.request_url,
                 request_headers = excluded.request_headers,
                 request_body = excluded.request_body,
                 http_status = excluded.http_status,
                 response_headers = excluded.response_headers,
                 response_body = excluded.response_body,
                 error = excluded.error,
                 -- Saturates rather than growing past what reads back as a u32.
                 attempts = min(attempts + excluded.attempts, {max_attempts}),
                 last_failure_ms = excluded.last_failure_ms,
                 -- An explicit retry that fails does not undo an earlier attempt that may have created it.
                 maybe_delivered = max(maybe_delivered, excluded.maybe_delivered),
                 record_encoding = excluded.record_encoding",
            max_attempts = u32::MAX
        ))
        .context(|| "preparing to store failed records".to_string())?;
    for failure in failures {
        let entry = &failure.entry;
        let request = entry.request.as_ref();
        let stored = statement.execute(params![
            entry.destination_id,
            entry.record_id,
            entry.record_json,
            entry.outcome.as_str(),
            request.map(|r| &r.method),
            request.map(|r| &r.url),
            failure.request_headers,
            request.map(|r| &r.body),
            entry.http_status,
            failure.response_headers,
            entry.response_body,
            entry.error,
            entry.attempts,
            entry.first_failure_ms,
            entry.last_failure_ms,
            entry.maybe_delivered,
            entry.record_encoding.as_str(),
        ]);
        match stored {
            Err(err) if !is_missing_destination(&err) => {
                return Err(StoreError::internal(
                    format!(
                        "storing failed record {} of destination destinations/{}",
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

/// Removes the failed records of what has now been delivered.
pub(super) fn resolve(conn: &Connection, delivered: &[LedgerEntry]) -> Result<(), StoreError> {
    if delivered.is_empty() {
        return Ok(());
    }
    let mut statement = conn
        .prepare_cached("DELETE FROM failed_records WHERE destination_id = ?1 AND record_id = ?2")
        .context(|| "preparing to resolve failed records".to_string())?;
    // Most destinations have no failed records at all: one probe per destination then spares a delete per
    // delivered record. Entries come grouped by stream, so remembering the last answer is enough.
    let mut last_checked: Option<(&str, bool)> = None;
    for entry in delivered {
        let has_failures = match last_checked {
            Some((destination_id, has_failures)) if destination_id == &*entry.destination_id => {
                has_failures
            }
            _ => {
                let has_failures = has_failed_records(conn, &entry.destination_id)?;
                last_checked = Some((&entry.destination_id, has_failures));
                has_failures
            }
        };
        if !has_failures {
            continue;
        }
        statement
            .execute(params![entry.destination_id, entry.record_id])
            .context(|| {
                format!(
                    "resolving failed record {} of destination destinations/{}",
                    entry.record_id, entry.destination_id
                )
            })?;
    }
    Ok(())
}

fn has_failed_records(conn: &Connection, destination_id: &str) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT EXISTS (SELECT 1 FROM failed_records WHERE destination_id = ?1)")
        .and_then(|mut statement| statement.query_row(params![destination_id], |row| row.get(0)))
        .context(|| {
            format!("checking for failed records of destination destinations/{destination_id}")
        })
}

/// What a row weighs: everything kept for it, read from the row's header without loading the contents (SQLite
/// takes the length of a blob, and the byte length of a text, from the record header).
const STORED_BYTES: &str = "length(record_json) + coalesce(length(request_body), 0) + length(response_body) \
     + octet_length(record_id) + coalesce(octet_length(request_url), 0) \
     + coalesce(octet_length(request_headers), 0) + octet_length(response_headers) + octet_length(error)";

/// Up to `limit` failed records of the destination that pass `filter`, after `after` (first failure, record
/// id), oldest first, ending before the record that would take their stored size past `max_bytes` (the first is
/// always there). Also says whether more records follow.
///
/// Sizes are read first, then only the rows that fit, in one read transaction so both see the same rows.
pub(super) fn list(
    conn: &Connection,
    destination_id: &str,
    filter: FailedRecordFilter,
    after: Option<(i64, &str)>,
    limit: u32,
    max_bytes: u64,
) -> Result<(Vec<FailedRecordEntry>, bool), StoreError> {
    let what = || format!("listing failed records of destination destinations/{destination_id}");
    let snapshot = conn.unchecked_transaction().context(what)?;
    let range = Range {
        destination_id,
        filter,
        after,
    };
    let sizes = range
        .walk(&snapshot, STORED_BYTES, limit.saturating_add(1), |row| {
            row.get::<_, i64>(0)
        })
        .context(what)?;
    let mut total: u64 = 0;
    let fitting = sizes
        .iter()
        .take(limit as usize)
        .take_while(|&&bytes| {
            total = total.saturating_add(u64::try_from(bytes).unwrap_or(0));
            total <= max_bytes
        })
        .count()
        // However large the first record is, a page holds it: otherwise no page could ever get past it.
        .max(1)
        .min(sizes.len());
    let rows = range
        .walk(&snapshot, COLUMNS, fitting as u32, StoredRow::read)
        .context(what)?;
    let more = sizes.len() > rows.len();
    let entries = rows
        .into_iter()
        .map(StoredRow::into_entry)
        .collect::<Result<_, _>>()?;
    Ok((entries, more))
}

/// Failed records of one destination that pass a filter, after a (first failure, record id) key: a listing's
/// walk along the index.
struct Range<'a> {
    destination_id: &'a str,
    filter: FailedRecordFilter,
    after: Option<(i64, &'a str)>,
}

impl Range<'_> {
    /// `select` of up to `limit` rows of the range, oldest first.
    fn walk<T>(
        &self,
        conn: &Connection,
        select: &str,
        limit: u32,
        read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        let outcome = self.filter.outcome.map(Outcome::as_str);
        let maybe_delivered_only = self.filter.maybe_delivered_only;
        // The filters only skip rows met along the index; the bound decides where the walk starts. Two
        // statements rather than one with an optional bound, which would keep SQLite from seeking the index.
        const FILTERS: &str = "(?2 IS NULL OR outcome = ?2) AND (?3 = 0 OR maybe_delivered = 1)";
        match self.after {
            None => conn
                .prepare_cached(&format!(
                    "SELECT {select} FROM failed_records WHERE destination_id = ?1 AND {FILTERS}
                     ORDER BY first_failure_ms, record_id LIMIT ?4"
                ))?
                .query_map(
                    params![self.destination_id, outcome, maybe_delivered_only, limit],
                    read,
                )?
                .collect(),
            Some((time, record_id)) => conn
                .prepare_cached(&format!(
                    "SELECT {select} FROM failed_records
                     WHERE destination_id = ?1 AND {FILTERS} AND (first_failure_ms, record_id) > (?5, ?6)
                     ORDER BY first_failure_ms, record_id LIMIT ?4"
                ))?
                .query_map(
                    params![
                        self.destination_id,
                        outcome,
                        maybe_delivered_only,
                        limit,
                        time,
                        record_id
                    ],
                    read,
                )?
                .collect(),
        }
    }
}

/// Those of `record_ids` that are failed records of the destination, oldest first.
pub(super) fn get(
    conn: &Connection,
    destination_id: &str,
    record_ids: &[String],
) -> Result<Vec<FailedRecordEntry>, StoreError> {
    // An id asked for twice could land in two chunks and come back twice.
    let mut unique = record_ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut found = Vec::new();
    for chunk in padded_chunks(&unique) {
        let rows = conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM failed_records
                 WHERE destination_id = ? AND record_id IN ({})",
                placeholders(chunk.len())
            ))
            .and_then(|mut statement| {
                let values = std::iter::once(destination_id).chain(chunk.iter().copied());
                statement
                    .query_map(params_from_iter(values), StoredRow::read)?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(|| {
                format!("reading failed records of destination destinations/{destination_id}")
            })?;
        for row in rows {
            found.push(row.into_entry()?);
        }
    }
    found.sort_by(|a, b| {
        (a.first_failure_ms, &a.record_id).cmp(&(b.first_failure_ms, &b.record_id))
    });
    Ok(found)
}

/// Those of `record_ids` that are failed records of the destination which may have been delivered; `None` when
/// the destination has no failed records at all.
pub(super) fn maybe_delivered(
    conn: &Connection,
    destination_id: &str,
    record_ids: &[String],
) -> Result<Option<Vec<String>>, StoreError> {
    // Most destinations have no failed records at all: one probe then spares the lookups.
    if !has_failed_records(conn, destination_id)? {
        return Ok(None);
    }
    let mut found = Vec::new();
    for chunk in padded_chunks(record_ids) {
        let rows = conn
            .prepare_cached(&format!(
                "SELECT DISTINCT record_id FROM failed_records
                 WHERE destination_id = ? AND maybe_delivered = 1 AND record_id IN ({})",
                placeholders(chunk.len())
            ))
            .and_then(|mut statement| {
                let values = std::iter::once(destination_id).chain(chunk.iter().copied());
                statement
                    .query_map(params_from_iter(values), |row| row.get::<_, String>(0))?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(|| {
                format!("looking up failed records of destination destinations/{destination_id}")
            })?;
        found.extend(rows);
    }
    Ok(Some(found))
}

/// Deletes those of `record_ids` that are failed records of the destination; returns how many.
pub(super) fn delete(
    conn: &Connection,
    destination_id: &str,
    record_ids: &[String],
) -> Result<u64, StoreError> {
    let mut statement = conn
        .prepare_cached("DELETE FROM failed_records WHERE destination_id = ?1 AND record_id = ?2")
        .context(|| "preparing to delete failed records".to_string())?;
    let mut deleted = 0;
    for record_id in record_ids {
        deleted += statement
            .execute(params![destination_id, record_id])
            .context(|| {
                format!(
                    "deleting failed record {record_id} of destination destinations/{destination_id}"
                )
            })? as u64;
    }
    Ok(deleted)
}

/// Deletes every failed record of the destination; returns how many.
pub(super) fn delete_all(conn: &Connection, destination_id: &str) -> Result<u64, StoreError> {
    conn.execute(
        "DELETE FROM failed_records WHERE destination_id = ?1",
        params![destination_id],
    )
    .map(|deleted| deleted as u64)
    .context(|| format!("deleting the failed records of destination destinations/{destination_id}"))
}

/// Ids and stored sizes of up to `limit` failed records of the destination, oldest first.
pub(super) fn oldest_sizes(
    conn: &Connection,
    destination_id: &str,
    limit: u32,
) -> Result<Vec<FailedRecordSize>, StoreError> {
    conn.prepare_cached(&format!(
        "SELECT record_id, {STORED_BYTES} FROM failed_records WHERE destination_id = ?1
         ORDER BY first_failure_ms, record_id LIMIT ?2"
    ))
    .and_then(|mut statement| {
        statement
            .query_map(params![destination_id, limit], read_size)?
            .collect()
    })
    .context(|| format!("sizing failed records of destination destinations/{destination_id}"))
}

/// Ids and stored sizes of those of `record_ids` that are failed records of the destination, oldest first, at
/// most `limit`.
pub(super) fn sizes_of(
    conn: &Connection,
    destination_id: &str,
    record_ids: &[String],
    limit: u32,
) -> Result<Vec<FailedRecordSize>, StoreError> {
    // An id asked for twice could land in two chunks and come back twice.
    let mut unique = record_ids.to_vec();
    unique.sort_unstable();
    unique.dedup();
    let mut found: Vec<(i64, FailedRecordSize)> = Vec::new();
    for chunk in padded_chunks(&unique) {
        let rows = conn
            .prepare_cached(&format!(
                "SELECT record_id, {STORED_BYTES}, first_failure_ms FROM failed_records
                 WHERE destination_id = ? AND record_id IN ({})",
                placeholders(chunk.len())
            ))
            .and_then(|mut statement| {
                let values = std::iter::once(destination_id).chain(chunk.iter().copied());
                statement
                    .query_map(params_from_iter(values), |row| {
                        Ok((row.get(2)?, read_size(row)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()
            })
            .context(|| {
                format!("sizing failed records of destination destinations/{destination_id}")
            })?;
        found.extend(rows);
    }
    found.sort_by(|(a_time, a), (b_time, b)| (a_time, &a.record_id).cmp(&(b_time, &b.record_id)));
    found.truncate(limit as usize);
    Ok(found.into_iter().map(|(_, size)| size).collect())
}

/// `record_id, STORED_BYTES` as a [`FailedRecordSize`].
fn read_size(row: &Row<'_>) -> rusqlite::Result<FailedRecordSize> {
    Ok(FailedRecordSize {
        record_id: row.get(0)?,
        bytes: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
    })
}

/// A row as SQLite returns it, before the checks that can find it corrupt.
struct StoredRow {
    destination_id: String,
    record_id: String,
    record_json: Vec<u8>,
    outcome: String,
    request_method: Option<String>,
    request_url: Option<String>,
    request_headers: Option<String>,
    request_body: Option<Vec<u8>>,
    http_status: i64,
    response_headers: String,
    response_body: Vec<u8>,
    error: String,
    attempts: i64,
    first_failure_ms: i64,
    last_failure_ms: i64,
    maybe_delivered: bool,
    record_encoding: String,
}

impl StoredRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            destination_id: row.get(0)?,
            record_id: row.get(1)?,
            record_json: row.get(2)?,
            outcome: row.get(3)?,
            request_method: row.get(4)?,
            request_url: row.get(5)?,
            request_headers: row.get(6)?,
            request_body: row.get(7)?,
            http_status: row.get(8)?,
            response_headers: row.get(9)?,
            response_body: row.get(10)?,
            error: row.get(11)?,
            attempts: row.get(12)?,
            first_failure_ms: row.get(13)?,
            last_failure_ms: row.get(14)?,
            maybe_delivered: row.get(15)?,
            record_encoding: row.get(16)?,
        })
    }

    fn into_entry(self) -> Result<FailedRecordEntry, StoreError> {
        let what = || {
            format!(
                "failed record {} of destination destinations/{}",
                self.record_id, self.destination_id
            )
        };
        let outcome = Outcome::parse(&self.outcome)
            .filter(|outcome| outcome.is_kept_as_failed())
            .ok_or_else(|| StoreError::corrupt(what(), format!("outcome {:?}", self.outcome)))?;
        let headers = |json: &str, which: &str| -> Result<Vec<(String, String)>, StoreError> {
            stored::headers::decode(json)
                .map_err(|err| StoreError::corrupt(what(), format!("{which} headers: {err}")))
        };
        // The table's CHECK keeps the request columns all set or all NULL.
        let request = match (
            self.request_method,
            self.request_url,
            self.request_headers,
            self.request_body,
        ) {
            (Some(method), Some(url), Some(request_headers), Some(body)) => Some(StoredRequest {
                method,
                url,
                headers: headers(&request_headers, "request")?,
                body,
            }),
            (None, None, None, None) => None,
            _ => return Err(StoreError::corrupt(what(), "request is partly missing")),
        };
        let http_status = u16::try_from(self.http_status).map_err(|_| {
            StoreError::corrupt(what(), format!("http status {}", self.http_status))
        })?;
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| StoreError::corrupt(what(), format!("attempts {}", self.attempts)))?;
        let response_headers = headers(&self.response_headers, "response")?;
        let record_encoding = RecordEncoding::parse(&self.record_encoding).ok_or_else(|| {
            StoreError::corrupt(
                what(),
                format!("record encoding {:?}", self.record_encoding),
            )
        })?;
        Ok(FailedRecordEntry {
            response_headers,
            destination_id: self.destination_id,
            record_id: self.record_id,
            record_json: self.record_json,
            outcome,
            request,
            http_status,
            response_body: self.response_body,
            error: self.error,
            attempts,
            first_failure_ms: self.first_failure_ms,
            last_failure_ms: self.last_failure_ms,
            maybe_delivered: self.maybe_delivered,
            record_encoding,
        })
    }
}
