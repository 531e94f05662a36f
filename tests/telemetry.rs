//! Logs and traces of the real binary: a caller's W3C trace context reaches every JSON log line of the work
//! it asked for, and the start-up line and the stream summary are fields, not text.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::child::{ChildOptions, ChildServer};
use common::flows::{active_destination, batch, credential, drain, start, template, ticket};
use common::start_sandbox;
use common::GrpcServer;
use groove_destination::proto;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use serde_json::Value;

/// Trace ids as a caller's tracer would send them (W3C trace context, sampled).
const UNARY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const STREAM_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A child that has answered has written its log lines a moment later; this only bounds a broken server.
const LOG_WITHIN: Duration = Duration::from_secs(10);

fn traced<T>(message: T, trace_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{CALLER_SPAN}-01").parse().unwrap(),
    );
    request
}

async fn json_server(dir: &std::path::Path, groove_url: &str) -> ChildServer {
    ChildServer::start_with(
        dir,
        groove_url,
        ChildOptions {
            args: vec!["--log-format".into(), "json".into()],
            ..ChildOptions::default()
        },
    )
    .await
}

/// Every JSON line the server wrote so far.
fn log_lines(server: &ChildServer) -> Vec<Value> {
    std::fs::read_to_string(server.log_path())
        .unwrap()
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect()
}

fn message(line: &Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

/// The line whose message is `text`, once the server has written it.
async fn line_with(server: &ChildServer, text: &str) -> Value {
    let deadline = Instant::now() + LOG_WITHIN;
    loop {
        if let Some(line) = log_lines(server)
            .into_iter()
            .find(|line| message(line) == text)
        {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "no log line {text:?}\n{}",
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_callers_trace_id_is_on_every_log_line_of_its_calls_and_streams() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = json_server(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let doomed = active_destination(&server, "doomed", template("create_ticket", &[])).await;

    // A unary admin write.
    server
        .destinations()
        .await
        .delete_destination(traced(
            proto::DeleteDestinationRequest {
                name: doomed.clone(),
                ..Default::default()
            },
            UNARY_TRACE,
        ))
        .await
        .unwrap();
    let deleted = line_with(&server, "destination deleted").await;
    assert_eq!(deleted["trace_id"], UNARY_TRACE, "{deleted}");
    let span_id = deleted["span_id"].as_str().unwrap();
    assert_eq!(span_id.len(), 16, "{deleted}");
    assert_ne!(
        span_id, CALLER_SPAN,
        "the server's span is a child of the caller's"
    );
    assert_eq!(deleted["fields"]["destination"], doomed.as_str());
    assert_eq!(deleted["fields"]["caller"], "anonymous", "{deleted}");

    // A stream: its lines, those of its Groove calls' spans included, carry the stream's trace.
    let mut stream = server
        .delivery()
        .await
        .send_records(traced(
            tokio_stream::iter(vec![
                start(&name),
                batch(vec![ticket("t-1"), ticket("t-2")]),
            ]),
            STREAM_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    let answered = drain(&mut stream).await.unwrap();
    assert_eq!(answered.results.len(), 2);
    let closed = line_with(&server, "record stream closed").await;
    let opened = line_with(&server, "record stream opened").await;
    for line in [&opened, &closed] {
        assert_eq!(line["trace_id"], STREAM_TRACE, "{line}");
    }
    // The summary is fields, each count its own.
    let fields = &closed["fields"];
    assert_eq!(fields["destination"], name.as_str(), "{closed}");
    assert_eq!(fields["caller"], "anonymous", "{closed}");
    assert_eq!(fields["stream_id"].as_str().unwrap().len(), 32, "{closed}");
    assert_eq!(fields["received"], 2, "{closed}");
    assert_eq!(fields["delivered"], 2, "{closed}");
    assert_eq!(fields["calls"], 2, "{closed}");
    assert_eq!(fields["unanswered"], 0, "{closed}");
    assert!(fields["duration_ms"].is_u64(), "{closed}");

    // Lines of the untraced calls before have trace ids of their own, never the callers'.
    let lines = log_lines(&server);
    let created = lines
        .iter()
        .find(|line| message(line) == "destination created")
        .unwrap();
    let own = created["trace_id"].as_str().unwrap();
    assert!(own != UNARY_TRACE && own != STREAM_TRACE, "{created}");
    assert!(server.stop().await.success());
}

#[tokio::test]
async fn the_start_up_line_names_what_the_server_runs_with() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = json_server(dir.path(), &sandbox.base_url()).await;
    let line = line_with(&server, "groove-destination serving").await;
    let fields = &line["fields"];
    assert_eq!(fields["address"], server.addr().to_string(), "{line}");
    assert_eq!(fields["tls"], "off", "{line}");
    assert_eq!(fields["auth"], "unauthenticated loopback", "{line}");
    assert_eq!(fields["groove_url"], sandbox.base_url(), "{line}");
    assert_eq!(
        fields["data_dir"],
        server.data_dir().display().to_string(),
        "{line}"
    );
    assert_eq!(fields["store"], "sqlite", "{line}");
    assert_eq!(fields["version"], env!("CARGO_PKG_VERSION"), "{line}");
    assert!(fields.get("otlp_endpoint").is_none(), "{line}");
    assert!(line.get("trace_id").is_none(), "{line}");
    assert!(server.stop().await.success());
}

/// An OpenTelemetry collector: keeps every span exported to it.
#[derive(Clone, Default)]
struct Collector {
    /// Service name, trace id (hex) and name of each span.
    spans: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|attribute| attribute.key == "service.name")
                .and_then(|attribute| attribute.value.as_ref()?.value.as_ref())
                .map(|value| match value {
                    any_value::Value::StringValue(name) => name.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for span in resource_spans
                .scope_spans
                .into_iter()
                .flat_map(|scope| scope.spans)
            {
                let trace_id: String = span
                    .trace_id
                    .iter()
                    .map(|byte| format!("{byte:02x}"))
                    .collect();
                spans.push((service.clone(), trace_id, span.name));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

#[tokio::test]
async fn with_an_otlp_endpoint_the_spans_of_a_traced_call_reach_the_collector() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start_with(
        dir.path(),
        &sandbox.base_url(),
        ChildOptions {
            args: vec!["--otlp-endpoint".into(), endpoint],
            ..ChildOptions::default()
        },
    )
    .await;
    credential(&server, "main").await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    server
        .destinations()
        .await
        .list_destinations(traced(
            proto::ListDestinationsRequest::default(),
            UNARY_TRACE,
        ))
        .await
        .unwrap();
    let mut stream = server
        .delivery()
        .await
        .send_records(traced(
            tokio_stream::iter(vec![start(&name), batch(vec![ticket("t-1")])]),
            STREAM_TRACE,
        ))
        .await
        .unwrap()
        .into_inner();
    drain(&mut stream).await.unwrap();
    // Shutdown flushes the spans not yet exported.
    assert!(server.stop().await.success(), "{}", server.log_tail());

    let spans = collector.spans.lock().unwrap().clone();
    let has = |trace_id: &str, name: &str| {
        spans.iter().any(|(service, trace, span)| {
            service == "groove-destination" && trace == trace_id && span == name
        })
    };
    assert!(
        has(
            UNARY_TRACE,
            "/groove.destination.v1.DestinationService/ListDestinations"
        ),
        "{spans:?}"
    );
    assert!(
        has(
            STREAM_TRACE,
            "/groove.destination.v1.DeliveryService/SendRecords"
        ),
        "{spans:?}"
    );
    assert!(has(STREAM_TRACE, "record stream"), "{spans:?}");
    assert!(has(STREAM_TRACE, "POST"), "{spans:?}");
}
