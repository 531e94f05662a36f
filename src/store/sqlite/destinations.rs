//! SQL for the `destinations` table: scalar columns for what is queried, the configuration as JSON text in the
//! versioned format of [`stored::config`].
//!
//! Concurrency is settled in SQL, the way a shared PostgreSQL store would have to: updates and deletes are
//! compare-and-swap on `revision`, and the credential reference is a foreign key.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::stored;
use crate::domain::destination::{Destination, DestinationState};
use crate::store::error::{Context, StoreError, DESTINATION};

const COLUMNS: &str =
    "id, display_name, credential_id, state, config_json, revision, create_time_ms, update_time_ms";

pub(super) fn insert(conn: &Connection, destination: &Destination) -> Result<(), StoreError> {
    let id = &destination.id;
    let config = config_json(destination)?;
    let revision = revision_column(id, destination.revision)?;
    let inserted = conn
        .prepare_cached(&format!(
            "INSERT INTO destinations ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (id) DO NOTHING"
        ))
        .and_then(|mut statement| {
            statement.execute(params![
                id,
                destination.display_name,
                destination.credential_id,
                destination.state.as_str(),
                config,
                revision,
                destination.create_time_ms,
                destination.update_time_ms,
            ])
        })
        .map_err(|err| write_error(err, destination, "inserting"))?;
    if inserted == 0 {
        return Err(StoreError::already_exists(DESTINATION, id));
    }
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Destination, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM destinations WHERE id = ?1"))
        .and_then(|mut statement| statement.query_row([id], StoredRow::read).optional())
        .context(|| format!("reading destination destinations/{id}"))?
        .ok_or_else(|| StoreError::not_found(DESTINATION, id))?
        .into_destination()
}

/// Up to `limit` destinations with ids after `after`, in id order.
pub(super) fn list(
    conn: &Connection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Destination>, StoreError> {
    // Two statements rather than `?1 IS NULL OR id > ?1`, which would keep SQLite from seeking the index.
    let rows = match after {
        None => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM destinations ORDER BY id LIMIT ?1"
            ))
            .and_then(|mut statement| {
                statement
                    .query_map([limit], StoredRow::read)?
                    .collect::<Result<Vec<_>, _>>()
            }),
        Some(after) => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM destinations WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .and_then(|mut statement| {
                statement
                    .query_map(params![after, limit], StoredRow::read)?
                    .collect::<Result<Vec<_>, _>>()
            }),
    };
    rows.context(|| "listing destinations".to_string())?
        .into_iter()
        .map(StoredRow::into_destination)
        .collect()
}

/// Every destination id, in id order.
pub(super) fn ids(conn: &Connection) -> Result<Vec<String>, StoreError> {
    conn.prepare_cached("SELECT id FROM destinations ORDER BY id")
        .and_then(|mut statement| statement.query_map([], |row| row.get(0))?.collect())
        .context(|| "listing destination ids".to_string())
}

/// [`StoreError::NotFound`] unless the destination exists.
pub(super) fn ensure_exists(conn: &Connection, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("SELECT 1 FROM destinations WHERE id = ?1")
        .and_then(|mut statement| statement.exists([id]))
        .context(|| format!("reading destination destinations/{id}"))?
        .then_some(())
        .ok_or_else(|| StoreError::not_found(DESTINATION, id))
}

/// Compare-and-swap replace; see `Store::update_destination`.
pub(super) fn update(
    conn: &Connection,
    destination: &Destination,
    expected_revision: u64,
) -> Result<Destination, StoreError> {
    let id = &destination.id;
    if destination.revision <= expected_revision {
        // A write that keeps the revision would hand two different versions the same etag.
        return Err(StoreError::internal(
            format!("updating destination destinations/{id}"),
            format!(
                "new revision {} does not advance past {expected_revision}",
                destination.revision
            ),
        ));
    }
    let config = config_json(destination)?;
    let expected = revision_column(id, expected_revision)?;
    let revision = revision_column(id, destination.revision)?;
    let create_time_ms: Option<i64> = conn
        .prepare_cached(
            "UPDATE destinations
             SET display_name = ?3, credential_id = ?4, state = ?5, config_json = ?6, revision = ?7,
                 update_time_ms = ?8
             WHERE id = ?1 AND revision = ?2
             RETURNING create_time_ms",
        )
        .and_then(|mut statement| {
            statement
                .query_row(
                    params![
                        id,
                        expected,
                        destination.display_name,
                        destination.credential_id,
                        destination.state.as_str(),
                        config,
                        revision,
                        destination.update_time_ms,
                    ],
                    |row| row.get(0),
                )
                .optional()
        })
        .map_err(|err| write_error(err, destination, "updating"))?;
    match create_time_ms {
        Some(create_time_ms) => Ok(Destination {
            create_time_ms,
            ..destination.clone()
        }),
        None => Err(stale_or_missing(conn, id, expected_revision)),
    }
}

/// Deletes a destination, only at `expected_revision` if one is given. Its ledger and failed records go with it
/// (`ON DELETE CASCADE`), in the same transaction.
pub(super) fn delete(
    conn: &Connection,
    id: &str,
    expected_revision: Option<u64>,
) -> Result<(), StoreError> {
    let expected = expected_revision
        .map(|revision| revision_column(id, revision))
        .transpose()?;
    let deleted = conn
        .prepare_cached("DELETE FROM destinations WHERE id = ?1 AND (?2 IS NULL OR revision = ?2)")
        .and_then(|mut statement| statement.execute(params![id, expected]))
        .context(|| format!("deleting destination destinations/{id}"))?;
    match (deleted, expected_revision) {
        (0, Some(expected)) => Err(stale_or_missing(conn, id, expected)),
        (0, None) => Err(StoreError::not_found(DESTINATION, id)),
        _ => Ok(()),
    }
}

/// Why a compare-and-swap matched no row: the destination is gone, or at another revision.
fn stale_or_missing(conn: &Connection, id: &str, expected: u64) -> StoreError {
    let current: Result<Option<i64>, StoreError> = conn
        .prepare_cached("SELECT revision FROM destinations WHERE id = ?1")
        .and_then(|mut statement| statement.query_row([id], |row| row.get(0)).optional())
        .context(|| format!("reading the revision of destination destinations/{id}"));
    match current {
        Ok(None) => StoreError::not_found(DESTINATION, id),
        Ok(Some(actual)) => StoreError::RevisionMismatch {
            id: id.to_string(),
            expected,
            actual: actual.max(0) as u64,
        },
        Err(err) => err,
    }
}

/// A write's error: a foreign-key violation means the referenced credential does not exist.
fn write_error(err: rusqlite::Error, destination: &Destination, doing: &str) -> StoreError {
    match &err {
        rusqlite::Error::SqliteFailure(failure, _)
            if failure.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::CredentialNotFound {
                id: destination.credential_id.clone(),
            }
        }
        _ => StoreError::internal(
            format!("{doing} destination destinations/{}", destination.id),
            err,
        ),
    }
}

fn config_json(destination: &Destination) -> Result<String, StoreError> {
    stored::config::encode(&destination.config).context(|| {
        format!(
            "encoding the configuration of destination destinations/{}",
            destination.id
        )
    })
}

fn revision_column(id: &str, revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision).map_err(|_| {
        StoreError::internal(
            format!("storing destination destinations/{id}"),
            format!("revision {revision} does not fit a 64-bit signed integer"),
        )
    })
}

/// A row as SQLite returns it, before the checks that can find it corrupt.
struct StoredRow {
    id: String,
    display_name: String,
    credential_id: String,
    state: String,
    config_json: String,
    revision: i64,
    create_time_ms: i64,
    update_time_ms: i64,
}

impl StoredRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<StoredRow> {
        Ok(StoredRow {
            id: row.get(0)?,
            display_name: row.get(1)?,
            credential_id: row.get(2)?,
            state: row.get(3)?,
            config_json: row.get(4)?,
            revision: row.get(5)?,
            create_time_ms: row.get(6)?,
            update_time_ms: row.get(7)?,
        })
    }

    fn into_destination(self) -> Result<Destination, StoreError> {
        let what = || format!("stored destination destinations/{}", self.id);
        let state = DestinationState::parse(&self.state).ok_or_else(|| {
            StoreError::corrupt(what(), format!("unknown state {:?}", self.state))
        })?;
        let config = stored::config::decode(&self.config_json)
            .map_err(|err| StoreError::corrupt(what(), format!("configuration: {err}")))?;
        let revision = u64::try_from(self.revision)
            .map_err(|_| StoreError::corrupt(what(), format!("revision {}", self.revision)))?;
        Ok(Destination {
            id: self.id,
            display_name: self.display_name,
            credential_id: self.credential_id,
            state,
            config,
            create_time_ms: self.create_time_ms,
            update_time_ms: self.update_time_ms,
            revision,
        })
    }
}
