//! What the store writes as JSON, as types of its own: the domain types can change shape without changing what
//! is on disk, and what is on disk can gain fields without making older rows unreadable.
//!
//! Two kinds of version keep a database readable across releases:
//!
//! - the **schema version** (`PRAGMA user_version`, see `migrations`): the tables and columns;
//! - a **format version** inside each JSON document that has a shape of its own (today the destination
//!   configuration, [`config`]). A document without one was written before formats were versioned (release
//!   0.1.0) and reads as format 1, which has the same shape. A document with a format this build does not know
//!   is refused as written by a newer release, rather than misread.
//!
//! Within a format, every field but the ones that identify what the document is (the endpoint kind) has a
//! default, so a field added later reads from older rows as its default, and a field this build does not know
//! (written by a newer one) is ignored. A change that cannot be read that way (a field changing meaning or
//! type) takes a new format number and a conversion from the old one here.
//!
//! Header lists ([`headers`]) are a plain JSON array of `[name, value]` pairs with nothing to version. Record
//! claims are a binary layout, described with their table in migration 0003.

pub(in crate::store) mod config;
pub(in crate::store) mod headers;
