//! Grouping rendered records into batches: one HTTP call carrying several records (manual endpoints only; Groove
//! itself has no bulk endpoint, so templates never batch).
//!
//! A [`Batcher`] is pure: the caller passes the time in, asks for what is due and sleeps until
//! [`Batcher::next_deadline`]. It is generic over a per-record payload `T` (record id, ledger handle...) that comes
//! back with the batch, in the order of the records in the body.
//!
//! Records can share a call only if they agree on method, URL and headers, so every group is keyed by those plus
//! the record's group key:
//! - arrival order: one open batch; a record that cannot join it (another URL) closes it, so batches leave in
//!   arrival order;
//! - attribute value: one open batch per value (records without the attribute form a group of their own);
//! - rendered request: one open batch per method + URL + headers.
//!
//! Memory: every open group holds at least one pending record, so the number of groups is bounded by the pending
//! records; and those are bounded by the caller, which stops reading records while too many are pending and sends
//! what [`Batcher::take_due`] returns.
//!
//! Bodies are built by concatenating the records' JSON bytes inside the envelope, never by re-parsing them.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use url::Url;

use super::call::PlannedCall;
use super::destination::{BatchEnvelope, Batching, GroupingAlgorithm, HttpMethod};

/// One call carrying several records.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch<T> {
    /// The one call: the method, URL and headers the records shared, and a body of the records inside the
    /// envelope (`[r1,r2]` or `{"key":[r1,r2]}`); empty for a `GET`, which sends no body.
    pub call: PlannedCall,
    /// The group key the records shared.
    pub group_key: Option<String>,
    /// The payloads of the records, in body order.
    pub items: Vec<T>,
    /// When the first record joined the batch.
    pub opened_at: Instant,
}

/// Collects rendered records into batches by size and age.
#[derive(Debug)]
pub struct Batcher<T> {
    batch_size: usize,
    max_wait: Duration,
    arrival_order: bool,
    /// `[` or `{"key":[`.
    prefix: Vec<u8>,
    /// `]` or `]}`.
    suffix: &'static [u8],
    open: HashMap<GroupId, OpenBatch<T>>,
    /// Open groups by age: the first entry is the next one due. The sequence number breaks ties.
    by_age: BTreeMap<(Instant, u64), GroupId>,
    next_sequence: u64,
    pending: usize,
}

/// What records must share to travel in one call.
#[derive(Clone, Debug, PartialEq, Eq)]
struct GroupId {
    group_key: Option<String>,
    method: HttpMethod,
    url: Url,
    headers: Arc<[(String, String)]>,
}

impl Hash for GroupId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.group_key.hash(state);
        self.method.as_str().hash(state);
        self.url.hash(state);
        self.headers.hash(state);
    }
}

#[derive(Debug)]
struct OpenBatch<T> {
    age: (Instant, u64),
    body: Vec<u8>,
    items: Vec<T>,
}

impl<T> Batcher<T> {
    /// A batcher for a destination's batching settings. A batch size of 0 counts as 1.
    pub fn new(batching: &Batching) -> Self {
        let (prefix, suffix): (Vec<u8>, &'static [u8]) = match &batching.envelope {
            BatchEnvelope::JsonArray => (b"[".to_vec(), b"]"),
            BatchEnvelope::Wrapped { key } => {
                // `Value`'s Display is infallible and escapes the key as a JSON string.
                let key = Value::String(key.clone()).to_string();
                (format!("{{{key}:[").into_bytes(), b"]}")
            }
        };
        Batcher {
            batch_size: usize::try_from(batching.batch_size)
                .unwrap_or(usize::MAX)
                .max(1),
            max_wait: Duration::from_millis(batching.max_wait_ms),
            arrival_order: batching.grouping == GroupingAlgorithm::ArrivalOrder,
            prefix,
            suffix,
            open: HashMap::new(),
            by_age: BTreeMap::new(),
            next_sequence: 0,
            pending: 0,
        }
    }

    /// Adds one rendered record (its body must be the JSON text of one value) with its group key from
    /// [`super::render::Rendered::group_key`]. Returns the batches this closed: the one it filled, and under
    /// arrival order the open batch it could not join (that one first).
    pub fn push(
        &mut self,
        now: Instant,
        call: PlannedCall,
        group_key: Option<String>,
        item: T,
    ) -> Vec<Batch<T>> {
        let id = GroupId {
            group_key,
            method: call.method,
            url: call.url,
            headers: call.headers,
        };
        let carries_body = id.method != HttpMethod::Get;
        let mut closed = Vec::new();
        let filled = match self.open.get_mut(&id) {
            Some(batch) => {
                if carries_body {
                    batch.body.push(b',');
                    batch.body.extend_from_slice(&call.body);
                }
                batch.items.push(item);
                batch.items.len() >= self.batch_size
            }
            None => {
                if self.arrival_order {
                    closed.extend(self.flush());
                }
                let age = (now, self.next_sequence);
                self.next_sequence += 1;
                let mut body = Vec::new();
                if carries_body {
                    body.reserve(self.prefix.len() + call.body.len() + self.suffix.len());
                    body.extend_from_slice(&self.prefix);
                    body.extend_from_slice(&call.body);
                }
                self.by_age.insert(age, id.clone());
                self.open.insert(
                    id.clone(),
                    OpenBatch {
                        age,
                        body,
                        items: vec![item],
                    },
                );
                self.batch_size <= 1
            }
        };
        self.pending += 1;
        if filled {
            closed.extend(self.close(&id));
        }
        closed
    }

    /// The partial batches whose first record has waited `max_wait` by `now`, oldest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<Batch<T>> {
        let mut due = Vec::new();
        while let Some((&(opened_at, _), id)) = self.by_age.first_key_value() {
            let is_due = opened_at
                .checked_add(self.max_wait)
                .is_some_and(|deadline| deadline <= now);
            if !is_due {
                break;
            }
            let id = id.clone();
            due.extend(self.close(&id));
        }
        due
    }

    /// When the oldest partial batch becomes due; `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Instant> {
        let (&(opened_at, _), _) = self.by_age.first_key_value()?;
        // A deadline beyond what `Instant` can hold never comes; `flush` still sends the batch.
        opened_at.checked_add(self.max_wait)
    }

    /// Every pending record (end of stream), oldest group first.
    pub fn flush(&mut self) -> Vec<Batch<T>> {
        let ids: Vec<GroupId> = std::mem::take(&mut self.by_age).into_values().collect();
        ids.iter().filter_map(|id| self.close(id)).collect()
    }

    /// Records waiting in open batches.
    pub fn pending_len(&self) -> usize {
        self.pending
    }

    /// Closes the open batch of `id`, if any.
    fn close(&mut self, id: &GroupId) -> Option<Batch<T>> {
        let (id, mut open) = self.open.remove_entry(id)?;
        self.by_age.remove(&open.age);
        self.pending -= open.items.len();
        if id.method != HttpMethod::Get {
            open.body.extend_from_slice(self.suffix);
        }
        Some(Batch {
            call: PlannedCall {
                method: id.method,
                url: id.url,
                headers: id.headers,
                // Takes the vector over without a copy.
                body: open.body.into(),
            },
            group_key: id.group_key,
            items: open.items,
            opened_at: open.age.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    fn url(path: &str) -> Url {
        Url::parse("https://api.groovehq.com/v1/")
            .unwrap()
            .join(path)
            .unwrap()
    }

    fn call_to(path: &str, body: &str) -> PlannedCall {
        PlannedCall {
            method: HttpMethod::Post,
            url: url(path),
            headers: Arc::from([]),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    fn call(body: &str) -> PlannedCall {
        call_to("bulk", body)
    }

    fn batcher(size: u32, max_wait_ms: u64, grouping: GroupingAlgorithm) -> Batcher<u32> {
        Batcher::new(&Batching {
            enabled: true,
            batch_size: size,
            max_wait_ms,
            grouping,
            group_by_attribute: None,
            envelope: BatchEnvelope::JsonArray,
        })
    }

    fn text(batch: &Batch<u32>) -> &str {
        std::str::from_utf8(&batch.call.body).unwrap()
    }

    #[test]
    fn full_batches_leave_on_push() {
        let start = Instant::now();
        let mut batcher = batcher(3, 1000, GroupingAlgorithm::ArrivalOrder);
        assert!(batcher.push(start, call("{\"a\":1}"), None, 1).is_empty());
        assert!(batcher
            .push(start, call(" {\"a\": 2} "), None, 2)
            .is_empty());
        assert_eq!(batcher.pending_len(), 2);
        let full = batcher.push(start, call("{\"a\":3}"), None, 3);
        assert_eq!(full.len(), 1);
        assert_eq!(text(&full[0]), "[{\"a\":1}, {\"a\": 2} ,{\"a\":3}]");
        assert_eq!(full[0].items, [1, 2, 3]);
        assert_eq!(full[0].call.url, url("bulk"));
        assert_eq!(full[0].call.method, HttpMethod::Post);
        assert_eq!(full[0].opened_at, start);
        assert_eq!(batcher.pending_len(), 0);
        assert_eq!(batcher.next_deadline(), None);
        let parsed: Value = serde_json::from_slice(&full[0].call.body).unwrap();
        assert_eq!(parsed, json!([{"a": 1}, {"a": 2}, {"a": 3}]));

        let mut single = batcher_of_one();
        let out = single.push(start, call("{}"), None, 9);
        assert_eq!(out.len(), 1);
        assert_eq!(text(&out[0]), "[{}]");
    }

    fn batcher_of_one() -> Batcher<u32> {
        // Size 0 counts as 1.
        batcher(0, 1000, GroupingAlgorithm::ArrivalOrder)
    }

    #[test]
    fn partial_batches_leave_after_max_wait() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut batcher = batcher(10, 100, GroupingAlgorithm::AttributeValue);
        assert_eq!(batcher.next_deadline(), None);
        assert!(batcher.take_due(start).is_empty());
        batcher.push(start, call("1"), Some("a".into()), 1);
        batcher.push(start + ms(30), call("2"), Some("b".into()), 2);
        batcher.push(start + ms(60), call("3"), Some("a".into()), 3);
        assert_eq!(batcher.next_deadline(), Some(start + ms(100)));

        assert!(batcher.take_due(start + ms(99)).is_empty());
        let due = batcher.take_due(start + ms(100));
        assert_eq!(due.len(), 1);
        assert_eq!((text(&due[0]), due[0].items.clone()), ("[1,3]", vec![1, 3]));
        assert_eq!(due[0].group_key.as_deref(), Some("a"));
        assert_eq!(batcher.next_deadline(), Some(start + ms(130)));
        assert_eq!(batcher.pending_len(), 1);

        // A new batch for "a" starts its own clock.
        batcher.push(start + ms(120), call("4"), Some("a".into()), 4);
        let due = batcher.take_due(start + ms(500));
        let texts: Vec<&str> = due.iter().map(text).collect();
        assert_eq!(texts, ["[2]", "[4]"]);
        assert_eq!(batcher.pending_len(), 0);
        assert_eq!(batcher.next_deadline(), None);
    }

    #[test]
    fn zero_wait_makes_every_partial_batch_due_at_once() {
        let start = Instant::now();
        let mut batcher = batcher(10, 0, GroupingAlgorithm::ArrivalOrder);
        batcher.push(start, call("1"), None, 1);
        assert_eq!(batcher.next_deadline(), Some(start));
        assert_eq!(batcher.take_due(start).len(), 1);
    }

    #[test]
    fn attribute_grouping_keeps_one_batch_per_value() {
        let start = Instant::now();
        let mut batcher = batcher(2, 1000, GroupingAlgorithm::AttributeValue);
        assert!(batcher
            .push(start, call("\"a1\""), Some("a".into()), 1)
            .is_empty());
        assert!(batcher
            .push(start, call("\"b1\""), Some("b".into()), 2)
            .is_empty());
        // Records without the attribute are a group of their own.
        assert!(batcher.push(start, call("\"n1\""), None, 3).is_empty());
        let full = batcher.push(start, call("\"b2\""), Some("b".into()), 4);
        assert_eq!(full.len(), 1);
        assert_eq!(
            (text(&full[0]), full[0].items.clone()),
            ("[\"b1\",\"b2\"]", vec![2, 4])
        );
        let full = batcher.push(start, call("\"n2\""), None, 5);
        assert_eq!(
            (text(&full[0]), full[0].group_key.clone()),
            ("[\"n1\",\"n2\"]", None)
        );
        assert_eq!(batcher.pending_len(), 1);
    }

    #[test]
    fn rendered_request_grouping_keeps_one_batch_per_request() {
        let start = Instant::now();
        let mut batcher = batcher(2, 1000, GroupingAlgorithm::RenderedRequest);
        let key = |path: &str| Some(format!("POST {}", url(path)));
        assert!(batcher
            .push(
                start,
                call_to("tickets/1/messages", "1"),
                key("tickets/1/messages"),
                1
            )
            .is_empty());
        assert!(batcher
            .push(
                start,
                call_to("tickets/2/messages", "2"),
                key("tickets/2/messages"),
                2
            )
            .is_empty());
        let full = batcher.push(
            start,
            call_to("tickets/1/messages", "3"),
            key("tickets/1/messages"),
            3,
        );
        assert_eq!(full.len(), 1);
        assert_eq!(full[0].call.url, url("tickets/1/messages"));
        assert_eq!(full[0].items, [1, 3]);
        let rest = batcher.flush();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].call.url, url("tickets/2/messages"));
    }

    #[test]
    fn records_for_different_requests_never_share_a_batch() {
        let start = Instant::now();
        // Arrival order: a record for another URL closes the open batch first, so batches keep arrival order.
        let mut batcher = batcher(10, 1000, GroupingAlgorithm::ArrivalOrder);
        batcher.push(start, call_to("a", "1"), None, 1);
        batcher.push(start, call_to("a", "2"), None, 2);
        let closed = batcher.push(start, call_to("b", "3"), None, 3);
        assert_eq!(closed.len(), 1);
        assert_eq!(
            (closed[0].call.url.clone(), closed[0].items.clone()),
            (url("a"), vec![1, 2])
        );
        let other_headers = PlannedCall {
            headers: Arc::from([("X-A".to_string(), "1".to_string())]),
            ..call_to("b", "4")
        };
        let closed = batcher.push(start, other_headers, None, 4);
        assert_eq!(closed[0].items, [3]);
        assert_eq!(batcher.flush()[0].call.headers.len(), 1);

        // Attribute value: the same value on two URLs is two groups.
        let mut batcher = self::batcher(10, 1000, GroupingAlgorithm::AttributeValue);
        batcher.push(start, call_to("a", "1"), Some("k".into()), 1);
        batcher.push(start, call_to("b", "2"), Some("k".into()), 2);
        assert_eq!(batcher.flush().len(), 2);
    }

    #[test]
    fn wrapped_envelope_escapes_its_key() {
        let start = Instant::now();
        let mut batcher: Batcher<u32> = Batcher::new(&Batching {
            enabled: true,
            batch_size: 2,
            envelope: BatchEnvelope::Wrapped {
                key: "re\"cords\\".into(),
            },
            ..Batching::default()
        });
        batcher.push(start, call("{\"a\":1}"), None, 1);
        let full = batcher.push(start, call("[2]"), None, 2);
        assert_eq!(text(&full[0]), "{\"re\\\"cords\\\\\":[{\"a\":1},[2]]}");
        let parsed: Value = serde_json::from_slice(&full[0].call.body).unwrap();
        assert_eq!(parsed, json!({"re\"cords\\": [{"a": 1}, [2]]}));

        batcher.push(start, call("3"), None, 3);
        assert_eq!(text(&batcher.flush()[0]), "{\"re\\\"cords\\\\\":[3]}");
    }

    #[test]
    fn flush_sends_everything_oldest_group_first() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut batcher = batcher(10, 1000, GroupingAlgorithm::AttributeValue);
        batcher.push(start + ms(5), call("1"), Some("late".into()), 1);
        batcher.push(start, call("2"), Some("early".into()), 2);
        batcher.push(start + ms(5), call("3"), Some("later".into()), 3);
        batcher.push(start + ms(9), call("4"), Some("early".into()), 4);
        let keys: Vec<Option<String>> = batcher.flush().into_iter().map(|b| b.group_key).collect();
        assert_eq!(
            keys,
            [
                Some("early".into()),
                Some("late".into()),
                Some("later".into())
            ]
        );
        assert_eq!(batcher.pending_len(), 0);
        assert!(batcher.flush().is_empty());
        assert_eq!(batcher.next_deadline(), None);
    }

    #[test]
    fn get_batches_carry_no_body() {
        let start = Instant::now();
        let mut batcher = batcher(2, 1000, GroupingAlgorithm::ArrivalOrder);
        let get = || PlannedCall {
            method: HttpMethod::Get,
            body: Bytes::new(),
            ..call("")
        };
        batcher.push(start, get(), None, 1);
        let full = batcher.push(start, get(), None, 2);
        assert!(full[0].call.body.is_empty());
        assert_eq!(full[0].items, [1, 2]);
        assert_eq!(
            full[0].call.display_headers(),
            [("Authorization".to_string(), "Bearer ****".to_string())]
        );
    }
}
