//! What replicas sharing one PostgreSQL database use to act as one: the change feed between them. These modules
//! live under `store/postgres/` with the PostgreSQL store; they need only a pool and a connection config.

#[path = "postgres/changes.rs"]
mod changes;

pub use changes::PgChangeFeed;
