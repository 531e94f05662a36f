//! The shared line of call slots in PostgreSQL: the `pace_book` table (migration `0005_pace_book.sql`).

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;

use super::connect;
use crate::store::pace_book::{PaceBook, UNSPACED_MEMORY};
use crate::store::StoreError;

/// Takes a slot: the later of the line's next slot (one gap further per unspaced call noted) and now, then
/// moves the line one gap on. Returns the wait in microseconds, measured against the same clock reading, so
/// replicas' clocks need not agree with the database's.
const RESERVE: &str = "
    WITH clock AS (SELECT clock_timestamp() AS now)
    INSERT INTO pace_book AS book (credential_id, next_at)
    SELECT $1, clock.now + $2::bigint * interval '1 microsecond' FROM clock
    ON CONFLICT (credential_id) DO UPDATE
        SET next_at = greatest(
                book.next_at + book.unspaced * $2::bigint * interval '1 microsecond',
                (SELECT now FROM clock)
            ) + $2::bigint * interval '1 microsecond',
            unspaced = 0
    RETURNING (extract(epoch FROM book.next_at - (SELECT now FROM clock)) * 1000000)::bigint - $2::bigint";

/// Notes a call that left without a slot: the line's next slot is no earlier than now, and one more unspaced
/// call is owed, or the only one when the line's latest slot or note is older than the memory (`$2`, in
/// microseconds).
const NOTE_UNSPACED: &str = "
    WITH clock AS (SELECT clock_timestamp() AS now)
    INSERT INTO pace_book AS book (credential_id, next_at, unspaced)
    SELECT $1, clock.now, 1 FROM clock
    ON CONFLICT (credential_id) DO UPDATE
        SET unspaced = CASE
                WHEN book.next_at < (SELECT now FROM clock) - $2::bigint * interval '1 microsecond' THEN 1
                ELSE book.unspaced + 1
            END,
            next_at = greatest(book.next_at, (SELECT now FROM clock))";

/// [`PaceBook`] on the shared database.
#[derive(Debug)]
pub struct PgPaceBook {
    pool: Pool,
}

impl PgPaceBook {
    pub fn new(pool: Pool) -> Self {
        PgPaceBook { pool }
    }

    async fn take(&self, credential_id: &str, gap: Duration) -> Result<Duration, StoreError> {
        let client = connect(&self.pool).await?;
        let gap_us = i64::try_from(gap.as_micros()).unwrap_or(i64::MAX);
        let row = client
            .query_one(RESERVE, &[&credential_id, &gap_us])
            .await
            .map_err(|error| StoreError::internal("cannot take a call slot", error))?;
        let wait_us: i64 = row.get(0);
        Ok(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
    }

    async fn note(&self, credential_id: &str) -> Result<(), StoreError> {
        let client = connect(&self.pool).await?;
        let memory_us = i64::try_from(UNSPACED_MEMORY.as_micros()).unwrap_or(i64::MAX);
        client
            .execute(NOTE_UNSPACED, &[&credential_id, &memory_us])
            .await
            .map_err(|error| StoreError::internal("cannot note an unspaced call", error))?;
        Ok(())
    }
}

impl PaceBook for PgPaceBook {
    fn reserve<'a>(
        &'a self,
        credential_id: &'a str,
        gap: Duration,
    ) -> BoxFuture<'a, Result<Duration, StoreError>> {
        Box::pin(self.take(credential_id, gap))
    }

    fn note_unspaced<'a>(
        &'a self,
        credential_id: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.note(credential_id))
    }
}
