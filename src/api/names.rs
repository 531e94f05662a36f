//! Resource names (`credentials/{id}`, `destinations/{id}`) and the ids inside them.

use crate::api::error::ApiError;

/// Longest id a client may choose (RFC 1034 label length, as the API design guide suggests).
const MAX_ID_LEN: usize = 63;

/// A resource collection and the prefix of its names.
#[derive(Clone, Copy, Debug)]
pub struct Collection {
    pub prefix: &'static str,
    /// The resource kind in messages, e.g. `destination`.
    pub kind: &'static str,
    /// Prefix of server-chosen ids.
    pub generated_prefix: &'static str,
}

pub const CREDENTIALS: Collection = Collection {
    prefix: "credentials/",
    kind: "credential",
    generated_prefix: "cred-",
};

pub const DESTINATIONS: Collection = Collection {
    prefix: "destinations/",
    kind: "destination",
    generated_prefix: "dest-",
};

impl Collection {
    pub fn name(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    /// The id inside `name`, or INVALID_ARGUMENT naming `field`.
    pub fn parse_name(&self, field: &str, name: &str) -> Result<String, ApiError> {
        if name.is_empty() {
            return Err(ApiError::invalid(
                field,
                format!("{} name is required", self.kind),
            ));
        }
        let id = name.strip_prefix(self.prefix).ok_or_else(|| {
            ApiError::invalid(
                field,
                format!(
                    "{name:?} is not a {} name ({}{{id}})",
                    self.kind, self.prefix
                ),
            )
        })?;
        check_id(id).map_err(|problem| ApiError::invalid(field, problem))?;
        Ok(id.to_string())
    }

    /// A client-chosen id, checked; or a fresh one when the client left it empty.
    pub fn new_id(&self, field: &str, requested: &str) -> Result<String, ApiError> {
        if requested.is_empty() {
            let random = uuid::Uuid::new_v4().simple().to_string();
            return Ok(format!("{}{}", self.generated_prefix, &random[..12]));
        }
        check_id(requested).map_err(|problem| ApiError::invalid(field, problem))?;
        Ok(requested.to_string())
    }
}

fn check_id(id: &str) -> Result<(), String> {
    let mut chars = id.chars();
    let starts_with_letter = chars.next().is_some_and(|first| first.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if id.len() > MAX_ID_LEN || !starts_with_letter || !rest_ok || id.ends_with('-') {
        return Err(format!(
            "id {id:?} must be 1 to {MAX_ID_LEN} lowercase letters, digits or '-', start with a letter and not end with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(
            DESTINATIONS
                .parse_name("name", "destinations/tickets-1")
                .unwrap(),
            "tickets-1"
        );
        assert_eq!(DESTINATIONS.name("tickets-1"), "destinations/tickets-1");
    }

    #[test]
    fn malformed_names_are_refused() {
        for name in [
            "",
            "tickets-1",
            "credentials/x",
            "destinations/",
            "destinations/A",
            "destinations/1a",
            "destinations/a/b",
            "destinations/a-",
        ] {
            assert!(DESTINATIONS.parse_name("name", name).is_err(), "{name}");
        }
    }

    #[test]
    fn generated_ids_are_valid() {
        let id = CREDENTIALS.new_id("credential_id", "").unwrap();
        assert!(id.starts_with("cred-"));
        assert!(check_id(&id).is_ok());
    }
}
