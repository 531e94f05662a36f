//! SQL for the delivered-records ledger: written in bulk by the writer thread, looked up a message at a time
//! by readers, trimmed by retention.
//!
//! Entries that share their answer (destination, status, body, attempts and time; a batch's records always
//! do) are stored as one `delivered_groups` row, and each record id as a key in `delivered_ids` pointing at its
//! group. Retention therefore works a group at a time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

use rusqlite::{params, params_from_iter, Connection, OptionalExtension, Row};

use super::per_record::{is_missing_destination, padded_chunks, placeholders};
use crate::store::error::{Context, StoreError};
use crate::store::records::{LedgerEntry, LEDGER_BODY_CAP};

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
    let preparing = || "preparing to record delivered records".to_string();
    let mut insert_group = conn
        .prepare_cached(
            "INSERT INTO delivered_groups (destination_id, http_status, response_body, attempts,
                 delivered_at_ms, record_count, record_ids)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .context(preparing)?;
    let failed = |entry: &LedgerEntry, err| {
        StoreError::internal(
            format!(
                "recording delivered record {} of destination destinations/{}",
                entry.record_id, entry.destination_id
            ),
            err,
        )
    };
    for group in entries.chunk_by(same_answer) {
        let first = &group[0];
        let inserted = insert_group.execute(params![
            first.destination_id,
            first.http_status,
            first.response_body,
            first.attempts,
            first.delivered_at_ms,
            group.len() as i64,
            encode_ids(group.iter().map(|entry| entry.record_id.as_str())),
        ]);
        match inserted {
            Ok(_) => {}
            Err(err) if is_missing_destination(&err) => continue,
            Err(err) => return Err(failed(first, err)),
        }
        let group_id = conn.last_insert_rowid();
        let mut rest = group;
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(key_rows(rest.len()));
            insert_keys(conn, &first.destination_id, group_id, chunk)
                .map_err(|err| failed(&chunk[0], err))?;
            rest = after;
        }
    }
    Ok(())
}

/// Most keys one statement inserts.
const MOST_KEY_ROWS: usize = 512;

/// How many of `remaining` keys the next statement inserts: [`MOST_KEY_ROWS`] while that many remain, then the
/// largest power of two not above what remains, so a group takes one statement per bit of its size past the
/// full ones and only ten statement texts are ever built. Not padded to a few sizes the way lookups are: a
/// padded row is a full upsert, and a record delivered alone (one key) would pay for fifteen.
fn key_rows(remaining: usize) -> usize {
    if remaining >= MOST_KEY_ROWS {
        MOST_KEY_ROWS
    } else {
        1 << remaining.ilog2()
    }
}

/// Points the entries' ids at their group, many rows to a statement: a statement per id cost about as much in
/// SQLite's per-statement work as in its b-tree.
fn insert_keys(
    conn: &Connection,
    destination_id: &str,
    group_id: i64,
    entries: &[LedgerEntry],
) -> rusqlite::Result<usize> {
    let mut statement = conn.prepare_cached(&insert_keys_sql(entries.len()))?;
    statement.raw_bind_parameter(1, destination_id)?;
    statement.raw_bind_parameter(2, group_id)?;
    for (i, entry) in entries.iter().enumerate() {
        statement.raw_bind_parameter(i + 3, entry.record_id.as_str())?;
    }
    statement.raw_execute()
}

/// The statement inserting `rows` keys, `rows` a power of two up to [`MOST_KEY_ROWS`]. The statement cache is
/// looked up by the statement's text, so each text is built once.
fn insert_keys_sql(rows: usize) -> Cow<'static, str> {
    static BUILT: OnceLock<Vec<String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        (0..=MOST_KEY_ROWS.ilog2())
            .map(|bit| keys_sql(1 << bit))
            .collect()
    });
    match built.get(rows.ilog2() as usize) {
        Some(text) if rows.is_power_of_two() => Cow::Borrowed(text.as_str()),
        _ => Cow::Owned(keys_sql(rows)),
    }
}

fn keys_sql(rows: usize) -> String {
    let values = (0..rows)
        .map(|i| format!("(?1, ?{}, ?2)", i + 3))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "INSERT INTO delivered_ids (destination_id, record_id, group_id) VALUES {values}
         ON CONFLICT (destination_id, record_id) DO UPDATE SET group_id = excluded.group_id"
    )
}

fn same_answer(a: &LedgerEntry, b: &LedgerEntry) -> bool {
    a.destination_id == b.destination_id
        && a.http_status == b.http_status
        && a.attempts == b.attempts
        && a.delivered_at_ms == b.delivered_at_ms
        && same_bytes(&a.response_body, &b.response_body)
}

/// Byte equality that never hands `memcmp` an empty slice. A batch's entries all have empty bodies, whose
/// pointers are dangling; glibc's AVX-512 `memcmp` reads them with a masked load, and a masked load of an
/// unmapped address takes the processor's slow fault-suppression path, even with nothing to load: in a
/// profile, the comparisons of empty bodies cost as much as the ledger's other work on them together.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && (a.is_empty() || a == b)
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
                "SELECT ids.record_id, groups.http_status, groups.response_body, groups.attempts,
                     groups.delivered_at_ms
                 FROM delivered_ids AS ids JOIN delivered_groups AS groups ON groups.id = ids.group_id
                 WHERE ids.destination_id = ? AND ids.record_id IN ({})",
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
            let entry = row.into_entry(destination_id)?;
            found.insert(entry.record_id.clone(), entry);
        }
    }
    Ok(found)
}

/// How many ids the ledger holds, all destinations together.
pub(super) fn count_ids(conn: &Connection) -> Result<u64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM delivered_ids")
        .and_then(|mut statement| statement.query_row([], |row| row.get::<_, i64>(0)))
        .map(|count| u64::try_from(count).unwrap_or(0))
        .context(|| "counting delivered records".to_string())
}

/// Calls `each` with the destination and record id of every id in the ledger.
pub(super) fn scan_ids(
    conn: &Connection,
    mut each: impl FnMut(&str, &str),
) -> Result<(), StoreError> {
    let context = || "reading the ids of delivered records".to_string();
    let mut statement = conn
        .prepare("SELECT destination_id, record_id FROM delivered_ids")
        .context(context)?;
    let mut rows = statement.query([]).context(context)?;
    while let Some(row) = rows.next().context(context)? {
        let destination_id = row.get_ref(0).and_then(|value| Ok(value.as_str()?));
        let record_id = row.get_ref(1).and_then(|value| Ok(value.as_str()?));
        each(
            destination_id.context(context)?,
            record_id.context(context)?,
        );
    }
    Ok(())
}

/// A group's position in retention order: `(delivered_at_ms, group id)`.
pub(super) type GroupPosition = (i64, i64);

/// Where retention cuts a destination's ledger: the latest group, in (delivered_at_ms, id) order, that is older
/// than `older_than_ms` or lies wholly outside the `max_entries` most recent entries. `None` when nothing goes.
///
/// A group is kept or removed whole, so the count rule keeps at least `max_entries` entries: more by part of
/// the group it would otherwise cut through. Both rules remove a prefix of that order, so one bound covers both.
pub(super) fn prune_bound(
    conn: &Connection,
    destination_id: &str,
    older_than_ms: i64,
    max_entries: u64,
) -> Result<Option<GroupPosition>, StoreError> {
    let context = || {
        format!("finding expired delivered records of destination destinations/{destination_id}")
    };
    let by_age: Option<GroupPosition> = conn
        .prepare_cached(
            "SELECT delivered_at_ms, id FROM delivered_groups
             WHERE destination_id = ?1 AND delivered_at_ms < ?2
             ORDER BY delivered_at_ms DESC, id DESC LIMIT 1",
        )
        .and_then(|mut statement| {
            statement
                .query_row(params![destination_id, older_than_ms], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .optional()
        })
        .context(context)?;
    let by_count = first_group_beyond(conn, destination_id, max_entries).context(context)?;
    Ok(by_age.max(by_count))
}

/// The newest group that starts after the `keep` most recent entries, walking the age index from its end.
fn first_group_beyond(
    conn: &Connection,
    destination_id: &str,
    keep: u64,
) -> rusqlite::Result<Option<GroupPosition>> {
    let mut statement = conn.prepare_cached(
        "SELECT delivered_at_ms, id, record_count FROM delivered_groups
         WHERE destination_id = ?1
         ORDER BY delivered_at_ms DESC, id DESC",
    )?;
    let mut rows = statement.query(params![destination_id])?;
    let mut kept: u64 = 0;
    while let Some(row) = rows.next()? {
        if kept >= keep {
            return Ok(Some((row.get(0)?, row.get(1)?)));
        }
        let count: i64 = row.get(2)?;
        kept = kept.saturating_add(u64::try_from(count).unwrap_or(0));
    }
    Ok(None)
}

/// What one retention step did.
pub(super) struct PruneStep {
    /// Entries removed.
    pub(super) removed: u64,
    /// Whether the step stopped at its budget, so groups at or before the bound may remain.
    pub(super) more: bool,
}

/// Removes the destination's groups at or before `bound`, oldest first, until about `budget` entries went
/// (at least one group). Bounded so that one retention pass never holds the writer, and the deliveries queued
/// behind it, for long.
pub(super) fn prune_through(
    conn: &Connection,
    destination_id: &str,
    bound: GroupPosition,
    budget: u32,
) -> Result<PruneStep, StoreError> {
    let context = || {
        format!("removing expired delivered records of destination destinations/{destination_id}")
    };
    let mut select = conn
        .prepare_cached(
            "SELECT id, record_ids FROM delivered_groups
             WHERE destination_id = ?1 AND (delivered_at_ms, id) <= (?2, ?3)
             ORDER BY delivered_at_ms, id",
        )
        .context(context)?;
    let mut delete_id = conn
        .prepare_cached(
            "DELETE FROM delivered_ids WHERE destination_id = ?1 AND record_id = ?2 AND group_id = ?3",
        )
        .context(context)?;
    let mut delete_group = conn
        .prepare_cached("DELETE FROM delivered_groups WHERE id = ?1")
        .context(context)?;
    let mut groups = Vec::new();
    let mut listed: u64 = 0;
    let mut more = false;
    {
        let mut rows = select
            .query(params![destination_id, bound.0, bound.1])
            .context(context)?;
        while let Some(row) = rows.next().context(context)? {
            if listed >= u64::from(budget) {
                more = true;
                break;
            }
            let (group_id, record_ids): (i64, Vec<u8>) =
                (row.get(0).context(context)?, row.get(1).context(context)?);
            let ids = decode_ids(&record_ids).ok_or_else(|| {
                StoreError::corrupt(
                    format!(
                        "delivered group {group_id} of destination destinations/{destination_id}"
                    ),
                    "record ids cut short",
                )
            })?;
            listed += ids.len() as u64;
            groups.push((group_id, ids));
        }
    }
    let mut removed: u64 = 0;
    for (group_id, ids) in groups {
        for record_id in ids {
            removed += delete_id
                .execute(params![destination_id, record_id, group_id])
                .context(context)? as u64;
        }
        delete_group.execute(params![group_id]).context(context)?;
    }
    Ok(PruneStep { removed, more })
}

/// A group's record ids, each as a big-endian u32 byte length and its bytes (the form the migration from
/// one row per entry can write in SQL).
fn encode_ids<'a>(ids: impl Iterator<Item = &'a str> + Clone) -> Vec<u8> {
    let size = ids.clone().map(|id| 4 + id.len()).sum();
    let mut encoded = Vec::with_capacity(size);
    for id in ids {
        // Record ids are far shorter than 4 GiB: the request size limit bounds them.
        encoded.extend_from_slice(&(id.len() as u32).to_be_bytes());
        encoded.extend_from_slice(id.as_bytes());
    }
    encoded
}

/// The ids [`encode_ids`] wrote; `None` when the bytes are not such a list.
fn decode_ids(mut encoded: &[u8]) -> Option<Vec<String>> {
    let mut ids = Vec::new();
    while !encoded.is_empty() {
        let (length, rest) = encoded.split_first_chunk::<4>()?;
        let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
        if rest.len() < length {
            return None;
        }
        let (id, rest) = rest.split_at(length);
        ids.push(String::from_utf8(id.to_vec()).ok()?);
        encoded = rest;
    }
    Some(ids)
}

/// A row as SQLite returns it, before the range checks that can find it corrupt.
struct StoredRow {
    record_id: String,
    http_status: i64,
    response_body: Vec<u8>,
    attempts: i64,
    delivered_at_ms: i64,
}

impl StoredRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            record_id: row.get(0)?,
            http_status: row.get(1)?,
            response_body: row.get(2)?,
            attempts: row.get(3)?,
            delivered_at_ms: row.get(4)?,
        })
    }

    fn into_entry(self, destination_id: &str) -> Result<LedgerEntry, StoreError> {
        let what = || {
            format!(
                "delivered record {} of destination destinations/{destination_id}",
                self.record_id
            )
        };
        let http_status = u16::try_from(self.http_status).map_err(|_| {
            StoreError::corrupt(what(), format!("http status {}", self.http_status))
        })?;
        let attempts = u32::try_from(self.attempts)
            .map_err(|_| StoreError::corrupt(what(), format!("attempts {}", self.attempts)))?;
        Ok(LedgerEntry {
            destination_id: destination_id.into(),
            record_id: self.record_id,
            http_status,
            response_body: self.response_body,
            attempts,
            delivered_at_ms: self.delivered_at_ms,
        })
    }
}

#[cfg(test)]
mod tests;
