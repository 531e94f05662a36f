//! Changes heard as they are made: an open stream stops as soon as its destination is paused or deleted through
//! the admin layer, without waiting for its poll of the destination's state — in one process, and through
//! PostgreSQL's NOTIFY when the change is made on another replica.

use std::sync::Arc;
use std::time::Duration;

use groove_destination::admin::{DestinationAdmin, NewDestination};
use groove_destination::delivery::{Engine, EngineOptions, Interruption, StreamEvent};
use groove_destination::domain::credential::ApiKey;
use groove_destination::domain::destination::{
    DestinationConfig, DestinationState, Endpoint, TemplateEndpoint,
};
use groove_destination::groove::GrooveClient;
use groove_destination::store::{
    ChangeFeed, LocalChanges, NewCredential, PgChangeFeed, SecretBox, SqliteStore, Store,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Far beyond anything the test waits for: a stream that stops stopped because it heard the change.
const POLL_NEVER: Duration = Duration::from_secs(30 * 24 * 3600);
/// Paused time jumps here at once if the stream never stops: the test then fails instead of hanging.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);

struct Setup {
    _dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    engine: Engine,
    admin: DestinationAdmin,
}

/// An engine whose streams poll their destination's state only after [`POLL_NEVER`], an admin layer on the same
/// feed, and an active destination `d1`. Nothing calls Groove: the streams get no records.
async fn setup() -> Setup {
    setup_with(Arc::new(LocalChanges::new())).await
}

async fn engine_on(store: Arc<dyn Store>, changes: Arc<dyn ChangeFeed>) -> Engine {
    let groove = GrooveClient::new(&"http://127.0.0.1:9/v1/".parse().unwrap()).unwrap();
    Engine::start(
        store,
        groove,
        EngineOptions {
            destination_check_every: POLL_NEVER,
            changes,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap()
}

async fn setup_with(changes: Arc<dyn ChangeFeed>) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(dir.path(), SecretBox::generate().unwrap()).unwrap());
    store
        .create_credential(NewCredential {
            id: "k1".into(),
            display_name: "k1".into(),
            api_key: ApiKey::new("key-0001"),
            now_ms: 1,
        })
        .await
        .unwrap();
    let engine = engine_on(store.clone(), changes).await;
    let admin = DestinationAdmin::new(store.clone(), engine.base_url().clone(), engine.changes());
    admin
        .create(NewDestination {
            id: "d1".into(),
            display_name: "d1".into(),
            credential_id: "k1".into(),
            config: DestinationConfig {
                endpoint: Endpoint::Template(TemplateEndpoint {
                    template_id: "create_ticket".into(),
                    ..TemplateEndpoint::default()
                }),
                ..DestinationConfig::default()
            },
        })
        .await
        .unwrap();
    admin
        .change_state("destinations/d1", "d1", DestinationState::Active)
        .await
        .unwrap();
    Setup {
        _dir: dir,
        store,
        engine,
        admin,
    }
}

/// Opens a stream on `d1` whose client sends nothing and stays connected; returns how it ended.
async fn open_stream(
    engine: &Engine,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<StreamEvent>,
    mpsc::Sender<Result<Vec<groove_destination::delivery::IncomingRecord>, Interruption>>,
) {
    let session = engine.open_session("d1", "destinations/d1").await.unwrap();
    let (input, input_rx) = mpsc::channel(1);
    let (output, events) = mpsc::channel(16);
    let run = tokio::spawn(async move {
        session.run(ReceiverStream::new(input_rx), output).await;
    });
    (run, events, input)
}

async fn interruption(mut events: mpsc::Receiver<StreamEvent>) -> Interruption {
    while let Some(event) = events.recv().await {
        if let StreamEvent::Interrupted(why) = event {
            return why;
        }
    }
    panic!("the stream ended without saying why it stopped")
}

#[tokio::test(start_paused = true)]
async fn pausing_a_destination_stops_its_open_stream_at_once() {
    let setup = setup().await;
    let (run, events, _input) = open_stream(&setup.engine).await;
    setup
        .admin
        .change_state("destinations/d1", "d1", DestinationState::Paused)
        .await
        .unwrap();
    tokio::time::timeout(GIVE_UP, run)
        .await
        .expect("the stream did not stop on hearing that its destination was paused")
        .unwrap();
    let why = interruption(events).await;
    assert!(
        matches!(&why, Interruption::NotActive(message) if message.contains("paused")),
        "{why:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn deleting_a_destination_stops_its_open_stream_at_once() {
    let setup = setup().await;
    let (run, events, _input) = open_stream(&setup.engine).await;
    setup.admin.delete("d1", None).await.unwrap();
    tokio::time::timeout(GIVE_UP, run)
        .await
        .expect("the stream did not stop on hearing that its destination was deleted")
        .unwrap();
    let why = interruption(events).await;
    assert!(matches!(why, Interruption::Deleted(_)), "{why:?}");
}

/// A replica's feed on the test database.
fn pg_feed(db: &test_postgres::TestDatabase, replica: &str) -> Arc<PgChangeFeed> {
    let config: tokio_postgres::Config = db.url().parse().unwrap();
    let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        config.clone(),
        tokio_postgres::NoTls,
    ))
    .max_size(2)
    .build()
    .unwrap();
    Arc::new(PgChangeFeed::start(
        pool,
        config,
        tokio_postgres::NoTls,
        replica,
    ))
}

#[tokio::test]
async fn pausing_on_one_replica_stops_a_stream_on_another() {
    let db = test_postgres::TestDatabase::create().await;
    let (feed_a, feed_b) = (pg_feed(&db, "a"), pg_feed(&db, "b"));
    for feed in [&feed_a, &feed_b] {
        tokio::time::timeout(Duration::from_secs(30), feed.listening())
            .await
            .expect("listening");
    }
    // Two replicas sharing one store (as they share the database), each with its own feed.
    let a = setup_with(feed_a).await;
    let b = engine_on(a.store.clone(), feed_b).await;
    let (run, events, _input) = open_stream(&b).await;
    a.admin
        .change_state("destinations/d1", "d1", DestinationState::Paused)
        .await
        .unwrap();
    // Far beyond a NOTIFY's delay; the stream's own poll would come only after POLL_NEVER.
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the stream on replica b did not stop when replica a paused its destination")
        .unwrap();
    let why = interruption(events).await;
    assert!(matches!(why, Interruption::NotActive(_)), "{why:?}");
}
