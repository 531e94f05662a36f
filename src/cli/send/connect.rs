//! The channel to the server: plaintext for `http://`, TLS for `https://` (with a CA and a client certificate
//! when given), and the bearer token on every call.

use std::path::Path;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{SendArgs, SendError};

/// Adds `authorization: Bearer <token>` when a token is set.
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub fn bearer(token: Option<&str>) -> Result<BearerToken, SendError> {
    token
        .map(|token| {
            format!("Bearer {}", token.trim())
                .parse()
                .map_err(|_| SendError::Usage("--token is not a valid header value".into()))
        })
        .transpose()
        .map(BearerToken)
}

/// Connects to `--server`.
pub async fn connect(args: &SendArgs) -> Result<Channel, SendError> {
    let address = if args.server.contains("://") {
        args.server.clone()
    } else {
        format!("http://{}", args.server)
    };
    let mut endpoint = Endpoint::from_shared(address.clone())
        .map_err(|error| SendError::Usage(format!("--server {address} is not a url: {error}")))?;
    let tls_files = args.ca_cert.is_some() || args.client_cert.is_some();
    if address.starts_with("https://") || tls_files {
        let mut tls = ClientTlsConfig::new();
        tls = match &args.ca_cert {
            Some(path) => tls.ca_certificate(Certificate::from_pem(read("--ca-cert", path)?)),
            None => tls.with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.client_cert, &args.client_key) {
            tls = tls.identity(Identity::from_pem(
                read("--client-cert", cert)?,
                read("--client-key", key)?,
            ));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|error| SendError::Usage(format!("tls settings: {error}")))?;
    }
    endpoint
        .connect()
        .await
        .map_err(|error| SendError::Connect(format!("cannot connect to {address}: {error}")))
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, SendError> {
    std::fs::read(path)
        .map_err(|error| SendError::Usage(format!("{flag} {}: {error}", path.display())))
}
