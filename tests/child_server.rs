//! The child-process server helper: SIGKILL, a restart on the same data dir, SIGTERM.

mod common;

use common::child::ChildServer;
use common::flows::{active_destination, credential, raw, send, template};
use common::start_sandbox;
use common::GrpcServer;
use groove_destination::proto::Outcome;
use groove_sandbox::SandboxHandle;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

fn ticket(id: &str) -> groove_destination::proto::Record {
    raw(
        id,
        json!({"body": id, "from": "customer@example.com", "to": "support@sandbox.example.com"}),
    )
}

fn tickets(ids: &[String]) -> Vec<groove_destination::proto::Record> {
    ids.iter().map(|id| ticket(id)).collect()
}

/// A sandbox, and a server in a data dir of its own with a credential and an active create-ticket destination.
async fn tickets_server() -> (SandboxHandle, tempfile::TempDir, ChildServer, String) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    (sandbox, dir, server, name)
}

#[tokio::test]
async fn a_killed_server_restarts_on_its_data_and_still_decrypts_its_credentials() {
    let (sandbox, _dir, mut server, name) = tickets_server().await;
    let first = send(&server, &name, vec![vec![ticket("r-1")]])
        .await
        .unwrap();
    assert_eq!(first.of("r-1").outcome(), Outcome::Delivered);

    let pid = server.pid().unwrap();
    let killed = server.kill_9();
    assert!(!killed.success(), "{killed}");
    assert!(server.pid().is_none());
    let gone = std::process::Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!gone.success(), "process {pid} still exists");

    server.restart().await;
    let health = server
        .health()
        .await
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);
    // The stored API key is decrypted again: a new record reaches the sandbox with it.
    let second = send(&server, &name, vec![vec![ticket("r-1"), ticket("r-2")]])
        .await
        .unwrap();
    assert_eq!(second.of("r-1").outcome(), Outcome::Duplicate);
    assert_eq!(second.of("r-2").outcome(), Outcome::Delivered);
    assert_eq!(sandbox.stats().count(201), 2);

    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    assert_eq!(log.matches("--- starting on").count(), 2, "{log}");
}

#[tokio::test]
async fn creates_in_flight_at_a_kill_9_are_kept_as_maybe_delivered_and_not_resent() {
    use groove_destination::proto;
    use groove_sandbox::Faults;

    let (sandbox, _dir, mut server, name) = tickets_server().await;
    // Slow enough that the kill lands while every call is on the wire.
    sandbox.set_faults(Faults {
        latency: std::time::Duration::from_secs(3),
        ..Faults::default()
    });
    let ids: Vec<String> = (0..6).map(|index| format!("k-{index}")).collect();
    let (requests, _stream) = common::flows::open(&server, &name).await;
    requests
        .send(common::flows::batch(tickets(&ids)))
        .await
        .unwrap();
    // The claims are committed before the calls go out; the sandbox records a call once it answers.
    let database = server
        .data_dir()
        .join(groove_destination::store::DATABASE_FILE);
    let claims = || -> i64 {
        let conn = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .unwrap();
        conn.query_row("SELECT count(*) FROM record_claims", [], |row| row.get(0))
            .unwrap()
    };
    for _ in 0..500 {
        if claims() == ids.len() as i64 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(claims(), ids.len() as i64);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        sandbox.requests().is_empty(),
        "the calls are still unanswered"
    );
    server.kill_9();
    drop(requests);

    server.restart().await;
    sandbox.set_faults(Faults::default());
    let listed = server
        .delivery()
        .await
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .failed_records;
    assert_eq!(listed.len(), ids.len(), "{listed:?}");
    for failed in &listed {
        assert!(failed.maybe_delivered, "{failed:?}");
        assert!(failed.error.contains("server stopped"), "{}", failed.error);
    }
    let replay = send(&server, &name, vec![tickets(&ids)]).await.unwrap();
    for id in &ids {
        assert_eq!(replay.of(id).outcome(), Outcome::Failed, "{id}");
        assert_eq!(replay.of(id).attempts, 0, "{id}");
    }
    // The killed server's calls arrived first (seq 1 to 6), and may still be answered into the void.
    let sent_again: Vec<u64> = sandbox
        .requests()
        .iter()
        .map(|request| request.seq)
        .filter(|seq| *seq > ids.len() as u64)
        .collect();
    assert!(sent_again.is_empty(), "sent again: {sent_again:?}");
    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
}

#[tokio::test]
async fn records_answered_delivered_before_a_kill_9_are_duplicates_after_the_restart() {
    let (sandbox, _dir, mut server, name) = tickets_server().await;
    let ids: Vec<String> = (0..2_000).map(|index| format!("d-{index}")).collect();
    let (requests, mut stream) = common::flows::open(&server, &name).await;
    requests
        .send(common::flows::batch(tickets(&ids)))
        .await
        .unwrap();
    // The kill lands right after the last of these results arrived, while later calls and commits go on.
    let before_kill = common::flows::next_results(&mut stream, 300).await;
    let killed = server.kill_9();
    assert!(!killed.success(), "{killed}");
    drop(requests);
    let delivered_before: Vec<&String> = before_kill
        .iter()
        .filter(|result| result.outcome() == Outcome::Delivered)
        .flat_map(|result| &result.record_ids)
        .collect();
    assert!(delivered_before.len() >= 300, "{before_kill:?}");

    server.restart().await;
    let replay = send(&server, &name, vec![tickets(&ids)]).await.unwrap();
    for id in delivered_before {
        assert_eq!(replay.of(id).outcome(), Outcome::Duplicate, "{id}");
    }
    let tickets = sandbox.stats().count(201);
    assert!(
        tickets <= ids.len() as u64,
        "{tickets} tickets for {} records",
        ids.len()
    );
    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
}

#[tokio::test]
async fn a_second_process_on_the_same_data_dir_is_refused_until_the_first_exits() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &sandbox.base_url()).await;
    let pid = server.pid().unwrap();

    let (status, printed) = server.run_another_on_the_same_data_dir().await;
    assert!(!status.success(), "{status}\n{printed}");
    let expected = format!(
        "error: data dir {} is in use by another groove-destination process (pid {pid})",
        server.data_dir().display()
    );
    assert!(printed.contains(&expected), "{printed}");
    assert_eq!(printed.trim().lines().count(), 1, "one line: {printed}");
    // The first one is untouched and still serves.
    credential(&server, "main").await;

    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
    server.restart().await;
    credential(&server, "second").await;
    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_and_its_files_are_private_whatever_the_umask() {
    use common::child::ChildOptions;
    use groove_destination::store::{DATABASE_FILE, LOCK_FILE, SECRET_KEY_FILE};
    use std::os::unix::fs::PermissionsExt;

    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o7777
    };
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let options = ChildOptions {
        umask: Some(0o022),
        generated_key: true,
        ..ChildOptions::default()
    };
    // The harness makes the data dir itself (0755 under this umask), as an operator or a volume mount would.
    let mut server = ChildServer::start_with(dir.path(), &sandbox.base_url(), options).await;
    credential(&server, "main").await;
    let data = server.data_dir().to_path_buf();
    let database = data.join(DATABASE_FILE);
    let wal = data.join(format!("{DATABASE_FILE}-wal"));
    let shm = data.join(format!("{DATABASE_FILE}-shm"));
    assert_eq!(mode(&data), 0o700);
    for path in [
        &database,
        &wal,
        &shm,
        &data.join(SECRET_KEY_FILE),
        &data.join(LOCK_FILE),
    ] {
        assert_eq!(mode(path), 0o600, "{}", path.display());
    }
    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());

    // What an older version left behind: a 0755 dir and a 0644 database.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
    server.restart().await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&database), 0o600);
    let log = std::fs::read_to_string(server.log_path()).unwrap();
    let log = log.rsplit("--- starting on").next().unwrap();
    assert!(
        log.contains("data dir was accessible to group or others; tightened to 0700"),
        "{log}"
    );
    assert!(
        log.contains("file was accessible to group or others; tightened to 0600"),
        "{log}"
    );
    // Still the same data, readable with the generated key.
    credential(&server, "second").await;
    let stopped = server.stop().await;
    assert!(stopped.success(), "{stopped}\n{}", server.log_tail());
}
