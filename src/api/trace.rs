//! The outermost tower layer: one span per gRPC call, a child of the caller's trace when the call carries a
//! W3C `traceparent`, so everything logged while serving it carries the caller's trace id.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower_layer::Layer;
use tower_service::Service;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::incoming_context;

const HEALTH: &str = "/grpc.health.v1.Health/";
const TRACEPARENT: &str = "traceparent";

/// Wraps every service in a [`Traced`].
#[derive(Clone, Copy, Default)]
pub struct TraceLayer;

impl<S> Layer<S> for TraceLayer {
    type Service = Traced<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Traced { inner }
    }
}

#[derive(Clone)]
pub struct Traced<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Traced<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let path = request.uri().path();
        // Probes check health every few seconds: traced only when their caller asks for it.
        if path.starts_with(HEALTH) && !request.headers().contains_key(TRACEPARENT) {
            return Box::pin(self.inner.call(request));
        }
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", path));
        let span = tracing::info_span!(
            "grpc call",
            otel.name = path,
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
        );
        // Without a parent (no or a malformed traceparent) the span starts a trace of its own.
        let _ = span.set_parent(incoming_context(request.headers()));
        let call = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        let recorder = span.clone();
        Box::pin(
            async move {
                let response = call.await;
                // Errors come back in the headers (a trailers-only answer); success has its status in the
                // trailers, after this span.
                if let Ok(response) = &response {
                    if let Some(code) = response
                        .headers()
                        .get("grpc-status")
                        .and_then(|value| value.to_str().ok())
                        .and_then(|value| value.parse::<i64>().ok())
                    {
                        recorder.record("rpc.grpc.status_code", code);
                    }
                }
                response
            }
            .instrument(span),
        )
    }
}
