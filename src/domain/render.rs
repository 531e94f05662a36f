//! Record + destination configuration → the exact HTTP request(s) sent to Groove.
//!
//! A [`Renderer`] is compiled once per stream (configuration validated, patterns parsed, literal URLs joined) and
//! then renders each record. It sits on the hot path, so:
//! - a record is parsed at most once, and not at all into a tree when nothing needs its fields (a manual endpoint
//!   with a fixed URL, no exclusions and no attribute keys only checks that it is a JSON object);
//! - a body that is the record unchanged is the caller's bytes as given, never re-serialised;
//! - a changed record is serialised once (per call, for a fan-out). `serde_json` is built without
//!   `preserve_order`, so a re-serialised body has its keys in sorted order; JSON objects are unordered.
//!
//! Order of the steps, and why:
//! 1. URL, ordering key and group key are read from the record as given, so a field used in the path (say
//!    `ticket_number`) can be excluded from the body and still address the call.
//! 2. `exclude_attributes` are removed.
//! 3. A template checks the fields of what is left ([`check_record_fields`]): what we promise is about what is sent.
//! 4. The template's normalisations rewrite the body into the shape Groove documents.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use url::Url;

use super::call::PlannedCall;
use super::config_validation::{validate_config, CheckedEndpoint};
use super::destination::{DestinationConfig, GroupingAlgorithm, HttpMethod};
use super::reference::{FieldPath, Pattern};
use super::templates::{check_record_fields, DefaultOrdering, Normalisation, Template};
use super::url_guard::{self, UrlGuardError};
use super::validation::{FieldViolation, Violations};

/// The `Authorization` value shown wherever a request is displayed; the Groove client sets the real one.
pub const REDACTED_AUTHORIZATION: &str = "Bearer ****";

/// The `Content-Type` of every call that has a body.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// A destination's configuration compiled for rendering records.
#[derive(Debug)]
pub struct Renderer {
    /// The Groove base URL, normalised (ends in `/`).
    base: Url,
    method: HttpMethod,
    target: Target,
    headers: Arc<[(String, String)]>,
    template: Option<&'static Template>,
    exclusions: Vec<Exclusion>,
    ordering: KeyRule,
    grouping: KeyRule,
    /// Set when nothing needs the record's fields: the URL of every call, and the record is only checked to be
    /// a JSON object, never built as a tree.
    untouched_url: Option<Url>,
}

/// Everything one record turns into.
#[derive(Clone, Debug, PartialEq)]
pub struct Rendered {
    /// The calls to make, in order: one, or one per element of a fan-out field (webhook `event_types`).
    pub calls: Vec<PlannedCall>,
    /// Records sharing a key must be delivered in order; `None` puts no constraint on this record.
    pub ordering_key: Option<String>,
    /// Which batch group the record belongs to; `None` unless batching is enabled and groups by attribute value
    /// or rendered request. Under attribute grouping, `None` is the group of records without the attribute.
    pub group_key: Option<String>,
}

/// The headers a call actually carries, in the order the Groove client builds them, for PreviewRequests and
/// results: the extra headers, then `Content-Type: application/json` when there is a body (the client replaces any
/// configured `Content-Type` with it), then `Authorization: Bearer ****`.
pub fn display_headers(call_headers: &[(String, String)], has_body: bool) -> Vec<(String, String)> {
    let mut shown: Vec<(String, String)> = call_headers
        .iter()
        .filter(|(name, _)| {
            // The client sets these two itself, replacing whatever the configuration held.
            let set_by_client = name.eq_ignore_ascii_case("authorization")
                || (has_body && name.eq_ignore_ascii_case("content-type"));
            !set_by_client
        })
        .cloned()
        .collect();
    if has_body {
        shown.push(("Content-Type".to_string(), JSON_CONTENT_TYPE.to_string()));
    }
    shown.push((
        "Authorization".to_string(),
        REDACTED_AUTHORIZATION.to_string(),
    ));
    shown
}

/// Where the calls go.
#[derive(Debug)]
enum Target {
    /// No reference anywhere: joined and checked once.
    Fixed(Url),
    /// A template path with at least one parameter that references the record.
    Template(Vec<PathPart>),
    /// A manual URL pattern with references.
    Manual(Pattern),
}

/// A piece of a template path.
#[derive(Debug)]
enum PathPart {
    /// Text written in the catalogue, or a literal parameter already encoded as one segment.
    Text(String),
    /// A parameter value with references; the whole value becomes one path segment.
    Parameter {
        /// The parameter's name, for messages.
        name: &'static str,
        /// Its value as configured.
        value: Pattern,
    },
}

/// One `exclude_attributes` entry. Both forms are removed when both exist: a user who excludes `contact.enabled`
/// wants it not sent, whichever way the record spells it.
#[derive(Debug)]
struct Exclusion {
    /// The text as a literal top-level key (Groove's widget settings use keys such as `"contact.enabled"`).
    literal: String,
    /// The nested path, when it has more than one segment.
    nested: Option<FieldPath>,
}

/// How an ordering or group key is derived.
#[derive(Debug)]
enum KeyRule {
    None,
    /// The attribute's value as text.
    Attribute(FieldPath),
    /// The rendered URL path (ordering) or method + URL (grouping).
    Rendered,
}

impl Renderer {
    /// Compiles a destination's configuration. The configuration is validated first (as CreateDestination does),
    /// so a renderer only exists for a configuration that can be sent; every violation is reported at once.
    pub fn new(config: &DestinationConfig, groove_base_url: &Url) -> Result<Renderer, Violations> {
        let checked = validate_config(config, groove_base_url)?;
        let base = url_guard::normalised_base(groove_base_url)
            .map_err(|error| single("config", error.to_string()))?;

        let (method, target, headers, template) = match checked.endpoint {
            CheckedEndpoint::Template {
                template,
                parameters,
            } => {
                let target = compile_template_path(template, parameters, &base)?;
                (template.method, target, Arc::from([]), Some(template))
            }
            CheckedEndpoint::Manual {
                method,
                url: pattern,
                headers,
            } => {
                let target = match pattern.as_literal() {
                    Some(literal) => Target::Fixed(
                        url_guard::resolve(&base, &literal)
                            .map_err(|error| single("config.manual.url", error.to_string()))?,
                    ),
                    None => Target::Manual(pattern),
                };
                (method, target, Arc::from(headers), None)
            }
        };

        let exclusions: Vec<Exclusion> = config
            .exclude_attributes
            .iter()
            .zip(checked.exclusions)
            .map(|(text, path)| Exclusion {
                literal: text.clone(),
                nested: (path.segments().len() > 1).then_some(path),
            })
            .collect();

        let ordering = match (checked.ordering_key, template) {
            (Some(path), _) => KeyRule::Attribute(path),
            (None, Some(template))
                if template.default_ordering == DefaultOrdering::RenderedPath =>
            {
                KeyRule::Rendered
            }
            (None, _) => KeyRule::None,
        };

        let batching = &config.batching;
        let grouping = match (batching.enabled, batching.grouping, checked.group_by) {
            (false, _, _) | (true, GroupingAlgorithm::ArrivalOrder, _) => KeyRule::None,
            (true, GroupingAlgorithm::AttributeValue, Some(path)) => KeyRule::Attribute(path),
            (true, GroupingAlgorithm::AttributeValue, None) => {
                return Err(single(
                    "config.batching.group_by_attribute",
                    "grouping by attribute value needs group_by_attribute",
                ))
            }
            (true, GroupingAlgorithm::RenderedRequest, _) => KeyRule::Rendered,
        };

        let needs_tree = template.is_some()
            || !exclusions.is_empty()
            || matches!(ordering, KeyRule::Attribute(_))
            || matches!(grouping, KeyRule::Attribute(_));
        let untouched_url = match &target {
            Target::Fixed(url) if !needs_tree => Some(url.clone()),
            _ => None,
        };

        Ok(Renderer {
            base,
            method,
            target,
            headers,
            template,
            exclusions,
            ordering,
            grouping,
            untouched_url,
        })
    }

    /// The HTTP method of every call.
    pub fn method(&self) -> HttpMethod {
        self.method
    }

    /// The template, for a template destination.
    pub fn template(&self) -> Option<&'static Template> {
        self.template
    }

    /// Renders one record given as UTF-8 JSON text (`raw_json` from the client). A refused record yields every
    /// violation found, each naming its field (`record`, `record.state`, `record.ticket.number`).
    pub fn render(&self, raw: &[u8]) -> Result<Rendered, Violations> {
        if let Some(url) = &self.untouched_url {
            check_is_object(raw)?;
            let mut rendered = self.finish_keys(None, None, url);
            rendered
                .calls
                .push(self.call(url.clone(), self.body(Body::Raw(raw))?));
            return Ok(rendered);
        }
        let record: Value = serde_json::from_slice(raw).map_err(|error| invalid_json(&error))?;
        if !record.is_object() {
            return Err(not_an_object());
        }
        self.render_tree(record, Some(raw))
    }

    /// Renders one record already parsed (for example converted from a `google.protobuf.Struct`); the body is
    /// serialised from it once.
    pub fn render_value(&self, record: Value) -> Result<Rendered, Violations> {
        if !record.is_object() {
            return Err(not_an_object());
        }
        self.render_tree(record, None)
    }

    fn render_tree(&self, mut record: Value, raw: Option<&[u8]>) -> Result<Rendered, Violations> {
        // Read everything addressed by the record before exclusions take fields away.
        let url = self.url_for(&record);
        let ordering_key = match &self.ordering {
            KeyRule::Attribute(path) => path.lookup(&record).and_then(key_text),
            KeyRule::None | KeyRule::Rendered => None,
        };
        let group_key = match &self.grouping {
            KeyRule::Attribute(path) => path.lookup(&record).and_then(key_text),
            KeyRule::None | KeyRule::Rendered => None,
        };

        let mut changed = match record.as_object_mut() {
            Some(fields) => self.exclude(fields),
            None => return Err(not_an_object()),
        };
        let mut violations = Violations::default();
        let mut fan_out = None;
        if let Some(template) = self.template {
            if let Err(found) = check_record_fields(template, &record) {
                violations.0.extend(found.0);
            } else if let Some(fields) = record.as_object_mut() {
                let normalised = normalise(template, fields);
                changed |= normalised.changed;
                fan_out = normalised.fan_out;
            }
        }
        let url = match url {
            Ok(url) => Some(url),
            Err(violation) => {
                violations.0.push(violation);
                None
            }
        };
        let (Some(url), true) = (url, violations.is_empty()) else {
            return Err(violations);
        };
        let mut rendered = self.finish_keys(ordering_key, group_key, &url);
        let Value::Object(fields) = &mut record else {
            return Err(not_an_object());
        };
        match fan_out {
            Some(FanOut { from, into, values }) => {
                // The field check refuses an empty array; were one to slip through, the record would make no call
                // and so never get an outcome.
                if values.is_empty() {
                    return Err(single(
                        format!("record.{from}"),
                        "must hold at least one value",
                    ));
                }
                for value in values {
                    fields.insert(into.to_string(), value);
                    let body = self.body(Body::Tree(fields))?;
                    rendered.calls.push(self.call(url.clone(), body));
                }
            }
            None => {
                let body = match raw {
                    Some(raw) if !changed => self.body(Body::Raw(raw))?,
                    _ => self.body(Body::Tree(fields))?,
                };
                rendered.calls.push(self.call(url, body));
            }
        }
        Ok(rendered)
    }

    /// Fills in the keys derived from the rendered request.
    fn finish_keys(
        &self,
        ordering_key: Option<String>,
        group_key: Option<String>,
        url: &Url,
    ) -> Rendered {
        let ordering_key = match self.ordering {
            KeyRule::Rendered => Some(url.path().to_string()),
            _ => ordering_key,
        };
        // Header values stay out of the key (it may be logged or reported, and a value may be a secret); they are
        // the same for every call of a destination, and the batcher compares them anyway.
        let group_key = match self.grouping {
            KeyRule::Rendered => Some(format!("{} {url}", self.method.as_str())),
            _ => group_key,
        };
        Rendered {
            calls: Vec::with_capacity(1),
            ordering_key,
            group_key,
        }
    }

    fn call(&self, url: Url, body: Vec<u8>) -> PlannedCall {
        PlannedCall {
            method: self.method,
            url,
            headers: Arc::clone(&self.headers),
            // Takes the vector over without a copy.
            body: Bytes::from(body),
        }
    }

    fn body(&self, body: Body<'_>) -> Result<Vec<u8>, Violations> {
        // A GET carries no body (the contract shows it empty); its record only addresses the call.
        if self.method == HttpMethod::Get {
            return Ok(Vec::new());
        }
        match body {
            Body::Raw(raw) => Ok(raw.to_vec()),
            Body::Tree(fields) => serde_json::to_vec(fields)
                .map_err(|error| single("record", format!("record cannot be serialised: {error}"))),
        }
    }

    fn url_for(&self, record: &Value) -> Result<Url, FieldViolation> {
        match &self.target {
            Target::Fixed(url) => Ok(url.clone()),
            Target::Template(parts) => template_url(&self.base, parts, record),
            Target::Manual(pattern) => {
                let relative = pattern
                    .resolve_with(record, url_guard::push_path_segment)
                    .map_err(|error| error.to_violation())?;
                url_guard::resolve(&self.base, &relative)
                    .map_err(|error| guard_violation(pattern.references(), record, &error))
            }
        }
    }

    /// Removes the excluded attributes; whether anything was removed.
    fn exclude(&self, fields: &mut Map<String, Value>) -> bool {
        let mut changed = false;
        for exclusion in &self.exclusions {
            changed |= fields.remove(&exclusion.literal).is_some();
            if let Some(path) = &exclusion.nested {
                changed |= remove_nested(fields, path.segments());
            }
        }
        changed
    }
}

/// What the body is made from.
enum Body<'a> {
    /// The caller's bytes, sent as given.
    Raw(&'a [u8]),
    /// The (changed) record.
    Tree(&'a Map<String, Value>),
}

/// A fan-out found by [`normalise`]: the body is sent once per value, each time with the value in `into`.
struct FanOut {
    /// The array field, already removed from the body.
    from: &'static str,
    into: &'static str,
    values: Vec<Value>,
}

struct Normalised {
    changed: bool,
    fan_out: Option<FanOut>,
}

/// Applies a template's rewrites to a body that passed [`check_record_fields`] (so renamed aliases agree and a
/// fan-out field is not given together with its target).
fn normalise(template: &Template, fields: &mut Map<String, Value>) -> Normalised {
    let mut changed = false;
    let mut fan_out = None;
    for normalisation in template.normalisations {
        match *normalisation {
            Normalisation::MapValue { field, from, to } => {
                if let Some(value) = fields.get_mut(field) {
                    if value.as_str() == Some(from) {
                        *value = Value::String(to.to_string());
                        changed = true;
                    }
                }
            }
            Normalisation::Rename { from, to } => {
                if let Some(value) = fields.remove(from) {
                    changed = true;
                    // The check made a given target and alias agree; a null target yields to the alias.
                    let target_given = fields.get(to).is_some_and(|target| !target.is_null());
                    if !target_given {
                        fields.insert(to.to_string(), value);
                    }
                }
            }
            Normalisation::FanOut { from, into } => {
                // A null is passed through like any field Groove may ignore; only an array fans out.
                if matches!(fields.get(from), Some(Value::Array(_))) {
                    if let Some(Value::Array(values)) = fields.remove(from) {
                        changed = true;
                        fan_out = Some(FanOut { from, into, values });
                    }
                }
            }
        }
    }
    Normalised { changed, fan_out }
}

fn remove_nested(fields: &mut Map<String, Value>, segments: &[String]) -> bool {
    match segments {
        [] => false,
        [last] => fields.remove(last).is_some(),
        [first, rest @ ..] => match fields.get_mut(first) {
            Some(Value::Object(inner)) => remove_nested(inner, rest),
            _ => false,
        },
    }
}

/// A key's text: strings as they are (so `"12"` and `12` share a key), other scalars as JSON, objects and arrays
/// as compact JSON. `null` counts as absent.
fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(text) => Some(text.clone()),
        other => Some(other.to_string()),
    }
}

/// Compiles a template's path with the destination's parameter values. A literal value is encoded as one path
/// segment now; a value with references is kept as a pattern and encoded, whole, as one segment per record.
fn compile_template_path(
    template: &'static Template,
    mut parameters: BTreeMap<String, Pattern>,
    base: &Url,
) -> Result<Target, Violations> {
    let mut parts: Vec<PathPart> = Vec::new();
    let mut text = String::new();
    for (index, segment) in template.path.split('/').enumerate() {
        if index > 0 {
            text.push('/');
        }
        let Some(name) = segment
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        else {
            text.push_str(segment);
            continue;
        };
        let pattern = parameters.remove(name).ok_or_else(|| {
            single(
                format!("config.template.parameters.{name}"),
                format!(
                    "missing required path parameter \"{name}\" of template \"{}\"",
                    template.id
                ),
            )
        })?;
        match pattern.as_literal() {
            Some(literal) => url_guard::push_path_segment(&literal, &mut text),
            None => {
                if !text.is_empty() {
                    parts.push(PathPart::Text(std::mem::take(&mut text)));
                }
                parts.push(PathPart::Parameter {
                    name,
                    value: pattern,
                });
            }
        }
    }
    if parts.is_empty() {
        let url = url_guard::resolve(base, &text)
            .map_err(|error| single("config.template.parameters", error.to_string()))?;
        return Ok(Target::Fixed(url));
    }
    if !text.is_empty() {
        parts.push(PathPart::Text(text));
    }
    Ok(Target::Template(parts))
}

fn template_url(base: &Url, parts: &[PathPart], record: &Value) -> Result<Url, FieldViolation> {
    let mut relative = String::with_capacity(64);
    for part in parts {
        match part {
            PathPart::Text(text) => relative.push_str(text),
            PathPart::Parameter { name, value } => {
                let text = value
                    .resolve(record)
                    .map_err(|error| error.to_violation())?;
                // Encoding keeps the value inside one segment, but `.` and `..` are segments of their own.
                if !url_guard::is_safe_segment_value(&text) {
                    let field = value
                        .references()
                        .next()
                        .map_or_else(|| "record".to_string(), FieldPath::record_field);
                    return Err(FieldViolation::new(
                        field,
                        format!(
                            "{text:?} is not allowed in path parameter \"{name}\": it is or hides a \".\" or \"..\" path segment"
                        ),
                    ));
                }
                url_guard::push_path_segment(&text, &mut relative);
            }
        }
    }
    url_guard::resolve(base, &relative).map_err(|error| {
        let references = parts.iter().flat_map(|part| match part {
            PathPart::Parameter { value, .. } => value.references().collect::<Vec<_>>(),
            PathPart::Text(_) => Vec::new(),
        });
        guard_violation(references, record, &error)
    })
}

/// A rendered URL refused by the guard. Record values are encoded into unreserved characters, so only dot
/// segments (`..`, `.`) or a URL too long to send can be at fault: for the first, the first referenced field
/// holding a dot is named, for the second the one holding the longest value; else the first one.
fn guard_violation<'p>(
    references: impl Iterator<Item = &'p FieldPath>,
    record: &Value,
    error: &UrlGuardError,
) -> FieldViolation {
    let references: Vec<&FieldPath> = references.collect();
    let text_of = |path: &FieldPath| match path.lookup(record) {
        Some(Value::String(text)) => text.len(),
        Some(other) => other.to_string().len(),
        None => 0,
    };
    let holds_dot = |path: &&&FieldPath| {
        path.lookup(record)
            .and_then(Value::as_str)
            .is_some_and(|text| text.contains('.'))
    };
    let too_long = matches!(error, UrlGuardError::TooLong { .. });
    let culprit = if too_long {
        references.iter().copied().max_by_key(|path| text_of(path))
    } else {
        references
            .iter()
            .find(holds_dot)
            .or(references.first())
            .copied()
    };
    match culprit {
        Some(path) if too_long => FieldViolation::new(
            path.record_field(),
            format!("record field \"{path}\" makes the url too long: {error}"),
        ),
        Some(path) => FieldViolation::new(
            path.record_field(),
            format!("record field \"{path}\" makes an unsafe url: {error}"),
        ),
        None => FieldViolation::new("record", error.to_string()),
    }
}

fn single(field: impl Into<String>, description: impl Into<String>) -> Violations {
    Violations(vec![FieldViolation::new(field, description)])
}

fn not_an_object() -> Violations {
    single("record", "record is not a json object")
}

fn invalid_json(error: &serde_json::Error) -> Violations {
    single("record", format!("record is not valid json: {error}"))
}

/// Checks that `raw` is one JSON object, as strictly as parsing it into a `Value` would (UTF-8, escapes, depth,
/// nothing after it), without building it: nothing is allocated unless a string holds escapes.
fn check_is_object(raw: &[u8]) -> Result<(), Violations> {
    let mut deserializer = serde_json::Deserializer::from_slice(raw);
    let shape = deserializer
        .deserialize_any(ShapeVisitor)
        .and_then(|shape| deserializer.end().map(|()| shape))
        .map_err(|error| invalid_json(&error))?;
    match shape {
        Shape::Object => Ok(()),
        Shape::Other => Err(not_an_object()),
    }
}

/// Whether a JSON value is an object, found by walking all of it. Strings are decoded, not skipped (as
/// `IgnoredAny` would), so invalid UTF-8 and lone surrogate escapes are refused as the tree path refuses them.
enum Shape {
    Object,
    Other,
}

impl<'de> Deserialize<'de> for Shape {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Shape, D::Error> {
        deserializer.deserialize_any(ShapeVisitor)
    }
}

struct ShapeVisitor;

impl<'de> Visitor<'de> for ShapeVisitor {
    type Value = Shape;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a json value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        while map.next_entry::<Shape, Shape>()?.is_some() {}
        Ok(Shape::Object)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        while seq.next_element::<Shape>()?.is_some() {}
        Ok(Shape::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Shape, E> {
        Ok(Shape::Other)
    }

    fn visit_unit<E>(self) -> Result<Shape, E> {
        Ok(Shape::Other)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::domain::destination::{
        Batching, ContentFormat, Endpoint, ManualEndpoint, TemplateEndpoint,
    };

    const BASE: &str = "https://api.groovehq.com/v1";

    fn base() -> Url {
        Url::parse(BASE).unwrap()
    }

    fn template_config(id: &str, parameters: &[(&str, &str)]) -> DestinationConfig {
        DestinationConfig {
            endpoint: Endpoint::Template(TemplateEndpoint {
                template_id: id.to_string(),
                parameters: parameters
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            }),
            ..DestinationConfig::default()
        }
    }

    fn manual_config(method: HttpMethod, url: &str, headers: &[(&str, &str)]) -> DestinationConfig {
        DestinationConfig {
            endpoint: Endpoint::Manual(ManualEndpoint {
                method,
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

    fn renderer(config: &DestinationConfig) -> Renderer {
        Renderer::new(config, &base()).unwrap()
    }

    fn render_json(renderer: &Renderer, record: &Value) -> Result<Rendered, Violations> {
        renderer.render(record.to_string().as_bytes())
    }

    fn body(call: &PlannedCall) -> Value {
        serde_json::from_slice(&call.body).unwrap()
    }

    /// (field, description) of every violation.
    fn refusal(result: Result<Rendered, Violations>) -> Vec<(String, String)> {
        result
            .unwrap_err()
            .0
            .into_iter()
            .map(|v| (v.field, v.description))
            .collect()
    }

    fn refused_fields(result: Result<Rendered, Violations>) -> Vec<String> {
        refusal(result)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn every_template_renders_method_path_and_body() {
        struct Case {
            id: &'static str,
            parameters: &'static [(&'static str, &'static str)],
            record: Value,
            method: HttpMethod,
            url: &'static str,
            body: Value,
        }
        let cases = [
            Case {
                id: "create_ticket",
                parameters: &[],
                record: json!({"body": "hi", "from": "a@x.example", "to": {"email": "b@x.example"}, "state": "open"}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/tickets",
                body: json!({"body": "hi", "from": "a@x.example", "to": {"email": "b@x.example"}, "state": "opened"}),
            },
            Case {
                id: "update_ticket_state",
                parameters: &[("ticket_number", "{ticket_number}")],
                record: json!({"ticket_number": 1234, "state": "closed"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/tickets/1234/state",
                body: json!({"ticket_number": 1234, "state": "closed"}),
            },
            Case {
                id: "update_ticket_assignee",
                parameters: &[("ticket_number", "{ticket.number}")],
                record: json!({"ticket": {"number": "77"}, "assignee": "agent@x.example"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/tickets/77/assignee",
                body: json!({"ticket": {"number": "77"}, "assignee": "agent@x.example"}),
            },
            Case {
                id: "update_ticket_assigned_group",
                parameters: &[("ticket_number", "12")],
                record: json!({"assigned_group": "Tier 2"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/tickets/12/assigned_group",
                body: json!({"group": "Tier 2"}),
            },
            Case {
                id: "create_message",
                parameters: &[("ticket_number", "{n}")],
                record: json!({"n": 5, "body": "thanks", "note": true}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/tickets/5/messages",
                body: json!({"n": 5, "body": "thanks", "note": true}),
            },
            Case {
                id: "create_webhook",
                parameters: &[],
                record: json!({"webhook_url": "https://hooks.example/g", "event": "ticket_opened"}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/webhooks",
                body: json!({"url": "https://hooks.example/g", "event": "ticket_opened"}),
            },
            Case {
                id: "create_group",
                parameters: &[],
                record: json!({"name": "Tier 2", "agents": ["a@x.example"]}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/groups",
                body: json!({"name": "Tier 2", "agents": ["a@x.example"]}),
            },
            Case {
                id: "update_group",
                parameters: &[("group_id", "{id}")],
                record: json!({"id": "0759213294", "description": "x"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/groups/0759213294",
                body: json!({"id": "0759213294", "description": "x"}),
            },
            Case {
                id: "create_knowledge_base",
                parameters: &[],
                record: json!({"title": "Help", "anything": [1, 2]}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/kb",
                body: json!({"title": "Help", "anything": [1, 2]}),
            },
            Case {
                id: "update_knowledge_base",
                parameters: &[("knowledge_base_id", "0412191130")],
                record: json!({"title": "Help"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/kb/0412191130",
                body: json!({"title": "Help"}),
            },
            Case {
                id: "update_knowledge_base_settings",
                parameters: &[("knowledge_base_id", "{kb}")],
                record: json!({"kb": "0412191130", "theme": "dark"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/kb/0412191130/settings",
                body: json!({"kb": "0412191130", "theme": "dark"}),
            },
            Case {
                id: "create_article",
                parameters: &[("knowledge_base_id", "0412191130")],
                record: json!({"title": "Getting started", "body": "<p>x</p>", "category_id": "0759213294"}),
                method: HttpMethod::Post,
                url: "https://api.groovehq.com/v1/kb/0412191130/articles",
                body: json!({"title": "Getting started", "body": "<p>x</p>", "category_id": "0759213294"}),
            },
            Case {
                id: "update_article",
                parameters: &[
                    ("knowledge_base_id", "0412191130"),
                    ("article_id", "{article.id}"),
                ],
                record: json!({"article": {"id": "0001"}, "featured": true}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/kb/0412191130/articles/0001",
                body: json!({"article": {"id": "0001"}, "featured": true}),
            },
            Case {
                id: "update_widget",
                parameters: &[("widget_id", "w1")],
                record: json!({"name": "Site widget"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/widgets/w1",
                body: json!({"name": "Site widget"}),
            },
            Case {
                id: "update_widget_settings",
                parameters: &[("widget_id", "{widget}")],
                record: json!({"widget": "w1", "contact.enabled": true, "z_index": "9999"}),
                method: HttpMethod::Put,
                url: "https://api.groovehq.com/v1/widgets/w1/settings",
                body: json!({"widget": "w1", "contact.enabled": true, "z_index": "9999"}),
            },
        ];
        assert_eq!(cases.len(), super::super::templates::all().len());
        for case in cases {
            let renderer = renderer(&template_config(case.id, case.parameters));
            assert_eq!(renderer.template().map(|t| t.id), Some(case.id));
            let rendered = render_json(&renderer, &case.record).unwrap();
            assert_eq!(rendered.calls.len(), 1, "{}", case.id);
            let call = &rendered.calls[0];
            assert_eq!(call.method, case.method, "{}", case.id);
            assert_eq!(call.url.as_str(), case.url, "{}", case.id);
            assert_eq!(body(call), case.body, "{}", case.id);
            assert!(call.headers.is_empty(), "{}", case.id);
            assert_eq!(rendered.group_key, None, "{}", case.id);
            let expected_ordering = (case.method == HttpMethod::Put || case.id == "create_message")
                .then(|| Url::parse(case.url).unwrap().path().to_string());
            assert_eq!(rendered.ordering_key, expected_ordering, "{}", case.id);
        }
    }

    #[test]
    fn open_is_sent_as_opened_and_other_states_unchanged() {
        let renderer = renderer(&template_config(
            "update_ticket_state",
            &[("ticket_number", "{n}")],
        ));
        let rendered = renderer.render(br#"{"n": 1, "state": "open"}"#).unwrap();
        assert_eq!(body(&rendered.calls[0]), json!({"n": 1, "state": "opened"}));
        for state in ["unread", "opened", "pending", "closed", "spam"] {
            let raw = format!(r#"{{ "n" : 1 , "state" : "{state}" }}"#);
            let rendered = renderer.render(raw.as_bytes()).unwrap();
            assert_eq!(rendered.calls[0].body, raw.as_bytes(), "{state}");
        }
    }

    #[test]
    fn assigned_group_and_group_id_are_sent_as_group() {
        let renderer = renderer(&template_config(
            "update_ticket_assigned_group",
            &[("ticket_number", "{n}")],
        ));
        let cases = [
            (
                json!({"n": 1, "assigned_group": "Support"}),
                json!({"n": 1, "group": "Support"}),
            ),
            (
                json!({"n": 1, "group_id": "0123"}),
                json!({"n": 1, "group": "0123"}),
            ),
            (
                json!({"n": 1, "group": "Support", "assigned_group": "Support"}),
                json!({"n": 1, "group": "Support"}),
            ),
            (
                json!({"n": 1, "group": null, "group_id": "7"}),
                json!({"n": 1, "group": "7"}),
            ),
        ];
        for (record, expected) in cases {
            let rendered = render_json(&renderer, &record).unwrap();
            assert_eq!(body(&rendered.calls[0]), expected, "{record}");
        }
        let raw = br#"{"n":1,"group":"Support"}"#;
        assert_eq!(renderer.render(raw).unwrap().calls[0].body, &raw[..]);
        assert_eq!(
            refused_fields(render_json(
                &renderer,
                &json!({"n": 1, "group": "A", "group_id": "B"})
            )),
            ["record.group_id"]
        );
    }

    #[test]
    fn webhook_event_types_fan_out_to_one_call_per_event() {
        let renderer = renderer(&template_config("create_webhook", &[]));
        let record = json!({
            "webhook_url": "https://hooks.example/g",
            "event_types": ["ticket_opened", "agent_replied", "note_added"],
            "extra": 1,
        });
        let rendered = render_json(&renderer, &record).unwrap();
        let bodies: Vec<Value> = rendered.calls.iter().map(body).collect();
        assert_eq!(
            bodies,
            [
                json!({"url": "https://hooks.example/g", "event": "ticket_opened", "extra": 1}),
                json!({"url": "https://hooks.example/g", "event": "agent_replied", "extra": 1}),
                json!({"url": "https://hooks.example/g", "event": "note_added", "extra": 1}),
            ]
        );
        for call in &rendered.calls {
            assert_eq!(call.method, HttpMethod::Post);
            assert_eq!(call.url.as_str(), "https://api.groovehq.com/v1/webhooks");
        }
        assert_eq!(rendered.ordering_key, None);
    }

    #[test]
    fn unknown_state_or_event_is_refused_naming_the_field() {
        let state = renderer(&template_config(
            "update_ticket_state",
            &[("ticket_number", "1")],
        ));
        assert_eq!(
            refusal(render_json(&state, &json!({"state": "reopened"}))),
            [(
                "record.state".to_string(),
                "\"reopened\" is not allowed; use one of: unread, opened, pending, closed, spam, open".to_string()
            )]
        );
        let webhook = renderer(&template_config("create_webhook", &[]));
        assert_eq!(
            refused_fields(render_json(
                &webhook,
                &json!({"url": "u", "event": "ticket_reopened"})
            )),
            ["record.event"]
        );
        assert_eq!(
            refused_fields(render_json(
                &webhook,
                &json!({"url": "u", "event_types": ["ticket_opened", "nope"]})
            )),
            ["record.event_types[1]"]
        );
    }

    #[test]
    fn every_problem_of_a_record_is_reported_at_once() {
        let renderer = renderer(&template_config(
            "create_message",
            &[("ticket_number", "{ticket.number}")],
        ));
        assert_eq!(
            refusal(render_json(&renderer, &json!({"note": true}))),
            [
                (
                    "record.body".to_string(),
                    "required field \"body\" is missing or empty".to_string()
                ),
                (
                    "record.ticket.number".to_string(),
                    "record field \"ticket.number\" is missing".to_string()
                ),
            ]
        );
    }

    #[test]
    fn missing_or_unusable_path_fields_are_refused() {
        let renderer = renderer(&template_config(
            "update_ticket_state",
            &[("ticket_number", "{ticket.number}")],
        ));
        let cases = [
            (json!({"state": "closed"}), "record field \"ticket.number\" is missing"),
            (json!({"ticket": {"number": null}, "state": "closed"}), "record field \"ticket.number\" is null"),
            (json!({"ticket": {"number": " "}, "state": "closed"}), "record field \"ticket.number\" is empty"),
            (
                json!({"ticket": {"number": [1]}, "state": "closed"}),
                "record field \"ticket.number\" is an array; a reference needs text, a number or a boolean",
            ),
        ];
        for (record, message) in cases {
            assert_eq!(
                refusal(render_json(&renderer, &record)),
                [("record.ticket.number".to_string(), message.to_string())],
                "{record}"
            );
        }
    }

    #[test]
    fn path_values_cannot_escape_the_base_url() {
        let renderer = renderer(&template_config(
            "update_ticket_state",
            &[("ticket_number", "{n}")],
        ));
        let encoded = [
            (json!("https://evil.example"), "https%3A%2F%2Fevil.example"),
            (json!("a/b"), "a%2Fb"),
            (json!("x?y#z"), "x%3Fy%23z"),
            (json!("a@evil.example"), "a%40evil.example"),
            (json!("T-1 2"), "T-1%202"),
            (json!("..."), "..."),
        ];
        for (value, segment) in encoded {
            let rendered = render_json(&renderer, &json!({"n": value, "state": "closed"}));
            let url = rendered.unwrap().calls[0].url.clone();
            assert_eq!(
                url.as_str(),
                format!("https://api.groovehq.com/v1/tickets/{segment}/state"),
                "{value}"
            );
            assert_eq!(url.host_str(), Some("api.groovehq.com"));
        }
        // Dot segments, also hidden behind an encoded separator or double encoding, are refused outright.
        for value in ["..", ".", "../../admin", "..\\x", "%2e%2e", "%252e."] {
            let found = refusal(render_json(
                &renderer,
                &json!({"n": value, "state": "closed"}),
            ));
            assert_eq!(found.len(), 1, "{value}");
            assert_eq!(found[0].0, "record.n", "{value}");
            assert!(found[0].1.contains("path segment"), "{}", found[0].1);
        }
        assert_eq!(
            refusal(render_json(&renderer, &json!({"n": "..", "state": "closed"})))[0].1,
            "\"..\" is not allowed in path parameter \"ticket_number\": it is or hides a \".\" or \"..\" path segment"
        );

        // Part literal, part reference: still one segment.
        let renderer = renderer_for_manual_free_template();
        let rendered = render_json(&renderer, &json!({"id": "../x"})).unwrap();
        assert_eq!(
            rendered.calls[0].url.as_str(),
            "https://api.groovehq.com/v1/groups/g-..%2Fx"
        );
    }

    fn renderer_for_manual_free_template() -> Renderer {
        renderer(&template_config("update_group", &[("group_id", "g-{id}")]))
    }

    #[test]
    fn literal_parameters_are_encoded_once_at_compile_time() {
        let renderer = renderer(&template_config("update_group", &[("group_id", "a b/c")]));
        let rendered = renderer.render(br#"{"name":"x"}"#).unwrap();
        assert_eq!(
            rendered.calls[0].url.as_str(),
            "https://api.groovehq.com/v1/groups/a%20b%2Fc"
        );
    }

    #[test]
    fn manual_url_references_are_encoded_and_guarded() {
        let config = manual_config(
            HttpMethod::Post,
            "tickets/{ticket.number}/messages?source={src}",
            &[("X-Source", "sync")],
        );
        let renderer = renderer(&config);
        let first = render_json(
            &renderer,
            &json!({"ticket": {"number": 9}, "src": "a&b=c", "body": "x"}),
        )
        .unwrap();
        assert_eq!(
            first.calls[0].url.as_str(),
            "https://api.groovehq.com/v1/tickets/9/messages?source=a%26b%3Dc"
        );
        assert_eq!(
            &*first.calls[0].headers,
            [("X-Source".to_string(), "sync".to_string())]
        );
        let second =
            render_json(&renderer, &json!({"ticket": {"number": 10}, "src": "b"})).unwrap();
        assert!(Arc::ptr_eq(
            &first.calls[0].headers,
            &second.calls[0].headers
        ));
        assert_eq!(first.ordering_key, None);

        assert_eq!(
            refused_fields(render_json(&renderer, &json!({"src": "b"}))),
            ["record.ticket.number"]
        );
        let found = refusal(render_json(
            &renderer,
            &json!({"ticket": {"number": ".."}, "src": "b"}),
        ));
        assert_eq!(found[0].0, "record.ticket.number");
        assert!(
            found[0]
                .1
                .starts_with("record field \"ticket.number\" makes an unsafe url"),
            "{}",
            found[0].1
        );

        let whole = renderer_with_url("{path}");
        assert_eq!(
            refused_fields(render_json(&whole, &json!({"path": "a/../../b"}))),
            ["record.path"]
        );
        for value in ["https://evil.example", "//evil.example", "a/b/c"] {
            let url = render_json(&whole, &json!({ "path": value }))
                .unwrap()
                .calls[0]
                .url
                .clone();
            assert_eq!(url.host_str(), Some("api.groovehq.com"), "{value}");
            assert!(url.path().starts_with("/v1/"), "{value}");
            assert_eq!(url.path().matches('/').count(), 2, "{value}");
        }
    }

    #[test]
    fn a_record_whose_url_would_be_too_long_is_refused_naming_the_longest_field() {
        let long = "7".repeat(crate::domain::url_guard::MAX_URL_BYTES);
        let manual = renderer_with_url("tickets/{ticket.number}/messages?source={src}");
        let found = refusal(render_json(
            &manual,
            &json!({"ticket": {"number": 1}, "src": long}),
        ));
        assert_eq!(found[0].0, "record.src");
        assert!(
            found[0]
                .1
                .starts_with("record field \"src\" makes the url too long: url is"),
            "{}",
            found[0].1
        );
        assert!(found[0].1.contains("at most 8000"), "{}", found[0].1);

        let template = renderer(&DestinationConfig {
            endpoint: Endpoint::Template(TemplateEndpoint {
                template_id: "update_ticket_state".to_string(),
                parameters: [("ticket_number".to_string(), "{n}".to_string())].into(),
            }),
            ..DestinationConfig::default()
        });
        assert_eq!(
            refused_fields(render_json(&template, &json!({"n": long, "state": "open"}))),
            ["record.n"]
        );
        assert!(render_json(&template, &json!({"n": 12, "state": "open"})).is_ok());
    }

    fn renderer_with_url(url: &str) -> Renderer {
        renderer(&manual_config(HttpMethod::Post, url, &[]))
    }

    #[test]
    fn manual_body_is_the_record_minus_exclusions() {
        let mut config = manual_config(HttpMethod::Put, "customers/{email}", &[]);
        config.exclude_attributes = vec![
            "email".into(),
            "customer.phone".into(),
            "contact.enabled".into(),
            "absent.path".into(),
        ];
        let renderer = renderer(&config);
        let record = json!({
            "email": "a@x.example",
            "name": "A",
            "customer": {"phone": "123", "city": "Paris"},
            "contact.enabled": true,
            "contact": {"enabled": true, "name": "kept"},
        });
        let rendered = render_json(&renderer, &record).unwrap();
        let call = &rendered.calls[0];
        assert_eq!(
            call.url.as_str(),
            "https://api.groovehq.com/v1/customers/a%40x.example"
        );
        assert_eq!(
            body(call),
            json!({"name": "A", "customer": {"city": "Paris"}, "contact": {"name": "kept"}})
        );

        // Nothing to exclude in this record: the bytes pass through.
        let raw = b"{\"email\" :\"b@x.example\",\n\t\"name\":\"B\"   ,\"n\":1.50}";
        let rendered = Renderer::new(
            &DestinationConfig {
                exclude_attributes: vec!["customer.phone".into()],
                ..manual_config(HttpMethod::Put, "customers/{email}", &[])
            },
            &base(),
        )
        .unwrap()
        .render(raw)
        .unwrap();
        assert_eq!(rendered.calls[0].body, &raw[..]);
    }

    #[test]
    fn exclusions_apply_to_templates_before_the_field_check() {
        let mut config = template_config(
            "update_ticket_state",
            &[("ticket_number", "{ticket_number}")],
        );
        config.exclude_attributes = vec!["ticket_number".into(), "meta.secret".into()];
        let renderer = renderer(&config);
        let rendered = render_json(
            &renderer,
            &json!({"ticket_number": 3, "state": "closed", "meta": {"secret": "s", "ok": 1}}),
        )
        .unwrap();
        // The path still comes from the record as given.
        assert_eq!(
            rendered.calls[0].url.as_str(),
            "https://api.groovehq.com/v1/tickets/3/state"
        );
        assert_eq!(
            body(&rendered.calls[0]),
            json!({"state": "closed", "meta": {"ok": 1}})
        );

        config.exclude_attributes = vec!["state".into()];
        assert_eq!(
            refused_fields(render_json(
                &Renderer::new(&config, &base()).unwrap(),
                &json!({"ticket_number": 3, "state": "closed"})
            )),
            ["record.state"]
        );
    }

    #[test]
    fn unchanged_records_pass_through_byte_for_byte() {
        let raw: &[u8] = b"  {\"body\" : \"hi \\u00e9\" ,\n  \"from\":\"a@x.example\",\t\"to\" : \"b@x.example\", \"n\": 1.0e2 }\n";
        let renderer = renderer(&template_config("create_ticket", &[]));
        assert_eq!(renderer.render(raw).unwrap().calls[0].body, raw);

        // The fast path (no field needed) as well.
        let manual = renderer_with_url("tickets");
        assert_eq!(manual.render(raw).unwrap().calls[0].body, raw);
        assert!(manual.untouched_url.is_some());
        assert!(renderer.untouched_url.is_none());
    }

    #[test]
    fn records_that_are_not_json_objects_are_refused() {
        for renderer in [
            renderer_with_url("tickets"),
            renderer(&template_config("create_group", &[])),
        ] {
            for raw in [
                &b"[1]"[..],
                b"\"x\"",
                b"null",
                b"12",
                b"true",
                b"[{\"a\":1}]",
            ] {
                assert_eq!(
                    refusal(renderer.render(raw)),
                    [(
                        "record".to_string(),
                        "record is not a json object".to_string()
                    )],
                    "{}",
                    String::from_utf8_lossy(raw)
                );
            }
            for raw in [
                &b""[..],
                b"{",
                b"{\"a\":1} x",
                b"{\"a\":}",
                b"\xff",
                b"{\"a\":\"\xff\"}",
                b"{\"\xff\":1}",
                b"{\"a\":[\"\\ud800\"]}",
                b"{\"a\":1e999}",
            ] {
                let found = refusal(renderer.render(raw));
                assert_eq!(found.len(), 1);
                assert_eq!(found[0].0, "record");
                assert!(
                    found[0].1.starts_with("record is not valid json: "),
                    "{}",
                    found[0].1
                );
            }
            assert_eq!(
                refused_fields(renderer.render_value(json!([1]))),
                ["record"]
            );
        }
    }

    #[test]
    fn render_value_serialises_once_and_agrees_with_render() {
        let renderer = renderer(&template_config(
            "update_ticket_state",
            &[("ticket_number", "{n}")],
        ));
        let record = json!({"n": 4, "state": "pending"});
        let from_value = renderer.render_value(record.clone()).unwrap();
        let from_raw = render_json(&renderer, &record).unwrap();
        assert_eq!(from_value, from_raw);
    }

    #[test]
    fn ordering_keys() {
        let mut config = template_config("update_ticket_state", &[("ticket_number", "{n}")]);
        let by_path = renderer(&config);
        assert_eq!(
            render_json(&by_path, &json!({"n": 8, "state": "closed"}))
                .unwrap()
                .ordering_key
                .as_deref(),
            Some("/v1/tickets/8/state")
        );

        config.delivery.ordering_key_attribute = Some("customer.id".into());
        let by_attribute = renderer(&config);
        let key = |record: Value| render_json(&by_attribute, &record).unwrap().ordering_key;
        assert_eq!(
            key(json!({"n": 8, "state": "closed", "customer": {"id": "c1"}})).as_deref(),
            Some("c1")
        );
        assert_eq!(
            key(json!({"n": 8, "state": "closed", "customer": {"id": 12}})).as_deref(),
            Some("12")
        );
        // Without the attribute the record is not ordered against others.
        assert_eq!(key(json!({"n": 8, "state": "closed"})), None);
        assert_eq!(
            key(json!({"n": 8, "state": "closed", "customer": {"id": null}})),
            None
        );

        let creates = renderer(&template_config("create_group", &[]));
        assert_eq!(
            render_json(&creates, &json!({"name": "g"}))
                .unwrap()
                .ordering_key,
            None
        );
    }

    #[test]
    fn group_keys_follow_the_grouping_algorithm() {
        let batched = |grouping, attribute: Option<&str>| {
            let mut config = manual_config(
                HttpMethod::Post,
                "tickets/{n}/messages",
                &[("X-Secret", "s3cret")],
            );
            config.batching = Batching {
                enabled: true,
                grouping,
                group_by_attribute: attribute.map(str::to_string),
                ..Batching::default()
            };
            if grouping != GroupingAlgorithm::RenderedRequest {
                config.endpoint =
                    manual_config(HttpMethod::Post, "bulk", &[("X-Secret", "s3cret")]).endpoint;
            }
            renderer(&config)
        };
        let record = json!({"n": 1, "customer": {"id": "c1"}});

        let arrival = batched(GroupingAlgorithm::ArrivalOrder, None);
        assert_eq!(render_json(&arrival, &record).unwrap().group_key, None);

        let by_attribute = batched(GroupingAlgorithm::AttributeValue, Some("customer.id"));
        assert_eq!(
            render_json(&by_attribute, &record)
                .unwrap()
                .group_key
                .as_deref(),
            Some("c1")
        );
        assert_eq!(
            render_json(&by_attribute, &json!({"n": 1}))
                .unwrap()
                .group_key,
            None
        );

        let by_request = batched(GroupingAlgorithm::RenderedRequest, None);
        let key = render_json(&by_request, &record)
            .unwrap()
            .group_key
            .unwrap();
        assert_eq!(key, "POST https://api.groovehq.com/v1/tickets/1/messages");
        assert!(!key.contains("s3cret"));

        // Batching disabled: no group key whatever the algorithm.
        let mut config = manual_config(HttpMethod::Post, "bulk", &[]);
        config.batching.grouping = GroupingAlgorithm::AttributeValue;
        config.batching.group_by_attribute = Some("customer.id".into());
        assert_eq!(
            render_json(&renderer(&config), &record).unwrap().group_key,
            None
        );
    }

    #[test]
    fn a_get_sends_no_body() {
        let renderer = renderer(&manual_config(HttpMethod::Get, "tickets/{n}", &[]));
        let rendered = render_json(&renderer, &json!({"n": 3})).unwrap();
        assert_eq!(
            rendered.calls[0].url.as_str(),
            "https://api.groovehq.com/v1/tickets/3"
        );
        assert!(rendered.calls[0].body.is_empty());
        assert_eq!(
            rendered.calls[0].display_headers(),
            [("Authorization".to_string(), "Bearer ****".to_string())]
        );
    }

    #[test]
    fn displayed_headers_are_those_sent_with_the_key_redacted() {
        let headers = vec![
            ("X-Source".to_string(), "sync".to_string()),
            (
                "content-type".to_string(),
                "application/vnd.x+json".to_string(),
            ),
            ("Accept".to_string(), "application/json".to_string()),
        ];
        assert_eq!(
            display_headers(&headers, true),
            [
                ("X-Source".to_string(), "sync".to_string()),
                ("Accept".to_string(), "application/json".to_string()),
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Authorization".to_string(), "Bearer ****".to_string()),
            ]
        );
        assert_eq!(
            display_headers(&[], true),
            [
                ("Content-Type".to_string(), "application/json".to_string()),
                ("Authorization".to_string(), "Bearer ****".to_string()),
            ]
        );
    }

    #[test]
    fn invalid_configurations_build_no_renderer() {
        let found =
            Renderer::new(&template_config("update_ticket_state", &[]), &base()).unwrap_err();
        assert_eq!(found.0[0].field, "config.template.parameters.ticket_number");
        let found = Renderer::new(&renderer_config_evil(), &base()).unwrap_err();
        assert_eq!(found.0[0].field, "config.manual.url");
    }

    fn renderer_config_evil() -> DestinationConfig {
        manual_config(HttpMethod::Post, "https://evil.example/x", &[])
    }

    #[test]
    fn local_base_urls_work() {
        let local = Url::parse("http://127.0.0.1:40123/v1").unwrap();
        let renderer = Renderer::new(
            &template_config("update_group", &[("group_id", "{id}")]),
            &local,
        )
        .unwrap();
        let rendered = render_json(&renderer, &json!({"id": "7"})).unwrap();
        assert_eq!(
            rendered.calls[0].url.as_str(),
            "http://127.0.0.1:40123/v1/groups/7"
        );
    }
}
