//! Keyset pagination shared by every store: pages ordered by id (or by a time, then id), continued by an
//! opaque token.
//!
//! The token encodes the sort key of the last item of the previous page, not an offset, so a page stays correct
//! while rows are inserted or deleted between calls, and any replica of a shared database can serve the next
//! page. Ids compare bytewise (SQLite's BINARY collation; a PostgreSQL store must order by `id COLLATE "C"` to
//! agree).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::error::StoreError;

/// Page size used when the request leaves it at 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Largest page served; larger requests are clamped to it rather than refused.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Splits the time from the id in a (time, id) token. Never part of a decimal time, so the first one found is
/// the split whatever the id contains.
const TIME_ID_SEPARATOR: char = '/';

/// Which page of a listing to return.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PageRequest {
    /// Items wanted: 0 means [`DEFAULT_PAGE_SIZE`], anything above [`MAX_PAGE_SIZE`] is clamped to it.
    pub page_size: u32,
    /// `next_page_token` of the previous page; `None` or an empty string (proto3's default) starts at the
    /// beginning.
    pub after: Option<String>,
}

impl PageRequest {
    /// The first page, `page_size` items long (0 for the default).
    pub fn first(page_size: u32) -> Self {
        PageRequest {
            page_size,
            after: None,
        }
    }

    /// The page following `page`, or `None` when `page` was the last.
    pub fn next<T>(page_size: u32, page: &Page<T>) -> Option<Self> {
        page.next_page_token.as_ref().map(|token| PageRequest {
            page_size,
            after: Some(token.clone()),
        })
    }

    /// The page size actually served, after defaulting and clamping.
    pub fn effective_page_size(&self) -> u32 {
        match self.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size => size.min(MAX_PAGE_SIZE),
        }
    }

    /// The id the page starts after, decoded from the token.
    pub(crate) fn after_id(&self) -> Result<Option<String>, StoreError> {
        match self.after.as_deref() {
            None | Some("") => Ok(None),
            Some(token) => decode_token(token).map(Some),
        }
    }

    /// The (time in ms, id) the page starts after, for listings ordered by time, then id.
    pub(crate) fn after_time_and_id(&self) -> Result<Option<(i64, String)>, StoreError> {
        let Some(text) = self.after_id()? else {
            return Ok(None);
        };
        let (time, id) = text
            .split_once(TIME_ID_SEPARATOR)
            .ok_or(StoreError::InvalidPageToken)?;
        let time = time.parse().map_err(|_| StoreError::InvalidPageToken)?;
        Ok(Some((time, id.to_string())))
    }
}

/// One page of a listing, in id order.
#[derive(Clone, Debug, PartialEq)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Continues the listing; `None` on the last page (which is never empty unless the listing is).
    pub next_page_token: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from rows fetched with `LIMIT page_size + 1`: the extra row only proves there is more, so
    /// the last page is recognised without a trailing empty one.
    pub(crate) fn from_overfetch(rows: Vec<T>, page_size: u32, id_of: impl Fn(&T) -> &str) -> Self {
        Self::overfetched(rows, page_size, |last| encode_token(id_of(last)))
    }

    /// A page of a listing ordered by a time (ms), then id, that holds `rows` and is followed by more when
    /// `more`: for pages that end for a reason other than their length.
    pub(crate) fn by_time(rows: Vec<T>, more: bool, key_of: impl Fn(&T) -> (i64, &str)) -> Self {
        let next_page_token = match rows.last() {
            Some(last) if more => {
                let (time, id) = key_of(last);
                Some(time_and_id_token(time, id))
            }
            _ => None,
        };
        Page {
            items: rows,
            next_page_token,
        }
    }

    /// Keeps the first `len` items of a page of a listing ordered by a time (ms), then id; the next page then
    /// starts right after the last one kept. Used when a page has to end earlier than the store ended it, for
    /// example to fit a response size. A page keeps at least one item: without one, no token could say where
    /// the next page starts.
    pub fn truncate_by_time(&mut self, len: usize, key_of: impl Fn(&T) -> (i64, &str)) {
        let len = len.max(1);
        if len >= self.items.len() {
            return;
        }
        self.items.truncate(len);
        self.next_page_token = self.items.last().map(|last| {
            let (time, id) = key_of(last);
            time_and_id_token(time, id)
        });
    }

    fn overfetched(mut rows: Vec<T>, page_size: u32, token_of: impl Fn(&T) -> String) -> Self {
        let page_size = page_size as usize;
        let more = rows.len() > page_size;
        rows.truncate(page_size);
        let next_page_token = match rows.last() {
            Some(last) if more => Some(token_of(last)),
            _ => None,
        };
        Page {
            items: rows,
            next_page_token,
        }
    }
}

fn time_and_id_token(time: i64, id: &str) -> String {
    encode_token(&format!("{time}{TIME_ID_SEPARATOR}{id}"))
}

fn encode_token(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id.as_bytes())
}

fn decode_token(token: &str) -> Result<String, StoreError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| StoreError::InvalidPageToken)?;
    String::from_utf8(bytes).map_err(|_| StoreError::InvalidPageToken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_size_defaults_and_clamps() {
        assert_eq!(
            PageRequest::first(0).effective_page_size(),
            DEFAULT_PAGE_SIZE
        );
        assert_eq!(PageRequest::first(7).effective_page_size(), 7);
        assert_eq!(
            PageRequest::first(5000).effective_page_size(),
            MAX_PAGE_SIZE
        );
    }

    #[test]
    fn tokens_round_trip_and_hide_nothing_but_an_id() {
        let page = Page::from_overfetch(vec!["a", "b", "c"], 2, |s| s);
        assert_eq!(page.items, vec!["a", "b"]);
        let next = PageRequest::next(2, &page).expect("more pages");
        assert_eq!(next.after_id().unwrap().as_deref(), Some("b"));
    }

    #[test]
    fn last_page_has_no_token() {
        let page = Page::from_overfetch(vec!["a", "b"], 2, |s| s);
        assert_eq!(page.next_page_token, None);
        let empty = Page::<&str>::from_overfetch(vec![], 2, |s| s);
        assert_eq!(empty.next_page_token, None);
    }

    #[test]
    fn time_and_id_tokens_round_trip() {
        let rows = vec![(5, "a/b"), (-3, "c")];
        let page = Page::by_time(rows, true, |(time, id)| (*time, *id));
        let next = PageRequest::next(2, &page).expect("more pages");
        assert_eq!(
            next.after_time_and_id().unwrap(),
            Some((-3, "c".to_string()))
        );
        let first = PageRequest::first(2);
        assert_eq!(first.after_time_and_id().unwrap(), None);
    }

    #[test]
    fn pages_cut_short_continue_after_their_last_item() {
        fn key<'a>(item: &'a (i64, &'static str)) -> (i64, &'a str) {
            (item.0, item.1)
        }
        let ended = Page::by_time(vec![(1, "a"), (2, "b")], true, key);
        let next = PageRequest::next(5, &ended).expect("more pages");
        assert_eq!(
            next.after_time_and_id().unwrap(),
            Some((2, "b".to_string()))
        );
        assert_eq!(
            Page::by_time(vec![(1, "a")], false, key).next_page_token,
            None
        );
        assert_eq!(Page::by_time(vec![], true, key).next_page_token, None);

        let mut last = Page::by_time(vec![(1, "a"), (2, "b"), (3, "c")], false, key);
        last.truncate_by_time(1, key);
        assert_eq!(last.items, vec![(1, "a")]);
        let next = PageRequest::next(5, &last).expect("the cut items come next");
        assert_eq!(
            next.after_time_and_id().unwrap(),
            Some((1, "a".to_string()))
        );
        let mut whole = Page::by_time(vec![(1, "a")], false, key);
        whole.truncate_by_time(1, key);
        assert_eq!(whole.next_page_token, None, "nothing was cut");
    }

    #[test]
    fn id_tokens_are_not_time_and_id_tokens() {
        for id in ["plain", "x/y", "/y"] {
            let page = Page::from_overfetch(vec![id, "z"], 1, |s| s);
            let next = PageRequest::next(1, &page).expect("more pages");
            assert!(matches!(
                next.after_time_and_id(),
                Err(StoreError::InvalidPageToken)
            ));
        }
    }

    #[test]
    fn empty_token_is_the_first_page_and_garbage_is_refused() {
        let empty = PageRequest {
            page_size: 1,
            after: Some(String::new()),
        };
        assert_eq!(empty.after_id().unwrap(), None);
        for bad in ["***", "/w", "_w"] {
            let request = PageRequest {
                page_size: 1,
                after: Some(bad.to_string()),
            };
            assert!(matches!(
                request.after_id(),
                Err(StoreError::InvalidPageToken)
            ));
        }
    }
}
