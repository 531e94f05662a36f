//! SQL for the `destinations` table: scalar columns for what is queried, the configuration as JSON text in the
//! SQLite store's versioned format. Updates and deletes are compare-and-swap on `revision`, so replicas
//! writing the same destination settle it in the database.

use tokio_postgres::error::SqlState;
use tokio_postgres::{GenericClient, Row};

use crate::domain::destination::{Destination, DestinationState};
use crate::store::error::{Context, StoreError, DESTINATION};
use crate::store::sqlite::stored;

const COLUMNS: &str =
    "id, display_name, credential_id, state, config_json, revision, create_time_ms, update_time_ms";

pub(super) async fn insert(
    client: &impl GenericClient,
    destination: &Destination,
) -> Result<(), StoreError> {
    let id = &destination.id;
    let config = config_json(destination)?;
    let revision = revision_column(id, destination.revision)?;
    let inserted = client
        .execute(
            &format!(
                "INSERT INTO destinations ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (id) DO NOTHING"
            ),
            &[
                id,
                &destination.display_name,
                &destination.credential_id,
                &destination.state.as_str(),
                &config,
                &revision,
                &destination.create_time_ms,
                &destination.update_time_ms,
            ],
        )
        .await
        .map_err(|err| write_error(err, destination, "inserting"))?;
    if inserted == 0 {
        return Err(StoreError::already_exists(DESTINATION, id));
    }
    Ok(())
}

pub(super) async fn get(client: &impl GenericClient, id: &str) -> Result<Destination, StoreError> {
    client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM destinations WHERE id = $1"),
            &[&id],
        )
        .await
        .context(|| format!("reading destination destinations/{id}"))?
        .ok_or_else(|| StoreError::not_found(DESTINATION, id))
        .and_then(|row| from_row(&row))
}

/// Up to `limit` destinations with ids after `after`, in id order.
pub(super) async fn list(
    client: &impl GenericClient,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<Destination>, StoreError> {
    let limit = i64::from(limit);
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM destinations WHERE $1::text IS NULL OR id > $1
                 ORDER BY id LIMIT $2"
            ),
            &[&after, &limit],
        )
        .await
        .context(|| "listing destinations".to_string())?
        .iter()
        .map(from_row)
        .collect()
}

/// Every destination id, in id order.
pub(super) async fn ids(client: &impl GenericClient) -> Result<Vec<String>, StoreError> {
    Ok(client
        .query("SELECT id FROM destinations ORDER BY id", &[])
        .await
        .context(|| "listing destination ids".to_string())?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// [`StoreError::NotFound`] unless the destination exists.
pub(super) async fn ensure_exists(client: &impl GenericClient, id: &str) -> Result<(), StoreError> {
    client
        .query_opt("SELECT 1 FROM destinations WHERE id = $1", &[&id])
        .await
        .context(|| format!("reading destination destinations/{id}"))?
        .map(|_| ())
        .ok_or_else(|| StoreError::not_found(DESTINATION, id))
}

/// Compare-and-swap replace; see `Store::update_destination`.
pub(super) async fn update(
    client: &impl GenericClient,
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
    let create_time_ms: Option<i64> = client
        .query_opt(
            "UPDATE destinations
             SET display_name = $3, credential_id = $4, state = $5, config_json = $6, revision = $7,
                 update_time_ms = $8
             WHERE id = $1 AND revision = $2
             RETURNING create_time_ms",
            &[
                id,
                &expected,
                &destination.display_name,
                &destination.credential_id,
                &destination.state.as_str(),
                &config,
                &revision,
                &destination.update_time_ms,
            ],
        )
        .await
        .map_err(|err| write_error(err, destination, "updating"))?
        .map(|row| row.get(0));
    match create_time_ms {
        Some(create_time_ms) => Ok(Destination {
            create_time_ms,
            ..destination.clone()
        }),
        None => Err(stale_or_missing(client, id, expected_revision).await),
    }
}

/// Deletes a destination, only at `expected_revision` if one is given. Its ledger, failed records and claims
/// go with it (`ON DELETE CASCADE`), in the same statement.
pub(super) async fn delete(
    client: &impl GenericClient,
    id: &str,
    expected_revision: Option<u64>,
) -> Result<(), StoreError> {
    let expected = expected_revision
        .map(|revision| revision_column(id, revision))
        .transpose()?;
    let deleted = client
        .execute(
            "DELETE FROM destinations WHERE id = $1 AND ($2::bigint IS NULL OR revision = $2)",
            &[&id, &expected],
        )
        .await
        .context(|| format!("deleting destination destinations/{id}"))?;
    match (deleted, expected_revision) {
        (0, Some(expected)) => Err(stale_or_missing(client, id, expected).await),
        (0, None) => Err(StoreError::not_found(DESTINATION, id)),
        _ => Ok(()),
    }
}

/// Why a compare-and-swap matched no row: the destination is gone, or at another revision.
async fn stale_or_missing(client: &impl GenericClient, id: &str, expected: u64) -> StoreError {
    let current = client
        .query_opt("SELECT revision FROM destinations WHERE id = $1", &[&id])
        .await
        .context(|| format!("reading the revision of destination destinations/{id}"));
    match current {
        Ok(None) => StoreError::not_found(DESTINATION, id),
        Ok(Some(row)) => StoreError::RevisionMismatch {
            id: id.to_string(),
            expected,
            actual: row.get::<_, i64>(0).max(0) as u64,
        },
        Err(err) => err,
    }
}

/// A write's error: a foreign-key violation means the referenced credential does not exist.
fn write_error(err: tokio_postgres::Error, destination: &Destination, doing: &str) -> StoreError {
    if err.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION) {
        return StoreError::CredentialNotFound {
            id: destination.credential_id.clone(),
        };
    }
    StoreError::internal(
        format!("{doing} destination destinations/{}", destination.id),
        err,
    )
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

fn from_row(row: &Row) -> Result<Destination, StoreError> {
    let id: String = row.get(0);
    let what = || format!("stored destination destinations/{id}");
    let state_text: String = row.get(3);
    let state = DestinationState::parse(&state_text)
        .ok_or_else(|| StoreError::corrupt(what(), format!("unknown state {state_text:?}")))?;
    let config = stored::config::decode(row.get(4))
        .map_err(|err| StoreError::corrupt(what(), format!("configuration: {err}")))?;
    let stored_revision: i64 = row.get(5);
    let revision = u64::try_from(stored_revision)
        .map_err(|_| StoreError::corrupt(what(), format!("revision {stored_revision}")))?;
    Ok(Destination {
        display_name: row.get(1),
        credential_id: row.get(2),
        state,
        config,
        create_time_ms: row.get(6),
        update_time_ms: row.get(7),
        revision,
        id,
    })
}
