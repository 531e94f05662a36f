//! A listener whose connections a handler can kill, so `drop_rate` produces a real connection
//! reset instead of an HTTP response.
//!
//! axum's `serve` owns the socket, so a handler cannot close it directly. Each accepted stream
//! carries a shared [`KillSwitch`], handed to handlers through `ConnectInfo`; once flipped, the
//! stream sets `SO_LINGER=0` and fails every further read and write. hyper then abandons the
//! connection and the drop of the socket sends a TCP RST, which clients report as a connection
//! error, never as a response.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::connect_info::Connected;
use axum::serve::{IncomingStream, Listener};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// Wraps a bound [`TcpListener`], yielding killable streams.
pub(crate) struct KillableListener {
    inner: TcpListener,
}

impl KillableListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        KillableListener { inner }
    }
}

impl Listener for KillableListener {
    type Io = KillableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    // Small request/response exchanges: Nagle would only add latency.
                    if let Err(err) = stream.set_nodelay(true) {
                        tracing::debug!("failed to set nodelay: {err}");
                    }
                    return (KillableStream::new(stream), addr);
                }
                Err(err) => accept_failed(err).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

// Mirrors axum's own listener: per-connection errors are ignored; anything else (e.g. out of
// file descriptors) is logged and retried after a pause rather than spinning.
async fn accept_failed(err: io::Error) {
    if matches!(
        err.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    ) {
        return;
    }
    tracing::error!("accept error: {err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A per-connection flag; flipping it makes the connection die without answering.
#[derive(Clone, Debug, Default)]
pub(crate) struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    pub(crate) fn kill(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_killed(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

impl Connected<IncomingStream<'_, KillableListener>> for KillSwitch {
    fn connect_info(stream: IncomingStream<'_, KillableListener>) -> Self {
        stream.io().switch.clone()
    }
}

/// A TCP stream that errors out once its [`KillSwitch`] is flipped.
pub(crate) struct KillableStream {
    inner: TcpStream,
    switch: KillSwitch,
    lingering_off: bool,
}

impl KillableStream {
    fn new(inner: TcpStream) -> Self {
        KillableStream {
            inner,
            switch: KillSwitch::default(),
            lingering_off: false,
        }
    }

    fn killed(&mut self) -> Option<io::Error> {
        if !self.switch.is_killed() {
            return None;
        }
        if !self.lingering_off {
            self.lingering_off = true;
            // Zero linger turns the close into an RST, the clearest "connection dropped" signal.
            if let Err(err) = self.inner.set_zero_linger() {
                tracing::debug!("failed to set zero linger: {err}");
            }
        }
        Some(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            "connection dropped by sandbox fault injection",
        ))
    }
}

impl AsyncRead for KillableStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for KillableStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(err) = self.killed() {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
