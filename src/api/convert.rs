//! Proto ⇄ domain translation for destinations, plus the small conversions every service shares (times,
//! durations, pages, etags). Violations name fields from the message root they are given (`config.…`).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::error::ApiError;
use crate::api::names::{CREDENTIALS, DESTINATIONS};
use crate::domain::config_validation::{
    apply_default_grouping, batch_max_wait_ms, batch_size_or_default, delivery_with_defaults,
    request_timeout_ms_or_default,
};
use crate::domain::destination::{
    BatchEnvelope, Batching, ContentFormat, DeliveryOptions, Destination, DestinationConfig,
    DestinationState, Endpoint, GroupingAlgorithm, HttpMethod, ManualEndpoint, TemplateEndpoint,
};
use crate::domain::headers::parse_header_list;
use crate::domain::validation::Violations;
use crate::domain::webhook_url;
use crate::proto;
use crate::store::PageRequest;

pub use crate::delivery::now_ms;

pub fn timestamp(ms: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: ms.div_euclid(1000),
        nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
    }
}

pub fn duration(elapsed: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: elapsed.as_secs() as i64,
        nanos: elapsed.subsec_nanos() as i32,
    }
}

fn duration_from_proto(
    field: &str,
    value: &prost_types::Duration,
    violations: &mut Violations,
) -> Option<Duration> {
    if value.seconds < 0 || value.nanos < 0 {
        violations.push(field, "duration must not be negative");
        return None;
    }
    Some(Duration::new(value.seconds as u64, value.nanos as u32))
}

pub fn page_request(page_size: i32, page_token: &str) -> Result<PageRequest, ApiError> {
    if page_size < 0 {
        return Err(ApiError::invalid(
            "page_size",
            "page size must not be negative",
        ));
    }
    Ok(PageRequest {
        page_size: page_size as u32,
        after: (!page_token.is_empty()).then(|| page_token.to_string()),
    })
}

/// The etag is the revision; quoting it keeps clients from treating it as a number they could compute.
pub fn etag(revision: u64) -> String {
    format!("\"{revision}\"")
}

/// `None` for an empty etag (no precondition).
pub fn parse_etag(field: &str, etag: &str) -> Result<Option<u64>, ApiError> {
    if etag.is_empty() {
        return Ok(None);
    }
    etag.trim_matches('"').parse().map(Some).map_err(|_| {
        ApiError::invalid(
            field,
            format!("etag {etag:?} was not issued by this server"),
        )
    })
}

pub fn state_to_proto(state: DestinationState) -> proto::destination::State {
    match state {
        DestinationState::Inactive => proto::destination::State::Inactive,
        DestinationState::Active => proto::destination::State::Active,
        DestinationState::Paused => proto::destination::State::Paused,
    }
}

pub fn method_to_proto(method: HttpMethod) -> proto::HttpMethod {
    match method {
        HttpMethod::Get => proto::HttpMethod::Get,
        HttpMethod::Post => proto::HttpMethod::Post,
        HttpMethod::Put => proto::HttpMethod::Put,
        HttpMethod::Patch => proto::HttpMethod::Patch,
        HttpMethod::Delete => proto::HttpMethod::Delete,
    }
}

pub fn method_from_proto(
    field: &str,
    value: i32,
    violations: &mut Violations,
) -> Option<HttpMethod> {
    match proto::HttpMethod::try_from(value) {
        Ok(proto::HttpMethod::Get) => Some(HttpMethod::Get),
        Ok(proto::HttpMethod::Post) => Some(HttpMethod::Post),
        Ok(proto::HttpMethod::Put) => Some(HttpMethod::Put),
        Ok(proto::HttpMethod::Patch) => Some(HttpMethod::Patch),
        Ok(proto::HttpMethod::Delete) => Some(HttpMethod::Delete),
        Ok(proto::HttpMethod::Unspecified) => {
            violations.push(field, "method is required");
            None
        }
        Err(_) => {
            violations.push(field, format!("unknown method {value}"));
            None
        }
    }
}

pub fn destination_to_proto(destination: Destination) -> proto::Destination {
    proto::Destination {
        name: DESTINATIONS.name(&destination.id),
        display_name: destination.display_name,
        credential: CREDENTIALS.name(&destination.credential_id),
        state: state_to_proto(destination.state) as i32,
        config: Some(config_to_proto(&destination.config)),
        create_time: Some(timestamp(destination.create_time_ms)),
        update_time: Some(timestamp(destination.update_time_ms)),
        etag: etag(destination.revision),
    }
}

pub fn config_to_proto(config: &DestinationConfig) -> proto::DestinationConfig {
    let endpoint = match &config.endpoint {
        Endpoint::Template(template) => {
            proto::destination_config::Endpoint::Template(proto::TemplateEndpoint {
                template_id: template.template_id.clone(),
                parameters: template.parameters.clone().into_iter().collect(),
            })
        }
        // Headers come back as a map: the `h1:v1,h2:v2` text cannot carry a value with a comma.
        Endpoint::Manual(manual) => {
            proto::destination_config::Endpoint::Manual(proto::ManualEndpoint {
                method: method_to_proto(manual.method) as i32,
                url: manual.url.clone(),
                content_format: proto::ContentFormat::Json as i32,
                headers: String::new(),
                header_map: manual.headers.iter().cloned().collect(),
            })
        }
    };
    let batching = &config.batching;
    let delivery = &config.delivery;
    proto::DestinationConfig {
        endpoint: Some(endpoint),
        exclude_attributes: config.exclude_attributes.clone(),
        batching: Some(proto::Batching {
            enabled: batching.enabled,
            batch_size: batching.batch_size,
            max_wait: Some(duration(Duration::from_millis(batching.max_wait_ms))),
            grouping: match batching.grouping {
                GroupingAlgorithm::ArrivalOrder => proto::GroupingAlgorithm::ArrivalOrder,
                GroupingAlgorithm::AttributeValue => proto::GroupingAlgorithm::AttributeValue,
                GroupingAlgorithm::RenderedRequest => proto::GroupingAlgorithm::RenderedRequest,
            } as i32,
            group_by_attribute: batching.group_by_attribute.clone().unwrap_or_default(),
            envelope: match batching.envelope {
                BatchEnvelope::JsonArray => proto::BatchEnvelope::JsonArray,
                BatchEnvelope::Wrapped { .. } => proto::BatchEnvelope::Wrapped,
            } as i32,
            envelope_key: match &batching.envelope {
                BatchEnvelope::Wrapped { key } => key.clone(),
                BatchEnvelope::JsonArray => String::new(),
            },
        }),
        response_webhook: config
            .response_webhook
            .as_ref()
            // A password in the URL is not shown; sending the shown URL back keeps it (see apply_update).
            .map(|url| proto::ResponseWebhook {
                url: webhook_url::redact(url),
            }),
        delivery: Some(proto::DeliveryOptions {
            concurrency: delivery.concurrency,
            max_attempts: delivery.max_attempts,
            request_timeout: Some(duration(Duration::from_millis(delivery.request_timeout_ms))),
            ordering_key_attribute: delivery.ordering_key_attribute.clone().unwrap_or_default(),
            retry_unsafe_requests: delivery.retry_unsafe_requests,
        }),
    }
}

/// A whole config from its proto; fields named under `config`.
pub fn config_from_proto(
    config: proto::DestinationConfig,
) -> Result<DestinationConfig, Violations> {
    let mut violations = Violations::default();
    let endpoint = endpoint_from_proto(config.endpoint, &mut violations);
    let (batching, grouping_given) = batching_from_proto(config.batching, &mut violations);
    let mut domain = DestinationConfig {
        endpoint: endpoint.unwrap_or_default(),
        exclude_attributes: config.exclude_attributes,
        batching,
        response_webhook: webhook_from_proto(config.response_webhook),
        delivery: delivery_from_proto(config.delivery, &mut violations),
    };
    if !grouping_given {
        apply_default_grouping(&mut domain);
    }
    violations.into_result().map(|()| domain)
}

pub fn endpoint_from_proto(
    endpoint: Option<proto::destination_config::Endpoint>,
    violations: &mut Violations,
) -> Option<Endpoint> {
    match endpoint {
        None => {
            violations.push("config.endpoint", "one of template or manual is required");
            None
        }
        Some(proto::destination_config::Endpoint::Template(template)) => {
            Some(Endpoint::Template(TemplateEndpoint {
                template_id: template.template_id.trim().to_string(),
                parameters: template.parameters.into_iter().collect::<BTreeMap<_, _>>(),
            }))
        }
        Some(proto::destination_config::Endpoint::Manual(manual)) => {
            let method = method_from_proto("config.manual.method", manual.method, violations);
            match proto::ContentFormat::try_from(manual.content_format) {
                Ok(_) => {}
                Err(_) => violations.push(
                    "config.manual.content_format",
                    format!("unknown content format {}", manual.content_format),
                ),
            }
            let headers = manual_headers(&manual.headers, manual.header_map, violations);
            method.map(|method| {
                Endpoint::Manual(ManualEndpoint {
                    method,
                    // As given: the URL guard names a stray space, tab or line break instead of it being
                    // dropped unseen.
                    url: manual.url,
                    content_format: ContentFormat::Json,
                    headers,
                })
            })
        }
    }
}

/// `headers` text first, then the map (sorted by name, so the order is stable); a name given twice is refused.
fn manual_headers(
    text: &str,
    map: std::collections::HashMap<String, String>,
    violations: &mut Violations,
) -> Vec<(String, String)> {
    let mut headers = match parse_header_list(text) {
        Ok(headers) => headers,
        Err(problem) => {
            violations.push("config.manual.headers", problem.to_string());
            Vec::new()
        }
    };
    let mut from_map: Vec<(String, String)> = map.into_iter().collect();
    from_map.sort();
    for (name, value) in from_map {
        if headers
            .iter()
            .any(|(existing, _)| existing.eq_ignore_ascii_case(&name))
        {
            violations.push(
                "config.manual.header_map",
                format!("header {name} is given twice"),
            );
        } else {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    headers
}

/// Batching settings; the flag says whether a grouping algorithm was chosen explicitly.
pub fn batching_from_proto(
    batching: Option<proto::Batching>,
    violations: &mut Violations,
) -> (Batching, bool) {
    let Some(batching) = batching else {
        return (Batching::default(), false);
    };
    let defaults = Batching::default();
    let max_wait_ms = match &batching.max_wait {
        None => defaults.max_wait_ms,
        Some(wait) => match duration_from_proto("config.batching.max_wait", wait, violations) {
            Some(wait) => batch_max_wait_ms("config.batching.max_wait", wait, violations),
            None => defaults.max_wait_ms,
        },
    };
    let (grouping, grouping_given) = match proto::GroupingAlgorithm::try_from(batching.grouping) {
        Ok(proto::GroupingAlgorithm::Unspecified) => (GroupingAlgorithm::ArrivalOrder, false),
        Ok(proto::GroupingAlgorithm::ArrivalOrder) => (GroupingAlgorithm::ArrivalOrder, true),
        Ok(proto::GroupingAlgorithm::AttributeValue) => (GroupingAlgorithm::AttributeValue, true),
        Ok(proto::GroupingAlgorithm::RenderedRequest) => (GroupingAlgorithm::RenderedRequest, true),
        Err(_) => {
            violations.push(
                "config.batching.grouping",
                format!("unknown grouping algorithm {}", batching.grouping),
            );
            (GroupingAlgorithm::ArrivalOrder, true)
        }
    };
    let envelope = match proto::BatchEnvelope::try_from(batching.envelope) {
        Ok(proto::BatchEnvelope::Unspecified | proto::BatchEnvelope::JsonArray) => {
            BatchEnvelope::JsonArray
        }
        Ok(proto::BatchEnvelope::Wrapped) => BatchEnvelope::Wrapped {
            key: batching.envelope_key.trim().to_string(),
        },
        Err(_) => {
            violations.push(
                "config.batching.envelope",
                format!("unknown envelope {}", batching.envelope),
            );
            BatchEnvelope::JsonArray
        }
    };
    let group_by_attribute = batching.group_by_attribute.trim();
    (
        Batching {
            enabled: batching.enabled,
            batch_size: batch_size_or_default(batching.batch_size),
            max_wait_ms,
            grouping,
            group_by_attribute: (!group_by_attribute.is_empty())
                .then(|| group_by_attribute.to_string()),
            envelope,
        },
        grouping_given,
    )
}

pub fn webhook_from_proto(webhook: Option<proto::ResponseWebhook>) -> Option<String> {
    webhook
        .map(|webhook| webhook.url.trim().to_string())
        .filter(|url| !url.is_empty())
}

pub fn delivery_from_proto(
    delivery: Option<proto::DeliveryOptions>,
    violations: &mut Violations,
) -> DeliveryOptions {
    let Some(delivery) = delivery else {
        return DeliveryOptions::default();
    };
    let request_timeout_ms =
        request_timeout_ms_or_default(delivery.request_timeout.as_ref().and_then(|timeout| {
            duration_from_proto("config.delivery.request_timeout", timeout, violations)
        }));
    let ordering_key_attribute = delivery.ordering_key_attribute.trim();
    delivery_with_defaults(DeliveryOptions {
        concurrency: delivery.concurrency,
        max_attempts: delivery.max_attempts,
        request_timeout_ms,
        ordering_key_attribute: (!ordering_key_attribute.is_empty())
            .then(|| ordering_key_attribute.to_string()),
        retry_unsafe_requests: delivery.retry_unsafe_requests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_password_is_not_shown() {
        let config = DestinationConfig {
            response_webhook: Some("https://hooks:s3cret@hooks.example/x".into()),
            ..DestinationConfig::default()
        };
        let shown = config_to_proto(&config).response_webhook.unwrap().url;
        assert_eq!(shown, "https://hooks:***@hooks.example/x");
    }

    #[test]
    fn timestamps_split_milliseconds() {
        let ts = timestamp(1_700_000_000_123);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }

    #[test]
    fn etags_round_trip_and_foreign_ones_are_refused() {
        assert_eq!(parse_etag("etag", &etag(7)).unwrap(), Some(7));
        assert_eq!(parse_etag("etag", "").unwrap(), None);
        assert!(parse_etag("etag", "W/abc").is_err());
    }

    #[test]
    fn unset_parts_take_their_defaults() {
        let config = config_from_proto(proto::DestinationConfig {
            endpoint: Some(proto::destination_config::Endpoint::Template(
                proto::TemplateEndpoint {
                    template_id: "create_ticket".into(),
                    parameters: Default::default(),
                },
            )),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(config.batching, Batching::default());
        assert_eq!(config.delivery, DeliveryOptions::default());
        assert_eq!(config.response_webhook, None);
    }

    #[test]
    fn a_missing_endpoint_and_method_are_named() {
        let violations = config_from_proto(proto::DestinationConfig::default()).unwrap_err();
        assert_eq!(violations.0[0].field, "config.endpoint");
        let violations = config_from_proto(proto::DestinationConfig {
            endpoint: Some(proto::destination_config::Endpoint::Manual(
                proto::ManualEndpoint {
                    url: "tickets".into(),
                    ..Default::default()
                },
            )),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(violations.0[0].field, "config.manual.method");
    }

    #[test]
    fn referencing_urls_group_by_rendered_request_unless_chosen() {
        let manual = |grouping| proto::DestinationConfig {
            endpoint: Some(proto::destination_config::Endpoint::Manual(
                proto::ManualEndpoint {
                    method: proto::HttpMethod::Post as i32,
                    url: "tickets/{number}/messages".into(),
                    ..Default::default()
                },
            )),
            batching: Some(proto::Batching {
                enabled: true,
                grouping,
                ..Default::default()
            }),
            ..Default::default()
        };
        let config = config_from_proto(manual(0)).unwrap();
        assert_eq!(config.batching.grouping, GroupingAlgorithm::RenderedRequest);
        let config =
            config_from_proto(manual(proto::GroupingAlgorithm::ArrivalOrder as i32)).unwrap();
        assert_eq!(config.batching.grouping, GroupingAlgorithm::ArrivalOrder);
    }
}
