//! Record-field references: `{field}` or `{a.b.c}` inside parameter values and manual URLs, resolved per record.
//!
//! Grammar, chosen to match Rust's `format!` so it surprises nobody:
//! - `{path}` is a reference; `path` is one or more segments of `[A-Za-z0-9_-]` joined by single dots, and each
//!   segment names a key of a JSON object, walking down from the top of the record (arrays are not indexed).
//! - `{{` and `}}` stand for a literal `{` and `}`, so any text can still be written.
//! - Anything else is literal text.
//!
//! A value without references is a literal (`"1234"`); one with references is resolved per record, so one
//! destination can, for example, update many tickets.

use std::fmt;
use std::str::FromStr;

use serde_json::Value;
use thiserror::Error;

use super::validation::FieldViolation;

/// A dotted path to a record field, e.g. `ticket.number`. Also the syntax of attribute paths elsewhere in the
/// configuration (`exclude_attributes`, `group_by_attribute`), so a user learns one rule.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FieldPath {
    segments: Vec<String>,
}

/// Why a text is not a valid [`FieldPath`].
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PathError {
    /// Nothing to name a field with.
    #[error("field path is empty")]
    Empty,
    /// Two dots in a row, or a dot at either end.
    #[error("field path \"{path}\" has an empty segment; separate names with a single \".\"")]
    EmptySegment {
        /// The offending path as written.
        path: String,
    },
    /// A character outside `[A-Za-z0-9_-]` and `.`.
    #[error(
        "field path \"{path}\" contains {character:?}; use letters, digits, \"_\" and \"-\", separated by \".\""
    )]
    InvalidCharacter {
        /// The offending path as written.
        path: String,
        /// The first character that is not allowed.
        character: char,
    },
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

impl FieldPath {
    /// Parses `a.b.c`. Surrounding whitespace is not trimmed: a stray space is almost always a typo.
    pub fn parse(text: &str) -> Result<Self, PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        if let Some(character) = text.chars().find(|&c| c != '.' && !is_segment_char(c)) {
            return Err(PathError::InvalidCharacter {
                path: text.to_string(),
                character,
            });
        }
        let segments: Vec<String> = text.split('.').map(str::to_string).collect();
        if segments.iter().any(String::is_empty) {
            return Err(PathError::EmptySegment {
                path: text.to_string(),
            });
        }
        Ok(FieldPath { segments })
    }

    /// The object keys, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The value at this path, or `None` when a key is absent or a step is not an object.
    pub fn lookup<'v>(&self, record: &'v Value) -> Option<&'v Value> {
        self.segments
            .iter()
            .try_fold(record, |value, key| value.as_object()?.get(key))
    }

    /// The path as reported in per-record violations: `record.ticket.number`.
    pub fn record_field(&self) -> String {
        format!("record.{self}")
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.segments.join("."))
    }
}

impl FromStr for FieldPath {
    type Err = PathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        FieldPath::parse(text)
    }
}

/// One piece of a parsed [`Pattern`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text used as is (escapes already undone: `{{` is stored as `{`).
    Literal(String),
    /// A record field whose value is substituted per record.
    Reference(FieldPath),
}

/// A text that may contain record-field references, parsed once and resolved per record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

/// Why a text is not a valid [`Pattern`]. Positions count characters from 1.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ReferenceError {
    /// A `{` that is never closed.
    #[error("unclosed \"{{\" at character {position}; write \"{{{{\" for a literal brace")]
    Unclosed {
        /// Character position of the `{`, from 1.
        position: usize,
    },
    /// A `}` that closes nothing.
    #[error("unmatched \"}}\" at character {position}; write \"}}}}\" for a literal brace")]
    Unmatched {
        /// Character position of the `}`, from 1.
        position: usize,
    },
    /// `{}`.
    #[error("empty reference \"{{}}\" at character {position}; name a record field, e.g. \"{{ticket_number}}\"")]
    Empty {
        /// Character position of the `{`, from 1.
        position: usize,
    },
    /// `{…}` whose content is not a valid field path.
    #[error("malformed reference \"{{{reference}}}\" at character {position}: {problem}")]
    InvalidPath {
        /// Character position of the `{`, from 1.
        position: usize,
        /// The text between the braces.
        reference: String,
        /// What is wrong with it.
        problem: PathError,
    },
}

impl Pattern {
    /// Parses text with `{path}` references and `{{` / `}}` escapes.
    pub fn parse(text: &str) -> Result<Self, ReferenceError> {
        let chars: Vec<char> = text.chars().collect();
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut i = 0;
        while i < chars.len() {
            let next = chars.get(i + 1).copied();
            match chars[i] {
                '{' if next == Some('{') => {
                    literal.push('{');
                    i += 2;
                }
                '{' => {
                    let position = i + 1;
                    let Some(length) = chars[i + 1..].iter().position(|&c| c == '}') else {
                        return Err(ReferenceError::Unclosed { position });
                    };
                    let inner: String = chars[i + 1..i + 1 + length].iter().collect();
                    if inner.is_empty() {
                        return Err(ReferenceError::Empty { position });
                    }
                    let path = FieldPath::parse(&inner).map_err(|problem| {
                        ReferenceError::InvalidPath {
                            position,
                            reference: inner.clone(),
                            problem,
                        }
                    })?;
                    if !literal.is_empty() {
                        segments.push(Segment::Literal(std::mem::take(&mut literal)));
                    }
                    segments.push(Segment::Reference(path));
                    i += length + 2;
                }
                '}' if next == Some('}') => {
                    literal.push('}');
                    i += 2;
                }
                '}' => return Err(ReferenceError::Unmatched { position: i + 1 }),
                c => {
                    literal.push(c);
                    i += 1;
                }
            }
        }
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Pattern { segments })
    }

    /// The pieces in order. An empty text has none.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// Whether the value depends on the record.
    pub fn has_references(&self) -> bool {
        self.references().next().is_some()
    }

    /// The referenced fields, in order of appearance (repeats included).
    pub fn references(&self) -> impl Iterator<Item = &FieldPath> {
        self.segments.iter().filter_map(|segment| match segment {
            Segment::Reference(path) => Some(path),
            Segment::Literal(_) => None,
        })
    }

    /// The text when there are no references (escapes undone), `None` otherwise.
    pub fn as_literal(&self) -> Option<String> {
        if self.has_references() {
            return None;
        }
        Some(
            self.segments
                .iter()
                .fold(String::new(), |mut text, segment| {
                    if let Segment::Literal(part) = segment {
                        text.push_str(part);
                    }
                    text
                }),
        )
    }

    /// Substitutes each reference with the record's value as text.
    pub fn resolve(&self, record: &Value) -> Result<String, ResolveError> {
        self.resolve_with(record, |value, out| out.push_str(value))
    }

    /// Like [`Pattern::resolve`], but each substituted value goes through `encode` (which appends to the output),
    /// e.g. [`super::url_guard::push_path_segment`] so a record value cannot change a URL's structure. Literal
    /// text is not encoded: it was written and checked with the configuration.
    pub fn resolve_with(
        &self,
        record: &Value,
        mut encode: impl FnMut(&str, &mut String),
    ) -> Result<String, ResolveError> {
        let mut out = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => out.push_str(text),
                Segment::Reference(path) => {
                    let text = scalar_text(path, record)?;
                    encode(&text, &mut out);
                }
            }
        }
        Ok(out)
    }
}

impl FromStr for Pattern {
    type Err = ReferenceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Pattern::parse(text)
    }
}

/// Why a referenced field has no usable value in a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueProblem {
    /// The field (or an object on the way to it) is absent.
    Missing,
    /// The field is JSON `null`.
    Null,
    /// The field is a string that is empty or only whitespace.
    Empty,
    /// The field is an object, which has no single text form.
    Object,
    /// The field is an array, which has no single text form.
    Array,
}

impl fmt::Display for ValueProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ValueProblem::Missing => "is missing",
            ValueProblem::Null => "is null",
            ValueProblem::Empty => "is empty",
            ValueProblem::Object => "is an object; a reference needs text, a number or a boolean",
            ValueProblem::Array => "is an array; a reference needs text, a number or a boolean",
        })
    }
}

/// A reference that a record cannot fill.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("record field \"{field}\" {problem}")]
pub struct ResolveError {
    /// The referenced field.
    pub field: FieldPath,
    /// What is wrong with its value.
    pub problem: ValueProblem,
}

impl ResolveError {
    /// The same error as a per-record violation on `record.<field>`.
    pub fn to_violation(&self) -> FieldViolation {
        FieldViolation::new(self.field.record_field(), self.to_string())
    }
}

fn scalar_text(path: &FieldPath, record: &Value) -> Result<String, ResolveError> {
    let fail = |problem| ResolveError {
        field: path.clone(),
        problem,
    };
    match path.lookup(record) {
        None => Err(fail(ValueProblem::Missing)),
        Some(Value::Null) => Err(fail(ValueProblem::Null)),
        Some(Value::String(text)) if text.trim().is_empty() => Err(fail(ValueProblem::Empty)),
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Number(number)) => Ok(number.to_string()),
        Some(Value::Bool(flag)) => Ok(flag.to_string()),
        Some(Value::Object(_)) => Err(fail(ValueProblem::Object)),
        Some(Value::Array(_)) => Err(fail(ValueProblem::Array)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn path(text: &str) -> FieldPath {
        FieldPath::parse(text).unwrap()
    }

    fn lit(text: &str) -> Segment {
        Segment::Literal(text.to_string())
    }

    fn reference(text: &str) -> Segment {
        Segment::Reference(path(text))
    }

    #[test]
    fn field_paths() {
        let valid = [
            ("a", vec!["a"]),
            ("ticket_number", vec!["ticket_number"]),
            ("a.b.c", vec!["a", "b", "c"]),
            ("x-1.Y_2.0", vec!["x-1", "Y_2", "0"]),
        ];
        for (text, expected) in valid {
            assert_eq!(path(text).segments(), expected.as_slice(), "{text}");
            assert_eq!(path(text).to_string(), text);
        }
        let invalid = [
            ("", PathError::Empty),
            (
                "a..b",
                PathError::EmptySegment {
                    path: "a..b".into(),
                },
            ),
            (".a", PathError::EmptySegment { path: ".a".into() }),
            ("a.", PathError::EmptySegment { path: "a.".into() }),
            (
                "a b",
                PathError::InvalidCharacter {
                    path: "a b".into(),
                    character: ' ',
                },
            ),
            (
                " a",
                PathError::InvalidCharacter {
                    path: " a".into(),
                    character: ' ',
                },
            ),
            (
                "a/b",
                PathError::InvalidCharacter {
                    path: "a/b".into(),
                    character: '/',
                },
            ),
            (
                "é",
                PathError::InvalidCharacter {
                    path: "é".into(),
                    character: 'é',
                },
            ),
        ];
        for (text, expected) in invalid {
            assert_eq!(FieldPath::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn parses_literals_references_and_escapes() {
        let cases: Vec<(&str, Vec<Segment>)> = vec![
            ("", vec![]),
            ("1234", vec![lit("1234")]),
            ("{ticket_number}", vec![reference("ticket_number")]),
            ("{ticket.number}", vec![reference("ticket.number")]),
            (
                "tickets/{n}/state",
                vec![lit("tickets/"), reference("n"), lit("/state")],
            ),
            ("{a}{b}", vec![reference("a"), reference("b")]),
            ("{{literal}}", vec![lit("{literal}")]),
            ("{{{a}}}", vec![lit("{"), reference("a"), lit("}")]),
            ("x{{", vec![lit("x{")]),
        ];
        for (text, expected) in cases {
            assert_eq!(
                Pattern::parse(text).unwrap().segments(),
                expected.as_slice(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn refuses_malformed_references() {
        let cases = [
            ("{", ReferenceError::Unclosed { position: 1 }),
            ("ab{cd", ReferenceError::Unclosed { position: 3 }),
            ("}", ReferenceError::Unmatched { position: 1 }),
            ("a}b", ReferenceError::Unmatched { position: 2 }),
            ("{{a}", ReferenceError::Unmatched { position: 4 }),
            ("x{}", ReferenceError::Empty { position: 2 }),
            (
                "{a b}",
                ReferenceError::InvalidPath {
                    position: 1,
                    reference: "a b".into(),
                    problem: PathError::InvalidCharacter {
                        path: "a b".into(),
                        character: ' ',
                    },
                },
            ),
            (
                "{a{b}",
                ReferenceError::InvalidPath {
                    position: 1,
                    reference: "a{b".into(),
                    problem: PathError::InvalidCharacter {
                        path: "a{b".into(),
                        character: '{',
                    },
                },
            ),
            (
                "é{a..b}",
                ReferenceError::InvalidPath {
                    position: 2,
                    reference: "a..b".into(),
                    problem: PathError::EmptySegment {
                        path: "a..b".into(),
                    },
                },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(Pattern::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn error_messages_name_the_problem() {
        let message = |text: &str| Pattern::parse(text).unwrap_err().to_string();
        assert_eq!(
            message("ab{cd"),
            "unclosed \"{\" at character 3; write \"{{\" for a literal brace"
        );
        assert_eq!(
            message("a}"),
            "unmatched \"}\" at character 2; write \"}}\" for a literal brace"
        );
        assert_eq!(
            message("{}"),
            "empty reference \"{}\" at character 1; name a record field, e.g. \"{ticket_number}\""
        );
        assert_eq!(
            message("{a..b}"),
            "malformed reference \"{a..b}\" at character 1: field path \"a..b\" has an empty segment; \
             separate names with a single \".\""
        );
    }

    #[test]
    fn literal_or_not() {
        let cases = [
            ("1234", Some("1234")),
            ("", Some("")),
            ("{{x}}", Some("{x}")),
            ("{x}", None),
            ("a{x}b", None),
        ];
        for (text, expected) in cases {
            let pattern = Pattern::parse(text).unwrap();
            assert_eq!(pattern.as_literal().as_deref(), expected, "{text:?}");
            assert_eq!(pattern.has_references(), expected.is_none(), "{text:?}");
        }
        let pattern = Pattern::parse("{a}/{b.c}/{a}").unwrap();
        let names: Vec<String> = pattern.references().map(ToString::to_string).collect();
        assert_eq!(names, ["a", "b.c", "a"]);
    }

    #[test]
    fn resolves_scalars_as_text() {
        let record = json!({
            "n": 1234, "f": 1.5, "neg": -3, "yes": true, "no": false, "s": "abc",
            "ticket": {"number": "0759213294", "deep": {"er": 7}},
        });
        let cases = [
            ("{n}", "1234"),
            ("{f}", "1.5"),
            ("{neg}", "-3"),
            ("{yes}/{no}", "true/false"),
            ("{s}", "abc"),
            ("{ticket.number}", "0759213294"),
            ("x-{ticket.deep.er}-{{y}}", "x-7-{y}"),
            ("plain", "plain"),
        ];
        for (text, expected) in cases {
            let resolved = Pattern::parse(text).unwrap().resolve(&record).unwrap();
            assert_eq!(resolved, expected, "{text:?}");
        }
    }

    #[test]
    fn refuses_unusable_values_naming_the_field() {
        let record = json!({
            "null": null, "empty": "", "blank": "  ", "obj": {"a": 1}, "arr": [1], "s": "text",
        });
        let cases = [
            ("{absent}", "absent", ValueProblem::Missing),
            ("{obj.absent}", "obj.absent", ValueProblem::Missing),
            ("{s.below}", "s.below", ValueProblem::Missing),
            ("{arr.0}", "arr.0", ValueProblem::Missing),
            ("{null}", "null", ValueProblem::Null),
            ("{empty}", "empty", ValueProblem::Empty),
            ("{blank}", "blank", ValueProblem::Empty),
            ("{obj}", "obj", ValueProblem::Object),
            ("x/{arr}", "arr", ValueProblem::Array),
        ];
        for (text, field, problem) in cases {
            let error = Pattern::parse(text).unwrap().resolve(&record).unwrap_err();
            assert_eq!(
                error,
                ResolveError {
                    field: path(field),
                    problem
                },
                "{text:?}"
            );
        }
        let error = Pattern::parse("{obj.absent}")
            .unwrap()
            .resolve(&record)
            .unwrap_err();
        assert_eq!(error.to_string(), "record field \"obj.absent\" is missing");
        let violation = error.to_violation();
        assert_eq!(violation.field, "record.obj.absent");
    }

    #[test]
    fn resolve_with_encodes_only_substituted_values() {
        let record = json!({"v": "a/b"});
        let pattern = Pattern::parse("x/{v}").unwrap();
        let resolved = pattern
            .resolve_with(&record, |value, out| {
                out.push_str(&value.replace('/', "%2F"))
            })
            .unwrap();
        assert_eq!(resolved, "x/a%2Fb");
    }
}
