//! The `/v1/` resources: routing of an authenticated, fault-free call to its handler.
//!
//! Handlers are synchronous functions over the locked [`Store`]; each answers an [`ApiResponse`].
//! Unmatched method/path pairs answer 404, as a Rails router does. Create endpoints go through
//! [`create`], which also serves the opt-in batches of `Faults::accept_batches`.

mod directory;
mod groups;
mod kb;
mod tickets;
mod webhooks;
mod widgets;

use axum::http::{Method, StatusCode};
use serde_json::{json, Map, Value};

use super::clock;
use super::store::Store;

/// Per-call context: where hrefs point and the time to stamp writes with.
pub(crate) struct Ctx<'a> {
    /// e.g. `http://127.0.0.1:8080/v1`.
    pub base: &'a str,
    /// Unix epoch seconds.
    pub now_secs: u64,
}

impl Ctx<'_> {
    /// The call's time as Groove formats timestamps.
    fn now(&self) -> String {
        clock::iso8601_secs(self.now_secs)
    }

    fn href(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }
}

pub(crate) struct ApiRequest<'a> {
    pub method: &'a Method,
    /// Percent-decoded path segments after `/v1/`.
    pub segments: Vec<String>,
    pub query: Vec<(String, String)>,
    /// The body's fields; empty for a batch.
    pub fields: &'a Map<String, Value>,
    /// The elements of a batch body ([`batch_items`]), only for a create endpoint while
    /// `Faults::accept_batches` is on.
    pub batch: Option<&'a [Value]>,
}

impl ApiRequest<'_> {
    fn query(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

pub(crate) struct ApiResponse {
    pub status: StatusCode,
    /// `None` answers an empty body.
    pub body: Option<Value>,
    pub location: Option<String>,
}

impl ApiResponse {
    fn ok(body: Value) -> Self {
        ApiResponse {
            status: StatusCode::OK,
            body: Some(body),
            location: None,
        }
    }

    fn created(body: Value, location: Option<String>) -> Self {
        ApiResponse {
            status: StatusCode::CREATED,
            body: Some(body),
            location,
        }
    }

    /// The PUTs on ticket sub-resources have an undocumented response (docs/groove-api.md §6.2); an
    /// empty 200 keeps a client from depending on a body Groove may not send.
    fn empty_ok() -> Self {
        ApiResponse {
            status: StatusCode::OK,
            body: None,
            location: None,
        }
    }

    fn no_content() -> Self {
        ApiResponse {
            status: StatusCode::NO_CONTENT,
            body: None,
            location: None,
        }
    }

    pub(crate) fn error(status: StatusCode, messages: Vec<String>) -> Self {
        // Groove's error body is undocumented (docs/groove-api.md §3); Rails' `{"errors": [...]}`
        // is the plausible guess.
        ApiResponse {
            status,
            body: Some(json!({ "errors": messages })),
            location: None,
        }
    }

    pub(crate) fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND, vec!["not found".into()])
    }

    fn invalid(problems: Vec<String>) -> Self {
        Self::error(StatusCode::UNPROCESSABLE_ENTITY, problems)
    }
}

/// Turns validation failures into a 422, so handlers can use `?`.
type Answer = Result<ApiResponse, ApiResponse>;

fn check(problems: super::params::Problems) -> Result<(), ApiResponse> {
    problems.into_result().map_err(ApiResponse::invalid)
}

/// The plural root key of a create endpoint (the only kind that takes a batch), `None` for
/// any other method and path. The handlers pass the same keys to [`create`].
fn batch_key(method: &Method, segments: &[String]) -> Option<&'static str> {
    if method != Method::POST {
        return None;
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match segments.as_slice() {
        ["tickets"] => Some("tickets"),
        ["tickets", _, "messages"] => Some("messages"),
        ["groups"] => Some("groups"),
        ["webhooks"] => Some("webhooks"),
        ["kb"] => Some("knowledge_bases"),
        ["kb", _, "articles"] => Some("articles"),
        ["kb", _, "categories"] => Some("categories"),
        ["widgets"] => Some("widgets"),
        _ => None,
    }
}

/// The elements of a batch sent to a create endpoint: a bare JSON array, or an object whose
/// only key is the endpoint's plural root key holding an array (`{"tickets": [...]}`, the shape
/// the batch is answered with). `None` when the call is not a batch.
pub(crate) fn batch_items<'v>(
    method: &Method,
    segments: &[String],
    parsed: &'v Value,
) -> Option<&'v [Value]> {
    let key = batch_key(method, segments)?;
    match parsed {
        Value::Array(items) => Some(items),
        Value::Object(wrapper) if wrapper.len() == 1 => match wrapper.get(key) {
            Some(Value::Array(items)) => Some(items),
            _ => None,
        },
        _ => None,
    }
}

/// A create endpoint, split so that a batch can check every element before creating any.
/// `prepare` validates one body against the store (its problems answer 422); `commit` creates
/// the resource and returns it rendered, with its `Location` if it has one.
///
/// One body answers 201 `{"<singular>": …}` with `Location`. A batch (`req.batch`) answers 201
/// `{"<plural>": [...]}` without `Location`; any invalid element makes it a 422 naming each bad
/// element as `<plural>[<index>]: <problem>`, with nothing created.
fn create<'a, P>(
    store: &mut Store,
    req: &ApiRequest<'a>,
    (singular, plural): (&str, &str),
    prepare: impl Fn(&Store, &'a Map<String, Value>) -> Result<P, Vec<String>>,
    mut commit: impl FnMut(&mut Store, P) -> (Value, Option<String>),
) -> Answer {
    let Some(items) = req.batch else {
        let prepared = prepare(store, req.fields).map_err(ApiResponse::invalid)?;
        let (value, location) = commit(store, prepared);
        return Ok(ApiResponse::created(root(singular, value), location));
    };
    if items.is_empty() {
        return Err(ApiResponse::error(
            StatusCode::BAD_REQUEST,
            vec!["a batch must contain at least one element".into()],
        ));
    }
    let mut prepared = Vec::with_capacity(items.len());
    let mut problems = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Value::Object(fields) = item else {
            return Err(ApiResponse::error(
                StatusCode::BAD_REQUEST,
                vec![format!("{plural}[{index}]: must be a JSON object")],
            ));
        };
        match prepare(store, fields) {
            Ok(one) => prepared.push(one),
            Err(found) => problems.extend(
                found
                    .into_iter()
                    .map(|problem| format!("{plural}[{index}]: {problem}")),
            ),
        }
    }
    if !problems.is_empty() {
        return Err(ApiResponse::invalid(problems));
    }
    let created: Vec<Value> = prepared
        .into_iter()
        .map(|one| commit(store, one).0)
        .collect();
    Ok(ApiResponse::created(root(plural, created.into()), None))
}

/// `{key: value}`.
fn root(key: &str, value: Value) -> Value {
    let mut object = Map::with_capacity(1);
    object.insert(key.to_owned(), value);
    Value::Object(object)
}

pub(crate) fn dispatch(store: &mut Store, ctx: &Ctx<'_>, req: &ApiRequest<'_>) -> ApiResponse {
    let segments: Vec<&str> = req.segments.iter().map(String::as_str).collect();
    let answer = match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["tickets"]) => tickets::list(store, ctx, req),
        ("POST", ["tickets"]) => tickets::create(store, ctx, req),
        ("GET", ["tickets", "count"]) => Ok(tickets::count(store)),
        ("GET", ["tickets", n]) => tickets::show(store, ctx, n),
        ("GET", ["tickets", n, "state"]) => tickets::show_state(store, n),
        ("PUT", ["tickets", n, "state"]) => tickets::update_state(store, ctx, req, n),
        ("GET", ["tickets", n, "assignee"]) => tickets::show_assignee(store, ctx, n),
        ("PUT", ["tickets", n, "assignee"]) => tickets::update_assignee(store, ctx, req, n),
        ("PUT", ["tickets", n, "assigned_group"]) => tickets::update_group(store, ctx, req, n),
        ("PUT", ["tickets", n, "priority"]) => tickets::update_priority(store, ctx, req, n),
        ("GET", ["tickets", n, "messages"]) => tickets::list_messages(store, ctx, req, n),
        ("POST", ["tickets", n, "messages"]) => tickets::create_message(store, ctx, req, n),
        ("GET", ["mailboxes"]) => Ok(directory::mailboxes(store, ctx)),
        ("GET", ["folders"]) => Ok(directory::folders(store)),
        ("GET", ["agents"]) => directory::agents(store, ctx, req),
        ("GET", ["customers"]) => Ok(directory::customers(store, ctx, req)),
        ("PUT", ["customers", email]) => directory::update_customer(store, ctx, req, email),
        ("GET", ["groups"]) => Ok(groups::list(store, ctx)),
        ("POST", ["groups"]) => groups::create(store, ctx, req),
        ("GET", ["groups", id]) => groups::show(store, ctx, id),
        ("PUT", ["groups", id]) => groups::update(store, ctx, req, id),
        ("DELETE", ["groups", id]) => groups::delete(store, ctx, id),
        ("POST", ["webhooks"]) => webhooks::create(store, ctx, req),
        ("DELETE", ["webhooks", id]) => webhooks::delete(store, id),
        ("POST", ["kb"]) => kb::create(store, ctx, req),
        ("PUT", ["kb", id]) => kb::update(store, ctx, req, id),
        ("PUT", ["kb", id, "settings"]) => kb::update_settings(store, ctx, req, id),
        ("POST", ["kb", id, "articles"]) => kb::create_article(store, ctx, req, id),
        ("PUT", ["kb", id, "articles", article]) => {
            kb::update_article(store, ctx, req, id, article)
        }
        ("POST", ["kb", id, "categories"]) => kb::create_category(store, ctx, req, id),
        ("GET", ["widgets"]) => Ok(widgets::list(store)),
        ("POST", ["widgets"]) => widgets::create(store, ctx, req),
        ("PUT", ["widgets", id]) => widgets::update(store, ctx, req, id),
        ("GET", ["widgets", id, "settings"]) => widgets::show_settings(store, id),
        ("PUT", ["widgets", id, "settings"]) => widgets::update_settings(store, ctx, req, id),
        _ => Err(ApiResponse::not_found()),
    };
    answer.unwrap_or_else(|failure| failure)
}

/// Everything the sandbox holds, for test assertions about side effects.
pub(crate) fn snapshot(store: &Store, ctx: &Ctx<'_>) -> Value {
    let tickets: Vec<Value> = store
        .tickets
        .iter()
        .map(|t| tickets::render_with_messages(t, &store.seeds.mailbox_id, ctx))
        .collect();
    let groups: Vec<Value> = store
        .groups
        .values()
        .map(|g| groups::render(g, ctx))
        .collect();
    let webhooks: Vec<Value> = store
        .webhooks
        .values()
        .map(webhooks::render_with_id)
        .collect();
    let kbs: Vec<Value> = store
        .knowledge_bases
        .values()
        .map(kb::render_with_children)
        .collect();
    let widgets: Vec<Value> = store
        .widgets
        .values()
        .map(widgets::render_with_settings)
        .collect();
    json!({
        "seeds": store.seeds,
        "tickets": tickets,
        "customers": store.customers.values().collect::<Vec<_>>(),
        "groups": groups,
        "webhooks": webhooks,
        "knowledge_bases": kbs,
        "widgets": widgets,
    })
}

/// `page` / `per_page` as Groove reads them: defaults 1 and 25, `per_page` capped at 50 (§5).
struct Page {
    page: usize,
    per_page: usize,
}

impl Page {
    fn from_query(req: &ApiRequest<'_>) -> Self {
        let number = |key: &str| req.query(key).and_then(|v| v.trim().parse::<usize>().ok());
        Page {
            page: number("page").filter(|p| *p >= 1).unwrap_or(1),
            per_page: number("per_page").filter(|p| *p >= 1).unwrap_or(25).min(50),
        }
    }

    /// The requested slice of `items` and the `meta` block describing it.
    fn apply<T>(&self, items: Vec<T>, list_href: &str) -> (Vec<T>, Value) {
        let total = items.len();
        let total_pages = total.div_ceil(self.per_page).max(1);
        let link = |page: usize| format!("{list_href}?page={page}&per_page={}", self.per_page);
        let next_page = (self.page < total_pages).then(|| link(self.page + 1));
        let prev_page = (self.page > 1).then(|| link(self.page - 1));
        let page_items = items
            .into_iter()
            .skip((self.page - 1).saturating_mul(self.per_page))
            .take(self.per_page)
            .collect();
        let meta = json!({
            "pagination": {
                "current_page": self.page,
                "total_pages": total_pages,
                "total_count": total,
                "next_page": next_page,
                "prev_page": prev_page,
            }
        });
        (page_items, meta)
    }
}
