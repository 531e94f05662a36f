//! The sandbox's in-memory Groove account: resources, id allocation and seed data.

use std::collections::{BTreeMap, HashSet, VecDeque};

use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Ids of the data every sandbox starts with, so demos work without setup. They are fixed, so a
/// demo configuration can name them; several start with `0` because Groove ids may (§4).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seeds {
    /// The one mailbox.
    pub mailbox_id: String,
    /// Its address, usable as a ticket's `to` or `mailbox`.
    pub mailbox_email: String,
    /// Two agents' ids.
    pub agent_ids: Vec<String>,
    /// The same agents' emails, usable as `assignee` or `from`.
    pub agent_emails: Vec<String>,
    /// A group containing both agents.
    pub group_id: String,
    /// Its name, usable as `assigned_group` / `group`.
    pub group_name: String,
    /// A knowledge base.
    pub knowledge_base_id: String,
    /// An article in that knowledge base.
    pub article_id: String,
    /// A widget.
    pub widget_id: String,
}

impl Default for Seeds {
    fn default() -> Self {
        Seeds {
            mailbox_id: "0412191130".into(),
            mailbox_email: "support@sandbox.example.com".into(),
            agent_ids: vec!["0759213294".into(), "1840377521".into()],
            agent_emails: vec![
                "alice@sandbox.example.com".into(),
                "bob@sandbox.example.com".into(),
            ],
            group_id: "0230418861".into(),
            group_name: "Support".into(),
            knowledge_base_id: "0098123454".into(),
            article_id: "0534987112".into(),
            widget_id: "0871230456".into(),
        }
    }
}

/// The ticket states Groove accepts (docs/groove-api.md §0, §6.1); `open` is not one of them.
pub(crate) const TICKET_STATES: [&str; 5] = ["unread", "opened", "pending", "closed", "spam"];

pub(crate) fn canonical_state(state: &str) -> Option<&'static str> {
    TICKET_STATES.iter().copied().find(|s| *s == state)
}

/// Kept compact (numbers instead of strings where possible): a benchmark creates millions.
pub(crate) struct Ticket {
    pub number: u64,
    pub title: Option<String>,
    pub state: &'static str,
    pub assignee: Option<String>,
    pub assigned_group: Option<String>,
    pub priority: Option<String>,
    pub tags: Vec<String>,
    pub starred: bool,
    pub customer: Option<String>,
    /// `None`: the default mailbox.
    pub mailbox: Option<String>,
    /// Unix epoch seconds.
    pub created_at: u64,
    pub updated_at: u64,
    pub messages: Vec<Message>,
}

pub(crate) struct Message {
    pub id: u64,
    pub body: String,
    pub author: Option<String>,
    pub note: bool,
    /// Unix epoch seconds.
    pub created_at: u64,
}

pub(crate) struct Mailbox {
    pub id: String,
    pub email: String,
    pub name: String,
}

/// A mailbox folder; `GET /tickets/count` counts tickets per folder by state.
pub(crate) struct Folder {
    pub id: String,
    pub name: &'static str,
    pub states: &'static [&'static str],
}

pub(crate) struct Agent {
    pub id: String,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
}

pub(crate) struct Group {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub agent_ids: Vec<String>,
}

pub(crate) struct Webhook {
    pub id: String,
    pub event: String,
    pub url: String,
}

/// KB fields are undocumented (docs/groove-api.md §6.7), so whatever was sent is kept as is.
pub(crate) struct KnowledgeBase {
    pub id: String,
    pub fields: Map<String, Value>,
    pub settings: Map<String, Value>,
    pub created_at: String,
    pub updated_at: String,
    pub articles: BTreeMap<String, Map<String, Value>>,
    pub categories: BTreeMap<String, Map<String, Value>>,
}

pub(crate) struct Widget {
    pub id: String,
    pub uuid: String,
    pub name: String,
    pub created_at: String,
    pub updated_at: String,
    pub settings: Map<String, Value>,
}

pub(crate) struct Store {
    /// Fixed ids (seeds); generated ids skip them.
    claimed_ids: HashSet<u64>,
    ids: IdSequence,
    pub seeds: Seeds,
    pub tickets: Tickets,
    /// Keyed by lowercased email; values are the customer's attributes including `email`.
    pub customers: BTreeMap<String, Map<String, Value>>,
    pub mailboxes: Vec<Mailbox>,
    pub folders: Vec<Folder>,
    pub agents: Vec<Agent>,
    pub groups: BTreeMap<String, Group>,
    pub webhooks: BTreeMap<String, Webhook>,
    pub knowledge_bases: BTreeMap<String, KnowledgeBase>,
    pub widgets: BTreeMap<String, Widget>,
}

impl Store {
    /// A store holding the seed data, timestamped `now`, keeping at most `max_stored_tickets`.
    pub(crate) fn seeded(now: &str, max_stored_tickets: usize) -> Self {
        let seeds = Seeds::default();
        let mut store = Store {
            claimed_ids: HashSet::new(),
            ids: IdSequence::random(),
            seeds: seeds.clone(),
            tickets: Tickets::new(max_stored_tickets),
            customers: BTreeMap::new(),
            mailboxes: Vec::new(),
            folders: Vec::new(),
            agents: Vec::new(),
            groups: BTreeMap::new(),
            webhooks: BTreeMap::new(),
            knowledge_bases: BTreeMap::new(),
            widgets: BTreeMap::new(),
        };
        let mailbox_id = store.claim(&seeds.mailbox_id);
        store.mailboxes.push(Mailbox {
            id: mailbox_id,
            email: seeds.mailbox_email.clone(),
            name: "Support".into(),
        });
        let folders: [(&str, &'static str, &'static [&'static str]); 4] = [
            ("0301982344", "Inbox", &["unread", "opened"]),
            ("0301982345", "Pending", &["pending"]),
            ("0301982346", "Closed", &["closed"]),
            ("0301982347", "Spam", &["spam"]),
        ];
        for (id, name, states) in folders {
            let id = store.claim(id);
            store.folders.push(Folder { id, name, states });
        }
        let names = [("Alice", "Agent"), ("Bob", "Agent")];
        for ((id, email), (first, last)) in
            seeds.agent_ids.iter().zip(&seeds.agent_emails).zip(names)
        {
            let id = store.claim(id);
            store.agents.push(Agent {
                id,
                email: email.clone(),
                first_name: first.into(),
                last_name: last.into(),
            });
        }
        let group_id = store.claim(&seeds.group_id);
        store.groups.insert(
            group_id.clone(),
            Group {
                id: group_id,
                name: seeds.group_name.clone(),
                description: Some("Everyone answering customers".into()),
                agent_ids: seeds.agent_ids.clone(),
            },
        );
        let kb_id = store.claim(&seeds.knowledge_base_id);
        let article_id = store.claim(&seeds.article_id);
        let mut article = Map::new();
        for (key, value) in [
            ("id", Value::from(article_id.clone())),
            ("knowledge_base_id", kb_id.clone().into()),
            ("title", "Getting started".into()),
            ("body", "<p>Welcome to the sandbox help center.</p>".into()),
            ("state", "published".into()),
            ("slug", "getting-started".into()),
            ("created_at", now.into()),
            ("updated_at", now.into()),
            ("published_at", now.into()),
        ] {
            article.insert(key.into(), value);
        }
        let mut kb_fields = Map::new();
        kb_fields.insert("title".into(), "Sandbox help center".into());
        store.knowledge_bases.insert(
            kb_id.clone(),
            KnowledgeBase {
                id: kb_id,
                fields: kb_fields,
                settings: Map::new(),
                created_at: now.into(),
                updated_at: now.into(),
                articles: BTreeMap::from([(article_id, article)]),
                categories: BTreeMap::new(),
            },
        );
        let widget_id = store.claim(&seeds.widget_id);
        let mut settings = Map::new();
        for (key, value) in [
            ("enabled", Value::Bool(true)),
            ("contact.enabled", true.into()),
            ("contact.id", seeds.mailbox_id.clone().into()),
            ("icon_position", "right".into()),
            ("widget_style", "default".into()),
            ("z_index", "9999".into()),
        ] {
            settings.insert(key.into(), value);
        }
        store.widgets.insert(
            widget_id.clone(),
            Widget {
                id: widget_id,
                uuid: "3f1c9a52-8d4e-4b7a-9c1e-2a6f0b5d7e81".into(),
                name: "Website widget".into(),
                created_at: now.into(),
                updated_at: now.into(),
                settings,
            },
        );
        store
    }

    fn claim(&mut self, id: &str) -> String {
        if let Ok(n) = id.parse() {
            self.claimed_ids.insert(n);
        }
        id.to_owned()
    }

    /// A fresh 10-digit id, possibly with leading zeros, unique within this sandbox.
    pub(crate) fn new_id(&mut self) -> String {
        format_id(self.new_numeric_id())
    }

    /// [`new_id`](Self::new_id) kept as a number, for records created by the million.
    pub(crate) fn new_numeric_id(&mut self) -> u64 {
        loop {
            let id = self.ids.next();
            if !self.claimed_ids.contains(&id) {
                return id;
            }
        }
    }

    pub(crate) fn next_ticket_number(&self) -> u64 {
        self.tickets.created() + 1
    }

    pub(crate) fn agent_by_email_or_id(&self, key: &str) -> Option<&Agent> {
        self.agents
            .iter()
            .find(|a| a.id == key || a.email.eq_ignore_ascii_case(key))
    }

    pub(crate) fn group_by_name_or_id(&self, key: &str) -> Option<&Group> {
        self.groups
            .get(key)
            .or_else(|| self.groups.values().find(|g| g.name == key))
    }

    pub(crate) fn is_mailbox_address(&self, email: &str) -> bool {
        self.mailboxes
            .iter()
            .any(|m| m.email.eq_ignore_ascii_case(email))
    }

    /// Creates or updates a customer from an email or a customer hash (docs/groove-api.md §8).
    pub(crate) fn upsert_customer(&mut self, email: &str, attributes: &Map<String, Value>) {
        let entry = self
            .customers
            .entry(email.to_ascii_lowercase())
            .or_default();
        entry.insert("email".into(), email.into());
        for (key, value) in attributes {
            if CUSTOMER_FIELDS.contains(&key.as_str()) && key != "email" {
                entry.insert(key.clone(), value.clone());
            }
        }
    }
}

/// Unique pseudo-random ids in `0..10^10` from O(1) state: `id = (a * n + b) mod 10^10` for
/// `n = 0, 1, 2, …` is a permutation of the range when `a` is coprime with 10^10 (odd and not a
/// multiple of 5). A set of every id handed out would grow by one entry per message forever.
struct IdSequence {
    a: u64,
    b: u64,
    n: u64,
}

const ID_SPACE: u64 = 10_000_000_000;

impl IdSequence {
    fn random() -> Self {
        let mut rng = rand::rng();
        let a = loop {
            let a = rng.random_range(ID_SPACE / 10..ID_SPACE);
            if a % 2 != 0 && a % 5 != 0 {
                break a;
            }
        };
        IdSequence {
            a,
            b: rng.random_range(0..ID_SPACE),
            n: 0,
        }
    }

    fn next(&mut self) -> u64 {
        let n = self.n;
        // 10^10 ids would take a benchmark days; wrapping would only start repeating ids.
        self.n = (self.n + 1) % ID_SPACE;
        let id = (u128::from(self.a) * u128::from(n) + u128::from(self.b)) % u128::from(ID_SPACE);
        u64::try_from(id).unwrap_or_default()
    }
}

/// Tickets by number. Numbers are consecutive from 1 and never reused, so a number is an index.
/// Only the newest `max_stored` tickets are kept: pushing beyond that evicts the oldest, after
/// which its number is unknown (404) like one never created. Storage grows in fixed chunks (a
/// benchmark creates millions of tickets, and doubling one vector would copy all of them while
/// the store is locked); an evicted slot is emptied at once and its chunk released once all of
/// its slots are, so at most one chunk of empty slots is held beyond `max_stored`.
pub(crate) struct Tickets {
    chunks: VecDeque<Vec<Option<Ticket>>>,
    /// Tickets ever created: the newest has this number.
    len: u64,
    /// Tickets evicted: the oldest stored has number `evicted + 1`.
    evicted: u64,
    /// Tickets in released chunks, a multiple of `TICKET_CHUNK`: `chunks[0]` starts after them.
    released: u64,
    max_stored: u64,
}

const TICKET_CHUNK: usize = 16_384;
const TICKET_CHUNK_U64: u64 = TICKET_CHUNK as u64;

impl Tickets {
    pub(crate) fn new(max_stored: usize) -> Self {
        Tickets {
            chunks: VecDeque::new(),
            len: 0,
            evicted: 0,
            released: 0,
            max_stored: u64::try_from(max_stored).unwrap_or(u64::MAX),
        }
    }

    /// Tickets ever created, including evicted ones.
    pub(crate) fn created(&self) -> u64 {
        self.len
    }

    pub(crate) fn push(&mut self, ticket: Ticket) {
        match self.chunks.back_mut() {
            Some(chunk) if chunk.len() < TICKET_CHUNK => chunk.push(Some(ticket)),
            _ => {
                // Small sandboxes (tests) should not pay for a whole chunk up front.
                let capacity = usize::try_from(self.max_stored.clamp(1, TICKET_CHUNK_U64))
                    .unwrap_or(TICKET_CHUNK);
                let mut chunk = Vec::with_capacity(capacity);
                chunk.push(Some(ticket));
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
        while self.len - self.evicted > self.max_stored {
            self.evict_oldest();
        }
    }

    fn evict_oldest(&mut self) {
        let offset = usize::try_from(self.evicted - self.released).unwrap_or(usize::MAX);
        // Dropped after the slot is emptied; the store lock is held either way.
        let oldest = self
            .chunks
            .front_mut()
            .and_then(|chunk| chunk.get_mut(offset))
            .and_then(Option::take);
        drop(oldest);
        self.evicted += 1;
        if self.evicted - self.released == TICKET_CHUNK_U64 {
            self.chunks.pop_front();
            self.released += TICKET_CHUNK_U64;
        }
    }

    pub(crate) fn get(&self, number: u64) -> Option<&Ticket> {
        let (chunk, slot) = self.position(number)?;
        self.chunks.get(chunk)?.get(slot)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, number: u64) -> Option<&mut Ticket> {
        let (chunk, slot) = self.position(number)?;
        self.chunks.get_mut(chunk)?.get_mut(slot)?.as_mut()
    }

    /// Stored tickets, oldest first.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Ticket> {
        self.chunks.iter().flatten().flatten()
    }

    fn position(&self, number: u64) -> Option<(usize, usize)> {
        if number <= self.evicted || number > self.len {
            return None;
        }
        let index = usize::try_from(number - 1 - self.released).ok()?;
        Some((index / TICKET_CHUNK, index % TICKET_CHUNK))
    }
}

/// Groove's id format: 10 digits, leading zeros kept.
pub(crate) fn format_id(id: u64) -> String {
    format!("{id:010}")
}

/// Customer attributes Groove documents (docs/groove-api.md §6.1, §6.6); others are dropped the way
/// Rails strong parameters would.
pub(crate) const CUSTOMER_FIELDS: [&str; 10] = [
    "email",
    "name",
    "about",
    "twitter_username",
    "title",
    "company_name",
    "phone_number",
    "location",
    "linkedin_username",
    "custom",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn ticket(number: u64) -> Ticket {
        Ticket {
            number,
            title: None,
            state: "unread",
            assignee: None,
            assigned_group: None,
            priority: None,
            tags: Vec::new(),
            starred: false,
            customer: None,
            mailbox: None,
            created_at: 0,
            updated_at: 0,
            messages: Vec::new(),
        }
    }

    #[test]
    fn tickets_are_found_by_number_across_chunks() {
        let mut tickets = Tickets::new(usize::MAX);
        let count = TICKET_CHUNK as u64 * 2 + 3;
        for number in 1..=count {
            tickets.push(ticket(number));
        }
        assert_eq!(tickets.len, count);
        for number in [1, TICKET_CHUNK as u64, TICKET_CHUNK as u64 + 1, count] {
            assert_eq!(tickets.get(number).map(|t| t.number), Some(number));
        }
        assert!(tickets.get(0).is_none());
        assert!(tickets.get(count + 1).is_none());
        assert_eq!(tickets.iter().count() as u64, count);
    }

    #[test]
    fn the_oldest_tickets_are_evicted_beyond_the_bound() {
        let max = TICKET_CHUNK + 5;
        let mut tickets = Tickets::new(max);
        let count = TICKET_CHUNK as u64 * 3 + 7;
        for number in 1..=count {
            tickets.push(ticket(number));
            let stored = number.min(max as u64);
            assert_eq!(tickets.get(number).map(|t| t.number), Some(number));
            assert!(tickets.get(number - stored).is_none());
            let oldest = number - stored + 1;
            assert_eq!(tickets.get(oldest).map(|t| t.number), Some(oldest));
        }
        assert_eq!(tickets.created(), count);
        assert_eq!(tickets.iter().count(), max);
        assert_eq!(
            tickets.iter().next().map(|t| t.number),
            Some(count - max as u64 + 1)
        );
        // At most one chunk of emptied slots is held beyond the bound.
        assert!(tickets.chunks.len() <= max / TICKET_CHUNK + 2);
        assert!(tickets.get_mut(count - max as u64).is_none());
    }

    #[test]
    fn a_zero_bound_keeps_nothing() {
        let mut tickets = Tickets::new(0);
        tickets.push(ticket(1));
        tickets.push(ticket(2));
        assert!(tickets.get(1).is_none() && tickets.get(2).is_none());
        assert_eq!(tickets.iter().count(), 0);
        assert_eq!(tickets.created(), 2);
    }

    #[test]
    fn new_ids_are_ten_digits_and_unique() {
        let mut store = Store::seeded("2024-01-01T00:00:00Z", 10);
        let ids: HashSet<String> = (0..100_000).map(|_| store.new_id()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(ids.iter().all(|id| id.len() == 10));
        assert!(!ids.contains(&store.seeds.group_id));
        assert!(ids.iter().any(|id| id.starts_with('0')));
    }

    #[test]
    fn generated_ids_skip_the_seeds() {
        let mut store = Store::seeded("2024-01-01T00:00:00Z", 10);
        let group: u64 = store.seeds.group_id.parse().unwrap();
        // Aim the sequence straight at a seed id: it must be skipped.
        store.ids = IdSequence {
            a: 3,
            b: group,
            n: 0,
        };
        assert_eq!(store.new_numeric_id(), group + 3);
    }
}
