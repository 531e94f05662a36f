//! Changes heard as they are made: an open stream stops as soon as its destination is paused or deleted through
//! the admin layer, without waiting for its poll of the destination's state.

use std::sync::Arc;
use std::time::Duration;

use groove_destination::admin::{DestinationAdmin, NewDestination};
use groove_destination::delivery::{Engine, EngineOptions, Interruption, StreamEvent};
use groove_destination::domain::credential::ApiKey;
use groove_destination::domain::destination::{
    DestinationConfig, DestinationState, Endpoint, TemplateEndpoint,
};
use groove_destination::groove::GrooveClient;
use groove_destination::store::{NewCredential, SecretBox, SqliteStore, Store};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Far beyond anything the test waits for: a stream that stops stopped because it heard the change.
const POLL_NEVER: Duration = Duration::from_secs(30 * 24 * 3600);
/// Paused time jumps here at once if the stream never stops: the test then fails instead of hanging.
const GIVE_UP: Duration = Duration::from_secs(24 * 3600);

struct Setup {
    _dir: tempfile::TempDir,
    engine: Engine,
    admin: DestinationAdmin,
}

/// An engine whose streams poll their destination's state only after [`POLL_NEVER`], an admin layer on the same
/// feed, and an active destination `d1`. Nothing calls Groove: the streams get no records.
async fn setup() -> Setup {
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
    let groove = GrooveClient::new(&"http://127.0.0.1:9/v1/".parse().unwrap()).unwrap();
    let engine = Engine::start(
        store.clone(),
        groove,
        EngineOptions {
            destination_check_every: POLL_NEVER,
            ..EngineOptions::default()
        },
    )
    .await
    .unwrap();
    let admin = DestinationAdmin::new(store, engine.base_url().clone(), engine.changes());
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
        engine,
        admin,
    }
}

/// Opens a stream on `d1` whose client sends nothing and stays connected; returns how it ended.
async fn open_stream(
    setup: &Setup,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<StreamEvent>,
    mpsc::Sender<Result<Vec<groove_destination::delivery::IncomingRecord>, Interruption>>,
) {
    let session = setup
        .engine
        .open_session("d1", "destinations/d1")
        .await
        .unwrap();
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
    let (run, events, _input) = open_stream(&setup).await;
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
    let (run, events, _input) = open_stream(&setup).await;
    setup.admin.delete("d1", None).await.unwrap();
    tokio::time::timeout(GIVE_UP, run)
        .await
        .expect("the stream did not stop on hearing that its destination was deleted")
        .unwrap();
    let why = interruption(events).await;
    assert!(matches!(why, Interruption::Deleted(_)), "{why:?}");
}
