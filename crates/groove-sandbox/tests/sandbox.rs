//! The Groove sandbox over real HTTP: an in-process sandbox on 127.0.0.1:0 driven with reqwest.

use std::time::{Duration, Instant};

use groove_sandbox::{
    self as sandbox, Faults, RateLimit, ReceivedRequest, SandboxConfig, SandboxHandle,
    SandboxStats, ScriptedAnswer,
};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "test-key";

struct Sandbox {
    handle: SandboxHandle,
    client: Client,
}

impl Sandbox {
    async fn start() -> Self {
        Self::with(SandboxConfig {
            api_key: KEY.into(),
            ..SandboxConfig::default()
        })
        .await
    }

    async fn with(config: SandboxConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = sandbox::start(listener, config).await.unwrap();
        Sandbox {
            handle,
            client: Client::new(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.handle.base_url())
    }

    fn control(&self, path: &str) -> String {
        format!("{}/{path}", self.handle.control_url())
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(KEY);
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.unwrap()
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        self.call(Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> reqwest::Response {
        self.call(Method::DELETE, path, None).await
    }

    async fn create_ticket(&self) -> u64 {
        let response = self.post("tickets", ticket_body()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let body: Value = response.json().await.unwrap();
        body["ticket"]["number"].as_u64().unwrap()
    }

    fn ticket_count(&self) -> usize {
        self.handle.snapshot()["tickets"].as_array().unwrap().len()
    }
}

fn ticket_body() -> Value {
    json!({
        "body": "I'm here to help!",
        "from": "support@sandbox.example.com",
        "to": {"email": "billybob@example.com", "name": "Billy Bob", "company_name": "Bob Inc"},
    })
}

async fn status_and_json(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    let text = response.text().await.unwrap();
    let json = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, json)
}

/// Asserts a 422 whose errors mention `field`.
async fn assert_invalid(response: reqwest::Response, field: &str) {
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "body: {body}");
    let errors = body["errors"].as_array().expect("errors array");
    assert!(
        errors.iter().any(|e| e.as_str().unwrap().contains(field)),
        "no error names {field}: {body}"
    );
}

async fn assert_not_found(response: reqwest::Response) {
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body, json!({"errors": ["not found"]}));
}

fn is_ten_digit_id(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| s.len() == 10 && s.chars().all(|c| c.is_ascii_digit()))
}

// --- auth ---

#[tokio::test]
async fn requests_without_the_key_are_refused() {
    let sb = Sandbox::start().await;
    let missing = sb.client.get(sb.url("mailboxes")).send().await.unwrap();
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.json::<Value>().await.unwrap()["errors"][0],
        "invalid or missing access token"
    );

    let wrong = sb
        .client
        .get(sb.url("mailboxes"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);

    let wrong_query = sb
        .client
        .get(sb.url("mailboxes?access_token=nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_query.status(), StatusCode::UNAUTHORIZED);

    // The header wins, as in Doorkeeper: a right query token does not rescue a wrong header.
    let mixed = sb
        .client
        .get(sb.url(&format!("mailboxes?access_token={KEY}")))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(mixed.status(), StatusCode::UNAUTHORIZED);

    // A refused call has no side effect.
    let unauthorised_create = sb
        .client
        .post(sb.url("tickets"))
        .json(&ticket_body())
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorised_create.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(sb.ticket_count(), 0);
}

#[tokio::test]
async fn bearer_header_and_access_token_param_are_both_accepted() {
    let sb = Sandbox::start().await;
    let bearer = sb
        .client
        .get(sb.url("mailboxes"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), StatusCode::OK);
    let lowercase = sb
        .client
        .get(sb.url("mailboxes"))
        .header("authorization", format!("bearer {KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lowercase.status(), StatusCode::OK);
    let query = sb
        .client
        .get(sb.url(&format!("mailboxes?access_token={KEY}")))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), StatusCode::OK);
    let query_post = sb
        .client
        .post(sb.url(&format!("tickets?access_token={KEY}")))
        .json(&ticket_body())
        .send()
        .await
        .unwrap();
    assert_eq!(query_post.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn accepted_keys_can_be_rotated_and_revoked() {
    let sb = Sandbox::start().await;
    let status_with = |key: &'static str| {
        let request = sb.client.get(sb.url("mailboxes")).bearer_auth(key);
        async move { request.send().await.unwrap().status() }
    };
    // Both keys during a rotation, then only the new one.
    sb.handle.set_api_keys(&[KEY, "next-key"]);
    assert_eq!(status_with(KEY).await, StatusCode::OK);
    assert_eq!(status_with("next-key").await, StatusCode::OK);
    assert_eq!(sb.handle.api_keys(), [KEY, "next-key"]);
    let rotated = sb
        .client
        .put(sb.control("api_keys"))
        .json(&json!({"api_keys": ["next-key"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), StatusCode::NO_CONTENT);
    assert_eq!(status_with(KEY).await, StatusCode::UNAUTHORIZED);
    assert_eq!(status_with("next-key").await, StatusCode::OK);
    // Every key revoked.
    sb.handle.set_api_keys(&[]);
    assert_eq!(status_with("next-key").await, StatusCode::UNAUTHORIZED);
    let malformed = sb
        .client
        .put(sb.control("api_keys"))
        .json(&json!({"keys": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
}

// --- bodies ---

#[tokio::test]
async fn form_encoded_bodies_are_accepted() {
    let sb = Sandbox::start().await;
    let response = sb
        .client
        .post(sb.url("tickets"))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(concat!(
            "body=Hi+there&from=alice%40sandbox.example.com",
            "&to[email]=carol%40example.com&to[name]=Carol&tags[]=vip&tags[]=new"
        ))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["ticket"]["summary"], "Hi there");
    assert_eq!(body["ticket"]["tags"], json!(["vip", "new"]));
    let recorded = sb.handle.requests();
    assert_eq!(
        recorded[0].json.as_ref().unwrap()["to"]["email"],
        "carol@example.com"
    );
}

#[tokio::test]
async fn array_and_malformed_bodies_are_bad_requests() {
    let sb = Sandbox::start().await;
    let array = sb
        .client
        .post(sb.url("tickets"))
        .bearer_auth(KEY)
        .json(&json!([ticket_body(), ticket_body()]))
        .send()
        .await
        .unwrap();
    let (status, body) = status_and_json(array).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["errors"][0].as_str().unwrap().contains("JSON object"));

    let malformed = sb
        .client
        .post(sb.url("tickets"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"body\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(sb.ticket_count(), 0);
}

#[tokio::test]
async fn a_body_without_content_type_contributes_no_fields() {
    let sb = Sandbox::start().await;
    let response = sb
        .client
        .post(sb.url("tickets"))
        .bearer_auth(KEY)
        .body(ticket_body().to_string())
        .send()
        .await
        .unwrap();
    assert_invalid(response, "body").await;
}

// --- tickets ---

#[tokio::test]
async fn creating_tickets_numbers_them_from_one() {
    let sb = Sandbox::start().await;
    let response = sb.post("tickets", ticket_body()).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(location, sb.url("tickets/1"));
    let body: Value = response.json().await.unwrap();
    let ticket = &body["ticket"];
    assert_eq!(ticket["number"], 1);
    assert_eq!(ticket["summary"], "I'm here to help!");
    assert_eq!(ticket["state"], "unread");
    assert_eq!(ticket["href"], location);
    for key in [
        "title",
        "assignee",
        "assigned_group",
        "tags",
        "created_at",
        "updated_at",
    ] {
        assert!(ticket.get(key).is_some(), "ticket lacks {key}");
    }
    assert!(ticket["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(sb.create_ticket().await, 2);

    let shown: Value = sb.get("tickets/2").await.json().await.unwrap();
    assert_eq!(shown["ticket"]["number"], 2);
    // The customer hash created the customer (docs/groove-api.md §8).
    let customers: Value = sb.get("customers").await.json().await.unwrap();
    assert_eq!(customers["customers"][0]["email"], "billybob@example.com");
    assert_eq!(customers["customers"][0]["company_name"], "Bob Inc");
}

#[tokio::test]
async fn ticket_creation_requires_body_from_and_to() {
    let sb = Sandbox::start().await;
    let (status, body) = status_and_json(sb.post("tickets", json!({})).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["errors"],
        json!(["body is required", "from is required", "to is required"])
    );
    let mut without_to = ticket_body();
    without_to.as_object_mut().unwrap().remove("to");
    without_to["mailbox"] = json!("support@sandbox.example.com");
    assert_invalid(sb.post("tickets", without_to).await, "to").await;
    let mut blank_body = ticket_body();
    blank_body["body"] = json!("   ");
    assert_invalid(sb.post("tickets", blank_body).await, "body").await;
    let mut hash_without_email = ticket_body();
    hash_without_email["to"] = json!({"name": "Nobody"});
    assert_invalid(sb.post("tickets", hash_without_email).await, "to email").await;
    assert_eq!(sb.ticket_count(), 0);
}

#[tokio::test]
async fn ticket_states_are_the_five_groove_states() {
    let sb = Sandbox::start().await;
    let mut open = ticket_body();
    open["state"] = json!("open");
    assert_invalid(sb.post("tickets", open).await, "state").await;
    let mut pending = ticket_body();
    pending["state"] = json!("pending");
    let created: Value = sb.post("tickets", pending).await.json().await.unwrap();
    assert_eq!(created["ticket"]["state"], "pending");

    assert_invalid(
        sb.put("tickets/1/state", json!({"state": "open"})).await,
        "state",
    )
    .await;
    assert_invalid(sb.put("tickets/1/state", json!({})).await, "state").await;
    for state in ["unread", "opened", "pending", "closed", "spam"] {
        let response = sb.put("tickets/1/state", json!({ "state": state })).await;
        assert_eq!(response.status(), StatusCode::OK);
        let shown: Value = sb.get("tickets/1/state").await.json().await.unwrap();
        assert_eq!(shown, json!({ "state": state }));
    }
}

#[tokio::test]
async fn unknown_tickets_and_paths_are_not_found() {
    let sb = Sandbox::start().await;
    assert_not_found(sb.get("tickets/999").await).await;
    assert_not_found(sb.get("tickets/abc").await).await;
    assert_not_found(
        sb.put("tickets/999/state", json!({"state": "closed"}))
            .await,
    )
    .await;
    assert_not_found(sb.post("tickets/999/messages", json!({"body": "x"})).await).await;
    assert_not_found(sb.get("nope").await).await;
    assert_not_found(sb.get("me").await).await;
    assert_not_found(sb.call(Method::DELETE, "tickets", None).await).await;
    let outside = sb
        .client
        .get(format!("http://{}/nope", sb.handle.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn assignee_group_and_priority_updates() {
    let sb = Sandbox::start().await;
    let seeds = sb.handle.seeds();
    let n = sb.create_ticket().await;

    assert_invalid(
        sb.put(&format!("tickets/{n}/assignee"), json!({})).await,
        "assignee",
    )
    .await;
    assert_invalid(
        sb.put(
            &format!("tickets/{n}/assignee"),
            json!({"assignee": "stranger@example.com"}),
        )
        .await,
        "assignee",
    )
    .await;
    let assigned = sb
        .put(
            &format!("tickets/{n}/assignee"),
            json!({"assignee": seeds.agent_emails[0]}),
        )
        .await;
    assert_eq!(assigned.status(), StatusCode::OK);
    let agent: Value = sb
        .get(&format!("tickets/{n}/assignee"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(agent["agent"]["email"], seeds.agent_emails[0]);

    // The key is `group`; `assigned_group` is not what this endpoint reads.
    assert_invalid(
        sb.put(
            &format!("tickets/{n}/assigned_group"),
            json!({"assigned_group": seeds.group_name}),
        )
        .await,
        "group",
    )
    .await;
    let grouped = sb
        .put(
            &format!("tickets/{n}/assigned_group"),
            json!({"group": seeds.group_name}),
        )
        .await;
    assert_eq!(grouped.status(), StatusCode::OK);

    assert_invalid(
        sb.put(&format!("tickets/{n}/priority"), json!({})).await,
        "priority",
    )
    .await;
    let prioritised = sb
        .put(
            &format!("tickets/{n}/priority"),
            json!({"priority": "high"}),
        )
        .await;
    assert_eq!(prioritised.status(), StatusCode::OK);

    let ticket: Value = sb.get(&format!("tickets/{n}")).await.json().await.unwrap();
    assert_eq!(ticket["ticket"]["assignee"], seeds.agent_emails[0]);
    assert_eq!(ticket["ticket"]["assigned_group"], seeds.group_name);
    assert_eq!(ticket["ticket"]["priority"], "high");
}

#[tokio::test]
async fn messages_are_added_to_tickets() {
    let sb = Sandbox::start().await;
    let n = sb.create_ticket().await;
    assert_invalid(
        sb.post(&format!("tickets/{n}/messages"), json!({"note": true}))
            .await,
        "body",
    )
    .await;
    let response = sb
        .post(
            &format!("tickets/{n}/messages"),
            json!({"body": "a reply", "note": true}),
        )
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["message"]["body"], "a reply");
    assert_eq!(body["message"]["note"], true);
    let listed: Value = sb
        .get(&format!("tickets/{n}/messages"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["messages"].as_array().unwrap().len(), 2);
    let ticket: Value = sb.get(&format!("tickets/{n}")).await.json().await.unwrap();
    assert_eq!(ticket["ticket"]["message_count"], 2);
}

#[tokio::test]
async fn ticket_lists_paginate_with_at_most_fifty_per_page() {
    let sb = Sandbox::start().await;
    for _ in 0..3 {
        sb.create_ticket().await;
    }
    let page: Value = sb.get("tickets?per_page=2").await.json().await.unwrap();
    assert_eq!(page["tickets"].as_array().unwrap().len(), 2);
    let pagination = &page["meta"]["pagination"];
    assert_eq!(pagination["current_page"], 1);
    assert_eq!(pagination["total_pages"], 2);
    assert_eq!(pagination["total_count"], 3);
    assert!(pagination["next_page"].as_str().unwrap().contains("page=2"));
    let second: Value = sb
        .get("tickets?per_page=2&page=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(second["tickets"].as_array().unwrap().len(), 1);
    assert!(second["meta"]["pagination"]["next_page"].is_null());
    let capped: Value = sb.get("tickets?per_page=500").await.json().await.unwrap();
    assert!(capped["meta"]["pagination"]["prev_page"].is_null());
    assert_eq!(capped["tickets"].as_array().unwrap().len(), 3);

    sb.put("tickets/1/state", json!({"state": "closed"})).await;
    let closed: Value = sb.get("tickets?state=closed").await.json().await.unwrap();
    assert_eq!(closed["tickets"].as_array().unwrap().len(), 1);
    let counts: Value = sb.get("tickets/count").await.json().await.unwrap();
    let total: u64 = counts
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);
}

#[tokio::test]
async fn per_page_above_fifty_is_capped() {
    let sb = Sandbox::start().await;
    for _ in 0..52 {
        sb.create_ticket().await;
    }
    let page: Value = sb.get("tickets?per_page=100").await.json().await.unwrap();
    assert_eq!(page["tickets"].as_array().unwrap().len(), 50);
    assert_eq!(page["meta"]["pagination"]["total_pages"], 2);
}

// --- directory and seeds ---

#[tokio::test]
async fn seeded_data_is_listed_with_ten_digit_ids() {
    let sb = Sandbox::start().await;
    let seeds = sb.handle.seeds();
    let mailboxes: Value = sb.get("mailboxes").await.json().await.unwrap();
    assert_eq!(mailboxes["mailboxes"][0]["id"], seeds.mailbox_id);
    assert!(is_ten_digit_id(&mailboxes["mailboxes"][0]["id"]));
    let agents: Value = sb.get("agents").await.json().await.unwrap();
    assert_eq!(agents["agents"].as_array().unwrap().len(), 2);
    let group_agents: Value = sb
        .get(&format!("agents?group={}", seeds.group_id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(group_agents["agents"].as_array().unwrap().len(), 2);
    let groups: Value = sb.get("groups").await.json().await.unwrap();
    assert_eq!(groups["groups"][0]["id"], seeds.group_id);
    let widgets: Value = sb.get("widgets").await.json().await.unwrap();
    assert_eq!(widgets["widgets"][0]["id"], seeds.widget_id);
    let settings: Value = sb
        .get(&format!("widgets/{}/settings", seeds.widget_id))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(settings["settings"]["published"], true);
    let kb = &sb.handle.snapshot()["knowledge_bases"][0];
    assert_eq!(kb["id"], seeds.knowledge_base_id);
    assert_eq!(kb["articles"][0]["id"], seeds.article_id);
    assert!(
        seeds.mailbox_id.starts_with('0'),
        "seeds should exercise leading zeros"
    );
}

#[tokio::test]
async fn customers_are_updated_by_email() {
    let sb = Sandbox::start().await;
    assert_invalid(
        sb.put("customers/dana%40example.com", json!({"name": "Dana"}))
            .await,
        "email",
    )
    .await;
    let response = sb
        .put(
            "customers/dana%40example.com",
            json!({"email": "dana@example.com", "name": "Dana", "custom": {"plan": "pro"}}),
        )
        .await;
    let (status, body) = status_and_json(response).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["customer"]["name"], "Dana");
    assert_eq!(body["customer"]["custom"]["plan"], "pro");
}

// --- webhooks ---

#[tokio::test]
async fn webhooks_need_a_known_event_and_a_url() {
    let sb = Sandbox::start().await;
    assert_invalid(
        sb.post("webhooks", json!({"url": "https://hooks.example.com/x"}))
            .await,
        "event",
    )
    .await;
    assert_invalid(
        sb.post("webhooks", json!({"event": "ticket_started"}))
            .await,
        "url",
    )
    .await;
    assert_invalid(
        sb.post(
            "webhooks",
            json!({"event": "ticket_created", "url": "https://hooks.example.com/x"}),
        )
        .await,
        "event",
    )
    .await;
    let response = sb
        .post(
            "webhooks",
            json!({"event": "ticket_started", "url": "https://hooks.example.com/x"}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body,
        json!({"webhook": {
            "event": "ticket_started",
            "url": "https://hooks.example.com/x",
            "state": "active",
        }})
    );
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(
        sb.delete(&format!("webhooks/{id}")).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_not_found(sb.delete(&format!("webhooks/{id}")).await).await;
}

// --- groups ---

#[tokio::test]
async fn groups_can_be_created_updated_and_deleted() {
    let sb = Sandbox::start().await;
    let seeds = sb.handle.seeds();
    assert_invalid(sb.post("groups", json!({"description": "x"})).await, "name").await;
    assert_invalid(
        sb.post(
            "groups",
            json!({"name": "Ops", "agents": ["ghost@example.com"]}),
        )
        .await,
        "agents",
    )
    .await;
    let response = sb
        .post(
            "groups",
            json!({"name": "Billing", "description": "money", "agents": [seeds.agent_emails[1]]}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    let group = &body["group"];
    assert!(is_ten_digit_id(&group["id"]));
    assert_eq!(
        location,
        sb.url(&format!("groups/{}", group["id"].as_str().unwrap()))
    );
    assert_eq!(group["agent_ids"], json!([seeds.agent_ids[1]]));
    assert!(group["links"]["agents"]["href"].is_string());
    let id = group["id"].as_str().unwrap().to_owned();

    let updated: Value = sb
        .put(&format!("groups/{id}"), json!({"name": "Invoices"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["group"]["name"], "Invoices");
    assert_eq!(updated["group"]["description"], "money");
    let shown: Value = sb.get(&format!("groups/{id}")).await.json().await.unwrap();
    assert_eq!(shown["group"]["name"], "Invoices");
    let deleted = sb.delete(&format!("groups/{id}")).await;
    assert_eq!(deleted.status(), StatusCode::OK);
    assert_eq!(
        deleted.json::<Value>().await.unwrap()["group"]["id"],
        id.as_str()
    );
    assert_not_found(sb.get(&format!("groups/{id}")).await).await;
    assert_not_found(sb.put(&format!("groups/{id}"), json!({"name": "x"})).await).await;
}

// --- knowledge bases ---

#[tokio::test]
async fn knowledge_bases_articles_and_categories() {
    let sb = Sandbox::start().await;
    let created = sb
        .post("kb", json!({"title": "Docs", "subdomain": "docs"}))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let kb: Value = created.json().await.unwrap();
    let kb_id = kb["knowledge_base"]["id"].as_str().unwrap().to_owned();
    assert_eq!(kb["knowledge_base"]["subdomain"], "docs");

    let updated: Value = sb
        .put(&format!("kb/{kb_id}"), json!({"title": "Help"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(updated["knowledge_base"]["title"], "Help");
    let settings = sb
        .put(
            &format!("kb/{kb_id}/settings"),
            json!({"anything": {"goes": true}}),
        )
        .await;
    assert_eq!(settings.status(), StatusCode::OK);
    assert_eq!(
        settings.json::<Value>().await.unwrap()["settings"]["anything"]["goes"],
        true
    );

    let category = sb
        .post(
            &format!("kb/{kb_id}/categories"),
            json!({"title": "Basics"}),
        )
        .await;
    assert_eq!(category.status(), StatusCode::CREATED);
    let category: Value = category.json().await.unwrap();
    assert_eq!(category["category"]["state"], "draft");
    assert!(category["category"]["published_at"].is_null());
    let category_id = category["category"]["id"].as_str().unwrap().to_owned();

    // No article field is required, not even a title.
    let empty = sb.post(&format!("kb/{kb_id}/articles"), json!({})).await;
    assert_eq!(empty.status(), StatusCode::CREATED);
    assert!(empty.headers()["location"]
        .to_str()
        .unwrap()
        .contains(&format!("kb/{kb_id}/articles/")));
    let article = sb
        .post(
            &format!("kb/{kb_id}/articles"),
            json!({"title": "Getting started", "category_id": category_id, "tags": ["intro"]}),
        )
        .await;
    let (status, article) = status_and_json(article).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(article["article"]["slug"], "getting-started");
    assert_eq!(article["article"]["knowledge_base_id"], kb_id.as_str());
    let article_id = article["article"]["id"].as_str().unwrap().to_owned();
    assert_invalid(
        sb.post(
            &format!("kb/{kb_id}/articles"),
            json!({"category_id": "0000000000"}),
        )
        .await,
        "category_id",
    )
    .await;

    let updated = sb
        .put(
            &format!("kb/{kb_id}/articles/{article_id}"),
            json!({"body": "<p>hi</p>"}),
        )
        .await;
    let (status, updated) = status_and_json(updated).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["article"]["body"], "<p>hi</p>");
    assert_eq!(updated["article"]["title"], "Getting started");

    assert_not_found(sb.post("kb/0000000000/articles", json!({})).await).await;
    assert_not_found(
        sb.put(&format!("kb/{kb_id}/articles/0000000000"), json!({}))
            .await,
    )
    .await;
    assert_not_found(sb.put("kb/0000000000", json!({})).await).await;
}

// --- widgets ---

#[tokio::test]
async fn widgets_and_their_flat_dotted_settings() {
    let sb = Sandbox::start().await;
    assert_invalid(sb.post("widgets", json!({})).await, "name").await;
    let response = sb.post("widgets", json!({"name": "Docs widget"})).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let widget: Value = response.json().await.unwrap();
    let id = widget["widget"]["id"].as_str().unwrap().to_owned();
    assert!(widget["widget"]["uuid"].is_string());
    assert_eq!(widget["widget"]["published_settings"], json!({}));

    let renamed: Value = sb
        .put(&format!("widgets/{id}"), json!({"name": "Renamed"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(renamed["widget"]["name"], "Renamed");

    let settings = sb
        .put(
            &format!("widgets/{id}/settings"),
            json!({"contact.enabled": true, "z_index": "10"}),
        )
        .await;
    let (status, settings) = status_and_json(settings).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(settings["settings"]["contact.enabled"], true);
    let shown: Value = sb
        .get(&format!("widgets/{id}/settings"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["settings"]["z_index"], "10");
    assert_invalid(
        sb.put(
            &format!("widgets/{id}/settings"),
            json!({"contact": {"enabled": true}}),
        )
        .await,
        "contact",
    )
    .await;
    assert_not_found(sb.get("widgets/0000000000/settings").await).await;
    assert_not_found(sb.put("widgets/0000000000", json!({"name": "x"})).await).await;
}

// --- faults ---

#[tokio::test]
async fn rate_limit_answers_429_without_side_effects() {
    let sb = Sandbox::with(SandboxConfig {
        api_key: KEY.into(),
        faults: Faults {
            rate_limit: Some(RateLimit {
                calls: 2,
                window: Duration::from_secs(60),
            }),
            ..Faults::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let now_secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for remaining in ["1", "0"] {
        let response = sb.post("tickets", ticket_body()).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        assert_eq!(response.headers()["x-ratelimit-limit"], "2");
        assert_eq!(response.headers()["x-ratelimit-remaining"], remaining);
    }
    let limited = sb.post("tickets", ticket_body()).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let headers = limited.headers().clone();
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1);
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset >= now_secs);
    assert!(limited.json::<Value>().await.unwrap()["errors"].is_array());
    assert_eq!(sb.ticket_count(), 2, "a 429 must not create anything");
    assert_eq!(sb.handle.stats().count(429), 1);

    // Control endpoints are never limited.
    let stats = sb.client.get(sb.control("stats")).send().await.unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    assert!(stats.headers().get("x-ratelimit-limit").is_none());
}

#[tokio::test]
async fn a_short_window_lets_calls_through_again() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        rate_limit: Some(RateLimit {
            calls: 1,
            window: Duration::from_secs(1),
        }),
        ..Faults::default()
    });
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);
    assert_eq!(
        sb.get("mailboxes").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn error_rate_answers_5xx_without_side_effects() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        error_rate: 1.0,
        ..Faults::default()
    });
    for _ in 0..10 {
        let response = sb.post("tickets", ticket_body()).await;
        assert!(
            [500, 502, 503].contains(&response.status().as_u16()),
            "{}",
            response.status()
        );
        assert!(response.json::<Value>().await.unwrap()["errors"].is_array());
    }
    assert_eq!(sb.ticket_count(), 0);
    sb.handle.set_faults(Faults {
        error_rate: 1.0,
        error_statuses: vec![504],
        ..Faults::default()
    });
    assert_eq!(
        sb.get("mailboxes").await.status(),
        StatusCode::GATEWAY_TIMEOUT
    );
    sb.handle.set_faults(Faults::default());
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn drop_rate_closes_the_connection_without_a_response() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    let result = sb
        .client
        .post(sb.url("tickets"))
        .bearer_auth(KEY)
        .json(&ticket_body())
        .send()
        .await;
    let err = result.expect_err("a dropped call must not produce a response");
    assert!(
        !err.is_status() && !err.is_timeout(),
        "unexpected error kind: {err:?}"
    );
    assert_eq!(sb.ticket_count(), 0);
    let stats = sb.handle.stats();
    assert_eq!(stats.dropped, 1);
    assert_eq!(sb.handle.requests()[0].status, 0);

    sb.handle.set_faults(Faults::default());
    assert_eq!(
        sb.post("tickets", ticket_body()).await.status(),
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn latency_is_added_before_answering() {
    let sb = Sandbox::start().await;
    let latency = Duration::from_millis(150);
    sb.handle.set_faults(Faults {
        latency,
        ..Faults::default()
    });
    let started = Instant::now();
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= latency,
        "answered after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn invalid_faults_are_refused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = SandboxConfig {
        faults: Faults {
            drop_rate: 2.0,
            ..Faults::default()
        },
        ..SandboxConfig::default()
    };
    assert!(sandbox::start(listener, config).await.is_err());
    let sb = Sandbox::start().await;
    assert!(sb
        .handle
        .try_set_faults(Faults {
            error_statuses: vec![418],
            ..Faults::default()
        })
        .is_err());
}

// --- scripted answers ---

/// The call's status, or `None` when the connection was dropped without a response.
async fn try_post(sb: &Sandbox, path: &str, body: Value) -> Option<reqwest::Response> {
    match sb
        .client
        .post(sb.url(path))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
    {
        Ok(response) => Some(response),
        Err(err) => {
            assert!(!err.is_status() && !err.is_timeout(), "{err:?}");
            None
        }
    }
}

#[tokio::test]
async fn a_script_answers_the_next_calls_exactly_before_the_random_knobs() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        script: vec![
            ScriptedAnswer::fail(503).with_retry_after(7),
            ScriptedAnswer::fail(500).once_processed(),
            ScriptedAnswer::drop_connection(),
        ],
        // The script goes first: these only apply once it is used up.
        error_rate: 1.0,
        error_statuses: vec![502],
        ..Faults::default()
    });
    assert_eq!(sb.handle.faults().script.len(), 3);

    let refused = try_post(&sb, "tickets", ticket_body()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "7");
    assert!(refused.json::<Value>().await.unwrap()["errors"].is_array());
    assert_eq!(sb.ticket_count(), 0, "a plain scripted 503 creates nothing");
    assert_eq!(
        sb.handle.faults().script,
        vec![
            ScriptedAnswer::fail(500).once_processed(),
            ScriptedAnswer::drop_connection()
        ]
    );

    let lost = try_post(&sb, "tickets", ticket_body()).await.unwrap();
    assert_eq!(lost.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(lost.headers().get("location").is_none());
    assert!(lost.headers().get("retry-after").is_none());
    let body: Value = lost.json().await.unwrap();
    assert!(
        body.get("ticket").is_none(),
        "the real answer is lost: {body}"
    );

    assert!(try_post(&sb, "tickets", ticket_body()).await.is_none());
    assert!(sb.handle.faults().script.is_empty());

    // Script used up: the random knobs are back.
    let knob = try_post(&sb, "tickets", ticket_body()).await.unwrap();
    assert_eq!(knob.status(), StatusCode::BAD_GATEWAY);

    sb.handle.set_faults(Faults::default());
    // Only the after_processing 500 created a ticket (number 1).
    let listed: Value = sb.get("tickets").await.json().await.unwrap();
    let numbers: Vec<u64> = listed["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1]);
    assert_eq!(sb.ticket_count(), 1);
    assert_eq!(sb.create_ticket().await, 2);

    let statuses: Vec<u16> = sb.handle.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses[..4], [503, 500, 0, 502]);
    let stats = sb.handle.stats();
    assert_eq!((stats.dropped, stats.count(500)), (1, 1));
}

#[tokio::test]
async fn a_processed_answer_can_be_lost_on_any_call() {
    let sb = Sandbox::start().await;
    let n = sb.create_ticket().await;
    sb.handle.set_faults(Faults {
        script: vec![
            ScriptedAnswer::drop_connection().once_processed(),
            ScriptedAnswer::fail(429)
                .with_retry_after(2)
                .once_processed(),
        ],
        ..Faults::default()
    });
    let message = json!({"body": "a reply"});
    assert!(
        try_post(&sb, &format!("tickets/{n}/messages"), message.clone())
            .await
            .is_none()
    );
    let limited = sb
        .put(&format!("tickets/{n}/state"), json!({"state": "closed"}))
        .await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "2");
    // Both took effect although neither answer said so.
    let ticket: Value = sb.get(&format!("tickets/{n}")).await.json().await.unwrap();
    assert_eq!(ticket["ticket"]["message_count"], 2);
    assert_eq!(ticket["ticket"]["state"], "closed");
}

#[tokio::test]
async fn scripts_are_validated_and_steerable_through_the_control_endpoint() {
    let sb = Sandbox::start().await;
    for bad in [
        ScriptedAnswer::fail(404),
        ScriptedAnswer::fail(500).with_retry_after(1),
    ] {
        let err = sb
            .handle
            .try_set_faults(Faults {
                script: vec![bad],
                ..Faults::default()
            })
            .unwrap_err();
        assert!(err.to_string().contains("script[0]"), "{err}");
    }
    let client = &sb.client;
    let refused = client
        .put(sb.control("faults"))
        .json(&json!({"script": [{"status": 200}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let set = client
        .put(sb.control("faults"))
        .json(&json!({"script": [{"status": 429, "retry_after_s": 3}, {"status": 502}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    let limited = sb.get("mailboxes").await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.headers()["retry-after"], "3");
    let remaining: Value = client
        .get(sb.control("faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        remaining["script"],
        json!([{"status": 502, "after_processing": false, "retry_after_s": null}])
    );
    // Calls outside /v1/ do not consume the script.
    let outside = client
        .get(format!("http://{}/elsewhere", sb.handle.addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(outside.status(), StatusCode::NOT_FOUND);
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);
}

// --- batches (not Groove behaviour, opt-in) ---

fn numbered_ticket(index: usize) -> Value {
    let mut body = ticket_body();
    body["body"] = json!(format!("help {index}"));
    body
}

#[tokio::test]
async fn batches_are_refused_unless_switched_on() {
    let sb = Sandbox::start().await;
    assert!(!sb.handle.faults().accept_batches);
    let (status, body) = status_and_json(
        sb.post("tickets", json!([ticket_body(), ticket_body()]))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["errors"][0].as_str().unwrap().contains("JSON object"));
    // A wrapped batch is just an invalid single ticket to Groove.
    assert_invalid(
        sb.post("tickets", json!({"tickets": [ticket_body()]}))
            .await,
        "body is required",
    )
    .await;
    assert_eq!(sb.ticket_count(), 0);
}

#[tokio::test]
async fn accepted_batches_create_one_resource_per_element() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        accept_batches: true,
        ..Faults::default()
    });
    let items: Vec<Value> = (0..3).map(numbered_ticket).collect();
    let response = sb.post("tickets", Value::Array(items)).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(response.headers().get("location").is_none());
    let body: Value = response.json().await.unwrap();
    let created = body["tickets"].as_array().expect("plural root key");
    let numbers: Vec<u64> = created
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2, 3]);
    assert_eq!(created[2]["summary"], "help 2");
    assert_eq!(sb.ticket_count(), 3);
    // One call, one recorded request.
    assert_eq!(sb.handle.requests().len(), 1);

    // Other create endpoints answer their own plural key.
    let messages = sb
        .post(
            "tickets/1/messages",
            json!([{"body": "one"}, {"body": "two", "note": true}]),
        )
        .await;
    let (status, messages) = status_and_json(messages).await;
    assert_eq!(status, StatusCode::CREATED, "{messages}");
    assert_eq!(messages["messages"][1]["note"], true);
    let ticket: Value = sb.get("tickets/1").await.json().await.unwrap();
    assert_eq!(ticket["ticket"]["message_count"], 3);
    let kb_id = sb.handle.seeds().knowledge_base_id;
    let articles: Value = sb
        .post(
            &format!("kb/{kb_id}/articles"),
            json!([{"title": "One"}, {"title": "Two"}]),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(articles["articles"][1]["slug"], "two");
    let widgets: Value = sb
        .post("widgets", json!([{"name": "A"}]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(widgets["widgets"][0]["name"], "A");
    let kbs: Value = sb
        .post("kb", json!([{"title": "X"}, {"title": "Y"}]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kbs["knowledge_bases"].as_array().unwrap().len(), 2);

    // The answer's wrapped shape is accepted as a request too.
    let wrapped = sb
        .post(
            "tickets",
            json!({"tickets": [numbered_ticket(7), numbered_ticket(8)]}),
        )
        .await;
    let (status, wrapped) = status_and_json(wrapped).await;
    assert_eq!(status, StatusCode::CREATED, "{wrapped}");
    assert_eq!(wrapped["tickets"][1]["number"], 5);
    assert_eq!(sb.ticket_count(), 5);

    // Only create endpoints take batches.
    let update = sb
        .put("tickets/1/state", json!([{"state": "closed"}]))
        .await;
    assert_eq!(update.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn one_invalid_element_refuses_the_whole_batch() {
    let sb = Sandbox::start().await;
    sb.handle.set_faults(Faults {
        accept_batches: true,
        ..Faults::default()
    });
    let mut bad = ticket_body();
    bad.as_object_mut().unwrap().remove("body");
    let (status, body) = status_and_json(
        sb.post("tickets", json!([ticket_body(), bad, ticket_body()]))
            .await,
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"], json!(["tickets[1]: body is required"]));
    assert_eq!(sb.ticket_count(), 0, "nothing may be created");
    assert!(sb.handle.snapshot()["customers"]
        .as_array()
        .unwrap()
        .is_empty());

    assert_invalid(
        sb.post(
            "groups",
            json!([{"name": "Ops"}, {"name": "Ghosts", "agents": ["ghost@example.com"]}]),
        )
        .await,
        "groups[1]: agents",
    )
    .await;
    assert_invalid(
        sb.post(
            "webhooks",
            json!([{"event": "nope", "url": "https://hooks.example.com/x"}]),
        )
        .await,
        "webhooks[0]: event",
    )
    .await;
    let groups: Value = sb.get("groups").await.json().await.unwrap();
    assert_eq!(
        groups["groups"].as_array().unwrap().len(),
        1,
        "only the seed"
    );

    for (body, problem) in [
        (json!([]), "at least one"),
        (
            json!([ticket_body(), 7]),
            "tickets[1]: must be a JSON object",
        ),
    ] {
        let (status, answer) = status_and_json(sb.post("tickets", body).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            answer["errors"][0].as_str().unwrap().contains(problem),
            "{answer}"
        );
    }
    assert_not_found(sb.post("tickets/9/messages", json!([{"body": "x"}])).await).await;
    assert_eq!(sb.ticket_count(), 0);
}

#[tokio::test]
async fn batches_can_be_switched_on_through_the_control_endpoint() {
    let sb = Sandbox::start().await;
    let set = sb
        .client
        .put(sb.control("faults"))
        .json(&json!({"accept_batches": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert!(sb.handle.faults().accept_batches);
    let created = sb
        .post("tickets", json!([ticket_body(), ticket_body()]))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(sb.ticket_count(), 2);
}

// --- bounded ticket storage ---

#[tokio::test]
async fn the_oldest_tickets_are_evicted_beyond_max_stored_tickets() {
    let sb = Sandbox::with(SandboxConfig {
        api_key: KEY.into(),
        max_stored_tickets: 3,
        ..SandboxConfig::default()
    })
    .await;
    for expected in 1..=5 {
        assert_eq!(sb.create_ticket().await, expected);
    }
    for evicted in [1, 2] {
        assert_not_found(sb.get(&format!("tickets/{evicted}")).await).await;
        assert_not_found(
            sb.put(
                &format!("tickets/{evicted}/state"),
                json!({"state": "closed"}),
            )
            .await,
        )
        .await;
    }
    assert_not_found(sb.post("tickets/1/messages", json!({"body": "late"})).await).await;
    for kept in [3, 4, 5] {
        assert_eq!(
            sb.get(&format!("tickets/{kept}")).await.status(),
            StatusCode::OK
        );
    }
    let listed: Value = sb.get("tickets").await.json().await.unwrap();
    assert_eq!(listed["meta"]["pagination"]["total_count"], 3);
    let snapshot: Vec<u64> = sb.handle.snapshot()["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["number"].as_u64().unwrap())
        .collect();
    assert_eq!(snapshot, [3, 4, 5]);
    // Numbers keep increasing and are never reused.
    assert_eq!(sb.create_ticket().await, 6);
    assert_not_found(sb.get("tickets/3").await).await;
}

#[test]
fn the_default_bound_is_generous() {
    assert_eq!(SandboxConfig::default().max_stored_tickets, 100_000);
}

// --- recording ---

#[tokio::test]
async fn response_headers_are_recorded() {
    let sb = Sandbox::with(SandboxConfig {
        api_key: KEY.into(),
        faults: Faults {
            rate_limit: Some(RateLimit {
                calls: 1,
                window: Duration::from_secs(60),
            }),
            ..Faults::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let created = sb.post("tickets", ticket_body()).await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let limited = sb.post("tickets", ticket_body()).await;
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let sent_retry_after = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .to_owned();

    let recorded = sb.handle.requests();
    let (created, limited) = (&recorded[0], &recorded[1]);
    assert_eq!(created.status, 201);
    assert_eq!(
        created.response_header("Location"),
        Some(sb.url("tickets/1").as_str())
    );
    assert_eq!(created.response_header("x-ratelimit-remaining"), Some("0"));
    assert!(created
        .response_header("content-type")
        .unwrap()
        .starts_with("application/json"));
    assert!(created.response_header("retry-after").is_none());
    assert_eq!(limited.status, 429);
    assert_eq!(
        limited.response_header("RETRY-AFTER"),
        Some(sent_retry_after.as_str())
    );
    let retry_after: u64 = sent_retry_after.parse().unwrap();
    assert!((1..=60).contains(&retry_after));
    assert_eq!(limited.response_header("x-ratelimit-limit"), Some("1"));
    assert!(limited.response_header("location").is_none());
    assert!(limited
        .response_headers
        .iter()
        .all(|(name, _)| name == &name.to_ascii_lowercase()));

    // A dropped call answered nothing.
    sb.handle.set_faults(Faults {
        drop_rate: 1.0,
        ..Faults::default()
    });
    assert!(try_post(&sb, "tickets", ticket_body()).await.is_none());
    assert!(sb.handle.requests()[2].response_headers.is_empty());

    // The control endpoint carries them too.
    let typed: Vec<ReceivedRequest> = sb
        .client
        .get(sb.control("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        typed[1].response_header("retry-after"),
        Some(sent_retry_after.as_str())
    );
}

#[tokio::test]
async fn recordings_without_response_headers_still_deserialize() {
    let old = json!({"seq": 1, "method": "GET", "path": "/v1/agents", "query": null,
                     "headers": [], "body": "", "json": null, "status": 200,
                     "received_at_ms": 1});
    let request: ReceivedRequest = serde_json::from_value(old).unwrap();
    assert!(request.response_headers.is_empty());
    assert_eq!(request.response_header("location"), None);
}

#[tokio::test]
async fn requests_are_recorded_in_arrival_order() {
    let sb = Sandbox::start().await;
    sb.post("tickets", ticket_body()).await;
    sb.put("tickets/1/state?via=test", json!({"state": "closed"}))
        .await;
    sb.client.get(sb.url("mailboxes")).send().await.unwrap();
    let recorded = sb.handle.requests();
    assert_eq!(recorded.len(), 3);
    let put = &recorded[1];
    assert_eq!(put.method, "PUT");
    assert_eq!(put.path, "/v1/tickets/1/state");
    assert_eq!(put.query.as_deref(), Some("via=test"));
    assert_eq!(
        put.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(put.header("Content-Type"), Some("application/json"));
    assert_eq!(put.body, r#"{"state":"closed"}"#);
    assert_eq!(put.json, Some(json!({"state": "closed"})));
    assert_eq!(put.status, 200);
    assert!(put.received_at_ms > 0);
    assert_eq!(recorded[2].status, 401);
    assert!(recorded.windows(2).all(|w| w[0].seq < w[1].seq));

    sb.handle.clear_requests();
    assert!(sb.handle.requests().is_empty());
    let stats = sb.handle.stats();
    assert_eq!(stats.total, 3);
    assert_eq!(
        (stats.count(201), stats.count(200), stats.count(401)),
        (1, 1, 1)
    );
}

#[tokio::test]
async fn recording_is_a_bounded_ring() {
    let sb = Sandbox::with(SandboxConfig {
        api_key: KEY.into(),
        max_recorded_requests: 3,
        ..SandboxConfig::default()
    })
    .await;
    for i in 0..5 {
        sb.get(&format!("mailboxes?i={i}")).await;
    }
    let recorded = sb.handle.requests();
    let queries: Vec<_> = recorded.iter().map(|r| r.query.clone().unwrap()).collect();
    assert_eq!(queries, ["i=2", "i=3", "i=4"]);
    assert_eq!(sb.handle.stats().total, 5);
}

#[tokio::test]
async fn concurrent_creates_get_distinct_numbers() {
    let sb = std::sync::Arc::new(Sandbox::start().await);
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let sb = std::sync::Arc::clone(&sb);
            tokio::spawn(async move { sb.create_ticket().await })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.unwrap());
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<u64>>());
    let recorded = sb.handle.requests();
    assert_eq!(recorded.len(), 100);
    assert!(recorded.windows(2).all(|w| w[0].seq < w[1].seq));
}

// --- control endpoints ---

#[tokio::test]
async fn control_endpoints_steer_and_inspect() {
    let sb = Sandbox::start().await;
    let client = &sb.client;
    sb.create_ticket().await;

    let typed: Vec<ReceivedRequest> = client
        .get(sb.control("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(typed[0].status, 201);
    assert_eq!(typed[0].json.as_ref().unwrap()["body"], "I'm here to help!");
    let requests: Value = client
        .get(sb.control("requests"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(requests.as_array().unwrap().len(), 1);
    assert_eq!(requests[0]["path"], "/v1/tickets");
    let since: Value = client
        .get(sb.control("requests?since=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(since.as_array().unwrap().is_empty());

    let faults = json!({"error_rate": 1.0, "error_statuses": [503], "latency_ms": 0, "drop_rate": 0.0,
                        "rate_limit": {"calls": 100, "window_ms": 1000}, "script": [],
                        "accept_batches": false});
    let put = client
        .put(sb.control("faults"))
        .json(&faults)
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::OK);
    let got: Value = client
        .get(sb.control("faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got, faults);
    assert_eq!(
        sb.get("mailboxes").await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Control calls are exempt from faults.
    let stats = client.get(sb.control("stats")).send().await.unwrap();
    assert_eq!(stats.status(), StatusCode::OK);
    let stats: Value = stats.json().await.unwrap();
    assert_eq!(stats["total"], 2);
    assert_eq!(stats["by_status"]["503"], 1);

    let bad = client
        .put(sb.control("faults"))
        .json(&json!({"error_rate": 7}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let typo = client
        .put(sb.control("faults"))
        .json(&json!({"eror_rate": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(typo.status(), StatusCode::BAD_REQUEST);
    let reset = client
        .put(sb.control("faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(reset.status(), StatusCode::OK);
    assert_eq!(sb.get("mailboxes").await.status(), StatusCode::OK);

    let typed_stats: SandboxStats = client
        .get(sb.control("stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(typed_stats, sb.handle.stats());
    let data: Value = client
        .get(sb.control("data"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(data["tickets"].as_array().unwrap().len(), 1);
    assert_eq!(data["seeds"]["mailbox_id"], "0412191130");

    let cleared = client.delete(sb.control("requests")).send().await.unwrap();
    assert_eq!(cleared.status(), StatusCode::NO_CONTENT);
    assert!(
        sb.handle.requests().is_empty(),
        "control calls are not recorded"
    );
}

#[tokio::test]
async fn shutdown_stops_serving() {
    let sb = Sandbox::start().await;
    let url = sb.url("mailboxes");
    sb.handle.shutdown().await;
    assert!(Client::new()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .is_err());
}

// --- binary ---

/// Kills the child even when an assertion fails first.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_binary_prints_its_url_and_serves() {
    use std::io::BufRead;

    let mut child = ChildGuard(
        std::process::Command::new(env!("CARGO_BIN_EXE_groove-sandbox"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--latency-ms",
                "1",
                "--accept-batches",
            ])
            .env("GROOVE_SANDBOX_API_KEY", "from-env")
            .env("GROOVE_SANDBOX_MAX_STORED_TICKETS", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        line
    });
    let line = tokio::time::timeout(Duration::from_secs(30), line)
        .await
        .unwrap()
        .unwrap();
    assert!(
        line.starts_with("groove-sandbox listening on http://127.0.0.1:"),
        "{line}"
    );
    assert!(line.contains("mailbox=0412191130"), "{line}");
    let base = line.split_whitespace().nth(3).unwrap().to_owned();
    assert!(base.ends_with("/v1"));
    let client = Client::new();
    let ok = client
        .get(format!("{base}/agents"))
        .bearer_auth("from-env")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    let refused = client
        .get(format!("{base}/agents"))
        .bearer_auth(sandbox::DEFAULT_API_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);

    // --accept-batches and GROOVE_SANDBOX_MAX_STORED_TICKETS=1.
    let batch = client
        .post(format!("{base}/tickets"))
        .bearer_auth("from-env")
        .json(&json!([ticket_body(), ticket_body()]))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), StatusCode::CREATED);
    for (number, status) in [(1, StatusCode::NOT_FOUND), (2, StatusCode::OK)] {
        let shown = client
            .get(format!("{base}/tickets/{number}"))
            .bearer_auth("from-env")
            .send()
            .await
            .unwrap();
        assert_eq!(shown.status(), status, "ticket {number}");
    }
    drop(child);
}
