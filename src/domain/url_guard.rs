//! The API key must never leave Groove: every URL we call is the configured Groove base URL plus a relative
//! reference that cannot climb out of it.
//!
//! Two checks, because references are filled in per record:
//! - [`check_pattern`] when a destination is configured: the pattern's own text is safe;
//! - [`resolve`] (or [`render`]) on every rendered URL, right before the call: whatever the record held, the
//!   final URL is under the base URL. Substituted values should go through [`push_path_segment`], which
//!   percent-encodes everything but unreserved characters, so `a/b` or `https://x` stays one harmless segment.
//!
//! The rules are stricter than RFC 3986 needs: syntax that a browser, a proxy or Groove's server might read
//! differently (backslashes, `@`, dot segments in any encoding, control characters) is refused outright rather
//! than reasoned about, and the joined result is checked once more against the base. Every check runs on the
//! text as written, before a parser can drop tabs and line breaks or decode anything. A full URL (a request
//! edited by hand) goes through the same rules with [`resolve_absolute`].
//!
//! A URL longer than [`MAX_URL_BYTES`] is refused too: it could not reliably be sent at all.

use serde_json::Value;
use thiserror::Error;
use url::Url;

use super::reference::{Pattern, ReferenceError, ResolveError, Segment};

/// Longest URL sent, in bytes, the base URL included. RFC 9110 §4.1 asks senders and recipients to support URIs
/// of at least 8000 octets, and servers and proxies commonly refuse a longer request line with 414 (nginx and
/// Apache read request lines into 8 KiB buffers); see docs/groove-api.md §4. A configured URL over it is refused
/// when saved, a URL rendered over it fails its record alone, before any call.
pub const MAX_URL_BYTES: usize = 8000;

/// Why a relative URL (or the base URL itself) is refused.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum UrlGuardError {
    /// The configured base URL is unusable; a deployment error, not a user's.
    #[error("groove base url \"{url}\" {reason}")]
    InvalidBase {
        /// The base URL as configured.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nothing to call.
    #[error("url is empty")]
    Empty,
    /// A scheme (`https:`, `mailto:`, `localhost:8080`...) would replace the Groove base URL.
    #[error("url must be relative to the groove base url, not absolute")]
    Absolute,
    /// `//host/...` names another host.
    #[error("url must not start with \"//\": that names another host")]
    SchemeRelative,
    /// `/path` would replace the base URL's path (e.g. drop `/v1`).
    #[error("url must be relative to the groove base url; remove the leading \"/\"")]
    RootRelative,
    /// `.` or `..` as a path segment, in any percent-encoding.
    #[error("url must not contain \".\" or \"..\" path segments (found \"{segment}\")")]
    DotSegment {
        /// The offending segment as written.
        segment: String,
    },
    /// A character that some parser reads as structure (or that has no place in a URL).
    #[error("url must not contain {character:?}; {hint}")]
    ForbiddenCharacter {
        /// The first such character.
        character: char,
        /// What to write instead.
        hint: &'static str,
    },
    /// `%` not followed by two hexadecimal digits.
    #[error("url has a malformed percent escape at character {position}; write \"%25\" for a literal \"%\"")]
    MalformedEscape {
        /// Character position of the `%`, from 1.
        position: usize,
    },
    /// The URL parser refused the joined URL.
    #[error("url cannot be parsed: {reason}")]
    Unparsable {
        /// The parser's message.
        reason: String,
    },
    /// Longer than [`MAX_URL_BYTES`] with the base URL.
    #[error(
        "url is {length} bytes long with the groove base url; at most {MAX_URL_BYTES} can be sent"
    )]
    TooLong {
        /// Its length in bytes, the base URL included (at least; counting stops once it is too long).
        length: usize,
    },
    /// A full URL that does not start with the base URL, or names only the base URL itself.
    #[error("url must start with the groove base url \"{base}\" and name a path under it")]
    NotUnderBase {
        /// The normalised base URL.
        base: String,
    },
    /// The joined URL is not under the base URL; the last line of defence.
    #[error("url resolves to \"{resolved}\", outside the groove base url \"{base}\"")]
    OutsideBase {
        /// The joined URL.
        resolved: String,
        /// The normalised base URL.
        base: String,
    },
    /// The pattern's `{…}` references are malformed.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
}

/// Why a URL could not be rendered for one record.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RenderUrlError {
    /// A referenced record field has no usable value.
    #[error(transparent)]
    Field(#[from] ResolveError),
    /// The rendered URL would leave the base URL.
    #[error(transparent)]
    Guard(#[from] UrlGuardError),
}

/// The base URL ready for joining: http(s), a host, no credentials, query or fragment, and a path ending in `/`
/// (without it, joining `tickets` onto `…/v1` would replace `v1`).
pub fn normalised_base(base: &Url) -> Result<Url, UrlGuardError> {
    let invalid = |reason| UrlGuardError::InvalidBase {
        url: base.to_string(),
        reason,
    };
    if !matches!(base.scheme(), "http" | "https") {
        return Err(invalid("must be an http or https url"));
    }
    if base.host().is_none() {
        return Err(invalid("has no host"));
    }
    if !base.username().is_empty() || base.password().is_some() {
        return Err(invalid("must not contain credentials"));
    }
    if base.query().is_some() || base.fragment().is_some() {
        return Err(invalid("must not have a query or fragment"));
    }
    let mut base = base.clone();
    if !base.path().ends_with('/') {
        let path = format!("{}/", base.path());
        base.set_path(&path);
    }
    Ok(base)
}

/// Checks a configured URL pattern (relative, may contain `{field}` references) and returns it parsed.
///
/// References are checked as if each were filled with a plain value; what a record actually holds is checked
/// again by [`resolve`] at render time.
pub fn check_pattern(base: &Url, pattern: &str) -> Result<Pattern, UrlGuardError> {
    let parsed = Pattern::parse(pattern)?;
    // A record value is encoded into unreserved characters and `%XX` escapes, so a plain "x" stands for every
    // value except the dot segments that `resolve` refuses at render time anyway.
    let sample: String = parsed
        .segments()
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => text.as_str(),
            Segment::Reference(_) => "x",
        })
        .collect();
    resolve(base, &sample)?;
    Ok(parsed)
}

/// Joins a rendered relative URL onto the base URL, refusing anything that could leave it. Run this on every
/// URL right before calling it.
pub fn resolve(base: &Url, relative: &str) -> Result<Url, UrlGuardError> {
    let base = normalised_base(base)?;
    // Joining never shortens a relative reference without dot segments, so this refuses only what the joined
    // URL would exceed, and spares checking and parsing a huge rendered value.
    let at_least = base.as_str().len().saturating_add(relative.len());
    if at_least > MAX_URL_BYTES {
        return Err(UrlGuardError::TooLong { length: at_least });
    }
    check_relative_syntax(relative)?;
    let joined = base
        .join(relative)
        .map_err(|error| UrlGuardError::Unparsable {
            reason: error.to_string(),
        })?;
    let same_origin = joined.scheme() == base.scheme()
        && joined.host() == base.host()
        && joined.port_or_known_default() == base.port_or_known_default()
        && joined.username().is_empty()
        && joined.password().is_none();
    if !same_origin || !joined.path().starts_with(base.path()) {
        return Err(UrlGuardError::OutsideBase {
            resolved: joined.to_string(),
            base: base.to_string(),
        });
    }
    // The parser percent-encodes what it must (a space, `é`), which can make the URL longer than its text.
    if joined.as_str().len() > MAX_URL_BYTES {
        return Err(UrlGuardError::TooLong {
            length: joined.as_str().len(),
        });
    }
    Ok(joined)
}

/// Checks a full URL written out (a request edited by hand) by the same rules as [`resolve`]: on the text as
/// given, it must start with the base URL exactly as [`normalised_base`] writes it, and the rest must pass as a
/// relative URL under it.
pub fn resolve_absolute(base: &Url, text: &str) -> Result<Url, UrlGuardError> {
    let base = normalised_base(base)?;
    // Before comparing with the base, so that a tab or line break is named as such wherever it is.
    check_characters(text)?;
    match text.strip_prefix(base.as_str()) {
        Some(relative) if !relative.is_empty() => resolve(&base, relative),
        _ => Err(UrlGuardError::NotUnderBase {
            base: base.to_string(),
        }),
    }
}

/// Renders a parsed URL pattern for one record (values encoded as path segments) and joins it safely.
pub fn render(base: &Url, pattern: &Pattern, record: &Value) -> Result<Url, RenderUrlError> {
    let relative = pattern.resolve_with(record, push_path_segment)?;
    Ok(resolve(base, &relative)?)
}

/// Appends `value` percent-encoded as one path segment: only RFC 3986 unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) stay as they are, so a value can never add `/`, `?`, `#`, `@` or a scheme.
pub fn push_path_segment(value: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
    }
}

/// `value` percent-encoded as one path segment; see [`push_path_segment`].
pub fn encode_path_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    push_path_segment(value, &mut out);
    out
}

/// Whether a literal value, encoded as one path segment, is still a harmless segment (not `.`/`..` in some
/// encoding). For checking literal path parameters at configuration time.
pub fn is_safe_segment_value(value: &str) -> bool {
    !is_dot_segment(&encode_path_segment(value))
}

fn check_relative_syntax(relative: &str) -> Result<(), UrlGuardError> {
    if relative.is_empty() {
        return Err(UrlGuardError::Empty);
    }
    check_characters(relative)?;
    if relative.starts_with("//") {
        return Err(UrlGuardError::SchemeRelative);
    }
    if relative.starts_with('/') {
        return Err(UrlGuardError::RootRelative);
    }
    let path = relative.split('?').next().unwrap_or_default();
    let first_segment = path.split('/').next().unwrap_or_default();
    if first_segment.contains(':') {
        return Err(UrlGuardError::Absolute);
    }
    check_percent_escapes(relative)?;
    if let Some(segment) = path.split('/').find(|segment| is_dot_segment(segment)) {
        return Err(UrlGuardError::DotSegment {
            segment: segment.to_string(),
        });
    }
    Ok(())
}

/// The WHATWG parser silently drops tabs and newlines and reads `\` as `/`, so `/\t/evil` or `\\evil` would
/// become `//evil`; refusing them here means our reading and the parser's cannot differ.
fn check_characters(text: &str) -> Result<(), UrlGuardError> {
    match text.chars().find_map(|c| Some((c, forbidden_hint(c)?))) {
        Some((character, hint)) => Err(UrlGuardError::ForbiddenCharacter { character, hint }),
        None => Ok(()),
    }
}

fn forbidden_hint(c: char) -> Option<&'static str> {
    match c {
        '\\' => Some("use \"/\" between path segments, or \"%5C\" for a literal backslash"),
        '@' => Some("write \"%40\" for a literal \"@\""),
        '#' => Some("fragments are never sent; write \"%23\" for a literal \"#\""),
        c if c.is_control() || c.is_whitespace() => {
            Some("percent-encode it, e.g. \"%20\" for a space")
        }
        _ => None,
    }
}

fn check_percent_escapes(relative: &str) -> Result<(), UrlGuardError> {
    let chars: Vec<char> = relative.chars().collect();
    for (index, &c) in chars.iter().enumerate() {
        let is_hex = |offset: usize| {
            chars
                .get(index + offset)
                .is_some_and(char::is_ascii_hexdigit)
        };
        if c == '%' && !(is_hex(1) && is_hex(2)) {
            return Err(UrlGuardError::MalformedEscape {
                position: index + 1,
            });
        }
    }
    Ok(())
}

/// A segment that is `.` or `..` once decoded (repeatedly, against double encoding), or that hides such a
/// segment behind an encoded `/` or `\` which a lenient server might decode before routing.
/// More than four levels of encoding count as a dot segment: no honest value looks like that.
fn is_dot_segment(segment: &str) -> bool {
    let mut text = segment.to_string();
    for _ in 0..4 {
        if text
            .split(['/', '\\'])
            .any(|piece| piece == "." || piece == "..")
        {
            return true;
        }
        let decoded = percent_decode(&text);
        if decoded == text {
            return false;
        }
        text = decoded;
    }
    true
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|&b| char::from(b).to_digit(16));
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(high), Some(low)) => {
                // Two hex digits make at most 0xFF, so the conversion cannot fail.
                out.push(u8::try_from(high * 16 + low).unwrap_or(b'%'));
                i += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn base() -> Url {
        Url::parse("https://api.groovehq.com/v1").unwrap()
    }

    #[test]
    fn base_is_normalised_with_or_without_trailing_slash() {
        for text in [
            "https://api.groovehq.com/v1",
            "https://api.groovehq.com/v1/",
        ] {
            let base = normalised_base(&Url::parse(text).unwrap()).unwrap();
            assert_eq!(base.as_str(), "https://api.groovehq.com/v1/");
        }
        let local = Url::parse("http://127.0.0.1:40123/v1").unwrap();
        assert_eq!(
            resolve(&local, "tickets/12/state").unwrap().as_str(),
            "http://127.0.0.1:40123/v1/tickets/12/state"
        );
        for bad in [
            "ftp://api.groovehq.com/v1",
            "https://user:pw@api.groovehq.com/v1",
            "https://api.groovehq.com/v1?x=1",
            "https://api.groovehq.com/v1#f",
        ] {
            let error = normalised_base(&Url::parse(bad).unwrap()).unwrap_err();
            assert!(matches!(error, UrlGuardError::InvalidBase { .. }), "{bad}");
        }
    }

    #[test]
    fn accepts_relative_urls_under_the_base() {
        let cases = [
            ("tickets", "https://api.groovehq.com/v1/tickets"),
            (
                "tickets/1234/state",
                "https://api.groovehq.com/v1/tickets/1234/state",
            ),
            (
                "tickets?state=opened&page=2",
                "https://api.groovehq.com/v1/tickets?state=opened&page=2",
            ),
            ("?page=2", "https://api.groovehq.com/v1/?page=2"),
            (
                "kb/0759213294/articles",
                "https://api.groovehq.com/v1/kb/0759213294/articles",
            ),
            (
                "customers/a%40b.example",
                "https://api.groovehq.com/v1/customers/a%40b.example",
            ),
            ("x/..a/a..", "https://api.groovehq.com/v1/x/..a/a.."),
            ("x/%2Fy", "https://api.groovehq.com/v1/x/%2Fy"),
        ];
        for (relative, expected) in cases {
            assert_eq!(
                resolve(&base(), relative).unwrap().as_str(),
                expected,
                "{relative}"
            );
        }
    }

    type Expectation = fn(&UrlGuardError) -> bool;

    #[test]
    fn refuses_the_attack_list() {
        use UrlGuardError as E;
        let cases: Vec<(&str, Expectation)> = vec![
            ("", |e| *e == E::Empty),
            ("https://evil.example/v1/tickets", |e| *e == E::Absolute),
            ("http://api.groovehq.com/v1/tickets", |e| *e == E::Absolute),
            ("HTTPS://evil.example", |e| *e == E::Absolute),
            ("javascript:alert(1)", |e| *e == E::Absolute),
            ("mailto:x", |e| *e == E::Absolute),
            ("evil.example:443/v1", |e| *e == E::Absolute),
            ("file:///etc/passwd", |e| *e == E::Absolute),
            ("//evil.example/v1", |e| *e == E::SchemeRelative),
            ("///evil.example", |e| *e == E::SchemeRelative),
            ("/tickets", |e| *e == E::RootRelative),
            ("/v1/tickets", |e| *e == E::RootRelative),
            ("..", |e| matches!(e, E::DotSegment { .. })),
            ("../tickets", |e| matches!(e, E::DotSegment { .. })),
            ("tickets/../../admin", |e| matches!(e, E::DotSegment { .. })),
            ("tickets/..", |e| matches!(e, E::DotSegment { .. })),
            ("./tickets", |e| matches!(e, E::DotSegment { .. })),
            ("%2e%2e/admin", |e| matches!(e, E::DotSegment { .. })),
            ("%2E%2E/admin", |e| matches!(e, E::DotSegment { .. })),
            (".%2e/admin", |e| matches!(e, E::DotSegment { .. })),
            ("%2e./admin", |e| matches!(e, E::DotSegment { .. })),
            ("%252e%252e/admin", |e| matches!(e, E::DotSegment { .. })),
            ("x/..%2F..%2Fadmin", |e| matches!(e, E::DotSegment { .. })),
            ("x/..%5C..%5Cadmin", |e| matches!(e, E::DotSegment { .. })),
            ("..?x=1", |e| matches!(e, E::DotSegment { .. })),
            ("user@evil.example", |e| {
                matches!(e, E::ForbiddenCharacter { character: '@', .. })
            }),
            ("tickets?x=@evil", |e| {
                matches!(e, E::ForbiddenCharacter { character: '@', .. })
            }),
            ("\\\\evil.example", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\\',
                        ..
                    }
                )
            }),
            ("tickets\\..\\..\\x", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\\',
                        ..
                    }
                )
            }),
            ("/\t/evil.example", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\t',
                        ..
                    }
                )
            }),
            ("\n//evil.example", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\n',
                        ..
                    }
                )
            }),
            (" //evil.example", |e| {
                matches!(e, E::ForbiddenCharacter { character: ' ', .. })
            }),
            ("tickets\r\nHost: evil", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\r',
                        ..
                    }
                )
            }),
            ("tickets#frag", |e| {
                matches!(e, E::ForbiddenCharacter { character: '#', .. })
            }),
            ("tickets%zz", |e| *e == E::MalformedEscape { position: 8 }),
            ("tickets%2", |e| *e == E::MalformedEscape { position: 8 }),
            // One segment that decodes to a climb: `%2f` hides the slash, in any case.
            ("%2e%2e%2fadmin", |e| matches!(e, E::DotSegment { .. })),
            ("x/%2E%2e%2Fadmin", |e| matches!(e, E::DotSegment { .. })),
            ("x/%2e%2E%5cadmin", |e| matches!(e, E::DotSegment { .. })),
            ("tickets%2f%2E%2E%2fx", |e| {
                matches!(e, E::DotSegment { .. })
            }),
            ("tickets\u{0}", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\u{0}',
                        ..
                    }
                )
            }),
            ("tickets\u{7f}x", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\u{7f}',
                        ..
                    }
                )
            }),
            ("tickets\u{b}", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\u{b}',
                        ..
                    }
                )
            }),
            ("tickets\u{85}x", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\u{85}',
                        ..
                    }
                )
            }),
            ("tickets\u{2028}x", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\u{2028}',
                        ..
                    }
                )
            }),
        ];
        for (relative, expected) in cases {
            let error = resolve(&base(), relative).unwrap_err();
            assert!(expected(&error), "{relative:?} gave {error:?}");
        }
    }

    #[test]
    fn full_urls_pass_the_same_rules_on_their_text_as_given() {
        let base = base();
        assert_eq!(
            resolve_absolute(&base, "https://api.groovehq.com/v1/tickets/12/state")
                .unwrap()
                .as_str(),
            "https://api.groovehq.com/v1/tickets/12/state"
        );
        // A base URL written without its trailing slash is the same base.
        assert!(resolve_absolute(&base, "https://api.groovehq.com/v1/tickets?page=2").is_ok());
        use UrlGuardError as E;
        let cases: Vec<(&str, Expectation)> = vec![
            ("https://api.groovehq.com/v1/tickets/%2e%2e%2fadmin", |e| {
                matches!(e, E::DotSegment { .. })
            }),
            ("https://api.groovehq.com/v1/%2E%2e%2Fadmin", |e| {
                matches!(e, E::DotSegment { .. })
            }),
            ("https://api.groovehq.com/v1/%2e%2e/admin", |e| {
                matches!(e, E::DotSegment { .. })
            }),
            ("https://api.groovehq.com/v1/../admin", |e| {
                matches!(e, E::DotSegment { .. })
            }),
            // The parser would drop these silently and send something else than what was written.
            ("https://api.groovehq.com/v1/tic\tkets", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\t',
                        ..
                    }
                )
            }),
            ("https://api.groovehq.com/v1/tickets\r\nX-Evil: 1", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\r',
                        ..
                    }
                )
            }),
            ("https://api.groove\nhq.com/v1/tickets", |e| {
                matches!(
                    e,
                    E::ForbiddenCharacter {
                        character: '\n',
                        ..
                    }
                )
            }),
            ("https://api.groovehq.com/v1//evil.example", |e| {
                *e == E::RootRelative
            }),
            ("https://api.groovehq.com/v1///evil.example", |e| {
                *e == E::SchemeRelative
            }),
            ("https://api.groovehq.com/v1/x@evil.example", |e| {
                matches!(e, E::ForbiddenCharacter { character: '@', .. })
            }),
            ("https://evil.example/v1/tickets", |e| {
                matches!(e, E::NotUnderBase { .. })
            }),
            ("https://api.groovehq.com/v2/tickets", |e| {
                matches!(e, E::NotUnderBase { .. })
            }),
            ("https://api.groovehq.com.evil.example/v1/tickets", |e| {
                matches!(e, E::NotUnderBase { .. })
            }),
            ("https://api.groovehq.com/v1/", |e| {
                matches!(e, E::NotUnderBase { .. })
            }),
            ("tickets", |e| matches!(e, E::NotUnderBase { .. })),
        ];
        for (text, expected) in cases {
            let error = resolve_absolute(&base, text).unwrap_err();
            assert!(expected(&error), "{text:?} gave {error:?}");
        }
    }

    #[test]
    fn urls_longer_than_can_be_sent_are_refused() {
        let base = base();
        let room = MAX_URL_BYTES - "https://api.groovehq.com/v1/".len();
        assert_eq!(
            resolve(&base, &"x".repeat(room)).unwrap().as_str().len(),
            MAX_URL_BYTES
        );
        assert_eq!(
            resolve(&base, &"x".repeat(room + 1)),
            Err(UrlGuardError::TooLong {
                length: MAX_URL_BYTES + 1
            })
        );
        // Short as written, long once the parser has percent-encoded it.
        let accented = "é".repeat(room / 4);
        assert!(matches!(
            resolve(&base, &accented),
            Err(UrlGuardError::TooLong { length }) if length > MAX_URL_BYTES
        ));
        assert!(matches!(
            check_pattern(&base, &format!("tickets/{}", "1".repeat(room))),
            Err(UrlGuardError::TooLong { .. })
        ));
        // A reference is checked per record, with what the record holds.
        let pattern = check_pattern(&base, "tickets/{number}").unwrap();
        assert!(render(&base, &pattern, &json!({"number": 7})).is_ok());
        assert!(matches!(
            render(&base, &pattern, &json!({"number": "7".repeat(room)})),
            Err(RenderUrlError::Guard(UrlGuardError::TooLong { .. }))
        ));
        assert!(matches!(
            resolve_absolute(
                &base,
                &format!("https://api.groovehq.com/v1/{}", "x".repeat(room + 1))
            ),
            Err(UrlGuardError::TooLong { .. })
        ));
        assert!(UrlGuardError::TooLong { length: 9000 }
            .to_string()
            .contains("at most 8000"));
    }

    #[test]
    fn patterns_are_checked_with_references_filled() {
        let ok = check_pattern(&base(), "tickets/{ticket.number}/state").unwrap();
        assert!(ok.has_references());
        assert!(check_pattern(&base(), "{path}").is_ok());
        assert!(check_pattern(&base(), "tickets?customer={email}").is_ok());
        assert!(matches!(
            check_pattern(&base(), "tickets/{n"),
            Err(UrlGuardError::Reference(ReferenceError::Unclosed { .. }))
        ));
        assert_eq!(
            check_pattern(&base(), "https://{host}/x"),
            Err(UrlGuardError::Absolute)
        );
        assert_eq!(
            check_pattern(&base(), "{scheme}://x"),
            Err(UrlGuardError::Absolute)
        );
        assert_eq!(
            check_pattern(&base(), "//{host}"),
            Err(UrlGuardError::SchemeRelative)
        );
        assert!(matches!(
            check_pattern(&base(), "../{x}"),
            Err(UrlGuardError::DotSegment { .. })
        ));
        assert!(matches!(
            check_pattern(&base(), "%{x}"),
            Err(UrlGuardError::MalformedEscape { .. })
        ));
    }

    #[test]
    fn record_values_cannot_escape_at_render_time() {
        let pattern = check_pattern(&base(), "tickets/{v}/state").unwrap();
        let render_with = |value: Value| render(&base(), &pattern, &json!({ "v": value }));
        let encoded = [
            (
                json!(1234),
                "https://api.groovehq.com/v1/tickets/1234/state",
            ),
            (
                json!("https://evil.example"),
                "https://api.groovehq.com/v1/tickets/https%3A%2F%2Fevil.example/state",
            ),
            (
                json!("//evil.example"),
                "https://api.groovehq.com/v1/tickets/%2F%2Fevil.example/state",
            ),
            (
                json!("a@evil.example"),
                "https://api.groovehq.com/v1/tickets/a%40evil.example/state",
            ),
            (
                json!("x?y#z"),
                "https://api.groovehq.com/v1/tickets/x%3Fy%23z/state",
            ),
            (
                json!("a b\r\n"),
                "https://api.groovehq.com/v1/tickets/a%20b%0D%0A/state",
            ),
            (
                json!("é"),
                "https://api.groovehq.com/v1/tickets/%C3%A9/state",
            ),
        ];
        for (value, expected) in encoded {
            assert_eq!(
                render_with(value.clone()).unwrap().as_str(),
                expected,
                "{value}"
            );
        }
        for value in ["..", ".", "../../x", "..\\..\\x", "%2e%2e"] {
            let error = render_with(json!(value)).unwrap_err();
            assert!(
                matches!(
                    error,
                    RenderUrlError::Guard(UrlGuardError::DotSegment { .. })
                ),
                "{value:?} gave {error:?}"
            );
        }
        assert!(matches!(
            render_with(Value::Null),
            Err(RenderUrlError::Field(_))
        ));
    }

    #[test]
    fn literal_segment_values() {
        assert!(is_safe_segment_value("1234"));
        assert!(is_safe_segment_value("a/b"));
        assert!(is_safe_segment_value("..."));
        assert!(!is_safe_segment_value(".."));
        assert!(!is_safe_segment_value("."));
        assert!(!is_safe_segment_value("../admin"));
        assert!(!is_safe_segment_value("%2e%2e"));
        assert_eq!(encode_path_segment("a-b_c.d~e f/g"), "a-b_c.d~e%20f%2Fg");
    }
}
