//! Request bodies and field checks.
//!
//! Groove accepts JSON and form-encoded bodies (docs/groove-api.md §4). Groove runs Rails, so a
//! body of any other content type is treated the way Rails treats it: not parsed, contributing no
//! fields (which then surfaces as "`<field>` is required"). Query parameters are deliberately *not*
//! merged into the fields: no documented client sends write fields in the query, and merging would
//! hide a client that puts them in the wrong place.

use serde_json::{Map, Value};

/// Why a body could not be turned into fields; answered 400.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum BodyError {
    Malformed,
    NotAnObject,
}

impl BodyError {
    pub(crate) fn message(&self) -> &'static str {
        match self {
            BodyError::Malformed => "malformed JSON in request body",
            // Groove has no bulk endpoint (docs/groove-api.md §7): one record per call. Arrays pass
            // only with the opt-in `Faults::accept_batches`.
            BodyError::NotAnObject => "request body must be a JSON object",
        }
    }
}

/// The parsed body: `Null` for an empty or unparsed body, otherwise what was sent.
pub(crate) fn parse_body(content_type: Option<&str>, body: &[u8]) -> Result<Value, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    let essence = content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| ct.trim().to_ascii_lowercase())
        .unwrap_or_default();
    if essence == "application/json" || essence.ends_with("+json") {
        serde_json::from_slice(body).map_err(|_| BodyError::Malformed)
    } else if essence == "application/x-www-form-urlencoded" {
        Ok(Value::Object(parse_form(body)))
    } else {
        Ok(Value::Null)
    }
}

/// The fields of a parsed body; only an object (or nothing) is acceptable.
pub(crate) fn fields(parsed: &Value) -> Result<&Map<String, Value>, BodyError> {
    match parsed {
        Value::Object(map) => Ok(map),
        Value::Null => Ok(no_fields()),
        _ => Err(BodyError::NotAnObject),
    }
}

/// The fields of an empty body.
pub(crate) fn no_fields() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

/// Decodes a form body the way Rack does: `a[b]=1` nests, `a[]=1&a[]=2` makes an array.
fn parse_form(body: &[u8]) -> Map<String, Value> {
    let mut root = Map::new();
    for (key, value) in url::form_urlencoded::parse(body) {
        let (head, path) = split_form_key(&key);
        insert_form_value(&mut root, head, &path, Value::String(value.into_owned()));
    }
    root
}

fn split_form_key(key: &str) -> (&str, Vec<&str>) {
    let Some(open) = key.find('[') else {
        return (key, Vec::new());
    };
    let (head, mut rest) = key.split_at(open);
    let mut path = Vec::new();
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else { break };
        path.push(&inner[..close]);
        rest = &inner[close + 1..];
    }
    (head, path)
}

fn insert_form_value(map: &mut Map<String, Value>, key: &str, path: &[&str], value: Value) {
    match path.split_first() {
        None => {
            map.insert(key.to_owned(), value);
        }
        Some((&"", _)) => {
            let slot = map
                .entry(key.to_owned())
                .or_insert_with(|| Value::Array(Vec::new()));
            if let Value::Array(items) = slot {
                items.push(value);
            } else {
                *slot = Value::Array(vec![value]);
            }
        }
        Some((next, rest)) => {
            let slot = map
                .entry(key.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            if let Value::Object(inner) = slot {
                insert_form_value(inner, next, rest, value);
            }
        }
    }
}

/// Rails' notion of "present": not missing, not null, not blank text, not an empty list or hash.
pub(crate) fn is_present(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::String(s)) => !s.trim().is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(_) => true,
    }
}

/// A present string field, trimmed; numbers are accepted as their text like Rails would.
pub(crate) fn text(fields: &Map<String, Value>, key: &str) -> Option<String> {
    match fields.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// A boolean flag; form bodies send text, so `"true"`/`"1"` count too.
pub(crate) fn flag(fields: &Map<String, Value>, key: &str) -> Option<bool> {
    match fields.get(key)? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => match s.trim() {
            "true" | "1" => Some(true),
            "false" | "0" | "" => Some(false),
            _ => None,
        },
        Value::Number(n) => n.as_i64().map(|n| n != 0),
        _ => None,
    }
}

/// Collects validation failures so one 422 names every missing field, like a Rails model would.
#[derive(Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    pub(crate) fn require(&mut self, fields: &Map<String, Value>, key: &str) {
        if !is_present(fields.get(key)) {
            self.add(format!("{key} is required"));
        }
    }

    pub(crate) fn add(&mut self, problem: String) {
        self.0.push(problem);
    }

    pub(crate) fn into_result(self) -> Result<(), Vec<String>> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn form_bodies_nest_like_rack() {
        let parsed = parse_body(
            Some("application/x-www-form-urlencoded; charset=utf-8"),
            b"body=hi+there&to[email]=a%40b.c&to[name]=A&tags[]=x&tags[]=y",
        )
        .unwrap();
        assert_eq!(
            parsed,
            json!({"body": "hi there", "to": {"email": "a@b.c", "name": "A"}, "tags": ["x", "y"]})
        );
    }

    #[test]
    fn json_arrays_and_garbage_are_refused() {
        let ct = Some("application/json");
        assert_eq!(
            fields(&parse_body(ct, b"[{}]").unwrap()),
            Err(BodyError::NotAnObject)
        );
        assert_eq!(parse_body(ct, b"{nope"), Err(BodyError::Malformed));
        assert_eq!(parse_body(ct, b"  "), Ok(Value::Null));
        assert_eq!(
            parse_body(Some("text/plain"), b"{\"a\":1}"),
            Ok(Value::Null)
        );
    }
}
