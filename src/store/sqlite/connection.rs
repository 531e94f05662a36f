//! Opening connections with the settings every connection to the database file needs.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::store::error::{Context, StoreError};

/// How long a connection waits for a lock held by another connection (a checkpoint, another process)
/// before giving up with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Prepared statements kept per connection. rusqlite's default (16) is fewer than the statements the store
/// runs, and a statement evicted from the cache is parsed again on its next use.
const STATEMENT_CACHE: usize = 64;
/// Page cache of a read-write connection, in KiB: half SQLite's default. What the writer touches again and again
/// (the right edges of the ledger's b-trees, the pages of the transaction being written) fits in it, the rest is
/// read from the operating system's cache anyway, and the page cache is a fixed part of the service's memory.
const WRITER_CACHE_KIB: i64 = 1024;

/// The read-write connection, creating the file if needed.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path).context(|| format!("opening database {}", path.display()))?;
    let setting = |what: &str| format!("setting {what} on {}", path.display());
    conn.busy_timeout(BUSY_TIMEOUT)
        .context(|| setting("busy_timeout"))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // WAL lets readers work while the writer commits, and turns each commit into one sequential append.
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .context(|| setting("journal_mode"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::internal(
            setting("journal_mode"),
            format!("sqlite kept journal mode {mode:?} instead of wal"),
        ));
    }
    // FULL survives power loss, not only process crashes: an acknowledged write (a delivered record id, later)
    // must not come back as undone. Group commits in the writer keep the fsync count low.
    conn.pragma_update(None, "synchronous", "FULL")
        .context(|| setting("synchronous"))?;
    // Off by default in SQLite, per connection: without it the credential reference is not enforced.
    conn.pragma_update(None, "foreign_keys", true)
        .context(|| setting("foreign_keys"))?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
        .context(|| setting("cache_size"))?;
    Ok(conn)
}

/// A read-only connection: queries only, so a bug cannot write around the writer thread.
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .context(|| format!("opening database {} for reading", path.display()))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .context(|| format!("setting busy_timeout on {}", path.display()))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}
