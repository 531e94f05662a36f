//! The tower layer in front of every service: it authenticates each call, refuses it with UNAUTHENTICATED
//! or PERMISSION_DENIED before any service sees it, and hands the caller to the services in the request's
//! extensions, where they check destination limits and name the caller in their logs.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Request, Status};
use tower_layer::Layer;
use tower_service::Service;

use crate::api::error::ApiError;
use crate::api::names::DESTINATIONS;
use crate::auth::{check_destination, AuthError, Authenticator, Caller, Presented};

/// Wraps every service in a [`Guard`].
#[derive(Clone)]
pub struct GuardLayer {
    authenticator: Arc<Authenticator>,
}

impl GuardLayer {
    pub fn new(authenticator: Authenticator) -> Self {
        GuardLayer {
            authenticator: Arc::new(authenticator),
        }
    }
}

impl<S> Layer<S> for GuardLayer {
    type Service = Guard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guard {
            inner,
            authenticator: self.authenticator.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    authenticator: Arc<Authenticator>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, RequestBody, ResponseBody> Service<http::Request<RequestBody>> for Guard<S>
where
    S: Service<http::Request<RequestBody>, Response = http::Response<ResponseBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    RequestBody: Send + 'static,
    ResponseBody: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, mut request: http::Request<RequestBody>) -> Self::Future {
        let certificate = request
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(TlsConnectInfo::peer_certs)
            .and_then(|chain| chain.first().cloned());
        let presented = Presented {
            authorization: request
                .headers()
                .get(http::header::AUTHORIZATION)
                .map(|value| value.as_bytes()),
            certificate: certificate.as_deref(),
        };
        match self.authenticator.admit(request.uri().path(), &presented) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone is ready only after poll_ready; keep the polled one for this call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(error) => {
                tracing::info!(method = request.uri().path(), %error, "call refused");
                let status = Status::from(ApiError::from(error));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The caller the guard admitted. A request without one did not pass the guard, so it is refused.
pub fn caller<T>(request: &Request<T>) -> Result<Arc<Caller>, ApiError> {
    request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| {
            ApiError::from(AuthError::Missing {
                client_certificates: false,
            })
        })
}

/// The caller, after checking it may use the destination `id`.
pub fn caller_for_destination<T>(request: &Request<T>, id: &str) -> Result<Arc<Caller>, ApiError> {
    let caller = caller(request)?;
    check_destination(&caller, id)?;
    Ok(caller)
}

/// The caller, after checking it may use the destination named `name` in the request's `field`.
pub fn destination_caller<T>(
    request: &Request<T>,
    field: &str,
    name: &str,
) -> Result<Arc<Caller>, ApiError> {
    let id = DESTINATIONS.parse_name(field, name)?;
    caller_for_destination(request, &id)
}
