//! Schema migrations: an ordered list of SQL scripts; `PRAGMA user_version` records how many have run.
//!
//! Append new scripts at the end (`0003_…`); never edit or reorder a released one, since databases in the
//! field have already run it.

use rusqlite::Connection;

use crate::store::error::{Context, StoreError};

struct Migration {
    name: &'static str,
    sql: &'static str,
}

/// Migration `i` (0-based) moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_credentials_and_destinations",
        sql: include_str!("migrations/0001_credentials_and_destinations.sql"),
    },
    Migration {
        name: "0002_ledger_and_failed_records",
        sql: include_str!("migrations/0002_ledger_and_failed_records.sql"),
    },
    Migration {
        name: "0003_claims_and_failure_detail",
        sql: include_str!("migrations/0003_claims_and_failure_detail.sql"),
    },
    Migration {
        name: "0004_credential_refusal",
        sql: include_str!("migrations/0004_credential_refusal.sql"),
    },
    Migration {
        name: "0005_delivered_groups",
        sql: include_str!("migrations/0005_delivered_groups.sql"),
    },
];

/// The schema version this build writes.
pub(super) const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema up to [`SCHEMA_VERSION`], each migration in its own transaction so a failure leaves the
/// database at the last complete version. Refuses a database from a newer build rather than misreading it.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, SCHEMA_VERSION)
}

/// Brings the schema up to `target`: all of it in the service, an older version in tests of later migrations.
pub(super) fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), StoreError> {
    let current = user_version(conn)?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::corrupt(
            "database schema",
            format!(
                "version {current} was written by a newer build; this one understands up to {SCHEMA_VERSION}"
            ),
        ));
    }
    let pending = MIGRATIONS.iter().enumerate().take(target as usize);
    for (index, migration) in pending.skip(current as usize) {
        let version = index as u32 + 1;
        let context = || format!("applying migration {}", migration.name);
        // Immediate: take the write lock up front, so a second process opening the same file waits instead of
        // failing halfway.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .context(context)?;
        // Another process may have migrated while we waited for the lock.
        if user_version(&tx)? >= version {
            continue;
        }
        tx.execute_batch(migration.sql).context(context)?;
        // user_version lives in the database header and is written by this same transaction.
        tx.pragma_update(None, "user_version", version)
            .context(context)?;
        tx.commit().context(context)?;
        tracing::info!(migration = migration.name, "applied database migration");
    }
    Ok(())
}

fn user_version(conn: &Connection) -> Result<u32, StoreError> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
        .context(|| "reading the schema version".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrates_once_and_refuses_newer_schemas() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn).unwrap();
        assert_eq!(user_version(&conn).unwrap(), SCHEMA_VERSION);
        // Running again is a no-op (the scripts are not idempotent, so a rerun would fail).
        migrate(&mut conn).unwrap();

        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut conn).unwrap_err().to_string();
        assert!(err.contains("newer build"), "{err}");
    }
}
