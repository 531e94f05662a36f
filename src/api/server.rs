//! HTTP/2 settings of the gRPC server: keepalive pings, streams per connection, flow-control windows, and the age
//! after which a connection is asked to go away (GOAWAY), then closed once its grace has passed.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;
use tonic::transport::Server;

/// How much a client may send on one stream before the server has read it. HTTP/2's default (64 KiB, under two
/// messages of a hundred 320-byte records) makes a SendRecords stream wait for a window update between messages,
/// so the stream, not the work, sets the pace; grpc-go's servers grow their windows to 16 MiB for the same
/// reason. Unread data is bounded by the connection's window.
const STREAM_WINDOW: u32 = 1 << 20;
/// How much a client may send on all of a connection's streams before the server has read it: the most one
/// connection can make the server buffer.
const CONNECTION_WINDOW: u32 = 4 << 20;

/// What `--http2-keepalive-interval` and the other server flags say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerOptions {
    /// Ping an idle connection this often; `None`: never.
    pub keepalive_interval: Option<Duration>,
    /// Close a connection whose ping is not answered within this.
    pub keepalive_timeout: Duration,
    pub max_concurrent_streams: u32,
    /// Send GOAWAY to a connection this old: the client opens new streams elsewhere, the open ones finish.
    pub max_connection_age: Option<Duration>,
    /// Close a connection this long after its GOAWAY, cutting the streams still open on it.
    pub max_connection_age_grace: Option<Duration>,
}

impl ServerOptions {
    pub fn apply(&self, server: Server) -> Server {
        let server = server
            .http2_keepalive_interval(self.keepalive_interval)
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .max_concurrent_streams(self.max_concurrent_streams)
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW));
        // Only the age: tonic, given a grace as well, closes at age + grace without sending GOAWAY first, so
        // the grace is kept by `Aged` instead.
        match self.max_connection_age {
            Some(age) => server.max_connection_age(age),
            None => server,
        }
    }

    /// The connections of `incoming`, each closed once it is older than the age plus the grace.
    pub fn limit_age<S, IO>(
        &self,
        incoming: S,
    ) -> impl Stream<Item = Result<Aged<IO>, io::Error>> + Send + 'static
    where
        S: Stream<Item = Result<IO, io::Error>> + Send + 'static,
        IO: Send + 'static,
    {
        let limit = self
            .max_connection_age
            .zip(self.max_connection_age_grace)
            .map(|(age, grace)| age.saturating_add(grace));
        incoming.map(move |connection| {
            connection.map(|io| Aged {
                inner: io,
                deadline: limit.map(|limit| Box::pin(tokio::time::sleep(limit))),
            })
        })
    }
}

/// A connection that fails every read and write once its deadline has passed, which ends it.
pub struct Aged<IO> {
    inner: IO,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Aged<IO> {
    fn check(&mut self, context: &mut Context<'_>) -> io::Result<()> {
        let expired = self
            .deadline
            .as_mut()
            .is_some_and(|deadline| deadline.as_mut().poll(context).is_ready());
        if expired {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection closed: older than its max connection age and grace",
            ));
        }
        Ok(())
    }
}

impl<IO: Connected> Connected for Aged<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Aged<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check(context)?;
        Pin::new(&mut self.inner).poll_read(context, buffer)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Aged<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check(context)?;
        Pin::new(&mut self.inner).poll_write(context, buffer)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check(context)?;
        Pin::new(&mut self.inner).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(context)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.check(context)?;
        Pin::new(&mut self.inner).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
