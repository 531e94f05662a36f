//! What replicas sharing one PostgreSQL database use to act as one: the change feed between them and the
//! membership that splits each credential's rate. These modules live under `store/postgres/` with the
//! PostgreSQL store; they need only a pool (and, for the feed, a connection config).

#[path = "postgres/changes.rs"]
mod changes;
#[path = "postgres/pacer_members.rs"]
mod pacer_members;

pub use changes::PgChangeFeed;
pub use pacer_members::{PgPacerMembers, MIGRATION as PACER_MEMBERS_MIGRATION};
