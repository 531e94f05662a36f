//! Field violations: what is wrong with an input, and where, in the words of the public contract.

use thiserror::Error;

/// One invalid field. `field` is a dotted path relative to the destination's configuration
/// (`config.batching.batch_size`), so the API layer can report it against its own message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
#[error("{field}: {description}")]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        FieldViolation {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Every violation found in one input, so a user fixes them all in one round trip.
#[derive(Clone, Debug, Default, PartialEq, Eq, Error)]
#[error("{}", summary(.0))]
pub struct Violations(pub Vec<FieldViolation>);

fn summary(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl Violations {
    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was found.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self)
        }
    }
}
