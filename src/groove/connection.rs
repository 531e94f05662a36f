//! One HTTP/1.1 connection to Groove, owned by one caller and driven inside the caller's own task.
//!
//! A pooled client runs each connection as a task of its own: every call hands the request over to that task
//! and the answer back, two wake-ups that often cross runtime threads. A delivery worker sends one call at a
//! time anyway, so it keeps its connection and polls it itself while a call is in flight. That saves the most
//! at low concurrency, where those wake-ups are a large part of each call's cost (groove-bench's per-record
//! scenario shows it).
//!
//! When its owner ends (a stream's workers finish), a connection still fit for use is parked with the client,
//! and the next owner takes it instead of paying a new TCP and TLS handshake.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::response::Parts;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_rustls::MaybeHttpsStream;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

use super::client::{error_chain, CallError, GrooveAnswer, GrooveClient};
use crate::domain::call::PlannedCall;
use crate::domain::credential::ApiKey;

/// A connection idle for longer than this is closed rather than reused: load balancers drop idle connections
/// around here without telling, and a create sent into such a connection would end with no known outcome.
pub(super) const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Connections parked between owners: as many as the delivery workers of the busiest streams.
const MAX_PARKED: usize = 256;

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

/// Calls to Groove one after another over one kept-alive connection, opened on first use and again whenever
/// Groove closed it, a call failed, or it sat idle too long.
pub struct GrooveConnection {
    client: GrooveClient,
    open: Option<OpenConnection>,
}

struct OpenConnection {
    sender: http1::SendRequest<Full<Bytes>>,
    /// Reads and writes the socket; nothing moves unless it is polled.
    driver: Pin<Box<http1::Connection<Stream, Full<Bytes>>>>,
    last_used: Instant,
}

impl OpenConnection {
    fn idle_too_long(&self) -> bool {
        self.last_used.elapsed() >= IDLE_TIMEOUT
    }
}

/// Connections whose owner ended while they were still fit for use, newest last. Nobody polls them while they
/// are parked; whoever takes one checks it first (see `GrooveConnection::take_reusable`).
#[derive(Default)]
pub(super) struct ParkedConnections(Mutex<Vec<OpenConnection>>);

impl std::fmt::Debug for ParkedConnections {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("ParkedConnections")
    }
}

impl ParkedConnections {
    /// Both park and take let go of connections idle too long, so that sockets Groove closed meanwhile do not
    /// linger past the next stream.
    fn fresh(&self) -> std::sync::MutexGuard<'_, Vec<OpenConnection>> {
        let mut parked = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        parked.retain(|parked| !parked.idle_too_long());
        parked
    }

    fn park(&self, open: OpenConnection) {
        let mut parked = self.fresh();
        if parked.len() < MAX_PARKED {
            parked.push(open);
        }
    }

    /// The most recently parked: the least likely to have been closed by Groove meanwhile.
    fn take(&self) -> Option<OpenConnection> {
        self.fresh().pop()
    }
}

/// How an exchange on an open connection ended, and whether the connection can carry the next one.
struct Exchanged {
    result: Result<(Parts, Bytes), CallError>,
    reusable: bool,
}

impl GrooveConnection {
    pub(super) fn new(client: GrooveClient) -> Self {
        GrooveConnection { client, open: None }
    }

    /// Sends one request with the key and reads the whole answer, within the request's timeout. Refuses,
    /// without sending, a URL outside the base URL.
    pub async fn send(
        &mut self,
        key: &ApiKey,
        call: &PlannedCall,
        timeout: Duration,
    ) -> Result<GrooveAnswer, CallError> {
        let outgoing = self.client.prepare(key, call)?;
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        // Out of `self` while in use: if this future is dropped half-way, the connection goes with it instead
        // of being parked or reused with a request of unknown fate still in it.
        let mut open = match self.take_reusable().await {
            Some(open) => open,
            None => tokio::time::timeout_at(deadline, self.client.open())
                .await
                .map_err(|_| CallError::NotSent {
                    reason: format!("no connection within {timeout:?}"),
                })??,
        };
        let result = match tokio::time::timeout_at(deadline, open.exchange(outgoing)).await {
            Ok(Exchanged { result, reusable }) => {
                if reusable && result.is_ok() {
                    open.last_used = Instant::now();
                    self.open = Some(open);
                }
                result
            }
            // Half an exchange leaves the connection in an unknown state: it is dropped.
            Err(_) => Err(CallError::MaybeSent {
                reason: format!("no complete answer within {timeout:?}"),
            }),
        };
        let (parts, body) = result?;
        Ok(GrooveAnswer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: Vec::from(body),
            latency: started.elapsed(),
        })
    }

    /// Waits until Groove closes the open connection, then lets it go. Pending for ever while none is open.
    /// Polled while the owner waits for work, so an idle connection is closed with Groove's side instead of
    /// lingering half-closed.
    pub async fn closed(&mut self) {
        match self.open.as_mut() {
            Some(open) => {
                let _ = open.driver.as_mut().await;
                self.open = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Takes the open connection, or else a parked one, if it can carry another request: not idle too long,
    /// and not closed by Groove in the meantime. Polling the driver once lets it read a pending end of stream
    /// without waiting.
    async fn take_reusable(&mut self) -> Option<OpenConnection> {
        loop {
            let mut open = match self.open.take() {
                Some(open) => open,
                None => self.client.parked().take()?,
            };
            if !open.idle_too_long()
                && !open.sender.is_closed()
                && !has_ended(&mut open.driver).await
            {
                return Some(open);
            }
        }
    }
}

impl Drop for GrooveConnection {
    fn drop(&mut self) {
        if let Some(open) = self.open.take() {
            if !open.idle_too_long() && !open.sender.is_closed() {
                self.client.parked().park(open);
            }
        }
    }
}

impl GrooveClient {
    /// A new connection to the base URL's host: TCP, then TLS for https. Nothing of a request has been sent
    /// when this fails.
    async fn open(&self) -> Result<OpenConnection, CallError> {
        let not_sent = |error: &(dyn std::error::Error + 'static)| CallError::NotSent {
            reason: format!("cannot connect to groove: {}", error_chain(error)),
        };
        let mut connector = self.connector();
        let io = connector
            .call(self.origin().clone())
            .await
            .map_err(|error| not_sent(error.as_ref()))?;
        let (sender, driver) = http1::handshake(io)
            .await
            .map_err(|error| not_sent(&error))?;
        Ok(OpenConnection {
            sender,
            driver: Box::pin(driver),
            last_used: Instant::now(),
        })
    }
}

impl OpenConnection {
    /// Sends the request and reads the answer, polling the connection alongside in this task.
    async fn exchange(&mut self, request: http::Request<Full<Bytes>>) -> Exchanged {
        let OpenConnection { sender, driver, .. } = self;
        let call = async {
            sender.ready().await.map_err(|error| CallError::NotSent {
                reason: format!(
                    "the connection closed before the request left: {}",
                    error_chain(&error)
                ),
            })?;
            let response = sender.send_request(request).await.map_err(classify)?;
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|error| CallError::MaybeSent {
                    reason: format!("reading the answer failed: {}", error_chain(&error)),
                })?
                .to_bytes();
            Ok((parts, body))
        };
        tokio::pin!(call);
        tokio::select! {
            biased;
            result = &mut call => Exchanged { result, reusable: true },
            // The connection ended (Groove closed it, or it broke): what it had read is still delivered to the
            // call, which then completes or fails on its own.
            _ = driver.as_mut() => Exchanged { result: call.await, reusable: false },
        }
    }
}

/// Polls the driver once, with the task's waker: has the connection ended (closed by the peer, or broken)?
async fn has_ended(driver: &mut Pin<Box<http1::Connection<Stream, Full<Bytes>>>>) -> bool {
    poll_fn(|context| Poll::Ready(driver.as_mut().poll(context).is_ready())).await
}

/// A request that never left (the connection closed before hyper wrote it) was surely not sent; anything else
/// may have reached Groove.
fn classify(error: hyper::Error) -> CallError {
    let reason = error_chain(&error);
    if error.is_canceled() {
        CallError::NotSent { reason }
    } else {
        CallError::MaybeSent { reason }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use url::Url;

    use super::*;
    use crate::domain::destination::HttpMethod;

    /// What the test server does after answering a request.
    #[derive(Clone, Copy)]
    enum AfterAnswer {
        KeepAlive,
        /// Says `connection: close` in the answer and closes.
        AnnounceClose,
        /// Closes a little later without having said so, as an idle timeout on Groove's side does.
        CloseSilently,
    }

    /// What a test server saw: connections accepted, and the head of every request, as the server read it.
    #[derive(Default)]
    struct Served {
        accepted: AtomicUsize,
        heads: std::sync::Mutex<Vec<String>>,
    }

    impl Served {
        fn connections(&self) -> usize {
            self.accepted.load(Ordering::SeqCst)
        }
    }

    /// An HTTP/1.1 server that answers every request `201` with a JSON body naming the connection and the
    /// request's number on it; over TLS with `tls`.
    async fn counting_server_with(
        after: AfterAnswer,
        tls: Option<tokio_rustls::TlsAcceptor>,
    ) -> (Url, Arc<Served>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let served = Arc::new(Served::default());
        let seen = served.clone();
        let scheme = if tls.is_some() { "https" } else { "http" };
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let connection = seen.accepted.fetch_add(1, Ordering::SeqCst) + 1;
                let seen = seen.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(tls) => {
                            if let Ok(socket) = tls.accept(socket).await {
                                serve_connection(socket, connection, after, &seen).await
                            }
                        }
                        None => serve_connection(socket, connection, after, &seen).await,
                    }
                });
            }
        });
        let host = if scheme == "https" {
            "localhost"
        } else {
            "127.0.0.1"
        };
        let base = Url::parse(&format!("{scheme}://{host}:{port}/v1/")).unwrap();
        (base, served)
    }

    async fn counting_server(after: AfterAnswer) -> (Url, Arc<Served>) {
        counting_server_with(after, None).await
    }

    async fn serve_connection<S>(socket: S, connection: usize, after: AfterAnswer, seen: &Served)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let mut socket = BufReader::new(socket);
        for request in 1.. {
            let mut content_length = 0;
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if socket.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                if line == "\r\n" {
                    break;
                }
                if let Some((name, value)) = line.split_once(':') {
                    if name.eq_ignore_ascii_case("content-length") {
                        content_length = value.trim().parse().unwrap();
                    }
                }
                head.push_str(&line);
            }
            seen.heads.lock().unwrap().push(head);
            let mut body = vec![0; content_length];
            socket.read_exact(&mut body).await.unwrap();
            let answer = answered(connection, request);
            let close = matches!(after, AfterAnswer::AnnounceClose);
            let head = format!(
                "HTTP/1.1 201 Created\r\ncontent-length: {}\r\n{}\r\n",
                answer.len(),
                if close { "connection: close\r\n" } else { "" }
            );
            let socket = socket.get_mut();
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(answer.as_bytes()).await.unwrap();
            match after {
                AfterAnswer::KeepAlive => {}
                AfterAnswer::AnnounceClose => return,
                AfterAnswer::CloseSilently => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return;
                }
            }
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn post(base: &Url) -> PlannedCall {
        PlannedCall {
            method: HttpMethod::Post,
            url: base.join("tickets").unwrap(),
            headers: Arc::from([]),
            body: Bytes::from_static(b"{\"body\":\"hi\"}"),
        }
    }

    /// The body the test server answers with: which connection, and which request on it.
    fn answered(connection: usize, request: usize) -> String {
        format!("{{\"connection\":{connection},\"request\":{request}}}")
    }

    /// Sends requests one after another on one `GrooveConnection`, pausing between them so that a close
    /// reaches the client, and checks which server connection answered each (`(connection, request on it)`).
    async fn assert_served_in_turn(after: AfterAnswer, expected: &[(usize, usize)]) {
        let (base, served) = counting_server(after).await;
        let mut connection = GrooveClient::new(&base).unwrap().connection();
        for &(on_connection, request) in expected {
            let answer = connection
                .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(answer.status, 201);
            assert_eq!(answer.body, answered(on_connection, request).into_bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let connections = expected.iter().map(|&(connection, _)| connection).max();
        assert_eq!(served.connections(), connections.unwrap_or(0));
    }

    /// What HTTP cannot carry is refused as such, before any connection: retrying could never help.
    #[tokio::test]
    async fn a_request_that_cannot_be_built_never_opens_a_connection() {
        let (base, served) = counting_server(AfterAnswer::KeepAlive).await;
        let mut connection = GrooveClient::new(&base).unwrap().connection();
        let long = base
            .join(&"x".repeat(crate::domain::url_guard::MAX_URL_BYTES))
            .unwrap();
        let cases = [
            (
                PlannedCall {
                    headers: Arc::from([("X-Note".to_string(), "a\u{7f}b".to_string())]),
                    ..post(&base)
                },
                "the value of header X-Note holds characters an http header cannot carry",
            ),
            (
                PlannedCall {
                    headers: Arc::from([("bad name".to_string(), "1".to_string())]),
                    ..post(&base)
                },
                "\"bad name\" is not a valid http header name",
            ),
            (
                PlannedCall {
                    url: long,
                    ..post(&base)
                },
                "at most 8000 can be sent",
            ),
        ];
        for (request, says) in cases {
            match connection
                .send(&ApiKey::new("key"), &request, TIMEOUT)
                .await
            {
                Err(error @ CallError::Unbuildable { .. }) => {
                    assert!(error.is_local());
                    let message = error.to_string();
                    assert!(
                        message.starts_with("request could not be built, so it was not sent: "),
                        "{message}"
                    );
                    assert!(message.contains(says), "{message}");
                    assert!(!message.contains("a\u{7f}b"), "values are never quoted");
                }
                other => panic!("expected Unbuildable, got {other:?}"),
            }
        }
        let refused_key = connection
            .send(&ApiKey::new("line\nbreak"), &post(&base), TIMEOUT)
            .await;
        assert!(
            matches!(&refused_key, Err(CallError::Unbuildable { reason }) if reason.contains("api key")),
            "{refused_key:?}"
        );
        assert_eq!(served.connections(), 0);
        // The same connection still sends what can be built.
        let answer = connection
            .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer.status, 201);
    }

    #[tokio::test]
    async fn calls_one_after_another_share_one_connection() {
        assert_served_in_turn(AfterAnswer::KeepAlive, &[(1, 1), (1, 2), (1, 3)]).await;
    }

    #[tokio::test]
    async fn an_announced_close_opens_a_new_connection_for_the_next_call() {
        assert_served_in_turn(AfterAnswer::AnnounceClose, &[(1, 1), (2, 1)]).await;
    }

    /// A create sent into a connection Groove has already closed would end with no known outcome; the close
    /// must be noticed before the next request goes out.
    #[tokio::test]
    async fn a_connection_groove_closed_while_idle_is_not_reused() {
        assert_served_in_turn(AfterAnswer::CloseSilently, &[(1, 1), (2, 1), (3, 1)]).await;
    }

    #[tokio::test]
    async fn the_next_owner_takes_over_a_parked_connection() {
        let (base, served) = counting_server(AfterAnswer::KeepAlive).await;
        let client = GrooveClient::new(&base).unwrap();
        for request in 1..=2 {
            let answer = client
                .connection()
                .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(answer.body, answered(1, request).into_bytes());
        }
        // The one-off path parks and takes too.
        let answer = client
            .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
            .await
            .unwrap();
        assert_eq!(answer.body, answered(1, 3).into_bytes());
        assert_eq!(served.connections(), 1);
    }

    #[tokio::test]
    async fn a_parked_connection_groove_closed_is_passed_over() {
        let (base, served) = counting_server(AfterAnswer::CloseSilently).await;
        let client = GrooveClient::new(&base).unwrap();
        for connection in 1..=2 {
            let answer = client
                .connection()
                .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(answer.body, answered(connection, 1).into_bytes());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(served.connections(), 2);
    }

    #[tokio::test]
    async fn waiting_for_work_lets_go_of_a_connection_groove_closed() {
        let (base, _) = counting_server(AfterAnswer::CloseSilently).await;
        let mut connection = GrooveClient::new(&base).unwrap().connection();
        connection
            .send(&ApiKey::new("key"), &post(&base), TIMEOUT)
            .await
            .unwrap();
        assert!(connection.open.is_some());
        tokio::time::timeout(Duration::from_secs(5), connection.closed())
            .await
            .expect("the close was noticed");
        assert!(connection.open.is_none());
    }

    /// A call abandoned half-way (its stream ended, its task aborted) leaves a request of unknown fate in its
    /// connection: nobody else may send on it.
    #[tokio::test]
    async fn an_abandoned_call_does_not_park_its_connection() {
        let (base, _silent) = silent_server().await;
        let client = GrooveClient::new(&base).unwrap();
        let mut connection = client.connection();
        let abandoned = tokio::time::timeout(
            Duration::from_millis(200),
            connection.send(&ApiKey::new("key"), &post(&base), TIMEOUT),
        )
        .await;
        assert!(abandoned.is_err(), "the server never answers");
        drop(connection);
        assert!(client.parked().take().is_none());
    }

    /// A server that accepts connections and never answers.
    async fn silent_server() -> (Url, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let silent = tokio::spawn(async move {
            let mut sockets = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                sockets.push(socket);
            }
        });
        (
            Url::parse(&format!("http://127.0.0.1:{port}/v1/")).unwrap(),
            silent,
        )
    }

    #[tokio::test]
    async fn a_timed_out_call_does_not_leave_its_connection_for_the_next() {
        let (base, silent) = silent_server().await;
        let mut connection = GrooveClient::new(&base).unwrap().connection();
        let outcome = connection
            .send(
                &ApiKey::new("key"),
                &post(&base),
                Duration::from_millis(200),
            )
            .await;
        assert!(
            matches!(outcome, Err(CallError::MaybeSent { .. })),
            "{outcome:?}"
        );
        assert!(connection.open.is_none());
        silent.abort();
    }

    /// A TLS server setup for `localhost` with a fresh self-signed certificate, and that certificate.
    fn self_signed_tls() -> (
        rustls::pki_types::CertificateDer<'static>,
        tokio_rustls::TlsAcceptor,
    ) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let certificate = certified.cert.der().clone();
        let key =
            rustls::pki_types::PrivateKeyDer::Pkcs8(certified.key_pair.serialize_der().into());
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .unwrap();
        (
            certificate,
            tokio_rustls::TlsAcceptor::from(Arc::new(server)),
        )
    }

    /// The whole https path: TLS handshake against a certificate the client trusts, the key inside TLS, and
    /// both calls on one TLS connection.
    #[tokio::test]
    async fn https_calls_share_one_tls_connection_with_the_key_inside_it() {
        let (certificate, acceptor) = self_signed_tls();
        let (base, served) = counting_server_with(AfterAnswer::KeepAlive, Some(acceptor)).await;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(certificate).unwrap();
        let mut connection = GrooveClient::trusting(&base, roots).unwrap().connection();
        for request in 1..=2 {
            let answer = connection
                .send(&ApiKey::new("tls-only-key"), &post(&base), TIMEOUT)
                .await
                .unwrap();
            assert_eq!(answer.body, answered(1, request).into_bytes());
        }
        assert_eq!(served.connections(), 1);
        let heads = served.heads.lock().unwrap().join("").to_lowercase();
        assert_eq!(
            heads.matches("authorization: bearer tls-only-key").count(),
            2,
            "{heads}"
        );
        assert_eq!(heads.matches("host: localhost:").count(), 2, "{heads}");
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_refused_before_anything_is_sent() {
        let (_, acceptor) = self_signed_tls();
        let (base, served) = counting_server_with(AfterAnswer::KeepAlive, Some(acceptor)).await;
        // Mozilla's roots, as in production: a self-signed certificate is not among them.
        let outcome = GrooveClient::new(&base)
            .unwrap()
            .send(&ApiKey::new("tls-only-key"), &post(&base), TIMEOUT)
            .await;
        match outcome {
            Err(CallError::NotSent { reason }) => {
                assert!(reason.contains("certificate"), "{reason}")
            }
            other => panic!("expected NotSent, got {other:?}"),
        }
        assert!(served.heads.lock().unwrap().is_empty());
    }
}
