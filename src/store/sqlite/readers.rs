//! Read-only connections for queries, used from tokio's blocking pool.
//!
//! In WAL mode readers never wait for the writer and see only committed data, so reads bypass the writer
//! queue entirely and run in parallel with each other. Connections are opened on demand and kept for reuse.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use rusqlite::Connection;

use super::connection;
use crate::store::error::StoreError;

/// Idle connections kept for reuse; extra ones opened under load are closed when returned.
const MAX_IDLE: usize = 4;

pub(super) struct Readers {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl Readers {
    pub(super) fn new(path: PathBuf) -> Arc<Readers> {
        Arc::new(Readers {
            path,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Runs `work` on a read-only connection on the blocking pool, so the async runtime never waits on disk.
    pub(super) async fn read<T, F>(self: &Arc<Self>, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let readers = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let conn = readers.take()?;
            let result = work(&conn);
            readers.give_back(conn);
            result
        })
        .await
        .map_err(|err| StoreError::internal("reading from the database", err))?
    }

    fn take(&self) -> Result<Connection, StoreError> {
        // A poisoned pool only means another reader panicked; the connections in it are still fine.
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => connection::open_reader(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}
