//! One error type for the whole bench: a message meant for the person running it. A benchmark has no caller
//! that would branch on error kinds, so a string with context is all that is needed.

use std::fmt;

/// Why a bench run could not go on.
#[derive(Debug)]
pub struct BenchError(String);

impl BenchError {
    pub fn new(message: impl Into<String>) -> Self {
        BenchError(message.into())
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BenchError {}

pub type BenchResult<T> = Result<T, BenchError>;

/// Adds what was being done to any displayable error.
pub trait Context<T> {
    fn context(self, what: impl fmt::Display) -> BenchResult<T>;
}

impl<T, E: fmt::Display> Context<T> for Result<T, E> {
    fn context(self, what: impl fmt::Display) -> BenchResult<T> {
        self.map_err(|error| BenchError(format!("{what}: {error}")))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl fmt::Display) -> BenchResult<T> {
        self.ok_or_else(|| BenchError(what.to_string()))
    }
}
