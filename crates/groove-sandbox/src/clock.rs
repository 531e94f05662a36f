//! Timestamps in the shape Groove uses: ISO-8601 UTC with second precision
//! (`"2012-07-17T13:41:01Z"`, docs/groove-api.md §4).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::well_known::Rfc3339;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// Milliseconds since the unix epoch.
pub(crate) fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Whole seconds since the unix epoch.
pub(crate) fn unix_secs(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Formats `at` as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn iso8601(at: SystemTime) -> String {
    iso8601_secs(unix_secs(at))
}

/// `YYYY-MM-DDTHH:MM:SSZ`: RFC 3339 in UTC, whole seconds.
const ISO8601_UTC_SECONDS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");

/// Formats unix epoch seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn iso8601_secs(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .and_then(|at| at.format(ISO8601_UTC_SECONDS).ok())
        // Only past year 9999, which no clock or accepted `sent_at` reaches.
        .unwrap_or_else(|| "9999-12-31T23:59:59Z".to_owned())
}

/// Reads a client-supplied `sent_at`. Groove prefers RFC-822 but the doc implies other
/// formats work too, so an HTTP date and ISO-8601 UTC are both understood.
pub(crate) fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if let Ok(at) = httpdate::parse_http_date(text) {
        return Some(at);
    }
    parse_iso8601_utc(text)
}

/// RFC 3339 with a UTC offset (`Z` or `+00:00`); a fraction of a second is dropped.
fn parse_iso8601_utc(text: &str) -> Option<SystemTime> {
    let at = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    if !at.offset().is_utc() {
        return None;
    }
    let secs = u64::try_from(at.unix_timestamp()).ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instant() {
        let at = UNIX_EPOCH + Duration::from_secs(1_342_532_461);
        assert_eq!(iso8601(at), "2012-07-17T13:41:01Z");
    }

    #[test]
    fn parses_both_formats() {
        let at = UNIX_EPOCH + Duration::from_secs(1_342_532_461);
        assert_eq!(parse_timestamp("2012-07-17T13:41:01Z"), Some(at));
        assert_eq!(parse_timestamp("Tue, 17 Jul 2012 13:41:01 GMT"), Some(at));
        assert_eq!(parse_timestamp("2012-07-17T13:41:01.75+00:00"), Some(at));
        assert_eq!(parse_timestamp("2012-07-17T15:41:01+02:00"), None);
        assert_eq!(parse_timestamp("yesterday"), None);
    }
}
