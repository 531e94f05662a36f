//! groove-destination: a gRPC service that delivers streams of records to the Groove helpdesk REST API.
//!
//! `serve` is what `main` and the integration tests both call: it runs the server on a listener until the
//! shutdown future resolves.

pub mod admin;
pub mod api;
pub mod auth;
pub mod cli;
pub mod delivery;
pub mod domain;
pub mod groove;
pub mod metrics;
pub mod settings;
pub mod store;
pub mod telemetry;

/// The generated gRPC contract (`proto/groove/destination/v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("groove.destination.v1");

    /// Encoded descriptors of the contract, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(
        env!("OUT_DIR"),
        "/groove_destination_descriptor.bin"
    ));
}

use std::future::Future;
use std::sync::Arc;

use thiserror::Error;
use tokio::net::TcpListener;

use crate::settings::Settings;
use crate::store::{
    DataDirError, DataDirLock, PostgresStore, ReplicaOptions, SecretBox, SqliteStore, Store,
    StoreError,
};

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The data dir is locked by another process, or cannot be prepared.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot open the store in {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("{0} (GROOVE_DESTINATION_SECRET_KEY or <data-dir>/secret.key)")]
    SecretKey(StoreError),
    #[error(transparent)]
    GrooveClient(#[from] crate::groove::ClientBuildError),
    #[error(transparent)]
    Engine(#[from] delivery::EngineStartError),
    #[error("cannot build server reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Security(#[from] auth::SecurityError),
    #[error("cannot listen on {address} (--metrics-listen): {source}")]
    MetricsListen {
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("grpc server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Runs the service on `listener` until `shutdown` resolves, then stops accepting calls and lets the ones in
/// flight finish. Metrics are served on `--metrics-listen` when it is set.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let metrics_listener = match settings.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .map_err(|source| ServeError::MetricsListen { address, source })?,
        ),
        None => None,
    };
    serve_with_metrics(settings, listener, metrics_listener, shutdown).await
}

/// [`serve`] with the metrics listener given (or none: metrics off) instead of bound from the settings.
pub async fn serve_with_metrics(
    settings: Settings,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let address = listener.local_addr().unwrap_or(settings.listen);
    let security = auth::set_up(&settings.security_options(), address)?;
    // Held until the server stops: a second process on this data dir is refused before it reads anything.
    // Replicas on PostgreSQL share the database instead, and need no lock.
    let _data_dir_lock = match settings.database_url {
        Some(_) => None,
        None => Some(DataDirLock::acquire(&settings.data_dir)?),
    };
    let secrets = match &settings.secret_key {
        Some(encoded) => SecretBox::from_encoded(encoded),
        None => SecretBox::load_or_create(&settings.data_dir),
    }
    .map_err(ServeError::SecretKey)?;
    let mut engine_options = settings.engine_options();
    let store: Arc<dyn Store> = match &settings.database_url {
        Some(url) => {
            let store_error = |source| ServeError::Store {
                path: url.redacted(),
                source,
            };
            let replica = ReplicaOptions {
                lease: settings.replica_lease,
                heartbeat: settings.replica_lease / 5,
            };
            let store = PostgresStore::open_with(url.expose(), secrets, replica)
                .await
                .map_err(store_error)?;
            // Replicas hear each other's changes and share each credential's rate through the database.
            engine_options.changes = Arc::new(store.change_feed().map_err(store_error)?);
            engine_options.pace_book = Some(Arc::new(store.pace_book()));
            Arc::new(store)
        }
        None => Arc::new(
            SqliteStore::open(&settings.data_dir, secrets).map_err(|source| ServeError::Store {
                path: settings.data_dir.display().to_string(),
                source,
            })?,
        ),
    };
    let groove = groove::GrooveClient::new(&settings.groove_url)?;
    let metrics = metrics_listener
        .as_ref()
        .map(|_| Arc::new(metrics::Metrics::new()));
    engine_options.metrics = metrics.clone();
    let engine = delivery::Engine::start(store.clone(), groove, engine_options).await?;
    let state = api::AppState::new(store, engine);
    log_serving(&settings, address);
    // Metrics outlive the gRPC server's drain, so a scrape can watch it.
    let metrics_stop = tokio_util::sync::CancellationToken::new();
    let metrics_task = metrics.zip(metrics_listener).map(|(metrics, listener)| {
        let stop = metrics_stop.clone();
        tokio::spawn(metrics::server::serve(metrics, listener, async move {
            stop.cancelled().await
        }))
    });
    let served = api::run(
        state,
        listener,
        security,
        settings.server_options(),
        shutdown,
    )
    .await;
    metrics_stop.cancel();
    if let Some(task) = metrics_task {
        let _ = task.await;
    }
    served
}

/// The start-up line: what an operator checks first when something is off.
fn log_serving(settings: &Settings, address: std::net::SocketAddr) {
    let (auth, tls) = settings.security_options().describe(address);
    tracing::info!(
        %address,
        tls,
        auth,
        groove_url = %settings.groove_url,
        data_dir = %settings.data_dir.display(),
        store = if settings.database_url.is_some() { "postgres" } else { "sqlite" },
        database = settings.database_url.as_ref().map(settings::DatabaseUrl::redacted),
        metrics_listen = settings.metrics_listen.map(|address| address.to_string()),
        otlp_endpoint = settings.otlp_endpoint.as_ref().map(url::Url::as_str),
        version = telemetry::VERSION,
        "groove-destination serving"
    );
}

/// Resolves on SIGTERM (what container runtimes send) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for sigint");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("sigint received, shutting down"),
        () = terminate => tracing::info!("sigterm received, shutting down"),
    }
}
