//! Decides who a call comes from and whether it may reach the method it names. It knows nothing of gRPC
//! beyond the request path and the two things a caller proves itself with.

use std::sync::Arc;

use arc_swap::ArcSwap;
use thiserror::Error;

use crate::auth::callers::{Caller, Callers};
use crate::auth::certificate::certificate_names;
use crate::auth::scope::{access_for, Access, Scope};

/// Why a call is refused. The first three are UNAUTHENTICATED (who is it?), the rest PERMISSION_DENIED
/// (known, but not allowed).
#[derive(Debug, Error)]
pub enum AuthError {
    #[error("this server needs caller credentials: send the metadata `authorization: Bearer <token>`{}", if *.client_certificates { " or a client certificate" } else { "" })]
    Missing { client_certificates: bool },
    #[error("the bearer token is not known to this server")]
    UnknownToken,
    #[error("the authorization metadata must be `Bearer <token>`")]
    MalformedAuthorization,
    #[error("client certificate {names} does not stand for a caller in the auth tokens file")]
    UnknownCertificate { names: String },
    #[error("caller {caller} lacks the {scope} scope that {method} needs")]
    MissingScope {
        caller: String,
        scope: Scope,
        method: String,
    },
    #[error("caller {caller} is limited to destinations {patterns}; {method} needs an admin over all destinations")]
    NeedsUnrestrictedAdmin {
        caller: String,
        patterns: String,
        method: String,
    },
    #[error("caller {caller} may not use destinations/{destination} (it may use {patterns})")]
    Destination {
        caller: String,
        destination: String,
        patterns: String,
    },
    #[error("caller {caller} is limited to destinations {patterns}; choose a destination_id that matches")]
    NeedsChosenId { caller: String, patterns: String },
    #[error("caller {caller} is limited to destinations {patterns}; a draft names no destination, so test a saved destination that matches")]
    DraftNeedsAllDestinations { caller: String, patterns: String },
}

impl AuthError {
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            AuthError::Missing { .. }
                | AuthError::UnknownToken
                | AuthError::MalformedAuthorization
                | AuthError::UnknownCertificate { .. }
        )
    }
}

/// What proves a call's caller, as it arrived.
#[derive(Default)]
pub struct Presented<'a> {
    /// The `authorization` metadata, if any.
    pub authorization: Option<&'a [u8]>,
    /// The client's leaf certificate (DER), when the connection is TLS with a client certificate.
    pub certificate: Option<&'a [u8]>,
}

/// How callers are authenticated.
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: no callers file.
    callers: Option<Arc<ArcSwap<Callers>>>,
    /// The TLS layer requires and verifies client certificates.
    client_certificates: bool,
    public_reflection: bool,
    /// Who calls when no caller is needed; made once, handed to every such call.
    anonymous: Arc<Caller>,
    unauthenticated: Arc<Caller>,
}

impl Authenticator {
    /// Every call is let through as the anonymous caller: for loopback, or behind a mesh that
    /// authenticates callers itself.
    pub fn open() -> Self {
        Authenticator {
            callers: None,
            client_certificates: false,
            public_reflection: true,
            anonymous: Caller::anonymous(),
            unauthenticated: Caller::unauthenticated(),
        }
    }

    pub fn new(
        callers: Option<Arc<ArcSwap<Callers>>>,
        client_certificates: bool,
        public_reflection: bool,
    ) -> Self {
        Authenticator {
            callers,
            client_certificates,
            public_reflection,
            anonymous: Caller::anonymous(),
            unauthenticated: Caller::unauthenticated(),
        }
    }

    pub fn authenticates_callers(&self) -> bool {
        self.callers.is_some() || self.client_certificates
    }

    /// The caller of a call to `path`, if it may make it. Per-destination limits are for the service to
    /// check with [`Caller::may_use_destination`].
    pub fn admit(&self, path: &str, presented: &Presented<'_>) -> Result<Arc<Caller>, AuthError> {
        if !self.authenticates_callers() {
            return Ok(self.anonymous.clone());
        }
        let access = access_for(path);
        match access {
            Access::Public => return Ok(self.unauthenticated.clone()),
            Access::Reflection if self.public_reflection => {
                return Ok(self.unauthenticated.clone())
            }
            _ => {}
        }
        let caller = self.identify(presented)?;
        let method = || path.trim_start_matches('/').to_string();
        match access {
            Access::Public | Access::Reflection => {}
            Access::Scoped(scope) => {
                if !caller.holds(scope) {
                    return Err(AuthError::MissingScope {
                        caller: caller.name().to_string(),
                        scope,
                        method: method(),
                    });
                }
            }
            Access::UnrestrictedAdmin => {
                if !caller.holds(Scope::Admin) {
                    return Err(AuthError::MissingScope {
                        caller: caller.name().to_string(),
                        scope: Scope::Admin,
                        method: method(),
                    });
                }
                if caller.limited_to_some_destinations() {
                    return Err(AuthError::NeedsUnrestrictedAdmin {
                        caller: caller.name().to_string(),
                        patterns: caller.destination_patterns(),
                        method: method(),
                    });
                }
            }
        }
        Ok(caller)
    }

    /// A bearer token, when one is sent, decides; otherwise the client certificate.
    fn identify(&self, presented: &Presented<'_>) -> Result<Arc<Caller>, AuthError> {
        let callers = self.callers.as_ref().map(|callers| callers.load());
        if let Some(authorization) = presented.authorization {
            let token = bearer_token(authorization).ok_or(AuthError::MalformedAuthorization)?;
            return callers
                .and_then(|callers| callers.by_token(token))
                .ok_or(AuthError::UnknownToken);
        }
        let certificate = presented
            .certificate
            .filter(|_| self.client_certificates)
            .ok_or(AuthError::Missing {
                client_certificates: self.client_certificates,
            })?;
        let names = certificate_names(certificate);
        match callers {
            Some(callers) => callers
                .by_certificate_name(names.iter().map(String::as_str))
                .ok_or_else(|| AuthError::UnknownCertificate {
                    names: if names.is_empty() {
                        "without subject alternative names".to_string()
                    } else {
                        names.join(", ")
                    },
                }),
            // No callers file: the client CA alone says who may call.
            None => Ok(Caller::trusted_certificate(
                names.first().map_or("client certificate", String::as_str),
            )),
        }
    }
}

/// The token of `Bearer <token>`; the scheme is case-insensitive (RFC 9110 §11.1).
fn bearer_token(authorization: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(authorization).ok()?;
    let (scheme, token) = text.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Checks that `caller` may use the destination `id`.
pub fn check_destination(caller: &Caller, id: &str) -> Result<(), AuthError> {
    if caller.may_use_destination(id) {
        Ok(())
    } else {
        Err(AuthError::Destination {
            caller: caller.name().to_string(),
            destination: id.to_string(),
            patterns: caller.destination_patterns(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const SEND: &str = "/groove.destination.v1.DeliveryService/SendRecords";
    const CREATE_CREDENTIAL: &str = "/groove.destination.v1.CredentialService/CreateCredential";

    fn authenticator(file: &str) -> Authenticator {
        let callers = Callers::parse("callers.toml", file).unwrap();
        Authenticator::new(Some(Arc::new(ArcSwap::from_pointee(callers))), false, false)
    }

    fn bearer(token: &str) -> String {
        format!("Bearer {token}")
    }

    #[test]
    fn tokens_scopes_and_limits() {
        let gate = authenticator(&format!(
            "[[caller]]\nname = \"crm\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\", \"admin\"]\ndestinations = [\"crm-*\"]\n"
        ));
        let header = bearer("test");
        let with_token = Presented {
            authorization: Some(header.as_bytes()),
            certificate: None,
        };
        let caller = gate.admit(SEND, &with_token).unwrap();
        assert_eq!(caller.name(), "crm");
        assert!(check_destination(&caller, "crm-a").is_ok());
        let error = check_destination(&caller, "billing").unwrap_err();
        assert_eq!(
            error.to_string(),
            "caller crm may not use destinations/billing (it may use crm-*)"
        );
        let error = gate.admit(CREATE_CREDENTIAL, &with_token).unwrap_err();
        assert!(
            matches!(error, AuthError::NeedsUnrestrictedAdmin { .. }),
            "{error}"
        );
        assert!(!error.is_unauthenticated());

        let error = gate.admit(SEND, &Presented::default()).unwrap_err();
        assert!(error.is_unauthenticated());
        let wrong = bearer("wrong");
        let error = gate
            .admit(
                SEND,
                &Presented {
                    authorization: Some(wrong.as_bytes()),
                    certificate: None,
                },
            )
            .unwrap_err();
        assert!(matches!(error, AuthError::UnknownToken));
        let error = gate
            .admit(
                SEND,
                &Presented {
                    authorization: Some(b"Basic dGVzdA=="),
                    certificate: None,
                },
            )
            .unwrap_err();
        assert!(matches!(error, AuthError::MalformedAuthorization));
        let lower = "bearer test";
        assert!(gate
            .admit(
                SEND,
                &Presented {
                    authorization: Some(lower.as_bytes()),
                    certificate: None
                }
            )
            .is_ok());
    }

    #[test]
    fn a_missing_scope_is_named() {
        let gate = authenticator(&format!(
            "[[caller]]\nname = \"reader\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"read\"]\n"
        ));
        let header = bearer("test");
        let error = gate
            .admit(
                SEND,
                &Presented {
                    authorization: Some(header.as_bytes()),
                    certificate: None,
                },
            )
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "caller reader lacks the send scope that groove.destination.v1.DeliveryService/SendRecords needs"
        );
    }

    #[test]
    fn health_is_public_and_reflection_needs_a_caller_unless_public() {
        let gate = authenticator("");
        assert!(gate
            .admit("/grpc.health.v1.Health/Check", &Presented::default())
            .is_ok());
        let reflection = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo";
        assert!(gate
            .admit(reflection, &Presented::default())
            .unwrap_err()
            .is_unauthenticated());
        let public = Authenticator::new(gate.callers.clone(), false, true);
        assert!(public.admit(reflection, &Presented::default()).is_ok());
        assert!(public.admit(SEND, &Presented::default()).is_err());
    }

    #[test]
    fn an_open_server_admits_everyone() {
        let caller = Authenticator::open()
            .admit(CREATE_CREDENTIAL, &Presented::default())
            .unwrap();
        assert_eq!(caller.name(), "anonymous");
    }
}
