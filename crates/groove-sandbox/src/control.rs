//! Control endpoints under `/_sandbox/` (no auth, never faulted, never recorded) so a sandbox run
//! as a child process can be inspected and steered: demos, benchmarks.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::api;
use super::faults::Faults;
use super::server::App;

pub(crate) fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/_sandbox/requests", get(requests).delete(clear_requests))
        .route("/_sandbox/stats", get(stats))
        .route("/_sandbox/faults", get(faults).put(set_faults))
        .route("/_sandbox/data", get(data))
        .route("/_sandbox/api_keys", put(set_api_keys))
}

#[derive(Deserialize)]
struct RequestsQuery {
    /// Only requests with a larger `seq`, for incremental polling.
    since: Option<u64>,
}

async fn requests(State(app): State<Arc<App>>, Query(query): Query<RequestsQuery>) -> Response {
    let mut all = app.recorder.requests();
    if let Some(since) = query.since {
        all.retain(|r| r.seq > since);
    }
    Json(all).into_response()
}

async fn clear_requests(State(app): State<Arc<App>>) -> StatusCode {
    app.recorder.clear();
    StatusCode::NO_CONTENT
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    Json(app.recorder.stats()).into_response()
}

/// The knobs in force; `script` holds the scripted answers not yet consumed.
async fn faults(State(app): State<Arc<App>>) -> Response {
    Json(app.gate.current()).into_response()
}

/// Replaces all knobs, `script` and `accept_batches` included; fields left out take their
/// defaults, so `{}` switches every fault off and clears the script.
async fn set_faults(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let faults: Faults = match serde_json::from_slice(&body) {
        Ok(faults) => faults,
        Err(err) => return bad_request(format!("invalid faults: {err}")),
    };
    if let Err(err) = faults.validate() {
        return bad_request(err.to_string());
    }
    app.gate.replace(faults.clone());
    Json(faults).into_response()
}

#[derive(Deserialize)]
struct ApiKeys {
    api_keys: Vec<String>,
}

/// Replaces the accepted tokens: `{"api_keys": ["new-key"]}` (a rotation), `{"api_keys": []}` (all revoked).
async fn set_api_keys(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let keys: ApiKeys = match serde_json::from_slice(&body) {
        Ok(keys) => keys,
        Err(err) => return bad_request(format!("invalid api keys: {err}")),
    };
    app.set_api_keys(keys.api_keys);
    StatusCode::NO_CONTENT.into_response()
}

async fn data(State(app): State<Arc<App>>) -> Response {
    let ctx = app.ctx();
    let snapshot = api::snapshot(&app.store(), &ctx);
    Json(snapshot).into_response()
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "errors": [message] })),
    )
        .into_response()
}
