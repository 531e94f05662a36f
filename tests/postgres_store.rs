//! The server on PostgreSQL (`--database-url`): what one process delivered, another on the same database
//! answers as duplicates, whatever its data dir; and a process with another secret key is refused at start.

mod common;

use common::flows::{active_destination, credential, raw, send, template};
use common::{start_sandbox, TestServer};
use groove_destination::settings::{DatabaseUrl, Settings};
use serde_json::json;
use test_postgres::TestDatabase;
use tokio::net::TcpListener;

/// A server known by its address alone, for a task that must not own the `TestServer`.
struct At(std::net::SocketAddr);

impl common::GrpcServer for At {
    fn grpc_addr(&self) -> std::net::SocketAddr {
        self.0
    }
}

const SECRET_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn tickets(count: usize) -> Vec<groove_destination::proto::Record> {
    (0..count)
        .map(|index| {
            raw(
                &format!("r-{index}"),
                json!({"body": format!("help {index}"), "from": "customer@example.com", "to": "support@sandbox.example.com"}),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_replay_to_another_process_on_the_same_database_is_answered_with_duplicates() {
    let sandbox = start_sandbox().await;
    let database = TestDatabase::create().await;
    let first_dir = tempfile::tempdir().unwrap();
    let first = TestServer::start_on_database(
        first_dir.path(),
        &sandbox.base_url(),
        database.url(),
        SECRET_KEY,
    )
    .await;
    credential(&first, "main").await;
    let name = active_destination(&first, "tickets", template("create_ticket", &[])).await;
    let sent = send(&first, &name, vec![tickets(20)]).await.unwrap();
    assert_eq!(sent.summary.as_ref().unwrap().delivered, 20);
    first.stop().await;

    // Another process, with a data dir of its own: everything it needs is in the database. Two of them at
    // once on one data dir, since the data dir lock is SQLite's alone.
    let second_dir = tempfile::tempdir().unwrap();
    let second = TestServer::start_on_database(
        second_dir.path(),
        &sandbox.base_url(),
        database.url(),
        SECRET_KEY,
    )
    .await;
    let third = TestServer::start_on_database(
        second_dir.path(),
        &sandbox.base_url(),
        database.url(),
        SECRET_KEY,
    )
    .await;
    let replay = send(&second, &name, vec![tickets(20)]).await.unwrap();
    let summary = replay.summary.as_ref().unwrap();
    assert_eq!(
        (summary.delivered, summary.duplicate),
        (0, 20),
        "{summary:?}"
    );
    let original = sent.of("r-3").response.as_ref().unwrap();
    assert_eq!(
        replay.of("r-3").response.as_ref().unwrap().body,
        original.body
    );
    let again = send(&third, &name, vec![tickets(20)]).await.unwrap();
    assert_eq!(again.summary.as_ref().unwrap().duplicate, 20);
    assert_eq!(
        sandbox.requests().len(),
        20,
        "each record reached groove once"
    );
    second.stop().await;
    third.stop().await;
}

#[tokio::test]
async fn a_process_with_another_secret_key_is_refused_at_start() {
    let sandbox = start_sandbox().await;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let first =
        TestServer::start_on_database(dir.path(), &sandbox.base_url(), database.url(), SECRET_KEY)
            .await;
    credential(&first, "main").await;

    let mut settings = Settings::for_tests(
        dir.path().to_path_buf(),
        sandbox.base_url().parse().unwrap(),
    );
    settings.database_url = Some(DatabaseUrl::parse(database.url()).unwrap());
    settings.secret_key = Some("ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=".to_string());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = groove_destination::serve(settings, listener, std::future::pending())
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret key"), "{err}");
    assert!(err.contains("every replica"), "{err}");
    first.stop().await;
}

/// A create in flight on one process and replayed to another meanwhile is not sent twice: the second waits for
/// the first's claim to end and answers from its recorded outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_in_flight_on_one_process_is_not_sent_again_by_another() {
    let sandbox = start_sandbox().await;
    let database = TestDatabase::create().await;
    let dir = tempfile::tempdir().unwrap();
    let first =
        TestServer::start_on_database(dir.path(), &sandbox.base_url(), database.url(), SECRET_KEY)
            .await;
    let second =
        TestServer::start_on_database(dir.path(), &sandbox.base_url(), database.url(), SECRET_KEY)
            .await;
    credential(&first, "main").await;
    let name = active_destination(&first, "tickets", template("create_ticket", &[])).await;
    sandbox.set_faults(groove_sandbox::Faults {
        latency: std::time::Duration::from_millis(1500),
        ..groove_sandbox::Faults::default()
    });
    let sending = {
        let name = name.clone();
        let first = At(first.addr);
        tokio::spawn(async move { send(&first, &name, vec![tickets(1)]).await })
    };
    // Until the first process has claimed the record, the second would simply send it: wait for the claim.
    let (client, connection) = tokio_postgres::connect(database.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    loop {
        let claims: i64 = client
            .query_one("SELECT count(*) FROM record_claims", &[])
            .await
            .unwrap()
            .get(0);
        if claims > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let replay = send(&second, &name, vec![tickets(1)]).await.unwrap();
    let sent = sending.await.unwrap().unwrap();
    assert_eq!(sent.summary.as_ref().unwrap().delivered, 1);
    let summary = replay.summary.as_ref().unwrap();
    assert_eq!(
        (summary.delivered, summary.duplicate),
        (0, 1),
        "{summary:?}"
    );
    assert_eq!(
        replay.of("r-0").response.as_ref().unwrap().body,
        sent.of("r-0").response.as_ref().unwrap().body
    );
    assert_eq!(sandbox.requests().len(), 1, "sent once");
    first.stop().await;
    second.stop().await;
}
