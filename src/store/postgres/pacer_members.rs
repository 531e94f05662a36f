//! Pacing membership in PostgreSQL: the `pacer_members` table (migration `0003_pacer_members.sql`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;

use crate::store::pacer_members::PacerMembers;
use crate::store::StoreError;

/// The migration creating the table (registered in `migrations.rs`), applied alone by the tests here.
#[cfg(test)]
const MIGRATION: &str = include_str!("migrations/0003_pacer_members.sql");
/// Every this many heartbeats, rows long expired (replicas gone for good) are removed.
const PRUNE_EVERY_BEATS: u32 = 60;

/// Renews this replica's rows, drops the ones it no longer needs, and counts the other live members; the
/// count cannot see this statement's own writes, so the caller adds this replica.
const HEARTBEAT: &str = "
    WITH renewed AS (
        INSERT INTO pacer_members (credential_id, replica_id, expires_at)
        SELECT id, $1, now() + $3::bigint * interval '1 millisecond' FROM unnest($2::text[]) AS id
        ON CONFLICT (credential_id, replica_id) DO UPDATE SET expires_at = excluded.expires_at
        RETURNING 1
    ), unused AS (
        DELETE FROM pacer_members WHERE replica_id = $1 AND NOT (credential_id = ANY($2::text[]))
        RETURNING 1
    )
    SELECT credential_id, count(*) FROM pacer_members
    WHERE credential_id = ANY($2::text[]) AND replica_id <> $1 AND expires_at > now()
    GROUP BY credential_id";

const PRUNE: &str = "DELETE FROM pacer_members WHERE expires_at < now() - interval '1 minute'";

/// [`PacerMembers`] on the shared database.
#[derive(Debug)]
pub struct PgPacerMembers {
    pool: Pool,
    beats: AtomicU32,
}

impl PgPacerMembers {
    pub fn new(pool: Pool) -> Self {
        PgPacerMembers {
            pool,
            beats: AtomicU32::new(0),
        }
    }

    async fn beat(
        &self,
        replica_id: &str,
        credential_ids: &[String],
        ttl: Duration,
    ) -> Result<HashMap<String, u32>, StoreError> {
        let client = self.pool.get().await.map_err(|error| {
            StoreError::internal(
                "cannot get a database connection for a pacing heartbeat",
                error,
            )
        })?;
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let rows = client
            .query(HEARTBEAT, &[&replica_id, &credential_ids, &ttl_ms])
            .await
            .map_err(|error| StoreError::internal("cannot renew pacing membership", error))?;
        let mut members: HashMap<String, u32> =
            credential_ids.iter().map(|id| (id.clone(), 1)).collect();
        for row in rows {
            let others: i64 = row.get(1);
            members.insert(
                row.get(0),
                1 + u32::try_from(others).unwrap_or(u32::MAX - 1),
            );
        }
        if self
            .beats
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(PRUNE_EVERY_BEATS)
        {
            // Another replica pruning the same rows at once may make this fail; the next round prunes.
            if let Err(error) = client.execute(PRUNE, &[]).await {
                tracing::debug!(%error, "cannot prune expired pacing members");
            }
        }
        Ok(members)
    }
}

impl PacerMembers for PgPacerMembers {
    fn heartbeat<'a>(
        &'a self,
        replica_id: &'a str,
        credential_ids: &'a [String],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<HashMap<String, u32>, StoreError>> {
        Box::pin(self.beat(replica_id, credential_ids, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deadpool_postgres::Manager;
    use test_postgres::TestDatabase;
    use tokio_postgres::NoTls;

    const TTL: Duration = Duration::from_millis(500);

    async fn members(db: &TestDatabase) -> PgPacerMembers {
        let config: tokio_postgres::Config = db.url().parse().unwrap();
        let pool = Pool::builder(Manager::new(config, NoTls))
            .max_size(2)
            .build()
            .unwrap();
        PgPacerMembers::new(pool)
    }

    #[tokio::test]
    async fn members_count_each_other_until_one_stops_renewing() {
        let db = TestDatabase::create().await;
        let (client, connection) = tokio_postgres::connect(db.url(), NoTls).await.unwrap();
        tokio::spawn(connection);
        client.batch_execute(MIGRATION).await.unwrap();
        let members = members(&db).await;
        let k1 = vec!["k1".to_string()];
        let both = vec!["k1".to_string(), "k2".to_string()];

        members.heartbeat("a", &k1, TTL).await.unwrap();
        members.heartbeat("b", &k1, TTL).await.unwrap();
        for replica in ["a", "b", "c"] {
            let seen = members.heartbeat(replica, &both, TTL).await.unwrap();
            let expected_k2 = match replica {
                "c" => 3,
                "b" => 2,
                _ => 1,
            };
            assert_eq!(seen["k2"], expected_k2, "{replica}");
        }
        for replica in ["a", "b", "c"] {
            let seen = members.heartbeat(replica, &both, TTL).await.unwrap();
            assert_eq!(seen["k1"], 3, "{replica}");
            assert_eq!(seen["k2"], 3, "{replica}");
        }
        // c stops renewing (killed); b stops using k2.
        tokio::time::sleep(TTL + Duration::from_millis(100)).await;
        members.heartbeat("b", &k1, TTL).await.unwrap();
        let seen = members.heartbeat("a", &both, TTL).await.unwrap();
        assert_eq!(seen["k1"], 2);
        assert_eq!(seen["k2"], 1);
        let seen = members.heartbeat("b", &both, TTL).await.unwrap();
        assert_eq!(seen["k1"], 2);
        assert_eq!(seen["k2"], 2);
    }
}
