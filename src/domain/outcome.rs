//! How the delivery of a record ends. Every record gets exactly one.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Groove accepted the call (2xx).
    Delivered,
    /// Groove refused the call with a 4xx that retrying cannot fix.
    Rejected,
    /// Refused before any call: the record breaks a rule (missing field, bad value, malformed JSON).
    Invalid,
    /// No success after the allowed attempts, or a create that may have reached Groove and is not retried.
    Failed,
    /// Delivered before under the same record id; not sent again.
    Duplicate,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Rejected => "rejected",
            Outcome::Invalid => "invalid",
            Outcome::Failed => "failed",
            Outcome::Duplicate => "duplicate",
        }
    }

    pub fn parse(text: &str) -> Option<Outcome> {
        [
            Outcome::Delivered,
            Outcome::Rejected,
            Outcome::Invalid,
            Outcome::Failed,
            Outcome::Duplicate,
        ]
        .into_iter()
        .find(|outcome| outcome.as_str() == text)
    }

    /// Rejected and failed records are kept for inspection and retry.
    pub fn is_kept_as_failed(self) -> bool {
        matches!(self, Outcome::Rejected | Outcome::Failed)
    }

    /// Outcomes the store keeps: delivered ids in the ledger, the rest as failed records.
    pub fn is_recorded(self) -> bool {
        self == Outcome::Delivered || self.is_kept_as_failed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for outcome in [
            Outcome::Delivered,
            Outcome::Rejected,
            Outcome::Invalid,
            Outcome::Failed,
            Outcome::Duplicate,
        ] {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
        assert_eq!(Outcome::parse("lost"), None);
    }
}
