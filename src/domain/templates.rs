//! The 15 Groove templates as one data table: method, path, path parameters and what a record body must hold.
//!
//! Everything Groove-specific lives in [`TEMPLATES`], so a path found to be wrong is a one-line fix. The rules
//! follow "be liberal in what we pass, strict in what we promise" (docs/groove-api.md §0): a record is refused
//! only for what Groove is known to need, and every other field is passed through.
//!
//! Field names in requirements, allowed values and normalisations are top-level keys of the record body,
//! taken literally (Groove's widget settings use keys such as `"contact.enabled"`, which contain dots).

use serde_json::Value;

use super::destination::HttpMethod;
use super::validation::Violations;

/// One ready-made Groove endpoint.
#[derive(Debug, PartialEq, Eq)]
pub struct Template {
    /// Stable snake_case id, e.g. `create_ticket`.
    pub id: &'static str,
    /// Human-readable name, e.g. "Create Ticket".
    pub name: &'static str,
    /// What the template does and what a record needs, including what is confirmed and what is inferred.
    pub description: &'static str,
    /// HTTP method of the call.
    pub method: HttpMethod,
    /// Path relative to the Groove base URL (no leading `/`), with `{name}` placeholders for path parameters.
    pub path: &'static str,
    /// Every placeholder of `path`, in order.
    pub parameters: &'static [PathParameter],
    /// Each requirement must be met by a record body (all of them, each by one of its fields).
    pub required: &'static [FieldRequirement],
    /// Fields whose value must come from a fixed set.
    pub allowed_values: &'static [AllowedValues],
    /// Rewrites the renderer applies to a record body before sending it.
    pub normalisations: &'static [Normalisation],
    /// Which records must be delivered in order when the destination names no ordering attribute.
    pub default_ordering: DefaultOrdering,
    /// Whether several records can share one call. Groove has no bulk endpoint (§7), so never.
    pub batchable: bool,
    /// How sure we are that Groove serves this method and path.
    pub confidence: Confidence,
}

/// A `{name}` placeholder in a template's path.
#[derive(Debug, PartialEq, Eq)]
pub struct PathParameter {
    /// The placeholder's name, e.g. `ticket_number`.
    pub name: &'static str,
    /// What value it takes.
    pub description: &'static str,
    /// Whether a destination must give a value (all current parameters are required: they are path segments).
    pub required: bool,
}

/// At least one of `any_of` must be present in the record body and non-empty.
///
/// Present and non-empty means: not absent, not `null`, not a string that is empty or only whitespace, not an
/// empty array or object. Numbers and booleans always count.
#[derive(Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    /// Alternative field names; the first is the preferred one and the one named in errors.
    pub any_of: &'static [&'static str],
}

/// The shape a constrained field has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueShape {
    /// A single string.
    One,
    /// An array of strings, each checked.
    List,
}

/// When `field` is present (and not `null`), its value must be one of `values`, compared exactly.
#[derive(Debug, PartialEq, Eq)]
pub struct AllowedValues {
    /// The constrained field.
    pub field: &'static str,
    /// Whether the field holds one value or an array of them.
    pub shape: ValueShape,
    /// The accepted values.
    pub values: &'static [&'static str],
}

/// A rewrite of the record body, applied by the renderer so Groove receives the shape it documents.
#[derive(Debug, PartialEq, Eq)]
pub enum Normalisation {
    /// Replace the value `from` of `field` by `to` (e.g. state `open` → `opened`).
    MapValue {
        /// The field whose value is replaced.
        field: &'static str,
        /// The accepted spelling.
        from: &'static str,
        /// What Groove is sent.
        to: &'static str,
    },
    /// Send field `from` under the name `to` (e.g. `group_id` → `group`).
    Rename {
        /// The accepted name.
        from: &'static str,
        /// The name Groove is sent.
        to: &'static str,
    },
    /// An array in `from` becomes one call per element, each with the element in `into`
    /// (e.g. `event_types: [a, b]` → two calls, with `event: a` and `event: b`).
    FanOut {
        /// The array field.
        from: &'static str,
        /// The field each call carries instead.
        into: &'static str,
    },
}

/// The ordering key used when a destination does not name one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DefaultOrdering {
    /// No order between records: pure creates run in parallel.
    None,
    /// Records with the same rendered path go in order (e.g. updates to one ticket).
    RenderedPath,
}

/// How the template's method and path are known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confidence {
    /// Seen in Groove's documentation or in a client library used against the live API.
    Confirmed,
    /// Guessed from Groove's naming; verify with the first responses.
    Inferred,
}

/// Ticket states a record may give: Groove's five, plus `open`, which is sent as `opened`.
pub const TICKET_STATES: &[&str] = &["unread", "opened", "pending", "closed", "spam", "open"];

/// The 14 webhook events Groove documents (§6.4).
pub const WEBHOOK_EVENTS: &[&str] = &[
    "ticket_started",
    "ticket_opened",
    "ticket_closed",
    "ticket_assigned",
    "ticket_priority_changed",
    "ticket_deleted",
    "ticket_tagged",
    "ticket_moved",
    "customer_replied",
    "customer_added",
    "agent_invited",
    "agent_archived",
    "note_added",
    "agent_replied",
];

const TICKET_NUMBER: PathParameter = PathParameter {
    name: "ticket_number",
    description: "Number of the ticket (an integer, as in /tickets/1234): a literal or a record field such as \
                  {ticket_number}.",
    required: true,
};

const GROUP_ID: PathParameter = PathParameter {
    name: "group_id",
    description: "Id of the group (a string of digits that may start with 0): a literal or a record field such as \
                  {group_id}.",
    required: true,
};

const KNOWLEDGE_BASE_ID: PathParameter = PathParameter {
    name: "knowledge_base_id",
    description: "Id of the knowledge base (a string of digits that may start with 0): a literal or a record field \
                  such as {knowledge_base_id}.",
    required: true,
};

const ARTICLE_ID: PathParameter = PathParameter {
    name: "article_id",
    description: "Id of the article (a string of digits that may start with 0): a literal or a record field such as \
                  {article_id}.",
    required: true,
};

const WIDGET_ID: PathParameter = PathParameter {
    name: "widget_id",
    description: "Id of the widget: a literal or a record field such as {widget_id}.",
    required: true,
};

const STATE_ALLOWED: AllowedValues = AllowedValues {
    field: "state",
    shape: ValueShape::One,
    values: TICKET_STATES,
};

const STATE_OPEN_TO_OPENED: Normalisation = Normalisation::MapValue {
    field: "state",
    from: "open",
    to: "opened",
};

/// The catalogue. Order is the order `ListTemplates` shows.
pub static TEMPLATES: [Template; 15] = [
    Template {
        id: "create_ticket",
        name: "Create Ticket",
        description: "Creates a ticket from each record: needs `body`, `from` (an email or a customer object) and \
                      `to` or `mailbox`, and an optional `state` must be unread, opened, pending, closed or spam \
                      (`open` is sent as `opened`). Confirmed in Groove's docs, which require `to`; `mailbox` \
                      alone is accepted because it names where the ticket goes.",
        method: HttpMethod::Post,
        path: "tickets",
        parameters: &[],
        required: &[
            FieldRequirement { any_of: &["body"] },
            FieldRequirement { any_of: &["from"] },
            FieldRequirement {
                any_of: &["to", "mailbox"],
            },
        ],
        allowed_values: &[STATE_ALLOWED],
        normalisations: &[STATE_OPEN_TO_OPENED],
        default_ordering: DefaultOrdering::None,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "update_ticket_state",
        name: "Update Ticket State",
        description: "Sets the state of the ticket `ticket_number` from the record's `state`: unread, opened, \
                      pending, closed or spam (`open` is sent as `opened`). Path confirmed by client libraries; \
                      Groove's response is undocumented.",
        method: HttpMethod::Put,
        path: "tickets/{ticket_number}/state",
        parameters: &[TICKET_NUMBER],
        required: &[FieldRequirement {
            any_of: &["state"],
        }],
        allowed_values: &[STATE_ALLOWED],
        normalisations: &[STATE_OPEN_TO_OPENED],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "update_ticket_assignee",
        name: "Update Ticket Assignee",
        description: "Assigns the ticket `ticket_number` to the agent in the record's `assignee` (the agent's \
                      email). Path and field confirmed by a client library; Groove's response is undocumented.",
        method: HttpMethod::Put,
        path: "tickets/{ticket_number}/assignee",
        parameters: &[TICKET_NUMBER],
        required: &[FieldRequirement {
            any_of: &["assignee"],
        }],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "update_ticket_assigned_group",
        name: "Update Ticket Assigned Group",
        description: "Moves the ticket `ticket_number` to the group in the record's `group` (`assigned_group` or \
                      `group_id` are accepted and sent as `group`). The path and the `group` key come from a \
                      client library; Groove expects the group's name, and whether an id works is unverified.",
        method: HttpMethod::Put,
        path: "tickets/{ticket_number}/assigned_group",
        parameters: &[TICKET_NUMBER],
        required: &[FieldRequirement {
            any_of: &["group", "assigned_group", "group_id"],
        }],
        allowed_values: &[],
        normalisations: &[
            Normalisation::Rename {
                from: "assigned_group",
                to: "group",
            },
            Normalisation::Rename {
                from: "group_id",
                to: "group",
            },
        ],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "create_message",
        name: "Create Message",
        description: "Adds a message to the ticket `ticket_number` from the record's `body` (required); `author`, \
                      `note` (private note), `sent_at` and `send_copy_to_customer` are optional. Confirmed in \
                      Groove's docs.",
        method: HttpMethod::Post,
        path: "tickets/{ticket_number}/messages",
        parameters: &[TICKET_NUMBER],
        required: &[FieldRequirement { any_of: &["body"] }],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "create_webhook",
        name: "Create Webhook",
        description: "Registers a webhook: the record's `url` (or `webhook_url`) receives the `event` it names, \
                      one of Groove's 14 documented events, and an `event_types` array creates one webhook per \
                      event. Confirmed in Groove's docs.",
        method: HttpMethod::Post,
        path: "webhooks",
        parameters: &[],
        required: &[
            FieldRequirement {
                any_of: &["url", "webhook_url"],
            },
            FieldRequirement {
                any_of: &["event", "event_types"],
            },
        ],
        allowed_values: &[
            AllowedValues {
                field: "event",
                shape: ValueShape::One,
                values: WEBHOOK_EVENTS,
            },
            AllowedValues {
                field: "event_types",
                shape: ValueShape::List,
                values: WEBHOOK_EVENTS,
            },
        ],
        normalisations: &[
            Normalisation::Rename {
                from: "webhook_url",
                to: "url",
            },
            Normalisation::FanOut {
                from: "event_types",
                into: "event",
            },
        ],
        default_ordering: DefaultOrdering::None,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "create_group",
        name: "Create Group",
        description: "Creates an agent group from the record's `name` (required); `description` and `agents` \
                      (agent emails or ids) are optional. Confirmed in Groove's docs.",
        method: HttpMethod::Post,
        path: "groups",
        parameters: &[],
        required: &[FieldRequirement { any_of: &["name"] }],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::None,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "update_group",
        name: "Update Group",
        description: "Updates the group `group_id` with the record's `name`, `description` or `agents` (all \
                      optional; `agents` replaces the members). Confirmed in Groove's docs.",
        method: HttpMethod::Put,
        path: "groups/{group_id}",
        parameters: &[GROUP_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "create_knowledge_base",
        name: "Create Knowledge Base",
        description: "Creates a knowledge base from the record, passed through as is. Path and fields are inferred \
                      from Groove's naming, not documented: check the first responses.",
        method: HttpMethod::Post,
        path: "kb",
        parameters: &[],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::None,
        batchable: false,
        confidence: Confidence::Inferred,
    },
    Template {
        id: "update_knowledge_base",
        name: "Update Knowledge Base",
        description: "Updates the knowledge base `knowledge_base_id` with the record, passed through as is. Path \
                      and fields are inferred, not documented: check the first responses.",
        method: HttpMethod::Put,
        path: "kb/{knowledge_base_id}",
        parameters: &[KNOWLEDGE_BASE_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Inferred,
    },
    Template {
        id: "update_knowledge_base_settings",
        name: "Update Knowledge Base Settings",
        description: "Updates the settings of the knowledge base `knowledge_base_id` with the record, passed \
                      through as is. Path inferred by analogy with widget settings, fields undocumented: check the \
                      first responses.",
        method: HttpMethod::Put,
        path: "kb/{knowledge_base_id}/settings",
        parameters: &[KNOWLEDGE_BASE_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Inferred,
    },
    Template {
        id: "create_article",
        name: "Create Article",
        description: "Creates an article in the knowledge base `knowledge_base_id` from the record's `title` \
                      (required here, though Groove requires nothing) and any other fields such as `body`, \
                      `category_id` or `tags`. Path confirmed in Groove's docs; it documents no `state` field, so \
                      publishing this way is unconfirmed.",
        method: HttpMethod::Post,
        path: "kb/{knowledge_base_id}/articles",
        parameters: &[KNOWLEDGE_BASE_ID],
        required: &[FieldRequirement {
            any_of: &["title"],
        }],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::None,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
    Template {
        id: "update_article",
        name: "Update Article",
        description: "Updates the article `article_id` of the knowledge base `knowledge_base_id` with the record's \
                      fields (as for Create Article; none required). The path is inferred from the create call: \
                      check the first responses.",
        method: HttpMethod::Put,
        path: "kb/{knowledge_base_id}/articles/{article_id}",
        parameters: &[KNOWLEDGE_BASE_ID, ARTICLE_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Inferred,
    },
    Template {
        id: "update_widget",
        name: "Update Widget",
        description: "Updates the widget `widget_id` with the record (presumably its `name`; nothing required). \
                      The path is inferred from the documented widget calls: check the first responses.",
        method: HttpMethod::Put,
        path: "widgets/{widget_id}",
        parameters: &[WIDGET_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Inferred,
    },
    Template {
        id: "update_widget_settings",
        name: "Update Widget Settings",
        description: "Updates the settings of the widget `widget_id`. Groove expects flat dotted keys such as \
                      `\"contact.enabled\": true`, passed through as is; all optional. Confirmed in Groove's docs; \
                      the response is undocumented.",
        method: HttpMethod::Put,
        path: "widgets/{widget_id}/settings",
        parameters: &[WIDGET_ID],
        required: &[],
        allowed_values: &[],
        normalisations: &[],
        default_ordering: DefaultOrdering::RenderedPath,
        batchable: false,
        confidence: Confidence::Confirmed,
    },
];

/// Every template, in catalogue order.
pub fn all() -> &'static [Template] {
    &TEMPLATES
}

/// The template with this id.
pub fn find(id: &str) -> Option<&'static Template> {
    TEMPLATES.iter().find(|template| template.id == id)
}

impl Template {
    /// The path parameter with this name.
    pub fn parameter(&self, name: &str) -> Option<&'static PathParameter> {
        self.parameters
            .iter()
            .find(|parameter| parameter.name == name)
    }

    /// Checks one record body against this template's requirements and allowed values; see
    /// [`check_record_fields`].
    pub fn check_record(&self, record: &Value) -> Result<(), Violations> {
        check_record_fields(self, record)
    }
}

/// Checks one record body (a JSON object) against `template`: required fields, allowed values, and aliases
/// that would collide once normalised (`group` and `group_id` with different values; `event` together with
/// `event_types`). Violations name fields as `record.state`, `record.event_types[1]`.
pub fn check_record_fields(template: &Template, record: &Value) -> Result<(), Violations> {
    let mut violations = Violations::default();
    let Some(fields) = record.as_object() else {
        violations.push("record", "record must be a json object");
        return violations.into_result();
    };
    let present = |name: &str| fields.get(name).filter(|value| is_non_empty(value));

    for requirement in template.required {
        if requirement
            .any_of
            .iter()
            .any(|name| present(name).is_some())
        {
            continue;
        }
        let field = format!("record.{}", requirement.any_of[0]);
        let description = match requirement.any_of {
            [single] => format!("required field \"{single}\" is missing or empty"),
            names => format!("one of {} is required", quoted_list(names, "or")),
        };
        violations.push(field, description);
    }

    for allowed in template.allowed_values {
        // An empty required field was just reported; saying it is also not allowed would be noise.
        let reported = format!("record.{}", allowed.field);
        if violations.0.iter().any(|v| v.field == reported) {
            continue;
        }
        let Some(value) = fields.get(allowed.field).filter(|value| !value.is_null()) else {
            continue;
        };
        check_allowed(allowed, value, &mut violations);
    }

    check_collisions(template, fields, &mut violations);
    violations.into_result()
}

fn check_allowed(allowed: &AllowedValues, value: &Value, violations: &mut Violations) {
    let field = format!("record.{}", allowed.field);
    let is_allowed = |value: &Value| {
        value
            .as_str()
            .is_some_and(|text| allowed.values.contains(&text))
    };
    let refusal = |value: &Value| {
        format!(
            "{value} is not allowed; use one of: {}",
            allowed.values.join(", ")
        )
    };
    match (allowed.shape, value) {
        (ValueShape::One, value) if !is_allowed(value) => violations.push(field, refusal(value)),
        (ValueShape::One, _) => {}
        (ValueShape::List, Value::Array(items)) => {
            for (index, item) in items.iter().enumerate() {
                if !is_allowed(item) {
                    violations.push(format!("{field}[{index}]"), refusal(item));
                }
            }
        }
        (ValueShape::List, _) => violations.push(
            field,
            format!(
                "must be an array of values among: {}",
                allowed.values.join(", ")
            ),
        ),
    }
}

/// Aliases are only safe while they agree: after renaming, one of two different values would silently win.
fn check_collisions(
    template: &Template,
    fields: &serde_json::Map<String, Value>,
    violations: &mut Violations,
) {
    let given = |name: &str| fields.get(name).filter(|value| !value.is_null());
    let mut targets: Vec<&str> = Vec::new();
    for normalisation in template.normalisations {
        match *normalisation {
            Normalisation::Rename { to, .. } if !targets.contains(&to) => targets.push(to),
            Normalisation::FanOut { from, into }
                if given(from).is_some() && given(into).is_some() =>
            {
                violations.push(
                    format!("record.{from}"),
                    format!("give either \"{into}\" or \"{from}\", not both"),
                );
            }
            _ => {}
        }
    }
    for target in targets {
        let sources = template.normalisations.iter().filter_map(|n| match *n {
            Normalisation::Rename { from, to } if to == target => Some(from),
            _ => None,
        });
        let names: Vec<&str> = std::iter::once(target)
            .chain(sources)
            .filter(|name| given(name).is_some())
            .collect();
        let differ = names
            .windows(2)
            .any(|pair| given(pair[0]) != given(pair[1]));
        if differ {
            violations.push(
                format!("record.{}", names[1]),
                format!(
                    "{} are sent as \"{target}\" but hold different values; give one",
                    quoted_list(&names, "and")
                ),
            );
        }
    }
}

fn is_non_empty(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(text) => !text.trim().is_empty(),
        Value::Array(items) => !items.is_empty(),
        Value::Object(map) => !map.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

/// `"a"`, `"a" or "b"`, `"a", "b" or "c"`.
fn quoted_list(names: &[&str], conjunction: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|name| format!("\"{name}\"")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("{} {conjunction} {last}", rest.join(", "))
        }
        _ => quoted.concat(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;

    use super::*;

    fn placeholders(path: &str) -> Vec<&str> {
        path.split('/')
            .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
            .collect()
    }

    fn violations(id: &str, record: Value) -> Vec<(String, String)> {
        match check_record_fields(find(id).unwrap(), &record) {
            Ok(()) => vec![],
            Err(found) => found
                .0
                .into_iter()
                .map(|v| (v.field, v.description))
                .collect(),
        }
    }

    fn fields(id: &str, record: Value) -> Vec<String> {
        violations(id, record)
            .into_iter()
            .map(|(field, _)| field)
            .collect()
    }

    #[test]
    fn exactly_fifteen_templates_with_unique_ids() {
        assert_eq!(all().len(), 15);
        let ids: BTreeSet<&str> = all().iter().map(|t| t.id).collect();
        assert_eq!(ids.len(), 15);
        for template in all() {
            assert!(
                template
                    .id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c == '_'),
                "{}",
                template.id
            );
            assert!(!template.name.is_empty() && !template.description.is_empty());
            assert!(!template.batchable, "{}", template.id);
        }
    }

    #[test]
    fn every_placeholder_has_a_parameter_and_back() {
        for template in all() {
            let in_path = placeholders(template.path);
            let declared: Vec<&str> = template.parameters.iter().map(|p| p.name).collect();
            assert_eq!(in_path, declared, "{}", template.id);
            assert!(!template.path.starts_with('/'), "{}", template.id);
            assert_eq!(
                template.path.matches('{').count(),
                in_path.len(),
                "{}",
                template.id
            );
        }
    }

    #[test]
    fn methods_paths_and_ordering() {
        let expected = [
            ("create_ticket", HttpMethod::Post, "tickets"),
            (
                "update_ticket_state",
                HttpMethod::Put,
                "tickets/{ticket_number}/state",
            ),
            (
                "update_ticket_assignee",
                HttpMethod::Put,
                "tickets/{ticket_number}/assignee",
            ),
            (
                "update_ticket_assigned_group",
                HttpMethod::Put,
                "tickets/{ticket_number}/assigned_group",
            ),
            (
                "create_message",
                HttpMethod::Post,
                "tickets/{ticket_number}/messages",
            ),
            ("create_webhook", HttpMethod::Post, "webhooks"),
            ("create_group", HttpMethod::Post, "groups"),
            ("update_group", HttpMethod::Put, "groups/{group_id}"),
            ("create_knowledge_base", HttpMethod::Post, "kb"),
            (
                "update_knowledge_base",
                HttpMethod::Put,
                "kb/{knowledge_base_id}",
            ),
            (
                "update_knowledge_base_settings",
                HttpMethod::Put,
                "kb/{knowledge_base_id}/settings",
            ),
            (
                "create_article",
                HttpMethod::Post,
                "kb/{knowledge_base_id}/articles",
            ),
            (
                "update_article",
                HttpMethod::Put,
                "kb/{knowledge_base_id}/articles/{article_id}",
            ),
            ("update_widget", HttpMethod::Put, "widgets/{widget_id}"),
            (
                "update_widget_settings",
                HttpMethod::Put,
                "widgets/{widget_id}/settings",
            ),
        ];
        for (id, method, path) in expected {
            let template = find(id).unwrap();
            assert_eq!((template.method, template.path), (method, path), "{id}");
            let ordered = method == HttpMethod::Put || id == "create_message";
            let ordering = if ordered {
                DefaultOrdering::RenderedPath
            } else {
                DefaultOrdering::None
            };
            assert_eq!(template.default_ordering, ordering, "{id}");
        }
    }

    #[test]
    fn find_by_id() {
        assert_eq!(find("create_ticket").unwrap().name, "Create Ticket");
        assert!(find("create_tiket").is_none());
        assert!(find("").is_none());
        assert!(find("CREATE_TICKET").is_none());
        let state = find("update_ticket_state").unwrap();
        assert_eq!(
            state.parameter("ticket_number").unwrap().name,
            "ticket_number"
        );
        assert!(state.parameter("group_id").is_none());
    }

    #[test]
    fn create_ticket_needs_body_from_and_to_or_mailbox() {
        let ok = json!({"body": "hi", "from": "a@x.example", "to": {"email": "b@x.example"}});
        assert_eq!(fields("create_ticket", ok), Vec::<String>::new());
        let with_mailbox =
            json!({"body": "hi", "from": "a@x.example", "mailbox": "support@x.example"});
        assert_eq!(fields("create_ticket", with_mailbox), Vec::<String>::new());

        assert_eq!(
            violations("create_ticket", json!({"from": "a", "to": "b"})),
            [(
                "record.body".to_string(),
                "required field \"body\" is missing or empty".to_string()
            )]
        );
        assert_eq!(
            violations("create_ticket", json!({"body": "hi", "from": "a"})),
            [(
                "record.to".to_string(),
                "one of \"to\" or \"mailbox\" is required".to_string()
            )]
        );
        assert_eq!(
            fields(
                "create_ticket",
                json!({"body": "  ", "from": null, "to": "", "mailbox": {}})
            ),
            ["record.body", "record.from", "record.to"]
        );
        assert_eq!(
            fields("create_ticket", json!({})),
            ["record.body", "record.from", "record.to"]
        );
    }

    #[test]
    fn ticket_states() {
        let base = json!({"body": "hi", "from": "a", "to": "b"});
        for state in TICKET_STATES {
            let mut record = base.clone();
            record["state"] = json!(state);
            assert!(fields("create_ticket", record).is_empty(), "{state}");
            assert!(
                fields("update_ticket_state", json!({ "state": state })).is_empty(),
                "{state}"
            );
        }
        let mut record = base.clone();
        record["state"] = Value::Null;
        assert!(fields("create_ticket", record).is_empty());
        for bad in [
            json!("Closed"),
            json!("follow_up"),
            json!(""),
            json!(3),
            json!(["closed"]),
        ] {
            let found = violations("update_ticket_state", json!({ "state": bad }));
            assert_eq!(found.len(), 1, "{bad}");
            assert_eq!(found[0].0, "record.state");
            let mut record = base.clone();
            record["state"] = bad.clone();
            assert_eq!(fields("create_ticket", record), ["record.state"], "{bad}");
        }
        assert_eq!(
            violations("update_ticket_state", json!({"state": "opend"}))[0].1,
            "\"opend\" is not allowed; use one of: unread, opened, pending, closed, spam, open"
        );
        assert_eq!(fields("update_ticket_state", json!({})), ["record.state"]);
    }

    #[test]
    fn assignee_and_assigned_group() {
        assert!(fields(
            "update_ticket_assignee",
            json!({"assignee": "agent@x.example"})
        )
        .is_empty());
        assert_eq!(
            fields("update_ticket_assignee", json!({})),
            ["record.assignee"]
        );

        for key in ["group", "assigned_group", "group_id"] {
            assert!(
                fields("update_ticket_assigned_group", json!({ key: "Support" })).is_empty(),
                "{key}"
            );
        }
        assert_eq!(
            violations("update_ticket_assigned_group", json!({})),
            [(
                "record.group".to_string(),
                "one of \"group\", \"assigned_group\" or \"group_id\" is required".to_string()
            )]
        );
        assert!(fields(
            "update_ticket_assigned_group",
            json!({"group": "Support", "group_id": "Support"})
        )
        .is_empty());
        assert_eq!(
            violations(
                "update_ticket_assigned_group",
                json!({"group": "Support", "group_id": "0123"})
            ),
            [(
                "record.group_id".to_string(),
                "\"group\" and \"group_id\" are sent as \"group\" but hold different values; give one"
                    .to_string()
            )]
        );
        assert_eq!(
            fields(
                "update_ticket_assigned_group",
                json!({"assigned_group": "A", "group_id": "B"})
            ),
            ["record.group_id"]
        );
    }

    #[test]
    fn messages_groups_and_articles() {
        assert!(fields("create_message", json!({"body": "hello", "note": true})).is_empty());
        assert_eq!(
            fields("create_message", json!({"note": true})),
            ["record.body"]
        );
        assert!(fields("create_group", json!({"name": "Tier 2"})).is_empty());
        assert_eq!(
            fields("create_group", json!({"description": "x"})),
            ["record.name"]
        );
        assert!(fields("create_article", json!({"title": "Getting started"})).is_empty());
        assert_eq!(
            fields("create_article", json!({"body": "<p>x</p>"})),
            ["record.title"]
        );
        for id in [
            "update_group",
            "create_knowledge_base",
            "update_knowledge_base",
            "update_knowledge_base_settings",
            "update_article",
            "update_widget",
            "update_widget_settings",
        ] {
            assert!(fields(id, json!({})).is_empty(), "{id}");
            assert!(
                fields(id, json!({"contact.enabled": true})).is_empty(),
                "{id}"
            );
        }
    }

    #[test]
    fn webhooks_accept_both_shapes() {
        let ok = [
            json!({"url": "https://hooks.example/x", "event": "ticket_opened"}),
            json!({"webhook_url": "https://hooks.example/x", "event_types": ["ticket_opened", "agent_replied"]}),
            json!({"url": "u", "webhook_url": "u", "event": "note_added"}),
        ];
        for record in ok {
            assert!(
                fields("create_webhook", record.clone()).is_empty(),
                "{record}"
            );
        }
        assert_eq!(
            fields("create_webhook", json!({})),
            ["record.url", "record.event"]
        );
        assert_eq!(
            fields("create_webhook", json!({"url": "u", "event_types": []})),
            ["record.event"]
        );
        assert_eq!(
            fields(
                "create_webhook",
                json!({"url": "u", "event": "ticket_reopened"})
            ),
            ["record.event"]
        );
        assert_eq!(
            fields(
                "create_webhook",
                json!({"url": "u", "event_types": ["ticket_opened", "nope", 7]})
            ),
            ["record.event_types[1]", "record.event_types[2]"]
        );
        assert_eq!(
            violations(
                "create_webhook",
                json!({"url": "u", "event_types": "ticket_opened"})
            ),
            [(
                "record.event_types".to_string(),
                format!(
                    "must be an array of values among: {}",
                    WEBHOOK_EVENTS.join(", ")
                )
            )]
        );
        assert_eq!(
            violations(
                "create_webhook",
                json!({"url": "u", "event": "ticket_opened", "event_types": ["ticket_closed"]})
            ),
            [(
                "record.event_types".to_string(),
                "give either \"event\" or \"event_types\", not both".to_string()
            )]
        );
        assert_eq!(
            fields(
                "create_webhook",
                json!({"url": "a", "webhook_url": "b", "event": "note_added"})
            ),
            ["record.webhook_url"]
        );
        assert_eq!(WEBHOOK_EVENTS.len(), 14);
    }

    #[test]
    fn non_object_records_are_refused() {
        for record in [json!([1]), json!("x"), Value::Null] {
            assert_eq!(
                violations("update_widget", record.clone()),
                [(
                    "record".to_string(),
                    "record must be a json object".to_string()
                )],
                "{record}"
            );
        }
    }
}
