//! Groups (docs/groove-api.md §6.5).

use serde_json::{json, Map, Value};

use super::{check, Answer, ApiRequest, ApiResponse, Ctx};
use crate::params::{is_present, text, Problems};
use crate::store::{Group, Store};

pub(super) fn list(store: &Store, ctx: &Ctx<'_>) -> ApiResponse {
    let groups: Vec<Value> = store
        .groups
        .values()
        .map(|g| json!({ "id": g.id, "name": g.name, "links": links(g, ctx) }))
        .collect();
    ApiResponse::ok(json!({ "groups": groups }))
}

pub(super) fn show(store: &Store, ctx: &Ctx<'_>, id: &str) -> Answer {
    let group = store.groups.get(id).ok_or_else(ApiResponse::not_found)?;
    Ok(ApiResponse::ok(json!({ "group": render(group, ctx) })))
}

pub(super) fn create(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let prepare = |store: &Store, fields: &Map<String, Value>| {
        let mut problems = Problems::default();
        problems.require(fields, "name");
        let agent_ids = agents(store, fields, &mut problems);
        problems.into_result()?;
        Ok(Group {
            // Allocated on commit.
            id: String::new(),
            name: text(fields, "name").unwrap_or_default(),
            description: text(fields, "description"),
            agent_ids: agent_ids.unwrap_or_default(),
        })
    };
    let commit = |store: &mut Store, mut group: Group| {
        let id = store.new_id();
        group.id.clone_from(&id);
        let rendered = render(&group, ctx);
        store.groups.insert(id.clone(), group);
        (rendered, Some(ctx.href(&format!("groups/{id}"))))
    };
    super::create(store, req, ("group", "groups"), prepare, commit)
}

pub(super) fn update(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>, id: &str) -> Answer {
    if !store.groups.contains_key(id) {
        return Err(ApiResponse::not_found());
    }
    let fields = req.fields;
    let mut problems = Problems::default();
    if fields.contains_key("name") {
        problems.require(fields, "name");
    }
    let agent_ids = agents(store, fields, &mut problems);
    check(problems)?;
    let group = store
        .groups
        .get_mut(id)
        .ok_or_else(ApiResponse::not_found)?;
    if let Some(name) = text(fields, "name") {
        group.name = name;
    }
    if fields.contains_key("description") {
        group.description = text(fields, "description");
    }
    if let Some(agent_ids) = agent_ids {
        group.agent_ids = agent_ids;
    }
    Ok(ApiResponse::ok(json!({ "group": render(group, ctx) })))
}

/// Deleting answers 200 with the deleted group (docs/groove-api.md §3).
pub(super) fn delete(store: &mut Store, ctx: &Ctx<'_>, id: &str) -> Answer {
    let group = store.groups.remove(id).ok_or_else(ApiResponse::not_found)?;
    Ok(ApiResponse::ok(json!({ "group": render(&group, ctx) })))
}

/// `agents`: agent emails or ids; an unknown one is refused rather than silently dropped.
fn agents(
    store: &Store,
    fields: &Map<String, Value>,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let value = fields.get("agents")?;
    if !is_present(Some(value)) {
        return Some(Vec::new());
    }
    let Some(items) = value.as_array() else {
        problems.add("agents must be an array of agent emails or ids".into());
        return None;
    };
    let mut ids = Vec::with_capacity(items.len());
    for item in items {
        let key = match item {
            Value::String(s) => s.trim().to_owned(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match store.agent_by_email_or_id(&key) {
            Some(agent) if !ids.contains(&agent.id) => ids.push(agent.id.clone()),
            Some(_) => {}
            None => problems.add(format!("agents contains an unknown agent: {key}")),
        }
    }
    Some(ids)
}

fn links(group: &Group, ctx: &Ctx<'_>) -> Value {
    json!({ "agents": { "href": ctx.href(&format!("agents?group={}", group.id)) } })
}

pub(super) fn render(group: &Group, ctx: &Ctx<'_>) -> Value {
    json!({
        "id": group.id,
        "name": group.name,
        "description": group.description,
        "agent_ids": group.agent_ids,
        "links": links(group, ctx),
    })
}
