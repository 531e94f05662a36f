//! `--database-url`: the PostgreSQL database replicas share. The URL usually holds a password, so neither its
//! `Debug` form nor clap's error for a refused value shows it.

use std::ffi::OsStr;
use std::fmt;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;

/// A `postgres://` or `postgresql://` URL.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts the two PostgreSQL schemes only; the message names the flag and never repeats the value.
    pub fn parse(text: &str) -> Result<DatabaseUrl, String> {
        let text = text.trim();
        let scheme_ok = ["postgres://", "postgresql://"].iter().any(|scheme| {
            text.len() > scheme.len() && text[..scheme.len()].eq_ignore_ascii_case(scheme)
        });
        if !scheme_ok {
            return Err(
                "--database-url (GROOVE_DESTINATION_DATABASE_URL) must be a postgres:// or postgresql:// url"
                    .to_string(),
            );
        }
        Ok(DatabaseUrl(text.to_string()))
    }

    /// The URL as given, password included: for connecting only, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        crate::store::redact_database_url(&self.0)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// clap's parser for [`DatabaseUrl`]: a refused value is reported without being shown.
#[derive(Clone, Copy, Debug)]
pub(super) struct DatabaseUrlParser;

impl TypedValueParser for DatabaseUrlParser {
    type Value = DatabaseUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<DatabaseUrl, clap::Error> {
        let refuse = |message: String| {
            clap::Error::raw(ErrorKind::ValueValidation, format!("{message}\n")).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| {
            refuse(
                "--database-url (GROOVE_DESTINATION_DATABASE_URL) is not valid utf-8".to_string(),
            )
        })?;
        DatabaseUrl::parse(text).map_err(refuse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgres_urls_are_taken_and_passwords_never_show() {
        let url = DatabaseUrl::parse("postgresql://app:s3cret@db:5432/groove").unwrap();
        assert_eq!(url.expose(), "postgresql://app:s3cret@db:5432/groove");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert!(DatabaseUrl::parse("POSTGRES://db/groove").is_ok());
        for refused in [
            "mysql://app:s3cret@db/groove",
            "",
            "postgres://",
            "db.example:5432",
        ] {
            let err = DatabaseUrl::parse(refused).unwrap_err();
            assert!(err.contains("--database-url"), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
        }
    }

    #[test]
    fn the_flag_refuses_other_urls_without_showing_them() {
        use clap::Parser;

        let settings = crate::settings::Settings::try_parse_from([
            "groove-destination",
            "--database-url",
            "postgres://app:s3cret@db/groove",
        ])
        .unwrap();
        assert_eq!(
            settings.database_url.map(|url| url.redacted()).as_deref(),
            Some("postgres://app:***@db/groove")
        );
        let err = crate::settings::Settings::try_parse_from([
            "groove-destination",
            "--database-url",
            "mysql://app:s3cret@db/groove",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.contains("--database-url"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
    }
}
