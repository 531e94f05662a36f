//! SQL for `record_claims`: claims on the records of calls that must not be repeated blindly, written before
//! the call, ended with the records' outcome, and turned into failed records when a process left them behind.
//! Rows keep the call's records in the SQLite store's layout.

use deadpool_postgres::Transaction;

use crate::store::error::{Context, StoreError};
use crate::store::records::{FailedRecordEntry, RecordClaim};
use crate::store::sqlite::claims::{encode_records, OrphanRow};

/// A claim encoded for its columns before it is queued.
pub(super) struct EncodedClaim {
    pub(super) destination_id: String,
    pub(super) first_record_id: String,
    /// Every record of the call, the first included: the keys whose outcome ends the claim.
    pub(super) record_ids: Vec<String>,
    records: Vec<u8>,
    request_method: String,
    request_url: String,
    claimed_at_ms: i64,
}

pub(super) fn encode(claim: RecordClaim) -> Result<EncodedClaim, StoreError> {
    let first_record_id = claim
        .records
        .first()
        .map(|record| record.record_id.clone())
        .ok_or_else(|| {
            StoreError::internal(
                format!(
                    "claiming records of destination destinations/{}",
                    claim.destination_id
                ),
                "a claim without records",
            )
        })?;
    Ok(EncodedClaim {
        records: encode_records(&claim.records),
        record_ids: claim
            .records
            .into_iter()
            .map(|record| record.record_id)
            .collect(),
        destination_id: claim.destination_id,
        first_record_id,
        request_method: claim.request_method,
        request_url: claim.request_url,
        claimed_at_ms: claim.claimed_at_ms,
    })
}

/// Adds the claims in one statement, replacing any keyed by the same first record; `claims` holds each key
/// once. Claims of a destination that no longer exists are skipped.
pub(super) async fn insert(
    tx: &Transaction<'_>,
    owner: &str,
    claims: &[&EncodedClaim],
) -> Result<(), StoreError> {
    if claims.is_empty() {
        return Ok(());
    }
    let destination_ids: Vec<&str> = claims.iter().map(|c| c.destination_id.as_str()).collect();
    let record_ids: Vec<&str> = claims.iter().map(|c| c.first_record_id.as_str()).collect();
    let records: Vec<&[u8]> = claims.iter().map(|c| c.records.as_slice()).collect();
    let methods: Vec<&str> = claims.iter().map(|c| c.request_method.as_str()).collect();
    let urls: Vec<&str> = claims.iter().map(|c| c.request_url.as_str()).collect();
    let times: Vec<i64> = claims.iter().map(|c| c.claimed_at_ms).collect();
    // One JSON array per claim: unnest would flatten an array of arrays.
    let all_ids: Vec<String> = claims
        .iter()
        .map(|c| serde_json::to_string(&c.record_ids))
        .collect::<Result<_, _>>()
        .context(|| "encoding claimed record ids".to_string())?;
    let statement = tx
        .prepare_cached(
            "INSERT INTO record_claims
                 (destination_id, record_id, records, request_method, request_url, claimed_at_ms, owner,
                  record_ids)
             SELECT t.destination_id, t.record_id, t.records, t.request_method, t.request_url, t.claimed_at_ms,
                 $7, ARRAY(SELECT jsonb_array_elements_text(t.ids::jsonb))
             FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::bigint[],
                     $8::text[])
                 AS t (destination_id, record_id, records, request_method, request_url, claimed_at_ms, ids)
             WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = t.destination_id)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 records = excluded.records,
                 request_method = excluded.request_method,
                 request_url = excluded.request_url,
                 claimed_at_ms = excluded.claimed_at_ms,
                 owner = excluded.owner,
                 record_ids = excluded.record_ids",
        )
        .await
        .context(|| "preparing to claim records".to_string())?;
    tx.execute(
        &statement,
        &[
            &destination_ids,
            &record_ids,
            &records,
            &methods,
            &urls,
            &times,
            &owner,
            &all_ids,
        ],
    )
    .await
    .context(|| "claiming records".to_string())?;
    Ok(())
}

/// Ends the claims these `(destination id, record id)` pairs belong to, where there are any. A claim is keyed
/// by its first record and the records of one call always end together, so looking every record up finds each
/// claim.
pub(super) async fn end(
    tx: &Transaction<'_>,
    destination_ids: &[&str],
    record_ids: &[&str],
) -> Result<(), StoreError> {
    if record_ids.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "DELETE FROM record_claims c USING unnest($1::text[], $2::text[]) AS t (destination_id, record_id)
             WHERE c.destination_id = t.destination_id AND c.record_id = t.record_id",
        )
        .await
        .context(|| "preparing to end record claims".to_string())?;
    tx.execute(&statement, &[&destination_ids, &record_ids])
        .await
        .context(|| "ending record claims".to_string())?;
    Ok(())
}

/// Removes the claims of replicas that stopped (their lease ran out, or the claim predates replica ids), never
/// those of `own` replica, and returns their records as failed records that may have been delivered.
pub(super) async fn take_orphans_as_failures(
    tx: &Transaction<'_>,
    own: &str,
    error: &str,
    now_ms: i64,
) -> Result<Vec<FailedRecordEntry>, StoreError> {
    let rows = tx
        .query(
            "DELETE FROM record_claims c
             WHERE c.owner IS NULL
                OR (c.owner <> $1 AND NOT EXISTS (
                        SELECT 1 FROM replicas r WHERE r.id = c.owner AND r.lease_until >= now()))
             RETURNING destination_id, record_id, records, request_method, request_url, claimed_at_ms",
            &[&own],
        )
        .await
        .context(|| "removing orphaned record claims".to_string())?;
    let mut orphans: Vec<(i64, OrphanRow)> = rows
        .iter()
        .map(|row| {
            (
                row.get(5),
                OrphanRow {
                    destination_id: row.get(0),
                    record_id: row.get(1),
                    records: row.get(2),
                    request_method: row.get(3),
                    request_url: row.get(4),
                },
            )
        })
        .collect();
    orphans.sort_by(|(a_time, a), (b_time, b)| {
        (a_time, &a.destination_id, &a.record_id).cmp(&(b_time, &b.destination_id, &b.record_id))
    });
    let mut failures = Vec::new();
    for (_, orphan) in orphans {
        failures.extend(orphan.into_failures(error, now_ms)?);
    }
    Ok(failures)
}

/// Those of `record_ids` that a call of another replica (not `own`) has claimed: in flight there, or left by a
/// replica that stopped and not yet settled as a failed record. Both must wait: a stopped replica's claim is
/// only known not to have been delivered once it is settled, so a lease that ran out is not a reason to send.
pub(super) async fn claimed_elsewhere(
    client: &deadpool_postgres::Client,
    destination_id: &str,
    record_ids: &[String],
    own: &str,
) -> Result<Vec<String>, StoreError> {
    let context =
        || format!("looking up record claims of destination destinations/{destination_id}");
    let statement = client
        .prepare_cached(
            "SELECT DISTINCT claimed.id FROM record_claims c, unnest(c.record_ids) AS claimed (id)
             WHERE c.destination_id = $1 AND c.record_ids && $2::text[] AND claimed.id = ANY($2::text[])
               AND (c.owner IS NULL OR c.owner <> $3)",
        )
        .await
        .context(context)?;
    Ok(client
        .query(&statement, &[&destination_id, &record_ids, &own])
        .await
        .context(context)?
        .iter()
        .map(|row| row.get(0))
        .collect())
}
