//! Logs and traces: the tracing subscriber (text or JSON lines on stderr), the OpenTelemetry tracer behind
//! every span, and the W3C trace context read from incoming calls.
//!
//! Spans always go through an OpenTelemetry tracer, so a caller's `traceparent` gives each call, stream and
//! Groove call a trace id and a span id that the JSON logs carry; they are exported over OTLP/gRPC only when
//! an endpoint is set.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer as _;
use url::Url;

use crate::settings::{LogFormat, Settings};

/// The service name in exported spans.
pub const SERVICE_NAME: &str = "groove-destination";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The spans traced are this crate's (its calls, streams and Groove calls), not those of the libraries under it.
const TRACED_TARGET: &str = "groove_destination";
/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum TelemetryError {
    #[error("cannot set up the otlp exporter for {endpoint} (--otlp-endpoint): {source}")]
    Exporter {
        endpoint: String,
        source: opentelemetry_otlp::ExporterBuildError,
    },
    #[error("cannot install the log subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// The tracer provider, kept so that shutdown can flush it.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sets up logging and tracing for the process. With an OTLP endpoint it must run inside the Tokio
    /// runtime: the exporter's gRPC channel lives there.
    pub fn init(settings: &Settings) -> Result<Telemetry, TelemetryError> {
        let provider = tracer_provider(settings.otlp_endpoint.as_ref())?;
        // try_init also routes the `log` records of dependencies (rustls) into the subscriber.
        subscriber(settings, &provider).try_init()?;
        Ok(Telemetry { provider })
    }

    /// Sends the spans not yet exported; blocks up to a few seconds. Call it outside async code, with the
    /// runtime still running.
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_WITHIN) {
            eprintln!("warning: traces not flushed to the otlp endpoint: {error}");
        }
    }
}

/// Logs as `settings` say, and spans through `provider`'s tracer. Each layer filters for itself: the
/// service's spans are traced whatever `--log` leaves out of the logs.
fn subscriber(
    settings: &Settings,
    provider: &SdkTracerProvider,
) -> Box<dyn tracing::Subscriber + Send + Sync> {
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_filter(Targets::new().with_target(TRACED_TARGET, Level::INFO));
    let filter = || tracing_subscriber::EnvFilter::new(&settings.log);
    let registry = tracing_subscriber::registry().with(otel);
    match settings.log_format {
        LogFormat::Text => Box::new(registry.with(text_layer().with_filter(filter()))),
        LogFormat::Json => Box::new(registry.with(json_layer().with_filter(filter()))),
    }
}

/// A tracer provider that exports to `endpoint` in batches, or one that exports nothing.
fn tracer_provider(endpoint: Option<&Url>) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", VERSION))
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    let Some(endpoint) = endpoint else {
        return Ok(builder.build());
    };
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.as_str());
    if endpoint.scheme() == "https" {
        exporter =
            exporter.with_tls_config(tonic::transport::ClientTlsConfig::new().with_webpki_roots());
    }
    let exporter = exporter
        .build()
        .map_err(|source| TelemetryError::Exporter {
            endpoint: endpoint.to_string(),
            source,
        })?;
    Ok(builder.with_batch_exporter(exporter).build())
}

fn text_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    // Colours only on a terminal: escape codes garble collected logs.
    tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
}

/// JSON lines with the fields of the event, of its span and of every span above it, and — inside a traced
/// span — the `trace_id` and `span_id` at the top level, where log collectors look for them.
fn json_layer<S>() -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let mut layer = json_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_current_span(true)
        .with_span_list(true);
    let inner = layer.inner_layer_mut();
    // tracing-opentelemetry makes the span's OpenTelemetry context current while the span is entered.
    inner.add_dynamic_field("trace_id", |_, _| {
        current_ids().map(|(trace_id, _)| trace_id)
    });
    inner.add_dynamic_field("span_id", |_, _| current_ids().map(|(_, span_id)| span_id));
    layer
}

/// The trace and span ids of the span being executed, when there is one.
fn current_ids() -> Option<(String, String)> {
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            span_context.span_id().to_string(),
        )
    })
}

/// The W3C trace context (`traceparent`, `tracestate`) a call carries; an empty context when it carries none
/// or a malformed one.
pub fn incoming_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(log: &str, log_format: LogFormat) -> Settings {
        let mut settings = Settings::for_tests(
            PathBuf::from("unused"),
            Url::parse("http://127.0.0.1:1/v1").unwrap(),
        );
        settings.log = log.to_string();
        settings.log_format = log_format;
        settings
    }

    /// The ids of a call's span, as the logs see them while it runs, under a subscriber made for `log`.
    fn ids_inside_a_call(log: &str, log_format: LogFormat) -> Option<(String, String)> {
        let provider = tracer_provider(None).unwrap();
        let subscriber = subscriber(&settings(log, log_format), &provider);
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
                    .parse()
                    .unwrap(),
            );
            let span = tracing::info_span!("grpc call");
            tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &span,
                incoming_context(&headers),
            )
            .unwrap();
            span.in_scope(current_ids)
        })
    }

    #[test]
    fn a_call_is_traced_in_its_callers_trace_whatever_the_log_level() {
        for log in ["info", "warn", "off"] {
            for format in [LogFormat::Text, LogFormat::Json] {
                let (trace_id, span_id) = ids_inside_a_call(log, format)
                    .unwrap_or_else(|| panic!("{log} {format:?}: no trace context"));
                assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
                assert_ne!(span_id, "00f067aa0ba902b7");
            }
        }
    }

    #[test]
    fn a_malformed_traceparent_is_no_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        let context = incoming_context(&headers);
        assert!(!context.span().span_context().is_valid());
    }
}
