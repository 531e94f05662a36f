//! The child-process server helper: SIGKILL, a restart on the same data dir, SIGTERM.

mod common;

use common::child::ChildServer;
use common::flows::{active_destination, credential, raw, send, template};
use common::start_sandbox;
use groove_destination::proto::Outcome;
use serde_json::json;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::HealthCheckRequest;

fn ticket(id: &str) -> groove_destination::proto::Record {
    raw(
        id,
        json!({"body": id, "from": "customer@example.com", "to": "support@sandbox.example.com"}),
    )
}

#[tokio::test]
async fn a_killed_server_restarts_on_its_data_and_still_decrypts_its_credentials() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
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
