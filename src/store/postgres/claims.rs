//! SQL for `record_claims`: claims on the records of calls, written before the call, ended with the records'
//! outcome, and turned into failed records (or let go, for a call that may be repeated) when a process left
//! them behind. A claim is one replica's until it ends: another replica's claim on the same key is refused, so
//! two replicas never send a record at once. Rows keep the call's records in the SQLite store's layout.

use std::collections::HashSet;

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
    repeatable: bool,
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
        repeatable: claim.repeatable,
    })
}

/// Adds the claims in one statement, replacing `owner`'s own claims keyed by the same first record, and
/// returns the keys `(destination id, first record id)` of those it refused: another replica's claim (or a claim
/// from before replica ids) holds the key. `claims` holds each key once. Claims of a destination that no longer
/// exists are skipped, not refused.
///
/// Two replicas claiming one key at once cannot both win: the second insert waits for the first's row to be
/// committed and then finds it taken.
pub(super) async fn insert(
    tx: &Transaction<'_>,
    owner: &str,
    claims: &[&EncodedClaim],
) -> Result<HashSet<(String, String)>, StoreError> {
    if claims.is_empty() {
        return Ok(HashSet::new());
    }
    let destination_ids: Vec<&str> = claims.iter().map(|c| c.destination_id.as_str()).collect();
    let record_ids: Vec<&str> = claims.iter().map(|c| c.first_record_id.as_str()).collect();
    let records: Vec<&[u8]> = claims.iter().map(|c| c.records.as_slice()).collect();
    let methods: Vec<&str> = claims.iter().map(|c| c.request_method.as_str()).collect();
    let urls: Vec<&str> = claims.iter().map(|c| c.request_url.as_str()).collect();
    let times: Vec<i64> = claims.iter().map(|c| c.claimed_at_ms).collect();
    let repeatable: Vec<bool> = claims.iter().map(|c| c.repeatable).collect();
    // One JSON array per claim: unnest would flatten an array of arrays.
    let all_ids: Vec<String> = claims
        .iter()
        .map(|c| serde_json::to_string(&c.record_ids))
        .collect::<Result<_, _>>()
        .context(|| "encoding claimed record ids".to_string())?;
    let statement = tx
        .prepare_cached(
            "WITH input AS (
                 SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::bigint[],
                         $8::text[], $9::boolean[])
                     AS t (destination_id, record_id, records, request_method, request_url, claimed_at_ms, ids,
                           repeatable)
                 WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = t.destination_id)
             ), taken AS (
                 INSERT INTO record_claims
                     (destination_id, record_id, records, request_method, request_url, claimed_at_ms, owner,
                      record_ids, repeatable)
                 SELECT t.destination_id, t.record_id, t.records, t.request_method, t.request_url,
                     t.claimed_at_ms, $7, ARRAY(SELECT jsonb_array_elements_text(t.ids::jsonb)), t.repeatable
                 FROM input t
                 ON CONFLICT (destination_id, record_id) DO UPDATE SET
                     records = excluded.records,
                     request_method = excluded.request_method,
                     request_url = excluded.request_url,
                     claimed_at_ms = excluded.claimed_at_ms,
                     record_ids = excluded.record_ids,
                     repeatable = excluded.repeatable
                 WHERE record_claims.owner = excluded.owner
                 RETURNING destination_id, record_id
             )
             SELECT t.destination_id, t.record_id FROM input t
             WHERE NOT EXISTS (
                 SELECT 1 FROM taken WHERE taken.destination_id = t.destination_id
                     AND taken.record_id = t.record_id)",
        )
        .await
        .context(|| "preparing to claim records".to_string())?;
    let refused = tx
        .query(
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
                &repeatable,
            ],
        )
        .await
        .context(|| "claiming records".to_string())?;
    Ok(refused.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Removes those of `owner`'s claims keyed like `claims` that carry a record already in the ledger, and
/// returns their keys: refused too, so their records are answered from the ledger instead of sent again.
///
/// Another replica may deliver a record and end its claim between this replica's look-up of the record and its
/// claim, which then finds the key free. This runs as a statement after the insert, so it sees whatever the
/// insert waited for (read committed takes a new snapshot per statement), and the ledger entry is committed
/// with the end of the claim: a record delivered elsewhere is never claimed unnoticed.
pub(super) async fn drop_delivered(
    tx: &Transaction<'_>,
    owner: &str,
    claims: &[&EncodedClaim],
) -> Result<HashSet<(String, String)>, StoreError> {
    if claims.is_empty() {
        return Ok(HashSet::new());
    }
    let destination_ids: Vec<&str> = claims.iter().map(|c| c.destination_id.as_str()).collect();
    let record_ids: Vec<&str> = claims.iter().map(|c| c.first_record_id.as_str()).collect();
    let statement = tx
        .prepare_cached(
            "DELETE FROM record_claims c USING unnest($1::text[], $2::text[]) AS t (destination_id, record_id)
             WHERE c.destination_id = t.destination_id AND c.record_id = t.record_id AND c.owner = $3
               AND EXISTS (SELECT 1 FROM delivered_records l
                           WHERE l.destination_id = c.destination_id AND l.record_id = ANY(c.record_ids))
             RETURNING c.destination_id, c.record_id",
        )
        .await
        .context(|| "preparing to check claimed records against the ledger".to_string())?;
    let dropped = tx
        .query(&statement, &[&destination_ids, &record_ids, &owner])
        .await
        .context(|| "checking claimed records against the ledger".to_string())?;
    Ok(dropped.iter().map(|row| (row.get(0), row.get(1))).collect())
}

/// Ends `owner`'s claims these `(destination id, record id)` pairs belong to, where there are any. A claim is
/// keyed by its first record and the records of one call always end together, so looking every record up
/// finds each claim. Another replica's claim on one of the records is left alone: letting go of a record that
/// was refused here must not free it for a third replica while the holder is still sending it.
pub(super) async fn end(
    tx: &Transaction<'_>,
    owner: &str,
    destination_ids: &[&str],
    record_ids: &[&str],
) -> Result<(), StoreError> {
    if record_ids.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "DELETE FROM record_claims c USING unnest($1::text[], $2::text[]) AS t (destination_id, record_id)
             WHERE c.destination_id = t.destination_id AND c.record_id = t.record_id AND c.owner = $3",
        )
        .await
        .context(|| "preparing to end record claims".to_string())?;
    tx.execute(&statement, &[&destination_ids, &record_ids, &owner])
        .await
        .context(|| "ending record claims".to_string())?;
    Ok(())
}

/// Removes the claims of replicas that stopped (their lease ran out, or the claim predates replica ids), never
/// those of `own` replica, and returns the records of those on calls that must not be repeated as failed
/// records that may have been delivered. Claims on repeatable calls are just let go: sending them again is safe.
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
             RETURNING destination_id, record_id, records, request_method, request_url, claimed_at_ms,
                 repeatable",
            &[&own],
        )
        .await
        .context(|| "removing orphaned record claims".to_string())?;
    let mut orphans: Vec<(i64, OrphanRow)> = rows
        .iter()
        .filter(|row| !row.get::<_, bool>(6))
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
