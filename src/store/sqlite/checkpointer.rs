//! Checkpoints on a thread of their own.
//!
//! In WAL mode a commit appends its pages to the `-wal` file; a checkpoint copies them into the database file and
//! fsyncs it, so that the WAL can start over. Left to itself, SQLite runs the checkpoint inside the commit that
//! takes the WAL past its threshold: on the writer thread, which every write of the store waits on, and which
//! bounds how many records per second the ledger takes. This thread checkpoints instead, with a connection of its
//! own: a passive checkpoint blocks neither the writer nor the readers, so the copying and its fsync overlap the
//! writer's next commits, on another core. Durability is unchanged: a commit is durable once its WAL frames are
//! synced, before any checkpoint.
//!
//! The writer keeps a threshold of its own, far higher than SQLite's default ([`WRITER_BACKSTOP_PAGES`]), for
//! when this thread falls behind, or when the WAL is never wholly copied between two commits (it only starts
//! over then); its checkpoint then finds most pages already copied.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::Duration;

use rusqlite::Connection;

use crate::store::error::{Context, StoreError};

/// How long commits are gathered before one checkpoint copies them all: fewer checkpoints, each with one
/// fsync of the database file.
const GATHER: Duration = Duration::from_millis(100);
/// WAL pages after which the writer checkpoints by itself (SQLite's default is 1,000 pages).
pub(super) const WRITER_BACKSTOP_PAGES: u32 = 10_000;

/// Handle to the checkpoint thread. Dropping it (with the writer) ends the thread.
pub(super) struct Checkpointer {
    commits: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a read-write connection to the store's database other than the writer's.
    pub(super) fn spawn(conn: Connection) -> Result<Checkpointer, StoreError> {
        let (commits, heard) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("store-checkpoint".to_string())
            .spawn(move || run(&conn, &heard))
            .context(|| "starting the database checkpoint thread".to_string())?;
        Ok(Checkpointer { commits })
    }

    /// Tells the thread that a commit added pages to the WAL. Never blocks: a commit already told of stands for
    /// this one too.
    pub(super) fn committed(&self) {
        let _ = self.commits.try_send(());
    }
}

fn run(conn: &Connection, heard: &Receiver<()>) {
    while heard.recv().is_ok() {
        thread::sleep(GATHER);
        let gone = match heard.try_recv() {
            Ok(()) | Err(TryRecvError::Empty) => false,
            Err(TryRecvError::Disconnected) => true,
        };
        if let Err(error) = checkpoint(conn) {
            tracing::warn!(%error, "cannot checkpoint the database; the writer will when the WAL grows");
        }
        if gone {
            return;
        }
    }
}

/// Copies what the WAL holds into the database file, as far as readers allow, without waiting for anyone.
fn checkpoint(conn: &Connection) -> Result<(), StoreError> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
        .context(|| "checkpointing the write-ahead log".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::connection::open_writer;

    /// Size of the database file itself (not its WAL): it grows only as checkpoints copy pages into it.
    fn main_file_len(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|meta| meta.len()).unwrap_or(0)
    }

    #[test]
    fn commits_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let writer = open_writer(&path).unwrap();
        writer
            .pragma_update(None, "wal_autocheckpoint", WRITER_BACKSTOP_PAGES)
            .unwrap();
        writer
            .execute_batch("CREATE TABLE pages (body BLOB NOT NULL)")
            .unwrap();
        let checkpointer = Checkpointer::spawn(open_writer(&path).unwrap()).unwrap();
        let before = main_file_len(&path);
        // About 400 pages: far below the writer's own threshold.
        for _ in 0..100 {
            writer
                .execute("INSERT INTO pages (body) VALUES (zeroblob(16000))", [])
                .unwrap();
            checkpointer.committed();
        }
        let copied = 1_000_000;
        for _ in 0..100 {
            if main_file_len(&path) >= before + copied {
                break;
            }
            thread::sleep(Duration::from_millis(50));
        }
        assert!(
            main_file_len(&path) >= before + copied,
            "database file {} bytes, {before} before the commits",
            main_file_len(&path)
        );
    }
}
