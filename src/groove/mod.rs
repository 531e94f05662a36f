//! The HTTP client for the Groove API: the only code that sees an API key in clear, and the only code that
//! sends it — as `Authorization: Bearer <key>`, to URLs under the configured base URL and nowhere else.

mod client;
mod connection;
pub mod pacer;

pub use client::{CallError, ClientBuildError, GrooveAnswer, GrooveClient, Verification};
pub use connection::GrooveConnection;
pub use pacer::{retry_after, Pacer, PacerRegistry, Permit};
