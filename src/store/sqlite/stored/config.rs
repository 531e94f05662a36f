//! The destination configuration as stored in `destinations.config_json`.
//!
//! Format 1 is the shape release 0.1.0 wrote (then the domain struct's serde shape, without a `format` field),
//! plus that field and defaults for everything but the endpoint. The conversions destructure the domain types
//! completely, so a field added to them does not compile until it is given a place here.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::domain::destination::{
    BatchEnvelope, Batching, ContentFormat, DeliveryOptions, DestinationConfig, Endpoint,
    GroupingAlgorithm, HttpMethod, ManualEndpoint, TemplateEndpoint,
};

/// The format this build writes, and the newest it reads.
pub(in crate::store) const CONFIG_FORMAT: u32 = 1;

/// Why a stored configuration cannot be read.
#[derive(Debug, thiserror::Error)]
pub(in crate::store) enum ConfigFormatError {
    #[error("format {found} was written by a newer release; this one reads up to {CONFIG_FORMAT}")]
    Newer { found: u32 },
    #[error("format {found} is not a known format")]
    Unknown { found: u32 },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// The JSON text of `config`, in format [`CONFIG_FORMAT`].
pub(in crate::store) fn encode(config: &DestinationConfig) -> serde_json::Result<String> {
    serde_json::to_string(&StoredConfig::from(config))
}

/// The configuration in `json`, written by this release or an earlier one.
pub(in crate::store) fn decode(json: &str) -> Result<DestinationConfig, ConfigFormatError> {
    // The version first, on its own: a newer format may not parse as this one.
    let FormatOnly { format } = serde_json::from_str(json)?;
    match format {
        1 => Ok(serde_json::from_str::<StoredConfig>(json)?.into()),
        found if found > CONFIG_FORMAT => Err(ConfigFormatError::Newer { found }),
        found => Err(ConfigFormatError::Unknown { found }),
    }
}

/// Release 0.1.0 wrote no format: its documents are format 1.
fn unversioned() -> u32 {
    1
}

#[derive(Deserialize)]
struct FormatOnly {
    #[serde(default = "unversioned")]
    format: u32,
}

#[derive(Serialize, Deserialize)]
struct StoredConfig {
    #[serde(default = "unversioned")]
    format: u32,
    /// What the destination calls: the one field without a default.
    endpoint: StoredEndpoint,
    #[serde(default)]
    exclude_attributes: Vec<String>,
    #[serde(default)]
    batching: StoredBatching,
    #[serde(default)]
    response_webhook: Option<String>,
    #[serde(default)]
    delivery: StoredDelivery,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredEndpoint {
    Template(StoredTemplate),
    Manual(StoredManual),
}

#[derive(Serialize, Deserialize)]
struct StoredTemplate {
    template_id: String,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct StoredManual {
    method: StoredMethod,
    url: String,
    #[serde(default)]
    content_format: StoredContentFormat,
    /// `[name, value]` pairs, in order.
    #[serde(default)]
    headers: Vec<(String, String)>,
}

#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum StoredMethod {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredContentFormat {
    #[default]
    Json,
}

#[derive(Serialize, Deserialize)]
#[serde(default)]
struct StoredBatching {
    enabled: bool,
    batch_size: u32,
    max_wait_ms: u64,
    grouping: StoredGrouping,
    group_by_attribute: Option<String>,
    envelope: StoredEnvelope,
}

impl Default for StoredBatching {
    fn default() -> Self {
        StoredBatching::from(&Batching::default())
    }
}

#[derive(Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredGrouping {
    #[default]
    ArrivalOrder,
    AttributeValue,
    RenderedRequest,
}

#[derive(Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum StoredEnvelope {
    #[default]
    JsonArray,
    Wrapped {
        key: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(default)]
struct StoredDelivery {
    concurrency: u32,
    max_attempts: u32,
    request_timeout_ms: u64,
    ordering_key_attribute: Option<String>,
    retry_unsafe_requests: bool,
}

impl Default for StoredDelivery {
    fn default() -> Self {
        StoredDelivery::from(&DeliveryOptions::default())
    }
}

impl From<&DestinationConfig> for StoredConfig {
    fn from(config: &DestinationConfig) -> Self {
        let DestinationConfig {
            endpoint,
            exclude_attributes,
            batching,
            response_webhook,
            delivery,
        } = config;
        StoredConfig {
            format: CONFIG_FORMAT,
            endpoint: match endpoint {
                Endpoint::Template(TemplateEndpoint {
                    template_id,
                    parameters,
                }) => StoredEndpoint::Template(StoredTemplate {
                    template_id: template_id.clone(),
                    parameters: parameters.clone(),
                }),
                Endpoint::Manual(ManualEndpoint {
                    method,
                    url,
                    content_format,
                    headers,
                }) => StoredEndpoint::Manual(StoredManual {
                    method: (*method).into(),
                    url: url.clone(),
                    content_format: match content_format {
                        ContentFormat::Json => StoredContentFormat::Json,
                    },
                    headers: headers.clone(),
                }),
            },
            exclude_attributes: exclude_attributes.clone(),
            batching: batching.into(),
            response_webhook: response_webhook.clone(),
            delivery: delivery.into(),
        }
    }
}

impl From<StoredConfig> for DestinationConfig {
    fn from(stored: StoredConfig) -> Self {
        let StoredConfig {
            format: _,
            endpoint,
            exclude_attributes,
            batching,
            response_webhook,
            delivery,
        } = stored;
        DestinationConfig {
            endpoint: match endpoint {
                StoredEndpoint::Template(StoredTemplate {
                    template_id,
                    parameters,
                }) => Endpoint::Template(TemplateEndpoint {
                    template_id,
                    parameters,
                }),
                StoredEndpoint::Manual(StoredManual {
                    method,
                    url,
                    content_format,
                    headers,
                }) => Endpoint::Manual(ManualEndpoint {
                    method: method.into(),
                    url,
                    content_format: match content_format {
                        StoredContentFormat::Json => ContentFormat::Json,
                    },
                    headers,
                }),
            },
            exclude_attributes,
            batching: batching.into(),
            response_webhook,
            delivery: delivery.into(),
        }
    }
}

impl From<HttpMethod> for StoredMethod {
    fn from(method: HttpMethod) -> Self {
        match method {
            HttpMethod::Get => StoredMethod::Get,
            HttpMethod::Post => StoredMethod::Post,
            HttpMethod::Put => StoredMethod::Put,
            HttpMethod::Patch => StoredMethod::Patch,
            HttpMethod::Delete => StoredMethod::Delete,
        }
    }
}

impl From<StoredMethod> for HttpMethod {
    fn from(method: StoredMethod) -> Self {
        match method {
            StoredMethod::Get => HttpMethod::Get,
            StoredMethod::Post => HttpMethod::Post,
            StoredMethod::Put => HttpMethod::Put,
            StoredMethod::Patch => HttpMethod::Patch,
            StoredMethod::Delete => HttpMethod::Delete,
        }
    }
}

impl From<&Batching> for StoredBatching {
    fn from(batching: &Batching) -> Self {
        let Batching {
            enabled,
            batch_size,
            max_wait_ms,
            grouping,
            group_by_attribute,
            envelope,
        } = batching;
        StoredBatching {
            enabled: *enabled,
            batch_size: *batch_size,
            max_wait_ms: *max_wait_ms,
            grouping: match grouping {
                GroupingAlgorithm::ArrivalOrder => StoredGrouping::ArrivalOrder,
                GroupingAlgorithm::AttributeValue => StoredGrouping::AttributeValue,
                GroupingAlgorithm::RenderedRequest => StoredGrouping::RenderedRequest,
            },
            group_by_attribute: group_by_attribute.clone(),
            envelope: match envelope {
                BatchEnvelope::JsonArray => StoredEnvelope::JsonArray,
                BatchEnvelope::Wrapped { key } => StoredEnvelope::Wrapped { key: key.clone() },
            },
        }
    }
}

impl From<StoredBatching> for Batching {
    fn from(stored: StoredBatching) -> Self {
        let StoredBatching {
            enabled,
            batch_size,
            max_wait_ms,
            grouping,
            group_by_attribute,
            envelope,
        } = stored;
        Batching {
            enabled,
            batch_size,
            max_wait_ms,
            grouping: match grouping {
                StoredGrouping::ArrivalOrder => GroupingAlgorithm::ArrivalOrder,
                StoredGrouping::AttributeValue => GroupingAlgorithm::AttributeValue,
                StoredGrouping::RenderedRequest => GroupingAlgorithm::RenderedRequest,
            },
            group_by_attribute,
            envelope: match envelope {
                StoredEnvelope::JsonArray => BatchEnvelope::JsonArray,
                StoredEnvelope::Wrapped { key } => BatchEnvelope::Wrapped { key },
            },
        }
    }
}

impl From<&DeliveryOptions> for StoredDelivery {
    fn from(delivery: &DeliveryOptions) -> Self {
        let DeliveryOptions {
            concurrency,
            max_attempts,
            request_timeout_ms,
            ordering_key_attribute,
            retry_unsafe_requests,
        } = delivery;
        StoredDelivery {
            concurrency: *concurrency,
            max_attempts: *max_attempts,
            request_timeout_ms: *request_timeout_ms,
            ordering_key_attribute: ordering_key_attribute.clone(),
            retry_unsafe_requests: *retry_unsafe_requests,
        }
    }
}

impl From<StoredDelivery> for DeliveryOptions {
    fn from(stored: StoredDelivery) -> Self {
        let StoredDelivery {
            concurrency,
            max_attempts,
            request_timeout_ms,
            ordering_key_attribute,
            retry_unsafe_requests,
        } = stored;
        DeliveryOptions {
            concurrency,
            max_attempts,
            request_timeout_ms,
            ordering_key_attribute,
            retry_unsafe_requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::destination::DEFAULT_CONCURRENCY;

    fn manual() -> DestinationConfig {
        DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method: HttpMethod::Patch,
                url: "/x/{id}".into(),
                content_format: ContentFormat::Json,
                headers: vec![("X-A".into(), "1".into())],
            }),
            exclude_attributes: vec!["a.b".into()],
            batching: Batching {
                enabled: true,
                batch_size: 7,
                max_wait_ms: 9,
                grouping: GroupingAlgorithm::RenderedRequest,
                group_by_attribute: None,
                envelope: BatchEnvelope::Wrapped { key: "k".into() },
            },
            response_webhook: Some("https://hook.example.com/".into()),
            delivery: DeliveryOptions {
                concurrency: 3,
                max_attempts: 2,
                request_timeout_ms: 1_000,
                ordering_key_attribute: Some("id".into()),
                retry_unsafe_requests: true,
            },
        }
    }

    #[test]
    fn configs_round_trip_with_their_format() {
        for config in [manual(), DestinationConfig::default()] {
            let json = encode(&config).unwrap();
            assert!(json.starts_with(r#"{"format":1,"#), "{json}");
            assert_eq!(decode(&json).unwrap(), config);
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let json = r#"{"format":1,"endpoint":{"manual":{"method":"GET","url":"/a","content_format":"json",
            "headers":[],"signing":"hmac"}},"priority":3,
            "delivery":{"concurrency":4,"max_attempts":5,"request_timeout_ms":30000,
            "ordering_key_attribute":null,"retry_unsafe_requests":false,"jitter":"full"}}"#;
        let config = decode(json).unwrap();
        assert_eq!(config.delivery.concurrency, 4);
        assert!(matches!(config.endpoint, Endpoint::Manual(ref manual) if manual.url == "/a"));
    }

    #[test]
    fn missing_fields_read_as_their_defaults() {
        let config =
            decode(r#"{"endpoint":{"template":{"template_id":"create_ticket"}}}"#).unwrap();
        assert_eq!(
            config,
            DestinationConfig {
                endpoint: Endpoint::Template(TemplateEndpoint {
                    template_id: "create_ticket".into(),
                    parameters: BTreeMap::new(),
                }),
                ..DestinationConfig::default()
            }
        );
        // A nested object missing a field added later keeps the fields it has.
        let config = decode(
            r#"{"endpoint":{"manual":{"method":"POST","url":"/b"}},"delivery":{"max_attempts":2},
                "batching":{"enabled":true}}"#,
        )
        .unwrap();
        assert_eq!(config.delivery.max_attempts, 2);
        assert_eq!(config.delivery.concurrency, DEFAULT_CONCURRENCY);
        assert!(config.batching.enabled);
        assert_eq!(config.batching.batch_size, Batching::default().batch_size);
    }

    #[test]
    fn newer_and_unknown_formats_are_refused() {
        let newer = decode(r#"{"format":2,"endpoint":"elsewhere"}"#).unwrap_err();
        assert_eq!(
            newer.to_string(),
            "format 2 was written by a newer release; this one reads up to 1"
        );
        let unknown = decode(r#"{"format":0,"endpoint":{"template":{"template_id":"x"}}}"#);
        assert!(matches!(
            unknown,
            Err(ConfigFormatError::Unknown { found: 0 })
        ));
        assert!(decode(r#"{"exclude_attributes":[]}"#).is_err());
        assert!(decode(r#"{"endpoint":{"manual":{"method":"TRACE","url":"/"}}}"#).is_err());
    }
}
