//! The HTTP front: every non-control request goes through [`entry`], which applies the fault
//! knobs, authenticates, dispatches to the API and records the outcome.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::SystemTime;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{
    AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;

use super::api::{self, ApiRequest, ApiResponse, Ctx};
use super::conn::KillSwitch;
use super::faults::{FaultGate, Faults, LimitHeaders, ScriptedAnswer, Verdict};
use super::params;
use super::recorder::{Capture, Recorder};
use super::store::Store;
use super::{clock, control};

/// Bodies beyond this are refused with 413; Groove's own limit is unknown, records are small.
const MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

/// Shared state of one sandbox.
pub(crate) struct App {
    /// The tokens accepted; replaced whole by [`App::set_api_keys`] (a key rotated or revoked).
    api_keys: RwLock<Vec<String>>,
    pub base_url: String,
    pub gate: FaultGate,
    pub recorder: Recorder,
    store: Mutex<Store>,
}

impl App {
    pub(crate) fn new(
        api_key: String,
        base_url: String,
        faults: Faults,
        max_recorded: usize,
        max_stored_tickets: usize,
    ) -> Self {
        App {
            api_keys: RwLock::new(vec![api_key]),
            base_url,
            gate: FaultGate::new(faults),
            recorder: Recorder::new(max_recorded),
            store: Mutex::new(Store::seeded(
                &clock::iso8601(SystemTime::now()),
                max_stored_tickets,
            )),
        }
    }

    /// The tokens accepted now.
    pub(crate) fn api_keys(&self) -> Vec<String> {
        self.api_keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// From now on only `keys` are accepted, as when a Groove admin generates a new token (or revokes one).
    pub(crate) fn set_api_keys(&self, keys: Vec<String>) {
        *self
            .api_keys
            .write()
            .unwrap_or_else(PoisonError::into_inner) = keys;
    }

    fn accepts(&self, token: Option<&str>) -> bool {
        token.is_some_and(|token| {
            self.api_keys
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .any(|key| key == token)
        })
    }

    pub(crate) fn store(&self) -> MutexGuard<'_, Store> {
        self.store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(crate) fn ctx(&self) -> Ctx<'_> {
        Ctx {
            base: &self.base_url,
            now_secs: clock::unix_secs(SystemTime::now()),
        }
    }
}

pub(crate) fn router(app: Arc<App>) -> Router {
    control::routes().fallback(entry).with_state(app)
}

async fn entry(
    State(app): State<Arc<App>>,
    ConnectInfo(switch): ConnectInfo<KillSwitch>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let api = is_api_path(parts.uri.path());
    // Every API call takes the next scripted answer, if any, in the order of its `seq`.
    let (arrival, scripted) = if api {
        app.gate.arrive(|| app.recorder.arrival())
    } else {
        (app.recorder.arrival(), None)
    };
    let declared_too_large = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|len| len > MAX_BODY_BYTES);
    let body = if declared_too_large {
        Err(StatusCode::PAYLOAD_TOO_LARGE)
    } else {
        axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| StatusCode::BAD_REQUEST)
    };
    let Handled {
        response,
        fault_after_processing,
    } = match &body {
        Ok(bytes) if api => api_call(&app, &parts, bytes, scripted).await,
        Ok(_) => Handled::plain(Some(respond(ApiResponse::not_found()))),
        // An unreadable body has no effect, so a scripted answer simply replaces the error.
        Err(_) if scripted.is_some() => Handled::plain(scripted.and_then(scripted_response)),
        Err(status) => Handled::plain(Some(respond(ApiResponse::error(
            *status,
            vec!["request body could not be read".into()],
        )))),
    };
    let status = response.as_ref().map_or(0, |r| r.status().as_u16());
    let capture = Capture {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body: body.unwrap_or_default(),
    };
    app.recorder.record(
        arrival,
        capture,
        status,
        response.as_ref().map(Response::headers),
        fault_after_processing,
    );
    match response {
        Some(response) => response,
        None => {
            // hyper's write of this placeholder fails on the killed stream: the client sees a
            // reset connection and no response.
            switch.kill();
            Response::new(Body::empty())
        }
    }
}

/// What handling a request produced.
struct Handled {
    /// `None`: drop the connection.
    response: Option<Response>,
    /// The call took effect, yet `response` is a fault (or no response at all).
    fault_after_processing: bool,
}

impl Handled {
    /// A response that tells what happened.
    fn plain(response: Option<Response>) -> Self {
        Handled {
            response,
            fault_after_processing: false,
        }
    }

    /// A fault, given after the call took effect when `after_processing`.
    fn fault(response: Option<Response>, after_processing: bool) -> Self {
        Handled {
            response,
            fault_after_processing: after_processing,
        }
    }
}

fn is_api_path(path: &str) -> bool {
    path.strip_prefix("/v1")
        .is_some_and(|rest| rest.starts_with('/'))
}

async fn api_call(
    app: &App,
    parts: &Parts,
    body: &Bytes,
    scripted: Option<ScriptedAnswer>,
) -> Handled {
    let faults = app.gate.snapshot();
    if !faults.latency.is_zero() {
        tokio::time::sleep(faults.latency).await;
    }
    if let Some(answer) = scripted {
        if answer.after_processing {
            carry_out_and_lose_the_answer(app, &faults, parts, body);
        }
        return Handled::fault(scripted_response(answer), answer.after_processing);
    }
    // Faults are decided before anything touches the store, so a refused call has no side effect
    // unless the verdict says it is carried out first.
    let (verdict, limits) = app.gate.decide(&faults);
    let (mut response, after_processing) = match verdict {
        Verdict::Drop { after_processing } => {
            if after_processing {
                carry_out_and_lose_the_answer(app, &faults, parts, body);
            }
            return Handled::fault(None, after_processing);
        }
        Verdict::RateLimited { retry_after_secs } => (
            fault_response(StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs)),
            false,
        ),
        Verdict::Fail {
            status,
            after_processing,
        } => {
            if after_processing {
                carry_out_and_lose_the_answer(app, &faults, parts, body);
            }
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (fault_response(status, None), after_processing)
        }
        Verdict::Pass => (authorized_call(app, &faults, parts, body), false),
    };
    if let Some(limits) = limits {
        add_limit_headers(&mut response, limits);
    }
    Handled::fault(Some(response), after_processing)
}

/// The call takes effect; its real answer is lost on the way back and a fault is sent instead.
fn carry_out_and_lose_the_answer(app: &App, faults: &Faults, parts: &Parts, body: &Bytes) {
    drop(authorized_call(app, faults, parts, body));
}

/// The answer a [`ScriptedAnswer`] prescribes; `None`: drop the connection.
fn scripted_response(answer: ScriptedAnswer) -> Option<Response> {
    if answer.status == 0 {
        return None;
    }
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    Some(fault_response(status, answer.retry_after_s.map(u64::from)))
}

/// A 429 or 5xx with the same body whether a knob or the script produced it.
fn fault_response(status: StatusCode, retry_after_secs: Option<u64>) -> Response {
    let message = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate limit exceeded".to_owned()
    } else {
        status
            .canonical_reason()
            .unwrap_or("server error")
            .to_ascii_lowercase()
    };
    let mut response = respond(ApiResponse::error(status, vec![message]));
    if let Some(secs) = retry_after_secs {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

fn authorized_call(app: &App, faults: &Faults, parts: &Parts, body: &Bytes) -> Response {
    if !app.accepts(presented_token(parts).as_deref()) {
        let mut response = respond(ApiResponse::error(
            StatusCode::UNAUTHORIZED,
            vec!["invalid or missing access token".into()],
        ));
        // RFC 6750 challenge; Groove's actual 401 is undocumented (docs/groove-api.md §1).
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    let content_type = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let bad_request = |message: &str| {
        respond(ApiResponse::error(
            StatusCode::BAD_REQUEST,
            vec![message.into()],
        ))
    };
    let parsed = match params::parse_body(content_type, body) {
        Ok(parsed) => parsed,
        Err(err) => return bad_request(err.message()),
    };
    let segments = api_segments(parts.uri.path());
    // Batches reach the API only when switched on, and only for create endpoints.
    let batch = match &segments {
        Some(segments) if faults.accept_batches => {
            api::batch_items(&parts.method, segments, &parsed)
        }
        _ => None,
    };
    let fields = if batch.is_some() {
        params::no_fields()
    } else {
        match params::fields(&parsed) {
            Ok(fields) => fields,
            Err(err) => return bad_request(err.message()),
        }
    };
    let Some(segments) = segments else {
        return respond(ApiResponse::not_found());
    };
    let query = parts
        .uri
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let request = ApiRequest {
        method: &parts.method,
        segments,
        query,
        fields,
        batch,
    };
    let ctx = app.ctx();
    let answer = api::dispatch(&mut app.store(), &ctx, &request);
    respond(answer)
}

/// The token as Doorkeeper (Rails OAuth) looks for it: a `Bearer` Authorization header first,
/// then the `access_token` query parameter (docs/groove-api.md §1). A wrong header token is not
/// rescued by a right query token.
fn presented_token(parts: &Parts) -> Option<String> {
    let header = parts
        .headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(token) = header.and_then(bearer_token) {
        return Some(token.to_owned());
    }
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "access_token")
        .map(|(_, v)| v.into_owned())
        .filter(|v| !v.is_empty())
}

fn bearer_token(header: &str) -> Option<&str> {
    let header = header.trim();
    let scheme = header.get(..7)?;
    let token = header.get(7..)?.trim();
    (scheme.eq_ignore_ascii_case("bearer ") && !token.is_empty()).then_some(token)
}

/// Decoded segments after `/v1/`; a trailing slash and a Rails `.json` format suffix are ignored.
fn api_segments(path: &str) -> Option<Vec<String>> {
    let rest = path.strip_prefix("/v1/")?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let rest = rest.strip_suffix(".json").unwrap_or(rest);
    rest.split('/').map(percent_decode).collect()
}

fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = segment.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `X-RateLimit-*` are our assumption: docs/groove-api.md §2 found no rate-limit headers at all.
fn add_limit_headers(response: &mut Response, limits: LimitHeaders) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("x-ratelimit-limit"),
        HeaderValue::from(limits.limit),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-remaining"),
        HeaderValue::from(limits.remaining),
    );
    headers.insert(
        HeaderName::from_static("x-ratelimit-reset"),
        HeaderValue::from(limits.reset_epoch_secs),
    );
}

pub(crate) fn respond(answer: ApiResponse) -> Response {
    let mut response = match &answer.body {
        Some(value) => {
            let mut response =
                Response::new(Body::from(serde_json::to_vec(value).unwrap_or_default()));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=utf-8"),
            );
            response
        }
        None => Response::new(Body::empty()),
    };
    *response.status_mut() = answer.status;
    if let Some(location) = answer.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
        response.headers_mut().insert(LOCATION, location);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_decoded() {
        assert_eq!(
            api_segments("/v1/customers/a%40b.com"),
            Some(vec!["customers".to_owned(), "a@b.com".to_owned()])
        );
        assert_eq!(
            api_segments("/v1/tickets/"),
            Some(vec!["tickets".to_owned()])
        );
        assert_eq!(
            api_segments("/v1/tickets.json"),
            Some(vec!["tickets".to_owned()])
        );
        assert_eq!(api_segments("/v1/%zz"), None);
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
    }
}
