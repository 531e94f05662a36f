//! The gRPC layer: translates between the proto contract and the domain, and nothing else.

mod convert;
mod credentials;
mod delivery;
mod destinations;
pub mod error;
mod failed;
mod guard;
mod json;
pub mod json_wire;
mod names;
mod reflection;
mod results;
mod server;
mod templates;
mod trace;

use crate::admin::DestinationAdmin;
use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::auth::{accept_tls, Security};
use crate::delivery::Engine;
use crate::proto::credential_service_server::CredentialServiceServer;
use crate::proto::delivery_service_server::DeliveryServiceServer;
use crate::proto::destination_service_server::DestinationServiceServer;
use crate::store::Store;
use crate::ServeError;

pub use server::ServerOptions;

/// What every service needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    store: Arc<dyn Store>,
    engine: Engine,
    destinations: DestinationAdmin,
}

impl AppState {
    pub fn new(store: Arc<dyn Store>, engine: Engine) -> Self {
        let destinations =
            DestinationAdmin::new(store.clone(), engine.base_url().clone(), engine.changes());
        AppState {
            store,
            engine,
            destinations,
        }
    }
}

/// Largest SendRecords message accepted: room for 1000 records of 16 KiB (tonic's default is 4 MiB).
const MAX_RECORDS_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// Every service's health, and the server's as a whole (the empty name).
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    use tonic::server::NamedService;
    for service in [
        "",
        <CredentialServiceServer<credentials::Credentials> as NamedService>::NAME,
        <DestinationServiceServer<destinations::Destinations> as NamedService>::NAME,
        <DeliveryServiceServer<delivery::Delivery> as NamedService>::NAME,
    ] {
        reporter.set_service_status(service, status).await;
    }
}

/// Serves the three services, health and reflection on `listener` until `shutdown` resolves. Health turns
/// NOT_SERVING first, so a load balancer stops routing here before the listener closes.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    security: Security,
    options: ServerOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::Serving).await;

    let reflection_v1 = reflection::v1()?;
    let reflection_v1alpha = reflection::v1alpha()?;

    let drain_reporter = health_reporter.clone();
    let engine = state.engine.clone();
    let shutdown = async move {
        shutdown.await;
        set_health(&drain_reporter, ServingStatus::NotServing).await;
        engine.begin_shutdown();
        tracing::info!("health set to not serving; draining calls in flight");
    };

    // The trace layer is outermost, so a refused call is logged inside its caller's trace too.
    let router = options
        .apply(Server::builder())
        .layer(trace::TraceLayer)
        .layer(guard::GuardLayer::new(security.authenticator.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(CredentialServiceServer::new(credentials::Credentials::new(
            state.clone(),
        )))
        .add_service(DestinationServiceServer::new(
            destinations::Destinations::new(state.clone()),
        ))
        .add_service(
            DeliveryServiceServer::new(delivery::Delivery::new(state))
                .max_decoding_message_size(MAX_RECORDS_MESSAGE_BYTES),
        );
    match &security.tls {
        Some(config) => {
            router
                .serve_with_incoming_shutdown(
                    options.limit_age(accept_tls(listener, config.clone())),
                    shutdown,
                )
                .await?
        }
        None => {
            router
                .serve_with_incoming_shutdown(
                    options.limit_age(TcpListenerStream::new(listener)),
                    shutdown,
                )
                .await?
        }
    }
    tracing::info!("groove-destination stopped");
    Ok(())
}
