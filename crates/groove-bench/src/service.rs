//! The groove-destination child: start it against a sandbox with a scratch data dir, wait until its gRPC
//! health check says SERVING, and set up the credential and destinations the scenarios stream to.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use groove_destination::proto::{
    self, credential_service_client::CredentialServiceClient,
    delivery_service_client::DeliveryServiceClient, destination_config::Endpoint,
    destination_service_client::DestinationServiceClient, preview_requests_request,
};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::children::{free_port, log_tail, ChildGuard, ScratchDir};
use crate::fail::{BenchError, BenchResult, Context};

/// How long the service gets to answer its health check.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// The credential every bench destination uses.
const CREDENTIAL_ID: &str = "bench";

pub struct ServiceChild {
    pub guard: ChildGuard,
    pub channel: Channel,
    log: std::path::PathBuf,
}

impl ServiceChild {
    /// Starts the service on a free port, pointed at `groove_url`, and waits until it is SERVING.
    pub async fn start(
        binary: &std::path::Path,
        extra_args: &[String],
        groove_url: &str,
        scratch: &ScratchDir,
    ) -> BenchResult<Self> {
        let port = free_port()?;
        let data_dir = scratch.path().join("service-data");
        let log = scratch.path().join("service.log");
        let log_file = std::fs::File::create(&log).context("cannot create service.log")?;
        let child = Command::new(binary)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--groove-url", groove_url])
            // Per-stream info lines are harmless, but warn keeps the log (and its cost) out of the figures.
            .args(["--log", "warn"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("cannot share service.log")?)
            .stderr(log_file)
            .spawn()
            .context(format!("cannot start {}", binary.display()))?;
        let mut guard = ChildGuard::new("groove-destination", child);
        let channel = wait_until_serving(&mut guard, port)
            .await
            .map_err(|error| {
                BenchError::new(format!(
                    "groove-destination did not become ready: {error}\n{}",
                    log_tail(&log, 20)
                ))
            })?;
        Ok(ServiceChild {
            guard,
            channel,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    pub fn delivery(&self) -> DeliveryServiceClient<Channel> {
        // Results carry Groove's whole answer; a batched one (100 created tickets) is far beyond the 4 MiB default.
        DeliveryServiceClient::new(self.channel.clone()).max_decoding_message_size(64 << 20)
    }

    /// Stores the sandbox key as the bench credential.
    pub async fn create_credential(&self, api_key: &str) -> BenchResult<()> {
        CredentialServiceClient::new(self.channel.clone())
            .create_credential(proto::CreateCredentialRequest {
                credential_id: CREDENTIAL_ID.to_string(),
                display_name: "groove-bench".to_string(),
                api_key: api_key.to_string(),
            })
            .await
            .context("CreateCredential")?;
        Ok(())
    }

    /// Creates and activates a destination; returns its resource name.
    pub async fn active_destination(
        &self,
        id: &str,
        config: proto::DestinationConfig,
    ) -> BenchResult<String> {
        let mut client = DestinationServiceClient::new(self.channel.clone());
        let created = client
            .create_destination(proto::CreateDestinationRequest {
                destination_id: id.to_string(),
                destination: Some(proto::Destination {
                    display_name: format!("groove-bench {id}"),
                    credential: format!("credentials/{CREDENTIAL_ID}"),
                    config: Some(config),
                    ..Default::default()
                }),
            })
            .await
            .context(format!("CreateDestination {id}"))?
            .into_inner()
            .destination
            .context("CreateDestination answered without a destination")?;
        client
            .activate_destination(proto::ActivateDestinationRequest {
                name: created.name.clone(),
            })
            .await
            .context(format!("ActivateDestination {id}"))?;
        Ok(created.name)
    }

    /// The request the service would send for `record` (key redacted), to check the raw baseline against.
    pub async fn preview(
        &self,
        destination: &str,
        record: proto::Record,
    ) -> BenchResult<proto::PlannedRequest> {
        let response = DestinationServiceClient::new(self.channel.clone())
            .preview_requests(proto::PreviewRequestsRequest {
                source: Some(preview_requests_request::Source::Destination(
                    destination.to_string(),
                )),
                records: vec![record],
            })
            .await
            .context("PreviewRequests")?
            .into_inner();
        if let Some(error) = response.errors.first() {
            return Err(BenchError::new(format!(
                "the bench record is refused by the service: {} {}",
                error.field, error.description
            )));
        }
        response
            .requests
            .into_iter()
            .next()
            .context("PreviewRequests returned no request")
    }

    /// The service log so far, for a failure message.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log, 20)
    }
}

/// Polls the gRPC health check of the delivery service until it is SERVING, failing early if the child exits.
async fn wait_until_serving(guard: &mut ChildGuard, port: u16) -> BenchResult<Channel> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let mut last_error = String::from("not tried");
    while started.elapsed() < START_TIMEOUT {
        guard.ensure_running()?;
        match probe(&endpoint).await {
            Ok(channel) => return Ok(channel),
            Err(error) => last_error = error.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(BenchError::new(format!(
        "no SERVING health answer at {endpoint} within {START_TIMEOUT:?} (last: {last_error})"
    )))
}

async fn probe(endpoint: &str) -> BenchResult<Channel> {
    let channel = Channel::from_shared(endpoint.to_string())
        .context("bad endpoint")?
        .connect()
        .await
        .context("connect")?;
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "groove.destination.v1.DeliveryService".to_string(),
        })
        .await
        .context("health check")?
        .into_inner()
        .status();
    if status == ServingStatus::Serving {
        Ok(channel)
    } else {
        Err(BenchError::new(format!("health is {status:?}")))
    }
}

/// Create Ticket, one record per call, `concurrency` calls in flight.
pub fn create_ticket_config(concurrency: u32) -> proto::DestinationConfig {
    proto::DestinationConfig {
        endpoint: Some(Endpoint::Template(proto::TemplateEndpoint {
            template_id: "create_ticket".to_string(),
            parameters: Default::default(),
        })),
        delivery: Some(proto::DeliveryOptions {
            concurrency,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Manual `POST tickets` with batching on (a JSON array of up to `batch_size` records per call).
pub fn batched_tickets_config(batch_size: u32, concurrency: u32) -> proto::DestinationConfig {
    proto::DestinationConfig {
        endpoint: Some(Endpoint::Manual(proto::ManualEndpoint {
            method: proto::HttpMethod::Post as i32,
            url: "tickets".to_string(),
            ..Default::default()
        })),
        batching: Some(proto::Batching {
            enabled: true,
            batch_size,
            ..Default::default()
        }),
        delivery: Some(proto::DeliveryOptions {
            concurrency,
            ..Default::default()
        }),
        ..Default::default()
    }
}
