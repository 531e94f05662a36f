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
    /// Which key this is: 1 for the key it was created with, one more for each key that replaced it. A refusal
    /// is recorded against the key it was seen with, so a late answer to a call made with an old key cannot
    /// mark the new one.
    pub key_version: u64,
    /// Set while Groove refuses the key (see [`Refusal`]).
    pub refusal: Option<Refusal>,
}

/// Groove refused a key on several calls in a row: deliveries with it stop until the key is replaced (or a call
/// with it succeeds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// 401 or 403: Groove's status on the call that completed the streak.
    pub http_status: u16,
    pub refuse_time_ms: i64,
    /// What happened and what to do, in words; never the key.
    pub detail: String,
}

impl Refusal {
    /// The status as people read it: `401 unauthorized`, `403 forbidden`.
    pub fn status_text(&self) -> String {
        status_text(self.http_status)
    }

    /// The error of a record that was not sent because of this refusal.
    pub fn record_error(&self, credential_id: &str) -> String {
        format!(
            "groove refused the api key of credentials/{credential_id} ({}); not sent: update the key \
             with UpdateCredential, then send this record again with RetryFailedRecords",
            self.status_text()
        )
    }
}

/// `401 unauthorized`, `403 forbidden`, or the bare number for other statuses.
pub fn status_text(status: u16) -> String {
    match status {
        401 => "401 unauthorized".to_string(),
        403 => "403 forbidden".to_string(),
        other => other.to_string(),
    }
}

/// A stored key with what decides whether deliveries may use it.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub key: ApiKey,
    /// See [`Credential::key_version`].
    pub key_version: u64,
    pub refusal: Option<Refusal>,
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
    fn a_refused_record_says_which_key_and_what_to_do() {
        let refusal = Refusal {
            http_status: 401,
            refuse_time_ms: 0,
            detail: String::new(),
        };
        assert_eq!(
            refusal.record_error("k1"),
            "groove refused the api key of credentials/k1 (401 unauthorized); not sent: update the key with \
             UpdateCredential, then send this record again with RetryFailedRecords"
        );
        assert_eq!(status_text(403), "403 forbidden");
    }

    #[test]
    fn short_keys_have_no_visible_tail() {
        assert_eq!(ApiKey::new("abc").hint(), "****");
        assert_eq!(ApiKey::new("12345678").hint(), "****");
    }
}
