//! Replica leases: each process serving from the database registers under a fresh id with a lease, and renews
//! it from a background task while the store lives. Claims name their process, so a process can tell the
//! claims of a live replica (in flight there) from those of one that stopped (orphans) by the lease alone,
//! measured in database time.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio_postgres::Transaction;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::store::error::{Context, StoreError};

/// How long a replica's claims stay its own without a renewal, and how often it renews.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplicaOptions {
    pub lease: Duration,
    pub heartbeat: Duration,
}

impl Default for ReplicaOptions {
    /// A lease of 10 s renewed every 2 s: a stopped replica's claims are settled about 10 s after it stopped,
    /// and a live one survives four missed renewals.
    fn default() -> Self {
        ReplicaOptions {
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
        }
    }
}

/// Registers replica `id` with a fresh lease, in the start-up transaction.
pub(super) async fn register(
    tx: &Transaction<'_>,
    id: &str,
    options: ReplicaOptions,
) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO replicas (id, lease_until) VALUES ($1, now() + make_interval(secs => $2))",
        &[&id, &options.lease.as_secs_f64()],
    )
    .await
    .context(|| format!("registering replica {id}"))?;
    Ok(())
}

/// Renews the lease of replica `id` every `options.heartbeat` until the returned guard is dropped.
pub(super) fn keep_alive(pool: Pool, id: String, options: ReplicaOptions) -> DropGuard {
    let stop = CancellationToken::new();
    let stopped = stop.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stopped.cancelled() => return,
                () = tokio::time::sleep(options.heartbeat) => {}
            }
            if let Err(error) = renew(&pool, &id, options.lease).await {
                tracing::warn!(%error, replica = %id, "cannot renew the replica lease");
            }
        }
    });
    stop.drop_guard()
}

async fn renew(pool: &Pool, id: &str, lease: Duration) -> Result<(), StoreError> {
    let client = pool
        .get()
        .await
        .context(|| "connecting to the database".to_string())?;
    client
        .execute(
            "UPDATE replicas SET lease_until = now() + make_interval(secs => $2) WHERE id = $1",
            &[&id, &lease.as_secs_f64()],
        )
        .await
        .context(|| format!("renewing the lease of replica {id}"))?;
    Ok(())
}
