//! Detects at open time that the secret key is not the one the stored credentials were encrypted with.
//!
//! Without this, a changed or forgotten `GROOVE_DESTINATION_SECRET_KEY` would surface much later, as every
//! delivery failing to decrypt its API key. A known value sealed with the key is kept in `store_meta`.

use rusqlite::{params, Connection, OptionalExtension};

use super::credentials;
use crate::store::error::{Context, StoreError};
use crate::store::secrets::{SecretBox, SECRET_KEY_ENV, SECRET_KEY_FILE};

pub(in crate::store) const META_KEY: &str = "secret_key_check";
/// Distinct from any credential's associated data (`credentials/{id}`), so neither can stand in for the other.
pub(in crate::store) const BINDING: &[u8] = b"store_meta/secret_key_check";
pub(in crate::store) const PLAINTEXT: &[u8] = b"groove-destination secret key check v1";

/// Accepts `secrets` if it opens the stored check value. A key that does not is refused while credentials
/// exist; with none stored there is nothing to lose, so the new key is adopted.
pub(super) fn verify_or_record(
    conn: &Connection,
    secrets: &SecretBox,
    database: &str,
) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = conn
        .query_row(
            "SELECT value FROM store_meta WHERE key = ?1",
            [META_KEY],
            |row| row.get(0),
        )
        .optional()
        .context(|| "reading the secret key check".to_string())?;
    if let Some(sealed) = &stored {
        if secrets.open(BINDING, sealed).as_deref() == Some(PLAINTEXT) {
            return Ok(());
        }
        let stored_credentials = credentials::count(conn)?;
        if stored_credentials > 0 {
            return Err(StoreError::SecretKey {
                reason: format!(
                    "it is not the key that encrypted the {stored_credentials} credential(s) in {database}; \
                     restore the original {SECRET_KEY_ENV} or {SECRET_KEY_FILE}"
                ),
            });
        }
        tracing::warn!(
            database,
            "the secret key changed; no credentials are stored, so the new key is adopted"
        );
    }
    let sealed = secrets.seal(BINDING, PLAINTEXT)?;
    conn.execute(
        "INSERT INTO store_meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![META_KEY, sealed],
    )
    .context(|| "recording the secret key check".to_string())?;
    Ok(())
}
