//! Who may call the service, and over what: the callers file (bearer tokens and client certificate names,
//! with scopes and destination limits), TLS on the gRPC port, and the start-up rule that a server reachable
//! from other hosts must authenticate its callers. The gRPC layer applies it (`api::guard`).

mod authenticator;
mod callers;
mod certificate;
mod reload;
mod scope;
mod setup;
mod tls;

pub use authenticator::{check_destination, AuthError, Authenticator, Presented};
pub use callers::{Caller, Callers, CallersFileError};
pub use reload::{keep_reloaded, POLL_INTERVAL};
pub use scope::Scope;
pub use setup::{set_up, Security, SecurityError, SecurityOptions};
pub use tls::{accept_tls, TlsError, TlsFiles};
