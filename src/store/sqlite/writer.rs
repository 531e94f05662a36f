//! The single writer: one thread owns the read-write connection and applies queued writes in group commits.
//!
//! SQLite allows one writer at a time anyway, so funnelling writes through one thread costs no parallelism and
//! removes `SQLITE_BUSY` between our own writers. Whatever is queued when the thread looks (up to
//! [`MAX_JOBS_PER_COMMIT`]) runs in one transaction with one fsync: each job inside its own savepoint, so a job
//! that fails (a duplicate id, a stale revision) is rolled back alone while the others commit. Callers hear the
//! outcome only after the commit, so `Ok` always means durable. This is what the record-id ledger needs to keep
//! up with tens of thousands of records per second; CRUD writes simply ride along.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use super::checkpointer::Checkpointer;
use crate::store::error::{Context, StoreError};

/// Jobs queued beyond this make callers wait (backpressure instead of unbounded memory).
const QUEUE_CAPACITY: usize = 1024;
/// Upper bound on jobs sharing one transaction, so one commit never grows without limit.
const MAX_JOBS_PER_COMMIT: usize = 256;

/// Handle to the writer thread. Dropping every handle lets the thread finish its queue and close the connection.
#[derive(Clone)]
pub(super) struct Writer {
    jobs: mpsc::Sender<Box<dyn Job>>,
    ended: Arc<AtomicU64>,
}

impl Writer {
    /// Starts the thread on `conn`; `checkpointer`, when given, is told of every commit and checkpoints in
    /// its place (see `checkpointer.rs`).
    pub(super) fn spawn(
        conn: Connection,
        checkpointer: Option<Checkpointer>,
    ) -> Result<Writer, StoreError> {
        let (jobs, queue) = mpsc::channel(QUEUE_CAPACITY);
        let ended = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&ended);
        thread::Builder::new()
            .name("store-writer".to_string())
            .spawn(move || run(conn, queue, checkpointer, &counted))
            .context(|| "starting the database writer thread".to_string())?;
        Ok(Writer { jobs, ended })
    }

    /// How many write transactions have ended, committed or rolled back, counted after each. A job runs in
    /// transaction number `ended + 1`; a read that starts after the count showed `n` sees whatever
    /// transactions up to `n` committed.
    pub(super) fn transactions_ended(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.ended)
    }

    /// Runs `work` inside a write transaction and returns its result once that transaction has committed.
    ///
    /// `work` must not begin, commit or roll back transactions itself; it may return an error to undo its own
    /// changes. It runs on the writer thread, so it should do database work only (encrypt before calling).
    pub(super) async fn write<T, F>(&self, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, outcome) = oneshot::channel();
        let job = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        });
        self.jobs.send(job).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::internal("writing to the database", "the writer thread has stopped")
}

/// A queued write, type-erased so jobs with different result types share one queue.
trait Job: Send {
    /// Runs the work; `false` if it returned an error (its savepoint is then rolled back).
    fn run(&mut self, conn: &Connection) -> bool;
    /// Reports to the caller: its own result, or `failure` if the transaction as a whole did not commit.
    fn finish(self: Box<Self>, failure: Option<&Failure>);
}

struct TypedJob<T, F> {
    work: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(work) = self.work.take() else {
            return false;
        };
        let result = work(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, failure: Option<&Failure>) {
        let outcome = match (self.result, failure) {
            // A job's own error stands: its changes were undone either way.
            (Some(Err(err)), _) => Err(err),
            (Some(Ok(value)), None) => Ok(value),
            (Some(Ok(_)) | None, Some(failure)) => Err(failure.to_error()),
            (None, None) => Err(StoreError::internal(
                "writing to the database",
                "the write was never run",
            )),
        };
        // The caller may have gone away; the write stands regardless.
        let _ = self.reply.send(outcome);
    }
}

/// Why a whole batch did not commit; every job in it is told.
struct Failure {
    context: &'static str,
    cause: String,
}

impl Failure {
    fn new(context: &'static str, cause: impl ToString) -> Self {
        Failure {
            context,
            cause: cause.to_string(),
        }
    }

    fn to_error(&self) -> StoreError {
        StoreError::internal(self.context, self.cause.clone())
    }
}

fn run(
    conn: Connection,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    checkpointer: Option<Checkpointer>,
    ended: &AtomicU64,
) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_JOBS_PER_COMMIT {
            match queue.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let failure = run_batch(&conn, &mut batch).err();
        ended.fetch_add(1, Ordering::Release);
        if let (None, Some(checkpointer)) = (&failure, &checkpointer) {
            checkpointer.committed();
        }
        if let Some(failure) = &failure {
            tracing::warn!(
                jobs = batch.len(),
                "database write transaction failed: {}: {}",
                failure.context,
                failure.cause
            );
        }
        for job in batch {
            job.finish(failure.as_ref());
        }
    }
}

fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), Failure> {
    begin(conn)?;
    // Whether the open transaction holds a job's work that a later job's failure must not undo.
    let mut holds_work = false;
    let applied = batch
        .iter_mut()
        .try_for_each(|job| {
            if holds_work {
                run_in_savepoint(conn, job.as_mut())
            } else {
                holds_work = run_first(conn, job.as_mut())?;
                Ok(())
            }
        })
        .and_then(|()| {
            conn.execute_batch("COMMIT")
                .map_err(|err| Failure::new("committing a write transaction", err))
        });
    if applied.is_err() && !conn.is_autocommit() {
        if let Err(err) = conn.execute_batch("ROLLBACK") {
            tracing::error!("rolling back a failed write transaction: {err}");
        }
    }
    applied
}

fn begin(conn: &Connection) -> Result<(), Failure> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|err| Failure::new("starting a write transaction", err))
}

/// Runs a job in a transaction that holds no other job's work, without a savepoint: under a savepoint SQLite
/// first copies every page the job changes into a statement journal (a temporary file once it outgrows 64 KiB),
/// which for a group of ledger rows costs about as much as writing them. Rolling the whole transaction back
/// undoes exactly this job's work, and a new one is begun for the jobs after it. Returns whether the
/// transaction now holds the job's work.
fn run_first(conn: &Connection, job: &mut dyn Job) -> Result<bool, Failure> {
    if run_job(conn, job)? {
        return Ok(true);
    }
    conn.execute_batch("ROLLBACK")
        .map_err(|err| Failure::new("rolling back a failed write", err))?;
    begin(conn)?;
    Ok(false)
}

/// Runs a job inside the open transaction; says whether it succeeded. A panic, or an error that made SQLite
/// abandon the whole transaction (disk full, I/O), fails the batch: the other jobs' work is gone too.
fn run_job(conn: &Connection, job: &mut dyn Job) -> Result<bool, Failure> {
    let ok = catch_unwind(AssertUnwindSafe(|| job.run(conn)))
        .map_err(|panic| Failure::new("running a database write", panic_message(&panic)))?;
    if conn.is_autocommit() {
        return Err(Failure::new(
            "running a database write",
            "sqlite rolled back the transaction",
        ));
    }
    Ok(ok)
}

fn run_in_savepoint(conn: &Connection, job: &mut dyn Job) -> Result<(), Failure> {
    conn.execute_batch("SAVEPOINT job")
        .map_err(|err| Failure::new("starting a savepoint", err))?;
    let end = if run_job(conn, job)? {
        "RELEASE job"
    } else {
        "ROLLBACK TO job; RELEASE job"
    };
    conn.execute_batch(end)
        .map_err(|err| Failure::new("ending a savepoint", err))
}

fn panic_message(panic: &Box<dyn Any + Send>) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    format!("a write panicked: {detail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer() -> (tempfile::TempDir, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .unwrap();
        (dir, Writer::spawn(conn, None).unwrap())
    }

    fn insert(v: i64) -> impl FnOnce(&Connection) -> Result<(), StoreError> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (v) VALUES (?1)", [v])
                .map(|_| ())
                .context(|| format!("inserting {v}"))
        }
    }

    fn count(writer: &Writer) -> impl std::future::Future<Output = Result<i64, StoreError>> + '_ {
        writer.write(|conn| {
            conn.query_row("SELECT count(*) FROM t", [], |row| row.get(0))
                .context(|| "counting".to_string())
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failing_job_does_not_undo_its_batch_mates() {
        let (_dir, writer) = writer();
        // Enough concurrent jobs that several share a commit; every third one collides with an earlier value.
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(insert(if i % 3 == 2 { i - 1 } else { i }))
                        .await
                })
            })
            .collect();
        let mut failed = 0;
        for task in tasks {
            if task.await.unwrap().is_err() {
                failed += 1;
            }
        }
        assert_eq!(failed, 100);
        assert_eq!(count(&writer).await.unwrap(), 200);
    }

    /// A job that inserts `v` and then, if `fail`, returns an error; with the receiver of its result.
    fn job(v: i64, fail: bool) -> (Box<dyn Job>, oneshot::Receiver<Result<(), StoreError>>) {
        let (reply, outcome) = oneshot::channel();
        let work = move |conn: &Connection| {
            insert(v)(conn)?;
            if fail {
                return Err(StoreError::internal("writing", "refused after inserting"));
            }
            Ok(())
        };
        let job: Box<dyn Job> = Box::new(TypedJob {
            work: Some(work),
            result: None,
            reply,
        });
        (job, outcome)
    }

    #[tokio::test]
    async fn failing_jobs_undo_only_their_own_work_wherever_they_are_in_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let conn = Connection::open(dir.path().join("w.db")).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER PRIMARY KEY)")
            .unwrap();
        // Failing first (no savepoint), after a failure, after a success (in a savepoint), and last.
        let plan = [
            (1, true),
            (2, true),
            (3, false),
            (4, true),
            (5, false),
            (6, true),
        ];
        let (mut batch, outcomes): (Vec<_>, Vec<_>) =
            plan.iter().map(|&(v, fail)| job(v, fail)).unzip();
        assert!(run_batch(&conn, &mut batch).is_ok());
        for job in batch {
            job.finish(None);
        }
        for (outcome, (v, fail)) in outcomes.into_iter().zip(plan) {
            assert_eq!(outcome.await.unwrap().is_err(), fail, "job {v}");
        }
        let kept: Vec<i64> = conn
            .prepare("SELECT v FROM t ORDER BY v")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(kept, [3, 5]);
        assert!(conn.is_autocommit());
    }

    #[tokio::test]
    async fn a_panicking_job_fails_its_batch_but_not_the_writer() {
        let (_dir, writer) = writer();
        let result = writer
            .write(|_conn| -> Result<(), StoreError> { panic!("boom") })
            .await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("boom"), "{err}");
        writer.write(insert(1)).await.unwrap();
        assert_eq!(count(&writer).await.unwrap(), 1);
    }
}
