//! Pure domain logic: destinations, their configuration and validation, the Groove template catalogue.
//!
//! Nothing here knows about gRPC, HTTP clients or the database, so every rule can be unit-tested on its own.

pub mod batching;
pub mod call;
pub mod config_validation;
pub mod credential;
pub mod destination;
pub mod headers;
pub mod host_policy;
pub mod outcome;
pub mod record;
pub mod reference;
pub mod render;
pub mod templates;
pub mod url_guard;
pub mod validation;
pub mod webhook_url;
