//! A destination: where records go (a template or a manual endpoint), how they are grouped and delivered.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Lifecycle state. Records are only ever sent while `Active`.
///
/// The lifecycle, all of it ([`DestinationState::transition`]): a destination is created `Inactive`;
/// activating makes it `Active`, pausing an active one makes it `Paused`, activating a paused one makes it
/// `Active` again. An inactive destination cannot be paused, and none goes back to `Inactive`. Asking for the
/// state it is in changes nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DestinationState {
    Inactive,
    Active,
    Paused,
}

impl DestinationState {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationState::Inactive => "inactive",
            DestinationState::Active => "active",
            DestinationState::Paused => "paused",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "inactive" => Some(DestinationState::Inactive),
            "active" => Some(DestinationState::Active),
            "paused" => Some(DestinationState::Paused),
            _ => None,
        }
    }

    /// The state a destination in this state is in once asked to be in `target`: `Ok(None)` when it is
    /// already there, `Err` when the lifecycle does not allow the move. `name` names it in the error.
    pub fn transition(
        self,
        name: &str,
        target: DestinationState,
    ) -> Result<Option<DestinationState>, LifecycleError> {
        use DestinationState::{Active, Inactive, Paused};
        match (self, target) {
            (Inactive, Inactive) | (Active, Active) | (Paused, Paused) => Ok(None),
            (Inactive | Paused, Active) | (Active, Paused) => Ok(Some(target)),
            (Inactive, Paused) => Err(LifecycleError::PauseInactive {
                name: name.to_string(),
            }),
            (Active | Paused, Inactive) => Err(LifecycleError::BackToInactive {
                name: name.to_string(),
            }),
        }
    }
}

/// A move the destination lifecycle does not allow.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum LifecycleError {
    #[error("destination {name} is inactive; activate it before pausing")]
    PauseInactive { name: String },
    #[error("destination {name} was activated before; it can be paused, not made inactive again")]
    BackToInactive { name: String },
}

/// A stored destination. `id` is the last segment of the resource name `destinations/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub id: String,
    pub display_name: String,
    /// Id of the credential (last segment of `credentials/{id}`).
    pub credential_id: String,
    pub state: DestinationState,
    pub config: DestinationConfig,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
    /// Bumped on every write; the etag handed to clients is derived from it.
    pub revision: u64,
}

/// Everything that decides what requests a destination makes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DestinationConfig {
    pub endpoint: Endpoint,
    /// Record attributes removed before the body is built; dotted paths (`customer.email`) reach nested fields.
    pub exclude_attributes: Vec<String>,
    pub batching: Batching,
    /// Where each Groove response is forwarded as JSON; `None` disables forwarding.
    pub response_webhook: Option<String>,
    pub delivery: DeliveryOptions,
}

/// Either one of the ready Groove templates or a hand-written request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    Template(TemplateEndpoint),
    Manual(ManualEndpoint),
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::Template(TemplateEndpoint::default())
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TemplateEndpoint {
    /// Id from the template catalogue, e.g. `create_ticket`.
    pub template_id: String,
    /// Path parameter values by name. A value is a literal (`"1234"`) or a record-field reference (`"{ticket.number}"`).
    pub parameters: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ManualEndpoint {
    pub method: HttpMethod,
    /// Relative to the Groove base URL; may contain record-field references.
    pub url: String,
    pub content_format: ContentFormat,
    /// Extra request headers, in the order given.
    pub headers: Vec<(String, String)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl HttpMethod {
    pub const ALL: [HttpMethod; 5] = [
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The method named by `as_str`'s spelling.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|method| method.as_str() == text)
    }

    /// A retried non-idempotent call may create a second resource in Groove (Groove has no idempotency keys).
    pub fn is_idempotent(self) -> bool {
        !matches!(self, HttpMethod::Post | HttpMethod::Patch)
    }

    /// GET and DELETE carry no body: Groove reads their parameters from the URL.
    pub fn carries_body(self) -> bool {
        !matches!(self, HttpMethod::Get | HttpMethod::Delete)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContentFormat {
    #[default]
    Json,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupingAlgorithm {
    /// Records are batched in the order they arrive.
    #[default]
    ArrivalOrder,
    /// One batch per distinct value of `Batching::group_by_attribute`.
    AttributeValue,
    /// One batch per distinct rendered URL and headers.
    RenderedRequest,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchEnvelope {
    /// The body is a JSON array of records.
    #[default]
    JsonArray,
    /// The body is `{"<key>": [records]}`.
    Wrapped { key: String },
}

pub const DEFAULT_BATCH_SIZE: u32 = 100;
pub const MAX_BATCH_SIZE: u32 = 1000;
pub const DEFAULT_BATCH_MAX_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batching {
    pub enabled: bool,
    pub batch_size: u32,
    /// A partial batch is sent once its oldest record has waited this long.
    pub max_wait_ms: u64,
    pub grouping: GroupingAlgorithm,
    /// Record attribute (dotted path) used by `GroupingAlgorithm::AttributeValue`.
    pub group_by_attribute: Option<String>,
    pub envelope: BatchEnvelope,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            enabled: false,
            batch_size: DEFAULT_BATCH_SIZE,
            max_wait_ms: DEFAULT_BATCH_MAX_WAIT.as_millis() as u64,
            grouping: GroupingAlgorithm::ArrivalOrder,
            group_by_attribute: None,
            envelope: BatchEnvelope::JsonArray,
        }
    }
}

pub const DEFAULT_CONCURRENCY: u32 = 8;
pub const MAX_CONCURRENCY: u32 = 256;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const MAX_ATTEMPTS_LIMIT: u32 = 20;
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryOptions {
    /// Calls in flight at once for this destination.
    pub concurrency: u32,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    pub request_timeout_ms: u64,
    /// Record attribute whose value orders records; `None` uses the template's default ordering key.
    pub ordering_key_attribute: Option<String>,
    /// Retry a POST that may already have reached Groove (risking a duplicate). Off by default.
    pub retry_unsafe_requests: bool,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            concurrency: DEFAULT_CONCURRENCY,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT.as_millis() as u64,
            ordering_key_attribute: None,
            retry_unsafe_requests: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of states: the moves the lifecycle allows, the ones it refuses, and staying put.
    #[test]
    fn the_lifecycle_allows_only_its_moves() {
        use DestinationState::{Active, Inactive, Paused};
        let all = [Inactive, Active, Paused];
        for from in all {
            for to in all {
                let moved = from.transition("destinations/d", to);
                let expected = match (from, to) {
                    _ if from == to => Ok(None),
                    (Inactive, Active) | (Active, Paused) | (Paused, Active) => Ok(Some(to)),
                    (Inactive, Paused) => Err(LifecycleError::PauseInactive {
                        name: "destinations/d".into(),
                    }),
                    _ => Err(LifecycleError::BackToInactive {
                        name: "destinations/d".into(),
                    }),
                };
                assert_eq!(moved, expected, "{from:?} -> {to:?}");
            }
        }
        assert_eq!(
            Inactive
                .transition("destinations/d", Paused)
                .unwrap_err()
                .to_string(),
            "destination destinations/d is inactive; activate it before pausing"
        );
    }

    #[test]
    fn methods_round_trip_through_their_names() {
        for method in HttpMethod::ALL {
            assert_eq!(HttpMethod::parse(method.as_str()), Some(method));
        }
        assert_eq!(HttpMethod::parse("get"), None);
    }
}
