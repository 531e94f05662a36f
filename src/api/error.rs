//! Every error a client can see, and its gRPC status: the one place where errors become `tonic::Status`.

use thiserror::Error;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::admin::AdminError;
use crate::auth::AuthError;
use crate::delivery::{
    CredentialUpdateError, DeliveryError, Interruption, TestSendError, Unreadable,
};
use crate::domain::destination::LifecycleError;
use crate::domain::validation::Violations;
use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum ApiError {
    /// Bad input; each violation names its field.
    #[error("{0}")]
    InvalidArgument(Violations),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Aborted(String),
    #[error("{0}")]
    Unimplemented(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Cancelled(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApiError {
    /// One bad field.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::default();
        violations.push(field, description);
        ApiError::InvalidArgument(violations)
    }

    /// Violations found relative to a sub-message, reported from the request's root (`destination.` + path).
    pub fn invalid_under(prefix: &str, violations: Violations) -> Self {
        let violations = violations
            .0
            .into_iter()
            .map(|mut violation| {
                violation.field = format!("{prefix}.{}", violation.field);
                violation
            })
            .collect();
        ApiError::InvalidArgument(Violations(violations))
    }
}

impl From<DeliveryError> for ApiError {
    fn from(error: DeliveryError) -> Self {
        match error {
            DeliveryError::Store(store) => ApiError::Store(store),
            not_active @ DeliveryError::NotActive { .. } => {
                ApiError::FailedPrecondition(not_active.to_string())
            }
            bad_config @ DeliveryError::BadConfig { .. } => {
                ApiError::FailedPrecondition(bad_config.to_string())
            }
        }
    }
}

impl From<AdminError> for ApiError {
    fn from(error: AdminError) -> Self {
        match error {
            AdminError::Invalid(violations) => ApiError::InvalidArgument(violations),
            AdminError::InvalidConfig(violations) => {
                ApiError::invalid_under("destination", violations)
            }
            AdminError::Lifecycle(error) => error.into(),
            AdminError::Changed { .. } => ApiError::Aborted(error.to_string()),
            AdminError::Store(store) => ApiError::Store(store),
        }
    }
}

impl From<LifecycleError> for ApiError {
    fn from(error: LifecycleError) -> Self {
        ApiError::FailedPrecondition(error.to_string())
    }
}

impl From<TestSendError> for ApiError {
    fn from(error: TestSendError) -> Self {
        match error {
            TestSendError::Store(store) => ApiError::Store(store),
            bad_config @ TestSendError::BadConfig { .. } => {
                ApiError::FailedPrecondition(bad_config.to_string())
            }
            TestSendError::UnreadableRecord(problem) => ApiError::invalid("record", problem),
            TestSendError::InvalidRecord(violations) => {
                ApiError::invalid_under("record", violations)
            }
            TestSendError::NoRequest => {
                ApiError::invalid("record", TestSendError::NoRequest.to_string())
            }
            TestSendError::OutsideBaseUrl => {
                ApiError::invalid("request.url", TestSendError::OutsideBaseUrl.to_string())
            }
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        if error.is_unauthenticated() {
            ApiError::Unauthenticated(error.to_string())
        } else {
            ApiError::PermissionDenied(error.to_string())
        }
    }
}

impl From<CredentialUpdateError> for ApiError {
    fn from(error: CredentialUpdateError) -> Self {
        match error {
            CredentialUpdateError::Store(store) => ApiError::Store(store),
            refused @ CredentialUpdateError::KeyRefused { .. } => {
                ApiError::FailedPrecondition(refused.to_string())
            }
            unverified @ CredentialUpdateError::CannotVerify { .. } => {
                ApiError::Unavailable(unverified.to_string())
            }
        }
    }
}

/// How a SendRecords stream that stopped early ends.
impl From<Interruption> for ApiError {
    fn from(interruption: Interruption) -> Self {
        match interruption {
            Interruption::NotActive(why) => ApiError::FailedPrecondition(why),
            Interruption::Deleted(why) => ApiError::NotFound(why),
            Interruption::ShuttingDown(why) => ApiError::Unavailable(why),
            Interruption::ClientGone => ApiError::Cancelled(
                "the client went away; records without a result were not sent".into(),
            ),
            Interruption::Unreadable(Unreadable::TooLarge(why)) => ApiError::ResourceExhausted(why),
            Interruption::Unreadable(Unreadable::Malformed(why)) => {
                ApiError::invalid("records", why)
            }
        }
    }
}

impl From<Violations> for ApiError {
    fn from(violations: Violations) -> Self {
        ApiError::InvalidArgument(violations)
    }
}

impl From<ApiError> for Status {
    fn from(error: ApiError) -> Self {
        match error {
            ApiError::InvalidArgument(violations) => {
                let mut details = ErrorDetails::new();
                for violation in &violations.0 {
                    details.add_bad_request_violation(&violation.field, &violation.description);
                }
                Status::with_error_details(Code::InvalidArgument, violations.to_string(), details)
            }
            ApiError::NotFound(message) => Status::not_found(message),
            ApiError::FailedPrecondition(message) => Status::failed_precondition(message),
            ApiError::Aborted(message) => Status::aborted(message),
            ApiError::Unimplemented(message) => Status::unimplemented(message),
            ApiError::Unavailable(message) => Status::unavailable(message),
            ApiError::ResourceExhausted(message) => Status::resource_exhausted(message),
            ApiError::Cancelled(message) => Status::cancelled(message),
            ApiError::Unauthenticated(message) => Status::unauthenticated(message),
            ApiError::PermissionDenied(message) => Status::permission_denied(message),
            ApiError::Store(store_error) => store_status(store_error),
        }
    }
}

fn store_status(error: StoreError) -> Status {
    let message = error.to_string();
    match error {
        StoreError::NotFound { .. } | StoreError::CredentialNotFound { .. } => {
            Status::not_found(message)
        }
        StoreError::AlreadyExists { .. } => Status::already_exists(message),
        StoreError::CredentialInUse { .. } => Status::failed_precondition(message),
        StoreError::RevisionMismatch { .. } => Status::aborted(message),
        StoreError::InvalidPageToken => ApiError::invalid(
            "page_token",
            "page token is not valid; start again with an empty token",
        )
        .into(),
        _ => {
            // Internal details (paths, SQL) help an operator, not a client.
            tracing::error!(error = %message, "store failure");
            Status::internal("internal storage error; see the server log")
        }
    }
}

impl From<Violations> for Status {
    fn from(violations: Violations) -> Self {
        ApiError::InvalidArgument(violations).into()
    }
}
