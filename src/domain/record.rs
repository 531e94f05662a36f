//! What is kept of how a record arrived.

use serde::{Deserialize, Serialize};

/// The form a record's JSON arrived in. A failed record is shown back in the same form, so a `raw_json` record
/// comes back byte for byte (a Struct would turn `12345678901234567890` into a double).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordEncoding {
    /// A `google.protobuf.Struct`, turned into JSON text by the service.
    #[default]
    Struct,
    /// JSON text exactly as the client sent it.
    RawJson,
}

impl RecordEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordEncoding::Struct => "struct",
            RecordEncoding::RawJson => "raw_json",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [RecordEncoding::Struct, RecordEncoding::RawJson]
            .into_iter()
            .find(|encoding| encoding.as_str() == text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for encoding in [RecordEncoding::Struct, RecordEncoding::RawJson] {
            assert_eq!(RecordEncoding::parse(encoding.as_str()), Some(encoding));
        }
        assert_eq!(RecordEncoding::parse("json"), None);
    }
}
