//! The real service binary as a child process. Unlike [`super::TestServer`] it can die the hard way
//! (SIGKILL: no shutdown code runs, nothing is flushed) and be started again on the same data dir,
//! which is what crash-recovery tests need.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use super::GrpcServer;

/// The base64 of the bytes 0..=31. Fixed rather than generated, so every start on the same data
/// dir decrypts the credentials stored by the one before, whatever the test's environment holds.
const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// A debug build opening its store on a busy 2-core machine takes a few seconds at worst.
const READY_WITHIN: Duration = Duration::from_secs(30);
/// Graceful shutdown drains open streams; a server still running after this is hung.
const STOP_WITHIN: Duration = Duration::from_secs(30);
/// The free port found by binding port 0 can be taken by another process before the child binds it.
const START_TRIES: u32 = 5;
/// What `main` prints when the listen address is taken.
const BIND_FAILURE: &str = "cannot listen on";
const LOG_TAIL_LINES: usize = 60;

/// How a child server is started; the default is what [`ChildServer::start`] does.
#[derive(Clone, Debug, Default)]
pub struct ChildOptions {
    /// Runs the server under this umask (set by `sh` before it execs the binary), so a test can show that
    /// file modes do not depend on it. Unset: the test process's umask.
    pub umask: Option<u32>,
    /// Leaves `GROOVE_DESTINATION_SECRET_KEY` unset, so the server generates `<data-dir>/secret.key`.
    pub generated_key: bool,
    /// More flags for the server.
    pub args: Vec<String>,
}

/// A running `groove-destination` process with its data dir and log file.
pub struct ChildServer {
    addr: SocketAddr,
    data_dir: PathBuf,
    groove_url: String,
    log_path: PathBuf,
    options: ChildOptions,
    child: Option<Child>,
}

impl ChildServer {
    /// Starts the service with its data in `work_dir/data` and its stdout and stderr appended to
    /// `work_dir/server.log`, and returns once gRPC health answers SERVING.
    pub async fn start(work_dir: &Path, groove_url: &str) -> ChildServer {
        Self::start_with(work_dir, groove_url, ChildOptions::default()).await
    }

    /// [`ChildServer::start`] with `options`; a restart keeps them.
    pub async fn start_with(
        work_dir: &Path,
        groove_url: &str,
        options: ChildOptions,
    ) -> ChildServer {
        let mut server = ChildServer {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: work_dir.join("data"),
            groove_url: groove_url.to_string(),
            log_path: work_dir.join("server.log"),
            options,
            child: None,
        };
        server.launch().await;
        server
    }

    /// Starts a second process on this server's data dir and waits for it to exit, returning how it exited
    /// and what it printed.
    ///
    /// # Panics
    /// If it is still running after [`READY_WITHIN`] (it is killed first).
    pub async fn run_another_on_the_same_data_dir(&self) -> (ExitStatus, String) {
        let mut command = self.command(free_local_addr());
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a second groove-destination");
        let deadline = Instant::now() + READY_WITHIN;
        while child.try_wait().expect("poll the second server").is_none() {
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a second server on the same data dir kept running");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let output = child
            .wait_with_output()
            .expect("read the second server's output");
        let printed = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status, printed)
    }

    /// Where the server listens now; a restart picks a new port.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL and waits until it is gone.
    pub fn kill_9(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        child.kill().expect("send SIGKILL to the server");
        let status = child.wait().expect("wait for the killed server");
        self.note(&format!("--- killed with SIGKILL: {status} ---"));
        status
    }

    /// Sends SIGTERM and waits for the process to exit on its own.
    ///
    /// # Panics
    /// If it is still running after [`STOP_WITHIN`]; it is killed first, and the log tail printed.
    pub async fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the server is not running");
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(signalled.success(), "kill -TERM failed: {signalled}");
        let deadline = Instant::now() + STOP_WITHIN;
        loop {
            if let Some(status) = child.try_wait().expect("poll the server process") {
                self.note(&format!("--- stopped with SIGTERM: {status} ---"));
                return status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the server did not stop within {STOP_WITHIN:?} of SIGTERM\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts the service again on the same data dir (stopping it gracefully first if it still
    /// runs) and returns once it is SERVING. Clients made before it reach the old address.
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.launch().await;
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        format!(
            "--- last {} lines of {} ---\n{}",
            tail.len(),
            self.log_path.display(),
            tail.join("\n")
        )
    }

    async fn launch(&mut self) {
        std::fs::create_dir_all(&self.data_dir).expect("create the data dir");
        for _ in 0..START_TRIES {
            let addr = free_local_addr();
            let log_start = std::fs::metadata(&self.log_path).map_or(0, |meta| meta.len());
            self.note(&format!("--- starting on {addr} ---"));
            let mut child = self.spawn(addr);
            match wait_until_serving(addr, &mut child).await {
                Ok(()) => {
                    self.addr = addr;
                    self.child = Some(child);
                    return;
                }
                Err(NotServing::Exited(_)) if self.log_since(log_start).contains(BIND_FAILURE) => {
                    continue;
                }
                Err(problem) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "the server on {addr} did not become SERVING: {problem:?}\n{}",
                        self.log_tail()
                    );
                }
            }
        }
        panic!(
            "the server found no free port in {START_TRIES} tries\n{}",
            self.log_tail()
        );
    }

    fn spawn(&self, addr: SocketAddr) -> Child {
        let log = self.open_log();
        self.command(addr)
            .stdout(log.try_clone().expect("share the log file"))
            .stderr(log)
            .spawn()
            .expect("start the groove-destination binary")
    }

    /// The server's command line for `addr`, with this server's data dir and options.
    fn command(&self, addr: SocketAddr) -> Command {
        let binary = env!("CARGO_BIN_EXE_groove-destination");
        let mut command = match self.options.umask {
            Some(umask) => {
                let mut shell = Command::new("sh");
                shell
                    .arg("-c")
                    .arg(format!("umask {umask:03o} && exec \"$0\" \"$@\""))
                    .arg(binary);
                shell
            }
            None => Command::new(binary),
        };
        // Settings a developer's shell may hold must not change the server under test.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("GROOVE_DESTINATION_") {
                command.env_remove(name);
            }
        }
        command
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--groove-url")
            .arg(&self.groove_url)
            .arg("--log")
            .arg("info")
            .args(&self.options.args)
            .stdin(Stdio::null());
        if !self.options.generated_key {
            command.env("GROOVE_DESTINATION_SECRET_KEY", SECRET_KEY);
        }
        command
    }

    fn open_log(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open the server log")
    }

    /// A marker line in the log, so the runs of one test can be told apart.
    fn note(&self, line: &str) {
        let _ = writeln!(self.open_log(), "{line}");
    }

    fn log_since(&self, offset: u64) -> String {
        let log = std::fs::read(&self.log_path).unwrap_or_default();
        let start = usize::try_from(offset).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }
}

impl GrpcServer for ChildServer {
    fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ChildServer {
    /// A failed test must leave no process behind.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail());
        }
    }
}

#[derive(Debug)]
enum NotServing {
    Exited(ExitStatus),
    TimedOut,
}

/// An address on loopback that was free a moment ago.
fn free_local_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("find a free port")
}

async fn wait_until_serving(addr: SocketAddr, child: &mut Child) -> Result<(), NotServing> {
    let deadline = Instant::now() + READY_WITHIN;
    let endpoint = format!("http://{addr}");
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("poll the server process") {
            return Err(NotServing::Exited(status));
        }
        let connected = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect_timeout(Duration::from_secs(1))
            .connect()
            .await;
        if let Ok(channel) = connected {
            let mut health = HealthClient::new(channel);
            let check = health.check(HealthCheckRequest {
                service: String::new(),
            });
            if let Ok(Ok(answer)) = tokio::time::timeout(Duration::from_secs(2), check).await {
                if answer.into_inner().status() == ServingStatus::Serving {
                    return Ok(());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(NotServing::TimedOut)
}
