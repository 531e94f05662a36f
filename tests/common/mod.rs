//! A real server on an ephemeral port with a temp data dir (in this process, or as a child process
//! in [`child`]), and a real groove-sandbox beside it.

#![allow(dead_code)]

pub mod child;
pub mod relay;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use groove_destination::proto::credential_service_client::CredentialServiceClient;
use groove_destination::proto::delivery_service_client::DeliveryServiceClient;
use groove_destination::proto::destination_service_client::DestinationServiceClient;
use groove_destination::settings::{DatabaseUrl, Settings};
use groove_sandbox::{self as sandbox, SandboxConfig, SandboxHandle};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub const SANDBOX_KEY: &str = "sandbox-test-key-0123456789";

pub async fn start_sandbox() -> SandboxHandle {
    start_sandbox_with(SandboxConfig {
        api_key: SANDBOX_KEY.to_string(),
        ..SandboxConfig::default()
    })
    .await
}

pub async fn start_sandbox_with(config: SandboxConfig) -> SandboxHandle {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind sandbox");
    sandbox::start(listener, config)
        .await
        .expect("start sandbox")
}

/// Where a test's server answers gRPC: in this process ([`TestServer`]) or as a child process
/// ([`child::ChildServer`]); the clients and the [`flows`] work with either.
#[allow(async_fn_in_trait)]
pub trait GrpcServer {
    fn grpc_addr(&self) -> SocketAddr;

    async fn channel(&self) -> Channel {
        channel_to(self.grpc_addr()).await
    }

    /// The bearer token every call carries; none by default.
    fn bearer_token(&self) -> Option<&str> {
        None
    }

    async fn credentials(&self) -> CredentialServiceClient<Authed> {
        CredentialServiceClient::with_interceptor(self.channel().await, bearer(self.bearer_token()))
    }

    async fn destinations(&self) -> DestinationServiceClient<Authed> {
        DestinationServiceClient::with_interceptor(
            self.channel().await,
            bearer(self.bearer_token()),
        )
    }

    async fn delivery(&self) -> DeliveryServiceClient<Authed> {
        DeliveryServiceClient::with_interceptor(self.channel().await, bearer(self.bearer_token()))
    }
}

/// A channel whose calls carry a bearer token (or none).
pub type Authed = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to every call: the `send` command's own interceptor.
pub use groove_destination::cli::send::BearerToken;

pub fn bearer(token: Option<&str>) -> BearerToken {
    groove_destination::cli::send::bearer(token).expect("token is ascii")
}

/// A server as one caller sees it: over `channel`, with `token`.
pub struct AsCaller {
    pub channel: Channel,
    pub token: Option<String>,
}

impl AsCaller {
    pub async fn plaintext(server: &impl GrpcServer, token: Option<&str>) -> AsCaller {
        AsCaller {
            channel: server.channel().await,
            token: token.map(str::to_string),
        }
    }
}

impl GrpcServer for AsCaller {
    fn grpc_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    async fn channel(&self) -> Channel {
        self.channel.clone()
    }

    fn bearer_token(&self) -> Option<&str> {
        self.token.as_deref()
    }
}

/// A channel to the server at `addr`, waiting briefly for one that is still coming up.
pub async fn channel_to(addr: SocketAddr) -> Channel {
    let endpoint = format!("http://{addr}");
    for _ in 0..100 {
        if let Ok(channel) = Channel::from_shared(endpoint.clone())
            .expect("endpoint")
            .connect()
            .await
        {
            return channel;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("server at {endpoint} did not come up");
}

pub struct TestServer {
    pub addr: SocketAddr,
    /// Where metrics are served, when they are on.
    pub metrics_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), groove_destination::ServeError>>,
}

impl TestServer {
    pub async fn start(data_dir: &Path, groove_url: &str) -> TestServer {
        Self::start_with(data_dir, groove_url, |_| {}).await
    }

    /// [`TestServer::start`] with settings changed by `adjust` (e.g. `webhook_allowed_hosts`, which is empty in
    /// `Settings::for_tests`, as by default: a webhook on loopback must be allowed explicitly).
    pub async fn start_with(
        data_dir: &Path,
        groove_url: &str,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestServer {
        let mut settings = Settings::for_tests(
            data_dir.to_path_buf(),
            groove_url.parse().expect("groove url"),
        );
        adjust(&mut settings);
        TestServer::start_with_settings(settings).await
    }

    /// [`TestServer::start`] on a PostgreSQL database (`postgres://…`) instead of the SQLite store, with the
    /// secret key given rather than read from the data dir, as replicas sharing a database are set up.
    pub async fn start_on_database(
        data_dir: &Path,
        groove_url: &str,
        database_url: &str,
        secret_key: &str,
    ) -> TestServer {
        Self::start_with(data_dir, groove_url, |settings| {
            settings.database_url =
                Some(DatabaseUrl::parse(database_url).expect("a postgres:// url"));
            settings.secret_key = Some(secret_key.to_string());
        })
        .await
    }

    /// A server with these settings, on an ephemeral loopback port.
    pub async fn start_with_settings(settings: Settings) -> TestServer {
        Self::start_listening(settings, None).await
    }

    /// [`TestServer::start`] with metrics served on another ephemeral loopback port.
    pub async fn start_with_metrics(data_dir: &Path, groove_url: &str) -> TestServer {
        let settings = Settings::for_tests(
            data_dir.to_path_buf(),
            groove_url.parse().expect("groove url"),
        );
        let metrics = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind metrics");
        Self::start_listening(settings, Some(metrics)).await
    }

    async fn start_listening(settings: Settings, metrics: Option<TcpListener>) -> TestServer {
        let data_dir = settings.data_dir.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind server");
        let addr = listener.local_addr().expect("local addr");
        let metrics_addr = metrics
            .as_ref()
            .map(|listener| listener.local_addr().expect("metrics addr"));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(groove_destination::serve_with_metrics(
            settings,
            listener,
            metrics,
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr,
            metrics_addr,
            data_dir,
            shutdown: Some(tx),
            task,
        }
    }

    /// Sends the shutdown signal without waiting for the server to finish.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(mut self) {
        self.signal_shutdown();
        self.task
            .await
            .expect("server task")
            .expect("server result");
    }
}

impl GrpcServer for TestServer {
    fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The fields a refusal's `google.rpc.BadRequest` names.
pub fn fields_of(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt;
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|violation| violation.field)
                .collect()
        })
        .unwrap_or_default()
}

/// Lowercase hex SHA-256 of `token`, as the callers file lists it.
pub fn sha256_hex(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Replaces a file the way an editor, a Secret update or cert-manager's mount does: a new file renamed over
/// the old one.
pub fn replace_file(path: &Path, text: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, text).expect("write the new file");
    std::fs::rename(&temporary, path).expect("rename it over the old one");
}

pub mod flows {
    //! Small steps most delivery tests share.

    use groove_destination::proto::{self, destination_config::Endpoint, send_records_request};
    use serde_json::Value;

    use super::{GrpcServer, SANDBOX_KEY};

    pub async fn credential(server: &impl GrpcServer, id: &str) {
        credential_with_key(server, id, SANDBOX_KEY).await;
    }

    /// Stores `key` as credential `id`.
    pub async fn credential_with_key(
        server: &impl GrpcServer,
        id: &str,
        key: &str,
    ) -> proto::Credential {
        server
            .credentials()
            .await
            .create_credential(proto::CreateCredentialRequest {
                credential_id: id.to_string(),
                display_name: format!("{id} key"),
                api_key: key.to_string(),
            })
            .await
            .expect("create credential")
            .into_inner()
            .credential
            .expect("credential in response")
    }

    pub fn template(template_id: &str, parameters: &[(&str, &str)]) -> proto::DestinationConfig {
        proto::DestinationConfig {
            endpoint: Some(Endpoint::Template(proto::TemplateEndpoint {
                template_id: template_id.to_string(),
                parameters: parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
            ..Default::default()
        }
    }

    pub fn manual(method: proto::HttpMethod, url: &str) -> proto::DestinationConfig {
        proto::DestinationConfig {
            endpoint: Some(Endpoint::Manual(proto::ManualEndpoint {
                method: method as i32,
                url: url.to_string(),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    /// Creates (credential `main` must exist) and activates a destination.
    pub async fn active_destination(
        server: &impl GrpcServer,
        id: &str,
        config: proto::DestinationConfig,
    ) -> String {
        let mut client = server.destinations().await;
        let created = client
            .create_destination(proto::CreateDestinationRequest {
                destination_id: id.to_string(),
                destination: Some(proto::Destination {
                    display_name: id.to_string(),
                    credential: "credentials/main".to_string(),
                    config: Some(config),
                    ..Default::default()
                }),
            })
            .await
            .expect("create destination")
            .into_inner()
            .destination
            .expect("destination");
        client
            .activate_destination(proto::ActivateDestinationRequest {
                name: created.name.clone(),
            })
            .await
            .expect("activate");
        created.name
    }

    /// A create_ticket record whose body names its id.
    pub fn ticket(id: &str) -> proto::Record {
        raw(
            id,
            serde_json::json!({"body": format!("[{id}] help"), "from": "customer@example.com", "to": "support@sandbox.example.com"}),
        )
    }

    /// Sends `records` as the last message of an open stream, half-closes it, and returns everything it
    /// answered; the stream must end OK.
    pub async fn finish(
        requests: tokio::sync::mpsc::Sender<proto::SendRecordsRequest>,
        stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
        records: Vec<proto::Record>,
    ) -> Answered {
        requests
            .send(batch(records))
            .await
            .expect("queue the last records");
        drop(requests);
        let (answered, ended) = drain_to_end(stream).await;
        ended.expect("the stream ends ok");
        answered
    }

    pub fn raw(id: &str, json: Value) -> proto::Record {
        proto::Record {
            id: id.to_string(),
            data: Some(proto::record::Data::RawJson(json.to_string().into_bytes())),
        }
    }

    pub fn start(destination: &str) -> proto::SendRecordsRequest {
        proto::SendRecordsRequest {
            message: Some(send_records_request::Message::Start(proto::StreamStart {
                destination: destination.to_string(),
                ..Default::default()
            })),
        }
    }

    pub fn batch(records: Vec<proto::Record>) -> proto::SendRecordsRequest {
        proto::SendRecordsRequest {
            message: Some(send_records_request::Message::Records(proto::RecordBatch {
                records,
            })),
        }
    }

    /// Opens a stream to `destination`; records go in through the sender, answers come out of the stream.
    pub async fn open(
        server: &impl GrpcServer,
        destination: &str,
    ) -> (
        tokio::sync::mpsc::Sender<proto::SendRecordsRequest>,
        tonic::Streaming<proto::SendRecordsResponse>,
    ) {
        let (requests, receiver) = tokio::sync::mpsc::channel(16);
        requests
            .send(start(destination))
            .await
            .expect("queue start");
        let stream = server
            .delivery()
            .await
            .send_records(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await
            .expect("open stream")
            .into_inner();
        (requests, stream)
    }

    /// Everything a finished stream answered.
    #[derive(Debug, Default)]
    pub struct Answered {
        pub results: Vec<proto::DeliveryResult>,
        pub summary: Option<proto::DeliverySummary>,
    }

    impl Answered {
        /// The one result naming `record_id`.
        pub fn of(&self, record_id: &str) -> &proto::DeliveryResult {
            let found: Vec<_> = self
                .results
                .iter()
                .filter(|result| result.record_ids.iter().any(|id| id == record_id))
                .collect();
            assert_eq!(
                found.len(),
                1,
                "record {record_id} has {} results",
                found.len()
            );
            found[0]
        }

        pub fn outcomes(&self) -> Vec<(String, proto::Outcome)> {
            let mut outcomes: Vec<_> = self
                .results
                .iter()
                .flat_map(|result| {
                    result
                        .record_ids
                        .iter()
                        .map(move |id| (id.clone(), result.outcome()))
                })
                .collect();
            outcomes.sort();
            outcomes
        }
    }

    /// Streams `messages` after `start` and collects every answer until the stream ends.
    pub async fn send(
        server: &impl GrpcServer,
        destination: &str,
        messages: Vec<Vec<proto::Record>>,
    ) -> Result<Answered, tonic::Status> {
        let mut requests = vec![start(destination)];
        requests.extend(messages.into_iter().map(batch));
        let mut stream = server
            .delivery()
            .await
            .send_records(tokio_stream::iter(requests))
            .await?
            .into_inner();
        let answered = drain(&mut stream).await?;
        assert!(answered.summary.is_some(), "stream ended without a summary");
        Ok(answered)
    }

    /// Reads messages until at least `count` results came.
    pub async fn next_results(
        stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
        count: usize,
    ) -> Vec<proto::DeliveryResult> {
        let mut results = Vec::new();
        while results.len() < count {
            let message = stream
                .message()
                .await
                .expect("stream error")
                .expect("stream ended early");
            assert!(message.summary.is_none(), "summary before {count} results");
            results.extend(message.results);
        }
        results
    }

    /// Everything until the stream ends, and how it ended: what a stream that stops early answered before its
    /// status is part of what is checked.
    pub async fn drain_to_end(
        stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
    ) -> (Answered, Result<(), tonic::Status>) {
        let mut answered = Answered::default();
        loop {
            match stream.message().await {
                Ok(Some(message)) => {
                    assert!(answered.summary.is_none(), "message after the summary");
                    answered.results.extend(message.results);
                    answered.summary = message.summary;
                }
                Ok(None) => return (answered, Ok(())),
                Err(status) => return (answered, Err(status)),
            }
        }
    }

    /// Everything until the stream ends, or the status it ends with.
    pub async fn drain(
        stream: &mut tonic::Streaming<proto::SendRecordsResponse>,
    ) -> Result<Answered, tonic::Status> {
        let mut answered = Answered::default();
        while let Some(message) = stream.message().await? {
            assert!(answered.summary.is_none(), "message after the summary");
            assert!(
                !message.results.is_empty() || message.summary.is_some(),
                "empty response message"
            );
            answered.results.extend(message.results);
            answered.summary = message.summary;
        }
        Ok(answered)
    }
}
