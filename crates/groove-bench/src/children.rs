//! Child-process plumbing: finding the sibling binaries, free ports, a scratch directory, and a guard that
//! kills its child when dropped — on normal exit, on an error, on a panic (unwinding drops it) and on Ctrl-C
//! (main stops the run future, which drops it).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::fail::{BenchError, BenchResult, Context};

/// The two programs under test, taken from the bench's own target directory so that all three come from one
/// build.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub service: PathBuf,
    pub sandbox: PathBuf,
    /// Flags added to the service's command line.
    pub service_args: Vec<String>,
    /// Admin URL of the PostgreSQL server the service stores on (a fresh database per stack); SQLite in the
    /// scratch dir when `None`.
    pub database_url: Option<String>,
}

impl Binaries {
    pub fn locate() -> BenchResult<Self> {
        let exe = std::env::current_exe().context("cannot find the groove-bench executable")?;
        let binaries = Binaries {
            service: exe.with_file_name("groove-destination"),
            sandbox: exe.with_file_name("groove-sandbox"),
            service_args: Vec::new(),
            database_url: None,
        };
        for path in [&binaries.service, &binaries.sandbox] {
            if !path.is_file() {
                return Err(BenchError::new(format!(
                    "{} is missing next to groove-bench; run `cargo build --release --bins` first",
                    path.display()
                )));
            }
        }
        if !exe.components().any(|part| part.as_os_str() == "release") {
            eprintln!(
                "warning: {} does not look like a release build; figures will not be representative",
                exe.display()
            );
        }
        Ok(binaries)
    }

    /// Which builds are measured: the binaries' modification times (the target dir may be rebuilt by others
    /// between runs, so a result has to say which build it belongs to).
    pub fn describe(&self) -> String {
        let built = |path: &Path| {
            std::fs::metadata(path)
                .and_then(|meta| meta.modified())
                .map(httpdate::fmt_http_date)
                .unwrap_or_else(|_| "unknown time".to_string())
        };
        format!(
            "groove-destination built {}, groove-sandbox built {}",
            built(&self.service),
            built(&self.sandbox)
        )
    }
}

/// A port that was free a moment ago. Binding to port 0 and releasing it races with other programs in
/// theory; on a bench machine that is an acceptable risk, and a child that cannot bind fails loudly.
pub fn free_port() -> BenchResult<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr().context("no local address")?.port())
}

/// A running child; killed and reaped on drop.
pub struct ChildGuard {
    name: &'static str,
    child: Child,
}

impl ChildGuard {
    pub fn new(name: &'static str, child: Child) -> Self {
        ChildGuard { name, child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails if the child has exited (it would otherwise look like a hang or a slow server).
    pub fn ensure_running(&mut self) -> BenchResult<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::new(format!(
                "{} exited early with {status}",
                self.name
            ))),
            Err(error) => Err(BenchError::new(format!(
                "cannot check on {}: {error}",
                self.name
            ))),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // SIGKILL: a graceful drain would only slow the bench down, and the data dir is thrown away anyway.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    pub fn create(label: &str) -> BenchResult<Self> {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "groove-bench-{}-{label}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .context(format!("cannot create scratch dir {}", path.display()))?;
        Ok(ScratchDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last lines of a child's log file, to show why it failed.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
