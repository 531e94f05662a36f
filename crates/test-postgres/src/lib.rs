//! Throw-away PostgreSQL databases for tests: each [`TestDatabase`] is a fresh, empty database, dropped again
//! when the value is dropped.
//!
//! The server comes from `GROOVE_DESTINATION_TEST_DATABASE_URL` when it is set (an admin URL of any server the
//! tests may create databases on), and otherwise from `start-cluster` next to this file, which starts one local
//! throw-away cluster per machine and user and keeps it running between test runs. When neither works the
//! test panics: a test that needs PostgreSQL fails rather than skips.

use std::process::Command;
use std::sync::OnceLock;

use tokio_postgres::NoTls;

/// Admin URL of a server the tests may create databases on; overrides the local cluster.
pub const ADMIN_URL_ENV: &str = "GROOVE_DESTINATION_TEST_DATABASE_URL";

/// A fresh database that lives as long as this value.
#[derive(Debug)]
pub struct TestDatabase {
    url: String,
    admin_url: String,
    name: String,
}

impl TestDatabase {
    /// Creates a new empty database. Panics, saying why, when no server can be reached or started.
    pub async fn create() -> TestDatabase {
        let admin_url = admin_url().to_string();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let admin = connect(&admin_url).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .await
            .unwrap_or_else(|error| panic!("cannot create test database {name}: {error}"));
        let url = with_database(&admin_url, &name);
        TestDatabase {
            url,
            admin_url,
            name,
        }
    }

    /// `postgres://…` URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    /// Drops the database (with FORCE, so connections left by killed processes do not keep it), on a thread of
    /// its own because a `Drop` cannot await and may run inside a runtime. Best effort: the cluster is
    /// throw-away.
    fn drop(&mut self) {
        let admin_url = self.admin_url.clone();
        let name = self.name.clone();
        let dropping = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                if let Ok((client, connection)) = tokio_postgres::connect(&admin_url, NoTls).await {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
            });
        });
        let _ = dropping.join();
    }
}

/// The admin URL: from the environment, or from the local cluster (started on first use in this process).
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var(ADMIN_URL_ENV) {
            if !url.is_empty() {
                return url;
            }
        }
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/start-cluster");
        let output = Command::new(script)
            .output()
            .unwrap_or_else(|error| panic!("cannot run {script}: {error}"));
        if !output.status.success() {
            panic!(
                "cannot start a test PostgreSQL cluster (set {ADMIN_URL_ENV} to use another server): {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    })
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|error| panic!("cannot connect to the test PostgreSQL server: {error}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|scheme| scheme + 3)
        .and_then(|start| base[start..].find('/').map(|slash| start + slash))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://u@h:1/postgres?sslmode=disable", "t"),
            "postgres://u@h:1/t?sslmode=disable"
        );
        assert_eq!(with_database("postgres://u@h:1", "t"), "postgres://u@h:1/t");
    }

    #[tokio::test]
    async fn a_test_database_is_created_empty_and_dropped_afterwards() {
        let database = TestDatabase::create().await;
        let client = connect(database.url()).await;
        let tables: i64 = client
            .query_one(
                "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(tables, 0);
        let name = database.name().to_string();
        drop(client);
        drop(database);
        let admin = connect(admin_url()).await;
        let left: i64 = admin
            .query_one(
                "SELECT count(*) FROM pg_database WHERE datname = $1",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(left, 0);
    }
}
