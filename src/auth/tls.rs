//! TLS on the gRPC port, with client certificates when a client CA is set. The server config is rebuilt
//! when its files change (cert-manager rotates them); each new connection takes the current one, and open
//! connections keep theirs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;

/// A client that opens a connection and never finishes the handshake gives up its slot after this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the listen backlog.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Finished handshakes waiting for the server to take them.
const ACCEPTED_BUFFER: usize = 64;

/// The PEM files TLS is built from.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// Set: clients must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{what} {path} holds no PEM certificate")]
    Empty { what: &'static str, path: String },
    #[error("tls certificate {certificate} and key {key} cannot be used together: {message}")]
    Mismatch {
        certificate: String,
        key: String,
        message: String,
    },
    #[error("client ca {path} cannot verify clients: {message}")]
    ClientCa { path: String, message: String },
}

impl TlsFiles {
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.certificate.clone(), self.key.clone()];
        paths.extend(self.client_ca.clone());
        paths
    }

    /// Reads the files and builds the server side of TLS: HTTP/2 only, TLS 1.2 and 1.3.
    pub fn load(&self) -> Result<ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = read_certificates("tls certificate", &self.certificate)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|error| TlsError::Read {
            what: "tls key",
            path: self.key.display().to_string(),
            message: error.to_string(),
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| self.mismatch(error))?;
        let builder = match &self.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for certificate in read_certificates("client ca", path)? {
                    roots.add(certificate).map_err(|error| TlsError::ClientCa {
                        path: path.display().to_string(),
                        message: error.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| TlsError::ClientCa {
                            path: path.display().to_string(),
                            message: error.to_string(),
                        })?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| self.mismatch(error))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }

    fn mismatch(&self, error: rustls::Error) -> TlsError {
        TlsError::Mismatch {
            certificate: self.certificate.display().to_string(),
            key: self.key.display().to_string(),
            message: error.to_string(),
        }
    }
}

fn read_certificates(
    what: &'static str,
    path: &PathBuf,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |message: String| TlsError::Read {
        what,
        path: path.display().to_string(),
        message,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| read_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| read_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
        });
    }
    Ok(certificates)
}

/// Accepts connections on `listener` and yields those whose handshake succeeded, with the config current
/// when each connection arrived. Handshakes run in their own tasks, so a slow client holds up no one.
/// Accepting stops when the returned stream is dropped.
pub fn accept_tls(
    listener: TcpListener,
    config: Arc<ArcSwap<ServerConfig>>,
) -> ReceiverStream<Result<TlsStream<TcpStream>, std::io::Error>> {
    let (accepted, stream) = mpsc::channel(ACCEPTED_BUFFER);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES));
        loop {
            let Ok(slot) = handshakes.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                () = accepted.closed() => return,
                connection = listener.accept() => match connection {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(%error, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(config.load_full());
            let accepted = accepted.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::info!(%peer, %error, "tls handshake failed");
                    }
                    Err(_) => tracing::info!(%peer, "tls handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(stream)
}
