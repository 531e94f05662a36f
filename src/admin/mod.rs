//! What the admin RPCs change, in domain terms: a destination's creation, updates, lifecycle moves and deletion,
//! each checked against the domain rules and saved with its revision. The gRPC layer translates requests into
//! these calls and their errors into statuses; nothing here knows of gRPC.

mod destinations;

pub use destinations::{AdminError, DestinationAdmin, NewDestination};
