//! Start-up: load the callers file and TLS, keep them reloaded, and refuse to serve other hosts without
//! authenticating callers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use thiserror::Error;
use tokio_util::task::AbortOnDropHandle;

use crate::auth::callers::{Callers, CallersFileError};
use crate::auth::reload::keep_reloaded;
use crate::auth::tls::{TlsError, TlsFiles};
use crate::auth::Authenticator;

/// What the operator chose.
#[derive(Clone, Debug, Default)]
pub struct SecurityOptions {
    pub auth_tokens_file: Option<PathBuf>,
    pub tls: Option<TlsFiles>,
    pub public_reflection: bool,
    pub allow_unauthenticated: bool,
}

impl SecurityOptions {
    /// How callers are authenticated and whether the port speaks TLS, in a few words for the start-up line.
    pub fn describe(&self, address: SocketAddr) -> (&'static str, &'static str) {
        let client_ca = self.tls.as_ref().is_some_and(|tls| tls.client_ca.is_some());
        let auth = match (self.auth_tokens_file.is_some(), client_ca) {
            (true, true) => "tokens file and client certificates",
            (true, false) => "tokens file",
            (false, true) => "client certificates",
            (false, false) if address.ip().is_loopback() => "unauthenticated loopback",
            (false, false) => "unauthenticated (--allow-unauthenticated)",
        };
        let tls = match &self.tls {
            None => "off",
            Some(_) if client_ca => "mtls",
            Some(_) => "tls",
        };
        (auth, tls)
    }
}

#[derive(Debug, Error)]
pub enum SecurityError {
    #[error(transparent)]
    Callers(#[from] CallersFileError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(
        "refusing to serve {address} without authenticating callers: set --auth-tokens-file \
         (GROOVE_DESTINATION_AUTH_TOKENS_FILE) or --tls-client-ca, or --allow-unauthenticated when a \
         service-mesh sidecar authenticates callers"
    )]
    Unauthenticated { address: SocketAddr },
}

/// The gRPC port's protection, live for as long as this value is.
pub struct Security {
    pub authenticator: Authenticator,
    /// `Some`: serve TLS with the current config.
    pub tls: Option<Arc<ArcSwap<ServerConfig>>>,
    _reloaders: Vec<AbortOnDropHandle<()>>,
}

impl Security {
    /// No authentication, no TLS: what a loopback server for tests and local use runs with.
    pub fn open() -> Self {
        Security {
            authenticator: Authenticator::open(),
            tls: None,
            _reloaders: Vec::new(),
        }
    }
}

/// Loads what `options` name and starts reloading it. Must run inside the Tokio runtime.
pub fn set_up(options: &SecurityOptions, address: SocketAddr) -> Result<Security, SecurityError> {
    let client_certificates = options
        .tls
        .as_ref()
        .is_some_and(|tls| tls.client_ca.is_some());
    let authenticates = options.auth_tokens_file.is_some() || client_certificates;
    if !authenticates && !address.ip().is_loopback() && !options.allow_unauthenticated {
        return Err(SecurityError::Unauthenticated { address });
    }
    let mut reloaders = Vec::new();
    let callers = match &options.auth_tokens_file {
        Some(path) => {
            let callers = Callers::load(path)?;
            if callers.is_empty() {
                tracing::warn!(path = %path.display(), "the auth tokens file lists no callers; every call but health is refused");
            }
            let callers = Arc::new(ArcSwap::from_pointee(callers));
            let path = path.clone();
            reloaders.push(keep_reloaded(
                "auth tokens file",
                vec![path.clone()],
                callers.clone(),
                move || Callers::load(&path),
            ));
            Some(callers)
        }
        None => None,
    };
    let tls = match &options.tls {
        Some(files) => {
            let config = Arc::new(ArcSwap::from_pointee(files.load()?));
            let reload_files = files.clone();
            reloaders.push(keep_reloaded(
                "tls files",
                files.paths(),
                config.clone(),
                move || reload_files.load(),
            ));
            Some(config)
        }
        None => {
            if options.auth_tokens_file.is_some() && !address.ip().is_loopback() {
                tracing::warn!(%address, "bearer tokens will cross the network in clear text; set --tls-cert and --tls-key unless a mesh encrypts the connection");
            }
            None
        }
    };
    Ok(Security {
        authenticator: Authenticator::new(callers, client_certificates, options.public_reflection),
        tls,
        _reloaders: reloaders,
    })
}
