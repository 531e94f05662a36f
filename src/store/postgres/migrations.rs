//! Schema migrations: SQL scripts applied in version order, each once; `schema_migrations` records which ran.
//!
//! All of them run at start-up in one transaction that holds a transaction-level advisory lock, so replicas
//! starting together queue up: the first applies what is missing, the others then find nothing to do. Append
//! new scripts to [`MIGRATIONS`] with a higher version; never edit or remove a released one.

use tokio_postgres::Transaction;

use crate::store::error::{Context, StoreError};

/// `(version, name, sql)`, in ascending version order: the one list of every migration.
pub(super) const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "0001_schema", include_str!("migrations/0001_schema.sql")),
    (
        2,
        "0002_replica_leases",
        include_str!("migrations/0002_replica_leases.sql"),
    ),
    (
        3,
        "0003_pacer_members",
        include_str!("migrations/0003_pacer_members.sql"),
    ),
    (
        4,
        "0004_repeatable_claims",
        include_str!("migrations/0004_repeatable_claims.sql"),
    ),
    (
        5,
        "0005_pace_book",
        include_str!("migrations/0005_pace_book.sql"),
    ),
    (
        6,
        "0006_pace_book_unspaced",
        include_str!("migrations/0006_pace_book_unspaced.sql"),
    ),
];

/// Key of the advisory lock that serializes migrations (and the secret key check) across processes: any fixed
/// number no other user of the database picks; this one spells "groovemg".
pub(super) const MIGRATION_LOCK: i64 = 0x67726f6f_76656d67;

/// Takes the migration lock for the rest of `tx` and applies the migrations that have not run. Refuses a
/// database migrated by a newer build (versions this one does not know) rather than misreading it.
pub(super) async fn migrate(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context(|| "waiting for the migration lock".to_string())?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version     INTEGER PRIMARY KEY,
             name        TEXT NOT NULL,
             applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
         )",
    )
    .await
    .context(|| "creating the schema_migrations table".to_string())?;
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations ORDER BY version",
            &[],
        )
        .await
        .context(|| "reading the applied migrations".to_string())?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let known = |version: &i32| MIGRATIONS.iter().any(|(known, _, _)| known == version);
    if let Some(unknown) = applied.iter().find(|version| !known(version)) {
        return Err(StoreError::corrupt(
            "database schema",
            format!("migration {unknown} was applied by a newer build, which this one cannot read"),
        ));
    }
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        let context = || format!("applying migration {name}");
        tx.batch_execute(sql).await.context(context)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
            &[version, name],
        )
        .await
        .context(context)?;
        tracing::info!(migration = name, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend_and_names_match_them() {
        for pair in MIGRATIONS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].1, pair[1].1);
        }
        for (version, name, _) in MIGRATIONS {
            assert!(name.starts_with(&format!("{version:04}_")), "{name}");
        }
    }
}
