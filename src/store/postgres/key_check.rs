//! Detects at start-up that the secret key is not the one the stored credentials were encrypted with: the same
//! check, and the same check value, as the SQLite store's. With PostgreSQL it also keeps replicas honest: they
//! share the credentials, so they must share the key, and a replica started with another one is refused.

use tokio_postgres::Transaction;

use crate::store::error::{Context, StoreError};
use crate::store::secrets::{SecretBox, SECRET_KEY_ENV, SECRET_KEY_FILE};
use crate::store::sqlite::key_check::{BINDING, META_KEY, PLAINTEXT};

/// Accepts `secrets` if it opens the stored check value, and records the check value on first start. Unlike the
/// SQLite store, a key that does not open it is refused even while no credential is stored: another replica
/// may be running with the recorded key, and would seal credentials this one cannot open. Runs in the start-up
/// transaction, under the migration lock, so replicas starting together agree on one key.
pub(super) async fn verify_or_record(
    tx: &Transaction<'_>,
    secrets: &SecretBox,
    database: &str,
) -> Result<(), StoreError> {
    let stored: Option<Vec<u8>> = tx
        .query_opt("SELECT value FROM store_meta WHERE key = $1", &[&META_KEY])
        .await
        .context(|| "reading the secret key check".to_string())?
        .map(|row| row.get(0));
    match stored {
        Some(sealed) if secrets.open(BINDING, &sealed).as_deref() == Some(PLAINTEXT) => Ok(()),
        Some(_) => Err(StoreError::SecretKey {
            reason: format!(
                "it is not the key the database {database} was first used with; every replica must use the \
                 same {SECRET_KEY_ENV} (or {SECRET_KEY_FILE})"
            ),
        }),
        None => {
            let sealed = secrets.seal(BINDING, PLAINTEXT)?;
            tx.execute(
                "INSERT INTO store_meta (key, value) VALUES ($1, $2)",
                &[&META_KEY, &sealed],
            )
            .await
            .context(|| "recording the secret key check".to_string())?;
            Ok(())
        }
    }
}
