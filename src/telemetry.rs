//! Logs and traces: the tracing subscriber (text or JSON lines on stderr), the OpenTelemetry tracer behind
//! every span, and the W3C trace context read from incoming calls.
//!
//! Spans always go through an OpenTelemetry tracer, so a caller's `traceparent` gives each call, stream and
//! Groove call a trace id and a span id that the JSON logs carry; they are exported over OTLP/gRPC only when
//! an endpoint is set.
//!
//! Entering and leaving spans is kept cheap, because the delivery tasks run inside their stream's span and are
//! polled several times per record: the OpenTelemetry layer does not see enters and exits at all
//! ([`WithoutEnterExit`]), so no OpenTelemetry context is made current while a span runs; a log line looks its
//! span's ids up instead ([`SpanIds`]).

use std::any::TypeId;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use thiserror::Error;
use tracing::dispatcher::WeakDispatch;
use tracing::level_filters::LevelFilter;
use tracing::{span, Dispatch, Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};
use url::Url;

use crate::settings::{LogFormat, Settings};

/// The service name in exported spans.
pub const SERVICE_NAME: &str = "groove-destination";
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The spans traced are this crate's (its calls, streams and Groove calls), not those of the libraries under it.
const TRACED_TARGET: &str = "groove_destination";
/// The target of the spans that exist only to be exported: one per Groove call. They are traced only with an
/// OTLP endpoint, and never listed in log lines (a line written during a Groove call has its stream's span), so
/// that without an endpoint they cost nothing per record.
pub const EXPORTED_ONLY_TARGET: &str = "groove_destination::exported";
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
fn subscriber(settings: &Settings, provider: &SdkTracerProvider) -> Dispatch {
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(SERVICE_NAME))
        .with_location(false)
        .with_threads(false)
        .with_tracked_inactivity(false)
        .with_context_activation(false)
        .with_filter(traced(settings.otlp_endpoint.is_some()));
    let filter = || {
        let not_exported_only = Targets::new()
            .with_default(Level::TRACE)
            .with_target(EXPORTED_ONLY_TARGET, LevelFilter::OFF);
        tracing_subscriber::EnvFilter::new(&settings.log).and(not_exported_only)
    };
    let registry = tracing_subscriber::registry().with(WithoutEnterExit(otel));
    let ids = SpanIds::default();
    let dispatch = match settings.log_format {
        LogFormat::Text => Dispatch::new(registry.with(text_layer().with_filter(filter()))),
        LogFormat::Json => {
            Dispatch::new(registry.with(json_layer(ids.clone()).with_filter(filter())))
        }
    };
    ids.set(&dispatch);
    dispatch
}

/// The spans the tracer sees: the service's, and those it has only for export when they are exported.
fn traced(exported: bool) -> Targets {
    let traced = Targets::new().with_target(TRACED_TARGET, Level::INFO);
    if exported {
        traced
    } else {
        traced.with_target(EXPORTED_ONLY_TARGET, LevelFilter::OFF)
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
fn json_layer<S>(ids: SpanIds) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    let mut layer = json_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_current_span(true)
        .with_span_list(true);
    let inner = layer.inner_layer_mut();
    let trace_ids = ids.clone();
    inner.add_dynamic_field("trace_id", move |event, _| {
        trace_ids.of(event).map(|(trace_id, _)| trace_id)
    });
    inner.add_dynamic_field("span_id", move |event, _| {
        ids.of(event).map(|(_, span_id)| span_id)
    });
    layer
}

/// The OpenTelemetry ids of the span a log line is written in. They are looked up through the dispatch that
/// holds the spans — the log layer's own view of spans leaves out those its filter drops, which the tracer
/// still traces — so the dispatch is set here once it is built.
#[derive(Clone, Default)]
struct SpanIds(Arc<OnceLock<WeakDispatch>>);

impl SpanIds {
    fn set(&self, dispatch: &Dispatch) {
        let _ = self.0.set(dispatch.downgrade());
    }

    /// The trace and span ids of `event`'s span, when it is written inside a traced one.
    fn of(&self, event: &Event<'_>) -> Option<(String, String)> {
        self.of_span(event.parent())
    }

    /// The ids of `explicit` or, without one, of the span being executed: those of the nearest span with
    /// OpenTelemetry data, from it upwards (spans of other crates are not traced).
    fn of_span(&self, explicit: Option<&span::Id>) -> Option<(String, String)> {
        let dispatch = self.0.get()?.upgrade()?;
        let registry = dispatch.downcast_ref::<Registry>()?;
        let id = match explicit {
            Some(id) => id.clone(),
            None => dispatch.current_span().id()?.clone(),
        };
        let ids = registry.span(&id)?.scope().find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), &dispatch)?;
            let otel_span = context.span();
            let span_context = otel_span.span_context();
            span_context.is_valid().then(|| {
                (
                    span_context.trace_id().to_string(),
                    span_context.span_id().to_string(),
                )
            })
        });
        ids
    }
}

/// A layer that passes everything on to `L` except entering and leaving spans. For the OpenTelemetry layer
/// that means its spans end when they close (the last handle is dropped) rather than when last left, and that
/// entering a span does not lock its OpenTelemetry data nor read the clock.
struct WithoutEnterExit<L>(L);

impl<S, L> Layer<S> for WithoutEnterExit<L>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        self.0.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.0.on_layer(subscriber);
    }

    fn register_callsite(
        &self,
        metadata: &'static Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        self.0.register_callsite(metadata)
    }

    fn enabled(&self, metadata: &Metadata<'_>, context: Context<'_, S>) -> bool {
        self.0.enabled(metadata, context)
    }

    fn on_new_span(
        &self,
        attributes: &span::Attributes<'_>,
        id: &span::Id,
        context: Context<'_, S>,
    ) {
        self.0.on_new_span(attributes, id, context);
    }

    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, context: Context<'_, S>) {
        self.0.on_record(id, values, context);
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, context: Context<'_, S>) {
        self.0.on_follows_from(id, follows, context);
    }

    fn event_enabled(&self, event: &Event<'_>, context: Context<'_, S>) -> bool {
        self.0.event_enabled(event, context)
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        self.0.on_event(event, context);
    }

    fn on_close(&self, id: span::Id, context: Context<'_, S>) {
        self.0.on_close(id, context);
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, context: Context<'_, S>) {
        self.0.on_id_change(old, new, context);
    }

    // The OpenTelemetry layer is found through this (`OpenTelemetrySpanExt`, `get_otel_context`).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            return Some(self as *const Self as *const ());
        }
        // SAFETY: forwarded as is; `L` answers for its own types.
        unsafe { self.0.downcast_raw(id) }
    }
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

    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";

    /// The ids the logs see inside a call from a traced caller, inside a span of the call's work, and inside
    /// a library's span within that, under a subscriber made for `log`.
    fn ids_inside_a_call(log: &str, log_format: LogFormat) -> [Option<(String, String)>; 3] {
        let provider = tracer_provider(None).unwrap();
        let ids = SpanIds::default();
        let dispatch = subscriber(&settings(log, log_format), &provider);
        ids.set(&dispatch);
        tracing::dispatcher::with_default(&dispatch, || {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                "traceparent",
                format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")
                    .parse()
                    .unwrap(),
            );
            let call = tracing::info_span!("grpc call");
            tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(
                &call,
                incoming_context(&headers),
            )
            .unwrap();
            call.in_scope(|| {
                let in_call = ids.of_span(None);
                tracing::info_span!("groove call").in_scope(|| {
                    let in_work = ids.of_span(None);
                    let in_library = tracing::info_span!(target: "hyper", "connection")
                        .in_scope(|| ids.of_span(None));
                    [in_call, in_work, in_library]
                })
            })
        })
    }

    #[test]
    fn a_call_is_traced_in_its_callers_trace_whatever_the_log_level() {
        for log in ["info", "warn", "off"] {
            for format in [LogFormat::Text, LogFormat::Json] {
                let [in_call, in_work, in_library] = ids_inside_a_call(log, format)
                    .map(|ids| ids.unwrap_or_else(|| panic!("{log} {format:?}: no trace context")));
                assert_eq!(in_call.0, CALLER_TRACE);
                assert_ne!(in_call.1, CALLER_SPAN);
                assert_eq!(in_work.0, CALLER_TRACE, "{log} {format:?}");
                assert_ne!(
                    in_work.1, in_call.1,
                    "{log} {format:?}: the work has a span of its own"
                );
                assert_eq!(
                    in_library, in_work,
                    "{log} {format:?}: a library's span is not traced"
                );
            }
        }
    }

    #[test]
    fn spans_for_export_only_exist_only_when_exported() {
        let provider = tracer_provider(None).unwrap();
        for (endpoint, exists) in [(None, false), (Some("http://127.0.0.1:4317"), true)] {
            for log in ["info", "trace"] {
                let mut settings = settings(log, LogFormat::Json);
                settings.otlp_endpoint = endpoint.map(|url| Url::parse(url).unwrap());
                let dispatch = subscriber(&settings, &provider);
                let ids = SpanIds::default();
                ids.set(&dispatch);
                tracing::dispatcher::with_default(&dispatch, || {
                    let stream = tracing::info_span!("record stream");
                    let _stream = stream.enter();
                    let call = tracing::info_span!(target: EXPORTED_ONLY_TARGET, "groove call");
                    assert_eq!(!call.is_disabled(), exists, "{endpoint:?} {log}");
                    let _call = call.enter();
                    // A line written during the call has the call's ids, or else the stream's.
                    let stream_ids = ids.of_span(stream.id().as_ref());
                    let call_ids = ids.of_span(None);
                    assert!(call_ids.is_some(), "{endpoint:?} {log}");
                    assert_eq!(call_ids != stream_ids, exists, "{endpoint:?} {log}");
                });
            }
        }
    }

    #[test]
    fn outside_any_span_a_log_line_has_no_ids() {
        let provider = tracer_provider(None).unwrap();
        let ids = SpanIds::default();
        let dispatch = subscriber(&settings("info", LogFormat::Json), &provider);
        ids.set(&dispatch);
        tracing::dispatcher::with_default(&dispatch, || assert_eq!(ids.of_span(None), None));
    }

    #[test]
    fn a_malformed_traceparent_is_no_context() {
        let mut headers = http::HeaderMap::new();
        headers.insert("traceparent", "00-not-a-trace-01".parse().unwrap());
        let context = incoming_context(&headers);
        assert!(!context.span().span_context().is_valid());
    }
}
