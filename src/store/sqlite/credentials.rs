//! SQL for the `credentials` table. Functions take a connection and run inside whatever transaction the
//! caller (the writer thread, or a reader's implicit one) provides.

use rusqlite::{params, Connection, OptionalExtension, Row};

use crate::domain::credential::{Credential, Refusal};
use crate::store::error::{Context, StoreError, CREDENTIAL};
use crate::store::MAX_LISTED_DESTINATIONS;

const COLUMNS: &str =
    "id, display_name, api_key_hint, create_time_ms, update_time_ms, key_version, \
     refuse_status, refuse_time_ms, refuse_detail";

/// Associated data binding a sealed API key to its row: a ciphertext copied to another id will not open.
pub(in crate::store) fn key_binding(id: &str) -> Vec<u8> {
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

/// The sealed key, its version and its refusal, read together so that they belong to the same key.
pub(super) fn sealed_key_state(
    conn: &Connection,
    id: &str,
) -> Result<(Vec<u8>, u64, Option<Refusal>), StoreError> {
    conn.prepare_cached(
        "SELECT api_key_sealed, key_version, refuse_status, refuse_time_ms, refuse_detail
         FROM credentials WHERE id = ?1",
    )
    .and_then(|mut statement| {
        statement
            .query_row([id], |row| {
                Ok((row.get(0)?, key_version(row, 1)?, refusal(row, 2)?))
            })
            .optional()
    })
    .context(|| format!("reading the api key of credential credentials/{id}"))?
    .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))
}

/// Replaces the display name. [`StoreError::NotFound`] if there is no such credential.
pub(super) fn set_display_name(
    conn: &Connection,
    id: &str,
    display_name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let updated = conn
        .prepare_cached(
            "UPDATE credentials SET display_name = ?2, update_time_ms = ?3 WHERE id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, display_name, now_ms]))
        .context(|| format!("updating credential credentials/{id}"))?;
    if updated == 0 {
        return Err(StoreError::not_found(CREDENTIAL, id));
    }
    Ok(())
}

/// Replaces the key: the next key version, and no refusal (that was about the old key).
/// [`StoreError::NotFound`] if there is no such credential.
pub(super) fn replace_key(
    conn: &Connection,
    id: &str,
    sealed_key: &[u8],
    hint: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let updated = conn
        .prepare_cached(
            "UPDATE credentials
             SET api_key_sealed = ?2, api_key_hint = ?3, key_version = key_version + 1,
                 refuse_status = NULL, refuse_time_ms = NULL, refuse_detail = NULL, update_time_ms = ?4
             WHERE id = ?1",
        )
        .and_then(|mut statement| statement.execute(params![id, sealed_key, hint, now_ms]))
        .context(|| format!("replacing the api key of credential credentials/{id}"))?;
    if updated == 0 {
        return Err(StoreError::not_found(CREDENTIAL, id));
    }
    Ok(())
}

/// Records (`Some`) or clears (`None`) the refusal of the key at `key_version`. `false` when the credential
/// holds another key by now, and nothing was written; [`StoreError::NotFound`] if there is no such credential.
pub(super) fn set_refusal(
    conn: &Connection,
    id: &str,
    key_version: u64,
    refusal: Option<&Refusal>,
) -> Result<bool, StoreError> {
    let version = i64::try_from(key_version).unwrap_or(i64::MAX);
    let updated = conn
        .prepare_cached(
            "UPDATE credentials SET refuse_status = ?3, refuse_time_ms = ?4, refuse_detail = ?5
             WHERE id = ?1 AND key_version = ?2",
        )
        .and_then(|mut statement| {
            statement.execute(params![
                id,
                version,
                refusal.map(|refusal| refusal.http_status),
                refusal.map(|refusal| refusal.refuse_time_ms),
                refusal.map(|refusal| refusal.detail.as_str()),
            ])
        })
        .context(|| format!("recording the refusal of credential credentials/{id}"))?;
    if updated == 0 {
        get(conn, id)?;
        return Ok(false);
    }
    Ok(true)
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
        key_version: key_version(row, 5)?,
        refusal: refusal(row, 6)?,
    })
}

fn key_version(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let version: i64 = row.get(index)?;
    u64::try_from(version).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(index, version))
}

/// The refusal in the three columns from `first`: status, time, detail. The status decides; the others are
/// written with it.
fn refusal(row: &Row<'_>, first: usize) -> rusqlite::Result<Option<Refusal>> {
    let Some(http_status) = row.get::<_, Option<u16>>(first)? else {
        return Ok(None);
    };
    Ok(Some(Refusal {
        http_status,
        refuse_time_ms: row.get::<_, Option<i64>>(first + 1)?.unwrap_or(0),
        detail: row.get::<_, Option<String>>(first + 2)?.unwrap_or_default(),
    }))
}
