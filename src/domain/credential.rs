//! Credentials: a Groove API key stored once and referenced by destinations.

use serde::{Deserialize, Serialize};

/// A Groove API key. It never prints: `Debug` and `Display` show only a masked hint, so a stray log line or
/// error message cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(String);

impl ApiKey {
    pub fn new(key: impl Into<String>) -> Self {
        ApiKey(key.into())
    }

    /// The key itself, for the one place that needs it: the `Authorization` header sent to Groove.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Last four characters behind a mask, enough for a person to tell keys apart.
    pub fn hint(&self) -> String {
        let chars: Vec<char> = self.0.chars().collect();
        if chars.len() <= 8 {
            return "****".to_string();
        }
        let tail: String = chars[chars.len() - 4..].iter().collect();
        format!("****{tail}")
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ApiKey({})", self.hint())
    }
}

impl std::fmt::Display for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hint())
    }
}

/// A stored credential as everyone but the Groove client sees it: no key, only its hint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub id: String,
    pub display_name: String,
    pub api_key_hint: String,
    pub create_time_ms: i64,
    pub update_time_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_key() {
        let key = ApiKey::new("supersecretkey1234");
        assert_eq!(format!("{key:?}"), "ApiKey(****1234)");
        assert_eq!(key.to_string(), "****1234");
        assert!(!format!("{key:?}{key}").contains("supersecret"));
    }

    #[test]
    fn short_keys_have_no_visible_tail() {
        assert_eq!(ApiKey::new("abc").hint(), "****");
        assert_eq!(ApiKey::new("12345678").hint(), "****");
    }
}
