//! SQL for the `failed_records` table: written many calls' failures at a time as arrays (`unnest`), listed
//! oldest first.

use deadpool_postgres::{Client, Transaction};
use tokio_postgres::{GenericClient, Row};

use crate::domain::outcome::Outcome;
use crate::domain::record::RecordEncoding;
use crate::store::error::{Context, StoreError};
use crate::store::records::{
    FailedRecordEntry, FailedRecordFilter, FailedRecordSize, StoredRequest,
};
pub(super) use crate::store::sqlite::failed_records::{encode, EncodedFailure};
use crate::store::sqlite::stored;

const COLUMNS: &str =
    "destination_id, record_id, record_json, outcome, request_method, request_url, \
     request_headers, request_body, http_status, response_headers, response_body, error, attempts, \
     first_failure_ms, last_failure_ms, maybe_delivered, record_encoding";

/// What a row weighs: everything kept for it (PostgreSQL reads the lengths without the contents where they are
/// stored out of line).
const STORED_BYTES: &str = "(octet_length(record_json) + coalesce(octet_length(request_body), 0) \
     + octet_length(response_body) + octet_length(record_id) + coalesce(octet_length(request_url), 0) \
     + coalesce(octet_length(request_headers), 0) + octet_length(response_headers) + octet_length(error))::bigint";

/// Inserts each failure, or updates the stored one: the first failure time stays, attempts add up,
/// `maybe_delivered` stays set once set, everything else is replaced. One statement; `failures` holds each key
/// once. Failures of a destination that no longer exists are skipped.
pub(super) async fn upsert(
    tx: &Transaction<'_>,
    failures: &[&EncodedFailure],
) -> Result<(), StoreError> {
    if failures.is_empty() {
        return Ok(());
    }
    let entries = || failures.iter().map(|failure| &failure.entry);
    let destination_ids: Vec<&str> = entries().map(|e| e.destination_id.as_str()).collect();
    let record_ids: Vec<&str> = entries().map(|e| e.record_id.as_str()).collect();
    let records: Vec<&[u8]> = entries().map(|e| e.record_json.as_slice()).collect();
    let outcomes: Vec<&str> = entries().map(|e| e.outcome.as_str()).collect();
    let methods: Vec<Option<&str>> = entries()
        .map(|e| e.request.as_ref().map(|r| r.method.as_str()))
        .collect();
    let urls: Vec<Option<&str>> = entries()
        .map(|e| e.request.as_ref().map(|r| r.url.as_str()))
        .collect();
    let request_headers: Vec<Option<&str>> = failures
        .iter()
        .map(|f| f.request_headers.as_deref())
        .collect();
    let request_bodies: Vec<Option<&[u8]>> = entries()
        .map(|e| e.request.as_ref().map(|r| r.body.as_slice()))
        .collect();
    let statuses: Vec<i32> = entries().map(|e| i32::from(e.http_status)).collect();
    let response_headers: Vec<&str> = failures
        .iter()
        .map(|f| f.response_headers.as_str())
        .collect();
    let response_bodies: Vec<&[u8]> = entries().map(|e| e.response_body.as_slice()).collect();
    let errors: Vec<&str> = entries().map(|e| e.error.as_str()).collect();
    let attempts: Vec<i64> = entries().map(|e| i64::from(e.attempts)).collect();
    let first: Vec<i64> = entries().map(|e| e.first_failure_ms).collect();
    let last: Vec<i64> = entries().map(|e| e.last_failure_ms).collect();
    let maybe_delivered: Vec<bool> = entries().map(|e| e.maybe_delivered).collect();
    let encodings: Vec<&str> = entries().map(|e| e.record_encoding.as_str()).collect();
    let statement = tx
        .prepare_cached(&format!(
            "INSERT INTO failed_records ({COLUMNS})
             SELECT t.* FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::text[], $6::text[],
                     $7::text[], $8::bytea[], $9::int[], $10::text[], $11::bytea[], $12::text[], $13::bigint[],
                     $14::bigint[], $15::bigint[], $16::boolean[], $17::text[])
                 AS t ({COLUMNS})
             WHERE EXISTS (SELECT 1 FROM destinations d WHERE d.id = t.destination_id)
             ON CONFLICT (destination_id, record_id) DO UPDATE SET
                 record_json = excluded.record_json,
                 outcome = excluded.outcome,
                 request_method = excluded.request_method,
                 request_url = excluded.request_url,
                 request_headers = excluded.request_headers,
                 request_body = excluded.request_body,
                 http_status = excluded.http_status,
                 response_headers = excluded.response_headers,
                 response_body = excluded.response_body,
                 error = excluded.error,
                 -- Saturates rather than growing past what reads back as a u32.
                 attempts = least(failed_records.attempts + excluded.attempts, {max_attempts}),
                 last_failure_ms = excluded.last_failure_ms,
                 -- An explicit retry that fails does not undo an earlier attempt that may have created it.
                 maybe_delivered = failed_records.maybe_delivered OR excluded.maybe_delivered,
                 record_encoding = excluded.record_encoding",
            max_attempts = u32::MAX
        ))
        .await
        .context(|| "preparing to store failed records".to_string())?;
    tx.execute(
        &statement,
        &[
            &destination_ids,
            &record_ids,
            &records,
            &outcomes,
            &methods,
            &urls,
            &request_headers,
            &request_bodies,
            &statuses,
            &response_headers,
            &response_bodies,
            &errors,
            &attempts,
            &first,
            &last,
            &maybe_delivered,
            &encodings,
        ],
    )
    .await
    .context(|| "storing failed records".to_string())?;
    Ok(())
}

/// Removes the failed records of these `(destination id, record id)` pairs: what has now been delivered.
pub(super) async fn resolve(
    tx: &Transaction<'_>,
    destination_ids: &[&str],
    record_ids: &[&str],
) -> Result<(), StoreError> {
    if record_ids.is_empty() {
        return Ok(());
    }
    let statement = tx
        .prepare_cached(
            "DELETE FROM failed_records f USING unnest($1::text[], $2::text[]) AS t (destination_id, record_id)
             WHERE f.destination_id = t.destination_id AND f.record_id = t.record_id",
        )
        .await
        .context(|| "preparing to resolve failed records".to_string())?;
    tx.execute(&statement, &[&destination_ids, &record_ids])
        .await
        .context(|| "resolving failed records".to_string())?;
    Ok(())
}

/// Up to `limit` failed records of the destination that pass `filter`, after `after`, oldest first, ending
/// before the record that would take their stored size past `max_bytes` (the first is always there). Also says
/// whether more follow. Sizes are read first, then only the rows that fit, in one snapshot.
pub(super) async fn list(
    client: &mut Client,
    destination_id: &str,
    filter: FailedRecordFilter,
    after: Option<(i64, &str)>,
    limit: u32,
    max_bytes: u64,
) -> Result<(Vec<FailedRecordEntry>, bool), StoreError> {
    let what = || format!("listing failed records of destination destinations/{destination_id}");
    let snapshot = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context(what)?;
    let range = Range {
        destination_id,
        filter,
        after,
    };
    let sizes: Vec<i64> = range
        .walk(&*snapshot, STORED_BYTES, limit.saturating_add(1))
        .await
        .context(what)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut total: u64 = 0;
    let fitting = sizes
        .iter()
        .take(limit as usize)
        .take_while(|&&bytes| {
            total = total.saturating_add(u64::try_from(bytes).unwrap_or(0));
            total <= max_bytes
        })
        .count()
        // However large the first record is, a page holds it: otherwise no page could ever get past it.
        .max(1)
        .min(sizes.len());
    let rows = range
        .walk(&*snapshot, COLUMNS, fitting as u32)
        .await
        .context(what)?;
    snapshot.commit().await.context(what)?;
    let more = sizes.len() > rows.len();
    let entries = rows.iter().map(from_row).collect::<Result<_, _>>()?;
    Ok((entries, more))
}

/// Failed records of one destination that pass a filter, after a (first failure, record id) key.
struct Range<'a> {
    destination_id: &'a str,
    filter: FailedRecordFilter,
    after: Option<(i64, &'a str)>,
}

impl Range<'_> {
    /// `select` of up to `limit` rows of the range, oldest first.
    async fn walk(
        &self,
        client: &impl GenericClient,
        select: &str,
        limit: u32,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let outcome = self.filter.outcome.map(Outcome::as_str);
        let (time, record_id) = match self.after {
            Some((time, record_id)) => (Some(time), Some(record_id)),
            None => (None, None),
        };
        client
            .query(
                &format!(
                    "SELECT {select} FROM failed_records
                     WHERE destination_id = $1 AND ($2::text IS NULL OR outcome = $2)
                       AND (NOT $3 OR maybe_delivered)
                       AND ($5::bigint IS NULL OR (first_failure_ms, record_id) > ($5, $6::text))
                     ORDER BY first_failure_ms, record_id LIMIT $4"
                ),
                &[
                    &self.destination_id,
                    &outcome,
                    &self.filter.maybe_delivered_only,
                    &i64::from(limit),
                    &time,
                    &record_id,
                ],
            )
            .await
    }
}

/// Those of `record_ids` that are failed records of the destination, oldest first.
pub(super) async fn get(
    client: &impl GenericClient,
    destination_id: &str,
    record_ids: &[String],
) -> Result<Vec<FailedRecordEntry>, StoreError> {
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM failed_records
                 WHERE destination_id = $1 AND record_id = ANY($2::text[])
                 ORDER BY first_failure_ms, record_id"
            ),
            &[&destination_id, &record_ids],
        )
        .await
        .context(|| format!("reading failed records of destination destinations/{destination_id}"))?
        .iter()
        .map(from_row)
        .collect()
}

/// Those of `record_ids` that are failed records of the destination which may have been delivered.
pub(super) async fn maybe_delivered(
    client: &Client,
    destination_id: &str,
    record_ids: &[String],
) -> Result<Vec<String>, StoreError> {
    let context =
        || format!("looking up failed records of destination destinations/{destination_id}");
    let statement = client
        .prepare_cached(
            "SELECT record_id FROM failed_records
             WHERE destination_id = $1 AND maybe_delivered AND record_id = ANY($2::text[])",
        )
        .await
        .context(context)?;
    Ok(client
        .query(&statement, &[&destination_id, &record_ids])
        .await
        .context(context)?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Deletes those of `record_ids` that are failed records of the destination; returns how many.
pub(super) async fn delete(
    client: &impl GenericClient,
    destination_id: &str,
    record_ids: &[String],
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM failed_records WHERE destination_id = $1 AND record_id = ANY($2::text[])",
            &[&destination_id, &record_ids],
        )
        .await
        .context(|| format!("deleting failed records of destination destinations/{destination_id}"))
}

/// Deletes every failed record of the destination; returns how many.
pub(super) async fn delete_all(
    client: &impl GenericClient,
    destination_id: &str,
) -> Result<u64, StoreError> {
    client
        .execute(
            "DELETE FROM failed_records WHERE destination_id = $1",
            &[&destination_id],
        )
        .await
        .context(|| {
            format!("deleting the failed records of destination destinations/{destination_id}")
        })
}

/// Ids and stored sizes of up to `limit` failed records of the destination, oldest first.
pub(super) async fn oldest_sizes(
    client: &impl GenericClient,
    destination_id: &str,
    limit: u32,
) -> Result<Vec<FailedRecordSize>, StoreError> {
    Ok(client
        .query(
            &format!(
                "SELECT record_id, {STORED_BYTES} FROM failed_records WHERE destination_id = $1
                 ORDER BY first_failure_ms, record_id LIMIT $2"
            ),
            &[&destination_id, &i64::from(limit)],
        )
        .await
        .context(|| format!("sizing failed records of destination destinations/{destination_id}"))?
        .iter()
        .map(read_size)
        .collect())
}

/// Ids and stored sizes of those of `record_ids` that are failed records of the destination, oldest first, at
/// most `limit`.
pub(super) async fn sizes_of(
    client: &impl GenericClient,
    destination_id: &str,
    record_ids: &[String],
    limit: u32,
) -> Result<Vec<FailedRecordSize>, StoreError> {
    Ok(client
        .query(
            &format!(
                "SELECT record_id, {STORED_BYTES} FROM failed_records
                 WHERE destination_id = $1 AND record_id = ANY($2::text[])
                 ORDER BY first_failure_ms, record_id LIMIT $3"
            ),
            &[&destination_id, &record_ids, &i64::from(limit)],
        )
        .await
        .context(|| format!("sizing failed records of destination destinations/{destination_id}"))?
        .iter()
        .map(read_size)
        .collect())
}

fn read_size(row: &Row) -> FailedRecordSize {
    FailedRecordSize {
        record_id: row.get(0),
        bytes: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
    }
}

fn from_row(row: &Row) -> Result<FailedRecordEntry, StoreError> {
    let destination_id: String = row.get(0);
    let record_id: String = row.get(1);
    let what = || format!("failed record {record_id} of destination destinations/{destination_id}");
    let outcome_text: String = row.get(3);
    let outcome = Outcome::parse(&outcome_text)
        .filter(|outcome| outcome.is_kept_as_failed())
        .ok_or_else(|| StoreError::corrupt(what(), format!("outcome {outcome_text:?}")))?;
    let headers = |json: &str, which: &str| -> Result<Vec<(String, String)>, StoreError> {
        stored::headers::decode(json)
            .map_err(|err| StoreError::corrupt(what(), format!("{which} headers: {err}")))
    };
    // The table's CHECK keeps the request columns all set or all NULL.
    let request = match (
        row.get::<_, Option<String>>(4),
        row.get::<_, Option<String>>(5),
        row.get::<_, Option<String>>(6),
        row.get::<_, Option<Vec<u8>>>(7),
    ) {
        (Some(method), Some(url), Some(request_headers), Some(body)) => Some(StoredRequest {
            method,
            url,
            headers: headers(&request_headers, "request")?,
            body,
        }),
        (None, None, None, None) => None,
        _ => return Err(StoreError::corrupt(what(), "request is partly missing")),
    };
    let status: i32 = row.get(8);
    let http_status = u16::try_from(status)
        .map_err(|_| StoreError::corrupt(what(), format!("http status {status}")))?;
    let response_headers = headers(row.get(9), "response")?;
    let stored_attempts: i64 = row.get(12);
    let attempts = u32::try_from(stored_attempts)
        .map_err(|_| StoreError::corrupt(what(), format!("attempts {stored_attempts}")))?;
    let encoding_text: String = row.get(16);
    let record_encoding = RecordEncoding::parse(&encoding_text)
        .ok_or_else(|| StoreError::corrupt(what(), format!("record encoding {encoding_text:?}")))?;
    Ok(FailedRecordEntry {
        record_json: row.get(2),
        outcome,
        request,
        http_status,
        response_headers,
        response_body: row.get(10),
        error: row.get(11),
        attempts,
        first_failure_ms: row.get(13),
        last_failure_ms: row.get(14),
        maybe_delivered: row.get(15),
        record_encoding,
        destination_id,
        record_id,
    })
}
