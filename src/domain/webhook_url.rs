//! A response webhook URL as it is shown: a password in it (`https://user:password@host/...`) is replaced by
//! `***` in API answers and in logs. The stored configuration keeps the password, since it is needed to send.

use url::Url;

/// What a password is replaced with.
pub const REDACTED: &str = "***";
/// Shown for a stored URL that does not parse (validation keeps these out, so it is never expected).
const UNREADABLE: &str = "(unreadable url)";

/// `url` with its password, if it has one, replaced by [`REDACTED`].
pub fn redact(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        return UNREADABLE.to_string();
    };
    if parsed.password().is_none() {
        return url.to_string();
    }
    match parsed.set_password(Some(REDACTED)) {
        Ok(()) => parsed.to_string(),
        Err(()) => UNREADABLE.to_string(),
    }
}

/// The webhook URL to store when `incoming` replaces `stored`: a client that read the destination and sends
/// it back unchanged sends the redacted URL, and that keeps the stored password rather than storing `***`.
pub fn keep_stored_password(incoming: Option<String>, stored: Option<&str>) -> Option<String> {
    match (incoming, stored) {
        (Some(incoming), Some(stored)) if incoming != stored && incoming == redact(stored) => {
            Some(stored.to_string())
        }
        (incoming, _) => incoming,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_is_redacted_and_the_rest_kept() {
        assert_eq!(
            redact("https://hooks:s3cr%2Fet@hooks.example/path?q=1"),
            "https://hooks:***@hooks.example/path?q=1"
        );
        assert_eq!(
            redact("http://user:pw@127.0.0.1:9000/hook"),
            "http://user:***@127.0.0.1:9000/hook"
        );
        assert_eq!(
            redact("https://:only-password@hooks.example/"),
            "https://:***@hooks.example/"
        );
        for unchanged in ["https://hooks.example/x", "https://user@hooks.example/x"] {
            assert_eq!(redact(unchanged), unchanged);
        }
        assert_eq!(redact("not a url :pw@"), UNREADABLE);
    }

    #[test]
    fn the_redacted_url_sent_back_keeps_the_stored_password() {
        let stored = "https://user:s3cret@hooks.example/x";
        let shown = redact(stored);
        assert_eq!(
            keep_stored_password(Some(shown), Some(stored)).as_deref(),
            Some(stored)
        );
        // Anything else replaces it: a new password, a new URL, none.
        for incoming in [
            Some("https://user:other@hooks.example/x"),
            Some("https://user:***@elsewhere.example/x"),
            Some("https://hooks.example/x"),
            None,
        ] {
            assert_eq!(
                keep_stored_password(incoming.map(str::to_string), Some(stored)).as_deref(),
                incoming
            );
        }
        // A password that really is `***` is stored as given.
        assert_eq!(
            keep_stored_password(Some("https://u:***@h.example/".into()), None).as_deref(),
            Some("https://u:***@h.example/")
        );
    }
}
