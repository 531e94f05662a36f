//! The gRPC server's connection settings on a real server: a connection past its max age is asked to go away
//! (the client opens a new one while its open stream goes on), and one past its grace is closed.
//!
//! Real time, with ages of a few hundred milliseconds: what is checked is behaviour (which connection a call
//! goes on, whether a stream survives), not how long anything took.

mod common;

use std::time::Duration;

use common::flows::{active_destination, batch, credential, next_results, open, template, ticket};
use common::relay::CountingRelay;
use common::{start_sandbox, GrpcServer, TestServer};
use tonic_health::pb::HealthCheckRequest;

const AGE: Duration = Duration::from_millis(300);
/// Well past `AGE` (and the grace): the server's timer has fired by then.
const PAST: Duration = Duration::from_millis(700);

async fn health_check(channel: tonic::transport::Channel) -> Result<(), tonic::Status> {
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(drop)
}

#[tokio::test]
async fn past_its_max_age_a_connection_is_asked_to_go_away_and_its_open_stream_finishes() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &sandbox.base_url(), |settings| {
        settings.max_connection_age = Some(AGE);
    })
    .await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;

    let relay = CountingRelay::start(server.addr).await;
    let channel = relay.channel().await;
    let client = common::AsCaller {
        channel: channel.clone(),
        token: None,
    };
    let (requests, mut stream) = open(&client, &name).await;
    requests.send(batch(vec![ticket("a-1")])).await.unwrap();
    next_results(&mut stream, 1).await;
    assert_eq!(relay.connections(), 1);

    tokio::time::sleep(PAST).await;
    // The old connection got GOAWAY: a new call goes on a new connection. A tonic channel still hands the
    // first call after a GOAWAY to the old connection, which refuses it (CANCELLED), and then reconnects.
    if let Err(status) = health_check(channel.clone()).await {
        assert_eq!(status.code(), tonic::Code::Cancelled, "{status:?}");
        health_check(channel.clone()).await.unwrap();
    }
    assert_eq!(relay.connections(), 2);
    // The stream opened before goes on, on the old connection, and ends OK.
    let answered = common::flows::finish(requests, &mut stream, vec![ticket("a-2")]).await;
    assert_eq!(answered.summary.unwrap().delivered, 2);
    server.stop().await;
}

#[tokio::test]
async fn past_its_max_age_and_grace_a_connection_is_closed_and_the_client_reconnects() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &sandbox.base_url(), |settings| {
        settings.max_connection_age = Some(AGE);
        settings.max_connection_age_grace = Some(Duration::from_millis(100));
    })
    .await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;

    let channel = server.channel().await;
    let client = common::AsCaller {
        channel: channel.clone(),
        token: None,
    };
    let (requests, mut stream) = open(&client, &name).await;
    requests.send(batch(vec![ticket("b-1")])).await.unwrap();
    next_results(&mut stream, 1).await;

    tokio::time::sleep(PAST).await;
    // The stream was cut with its connection.
    let cut = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the stream ended normally past its connection's age and grace"),
                Err(status) => break status,
            }
        }
    })
    .await
    .expect("the stream is still open long past its connection's age and grace");
    assert!(
        matches!(
            cut.code(),
            tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Internal
        ),
        "{cut:?}"
    );
    drop(requests);
    // The same channel connects again.
    health_check(channel).await.unwrap();
    server.stop().await;
}
