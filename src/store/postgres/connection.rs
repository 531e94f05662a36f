//! From a `postgres://` URL to a connection pool: the URL's TLS settings, the certificates TLS trusts, and a
//! form of the URL that is safe to log.
//!
//! tokio-postgres understands `sslmode` `disable`, `prefer` and `require` only, and never checks the server's
//! certificate itself. So `sslmode` and `sslrootcert` are taken out of the URL here: `require`, `verify-ca` and
//! `verify-full` all connect over TLS (rustls) and verify the server's certificate chain and host name, against
//! Mozilla's roots (webpki-roots) or, when `sslrootcert=<file>` is given, against the PEM certificates in that
//! file. Any other mode connects without TLS.

use std::fmt;
use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tokio_postgres_rustls::MakeRustlsConnect;
use url::Url;

use crate::store::error::StoreError;

/// Connections one process keeps open at most.
const POOL_SIZE: usize = 16;

/// A parsed database URL: the driver's configuration, how to secure it, and a loggable name.
pub(super) struct DatabaseUrl {
    config: tokio_postgres::Config,
    tls: Option<RootCertStore>,
    redacted: String,
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("url", &self.redacted)
            .finish_non_exhaustive()
    }
}

impl DatabaseUrl {
    /// Parses `url`. Errors never repeat the URL, which may hold a password.
    pub(super) fn parse(url: &str) -> Result<DatabaseUrl, StoreError> {
        let invalid = |detail: String| StoreError::internal("reading the database url", detail);
        let mut parsed = Url::parse(url).map_err(|err| invalid(err.to_string()))?;
        if !matches!(parsed.scheme(), "postgres" | "postgresql") {
            return Err(invalid(format!(
                "scheme {:?} is not postgres or postgresql",
                parsed.scheme()
            )));
        }
        let mut sslmode = None;
        let mut sslrootcert = None;
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter_map(|(name, value)| match name.as_ref() {
                "sslmode" => {
                    sslmode = Some(value.into_owned());
                    None
                }
                "sslrootcert" => {
                    sslrootcert = Some(value.into_owned());
                    None
                }
                _ => Some((name.into_owned(), value.into_owned())),
            })
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        let tls = match sslmode.as_deref() {
            Some("require" | "verify-ca" | "verify-full") => {
                Some(trusted_roots(sslrootcert.as_deref())?)
            }
            None | Some("disable" | "allow" | "prefer") => None,
            Some(other) => return Err(invalid(format!("sslmode {other:?} is not known"))),
        };
        let mut config: tokio_postgres::Config = parsed
            .as_str()
            .parse()
            .map_err(|err: tokio_postgres::Error| invalid(err.to_string()))?;
        config.ssl_mode(if tls.is_some() {
            tokio_postgres::config::SslMode::Require
        } else {
            tokio_postgres::config::SslMode::Disable
        });
        if config.get_application_name().is_none() {
            config.application_name("groove-destination");
        }
        Ok(DatabaseUrl {
            config,
            tls,
            redacted: redact(url),
        })
    }

    /// The URL with its password replaced by `***`: what logs and errors may show.
    pub(super) fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The driver's configuration (host, user, database, options), without the TLS settings.
    pub(super) fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The TLS connector the URL asks for (`sslmode=require`, `verify-ca`, `verify-full`), `None` for none.
    pub(super) fn tls_connector(&self) -> Result<Option<MakeRustlsConnect>, StoreError> {
        let Some(roots) = &self.tls else {
            return Ok(None);
        };
        let client_config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|err| StoreError::internal("setting up tls to the database", err))?
        .with_root_certificates(roots.clone())
        .with_no_client_auth();
        Ok(Some(MakeRustlsConnect::new(client_config)))
    }

    /// A pool of connections to the database; connections are made when first needed.
    pub(super) fn pool(&self) -> Result<Pool, StoreError> {
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match self.tls_connector()? {
            Some(tls) => Manager::from_config(self.config.clone(), tls, manager_config),
            None => {
                Manager::from_config(self.config.clone(), tokio_postgres::NoTls, manager_config)
            }
        };
        Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|err| StoreError::internal("building the database connection pool", err))
    }
}

/// Mozilla's roots, or the certificates of the `sslrootcert` file instead.
fn trusted_roots(sslrootcert: Option<&str>) -> Result<RootCertStore, StoreError> {
    let Some(path) = sslrootcert else {
        return Ok(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
    };
    let what = || format!("reading the database's ca certificates from {path} (sslrootcert)");
    let mut roots = RootCertStore::empty();
    for certificate in
        CertificateDer::pem_file_iter(path).map_err(|err| StoreError::internal(what(), err))?
    {
        let certificate = certificate.map_err(|err| StoreError::internal(what(), err))?;
        roots
            .add(certificate)
            .map_err(|err| StoreError::internal(what(), err))?;
    }
    if roots.is_empty() {
        return Err(StoreError::internal(
            what(),
            "the file holds no certificate",
        ));
    }
    Ok(roots)
}

/// `url` without its password; unparsable text is not shown at all.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                // Only fails for URLs that cannot have a password, and this one has one.
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable url)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        let url =
            DatabaseUrl::parse("postgres://app:s3cret@db.example:5432/groove?sslmode=disable")
                .unwrap();
        assert_eq!(
            url.redacted(),
            "postgres://app:***@db.example:5432/groove?sslmode=disable"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        let err = DatabaseUrl::parse("postgres://app:s3cret@db.example/groove?sslmode=bogus")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("s3cret"), "{err}");
        assert!(err.contains("sslmode"), "{err}");
    }

    #[test]
    fn tls_follows_sslmode() {
        for (mode, tls) in [
            ("", false),
            ("?sslmode=disable", false),
            ("?sslmode=prefer", false),
            ("?sslmode=require", true),
            ("?sslmode=verify-full&connect_timeout=5", true),
        ] {
            let url =
                DatabaseUrl::parse(&format!("postgresql://app@localhost/groove{mode}")).unwrap();
            assert_eq!(url.tls.is_some(), tls, "{mode}");
        }
        assert!(DatabaseUrl::parse("mysql://app@localhost/groove").is_err());
        assert!(DatabaseUrl::parse(
            "postgres://app@localhost/groove?sslmode=require&sslrootcert=/nonexistent/ca.pem"
        )
        .is_err());
    }
}
