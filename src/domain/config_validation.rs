//! Validation of a whole destination configuration: every problem at once, each named by its field path rooted
//! at `config` (`config.template.parameters.ticket_number`, `config.exclude_attributes[2]`), so a user fixes
//! everything in one round trip.
//!
//! Only the configuration is checked here; record bodies are checked per record by
//! [`super::templates::check_record_fields`] and URLs again at render time by [`super::url_guard::resolve`].

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use url::{Host, Url};

use super::destination::{
    BatchEnvelope, Batching, DeliveryOptions, DestinationConfig, Endpoint, GroupingAlgorithm,
    HttpMethod, ManualEndpoint, TemplateEndpoint, DEFAULT_BATCH_SIZE, MAX_ATTEMPTS_LIMIT,
    MAX_BATCH_SIZE, MAX_CONCURRENCY, MAX_REQUEST_TIMEOUT,
};
use super::headers::check_headers;
use super::host_policy::{self, AddressClass};
use super::reference::{FieldPath, Pattern};
use super::templates::{self, Template};
use super::url_guard;
use super::validation::Violations;

/// Longest `max_wait` for a partial batch.
pub const MAX_BATCH_WAIT: Duration = Duration::from_secs(60);

/// Longest display name accepted (destinations and credentials).
pub const MAX_DISPLAY_NAME: usize = 200;

/// A display name is required and at most [`MAX_DISPLAY_NAME`] characters, not counting surrounding spaces.
pub fn check_display_name(field: &str, display_name: &str, violations: &mut Violations) {
    let display_name = display_name.trim();
    if display_name.is_empty() {
        violations.push(field, "display name is required");
    } else if display_name.chars().count() > MAX_DISPLAY_NAME {
        violations.push(
            field,
            format!("display name is longer than {MAX_DISPLAY_NAME} characters"),
        );
    }
}

/// A batch's `max_wait` in milliseconds: zero (unset) takes the default; more than [`MAX_BATCH_WAIT`] is a
/// violation of `field` (and the default stands in).
pub fn batch_max_wait_ms(field: &str, wait: Duration, violations: &mut Violations) -> u64 {
    let default = Batching::default().max_wait_ms;
    if wait > MAX_BATCH_WAIT {
        violations.push(
            field,
            format!("max wait must be at most {}s", MAX_BATCH_WAIT.as_secs()),
        );
        default
    } else if wait.is_zero() {
        default
    } else {
        wait.as_millis() as u64
    }
}

/// A batch size of zero (unset) is the default size.
pub fn batch_size_or_default(batch_size: u32) -> u32 {
    if batch_size == 0 {
        DEFAULT_BATCH_SIZE
    } else {
        batch_size
    }
}

/// The delivery options with an unset (zero) concurrency or attempt count replaced by its default.
pub fn delivery_with_defaults(mut delivery: DeliveryOptions) -> DeliveryOptions {
    let defaults = DeliveryOptions::default();
    if delivery.concurrency == 0 {
        delivery.concurrency = defaults.concurrency;
    }
    if delivery.max_attempts == 0 {
        delivery.max_attempts = defaults.max_attempts;
    }
    delivery
}

/// A request timeout in milliseconds: unset or zero is the default. (Less than a millisecond is 0 ms, which
/// [`validate_config`] refuses.)
pub fn request_timeout_ms_or_default(timeout: Option<Duration>) -> u64 {
    timeout
        .filter(|timeout| !timeout.is_zero())
        .map_or(DeliveryOptions::default().request_timeout_ms, |timeout| {
            timeout.as_millis() as u64
        })
}

/// A URL with record references renders to different requests, which cannot share one batch: unless the user
/// chose a grouping, group by rendered request.
pub fn apply_default_grouping(config: &mut DestinationConfig) {
    if let Endpoint::Manual(manual) = &config.endpoint {
        if manual.url.contains('{') && config.batching.grouping == GroupingAlgorithm::ArrivalOrder {
            config.batching.grouping = GroupingAlgorithm::RenderedRequest;
        }
    }
}

/// What validation parsed on its way, kept so that a renderer compiles a configuration without parsing it again
/// (and so cannot disagree with the validation about what a text means).
#[derive(Debug)]
pub struct CheckedConfig {
    /// The endpoint, parsed.
    pub endpoint: CheckedEndpoint,
    /// `exclude_attributes`, in order.
    pub exclusions: Vec<FieldPath>,
    /// `delivery.ordering_key_attribute`.
    pub ordering_key: Option<FieldPath>,
    /// `batching.group_by_attribute`, when batching is on.
    pub group_by: Option<FieldPath>,
}

/// A checked endpoint.
#[derive(Debug)]
pub enum CheckedEndpoint {
    Template {
        /// The catalogue entry.
        template: &'static Template,
        /// Its path parameters, by name.
        parameters: BTreeMap<String, Pattern>,
    },
    Manual {
        method: HttpMethod,
        /// The URL pattern, known to stay under the base URL.
        url: Pattern,
        /// Extra request headers, in the order given.
        headers: Vec<(String, String)>,
    },
}

/// Checks `config` against the catalogue and the configured Groove base URL; `Err` lists every violation.
pub fn validate_config(
    config: &DestinationConfig,
    groove_base_url: &Url,
) -> Result<CheckedConfig, Violations> {
    let mut violations = Violations::default();
    // `None` only with a violation already reported.
    let endpoint = match &config.endpoint {
        Endpoint::Template(endpoint) => {
            validate_template(endpoint, &config.batching, groove_base_url, &mut violations)
        }
        Endpoint::Manual(endpoint) => {
            validate_manual(endpoint, &config.batching, groove_base_url, &mut violations).map(
                |url| CheckedEndpoint::Manual {
                    method: endpoint.method,
                    url,
                    headers: endpoint.headers.clone(),
                },
            )
        }
    };
    let group_by = validate_batching(&config.batching, &mut violations);
    let mut exclusions = Vec::with_capacity(config.exclude_attributes.len());
    for (index, path) in config.exclude_attributes.iter().enumerate() {
        let field = format!("config.exclude_attributes[{index}]");
        exclusions.extend(check_attribute_path(&field, path, &mut violations));
    }
    if let Some(webhook) = &config.response_webhook {
        validate_webhook(webhook, &mut violations);
    }
    let ordering_key = validate_delivery(&config.delivery, &mut violations);
    violations.into_result()?;
    let endpoint = endpoint.ok_or_else(|| {
        let mut missing = Violations::default();
        missing.push("config", "endpoint is required");
        missing
    })?;
    Ok(CheckedConfig {
        endpoint,
        exclusions,
        ordering_key,
        group_by,
    })
}

fn validate_template(
    endpoint: &TemplateEndpoint,
    batching: &Batching,
    base: &Url,
    violations: &mut Violations,
) -> Option<CheckedEndpoint> {
    let id = endpoint.template_id.as_str();
    let template = if id.is_empty() {
        violations.push("config.template.template_id", "template id is required");
        None
    } else {
        let found = templates::find(id);
        if found.is_none() {
            violations.push(
                "config.template.template_id",
                format!("unknown template id \"{id}\""),
            );
        }
        found
    };

    let mut parameters = BTreeMap::new();
    for (name, value) in &endpoint.parameters {
        let field = format!("config.template.parameters.{name}");
        if let Some(template) = template {
            if template.parameter(name).is_none() {
                violations.push(&field, unknown_parameter(template, name));
                continue;
            }
        }
        if let Some(pattern) = check_parameter_value(&field, name, value, violations) {
            parameters.insert(name.clone(), pattern);
        }
    }

    let template = template?;
    for parameter in template.parameters.iter().filter(|p| p.required) {
        if !endpoint.parameters.contains_key(parameter.name) {
            violations.push(
                format!("config.template.parameters.{}", parameter.name),
                format!(
                    "missing required path parameter \"{}\" of template \"{}\"",
                    parameter.name, template.id
                ),
            );
        }
    }
    if batching.enabled && !template.batchable {
        violations.push(
            "config.batching.enabled",
            format!(
                "template \"{}\" sends one record per call (groove has no bulk endpoint); disable batching",
                template.id
            ),
        );
    }
    // Belt and braces: the catalogue's own path must stay under the base URL with every parameter filled, and
    // fit in a URL: literals as they will be sent, references (checked per record) as a plain value.
    let literals: Vec<(&str, String)> = template
        .parameters
        .iter()
        .filter_map(|parameter| {
            let literal = parameters.get(parameter.name)?.as_literal()?;
            // Unsafe or empty literals are reported on their own field above.
            (!literal.trim().is_empty() && url_guard::is_safe_segment_value(&literal))
                .then(|| (parameter.name, url_guard::encode_path_segment(&literal)))
        })
        .collect();
    let sample = template
        .parameters
        .iter()
        .fold(template.path.to_string(), |path, parameter| {
            let value = literals
                .iter()
                .find(|(name, _)| *name == parameter.name)
                .map_or("x", |(_, encoded)| encoded.as_str());
            path.replace(&format!("{{{}}}", parameter.name), value)
        });
    match url_guard::resolve(base, &sample) {
        Ok(_) => {}
        Err(error @ url_guard::UrlGuardError::TooLong { .. }) => {
            let longest = literals
                .iter()
                .max_by_key(|(_, encoded)| encoded.len())
                .map_or_else(
                    || "config.template.parameters".to_string(),
                    |(name, _)| format!("config.template.parameters.{name}"),
                );
            violations.push(longest, error.to_string());
        }
        Err(error) => violations.push("config.template.template_id", error.to_string()),
    }
    Some(CheckedEndpoint::Template {
        template,
        parameters,
    })
}

fn unknown_parameter(template: &Template, name: &str) -> String {
    let expected: Vec<&str> = template.parameters.iter().map(|p| p.name).collect();
    if expected.is_empty() {
        format!(
            "unknown parameter \"{name}\": template \"{}\" takes no parameters",
            template.id
        )
    } else {
        format!(
            "unknown parameter \"{name}\" for template \"{}\"; expected: {}",
            template.id,
            expected.join(", ")
        )
    }
}

/// A literal is checked as the path segment it becomes; a reference is checked again per record.
fn check_parameter_value(
    field: &str,
    name: &str,
    value: &str,
    violations: &mut Violations,
) -> Option<Pattern> {
    let pattern = match Pattern::parse(value) {
        Err(error) => {
            violations.push(field, error.to_string());
            return None;
        }
        Ok(pattern) => pattern,
    };
    match pattern.as_literal() {
        Some(literal) if literal.trim().is_empty() => {
            violations.push(field, format!("path parameter \"{name}\" is empty"));
            None
        }
        Some(literal) if !url_guard::is_safe_segment_value(&literal) => {
            violations.push(
                field,
                format!("path parameter \"{name}\" must not be \".\" or \"..\" or contain such a path segment"),
            );
            None
        }
        _ => Some(pattern),
    }
}

fn validate_manual(
    endpoint: &ManualEndpoint,
    batching: &Batching,
    base: &Url,
    violations: &mut Violations,
) -> Option<Pattern> {
    let pattern = match url_guard::check_pattern(base, &endpoint.url) {
        Err(error) => {
            violations.push("config.manual.url", error.to_string());
            None
        }
        Ok(pattern) => {
            // A batch is one call: its records must agree on the URL, which only rendered-request grouping ensures.
            if batching.enabled
                && pattern.has_references()
                && batching.grouping != GroupingAlgorithm::RenderedRequest
            {
                violations.push(
                    "config.batching.grouping",
                    "manual url references record fields, so batches must group by rendered request",
                );
            }
            Some(pattern)
        }
    };
    for (index, error) in check_headers(&endpoint.headers) {
        violations.push(format!("config.manual.headers[{index}]"), error.to_string());
    }
    pattern
}

/// Returns the parsed `group_by_attribute` of enabled batching.
fn validate_batching(batching: &Batching, violations: &mut Violations) -> Option<FieldPath> {
    // Knobs of disabled batching do nothing; they are checked again whenever batching is switched on.
    if !batching.enabled {
        return None;
    }
    if !(1..=MAX_BATCH_SIZE).contains(&batching.batch_size) {
        violations.push(
            "config.batching.batch_size",
            format!(
                "batch size {} is outside 1..={MAX_BATCH_SIZE}",
                batching.batch_size
            ),
        );
    }
    let group_by = match (&batching.grouping, &batching.group_by_attribute) {
        (GroupingAlgorithm::AttributeValue, None) => {
            violations.push(
                "config.batching.group_by_attribute",
                "grouping by attribute value needs group_by_attribute",
            );
            None
        }
        (_, Some(path)) => {
            check_attribute_path("config.batching.group_by_attribute", path, violations)
        }
        _ => None,
    };
    if let BatchEnvelope::Wrapped { key } = &batching.envelope {
        if key.trim().is_empty() {
            violations.push(
                "config.batching.envelope.key",
                "wrapped envelope key is empty",
            );
        }
    }
    group_by
}

fn validate_webhook(webhook: &str, violations: &mut Violations) {
    let field = "config.response_webhook";
    if webhook.trim().is_empty() {
        violations.push(
            field,
            "response webhook is empty; leave it unset to disable forwarding",
        );
        return;
    }
    // The url is not quoted back: it may carry a password.
    match Url::parse(webhook) {
        Err(error) => violations.push(
            field,
            format!("response webhook is not a valid url: {error}"),
        ),
        Ok(url) if !matches!(url.scheme(), "http" | "https") => violations.push(
            field,
            format!(
                "response webhook must be an http or https url, not \"{}\"",
                url.scheme()
            ),
        ),
        Ok(url) => {
            // A literal address that is never allowed is refused now; names, and internal addresses (which
            // depend on --webhook-allowed-hosts), are checked when the webhook is called.
            let ip = match url.host() {
                Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                Some(Host::Domain(_)) | None => None,
            };
            if let Some(ip) = ip {
                if let AddressClass::Forbidden(kind) = host_policy::classify(ip) {
                    violations.push(
                        field,
                        format!("response webhook address {ip} is {kind}, which a response webhook may never reach"),
                    );
                }
            }
        }
    }
}

/// Returns the parsed `ordering_key_attribute`.
fn validate_delivery(delivery: &DeliveryOptions, violations: &mut Violations) -> Option<FieldPath> {
    let max_timeout_ms = MAX_REQUEST_TIMEOUT.as_millis();
    if !(1..=MAX_CONCURRENCY).contains(&delivery.concurrency) {
        violations.push(
            "config.delivery.concurrency",
            format!(
                "concurrency {} is outside 1..={MAX_CONCURRENCY}",
                delivery.concurrency
            ),
        );
    }
    if !(1..=MAX_ATTEMPTS_LIMIT).contains(&delivery.max_attempts) {
        violations.push(
            "config.delivery.max_attempts",
            format!(
                "max attempts {} is outside 1..={MAX_ATTEMPTS_LIMIT}",
                delivery.max_attempts
            ),
        );
    }
    if !(1..=max_timeout_ms).contains(&u128::from(delivery.request_timeout_ms)) {
        violations.push(
            "config.delivery.request_timeout_ms",
            format!(
                "request timeout {} ms is outside 1..={max_timeout_ms} ms",
                delivery.request_timeout_ms
            ),
        );
    }
    delivery.ordering_key_attribute.as_ref().and_then(|path| {
        check_attribute_path("config.delivery.ordering_key_attribute", path, violations)
    })
}

fn check_attribute_path(field: &str, path: &str, violations: &mut Violations) -> Option<FieldPath> {
    FieldPath::parse(path)
        .map_err(|error| violations.push(field, error.to_string()))
        .ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::domain::destination::{ContentFormat, HttpMethod};

    fn base() -> Url {
        Url::parse("https://api.groovehq.com/v1").unwrap()
    }

    fn template(id: &str, parameters: &[(&str, &str)]) -> DestinationConfig {
        DestinationConfig {
            endpoint: Endpoint::Template(TemplateEndpoint {
                template_id: id.to_string(),
                parameters: parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
            }),
            ..DestinationConfig::default()
        }
    }

    fn manual(url: &str, headers: &[(&str, &str)]) -> DestinationConfig {
        DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method: HttpMethod::Post,
                url: url.to_string(),
                content_format: ContentFormat::Json,
                headers: headers
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..DestinationConfig::default()
        }
    }

    fn violations(config: &DestinationConfig) -> Vec<(String, String)> {
        match validate_config(config, &base()) {
            Ok(_) => vec![],
            Err(found) => found
                .0
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect(),
        }
    }

    fn fields(config: &DestinationConfig) -> Vec<String> {
        violations(config)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn valid_configurations_pass() {
        assert_eq!(
            fields(&template("create_ticket", &[])),
            Vec::<String>::new()
        );
        assert!(fields(&template(
            "update_ticket_state",
            &[("ticket_number", "1234")]
        ))
        .is_empty());
        assert!(fields(&template(
            "update_ticket_state",
            &[("ticket_number", "{ticket.number}")]
        ))
        .is_empty());
        assert!(fields(&template(
            "update_article",
            &[("knowledge_base_id", "0759213294"), ("article_id", "{id}")]
        ))
        .is_empty());
        let mut config = manual("tickets/{n}/messages", &[("X-Source", "sync")]);
        config.exclude_attributes = vec!["n".into(), "customer.email".into()];
        config.response_webhook = Some("https://hooks.example/groove".into());
        config.delivery.ordering_key_attribute = Some("n".into());
        assert!(fields(&config).is_empty());
        // Local sandbox base URL, without trailing slash.
        let local = Url::parse("http://127.0.0.1:40123/v1").unwrap();
        assert_eq!(
            validate_config(&manual("tickets", &[]), &local).map(drop),
            Ok(())
        );
    }

    #[test]
    fn unknown_or_missing_template_id() {
        assert_eq!(
            violations(&template("create_tiket", &[])),
            [(
                "config.template.template_id".to_string(),
                "unknown template id \"create_tiket\"".to_string()
            )]
        );
        assert_eq!(
            violations(&template("", &[])),
            [(
                "config.template.template_id".to_string(),
                "template id is required".to_string()
            )]
        );
    }

    #[test]
    fn path_parameters() {
        assert_eq!(
            violations(&template("update_ticket_state", &[])),
            [(
                "config.template.parameters.ticket_number".to_string(),
                "missing required path parameter \"ticket_number\" of template \"update_ticket_state\"".to_string()
            )]
        );
        assert_eq!(
            violations(&template(
                "update_ticket_state",
                &[("ticket_number", "1"), ("ticket_id", "2")]
            )),
            [(
                "config.template.parameters.ticket_id".to_string(),
                "unknown parameter \"ticket_id\" for template \"update_ticket_state\"; expected: ticket_number"
                    .to_string()
            )]
        );
        assert_eq!(
            violations(&template("create_ticket", &[("ticket_number", "1")]))[0].1,
            "unknown parameter \"ticket_number\": template \"create_ticket\" takes no parameters"
        );
        assert_eq!(
            violations(&template(
                "update_ticket_state",
                &[("ticket_number", "{ticket.number")]
            )),
            [(
                "config.template.parameters.ticket_number".to_string(),
                "unclosed \"{\" at character 1; write \"{{\" for a literal brace".to_string()
            )]
        );
        for bad in ["", "  ", "..", ".", "../admin", "%2e%2e"] {
            assert_eq!(
                fields(&template("update_group", &[("group_id", bad)])),
                ["config.template.parameters.group_id"],
                "{bad:?}"
            );
        }
        // Unknown template: parameters are still checked for syntax.
        assert_eq!(
            fields(&template("nope", &[("x", "{}")])),
            [
                "config.template.template_id",
                "config.template.parameters.x"
            ]
        );
    }

    #[test]
    fn templates_refuse_batching() {
        let mut config = template("create_ticket", &[]);
        config.batching.enabled = true;
        assert_eq!(
            violations(&config),
            [(
                "config.batching.enabled".to_string(),
                "template \"create_ticket\" sends one record per call (groove has no bulk endpoint); disable batching"
                    .to_string()
            )]
        );
    }

    #[test]
    fn batching_knobs() {
        let mut config = manual("bulk", &[]);
        config.batching.enabled = true;
        for (size, ok) in [
            (0, false),
            (1, true),
            (MAX_BATCH_SIZE, true),
            (MAX_BATCH_SIZE + 1, false),
        ] {
            config.batching.batch_size = size;
            assert_eq!(fields(&config).is_empty(), ok, "{size}");
        }
        assert_eq!(
            violations(&config)[0],
            (
                "config.batching.batch_size".to_string(),
                "batch size 1001 is outside 1..=1000".to_string()
            )
        );
        config.batching.batch_size = 10;

        config.batching.grouping = GroupingAlgorithm::AttributeValue;
        assert_eq!(fields(&config), ["config.batching.group_by_attribute"]);
        config.batching.group_by_attribute = Some("customer..id".into());
        assert_eq!(fields(&config), ["config.batching.group_by_attribute"]);
        config.batching.group_by_attribute = Some("customer.id".into());
        assert!(fields(&config).is_empty());

        config.batching.envelope = BatchEnvelope::Wrapped { key: " ".into() };
        assert_eq!(
            violations(&config),
            [(
                "config.batching.envelope.key".to_string(),
                "wrapped envelope key is empty".to_string()
            )]
        );
        config.batching.envelope = BatchEnvelope::Wrapped {
            key: "records".into(),
        };
        assert!(fields(&config).is_empty());

        // Disabled batching: its knobs are not in force.
        config.batching.enabled = false;
        config.batching.batch_size = 0;
        assert!(fields(&config).is_empty());
    }

    #[test]
    fn manual_url_with_references_needs_rendered_request_grouping() {
        let mut config = manual("tickets/{n}/messages", &[]);
        config.batching.enabled = true;
        assert_eq!(fields(&config), ["config.batching.grouping"]);
        config.batching.grouping = GroupingAlgorithm::RenderedRequest;
        assert!(fields(&config).is_empty());
        config.batching.enabled = false;
        config.batching.grouping = GroupingAlgorithm::ArrivalOrder;
        assert!(fields(&config).is_empty());
    }

    #[test]
    fn manual_url_must_stay_under_the_base() {
        let cases = [
            ("https://evil.example/v1/tickets", "url must be relative to the groove base url, not absolute"),
            ("//evil.example", "url must not start with \"//\": that names another host"),
            ("/tickets", "url must be relative to the groove base url; remove the leading \"/\""),
            ("../x", "url must not contain \".\" or \"..\" path segments (found \"..\")"),
            ("", "url is empty"),
            ("tickets/{}", "empty reference \"{}\" at character 9; name a record field, e.g. \"{ticket_number}\""),
        ];
        for (url, message) in cases {
            assert_eq!(
                violations(&manual(url, &[])),
                [("config.manual.url".to_string(), message.to_string())],
                "{url:?}"
            );
        }
        assert_eq!(
            fields(&manual("a@evil.example", &[])),
            ["config.manual.url"]
        );
        // Encoded climbs in any case, and characters a parser would drop, are refused as written.
        for url in [
            "tickets/%2e%2e%2fadmin",
            "tickets/%2E%2e%2Fadmin",
            "tickets\t",
            "tickets\r\n",
            "tic\nkets",
            "tickets\u{0}",
        ] {
            assert_eq!(fields(&manual(url, &[])), ["config.manual.url"], "{url:?}");
        }
    }

    #[test]
    fn urls_longer_than_can_be_sent_are_refused_when_saved() {
        let room = url_guard::MAX_URL_BYTES - "https://api.groovehq.com/v1/tickets/".len();
        let long = "1".repeat(room + 1);
        let found = violations(&manual(&format!("tickets/{long}"), &[]));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "config.manual.url");
        assert!(found[0].1.contains("at most 8000"), "{}", found[0].1);
        assert!(fields(&manual(&format!("tickets/{}", "1".repeat(room)), &[])).is_empty());
        // A reference stands for what a record will hold: its length is checked per record.
        assert!(fields(&manual("tickets/{n}", &[])).is_empty());

        let state = |number: &str| template("update_ticket_state", &[("ticket_number", number)]);
        let found = violations(&state(&long));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "config.template.parameters.ticket_number");
        assert!(found[0].1.contains("at most 8000"), "{}", found[0].1);
        assert!(fields(&state("{ticket.number}")).is_empty());
        // The literal counts as it is sent, percent-encoded.
        let spaces = " ".repeat(room / 3 + 1);
        assert_eq!(
            fields(&state(&format!("x{spaces}"))),
            ["config.template.parameters.ticket_number"]
        );
    }

    #[test]
    fn manual_headers() {
        let config = manual(
            "tickets",
            &[
                ("X-Ok", "1"),
                ("authorization", "Bearer x"),
                ("X-Bad", "a\r\nb"),
            ],
        );
        assert_eq!(
            violations(&config),
            [
                (
                    "config.manual.headers[1]".to_string(),
                    "header \"authorization\" is not allowed: the destination's credential sets authorization"
                        .to_string()
                ),
                (
                    "config.manual.headers[2]".to_string(),
                    "value of header \"X-Bad\" contains a line break".to_string()
                ),
            ]
        );
    }

    #[test]
    fn response_webhook() {
        let cases = [
            ("https://hooks.example/x", None),
            ("http://127.0.0.1:9000/hook", None),
            ("", Some("response webhook is empty; leave it unset to disable forwarding")),
            ("ftp://hooks.example/x", Some("response webhook must be an http or https url, not \"ftp\"")),
            ("hooks.example/x", Some("response webhook is not a valid url: relative URL without a base")),
            ("http://169.254.169.254/latest/meta-data", Some("response webhook address 169.254.169.254 is link-local (cloud metadata), which a response webhook may never reach")),
            ("http://[fd00:ec2::254]/", Some("response webhook address fd00:ec2::254 is cloud metadata, which a response webhook may never reach")),
            ("http://[::ffff:169.254.169.254]/", Some("response webhook address ::ffff:169.254.169.254 is link-local (cloud metadata), which a response webhook may never reach")),
            ("http://0.0.0.0:8080/", Some("response webhook address 0.0.0.0 is unspecified, which a response webhook may never reach")),
            ("https://user:pw@hooks.example/x", None),
            ("http://[::1]:9000/hook", None),
            ("http://10.0.0.5/hook", None),
        ];
        for (url, message) in cases {
            let mut config = template("create_ticket", &[]);
            config.response_webhook = Some(url.to_string());
            let expected: Vec<(String, String)> = message
                .map(|m| ("config.response_webhook".to_string(), m.to_string()))
                .into_iter()
                .collect();
            assert_eq!(violations(&config), expected, "{url:?}");
        }
    }

    #[test]
    fn delivery_bounds() {
        let mut config = template("create_ticket", &[]);
        config.delivery.concurrency = 0;
        config.delivery.max_attempts = MAX_ATTEMPTS_LIMIT + 1;
        config.delivery.request_timeout_ms = 0;
        config.delivery.ordering_key_attribute = Some("".into());
        assert_eq!(
            violations(&config),
            [
                (
                    "config.delivery.concurrency".to_string(),
                    "concurrency 0 is outside 1..=256".to_string()
                ),
                (
                    "config.delivery.max_attempts".to_string(),
                    "max attempts 21 is outside 1..=20".to_string()
                ),
                (
                    "config.delivery.request_timeout_ms".to_string(),
                    "request timeout 0 ms is outside 1..=300000 ms".to_string()
                ),
                (
                    "config.delivery.ordering_key_attribute".to_string(),
                    "field path is empty".to_string()
                ),
            ]
        );
        config.delivery = DeliveryOptions {
            concurrency: MAX_CONCURRENCY,
            max_attempts: 1,
            request_timeout_ms: MAX_REQUEST_TIMEOUT.as_millis() as u64,
            ..DeliveryOptions::default()
        };
        assert!(fields(&config).is_empty());
        config.delivery.concurrency = MAX_CONCURRENCY + 1;
        config.delivery.request_timeout_ms += 1;
        assert_eq!(
            fields(&config),
            [
                "config.delivery.concurrency",
                "config.delivery.request_timeout_ms"
            ]
        );
    }

    #[test]
    fn exclude_attributes() {
        let mut config = template("create_ticket", &[]);
        config.exclude_attributes = vec![
            "ok".into(),
            "a.b".into(),
            "".into(),
            "a..b".into(),
            "a b".into(),
        ];
        assert_eq!(
            fields(&config),
            [
                "config.exclude_attributes[2]",
                "config.exclude_attributes[3]",
                "config.exclude_attributes[4]"
            ]
        );
    }

    #[test]
    fn collects_every_violation_at_once() {
        let mut config = manual("https://evil.example", &[("Host", "x")]);
        config.batching.enabled = true;
        config.batching.batch_size = 0;
        config.exclude_attributes = vec!["".into()];
        config.response_webhook = Some("nope".into());
        config.delivery.concurrency = 0;
        assert_eq!(
            fields(&config),
            [
                "config.manual.url",
                "config.manual.headers[0]",
                "config.batching.batch_size",
                "config.exclude_attributes[0]",
                "config.response_webhook",
                "config.delivery.concurrency",
            ]
        );
    }
}
