//! Errors every store implementation reports, so the API layer can map them to gRPC codes in one place.

use std::error::Error as StdError;

use thiserror::Error;

/// `kind` of a credential in [`StoreError::NotFound`] and [`StoreError::AlreadyExists`].
pub const CREDENTIAL: &str = "credential";
/// `kind` of a destination in [`StoreError::NotFound`] and [`StoreError::AlreadyExists`].
pub const DESTINATION: &str = "destination";

/// What went wrong in a store operation.
///
/// Messages name the resource the way the public contract does (`destination destinations/42 not found`) and
/// never contain an API key or secret-key material, so they are safe to log and to return to callers.
#[derive(Debug, Error)]
pub enum StoreError {
    /// No resource with this id. `kind` is [`CREDENTIAL`] or [`DESTINATION`].
    #[error("{kind} {kind}s/{id} not found")]
    NotFound { kind: &'static str, id: String },

    /// A create used an id that is taken. `kind` is [`CREDENTIAL`] or [`DESTINATION`].
    #[error("{kind} {kind}s/{id} already exists")]
    AlreadyExists { kind: &'static str, id: String },

    /// A credential cannot be deleted while destinations refer to it. `destination_ids` lists them in id
    /// order, at most [`MAX_LISTED_DESTINATIONS`](crate::store::MAX_LISTED_DESTINATIONS) of them.
    #[error(
        "credential credentials/{credential_id} is used by {}",
        resource_names("destinations", destination_ids)
    )]
    CredentialInUse {
        credential_id: String,
        destination_ids: Vec<String>,
    },

    /// A destination refers to a credential that does not exist (a precondition failure, unlike `NotFound`
    /// which is about the resource being addressed).
    #[error("credential credentials/{id} does not exist")]
    CredentialNotFound { id: String },

    /// A compare-and-swap write lost: the destination changed since the caller read it.
    #[error(
        "destination destinations/{id} has changed: expected revision {expected}, found {actual}"
    )]
    RevisionMismatch {
        id: String,
        expected: u64,
        actual: u64,
    },

    /// A page token that this store did not hand out (or that was damaged on the way).
    #[error("page token is not valid")]
    InvalidPageToken,

    /// A stored API key failed authentication: a different secret key, or damaged or moved ciphertext.
    /// Never garbage plaintext.
    #[error("cannot decrypt the api key of credential credentials/{credential_id}: wrong secret key or damaged data")]
    Decrypt { credential_id: String },

    /// The secret key is missing, malformed, exposed (loose file permissions), or not the key the database
    /// was written with.
    #[error("secret key: {reason}")]
    SecretKey { reason: String },

    /// Stored data this build cannot read back (unknown state, unparsable configuration, schema too new).
    #[error("{what} is corrupt: {detail}")]
    Corrupt { what: String, detail: String },

    /// Everything else: I/O, database engine and worker failures. `context` says what was being done.
    #[error("{context}: {cause}")]
    Internal {
        context: String,
        cause: Box<dyn StdError + Send + Sync>,
    },
}

impl StoreError {
    /// A [`StoreError::Internal`] from a description of what failed and why.
    pub(crate) fn internal(
        context: impl Into<String>,
        cause: impl Into<Box<dyn StdError + Send + Sync>>,
    ) -> Self {
        StoreError::Internal {
            context: context.into(),
            cause: cause.into(),
        }
    }

    pub(crate) fn not_found(kind: &'static str, id: &str) -> Self {
        StoreError::NotFound {
            kind,
            id: id.to_string(),
        }
    }

    pub(crate) fn already_exists(kind: &'static str, id: &str) -> Self {
        StoreError::AlreadyExists {
            kind,
            id: id.to_string(),
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, detail: impl Into<String>) -> Self {
        StoreError::Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

fn resource_names(collection: &str, ids: &[String]) -> String {
    ids.iter()
        .map(|id| format!("{collection}/{id}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Attaches "what was being done" to engine and I/O errors, turning them into [`StoreError::Internal`].
pub(crate) trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError>;
}

impl<T, E> Context<T> for Result<T, E>
where
    E: StdError + Send + Sync + 'static,
{
    fn context(self, context: impl FnOnce() -> String) -> Result<T, StoreError> {
        self.map_err(|cause| StoreError::internal(context(), cause))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_resource() {
        assert_eq!(
            StoreError::not_found(DESTINATION, "42").to_string(),
            "destination destinations/42 not found"
        );
        assert_eq!(
            StoreError::already_exists(CREDENTIAL, "main").to_string(),
            "credential credentials/main already exists"
        );
        let in_use = StoreError::CredentialInUse {
            credential_id: "main".into(),
            destination_ids: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            in_use.to_string(),
            "credential credentials/main is used by destinations/a, destinations/b"
        );
        let stale = StoreError::RevisionMismatch {
            id: "a".into(),
            expected: 2,
            actual: 3,
        };
        assert_eq!(
            stale.to_string(),
            "destination destinations/a has changed: expected revision 2, found 3"
        );
    }

    #[test]
    fn internal_errors_keep_their_cause_in_the_message() {
        let io = std::io::Error::other("disk on fire");
        let err = Err::<(), _>(io)
            .context(|| "writing x".to_string())
            .unwrap_err();
        assert_eq!(err.to_string(), "writing x: disk on fire");
    }
}
