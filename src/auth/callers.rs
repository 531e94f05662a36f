//! The callers file: who may call, how each proves it (a bearer token's SHA-256, or a client certificate's
//! name), and what each may do.
//!
//! ```toml
//! [[caller]]
//! name = "crm-sync"
//! token_sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! scopes = ["send"]
//! destinations = ["crm-*"]   # optional; default: all
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use thiserror::Error;
use wildmatch::WildMatch;

use crate::auth::scope::{Scope, Scopes};

const DESTINATION_PREFIX: &str = "destinations/";

/// Why a callers file cannot be used; the previous one (if any) stays in force.
#[derive(Debug, Error)]
pub enum CallersFileError {
    #[error("cannot read the auth tokens file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("auth tokens file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("auth tokens file {path}: caller {index} ({name:?}): {problem}")]
    Caller {
        path: String,
        index: usize,
        name: String,
        problem: String,
    },
}

/// One caller, as the services see it once it is authenticated.
#[derive(Debug)]
pub struct Caller {
    name: String,
    scopes: Scopes,
    destinations: DestinationLimit,
}

/// Which destinations a caller may touch.
#[derive(Debug)]
enum DestinationLimit {
    All,
    Matching(Vec<WildMatch>),
}

impl Caller {
    /// The caller of a server that does not authenticate callers: everything is allowed.
    pub fn anonymous() -> Arc<Caller> {
        Arc::new(Caller {
            name: "anonymous".to_string(),
            scopes: Scopes::all(),
            destinations: DestinationLimit::All,
        })
    }

    /// Whoever calls a method that needs no caller (health checks): no scopes at all.
    pub fn unauthenticated() -> Arc<Caller> {
        Arc::new(Caller {
            name: "unauthenticated".to_string(),
            scopes: Scopes::default(),
            destinations: DestinationLimit::Matching(Vec::new()),
        })
    }

    /// A caller known only by a client certificate that the configured CA signed, when no callers file
    /// lists certificate names: the CA is the list.
    pub fn trusted_certificate(subject: &str) -> Arc<Caller> {
        Arc::new(Caller {
            name: subject.to_string(),
            scopes: Scopes::all(),
            destinations: DestinationLimit::All,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn holds(&self, scope: Scope) -> bool {
        self.scopes.grants(scope)
    }

    pub fn limited_to_some_destinations(&self) -> bool {
        matches!(self.destinations, DestinationLimit::Matching(_))
    }

    /// Whether the caller may touch the destination with this id.
    pub fn may_use_destination(&self, destination_id: &str) -> bool {
        match &self.destinations {
            DestinationLimit::All => true,
            DestinationLimit::Matching(patterns) => patterns
                .iter()
                .any(|pattern| pattern.matches(destination_id)),
        }
    }

    /// The destination patterns, for messages (`crm-*, billing`).
    pub fn destination_patterns(&self) -> String {
        match &self.destinations {
            DestinationLimit::All => "*".to_string(),
            DestinationLimit::Matching(patterns) => patterns
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// The callers of one version of the file.
#[derive(Default)]
pub struct Callers {
    by_token: Vec<([u8; 32], Arc<Caller>)>,
    by_certificate: Vec<(String, Arc<Caller>)>,
}

impl fmt::Debug for Callers {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Callers")
            .field("tokens", &self.by_token.len())
            .field("certificate_names", &self.by_certificate.len())
            .finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallersFile {
    #[serde(default)]
    caller: Vec<CallerEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CallerEntry {
    name: String,
    #[serde(default)]
    token_sha256: Option<String>,
    /// URI or DNS subject alternative names of client certificates that stand for this caller.
    #[serde(default)]
    certificate_names: Vec<String>,
    scopes: Vec<String>,
    #[serde(default)]
    destinations: Option<Vec<String>>,
}

impl Callers {
    pub fn load(path: &Path) -> Result<Callers, CallersFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| CallersFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Callers::parse(&path.display().to_string(), &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Callers, CallersFileError> {
        let file: CallersFile = toml::from_str(text).map_err(|error| CallersFileError::Syntax {
            path: path.to_string(),
            message: error.message().to_string(),
        })?;
        let mut callers = Callers::default();
        let mut names = HashSet::new();
        for (index, entry) in file.caller.into_iter().enumerate() {
            let problem = |problem: String| CallersFileError::Caller {
                path: path.to_string(),
                index: index + 1,
                name: entry.name.clone(),
                problem,
            };
            if entry.name.trim().is_empty() {
                return Err(problem("name is required".to_string()));
            }
            if !names.insert(entry.name.clone()) {
                return Err(problem("name is used by an earlier caller".to_string()));
            }
            let token = entry
                .token_sha256
                .as_deref()
                .map(parse_sha256)
                .transpose()
                .map_err(problem)?;
            if token.is_none() && entry.certificate_names.is_empty() {
                return Err(problem(
                    "needs token_sha256 or certificate_names to prove who it is".to_string(),
                ));
            }
            let scopes = parse_scopes(&entry.scopes).map_err(problem)?;
            let destinations =
                parse_destinations(entry.destinations.as_deref()).map_err(problem)?;
            let caller = Arc::new(Caller {
                name: entry.name.clone(),
                scopes,
                destinations,
            });
            if let Some(hash) = token {
                if callers.by_token.iter().any(|(known, _)| *known == hash) {
                    return Err(problem(
                        "token_sha256 is the same as an earlier caller's".to_string(),
                    ));
                }
                callers.by_token.push((hash, caller.clone()));
            }
            for certificate_name in &entry.certificate_names {
                if certificate_name.is_empty() {
                    return Err(problem("certificate_names has an empty name".to_string()));
                }
                if callers
                    .by_certificate
                    .iter()
                    .any(|(known, _)| known == certificate_name)
                {
                    return Err(problem(format!(
                        "certificate name {certificate_name:?} is used by an earlier caller"
                    )));
                }
                callers
                    .by_certificate
                    .push((certificate_name.clone(), caller.clone()));
            }
        }
        Ok(callers)
    }

    pub fn is_empty(&self) -> bool {
        self.by_token.is_empty() && self.by_certificate.is_empty()
    }

    pub fn lists_certificate_names(&self) -> bool {
        !self.by_certificate.is_empty()
    }

    /// The caller whose token this is. Every stored hash is compared, in constant time, so the answer's
    /// timing says nothing about which hash came close.
    pub fn by_token(&self, token: &str) -> Option<Arc<Caller>> {
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for (hash, caller) in &self.by_token {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(caller.clone());
            }
        }
        found
    }

    /// The caller one of these certificate names stands for.
    pub fn by_certificate_name<'a>(
        &self,
        names: impl IntoIterator<Item = &'a str>,
    ) -> Option<Arc<Caller>> {
        names.into_iter().find_map(|name| {
            self.by_certificate
                .iter()
                .find(|(known, _)| known == name)
                .map(|(_, caller)| caller.clone())
        })
    }
}

fn parse_sha256(text: &str) -> Result<[u8; 32], String> {
    let invalid = || "token_sha256 must be 64 hex digits (the SHA-256 of the token)".to_string();
    if text.len() != 64 {
        return Err(invalid());
    }
    let mut hash = [0u8; 32];
    for (index, byte) in hash.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[index * 2..index * 2 + 2], 16).map_err(|_| invalid())?;
    }
    Ok(hash)
}

fn parse_scopes(names: &[String]) -> Result<Scopes, String> {
    let mut scopes = Vec::new();
    for name in names {
        let scope = Scope::parse(name)
            .ok_or_else(|| format!("scope {name:?} is not one of admin, read, send"))?;
        scopes.push(scope);
    }
    let scopes: Scopes = scopes.into_iter().collect();
    if scopes.is_empty() {
        return Err("scopes must name at least one of admin, read, send".to_string());
    }
    Ok(scopes)
}

fn parse_destinations(patterns: Option<&[String]>) -> Result<DestinationLimit, String> {
    let Some(patterns) = patterns else {
        return Ok(DestinationLimit::All);
    };
    if patterns.is_empty() {
        return Err(
            "destinations is empty: leave it out for all destinations, or list ids or patterns"
                .to_string(),
        );
    }
    let mut matchers = Vec::new();
    for pattern in patterns {
        let id_pattern = pattern.strip_prefix(DESTINATION_PREFIX).unwrap_or(pattern);
        let valid = !id_pattern.is_empty()
            && id_pattern.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '*' | '?')
            });
        if !valid {
            return Err(format!(
                "destination pattern {pattern:?} may hold only lowercase letters, digits, '-', '*' and '?'"
            ));
        }
        matchers.push(WildMatch::new(id_pattern));
    }
    Ok(DestinationLimit::Matching(matchers))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 of "test".
    const TEST_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<Callers, CallersFileError> {
        Callers::parse("callers.toml", text)
    }

    #[test]
    fn the_issue_example_authenticates_by_token() {
        let callers = parse(&format!(
            "[[caller]]\nname = \"crm-sync\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\"]\ndestinations = [\"crm-*\"]\n"
        ))
        .unwrap();
        let caller = callers.by_token("test").expect("known token");
        assert_eq!(caller.name(), "crm-sync");
        assert!(caller.holds(Scope::Send));
        assert!(!caller.holds(Scope::Read));
        assert!(caller.may_use_destination("crm-tickets"));
        assert!(!caller.may_use_destination("billing"));
        assert!(callers.by_token("tesT").is_none());
        assert!(callers.by_token("").is_none());
    }

    #[test]
    fn upper_case_hashes_and_prefixed_patterns_are_accepted() {
        let callers = parse(&format!(
            "[[caller]]\nname = \"a\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\"]\ndestinations = [\"destinations/one\", \"t?o\"]\n",
            TEST_HASH.to_uppercase()
        ))
        .unwrap();
        let caller = callers.by_token("test").unwrap();
        assert!(caller.may_use_destination("one"));
        assert!(caller.may_use_destination("two"));
        assert!(!caller.may_use_destination("one-more"));
        assert_eq!(caller.destination_patterns(), "one, t?o");
    }

    #[test]
    fn certificate_names_stand_for_callers() {
        let callers = parse(
            "[[caller]]\nname = \"mesh\"\ncertificate_names = [\"spiffe://cluster.local/ns/crm/sa/sync\"]\nscopes = [\"read\"]\n",
        )
        .unwrap();
        let caller = callers
            .by_certificate_name(["other.example", "spiffe://cluster.local/ns/crm/sa/sync"])
            .unwrap();
        assert_eq!(caller.name(), "mesh");
        assert!(callers.by_certificate_name(["other.example"]).is_none());
        assert!(callers.by_token("test").is_none());
    }

    #[test]
    fn mistakes_name_the_caller_and_the_field() {
        let cases = [
            ("[[caller]]\nname = \"a\"\nscopes = [\"send\"]\n", "token_sha256 or certificate_names"),
            ("[[caller]]\nname = \"a\"\ntoken_sha256 = \"abc\"\nscopes = [\"send\"]\n", "64 hex digits"),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"write\"]\n"),
                "scope \"write\"",
            ),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = []\n"),
                "at least one",
            ),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\"]\ndestinations = [\"CRM/*\"]\n"),
                "destination pattern",
            ),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\"]\n[[caller]]\nname = \"a\"\ncertificate_names = [\"x\"]\nscopes = [\"send\"]\n"),
                "caller 2 (\"a\"): name is used",
            ),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\"]\n[[caller]]\nname = \"b\"\ntoken_sha256 = \"{TEST_HASH}\"\nscopes = [\"send\"]\n"),
                "same as an earlier",
            ),
            (
                &format!("[[caller]]\nname = \"a\"\ntoken = \"{TEST_HASH}\"\nscopes = [\"send\"]\n"),
                "unknown field",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).expect_err(expected).to_string();
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
            assert!(
                error.starts_with("auth tokens file callers.toml"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_empty_file_has_no_callers() {
        assert!(parse("").unwrap().is_empty());
    }
}
