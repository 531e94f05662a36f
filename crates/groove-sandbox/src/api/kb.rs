//! Knowledge bases, their settings, articles and categories (docs/groove-api.md §6.7–6.8).
//!
//! KB create/update/settings fields are undocumented, so any object is kept whole. Article and
//! category fields are documented; undocumented keys are dropped the way Rails strong parameters
//! would drop them.

use serde_json::{json, Map, Value};

use super::{check, Answer, ApiRequest, ApiResponse, Ctx};
use crate::params::{text, Problems};
use crate::store::{KnowledgeBase, Store};

const ARTICLE_FIELDS: [&str; 15] = [
    "author_id",
    "body",
    "category_id",
    "description",
    "featured",
    "meta_description",
    "og_description",
    "meta_robots",
    "og_image_url",
    "og_title",
    "page_title",
    "slug",
    "related_ids",
    "tags",
    "title",
];

const CATEGORY_FIELDS: [&str; 11] = [
    "article_ids",
    "author_id",
    "description",
    "meta_description",
    "meta_robots",
    "og_description",
    "og_image_url",
    "og_title",
    "page_title",
    "slug",
    "title",
];

/// Keys the sandbox owns; a client cannot overwrite them through a body.
const SERVER_FIELDS: [&str; 4] = ["id", "knowledge_base_id", "created_at", "updated_at"];

/// The path is inferred and no `Location` is documented (docs/groove-api.md §6.7), so none is sent.
pub(super) fn create(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> Answer {
    let prepare = |_: &Store, fields: &Map<String, Value>| Ok(client_fields(fields, None));
    let commit = |store: &mut Store, fields: Map<String, Value>| {
        let id = store.new_id();
        let kb = KnowledgeBase {
            id: id.clone(),
            fields,
            settings: Map::new(),
            created_at: ctx.now(),
            updated_at: ctx.now(),
            articles: Default::default(),
            categories: Default::default(),
        };
        let rendered = render(&kb);
        store.knowledge_bases.insert(id, kb);
        (rendered, None)
    };
    super::create(
        store,
        req,
        ("knowledge_base", "knowledge_bases"),
        prepare,
        commit,
    )
}

pub(super) fn update(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>, id: &str) -> Answer {
    let kb = find_mut(store, id)?;
    kb.fields.extend(client_fields(req.fields, None));
    kb.updated_at = ctx.now();
    Ok(ApiResponse::ok(json!({ "knowledge_base": render(kb) })))
}

pub(super) fn update_settings(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    id: &str,
) -> Answer {
    let kb = find_mut(store, id)?;
    kb.settings
        .extend(req.fields.iter().map(|(k, v)| (k.clone(), v.clone())));
    kb.updated_at = ctx.now();
    Ok(ApiResponse::ok(json!({ "settings": kb.settings })))
}

/// No field is required, not even `title` (docs/groove-api.md §6.8).
pub(super) fn create_article(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    kb_id: &str,
) -> Answer {
    find_mut(store, kb_id)?;
    let prepare = |store: &Store, fields: &Map<String, Value>| {
        let fields = client_fields(fields, Some(&ARTICLE_FIELDS));
        if let Some(kb) = store.knowledge_bases.get(kb_id) {
            validate_article(kb, &fields).into_result()?;
        }
        Ok(fields)
    };
    let commit =
        |store: &mut Store, fields: Map<String, Value>| commit_article(store, ctx, kb_id, fields);
    super::create(store, req, ("article", "articles"), prepare, commit)
}

fn commit_article(
    store: &mut Store,
    ctx: &Ctx<'_>,
    kb_id: &str,
    fields: Map<String, Value>,
) -> (Value, Option<String>) {
    let default_author = store.seeds.agent_ids.first().cloned().unwrap_or_default();
    let id = store.new_id();
    let Ok(kb) = find_mut(store, kb_id) else {
        // Unreachable: the knowledge base was found before and the store is locked.
        return (Value::Null, None);
    };
    let mut article = Map::new();
    let title = text(&fields, "title");
    let description = fields.get("description").cloned().unwrap_or(Value::Null);
    let title_value = title.clone().map(Value::String).unwrap_or(Value::Null);
    let defaults = [
        ("id", Value::String(id.clone())),
        ("knowledge_base_id", kb.id.clone().into()),
        ("author_id", default_author.into()),
        ("body", Value::Null),
        ("category_id", Value::Null),
        ("description", description.clone()),
        ("featured", false.into()),
        ("meta_description", description.clone()),
        ("og_description", description),
        ("meta_robots", "INDEX,FOLLOW".into()),
        ("og_image_url", Value::Null),
        ("og_title", title_value.clone()),
        ("page_title", title_value.clone()),
        (
            "slug",
            title
                .as_deref()
                .map(slugify)
                .map(Value::String)
                .unwrap_or(Value::Null),
        ),
        ("related_ids", json!([])),
        ("tags", json!([])),
        ("title", title_value),
        ("position", kb.articles.len().into()),
        ("ratings", json!({ "up": 0, "down": 0 })),
        ("state", "draft".into()),
        ("published_at", Value::Null),
        ("deleted_at", Value::Null),
        ("created_at", ctx.now().into()),
        ("updated_at", ctx.now().into()),
    ];
    for (key, value) in defaults {
        article.insert(key.into(), value);
    }
    article.extend(fields);
    let rendered = Value::Object(article.clone());
    kb.articles.insert(id.clone(), article);
    let location = ctx.href(&format!("kb/{kb_id}/articles/{id}"));
    (rendered, Some(location))
}

/// The update path is inferred (docs/groove-api.md §6.8); it takes the create fields.
pub(super) fn update_article(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    kb_id: &str,
    article_id: &str,
) -> Answer {
    let kb = find_mut(store, kb_id)?;
    if !kb.articles.contains_key(article_id) {
        return Err(ApiResponse::not_found());
    }
    let fields = client_fields(req.fields, Some(&ARTICLE_FIELDS));
    check(validate_article(kb, &fields))?;
    let article = kb
        .articles
        .get_mut(article_id)
        .ok_or_else(ApiResponse::not_found)?;
    article.extend(fields);
    article.insert("updated_at".into(), ctx.now().into());
    Ok(ApiResponse::ok(json!({ "article": article })))
}

pub(super) fn create_category(
    store: &mut Store,
    ctx: &Ctx<'_>,
    req: &ApiRequest<'_>,
    kb_id: &str,
) -> Answer {
    find_mut(store, kb_id)?;
    let prepare =
        |_: &Store, fields: &Map<String, Value>| Ok(client_fields(fields, Some(&CATEGORY_FIELDS)));
    let commit =
        |store: &mut Store, fields: Map<String, Value>| commit_category(store, ctx, kb_id, fields);
    super::create(store, req, ("category", "categories"), prepare, commit)
}

fn commit_category(
    store: &mut Store,
    ctx: &Ctx<'_>,
    kb_id: &str,
    fields: Map<String, Value>,
) -> (Value, Option<String>) {
    let id = store.new_id();
    let Ok(kb) = find_mut(store, kb_id) else {
        // Unreachable: the knowledge base was found before and the store is locked.
        return (Value::Null, None);
    };
    let mut category = Map::new();
    for key in CATEGORY_FIELDS {
        category.insert(key.into(), Value::Null);
    }
    category.extend(fields);
    for (key, value) in [
        ("id", Value::String(id.clone())),
        ("knowledge_base_id", kb.id.clone().into()),
        ("state", "draft".into()),
        ("published_at", Value::Null),
        ("created_at", ctx.now().into()),
        ("updated_at", ctx.now().into()),
    ] {
        category.insert(key.into(), value);
    }
    let rendered = Value::Object(category.clone());
    kb.categories.insert(id.clone(), category);
    let location = ctx.href(&format!("kb/{kb_id}/categories/{id}"));
    (rendered, Some(location))
}

fn find_mut<'s>(store: &'s mut Store, id: &str) -> Result<&'s mut KnowledgeBase, ApiResponse> {
    store
        .knowledge_bases
        .get_mut(id)
        .ok_or_else(ApiResponse::not_found)
}

/// The body's fields minus server-owned keys, optionally restricted to a documented list.
fn client_fields(fields: &Map<String, Value>, allowed: Option<&[&str]>) -> Map<String, Value> {
    fields
        .iter()
        .filter(|(key, _)| !SERVER_FIELDS.contains(&key.as_str()))
        .filter(|(key, _)| allowed.is_none_or(|allowed| allowed.contains(&key.as_str())))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn validate_article(kb: &KnowledgeBase, fields: &Map<String, Value>) -> Problems {
    let mut problems = Problems::default();
    for key in ["tags", "related_ids"] {
        if fields
            .get(key)
            .is_some_and(|v| !v.is_array() && !v.is_null())
        {
            problems.add(format!("{key} must be an array"));
        }
    }
    if let Some(category) = fields.get("category_id").filter(|v| !v.is_null()) {
        let key = match category {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        if !kb.categories.contains_key(&key) {
            problems.add(format!(
                "category_id {key} is not a category of this knowledge base"
            ));
        }
    }
    problems
}

fn slugify(title: &str) -> String {
    let mut slug = String::with_capacity(title.len());
    for c in title.chars() {
        if c.is_alphanumeric() {
            slug.extend(c.to_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    slug.trim_end_matches('-').to_owned()
}

fn render(kb: &KnowledgeBase) -> Value {
    let mut value = kb.fields.clone();
    value.insert("id".into(), kb.id.clone().into());
    value.insert("created_at".into(), kb.created_at.clone().into());
    value.insert("updated_at".into(), kb.updated_at.clone().into());
    Value::Object(value)
}

pub(super) fn render_with_children(kb: &KnowledgeBase) -> Value {
    let mut value = render(kb);
    value["settings"] = Value::Object(kb.settings.clone());
    value["articles"] = kb.articles.values().cloned().map(Value::Object).collect();
    value["categories"] = kb.categories.values().cloned().map(Value::Object).collect();
    value
}
