//! Webhooks (docs/groove-api.md §6.4).

use serde_json::{json, Map, Value};

use super::{Answer, ApiRequest, ApiResponse, Ctx};
use crate::params::{text, Problems};
use crate::store::{Store, Webhook};

/// The 14 event names Groove documents; anything else is refused.
pub(crate) const EVENTS: [&str; 14] = [
    "ticket_started",
    "ticket_opened",
    "ticket_closed",
    "ticket_assigned",
    "ticket_priority_changed",
    "ticket_deleted",
    "ticket_tagged",
    "ticket_moved",
    "customer_replied",
    "customer_added",
    "agent_invited",
    "agent_archived",
    "note_added",
    "agent_replied",
];

/// The documented body carries no id, so the id is only revealed through `Location`, which §3
/// lists for this call; `DELETE /webhooks/:id` takes that id.
pub(super) fn create(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let commit = |store: &mut Store, mut webhook: Webhook| {
        let id = store.new_id();
        webhook.id.clone_from(&id);
        let rendered = render(&webhook);
        store.webhooks.insert(id.clone(), webhook);
        (rendered, Some(ctx.href(&format!("webhooks/{id}"))))
    };
    super::create(store, req, ("webhook", "webhooks"), prepare, commit)
}

fn prepare(_: &Store, fields: &Map<String, Value>) -> Result<Webhook, Vec<String>> {
    let mut problems = Problems::default();
    problems.require(fields, "event");
    problems.require(fields, "url");
    let event = text(fields, "event");
    if let Some(event) = &event {
        if !EVENTS.contains(&event.as_str()) {
            problems.add(format!("event {event} is not a known webhook event"));
        }
    }
    let url = text(fields, "url");
    if let Some(url) = &url {
        let scheme_ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
        if !scheme_ok {
            problems.add("url must be an absolute http or https URL".into());
        }
    }
    problems.into_result()?;
    Ok(Webhook {
        // Allocated on commit.
        id: String::new(),
        event: event.unwrap_or_default(),
        url: url.unwrap_or_default(),
    })
}

pub(super) fn delete(store: &mut Store, id: &str) -> Answer {
    store
        .webhooks
        .remove(id)
        .ok_or_else(ApiResponse::not_found)?;
    Ok(ApiResponse::no_content())
}

fn render(webhook: &Webhook) -> Value {
    json!({ "event": webhook.event, "url": webhook.url, "state": "active" })
}

pub(super) fn render_with_id(webhook: &Webhook) -> Value {
    let mut value = render(webhook);
    value["id"] = Value::String(webhook.id.clone());
    value
}
