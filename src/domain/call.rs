//! The one request type from rendering to the wire: what the renderer makes of a record, what a batch closes
//! into, what a test send or a key check sends, and what a report shows as the request sent.

use std::sync::Arc;

use bytes::Bytes;
use url::Url;

use super::destination::HttpMethod;
use super::render::display_headers;

/// One HTTP request to Groove, without the key.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedCall {
    pub method: HttpMethod,
    /// Absolute URL, checked to be under the Groove base URL.
    pub url: Url,
    /// Extra headers, shared by every call of a destination. The Groove client sets `Authorization`,
    /// `Content-Type` (with a body), `User-Agent`, and `Accept: application/json` unless one is given here.
    pub headers: Arc<[(String, String)]>,
    /// JSON text; empty for a call without a body. `Bytes`, so a retry re-sends it without a copy.
    pub body: Bytes,
}

impl PlannedCall {
    /// What goes on the wire as the body: GET and DELETE carry none (Groove reads their parameters from the
    /// URL), and an empty body is no body.
    pub fn sent_body(&self) -> Option<&Bytes> {
        (self.method.carries_body() && !self.body.is_empty()).then_some(&self.body)
    }

    /// The headers as sent, with the key redacted; see [`display_headers`].
    pub fn display_headers(&self) -> Vec<(String, String)> {
        display_headers(&self.headers, !self.body.is_empty())
    }
}
