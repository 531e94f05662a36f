//! SQL for the `credentials` table. Functions take a connection and run inside whatever transaction the
//! caller (the writer thread, or a reader's implicit one) provides.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::credential::Credential;
use crate::store::error::{Context, StoreError, CREDENTIAL};
use crate::store::MAX_LISTED_DESTINATIONS;

const COLUMNS: &str = "id, display_name, api_key_hint, create_time_ms, update_time_ms";

/// Associated data binding a sealed API key to its row: a ciphertext copied to another id will not open.
pub(super) fn key_binding(id: &str) -> Vec<u8> {
    format!("credentials/{id}").into_bytes()
}

pub(super) fn insert(
    conn: &Connection,
    credential: &Credential,
    sealed_key: &[u8],
) -> Result<(), StoreError> {
    let inserted = conn
        .prepare_cached(
            "INSERT INTO credentials
                 (id, display_name, api_key_hint, api_key_sealed, create_time_ms, update_time_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO NOTHING",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                credential.id,
                credential.display_name,
                credential.api_key_hint,
                sealed_key,
                credential.create_time_ms,
                credential.update_time_ms,
            ])
        })
        .context(|| format!("inserting credential credentials/{}", credential.id))?;
    if inserted == 0 {
        return Err(StoreError::already_exists(CREDENTIAL, &credential.id));
    }
    Ok(())
}

pub(super) fn get(conn: &Connection, id: &str) -> Result<Credential, StoreError> {
    conn.prepare_cached(&format!("SELECT {COLUMNS} FROM credentials WHERE id = ?1"))
        .and_then(|mut statement| statement.query_row([id], from_row).optional())
        .context(|| format!("reading credential credentials/{id}"))?
        .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))
}

/// Up to `limit` credentials with ids after `after`, in id order.
pub(super) fn list(
    conn: &Connection,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Credential>, StoreError> {
    let context = || "listing credentials".to_string();
    // Two statements rather than `?1 IS NULL OR id > ?1`, which would keep SQLite from seeking the index.
    let rows = match after {
        None => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM credentials ORDER BY id LIMIT ?1"
            ))
            .and_then(|mut statement| {
                statement
                    .query_map([limit], from_row)?
                    .collect::<Result<Vec<_>, _>>()
            }),
        Some(after) => conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM credentials WHERE id > ?1 ORDER BY id LIMIT ?2"
            ))
            .and_then(|mut statement| {
                statement
                    .query_map(params![after, limit], from_row)?
                    .collect::<Result<Vec<_>, _>>()
            }),
    };
    rows.context(context)
}

pub(super) fn sealed_key(conn: &Connection, id: &str) -> Result<Vec<u8>, StoreError> {
    conn.prepare_cached("SELECT api_key_sealed FROM credentials WHERE id = ?1")
        .and_then(|mut statement| statement.query_row([id], |row| row.get(0)).optional())
        .context(|| format!("reading the api key of credential credentials/{id}"))?
        .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))
}

pub(super) fn count(conn: &Connection) -> Result<u64, StoreError> {
    conn.query_row("SELECT count(*) FROM credentials", [], |row| row.get(0))
        .context(|| "counting credentials".to_string())
}

/// Deletes the credential unless a destination refers to it. Atomic because it runs inside the writer's
/// transaction; the `ON DELETE RESTRICT` foreign key backs the check up.
pub(super) fn delete_unless_used(conn: &Connection, id: &str) -> Result<(), StoreError> {
    let users: Vec<String> = conn
        .prepare_cached("SELECT id FROM destinations WHERE credential_id = ?1 ORDER BY id LIMIT ?2")
        .and_then(|mut statement| {
            statement
                .query_map(params![id, MAX_LISTED_DESTINATIONS as i64], |row| {
                    row.get(0)
                })?
                .collect()
        })
        .context(|| format!("finding destinations that use credential credentials/{id}"))?;
    if !users.is_empty() {
        return Err(StoreError::CredentialInUse {
            credential_id: id.to_string(),
            destination_ids: users,
        });
    }
    let deleted = conn
        .prepare_cached("DELETE FROM credentials WHERE id = ?1")
        .and_then(|mut statement| statement.execute([id]))
        .context(|| format!("deleting credential credentials/{id}"))?;
    if deleted == 0 {
        return Err(StoreError::not_found(CREDENTIAL, id));
    }
    Ok(())
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<Credential> {
    Ok(Credential {
        id: row.get(0)?,
        display_name: row.get(1)?,
        api_key_hint: row.get(2)?,
        create_time_ms: row.get(3)?,
        update_time_ms: row.get(4)?,
    })
}
