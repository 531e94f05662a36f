//! Read-mostly account data: mailboxes, folders, agents and customers
//! (docs/groove-api.md §5, §6.6).

use serde_json::{json, Map, Value};

use super::{check, Answer, ApiRequest, ApiResponse, Ctx, Page};
use crate::params::{text, Problems};
use crate::store::{Agent, Store, CUSTOMER_FIELDS};

pub(super) fn mailboxes(store: &Store, ctx: &Ctx<'_>) -> ApiResponse {
    let mailboxes: Vec<Value> = store
        .mailboxes
        .iter()
        .map(|m| {
            json!({
                "id": m.id,
                "email": m.email,
                "name": m.name,
                "links": { "folders": { "href": ctx.href(&format!("folders?mailbox={}", m.id)) } },
            })
        })
        .collect();
    ApiResponse::ok(json!({ "mailboxes": mailboxes }))
}

pub(super) fn folders(store: &Store) -> ApiResponse {
    let folders: Vec<Value> = store
        .folders
        .iter()
        .map(|f| json!({ "id": f.id, "name": f.name }))
        .collect();
    ApiResponse::ok(json!({ "folders": folders }))
}

pub(super) fn agents(store: &Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let members = match req.query("group") {
        Some(id) => Some(
            &store
                .groups
                .get(id)
                .ok_or_else(ApiResponse::not_found)?
                .agent_ids,
        ),
        None => None,
    };
    let agents: Vec<Value> = store
        .agents
        .iter()
        .filter(|a| members.is_none_or(|ids| ids.contains(&a.id)))
        .map(|a| render_agent(a, ctx))
        .collect();
    Ok(ApiResponse::ok(json!({ "agents": agents })))
}

pub(super) fn render_agent(agent: &Agent, ctx: &Ctx<'_>) -> Value {
    json!({
        "id": agent.id,
        "email": agent.email,
        "first_name": agent.first_name,
        "last_name": agent.last_name,
        "href": ctx.href(&format!("agents/{}", agent.email)),
        "links": { "tickets": { "href": ctx.href(&format!("tickets?assignee={}", agent.email)) } },
    })
}

pub(super) fn customers(store: &Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> ApiResponse {
    let all: Vec<&Map<String, Value>> = store.customers.values().collect();
    let (page, meta) = Page::from_query(req).apply(all, &ctx.href("customers"));
    let customers: Vec<Value> = page.into_iter().map(|c| render_customer(c, ctx)).collect();
    ApiResponse::ok(json!({ "customers": customers, "meta": meta }))
}

/// `PUT /customers/:email`; the doc lists `email` as required in the body too. Unknown customers
/// are created: whether Groove answers 404 instead is not documented.
pub(super) fn update_customer(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    email: &str,
) -> Answer {
    let fields = req.fields;
    let mut problems = Problems::default();
    problems.require(fields, "email");
    if fields
        .get("custom")
        .is_some_and(|c| !c.is_object() && !c.is_null())
    {
        problems.add("custom must be a hash".into());
    }
    check(problems)?;
    let new_email = text(fields, "email").unwrap_or_else(|| email.to_owned());
    let mut attributes = store
        .customers
        .remove(&email.to_ascii_lowercase())
        .unwrap_or_default();
    for (key, value) in fields {
        if CUSTOMER_FIELDS.contains(&key.as_str()) {
            attributes.insert(key.clone(), value.clone());
        }
    }
    attributes.insert("email".into(), Value::String(new_email.clone()));
    let body = json!({ "customer": render_customer(&attributes, ctx) });
    store
        .customers
        .insert(new_email.to_ascii_lowercase(), attributes);
    Ok(ApiResponse::ok(body))
}

fn render_customer(attributes: &Map<String, Value>, ctx: &Ctx<'_>) -> Value {
    let mut customer = Map::new();
    for key in CUSTOMER_FIELDS {
        customer.insert(
            key.into(),
            attributes.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    let email = attributes
        .get("email")
        .and_then(Value::as_str)
        .unwrap_or_default();
    customer.insert(
        "href".into(),
        ctx.href(&format!("customers/{email}")).into(),
    );
    customer.insert(
        "links".into(),
        json!({ "tickets": { "href": ctx.href(&format!("tickets?customer={email}")) } }),
    );
    Value::Object(customer)
}
