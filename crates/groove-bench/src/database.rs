//! A fresh PostgreSQL database per stack when the bench runs against PostgreSQL (`--database-url`): each
//! scenario starts on an empty store, as the SQLite runs do with their scratch dirs.

use tokio_postgres::NoTls;

use crate::fail::{BenchError, BenchResult};

/// A database created for one stack on the server of the bench's `--database-url`, dropped with the value.
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// Creates `groove_bench_<pid>_<label>_<n>` on the server `admin_url` points at (its user needs CREATEDB).
    pub async fn create(admin_url: &str, label: &str) -> BenchResult<ScratchDatabase> {
        let name = format!(
            "groove_bench_{}_{}_{}",
            std::process::id(),
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_micros())
        );
        let admin = connect(admin_url).await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .map_err(|error| BenchError::new(format!("cannot create database {name}: {error}")))?;
        Ok(ScratchDatabase {
            admin_url: admin_url.to_string(),
            url: with_database(admin_url, &name),
            name,
        })
    }

    /// The new database's URL, for the service's `--database-url`.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for ScratchDatabase {
    /// Drops the database on a thread of its own (a `Drop` cannot await); best effort, since a failed drop
    /// only leaves an unused database behind.
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
                if let Ok(admin) = connect(&admin_url).await {
                    if let Err(error) = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await
                    {
                        eprintln!("warning: cannot drop the bench database {name}: {error}");
                    }
                }
            });
        });
        let _ = dropping.join();
    }
}

/// Where `url` points, without its user, password or database: what a report may print.
pub fn describe(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    format!("postgres at {host}")
}

async fn connect(url: &str) -> BenchResult<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.map_err(|error| {
        BenchError::new(format!("cannot connect to {}: {error}", describe(url)))
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
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
    fn the_database_replaces_the_path_and_the_query_stays() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres?sslmode=require", "b"),
            "postgres://u:p@h:5432/b?sslmode=require"
        );
        assert_eq!(with_database("postgresql://h", "b"), "postgresql://h/b");
    }

    #[test]
    fn a_description_shows_no_credentials() {
        assert_eq!(
            describe("postgres://user:secret@db.example:5432/x?sslmode=require"),
            "postgres at db.example:5432"
        );
    }
}
