//! Widgets and widget settings (docs/groove-api.md §6.9).

use serde_json::{json, Map, Value};

use super::{check, Answer, ApiRequest, ApiResponse, Ctx};
use crate::params::{text, Problems};
use crate::store::{Store, Widget};

pub(super) fn list(store: &Store) -> ApiResponse {
    let widgets: Vec<Value> = store.widgets.values().map(render).collect();
    ApiResponse::ok(json!({ "widgets": widgets }))
}

pub(super) fn create(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let prepare = |_: &Store, fields: &Map<String, Value>| {
        let mut problems = Problems::default();
        problems.require(fields, "name");
        problems.into_result()?;
        Ok(text(fields, "name").unwrap_or_default())
    };
    let commit = |store: &mut Store, name: String| {
        let id = store.new_id();
        let widget = Widget {
            id: id.clone(),
            uuid: uuid::Uuid::new_v4().to_string(),
            name,
            created_at: ctx.now(),
            updated_at: ctx.now(),
            settings: Default::default(),
        };
        let rendered = render(&widget);
        store.widgets.insert(id.clone(), widget);
        (rendered, Some(ctx.href(&format!("widgets/{id}"))))
    };
    super::create(store, req, ("widget", "widgets"), prepare, commit)
}

/// The update's fields are undocumented beyond a presumed `name` (docs/groove-api.md §6.9).
pub(super) fn update(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>, id: &str) -> Answer {
    let widget = store
        .widgets
        .get_mut(id)
        .ok_or_else(ApiResponse::not_found)?;
    let mut problems = Problems::default();
    if req.fields.contains_key("name") {
        problems.require(req.fields, "name");
    }
    check(problems)?;
    if let Some(name) = text(req.fields, "name") {
        widget.name = name;
    }
    widget.updated_at = ctx.now();
    Ok(ApiResponse::ok(json!({ "widget": render(widget) })))
}

pub(super) fn show_settings(store: &Store, id: &str) -> Answer {
    let widget = store.widgets.get(id).ok_or_else(ApiResponse::not_found)?;
    Ok(ApiResponse::ok(json!({ "settings": settings(widget) })))
}

/// Settings are flat dotted keys (`{"contact.enabled": true}`); a nested object is what a client
/// sends when it has misread that, so it is refused instead of being stored under a wrong key.
pub(super) fn update_settings(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    id: &str,
) -> Answer {
    let widget = store
        .widgets
        .get_mut(id)
        .ok_or_else(ApiResponse::not_found)?;
    let mut problems = Problems::default();
    for (key, value) in req.fields {
        if value.is_object() {
            problems.add(format!(
                "{key} must not be a nested object; use flat dotted keys like {key}.enabled"
            ));
        }
    }
    check(problems)?;
    widget
        .settings
        .extend(req.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    widget.updated_at = ctx.now();
    Ok(ApiResponse::ok(json!({ "settings": settings(widget) })))
}

fn settings(widget: &Widget) -> Value {
    let mut settings = widget.settings.clone();
    settings.insert("published".into(), true.into());
    Value::Object(settings)
}

fn render(widget: &Widget) -> Value {
    json!({
        "id": widget.id,
        "uuid": widget.uuid,
        "name": widget.name,
        "published_settings": widget.settings,
        "created_at": widget.created_at,
        "updated_at": widget.updated_at,
    })
}

pub(super) fn render_with_settings(widget: &Widget) -> Value {
    let mut value = render(widget);
    value["settings"] = Value::Object(widget.settings.clone());
    value
}
