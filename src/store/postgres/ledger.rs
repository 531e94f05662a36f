//! SQL for the `delivered_records` ledger: written many calls' entries at a time as arrays (`unnest`), looked up
//! a message at a time, trimmed by retention.

use std::collections::HashMap;

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::{GenericClient, Row};

use crate::store::error::{Context, StoreError};
use crate::store::records::{LedgerEntry, LEDGER_BODY_CAP};

const COLUMNS: &str =
    "destination_id, record_id, http_status, response_body, attempts, delivered_at_ms";

/// Cuts the response body to what the ledger keeps, before the entry is queued.
pub(super) fn capped(mut entry: LedgerEntry) -> LedgerEntry {
    entry.response_body.truncate(LEDGER_BODY_CAP);
    entry
}

/// Adds the entries, replacing any with the same destination and record id, in one statement. `entries` holds
/// each key once. Entries of a destination that no longer exists are skipped: its ledger was deleted with it.
pub(super) async fn record(
    tx: &Transaction<'_>,
    entries: &[&LedgerEntry],
) -> Result<(), StoreError> {
    if entries.is_empty() {
        return Ok(());
    }
    let destination_ids: Vec<&str> = entries.iter().map(|e| &*e.destination_id).collect();
    let record_ids: Vec<&str> = entries.iter().map(|e| e.record_id.as_str()).collect();
    let statuses: Vec<i32> = entries.iter().map(|e| i32::from(e.http_status)).collect();
    let bodies: Vec<&[u8]> = entries.iter().map(|e| e.response_body.as_slice()).collect();
    let attempts: Vec<i64> = entries.iter().map(|e| i64::from(e.attempts)).collect();
    let times: Vec<i64> = entries.iter().map(|e| e.delivered_at_ms).collect();
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO delivered_records ({COLUMNS})
             SELECT t.* FROM unnest($1::text[], $2::text[], $3::int[], $4::bytea[], $5::bigint[], $6::bigint[])
                 AS t ({COLUMNS})
             WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = t.destination_id)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 http_status = excluded.http_status,
                 response_body = excluded.response_body,
                 attempts = excluded.attempts,
                 delivered_at_ms = excluded.delivered_at_ms"
        ))
        .await
        .context(|| "preparing to record delivered records".to_string())?;
    tx.execute(
        &statement,
        &[
            &destination_ids,
            &record_ids,
            &statuses,
            &bodies,
            &attempts,
            &times,
        ],
    )
    .await
    .context(|| "recording delivered records".to_string())?;
    Ok(())
}

/// The entries of those `record_ids` the destination has delivered, by record id.
pub(super) async fn lookup(
    client: &Client,
    destination_id: &str,
    record_ids: &[String],
) -> Result<HashMap<String, LedgerEntry>, StoreError> {
    let context =
        || format!("looking up delivered records of destination destinations/{destination_id}");
    let statement = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM delivered_records
             WHERE destination_id = $1 AND record_id = ANY($2::text[])"
        ))
        .await
        .context(context)?;
    let rows = client
        .query(&statement, &[&destination_id, &record_ids])
        .await
        .context(context)?;
    let mut found = HashMap::with_capacity(rows.len());
    for row in rows {
        let entry = from_row(&row)?;
        found.insert(entry.record_id.clone(), entry);
    }
    Ok(found)
}

/// Where retention cuts a destination's ledger: the latest entry, in (delivered_at_ms, record_id) order, that
/// is older than `older_than_ms` or not among the `max_entries` most recent. `None` when nothing goes.
pub(super) async fn prune_bound(
    client: &impl GenericClient,
    destination_id: &str,
    older_than_ms: i64,
    max_entries: u64,
) -> Result<Option<(i64, String)>, StoreError> {
    let context = || {
        format!("finding expired delivered records of destination destinations/{destination_id}")
    };
    let by_age = client
        .query_opt(
            "SELECT delivered_at_ms, record_id FROM delivered_records
             WHERE destination_id = $1 AND delivered_at_ms < $2
             ORDER BY delivered_at_ms DESC, record_id DESC LIMIT 1",
            &[&destination_id, &older_than_ms],
        )
        .await
        .context(context)?
        .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1)));
    // Beyond i64::MAX no destination can hold more than the limit.
    let by_count = match i64::try_from(max_entries) {
        Err(_) => None,
        Ok(keep) => client
            .query_opt(
                "SELECT delivered_at_ms, record_id FROM delivered_records
                 WHERE destination_id = $1
                 ORDER BY delivered_at_ms DESC, record_id DESC LIMIT 1 OFFSET $2",
                &[&destination_id, &keep],
            )
            .await
            .context(context)?
            .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1))),
    };
    Ok(by_age.max(by_count))
}

/// Deletes up to `limit` of the destination's entries at or before `bound`, oldest first; returns how many.
pub(super) async fn prune_through(
    client: &impl GenericClient,
    destination_id: &str,
    bound: &(i64, String),
    limit: u32,
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM delivered_records
             WHERE destination_id = $1 AND record_id IN (
                 SELECT record_id FROM delivered_records
                 WHERE destination_id = $1 AND (delivered_at_ms, record_id) <= ($2, $3)
                 ORDER BY delivered_at_ms, record_id
                 LIMIT $4)",
            &[&destination_id, &bound.0, &bound.1, &i64::from(limit)],
        )
        .await
        .context(|| {
            format!(
                "removing expired delivered records of destination destinations/{destination_id}"
            )
        })
}

fn from_row(row: &Row) -> Result<LedgerEntry, StoreError> {
    let destination_id: String = row.get(0);
    let record_id: String = row.get(1);
    let what =
        || format!("delivered record {record_id} of destination destinations/{destination_id}");
    let status: i32 = row.get(2);
    let http_status = u16::try_from(status)
        .map_err(|_| StoreError::corrupt(what(), format!("http status {status}")))?;
    let stored_attempts: i64 = row.get(4);
    let attempts = u32::try_from(stored_attempts)
        .map_err(|_| StoreError::corrupt(what(), format!("attempts {stored_attempts}")))?;
    Ok(LedgerEntry {
        http_status,
        response_body: row.get(3),
        attempts,
        delivered_at_ms: row.get(5),
        destination_id: destination_id.into(),
        record_id,
    })
}
