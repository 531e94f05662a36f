//! Tickets, their sub-resources and messages (docs/groove-api.md §6.1–6.3).

use serde_json::{json, Map, Value};

use super::{check, Answer, ApiRequest, ApiResponse, Ctx, Page};
use crate::clock;
use crate::params::{flag, is_present, text, Problems};
use crate::store::{canonical_state, format_id, Message, Store, Ticket, TICKET_STATES};

/// Summary length Groove derives from the first message (docs/groove-api.md §6.1).
const SUMMARY_CHARS: usize = 100;

pub(super) fn create(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    super::create(store, req, ("ticket", "tickets"), prepare, |store, new| {
        commit(store, ctx, new)
    })
}

/// A validated create-ticket body.
struct NewTicket<'f> {
    fields: &'f Map<String, Value>,
    body: String,
    from: Contact<'f>,
    to: Contact<'f>,
    state: Option<&'static str>,
    assignee: Option<String>,
    assigned_group: Option<String>,
    tags: Option<Vec<String>>,
}

fn prepare<'f>(
    store: &Store,
    fields: &'f Map<String, Value>,
) -> Result<NewTicket<'f>, Vec<String>> {
    let mut problems = Problems::default();
    let body = required_text(fields, "body", &mut problems);
    let from = contact(fields, "from", &mut problems);
    let to = contact(fields, "to", &mut problems);
    let state = optional_state(fields, &mut problems);
    let assignee = optional_agent(store, fields, "assignee", &mut problems);
    let assigned_group = optional_group(store, fields, "assigned_group", &mut problems);
    let tags = optional_tags(fields, &mut problems);
    problems.into_result()?;
    let (Some(body), Some(from), Some(to)) = (body, from, to) else {
        // Unreachable: the problems above refused the body if any of them was missing.
        return Err(vec!["body, from and to are required".into()]);
    };
    Ok(NewTicket {
        fields,
        body,
        from,
        to,
        state,
        assignee,
        assigned_group,
        tags,
    })
}

fn commit(store: &mut Store, ctx: &Ctx<'_>, new: NewTicket<'_>) -> (Value, Option<String>) {
    let fields = new.fields;
    // A customer hash in `to`/`from` creates or updates that customer (docs/groove-api.md §8).
    let mut customer = None;
    for (email, attributes) in [&new.from, &new.to] {
        if store.agent_by_email_or_id(email).is_some() || store.is_mailbox_address(email) {
            continue;
        }
        store.upsert_customer(email, attributes.unwrap_or(&Map::new()));
        customer.get_or_insert_with(|| email.clone());
    }
    let created_at = sent_at(fields).unwrap_or(ctx.now_secs);
    let number = store.next_ticket_number();
    let message = Message {
        id: store.new_numeric_id(),
        body: new.body,
        author: Some(new.from.0),
        note: flag(fields, "note").unwrap_or(false),
        created_at,
    };
    let ticket = Ticket {
        number,
        title: text(fields, "subject"),
        state: new.state.unwrap_or("unread"),
        assignee: new.assignee,
        assigned_group: new.assigned_group,
        priority: None,
        tags: new.tags.unwrap_or_default(),
        starred: flag(fields, "starred").unwrap_or(false),
        customer,
        mailbox: text(fields, "mailbox"),
        created_at,
        updated_at: created_at,
        messages: vec![message],
    };
    let rendered = render(&ticket, &store.seeds.mailbox_id, ctx);
    store.tickets.push(ticket);
    (rendered, Some(ctx.href(&format!("tickets/{number}"))))
}

pub(super) fn list(store: &Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let assignee = req.query("assignee");
    let customer = req.query("customer").map(str::to_ascii_lowercase);
    let state = req.query("state");
    let folder_states = match req.query("folder") {
        Some(id) => match store.folders.iter().find(|f| f.id == id) {
            Some(folder) => Some(folder.states),
            None => return Err(ApiResponse::not_found()),
        },
        None => None,
    };
    let matching: Vec<&Ticket> = store
        .tickets
        .iter()
        .filter(|t| match assignee {
            None => true,
            Some("unassigned") => t.assignee.is_none(),
            Some(who) => t
                .assignee
                .as_deref()
                .is_some_and(|a| a.eq_ignore_ascii_case(who)),
        })
        .filter(|t| {
            customer.as_deref().is_none_or(|c| {
                t.customer
                    .as_deref()
                    .is_some_and(|tc| tc.eq_ignore_ascii_case(c))
            })
        })
        .filter(|t| state.is_none_or(|s| t.state == s))
        .filter(|t| folder_states.is_none_or(|states| states.contains(&t.state)))
        .collect();
    let (page, meta) = Page::from_query(req).apply(matching, &ctx.href("tickets"));
    let tickets: Vec<Value> = page
        .into_iter()
        .map(|t| render(t, &store.seeds.mailbox_id, ctx))
        .collect();
    Ok(ApiResponse::ok(json!({ "tickets": tickets, "meta": meta })))
}

/// A bare `{folder_id: count}` map, as GEM's spec shows (docs/groove-api.md §5). The `mailbox`
/// filter is ignored: the sandbox has one mailbox.
pub(super) fn count(store: &Store) -> ApiResponse {
    let counts: Map<String, Value> = store
        .folders
        .iter()
        .map(|folder| {
            let n = store
                .tickets
                .iter()
                .filter(|t| folder.states.contains(&t.state))
                .count();
            (folder.id.clone(), Value::from(n))
        })
        .collect();
    ApiResponse::ok(Value::Object(counts))
}

pub(super) fn show(store: &Store, ctx: &Ctx<'_>, number: &str) -> Answer {
    let ticket = find(store, number)?;
    let rendered = render(ticket, &store.seeds.mailbox_id, ctx);
    Ok(ApiResponse::ok(json!({ "ticket": rendered })))
}

pub(super) fn show_state(store: &Store, number: &str) -> Answer {
    let ticket = find(store, number)?;
    Ok(ApiResponse::ok(json!({ "state": ticket.state })))
}

pub(super) fn update_state(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    find(store, number)?;
    let mut problems = Problems::default();
    problems.require(req.fields, "state");
    let state = if is_present(req.fields.get("state")) {
        optional_state(req.fields, &mut problems)
    } else {
        None
    };
    check(problems)?;
    let ticket = find_mut(store, number)?;
    if let Some(state) = state {
        ticket.state = state;
    }
    ticket.updated_at = ctx.now_secs;
    Ok(ApiResponse::empty_ok())
}

/// The assignee as an agent object; `{}` when unassigned (docs/groove-api.md §6.2).
pub(super) fn show_assignee(store: &Store, ctx: &Ctx<'_>, number: &str) -> Answer {
    let ticket = find(store, number)?;
    let agent = ticket
        .assignee
        .as_deref()
        .and_then(|email| store.agent_by_email_or_id(email));
    Ok(ApiResponse::ok(match agent {
        Some(agent) => json!({ "agent": super::directory::render_agent(agent, ctx) }),
        None => json!({}),
    }))
}

pub(super) fn update_assignee(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    find(store, number)?;
    let mut problems = Problems::default();
    problems.require(req.fields, "assignee");
    let assignee = optional_agent(store, req.fields, "assignee", &mut problems);
    check(problems)?;
    let ticket = find_mut(store, number)?;
    ticket.assignee = assignee;
    ticket.updated_at = ctx.now_secs;
    Ok(ApiResponse::empty_ok())
}

/// The body key is `group`, not `assigned_group` (GEM; docs/groove-api.md §6.2); a name or an id.
pub(super) fn update_group(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    find(store, number)?;
    let mut problems = Problems::default();
    problems.require(req.fields, "group");
    let group = optional_group(store, req.fields, "group", &mut problems);
    check(problems)?;
    let ticket = find_mut(store, number)?;
    ticket.assigned_group = group;
    ticket.updated_at = ctx.now_secs;
    Ok(ApiResponse::empty_ok())
}

/// Allowed priority values are undocumented, so any text is kept.
pub(super) fn update_priority(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    find(store, number)?;
    let mut problems = Problems::default();
    let priority = required_text(req.fields, "priority", &mut problems);
    check(problems)?;
    let ticket = find_mut(store, number)?;
    ticket.priority = priority;
    ticket.updated_at = ctx.now_secs;
    Ok(ApiResponse::empty_ok())
}

pub(super) fn list_messages(
    store: &Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    let ticket = find(store, number)?;
    let href = ctx.href(&format!("tickets/{}/messages", ticket.number));
    let (page, meta) = Page::from_query(req).apply(ticket.messages.iter().collect(), &href);
    let messages: Vec<Value> = page
        .into_iter()
        .map(|m| render_message(m, ticket, store, ctx))
        .collect();
    Ok(ApiResponse::ok(
        json!({ "messages": messages, "meta": meta }),
    ))
}

pub(super) fn create_message(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    number: &str,
) -> Answer {
    find(store, number)?;
    let prepare = |_: &Store, fields: &Map<String, Value>| {
        let mut problems = Problems::default();
        let body = required_text(fields, "body", &mut problems);
        problems.into_result()?;
        Ok(Message {
            // Allocated on commit.
            id: 0,
            body: body.unwrap_or_default(),
            author: text(fields, "author"),
            note: flag(fields, "note").unwrap_or(false),
            created_at: sent_at(fields).unwrap_or(ctx.now_secs),
        })
    };
    // Groove's status for this call was not captured (docs/groove-api.md §6.3); no `Location`.
    let commit = |store: &mut Store, mut message: Message| {
        message.id = store.new_numeric_id();
        let Ok(ticket) = find_mut(store, number) else {
            // Unreachable: the ticket was found above and the store is locked.
            return (Value::Null, None);
        };
        ticket.updated_at = ctx.now_secs;
        ticket.messages.push(message);
        let rendered = find(store, number)
            .ok()
            .and_then(|ticket| {
                let message = ticket.messages.last()?;
                Some(render_message(message, ticket, store, ctx))
            })
            .unwrap_or(Value::Null);
        (rendered, None)
    };
    super::create(store, req, ("message", "messages"), prepare, commit)
}

fn find<'s>(store: &'s Store, number: &str) -> Result<&'s Ticket, ApiResponse> {
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| store.tickets.get(n))
        .ok_or_else(ApiResponse::not_found)
}

fn find_mut<'s>(store: &'s mut Store, number: &str) -> Result<&'s mut Ticket, ApiResponse> {
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| store.tickets.get_mut(n))
        .ok_or_else(ApiResponse::not_found)
}

/// A client-supplied `sent_at` backdates the record; an unreadable one is ignored.
fn sent_at(fields: &Map<String, Value>) -> Option<u64> {
    text(fields, "sent_at")
        .and_then(|s| clock::parse_timestamp(&s))
        .map(clock::unix_secs)
}

fn required_text(
    fields: &Map<String, Value>,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    if !is_present(fields.get(key)) {
        problems.add(format!("{key} is required"));
        return None;
    }
    let value = text(fields, key);
    if value.is_none() {
        problems.add(format!("{key} must be a string"));
    }
    value
}

type Contact<'a> = (String, Option<&'a Map<String, Value>>);

/// `from` / `to`: an email, or a customer hash whose `email` is required (docs/groove-api.md §6.1).
fn contact<'f>(
    fields: &'f Map<String, Value>,
    key: &str,
    problems: &mut Problems,
) -> Option<Contact<'f>> {
    let (email, attributes) = match fields.get(key) {
        value if !is_present(value) => {
            problems.add(format!("{key} is required"));
            return None;
        }
        Some(Value::String(email)) => (email.trim().to_owned(), None),
        Some(Value::Object(hash)) => match text(hash, "email") {
            Some(email) => (email, Some(hash)),
            None => {
                problems.add(format!("{key} email is required"));
                return None;
            }
        },
        _ => {
            problems.add(format!("{key} must be an email or a customer hash"));
            return None;
        }
    };
    if !looks_like_email(&email) {
        problems.add(format!("{key} is not a valid email"));
        return None;
    }
    Some((email, attributes))
}

fn looks_like_email(text: &str) -> bool {
    match text.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty() && domain.contains('.') && !text.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn optional_state(fields: &Map<String, Value>, problems: &mut Problems) -> Option<&'static str> {
    let value = fields.get("state")?;
    if value.is_null() {
        return None;
    }
    let state = value.as_str().map(str::trim).and_then(canonical_state);
    if state.is_none() {
        problems.add(format!("state must be one of {}", TICKET_STATES.join(", ")));
    }
    state
}

/// An agent named by email or id; the agent's email is what Groove shows as `assignee`.
fn optional_agent(
    store: &Store,
    fields: &Map<String, Value>,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    if !is_present(fields.get(key)) {
        return None;
    }
    let agent = text(fields, key).and_then(|who| store.agent_by_email_or_id(&who));
    if agent.is_none() {
        problems.add(format!("{key} is not an agent of this account"));
    }
    agent.map(|a| a.email.clone())
}

/// A group named by name (documented) or id (unconfirmed but harmless to accept).
fn optional_group(
    store: &Store,
    fields: &Map<String, Value>,
    key: &str,
    problems: &mut Problems,
) -> Option<String> {
    if !is_present(fields.get(key)) {
        return None;
    }
    let group = text(fields, key).and_then(|g| store.group_by_name_or_id(&g));
    if group.is_none() {
        problems.add(format!("{key} is not a group of this account"));
    }
    group.map(|g| g.name.clone())
}

fn optional_tags(fields: &Map<String, Value>, problems: &mut Problems) -> Option<Vec<String>> {
    match fields.get("tags")? {
        Value::Null => None,
        Value::Array(items) => {
            let tags: Option<Vec<String>> = items
                .iter()
                .map(|t| t.as_str().map(str::to_owned))
                .collect();
            if tags.is_none() {
                problems.add("tags must be an array of strings".into());
            }
            tags
        }
        _ => {
            problems.add("tags must be an array of strings".into());
            None
        }
    }
}

pub(super) fn render(ticket: &Ticket, default_mailbox: &str, ctx: &Ctx<'_>) -> Value {
    let href = ctx.href(&format!("tickets/{}", ticket.number));
    let summary: String = ticket
        .messages
        .first()
        .map(|m| m.body.chars().take(SUMMARY_CHARS).collect())
        .unwrap_or_default();
    let mut links = Map::new();
    if let Some(assignee) = &ticket.assignee {
        links.insert(
            "assignee".into(),
            json!({ "href": ctx.href(&format!("agents/{assignee}")) }),
        );
    }
    if let Some(customer) = &ticket.customer {
        links.insert(
            "customer".into(),
            json!({ "href": ctx.href(&format!("customers/{customer}")) }),
        );
    }
    links.insert("state".into(), json!({ "href": format!("{href}/state") }));
    links.insert(
        "messages".into(),
        json!({ "href": format!("{href}/messages") }),
    );
    json!({
        "number": ticket.number,
        "title": ticket.title,
        "summary": summary,
        "state": ticket.state,
        "priority": ticket.priority,
        "assignee": ticket.assignee,
        "assigned_group": ticket.assigned_group,
        "resolution_time": Value::Null,
        "closed_by": Value::Null,
        "tags": ticket.tags,
        "starred": ticket.starred,
        "message_count": ticket.messages.len(),
        "mailbox": ticket.mailbox.as_deref().unwrap_or(default_mailbox),
        "created_at": clock::iso8601_secs(ticket.created_at),
        "updated_at": clock::iso8601_secs(ticket.updated_at),
        "href": href,
        "links": links,
    })
}

pub(super) fn render_with_messages(ticket: &Ticket, default_mailbox: &str, ctx: &Ctx<'_>) -> Value {
    let mut value = render(ticket, default_mailbox, ctx);
    let messages: Vec<Value> = ticket
        .messages
        .iter()
        .map(|m| {
            json!({
                "id": format_id(m.id),
                "body": m.body,
                "author": m.author,
                "note": m.note,
                "created_at": clock::iso8601_secs(m.created_at),
            })
        })
        .collect();
    value["messages"] = Value::Array(messages);
    value
}

fn render_message(message: &Message, ticket: &Ticket, store: &Store, ctx: &Ctx<'_>) -> Value {
    let mut links = Map::new();
    if let Some(author) = &message.author {
        let kind = if store.agent_by_email_or_id(author).is_some() {
            "agents"
        } else {
            "customers"
        };
        links.insert(
            "author".into(),
            json!({ "href": ctx.href(&format!("{kind}/{author}")) }),
        );
    }
    links.insert(
        "ticket".into(),
        json!({ "href": ctx.href(&format!("tickets/{}", ticket.number)) }),
    );
    links.insert(
        "attachments".into(),
        json!({ "href": ctx.href(&format!("attachments?message={}", format_id(message.id))) }),
    );
    json!({
        "created_at": clock::iso8601_secs(message.created_at),
        "updated_at": clock::iso8601_secs(message.created_at),
        "note": message.note,
        "body": message.body,
        "plain_text_body": message.body,
        "href": ctx.href(&format!("messages/{}", format_id(message.id))),
        "links": links,
    })
}
