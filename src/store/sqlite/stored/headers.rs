//! Header lists of failed records (`request_headers`, `response_headers`): a JSON array of `[name, value]`
//! pairs, in the order they were sent or received.

use serde::{Deserialize, Serialize};

/// One header as stored: `["name", "value"]`.
#[derive(Serialize, Deserialize)]
struct StoredHeader(String, String);

/// The JSON text of `headers`.
pub(in crate::store) fn encode(headers: &[(String, String)]) -> serde_json::Result<String> {
    let stored: Vec<StoredHeader> = headers
        .iter()
        .map(|(name, value)| StoredHeader(name.clone(), value.clone()))
        .collect();
    serde_json::to_string(&stored)
}

/// The headers in `json`, as written by [`encode`].
pub(in crate::store) fn decode(json: &str) -> serde_json::Result<Vec<(String, String)>> {
    let stored: Vec<StoredHeader> = serde_json::from_str(json)?;
    Ok(stored
        .into_iter()
        .map(|StoredHeader(name, value)| (name, value))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_an_array_of_pairs() {
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-a".to_string(), "1".to_string()),
        ];
        let json = encode(&headers).unwrap();
        assert_eq!(json, r#"[["content-type","application/json"],["x-a","1"]]"#);
        assert_eq!(decode(&json).unwrap(), headers);
        assert_eq!(decode("[]").unwrap(), Vec::new());
        assert!(decode(r#"{"a":"b"}"#).is_err());
    }
}
