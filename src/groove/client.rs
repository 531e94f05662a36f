use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST, USER_AGENT,
};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use thiserror::Error;
use url::Url;

use crate::domain::call::PlannedCall;
use crate::domain::credential::ApiKey;
use crate::domain::destination::HttpMethod;
use crate::domain::url_guard::MAX_URL_BYTES;
use crate::groove::connection::{GrooveConnection, ParkedConnections};

/// Time allowed for a VerifyCredential call.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The cheap authenticated read used to check a key: documented, unpaginated and small.
const VERIFY_PATH: &str = "mailboxes";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const USER_AGENT_VALUE: &str = concat!("groove-destination/", env!("CARGO_PKG_VERSION"));

/// Groove's answer to one call.
#[derive(Clone, Debug)]
pub struct GrooveAnswer {
    pub status: u16,
    /// Taken over from the HTTP response as it is: most answers never need their headers as text.
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    pub latency: Duration,
}

impl GrooveAnswer {
    /// Every header as text, for display and for the failed-records store.
    pub fn header_pairs(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .map(|(name, value)| (name.as_str().to_string(), header_text(value)))
            .collect()
    }

    /// Only the headers that steer pacing and retries (`Retry-After`, `X-RateLimit-*`). Usually there are
    /// none, and then nothing is allocated.
    pub fn pacing_headers(&self) -> Vec<(String, String)> {
        self.headers
            .iter()
            .filter(|(name, _)| {
                let name = name.as_str();
                name == "retry-after" || name.starts_with("x-ratelimit-")
            })
            .map(|(name, value)| (name.as_str().to_string(), header_text(value)))
            .collect()
    }
}

fn header_text(value: &HeaderValue) -> String {
    String::from_utf8_lossy(value.as_bytes()).into_owned()
}

/// A call that got no answer. The distinction matters for retries: a create that may have reached Groove must
/// not be sent twice, and a request refused here ([`CallError::is_local`]) would be refused again.
#[derive(Debug, Error)]
pub enum CallError {
    #[error("url {url} is outside the groove base url {base}")]
    OutsideBaseUrl { url: String, base: String },
    /// No HTTP request can be made of it (a header value, a URL too long to send): refused before any
    /// connection, every time.
    #[error("request could not be built, so it was not sent: {reason}")]
    Unbuildable { reason: String },
    #[error("request not sent: {reason}")]
    NotSent { reason: String },
    #[error("no answer after sending: {reason}")]
    MaybeSent { reason: String },
}

impl CallError {
    /// Refused here, before any connection, for what the request is: sending it again cannot succeed.
    pub fn is_local(&self) -> bool {
        matches!(
            self,
            CallError::OutsideBaseUrl { .. } | CallError::Unbuildable { .. }
        )
    }
}

/// What VerifyCredential found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verification {
    Valid { status: u16 },
    Invalid { status: u16 },
    Unreachable { status: Option<u16>, detail: String },
}

/// Why the Groove client could not be built.
#[derive(Debug, Error)]
pub enum ClientBuildError {
    #[error("cannot set up tls for groove calls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("groove base url cannot address requests: {0}")]
    BaseUrl(String),
}

pub(super) type Connector = HttpsConnector<HttpConnector>;

/// Shared and cheap to clone: the base URL, what every request to it carries, and how to open a connection.
///
/// Plain hyper rather than reqwest: Groove calls need no redirects, cookies or proxies, and reqwest's
/// per-request machinery for them cost more CPU than the rest of a delivery. Calls go straight to the Groove
/// host; HTTP(S)_PROXY variables are not read. hyper follows no redirect, so a 3xx comes back as Groove's
/// answer and the Authorization header never travels to another host.
///
/// Each delivery worker owns a [`GrooveConnection`] and drives it in its own task, which spares every call two
/// hand-overs between tasks (see `connection.rs`); connections outlive their worker only parked here.
#[derive(Clone, Debug)]
pub struct GrooveClient {
    connector: Connector,
    base_url: Url,
    /// Where connections go: the base URL's scheme, host and port.
    origin: http::Uri,
    /// The `Host` header of every request: every URL sent is under the base URL, so it is always this one.
    host: HeaderValue,
    parked: Arc<ParkedConnections>,
}

impl GrooveClient {
    /// A client that trusts Mozilla's root certificates, as every public Groove host needs.
    pub fn new(base_url: &Url) -> Result<Self, ClientBuildError> {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Self::trusting(base_url, roots)
    }

    /// A client that trusts only `roots`: how tests reach a TLS server of their own.
    pub(crate) fn trusting(
        base_url: &Url,
        roots: rustls::RootCertStore,
    ) -> Result<Self, ClientBuildError> {
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        // http is allowed for a local sandbox; the key only ever goes to the configured base URL.
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let base_url = with_trailing_slash(base_url);
        let authority = authority(&base_url);
        let origin = http::Uri::builder()
            .scheme(base_url.scheme())
            .authority(authority)
            .path_and_query("/")
            .build()
            .map_err(|error| ClientBuildError::BaseUrl(error.to_string()))?;
        let host = HeaderValue::from_str(authority)
            .map_err(|error| ClientBuildError::BaseUrl(error.to_string()))?;
        Ok(GrooveClient {
            connector,
            base_url,
            origin,
            host,
            parked: Arc::default(),
        })
    }

    /// The base URL, always ending in `/` so that relative paths join under it.
    pub fn base_url(&self) -> &Url {
        &self.base_url
    }

    /// A connection of its own, for a caller that makes many calls one after another.
    pub fn connection(&self) -> GrooveConnection {
        GrooveConnection::new(self.clone())
    }

    /// Sends one request with the key, on a parked connection or a new one. For occasional calls (a test send,
    /// a key check); deliveries keep a [`GrooveConnection`] per worker.
    pub async fn send(
        &self,
        key: &ApiKey,
        call: &PlannedCall,
        timeout: Duration,
    ) -> Result<GrooveAnswer, CallError> {
        self.connection().send(key, call, timeout).await
    }

    pub(super) fn connector(&self) -> Connector {
        self.connector.clone()
    }

    pub(super) fn origin(&self) -> &http::Uri {
        &self.origin
    }

    pub(super) fn parked(&self) -> &ParkedConnections {
        &self.parked
    }

    /// The HTTP request for `request`, with the key. Refuses, before anything is sent, a URL outside the base
    /// URL, and a request that HTTP cannot carry ([`CallError::Unbuildable`]).
    pub(super) fn prepare(
        &self,
        key: &ApiKey,
        request: &PlannedCall,
    ) -> Result<http::Request<Full<Bytes>>, CallError> {
        if !is_under_base(&self.base_url, &request.url) {
            return Err(CallError::OutsideBaseUrl {
                url: request.url.to_string(),
                base: self.base_url.to_string(),
            });
        }
        // Checked when configured and when rendered; this catches whatever came another way.
        let length = request.url.as_str().len();
        if length > MAX_URL_BYTES {
            return Err(CallError::Unbuildable {
                reason: format!("url is {length} bytes long; at most {MAX_URL_BYTES} can be sent"),
            });
        }
        // HTTP/1.1 to an origin server takes the path and query only; the host goes in `Host`.
        let target: http::Uri =
            request.url[url::Position::BeforePath..]
                .parse()
                .map_err(|error| CallError::Unbuildable {
                    reason: format!("url {} is not a valid request target: {error}", request.url),
                })?;
        let body = request.sent_body();
        let mut outgoing = http::Request::new(Full::new(body.cloned().unwrap_or_default()));
        *outgoing.method_mut() = method(request.method);
        *outgoing.uri_mut() = target;
        let headers = outgoing.headers_mut();
        *headers = build_headers(key, request, body.is_some())?;
        headers.insert(HOST, self.host.clone());
        Ok(outgoing)
    }

    /// The cheap authenticated GET that checks a key, and how long it may take; see [`Verification::of`].
    /// Sent like any other call (the engine paces it with the credential's pacer).
    pub fn verification_call(&self) -> Result<(PlannedCall, Duration), Verification> {
        let url = self
            .base_url
            .join(VERIFY_PATH)
            .map_err(|error| Verification::Unreachable {
                status: None,
                detail: format!("cannot build the verification url: {error}"),
            })?;
        let call = PlannedCall {
            method: HttpMethod::Get,
            url,
            headers: Arc::from([]),
            body: Bytes::new(),
        };
        Ok((call, VERIFY_TIMEOUT))
    }
}

impl Verification {
    /// What the answer to [`GrooveClient::verification_call`] says of the key.
    pub fn of(result: &Result<GrooveAnswer, CallError>) -> Verification {
        match result {
            Ok(answer) if (200..300).contains(&answer.status) => Verification::Valid {
                status: answer.status,
            },
            Ok(answer) if answer.status == 401 || answer.status == 403 => Verification::Invalid {
                status: answer.status,
            },
            Ok(answer) => Verification::Unreachable {
                status: Some(answer.status),
                detail: format!("groove answered {} to GET {VERIFY_PATH}", answer.status),
            },
            Err(error) => Verification::Unreachable {
                status: None,
                detail: error.to_string(),
            },
        }
    }
}

/// `host` or `host:port` when the port is not the scheme's default, as `Host` and the connection need it: the
/// URL's own serialization of that part (brackets around IPv6, default ports left out).
fn authority(url: &Url) -> &str {
    &url[url::Position::BeforeHost..url::Position::AfterPort]
}

fn with_trailing_slash(url: &Url) -> Url {
    let mut url = url.clone();
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Last line of defence for the key: same scheme, host and port, and a path under the base path.
fn is_under_base(base: &Url, url: &Url) -> bool {
    url.scheme() == base.scheme()
        && url.host_str() == base.host_str()
        && url.port_or_known_default() == base.port_or_known_default()
        && url.username().is_empty()
        && url.password().is_none()
        && url.path().starts_with(base.path())
        && !url.path().split('/').any(|segment| segment == "..")
}

fn build_headers(
    key: &ApiKey,
    request: &PlannedCall,
    has_body: bool,
) -> Result<HeaderMap, CallError> {
    // The extra headers, then Content-Type, User-Agent, Accept, Authorization and (in `prepare`) Host.
    let mut headers = HeaderMap::with_capacity(request.headers.len() + 5);
    for (name, value) in request.headers.iter() {
        // Never the value in the message: it may be a secret.
        let header_name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| CallError::Unbuildable {
                reason: format!("{name:?} is not a valid http header name"),
            })?;
        let value = HeaderValue::from_str(value).map_err(|_| CallError::Unbuildable {
            reason: format!(
                "the value of header {name} holds characters an http header cannot carry"
            ),
        })?;
        headers.append(header_name, value);
    }
    if has_body {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    headers.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    headers
        .entry(ACCEPT)
        .or_insert(HeaderValue::from_static("application/json"));
    let mut authorization =
        HeaderValue::from_str(&format!("Bearer {}", key.expose())).map_err(|_| {
            CallError::Unbuildable {
                reason: "the api key holds characters an http header cannot carry".to_string(),
            }
        })?;
    authorization.set_sensitive(true);
    headers.insert(AUTHORIZATION, authorization);
    Ok(headers)
}

fn method(method: HttpMethod) -> http::Method {
    match method {
        HttpMethod::Get => http::Method::GET,
        HttpMethod::Post => http::Method::POST,
        HttpMethod::Put => http::Method::PUT,
        HttpMethod::Patch => http::Method::PATCH,
        HttpMethod::Delete => http::Method::DELETE,
    }
}

/// hyper's top-level messages are vague ("client error (Connect)"); the causes say what happened. hyper never
/// puts header values in its errors, so the key cannot leak through here.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    #[test]
    fn only_urls_under_the_base_are_allowed() {
        let base = with_trailing_slash(&url("https://api.groovehq.com/v1"));
        assert!(is_under_base(
            &base,
            &url("https://api.groovehq.com/v1/tickets")
        ));
        for outside in [
            "https://evil.example/v1/tickets",
            "http://api.groovehq.com/v1/tickets",
            "https://api.groovehq.com:8443/v1/tickets",
            "https://api.groovehq.com/v2/tickets",
            "https://user@api.groovehq.com/v1/tickets",
            "https://api.groovehq.com.evil.example/v1/tickets",
        ] {
            assert!(!is_under_base(&base, &url(outside)), "{outside}");
        }
    }

    /// A one-connection server: reads what the client sends until `complete` says it has it all (or 5 s
    /// pass), answers `reply` (nothing when `None`), and hands back what it read.
    async fn one_shot_server(
        complete: fn(&[u8]) -> bool,
        reply: Option<&'static [u8]>,
    ) -> (Url, tokio::task::JoinHandle<Vec<u8>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut chunk = [0u8; 4096];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !complete(&received) {
                match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
                    Ok(Ok(read)) if read > 0 => received.extend_from_slice(&chunk[..read]),
                    _ => break,
                }
            }
            match reply {
                Some(reply) => {
                    let _ = socket.write_all(reply).await;
                }
                None => tokio::time::sleep(Duration::from_secs(60)).await,
            }
            received
        });
        (url(&format!("http://127.0.0.1:{port}/v1/")), served)
    }

    /// The request of `post_tickets`, head and body.
    fn whole_post(received: &[u8]) -> bool {
        received.ends_with(BODY)
    }

    /// One whole TLS record: 5-byte header whose last two bytes are the length.
    fn one_tls_record(received: &[u8]) -> bool {
        received.len() >= 5
            && received.len() >= 5 + usize::from(u16::from_be_bytes([received[3], received[4]]))
    }

    const BODY: &[u8] = b"{\"body\":\"hi\"}";

    fn post_tickets(base: &Url) -> PlannedCall {
        PlannedCall {
            method: HttpMethod::Post,
            url: base.join("tickets").unwrap(),
            headers: Arc::from([("X-Source".to_string(), "crm".to_string())]),
            body: Bytes::from_static(BODY),
        }
    }

    const KEY: &str = "supersecretkey1234";

    async fn post_with_key(base: &Url, timeout: Duration) -> Result<GrooveAnswer, CallError> {
        GrooveClient::new(base)
            .unwrap()
            .send(&ApiKey::new(KEY), &post_tickets(base), timeout)
            .await
    }

    #[tokio::test]
    async fn sends_the_key_and_headers_and_reads_the_whole_answer() {
        let (base, served) = one_shot_server(whole_post, Some(
            b"HTTP/1.1 201 Created\r\nlocation: /v1/tickets/7\r\ncontent-length: 14\r\n\r\n{\"ticket\":\"7\"}",
        ))
        .await;
        let answer = post_with_key(&base, Duration::from_secs(5)).await.unwrap();
        assert_eq!(answer.status, 201);
        assert_eq!(answer.body, b"{\"ticket\":\"7\"}");
        assert_eq!(answer.headers["location"], "/v1/tickets/7");
        let request = String::from_utf8(served.await.unwrap()).unwrap();
        assert!(request.ends_with("\r\n\r\n{\"body\":\"hi\"}"), "{request}");
        let request = request.to_lowercase();
        assert!(
            request.starts_with("post /v1/tickets http/1.1\r\n"),
            "{request}"
        );
        let host = format!("host: {}", base.authority());
        for header in [
            host.as_str(),
            "authorization: bearer supersecretkey1234",
            "content-type: application/json",
            "accept: application/json",
            "x-source: crm",
            "user-agent: groove-destination/",
        ] {
            assert!(request.contains(header), "{header} missing from {request}");
        }
    }

    #[tokio::test]
    async fn an_https_base_url_speaks_tls_and_never_sends_the_key_in_clear() {
        // The server answers in plain HTTP: a client that skipped TLS would take it as a success.
        let (plain_base, served) = one_shot_server(
            one_tls_record,
            Some(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"),
        )
        .await;
        let base = url(&plain_base.as_str().replacen("http://", "https://", 1));
        let outcome = post_with_key(&base, Duration::from_secs(5)).await;
        assert!(
            matches!(outcome, Err(CallError::NotSent { .. })),
            "{outcome:?}"
        );
        let received = served.await.unwrap();
        // 0x16: a TLS handshake record (the ClientHello).
        assert_eq!(received.first(), Some(&0x16), "{received:?}");
        assert!(!received
            .windows(KEY.len())
            .any(|window| window == KEY.as_bytes()));
    }

    #[tokio::test]
    async fn a_refused_connection_is_not_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let base = url(&format!("http://127.0.0.1:{port}/v1/"));
        let outcome = post_with_key(&base, Duration::from_secs(5)).await;
        assert!(
            matches!(outcome, Err(CallError::NotSent { .. })),
            "{outcome:?}"
        );
    }

    /// On paused time: the clock moves on only while every task waits, so the timeout fires after the server has
    /// read the whole request and gone quiet, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn no_answer_in_time_may_have_been_sent() {
        let (base, served) = one_shot_server(whole_post, None).await;
        let started = tokio::time::Instant::now();
        let outcome = post_with_key(&base, Duration::from_secs(10)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        assert!(
            whole_post(&served.await.unwrap()),
            "the request was sent whole"
        );
        match outcome {
            Err(CallError::MaybeSent { reason }) => {
                assert!(reason.contains("no complete answer within"), "{reason}")
            }
            other => panic!("expected MaybeSent, got {other:?}"),
        }
    }

    #[test]
    fn the_host_header_names_the_port_only_when_it_is_not_the_default() {
        for (base, host) in [
            ("https://api.groovehq.com/v1/", "api.groovehq.com"),
            ("https://api.groovehq.com:443/v1/", "api.groovehq.com"),
            ("http://127.0.0.1:8080/v1/", "127.0.0.1:8080"),
            ("http://[::1]:8080/v1/", "[::1]:8080"),
        ] {
            let client = GrooveClient::new(&url(base)).unwrap();
            assert_eq!(client.host, host, "{base}");
            assert_eq!(client.origin.authority().unwrap().as_str(), host, "{base}");
        }
    }

    #[test]
    fn base_url_gains_a_trailing_slash_once() {
        assert_eq!(
            with_trailing_slash(&url("http://127.0.0.1:9/v1")).as_str(),
            "http://127.0.0.1:9/v1/"
        );
        assert_eq!(
            with_trailing_slash(&url("http://127.0.0.1:9/v1/")).as_str(),
            "http://127.0.0.1:9/v1/"
        );
    }
}
