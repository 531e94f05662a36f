//! SQL for the `credentials` table. Functions run on whatever client or transaction the caller holds.

use tokio_postgres::{GenericClient, Row};

use crate::domain::credential::{Credential, Refusal};
use crate::store::error::{Context, StoreError, CREDENTIAL};
use crate::store::MAX_LISTED_DESTINATIONS;

const COLUMNS: &str =
    "id, display_name, api_key_hint, create_time_ms, update_time_ms, key_version, \
     refuse_status, refuse_time_ms, refuse_detail";

pub(super) async fn insert(
    client: &impl GenericClient,
    credential: &Credential,
    sealed_key: &[u8],
) -> Result<(), StoreError> {
    let inserted = client
        .execute(
            "INSERT INTO credentials
                 (id, display_name, api_key_hint, api_key_sealed, create_time_ms, update_time_ms)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (id) DO NOTHING",
            &[
                &credential.id,
                &credential.display_name,
                &credential.api_key_hint,
                &sealed_key,
                &credential.create_time_ms,
                &credential.update_time_ms,
            ],
        )
        .await
        .context(|| format!("inserting credential credentials/{}", credential.id))?;
    if inserted == 0 {
        return Err(StoreError::already_exists(CREDENTIAL, &credential.id));
    }
    Ok(())
}

pub(super) async fn get(client: &impl GenericClient, id: &str) -> Result<Credential, StoreError> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM credentials WHERE id = $1"),
            &[&id],
        )
        .await
        .context(|| format!("reading credential credentials/{id}"))?
        .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))
        .and_then(|row| from_row(&row))
}

/// Up to `limit` credentials with ids after `after`, in id order.
pub(super) async fn list(
    client: &impl GenericClient,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Credential>, StoreError> {
    let limit = i64::from(limit);
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM credentials WHERE $1::text IS NULL OR id > $1
                 ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await
        .context(|| "listing credentials".to_string())?
        .iter()
        .map(from_row)
        .collect()
}

/// The sealed key, its version and its refusal, read together so that they belong to the same key.
pub(super) async fn sealed_key_state(
    client: &impl GenericClient,
    id: &str,
) -> Result<(Vec<u8>, u64, Option<Refusal>), StoreError> {
    let row = client
        .query_opt(
            "SELECT api_key_sealed, key_version, refuse_status, refuse_time_ms, refuse_detail
             FROM credentials WHERE id = $1",
            &[&id],
        )
        .await
        .context(|| format!("reading the api key of credential credentials/{id}"))?
        .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))?;
    Ok((row.get(0), key_version(&row, 1, id)?, refusal(&row, 2, id)?))
}

/// Replaces the display name. [`StoreError::NotFound`] if there is no such credential.
pub(super) async fn set_display_name(
    client: &impl GenericClient,
    id: &str,
    display_name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let updated = client
        .execute(
            "UPDATE credentials SET display_name = $2, update_time_ms = $3 WHERE id = $1",
            &[&id, &display_name, &now_ms],
        )
        .await
        .context(|| format!("updating credential credentials/{id}"))?;
    if updated == 0 {
        return Err(StoreError::not_found(CREDENTIAL, id));
    }
    Ok(())
}

/// Replaces the key: the next key version, and no refusal (that was about the old key).
pub(super) async fn replace_key(
    client: &impl GenericClient,
    id: &str,
    sealed_key: &[u8],
    hint: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    let updated = client
        .execute(
            "UPDATE credentials
             SET api_key_sealed = $2, api_key_hint = $3, key_version = key_version + 1,
                 refuse_status = NULL, refuse_time_ms = NULL, refuse_detail = NULL, update_time_ms = $4
             WHERE id = $1",
            &[&id, &sealed_key, &hint, &now_ms],
        )
        .await
        .context(|| format!("replacing the api key of credential credentials/{id}"))?;
    if updated == 0 {
        return Err(StoreError::not_found(CREDENTIAL, id));
    }
    Ok(())
}

/// Records (`Some`) or clears (`None`) the refusal of the key at `key_version`. `false` when the credential
/// holds another key by now, and nothing was written.
pub(super) async fn set_refusal(
    client: &impl GenericClient,
    id: &str,
    key_version: u64,
    refusal: Option<&Refusal>,
) -> Result<bool, StoreError> {
    let version = i64::try_from(key_version).unwrap_or(i64::MAX);
    let updated = client
        .execute(
            "UPDATE credentials SET refuse_status = $3, refuse_time_ms = $4, refuse_detail = $5
             WHERE id = $1 AND key_version = $2",
            &[
                &id,
                &version,
                &refusal.map(|refusal| i32::from(refusal.http_status)),
                &refusal.map(|refusal| refusal.refuse_time_ms),
                &refusal.map(|refusal| refusal.detail.as_str()),
            ],
        )
        .await
        .context(|| format!("recording the refusal of credential credentials/{id}"))?;
    if updated == 0 {
        get(client, id).await?;
        return Ok(false);
    }
    Ok(true)
}

pub(super) async fn sealed_key(
    client: &impl GenericClient,
    id: &str,
) -> Result<Vec<u8>, StoreError> {
    client
        .query_opt(
            "SELECT api_key_sealed FROM credentials WHERE id = $1",
            &[&id],
        )
        .await
        .context(|| format!("reading the api key of credential credentials/{id}"))?
        .map(|row| row.get(0))
        .ok_or_else(|| StoreError::not_found(CREDENTIAL, id))
}

/// Up to [`MAX_LISTED_DESTINATIONS`] ids of destinations that use the credential, in id order.
pub(super) async fn users(
    client: &impl GenericClient,
    id: &str,
) -> Result<Vec<String>, StoreError> {
    let limit = MAX_LISTED_DESTINATIONS as i64;
    Ok(client
        .query(
            "SELECT id FROM destinations WHERE credential_id = $1 ORDER BY id LIMIT $2",
            &[&id, &limit],
        )
        .await
        .context(|| format!("finding destinations that use credential credentials/{id}"))?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Deletes the credential. The `ON DELETE RESTRICT` foreign key refuses it while a destination refers to it,
/// also one created by another replica a moment ago; the caller turns that into
/// [`StoreError::CredentialInUse`].
pub(super) async fn delete(
    client: &impl GenericClient,
    id: &str,
) -> Result<u64, tokio_postgres::Error> {
    client
        .execute("DELETE FROM credentials WHERE id = $1", &[&id])
        .await
}

fn from_row(row: &Row) -> Result<Credential, StoreError> {
    let id: String = row.get(0);
    Ok(Credential {
        display_name: row.get(1),
        api_key_hint: row.get(2),
        create_time_ms: row.get(3),
        update_time_ms: row.get(4),
        key_version: key_version(row, 5, &id)?,
        refusal: refusal(row, 6, &id)?,
        id,
    })
}

fn key_version(row: &Row, index: usize, id: &str) -> Result<u64, StoreError> {
    let version: i64 = row.get(index);
    u64::try_from(version).map_err(|_| {
        StoreError::corrupt(
            format!("stored credential credentials/{id}"),
            format!("key version {version}"),
        )
    })
}

/// The refusal in the three columns from `first`: status, time, detail. The status decides.
fn refusal(row: &Row, first: usize, id: &str) -> Result<Option<Refusal>, StoreError> {
    let Some(status) = row.get::<_, Option<i32>>(first) else {
        return Ok(None);
    };
    let http_status = u16::try_from(status).map_err(|_| {
        StoreError::corrupt(
            format!("stored credential credentials/{id}"),
            format!("refusal status {status}"),
        )
    })?;
    Ok(Some(Refusal {
        http_status,
        refuse_time_ms: row.get::<_, Option<i64>>(first + 1).unwrap_or(0),
        detail: row.get::<_, Option<String>>(first + 2).unwrap_or_default(),
    }))
}
