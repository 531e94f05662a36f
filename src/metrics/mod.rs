//! Prometheus metrics: the families and the handles the service records into (`registry`), and the endpoint
//! that serves them on `--metrics-listen` (`server`).

mod registry;
pub mod server;

pub use registry::{
    CallClass, CredentialMetrics, DestinationMetrics, Metrics, OpenStream, WebhookResult,
};
