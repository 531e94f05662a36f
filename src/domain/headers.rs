//! Extra request headers of a manual endpoint: the `h1:v1,h2:v2` text form and the rules a header must follow.
//!
//! Headers the credential or the HTTP client own are refused, so a destination can neither replace the Groove
//! key nor desynchronise the request framing. Messages never quote a header's value: it may well be a secret.

use thiserror::Error;

/// Why the `h1:v1,h2:v2` text cannot be parsed. Positions count pairs from 1.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HeaderListError {
    /// A pair without `:` between name and value.
    #[error("header {position} has no \":\" between name and value")]
    MissingColon {
        /// Which pair, from 1.
        position: usize,
    },
    /// A pair like `:value`.
    #[error("header {position} has an empty name")]
    EmptyName {
        /// Which pair, from 1.
        position: usize,
    },
}

/// Parses `h1:v1,h2:v2`: pairs separated by `,`, name and value split at the first `:` (so a value may contain
/// `:`), both trimmed. Empty text or empty items (`a:1,,b:2`, a trailing comma) are skipped. A value cannot
/// contain `,`: that is the separator. The result still needs [`check_headers`].
pub fn parse_header_list(text: &str) -> Result<Vec<(String, String)>, HeaderListError> {
    let mut headers = Vec::new();
    for (index, item) in text.split(',').enumerate() {
        let position = index + 1;
        if item.trim().is_empty() {
            continue;
        }
        let (name, value) = item
            .split_once(':')
            .ok_or(HeaderListError::MissingColon { position })?;
        let name = name.trim();
        if name.is_empty() {
            return Err(HeaderListError::EmptyName { position });
        }
        headers.push((name.to_string(), value.trim().to_string()));
    }
    Ok(headers)
}

/// Why one header is refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum HeaderError {
    /// An empty name.
    #[error("header name is empty")]
    EmptyName,
    /// A name that is not an HTTP token (RFC 9110 §5.6.2).
    #[error(
        "header name {name:?} is not a valid http token; use letters, digits and !#$%&'*+-.^_`|~"
    )]
    InvalidName {
        /// The name as given.
        name: String,
    },
    /// CR or LF in the value would start a new header (header injection).
    #[error("value of header \"{name}\" contains a line break")]
    LineBreak {
        /// The header's name.
        name: String,
    },
    /// Any other control character, or a non-ASCII one the HTTP client cannot send.
    #[error(
        "value of header \"{name}\" may contain only visible ascii characters, spaces and tabs"
    )]
    InvalidValue {
        /// The header's name.
        name: String,
    },
    /// `Authorization` and friends: the credential owns them.
    #[error("header \"{name}\" is not allowed: the destination's credential sets authorization")]
    Credential {
        /// The header's name.
        name: String,
    },
    /// Framing and connection headers, which the HTTP client sets (and HTTP/2 forbids).
    #[error("header \"{name}\" is not allowed: the http client sets it")]
    Transport {
        /// The header's name.
        name: String,
    },
    /// A `Content-Type` other than JSON, while the body is JSON.
    #[error("header \"{name}\" must be a json media type such as application/json: the content format is json")]
    ContentType {
        /// The header's name as given.
        name: String,
    },
}

const CREDENTIAL_HEADERS: &[&str] = &["authorization", "proxy-authorization"];

/// Connection-level headers: hyper refuses most of them on HTTP/2, and on HTTP/1.1 a wrong `Content-Length` or
/// `Transfer-Encoding` would corrupt the framing.
const TRANSPORT_HEADERS: &[&str] = &[
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "te",
    "trailer",
];

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c)
}

/// `application/json`, or any `application/…+json`, with optional parameters (`; charset=utf-8`).
fn is_json_media_type(value: &str) -> bool {
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json") && subtype.len() > "+json".len())
}

/// Checks one header.
pub fn check_header(name: &str, value: &str) -> Result<(), HeaderError> {
    if name.is_empty() {
        return Err(HeaderError::EmptyName);
    }
    if !name.chars().all(is_token_char) {
        return Err(HeaderError::InvalidName {
            name: name.to_string(),
        });
    }
    let lower = name.to_ascii_lowercase();
    if CREDENTIAL_HEADERS.contains(&lower.as_str()) {
        return Err(HeaderError::Credential {
            name: name.to_string(),
        });
    }
    if TRANSPORT_HEADERS.contains(&lower.as_str()) {
        return Err(HeaderError::Transport {
            name: name.to_string(),
        });
    }
    if value.contains(['\r', '\n']) {
        return Err(HeaderError::LineBreak {
            name: name.to_string(),
        });
    }
    if !value.chars().all(|c| c == '\t' || (' '..='~').contains(&c)) {
        return Err(HeaderError::InvalidValue {
            name: name.to_string(),
        });
    }
    if lower == "content-type" && !is_json_media_type(value) {
        return Err(HeaderError::ContentType {
            name: name.to_string(),
        });
    }
    Ok(())
}

/// Checks every header; returns each refused one with its index (from 0, as in `headers[2]`).
pub fn check_headers(headers: &[(String, String)]) -> Vec<(usize, HeaderError)> {
    headers
        .iter()
        .enumerate()
        .filter_map(|(index, (name, value))| check_header(name, value).err().map(|e| (index, e)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_header_lists() {
        let cases: Vec<(&str, Vec<(String, String)>)> = vec![
            ("", vec![]),
            ("   ", vec![]),
            ("X-A:1", pairs(&[("X-A", "1")])),
            (
                " X-A : 1 , X-B:two words ",
                pairs(&[("X-A", "1"), ("X-B", "two words")]),
            ),
            ("X-Time:12:30:00", pairs(&[("X-Time", "12:30:00")])),
            ("X-Empty:", pairs(&[("X-Empty", "")])),
            ("X-A:1,,X-B:2,", pairs(&[("X-A", "1"), ("X-B", "2")])),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_header_list(text).unwrap(), expected, "{text:?}");
        }
    }

    #[test]
    fn parse_errors_name_the_position() {
        let cases = [
            ("X-A", HeaderListError::MissingColon { position: 1 }),
            ("X-A:1,X-B", HeaderListError::MissingColon { position: 2 }),
            (":v", HeaderListError::EmptyName { position: 1 }),
            ("X-A:1, :v", HeaderListError::EmptyName { position: 2 }),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_header_list(text), Err(expected.clone()), "{text:?}");
        }
        assert_eq!(
            HeaderListError::MissingColon { position: 2 }.to_string(),
            "header 2 has no \":\" between name and value"
        );
    }

    #[test]
    fn accepts_ordinary_headers() {
        for (name, value) in [
            ("X-Request-Source", "warehouse"),
            ("Accept", "application/json"),
            ("X-Tab", "a\tb"),
            ("X-Empty", ""),
            ("Content-Type", "application/json"),
            ("content-type", "Application/JSON; charset=utf-8"),
            ("Content-Type", "application/vnd.groove+json"),
        ] {
            assert_eq!(check_header(name, value), Ok(()), "{name}: {value}");
        }
    }

    type Expectation = fn(&HeaderError) -> bool;

    #[test]
    fn refuses_unsafe_headers() {
        let cases: Vec<(&str, &str, Expectation)> = vec![
            ("", "v", |e| *e == HeaderError::EmptyName),
            ("X A", "v", |e| matches!(e, HeaderError::InvalidName { .. })),
            ("X:A", "v", |e| matches!(e, HeaderError::InvalidName { .. })),
            ("Über", "v", |e| {
                matches!(e, HeaderError::InvalidName { .. })
            }),
            ("X-A", "a\r\nAuthorization: x", |e| {
                matches!(e, HeaderError::LineBreak { .. })
            }),
            ("X-A", "a\nb", |e| {
                matches!(e, HeaderError::LineBreak { .. })
            }),
            ("X-A", "a\u{0}b", |e| {
                matches!(e, HeaderError::InvalidValue { .. })
            }),
            ("X-A", "José", |e| {
                matches!(e, HeaderError::InvalidValue { .. })
            }),
            ("Authorization", "Bearer x", |e| {
                matches!(e, HeaderError::Credential { .. })
            }),
            ("AUTHORIZATION", "x", |e| {
                matches!(e, HeaderError::Credential { .. })
            }),
            ("proxy-authorization", "x", |e| {
                matches!(e, HeaderError::Credential { .. })
            }),
            ("Content-Length", "5", |e| {
                matches!(e, HeaderError::Transport { .. })
            }),
            ("host", "evil.example", |e| {
                matches!(e, HeaderError::Transport { .. })
            }),
            ("Transfer-Encoding", "chunked", |e| {
                matches!(e, HeaderError::Transport { .. })
            }),
            ("Connection", "close", |e| {
                matches!(e, HeaderError::Transport { .. })
            }),
            ("Content-Type", "text/plain", |e| {
                matches!(e, HeaderError::ContentType { .. })
            }),
            ("Content-Type", "application/x-www-form-urlencoded", |e| {
                matches!(e, HeaderError::ContentType { .. })
            }),
            ("Content-Type", "application/+json", |e| {
                matches!(e, HeaderError::ContentType { .. })
            }),
        ];
        for (name, value, expected) in cases {
            let error = check_header(name, value).unwrap_err();
            assert!(expected(&error), "{name:?}: {value:?} gave {error:?}");
        }
    }

    #[test]
    fn messages_never_show_values() {
        let error = check_header("X-Secret", "hunter2\r\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "value of header \"X-Secret\" contains a line break"
        );
        let error = check_header("Authorization", "Bearer hunter2").unwrap_err();
        assert!(!error.to_string().contains("hunter2"));
    }

    #[test]
    fn check_headers_reports_indexes() {
        let headers = pairs(&[
            ("X-A", "1"),
            ("Authorization", "x"),
            ("X-B", "2"),
            ("Host", "h"),
        ]);
        let indexes: Vec<usize> = check_headers(&headers)
            .into_iter()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(indexes, [1, 3]);
    }
}
