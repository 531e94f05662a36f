//! Delivery end to end: a real server, a real groove-sandbox, SendRecords over a real gRPC stream.

mod common;

use common::flows::{self, active_destination, credential, manual, raw, send, template};
use common::GrpcServer;
use common::{start_sandbox, start_sandbox_with, TestServer};
use groove_destination::api::json_wire::JsonObject;
use groove_destination::proto::{self, Outcome};
use groove_sandbox::{Faults, RateLimit, SandboxConfig, SandboxHandle, ScriptedAnswer};
use serde_json::json;
use std::time::Duration;
use tonic::Code;

async fn setup() -> (groove_sandbox::SandboxHandle, tempfile::TempDir, TestServer) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    (sandbox, dir, server)
}

fn ticket(index: usize) -> serde_json::Value {
    json!({"body": format!("help {index}"), "from": "customer@example.com", "to": "support@sandbox.example.com"})
}

#[tokio::test]
async fn every_template_reaches_groove_with_the_right_method_path_and_body() {
    let (sandbox, _dir, server) = setup().await;
    let seeds = sandbox.seeds();
    // A ticket to update first.
    let tickets = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let answered = send(&server, &tickets, vec![vec![raw("t-1", ticket(1))]])
        .await
        .unwrap();
    assert_eq!(
        answered.of("t-1").outcome(),
        Outcome::Delivered,
        "{:?}",
        answered.of("t-1")
    );
    let kb = seeds.knowledge_base_id.as_str();
    // (template, parameters, record, expected method, path and body)
    type Case<'a> = (
        &'a str,
        Vec<(&'a str, &'a str)>,
        serde_json::Value,
        &'a str,
        String,
        serde_json::Value,
    );
    let cases: Vec<Case> = vec![
        (
            "update_ticket_state",
            vec![("ticket_number", "{number}")],
            json!({"number": 1, "state": "open"}),
            "PUT",
            "/v1/tickets/1/state".into(),
            json!({"number": 1, "state": "opened"}),
        ),
        (
            "update_ticket_assignee",
            vec![("ticket_number", "1")],
            json!({"assignee": seeds.agent_emails[0]}),
            "PUT",
            "/v1/tickets/1/assignee".into(),
            json!({"assignee": seeds.agent_emails[0]}),
        ),
        (
            "update_ticket_assigned_group",
            vec![("ticket_number", "1")],
            json!({"assigned_group": seeds.group_name}),
            "PUT",
            "/v1/tickets/1/assigned_group".into(),
            json!({"group": seeds.group_name}),
        ),
        (
            "create_message",
            vec![("ticket_number", "{ticket.number}")],
            json!({"ticket": {"number": 1}, "body": "hello"}),
            "POST",
            "/v1/tickets/1/messages".into(),
            json!({"ticket": {"number": 1}, "body": "hello"}),
        ),
        (
            "create_webhook",
            vec![],
            json!({"url": "https://hooks.example.com/g", "event": "ticket_started"}),
            "POST",
            "/v1/webhooks".into(),
            json!({"url": "https://hooks.example.com/g", "event": "ticket_started"}),
        ),
        (
            "create_group",
            vec![],
            json!({"name": "Billing"}),
            "POST",
            "/v1/groups".into(),
            json!({"name": "Billing"}),
        ),
        (
            "update_group",
            vec![("group_id", "{id}")],
            json!({"id": seeds.group_id, "description": "first line"}),
            "PUT",
            format!("/v1/groups/{}", seeds.group_id),
            json!({"id": seeds.group_id, "description": "first line"}),
        ),
        (
            "create_knowledge_base",
            vec![],
            json!({"title": "Help"}),
            "POST",
            "/v1/kb".into(),
            json!({"title": "Help"}),
        ),
        (
            "update_knowledge_base",
            vec![("knowledge_base_id", kb)],
            json!({"title": "Help center"}),
            "PUT",
            format!("/v1/kb/{kb}"),
            json!({"title": "Help center"}),
        ),
        (
            "update_knowledge_base_settings",
            vec![("knowledge_base_id", kb)],
            json!({"language": "en"}),
            "PUT",
            format!("/v1/kb/{kb}/settings"),
            json!({"language": "en"}),
        ),
        (
            "create_article",
            vec![("knowledge_base_id", kb)],
            json!({"title": "Getting started", "body": "<p>hi</p>"}),
            "POST",
            format!("/v1/kb/{kb}/articles"),
            json!({"title": "Getting started", "body": "<p>hi</p>"}),
        ),
        (
            "update_article",
            vec![("knowledge_base_id", kb), ("article_id", "{article}")],
            json!({"article": seeds.article_id, "title": "New title"}),
            "PUT",
            format!("/v1/kb/{kb}/articles/{}", seeds.article_id),
            json!({"article": seeds.article_id, "title": "New title"}),
        ),
        (
            "update_widget",
            vec![("widget_id", seeds.widget_id.as_str())],
            json!({"name": "Support widget"}),
            "PUT",
            format!("/v1/widgets/{}", seeds.widget_id),
            json!({"name": "Support widget"}),
        ),
        (
            "update_widget_settings",
            vec![("widget_id", seeds.widget_id.as_str())],
            json!({"contact.enabled": true}),
            "PUT",
            format!("/v1/widgets/{}/settings", seeds.widget_id),
            json!({"contact.enabled": true}),
        ),
    ];
    for (template_id, parameters, record, method, path, body) in cases {
        let name = active_destination(
            &server,
            &template_id.replace('_', "-"),
            template(template_id, &parameters),
        )
        .await;
        sandbox.clear_requests();
        let answered = send(&server, &name, vec![vec![raw("r-1", record)]])
            .await
            .unwrap();
        let result = answered.of("r-1");
        assert_eq!(
            result.outcome(),
            Outcome::Delivered,
            "{template_id}: {result:?}"
        );
        let requests = sandbox.requests();
        assert_eq!(requests.len(), 1, "{template_id}");
        assert_eq!(requests[0].method, method, "{template_id}");
        assert_eq!(requests[0].path, path, "{template_id}");
        assert_eq!(requests[0].json.as_ref(), Some(&body), "{template_id}");
        assert_eq!(requests[0].header("content-type"), Some("application/json"));
        let shown = result.request.as_ref().unwrap();
        assert!(shown
            .headers
            .iter()
            .any(|header| header.name == "Authorization" && header.value == "Bearer ****"));
    }
    server.stop().await;
}

#[tokio::test]
async fn webhook_event_types_fan_out_into_one_call_each() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "hooks", template("create_webhook", &[])).await;
    let record = json!({"webhook_url": "https://hooks.example.com/x", "event_types": ["ticket_started", "ticket_closed"]});
    let answered = send(
        &server,
        &name,
        vec![vec![
            raw("w-1", record),
            raw(
                "w-2",
                json!({"url": "https://h.example.com", "event": "no_such_event"}),
            ),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("w-1").outcome(), Outcome::Delivered);
    assert_eq!(answered.of("w-1").attempts, 2);
    assert_eq!(answered.of("w-2").outcome(), Outcome::Invalid);
    let events: Vec<_> = sandbox
        .requests()
        .iter()
        .map(|request| request.json.clone().unwrap())
        .collect();
    assert_eq!(
        events,
        vec![
            json!({"url": "https://hooks.example.com/x", "event": "ticket_started"}),
            json!({"url": "https://hooks.example.com/x", "event": "ticket_closed"}),
        ]
    );
    server.stop().await;
}

#[tokio::test]
async fn manual_config_sends_headers_and_drops_excluded_attributes() {
    let (sandbox, _dir, server) = setup().await;
    let mut config = manual(proto::HttpMethod::Post, "tickets");
    if let Some(proto::destination_config::Endpoint::Manual(endpoint)) = config.endpoint.as_mut() {
        endpoint.headers = "X-Source:crm, X-Trace:a:b".into();
    }
    config.exclude_attributes = vec!["internal".into(), "customer.secret".into()];
    let name = active_destination(&server, "manual", config).await;
    let record = json!({"body": "b", "from": "c@example.com", "to": "support@sandbox.example.com",
        "internal": {"score": 3}, "customer": {"secret": "x", "tier": "gold"}});
    let answered = send(&server, &name, vec![vec![raw("m-1", record)]])
        .await
        .unwrap();
    assert_eq!(answered.of("m-1").outcome(), Outcome::Delivered);
    let request = &sandbox.requests()[0];
    assert_eq!(request.header("x-source"), Some("crm"));
    assert_eq!(request.header("x-trace"), Some("a:b"));
    assert_eq!(
        request.json.as_ref().unwrap(),
        &json!({"body": "b", "from": "c@example.com", "to": "support@sandbox.example.com", "customer": {"tier": "gold"}})
    );
    server.stop().await;
}

#[tokio::test]
async fn invalid_records_are_reported_and_the_rest_delivered() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(
        &server,
        "states",
        template("update_ticket_state", &[("ticket_number", "{number}")]),
    )
    .await;
    let tickets = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    send(&server, &tickets, vec![vec![raw("t", ticket(0))]])
        .await
        .unwrap();
    sandbox.clear_requests();
    let struct_record = proto::Record {
        id: "struct".into(),
        data: Some(proto::record::Data::Json(JsonObject::from_json(
            json!({"number": 1.0, "state": "closed"})
                .as_object()
                .unwrap(),
        ))),
    };
    let messages = vec![
        vec![
            raw("ok-1", json!({"number": 1, "state": "pending"})),
            raw("no-number", json!({"state": "pending"})),
            raw("bad-state", json!({"number": 1, "state": "archived"})),
            proto::Record {
                id: "not-json".into(),
                data: Some(proto::record::Data::RawJson(b"{oops".to_vec())),
            },
            proto::Record {
                id: "".into(),
                data: Some(proto::record::Data::RawJson(b"{}".to_vec())),
            },
            proto::Record {
                id: "no-data".into(),
                data: None,
            },
        ],
        vec![struct_record],
    ];
    let answered = send(&server, &name, messages).await.unwrap();
    assert_eq!(answered.of("ok-1").outcome(), Outcome::Delivered);
    assert_eq!(answered.of("struct").outcome(), Outcome::Delivered);
    for (id, field) in [
        ("no-number", "record.number"),
        ("bad-state", "record.state"),
        ("not-json", "record"),
        ("", "record.id"),
        ("no-data", "record"),
    ] {
        let result = answered.of(id);
        assert_eq!(result.outcome(), Outcome::Invalid, "{id}");
        assert_eq!(result.field, field, "{id}: {}", result.error);
        assert_eq!(result.attempts, 0);
    }
    let summary = answered.summary.unwrap();
    assert_eq!(
        (summary.records_received, summary.delivered, summary.invalid),
        (7, 2, 5)
    );
    // The struct's number 1.0 became the path segment 1, not 1.0.
    let paths: Vec<_> = sandbox
        .requests()
        .iter()
        .map(|request| request.path.clone())
        .collect();
    assert_eq!(paths, vec!["/v1/tickets/1/state", "/v1/tickets/1/state"]);
    server.stop().await;
}

#[tokio::test]
async fn stream_opening_errors() {
    let (_sandbox, _dir, server) = setup().await;
    let status = send(&server, "destinations/ghost", vec![])
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = send(&server, "ghost", vec![]).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    server
        .destinations()
        .await
        .pause_destination(proto::PauseDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    let status = send(&server, &name, vec![]).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("paused"), "{}", status.message());

    let status = server
        .delivery()
        .await
        .send_records(tokio_stream::iter(vec![flows::batch(vec![raw(
            "x",
            json!({}),
        )])]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn a_replayed_stream_is_answered_with_duplicates() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let records = || {
        (0..20)
            .map(|index| raw(&format!("r-{index}"), ticket(index)))
            .collect::<Vec<_>>()
    };
    let first = send(&server, &name, vec![records()]).await.unwrap();
    assert_eq!(first.summary.as_ref().unwrap().delivered, 20);
    let replay = send(&server, &name, vec![records(), vec![raw("r-0", ticket(0))]])
        .await
        .unwrap();
    let summary = replay.summary.unwrap();
    assert_eq!((summary.delivered, summary.duplicate), (0, 21));
    let original = first.of("r-3").response.as_ref().unwrap();
    let duplicate = replay
        .results
        .iter()
        .find(|result| result.record_ids == ["r-3"])
        .unwrap();
    assert_eq!(duplicate.outcome(), Outcome::Duplicate);
    assert_eq!(duplicate.response.as_ref().unwrap().http_status, 201);
    assert_eq!(duplicate.response.as_ref().unwrap().body, original.body);
    assert_eq!(
        sandbox.requests().len(),
        20,
        "each record reached groove once"
    );
    server.stop().await;
}

/// Creates `ticket_count` tickets (numbers 1 to `ticket_count`), then makes every call take `latency` and returns an
/// active `update_ticket_state` destination (ticket from the record's `number`) with `concurrency`; the
/// sandbox's recorded requests are cleared.
async fn ticket_state_destination(
    sandbox: &SandboxHandle,
    server: &TestServer,
    ticket_count: usize,
    latency: Duration,
    concurrency: u32,
) -> String {
    let tickets = active_destination(server, "tickets", template("create_ticket", &[])).await;
    send(
        server,
        &tickets,
        vec![(0..ticket_count)
            .map(|index| raw(&format!("t-{index}"), ticket(index)))
            .collect()],
    )
    .await
    .unwrap();
    sandbox.set_faults(Faults {
        latency,
        ..Faults::default()
    });
    let mut config = template("update_ticket_state", &[("ticket_number", "{number}")]);
    config.delivery = Some(proto::DeliveryOptions {
        concurrency,
        ..Default::default()
    });
    let name = active_destination(server, "states", config).await;
    sandbox.clear_requests();
    name
}

#[tokio::test]
async fn updates_to_one_ticket_stay_in_order_under_concurrency() {
    let (sandbox, _dir, server) = setup().await;
    let name = ticket_state_destination(&sandbox, &server, 4, Duration::from_millis(2), 16).await;
    let states = ["pending", "opened", "closed", "unread", "spam"];
    let mut records = Vec::new();
    for round in 0..40 {
        for number in 1..=4 {
            records.push(raw(
                &format!("s-{round}-{number}"),
                json!({"number": number, "state": states[(round + number) % 5], "round": round}),
            ));
        }
    }
    let answered = send(
        &server,
        &name,
        records.chunks(16).map(<[_]>::to_vec).collect(),
    )
    .await
    .unwrap();
    assert_eq!(answered.summary.unwrap().delivered, 160);
    for number in 1..=4 {
        let rounds: Vec<i64> = sandbox
            .requests()
            .iter()
            .filter(|request| request.path == format!("/v1/tickets/{number}/state"))
            .map(|request| request.json.as_ref().unwrap()["round"].as_i64().unwrap())
            .collect();
        assert_eq!(
            rounds,
            (0..40).collect::<Vec<_>>(),
            "ticket {number} updates out of order"
        );
    }
    server.stop().await;
}

/// A key with nothing in flight takes any free worker: one busy ticket's queue does not hold up updates to the
/// others, whatever their keys hash to.
#[tokio::test]
async fn a_busy_ticket_does_not_hold_up_updates_to_other_tickets() {
    let (sandbox, _dir, server) = setup().await;
    let name = ticket_state_destination(&sandbox, &server, 17, Duration::from_millis(100), 9).await;
    let update = |id: String, number: u32| raw(&id, json!({"number": number, "state": "pending"}));
    // Ticket 1 gets twelve updates; tickets 2 to 17 one each, read after ticket 1's fourth. Eight workers are
    // free for them: they take two rounds, both before ticket 1's third update.
    let mut records: Vec<proto::Record> = (1..=4).map(|n| update(format!("a-{n}"), 1)).collect();
    records.extend((2..=17).map(|number| update(format!("b-{number}"), number)));
    records.extend((5..=12).map(|n| update(format!("a-{n}"), 1)));
    let answered = send(&server, &name, vec![records]).await.unwrap();
    assert_eq!(answered.summary.unwrap().delivered, 28);
    let requests = sandbox.requests();
    let arrival = |path: &str, nth: usize| {
        requests
            .iter()
            .filter(|request| request.path == path)
            .nth(nth)
            .map(|request| request.seq)
            .unwrap()
    };
    let third_of_ticket_1 = arrival("/v1/tickets/1/state", 2);
    for number in 2..=17 {
        let other = arrival(&format!("/v1/tickets/{number}/state"), 0);
        assert!(
            other < third_of_ticket_1,
            "ticket {number}'s update waited behind ticket 1's queue"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_rate_limit_storm_is_waited_out_and_everything_delivered() {
    let sandbox = start_sandbox_with(SandboxConfig {
        api_key: common::SANDBOX_KEY.to_string(),
        faults: Faults {
            rate_limit: Some(RateLimit {
                calls: 10,
                window: Duration::from_secs(1),
            }),
            ..Faults::default()
        },
        ..SandboxConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let mut config = template("create_ticket", &[]);
    config.delivery = Some(proto::DeliveryOptions {
        concurrency: 8,
        ..Default::default()
    });
    let name = active_destination(&server, "tickets", config).await;
    let records: Vec<_> = (0..30)
        .map(|index| raw(&format!("r-{index}"), ticket(index)))
        .collect();
    let answered = send(&server, &name, vec![records]).await.unwrap();
    let summary = answered.summary.unwrap();
    assert_eq!(
        summary.delivered,
        30,
        "{:?}",
        answered
            .results
            .iter()
            .filter(|r| r.outcome() != Outcome::Delivered)
            .collect::<Vec<_>>()
    );
    let stats = sandbox.stats();
    assert_eq!(stats.count(201), 30);
    // Pause honoured: after a 429 with Retry-After r, nothing is sent for r seconds (beyond calls already on
    // the wire when the 429 came back).
    let requests = sandbox.requests();
    let mut pauses = 0;
    for request in requests.iter().filter(|request| request.status == 429) {
        let retry_after: u64 = request
            .response_header("retry-after")
            .unwrap()
            .parse()
            .unwrap();
        let quiet_from = request.received_at_ms + 250;
        let quiet_until = request.received_at_ms + retry_after * 1000 - 10;
        let early: Vec<_> = requests
            .iter()
            .filter(|other| other.received_at_ms > quiet_from && other.received_at_ms < quiet_until)
            .map(|other| (other.seq, other.received_at_ms, other.status))
            .collect();
        assert!(
            early.is_empty(),
            "calls during the pause after seq {}: {early:?}",
            request.seq
        );
        pauses += 1;
    }
    assert!(
        stats.count(429) <= 10,
        "too many 429s: {stats:?} over {pauses} pauses"
    );
    server.stop().await;
}

fn scripted(steps: &[(u16, bool)]) -> Faults {
    Faults {
        script: steps
            .iter()
            .map(|&(status, after_processing)| ScriptedAnswer {
                status,
                after_processing,
                retry_after_s: None,
            })
            .collect(),
        ..Faults::default()
    }
}

#[tokio::test]
async fn transient_errors_are_retried() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    // Refusals that say nothing was done (503, 429): a create may be repeated safely.
    sandbox.set_faults(scripted(&[(503, false), (429, false)]));
    let answered = send(&server, &name, vec![vec![raw("r-1", ticket(1))]])
        .await
        .unwrap();
    let result = answered.of("r-1");
    assert_eq!(result.outcome(), Outcome::Delivered, "{result:?}");
    assert_eq!(result.attempts, 3);
    assert_eq!(sandbox.stats().count(201), 1);

    // An update may be repeated even after a 500 or a lost answer.
    let states = active_destination(
        &server,
        "states",
        template("update_ticket_state", &[("ticket_number", "1")]),
    )
    .await;
    sandbox.set_faults(scripted(&[(500, true), (0, true)]));
    let answered = send(
        &server,
        &states,
        vec![vec![raw("s-1", json!({"state": "closed"}))]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("s-1").outcome(), Outcome::Delivered);
    assert_eq!(answered.of("s-1").attempts, 3);
    server.stop().await;
}

#[tokio::test]
async fn a_create_that_may_have_reached_groove_is_kept_failed_then_retried_on_request() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    sandbox.set_faults(scripted(&[(500, false)]));
    let answered = send(
        &server,
        &name,
        vec![vec![raw("r-1", ticket(1)), raw("r-2", ticket(2))]],
    )
    .await
    .unwrap();
    let failed = answered.of("r-1");
    assert_eq!(failed.outcome(), Outcome::Failed, "{failed:?}");
    assert_eq!(failed.attempts, 1, "a post answered 500 is not retried");
    assert!(failed.error.contains("duplicate"), "{}", failed.error);
    assert_eq!(answered.of("r-2").outcome(), Outcome::Delivered);

    let mut delivery = server.delivery().await;
    let listed = delivery
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.failed_records.len(), 1);
    let kept = &listed.failed_records[0];
    assert_eq!(kept.name, format!("{name}/failedRecords/r-1"));
    assert_eq!(kept.outcome(), Outcome::Failed);
    assert_eq!(kept.response.as_ref().unwrap().http_status, 500);
    let request = kept.request.as_ref().unwrap();
    assert!(request.url.ends_with("/v1/tickets"));
    assert!(request
        .headers
        .iter()
        .all(|header| !header.value.contains(common::SANDBOX_KEY)));
    let Some(proto::record::Data::RawJson(record)) = &kept.record.as_ref().unwrap().data else {
        panic!("record kept as it was sent, raw json")
    };
    assert_eq!(record, &ticket(1).to_string().into_bytes());
    assert!(kept.maybe_delivered);

    let retried = delivery
        .retry_failed_records(proto::RetryFailedRecordsRequest {
            destination: name.clone(),
            record_ids: vec!["r-1".into()],
            all: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.results.len(), 1);
    assert_eq!(retried.results[0].outcome(), Outcome::Delivered);
    assert_eq!(retried.summary.unwrap().delivered, 1);
    let listed = delivery
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(listed.failed_records.is_empty());
    // Now delivered: a replay is a duplicate.
    let replay = send(&server, &name, vec![vec![raw("r-1", ticket(1))]])
        .await
        .unwrap();
    assert_eq!(replay.of("r-1").outcome(), Outcome::Duplicate);

    let status = delivery
        .retry_failed_records(proto::RetryFailedRecordsRequest {
            destination: name.clone(),
            record_ids: vec![],
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = delivery
        .retry_failed_records(proto::RetryFailedRecordsRequest {
            destination: name,
            record_ids: vec!["nope".into()],
            all: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    server.stop().await;
}

#[tokio::test]
async fn rejected_records_are_kept_and_retry_all_uses_the_current_config() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(
        &server,
        "states",
        template("update_ticket_state", &[("ticket_number", "{number}")]),
    )
    .await;
    // Ticket 7 does not exist yet: Groove answers 404, which retrying cannot fix.
    let answered = send(
        &server,
        &name,
        vec![vec![
            raw("a", json!({"number": 7, "state": "closed"})),
            raw("b", json!({"number": 8, "state": "closed"})),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("a").outcome(), Outcome::Rejected);
    assert_eq!(answered.of("a").response.as_ref().unwrap().http_status, 404);
    let mut delivery = server.delivery().await;
    let first = delivery
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.failed_records.len(), 1);
    let second = delivery
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: name.clone(),
            page_size: 1,
            page_token: first.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.failed_records.len(), 1);
    assert_ne!(first.failed_records[0].name, second.failed_records[0].name);

    // Create tickets 1..=8 and retry everything.
    let tickets = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    send(
        &server,
        &tickets,
        vec![(0..8)
            .map(|index| raw(&format!("t-{index}"), ticket(index)))
            .collect()],
    )
    .await
    .unwrap();
    sandbox.clear_requests();
    let retried = delivery
        .retry_failed_records(proto::RetryFailedRecordsRequest {
            destination: name.clone(),
            record_ids: vec![],
            all: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retried.summary.unwrap().delivered, 2);
    assert_eq!(sandbox.requests().len(), 2);
    server.stop().await;
}

#[tokio::test]
async fn batching_groups_and_envelopes() {
    let (sandbox, _dir, server) = setup().await;
    sandbox.set_faults(Faults {
        accept_batches: true,
        ..Faults::default()
    });
    let batched = |size,
                   grouping: proto::GroupingAlgorithm,
                   attribute: &str,
                   envelope: proto::BatchEnvelope,
                   key: &str| {
        let mut config = manual(proto::HttpMethod::Post, "tickets");
        config.batching = Some(proto::Batching {
            enabled: true,
            batch_size: size,
            grouping: grouping as i32,
            group_by_attribute: attribute.to_string(),
            envelope: envelope as i32,
            envelope_key: key.to_string(),
            ..Default::default()
        });
        config
    };
    let records = |count: usize| -> Vec<proto::Record> {
        (0..count)
            .map(|index| {
                let mut body = ticket(index);
                body["team"] = json!(if index % 2 == 0 { "even" } else { "odd" });
                raw(&format!("r-{index}"), body)
            })
            .collect()
    };

    // Arrival order, JSON array, 10 per batch: 25 records → 10, 10, 5.
    let name = active_destination(
        &server,
        "arrival",
        batched(
            10,
            proto::GroupingAlgorithm::ArrivalOrder,
            "",
            proto::BatchEnvelope::JsonArray,
            "",
        ),
    )
    .await;
    sandbox.clear_requests();
    let answered = send(&server, &name, vec![records(25)]).await.unwrap();
    assert_eq!(answered.summary.as_ref().unwrap().delivered, 25);
    assert_eq!(answered.results.len(), 3);
    let sizes: Vec<usize> = sandbox
        .requests()
        .iter()
        .map(|request| request.json.as_ref().unwrap().as_array().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![10, 10, 5]);
    assert_eq!(
        answered.results[0].record_ids,
        (0..10)
            .map(|index| format!("r-{index}"))
            .collect::<Vec<_>>()
    );

    // By attribute value: even and odd records never share a batch.
    let name = active_destination(
        &server,
        "by-team",
        batched(
            4,
            proto::GroupingAlgorithm::AttributeValue,
            "team",
            proto::BatchEnvelope::JsonArray,
            "",
        ),
    )
    .await;
    sandbox.clear_requests();
    send(&server, &name, vec![records(10)]).await.unwrap();
    for request in sandbox.requests() {
        let teams: std::collections::HashSet<String> = request
            .json
            .as_ref()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|record| record["team"].to_string())
            .collect();
        assert_eq!(teams.len(), 1, "mixed batch {:?}", request.json);
    }
    assert_eq!(sandbox.requests().len(), 4, "even: 4+1, odd: 4+1");

    // Wrapped envelope.
    let name = active_destination(
        &server,
        "wrapped",
        batched(
            5,
            proto::GroupingAlgorithm::ArrivalOrder,
            "",
            proto::BatchEnvelope::Wrapped,
            "tickets",
        ),
    )
    .await;
    sandbox.clear_requests();
    let answered = send(&server, &name, vec![records(5)]).await.unwrap();
    assert_eq!(answered.summary.unwrap().delivered, 5);
    let body = sandbox.requests()[0].json.clone().unwrap();
    assert_eq!(body["tickets"].as_array().unwrap().len(), 5);
    server.stop().await;
}

#[tokio::test]
async fn batching_by_rendered_request_and_max_wait() {
    let (sandbox, _dir, server) = setup().await;
    sandbox.set_faults(Faults {
        accept_batches: true,
        ..Faults::default()
    });
    let tickets = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    send(
        &server,
        &tickets,
        vec![(0..2)
            .map(|index| raw(&format!("t-{index}"), ticket(index)))
            .collect()],
    )
    .await
    .unwrap();

    let mut config = manual(proto::HttpMethod::Post, "tickets/{number}/messages");
    config.batching = Some(proto::Batching {
        enabled: true,
        batch_size: 100,
        max_wait: Some(prost_types::Duration {
            seconds: 0,
            nanos: 200_000_000,
        }),
        ..Default::default()
    });
    let name = active_destination(&server, "messages", config).await;
    sandbox.clear_requests();
    // One message with records for two tickets, then the stream stays open past max wait.
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests
        .send(flows::batch(
            (0..6)
                .map(|index| {
                    raw(
                        &format!("m-{index}"),
                        json!({"number": 1 + index % 2, "body": format!("note {index}")}),
                    )
                })
                .collect(),
        ))
        .await
        .unwrap();
    // Partial batches leave after max wait, while the stream is still open.
    let early = flows::next_results(&mut stream, 2).await;
    assert_eq!(
        sandbox.requests().len(),
        2,
        "two rendered URLs, two batches"
    );
    drop(requests);
    let rest = flows::drain(&mut stream).await.unwrap();
    assert!(rest.results.is_empty());
    assert_eq!(rest.summary.unwrap().delivered, 6);
    let mut paths: Vec<_> = sandbox
        .requests()
        .iter()
        .map(|request| request.path.clone())
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        vec!["/v1/tickets/1/messages", "/v1/tickets/2/messages"]
    );
    assert_eq!(early.len(), 2);
    for result in early {
        assert_eq!(result.record_ids.len(), 3);
    }
    server.stop().await;
}

#[tokio::test]
async fn preview_shows_exact_requests_without_the_key_and_calls_nothing() {
    let (sandbox, _dir, server) = setup().await;
    let mut client = server.destinations().await;
    let preview = client
        .preview_requests(proto::PreviewRequestsRequest {
            source: Some(proto::preview_requests_request::Source::Config(template(
                "update_ticket_state",
                &[("ticket_number", "{number}")],
            ))),
            records: vec![
                raw("a", json!({"number": 12, "state": "open"})),
                raw("b", json!({"state": "open"})),
            ],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.requests.len(), 1);
    let request = &preview.requests[0];
    assert_eq!(request.method(), proto::HttpMethod::Put);
    assert_eq!(
        request.url,
        format!("{}/tickets/12/state", sandbox.base_url())
    );
    assert_eq!(request.body, r#"{"number":12,"state":"opened"}"#);
    assert!(request
        .headers
        .iter()
        .any(|header| header.name == "Authorization" && header.value == "Bearer ****"));
    assert_eq!(preview.errors.len(), 1);
    assert_eq!(
        (
            preview.errors[0].record_id.as_str(),
            preview.errors[0].field.as_str()
        ),
        ("b", "record.number")
    );
    assert!(
        sandbox.requests().is_empty(),
        "preview must not call groove"
    );

    // A saved destination with batching previews its batches.
    let mut config = manual(proto::HttpMethod::Post, "tickets");
    config.batching = Some(proto::Batching {
        enabled: true,
        batch_size: 2,
        ..Default::default()
    });
    let name = active_destination(&server, "batched", config).await;
    let preview = client
        .preview_requests(proto::PreviewRequestsRequest {
            source: Some(proto::preview_requests_request::Source::Destination(name)),
            records: (0..3)
                .map(|index| raw(&format!("r-{index}"), ticket(index)))
                .collect(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(preview.requests.len(), 2);
    assert_eq!(preview.requests[0].record_ids, vec!["r-0", "r-1"]);
    assert!(preview.requests[0].body.starts_with('['));

    let status = client
        .preview_requests(proto::PreviewRequestsRequest {
            source: Some(proto::preview_requests_request::Source::Config(template(
                "nope",
                &[],
            ))),
            records: vec![raw("a", json!({}))],
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    server.stop().await;
}

#[tokio::test]
async fn test_send_works_while_paused_and_stays_out_of_the_ledger() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let mut client = server.destinations().await;
    client
        .pause_destination(proto::PauseDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    let tested = client
        .test_destination(proto::TestDestinationRequest {
            name: name.clone(),
            draft: None,
            payload: Some(proto::test_destination_request::Payload::Record(raw(
                "probe",
                ticket(1),
            ))),
        })
        .await
        .unwrap()
        .into_inner();
    let response = tested.response.unwrap();
    assert_eq!(response.http_status, 201);
    let Some(proto::groove_response::Body::Json(body)) = &response.body else {
        panic!("expected a json body, got {:?}", response.body);
    };
    let body = body.to_json().unwrap();
    assert!(
        body["ticket"]["number"].as_u64().is_some(),
        "the created ticket comes back: {body}"
    );
    assert!(response
        .headers
        .iter()
        .any(|header| header.name == "location"));
    assert!(tested.error.is_empty());
    assert_eq!(sandbox.requests().len(), 1);

    // An edited request: the given Authorization is ignored, the URL must stay under the base URL.
    let mut edited = tested.request.unwrap();
    edited.headers.push(proto::HttpHeader {
        name: "Authorization".into(),
        value: "Bearer stolen".into(),
    });
    let again = client
        .test_destination(proto::TestDestinationRequest {
            name: name.clone(),
            draft: None,
            payload: Some(proto::test_destination_request::Payload::Request(
                edited.clone(),
            )),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.response.unwrap().http_status, 201);
    assert_eq!(
        sandbox.requests()[1].header("authorization"),
        Some(format!("Bearer {}", common::SANDBOX_KEY).as_str())
    );
    edited.url = "http://evil.example/v1/tickets".into();
    let status = client
        .test_destination(proto::TestDestinationRequest {
            name: name.clone(),
            draft: None,
            payload: Some(proto::test_destination_request::Payload::Request(edited)),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        sandbox.requests().len(),
        2,
        "nothing sent to the other host"
    );

    // Test sends are not in the ledger: the same id streams normally once active.
    client
        .activate_destination(proto::ActivateDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    let answered = send(&server, &name, vec![vec![raw("probe", ticket(1))]])
        .await
        .unwrap();
    assert_eq!(answered.of("probe").outcome(), Outcome::Delivered);
    server.stop().await;
}

/// Test before save: a draft (credential + config) is validated as CreateDestination would, sent through the
/// credential's pacer like every call of that key, and neither saved nor entered in the ledger.
#[tokio::test]
async fn a_draft_is_tested_before_it_is_saved_through_the_pacer_and_stays_out_of_the_ledger() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    let mut client = server.destinations().await;
    let draft = |config: proto::DestinationConfig| {
        Some(proto::DestinationDraft {
            credential: "credentials/main".into(),
            config: Some(config),
        })
    };
    let test_draft = |config: proto::DestinationConfig, id: &str| proto::TestDestinationRequest {
        name: String::new(),
        draft: draft(config),
        payload: Some(proto::test_destination_request::Payload::Record(raw(
            id,
            ticket(1),
        ))),
    };

    for id in ["probe", "probe-2", "probe-3"] {
        let tested = client
            .test_destination(test_draft(template("create_ticket", &[]), id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tested.response.unwrap().http_status, 201);
        assert!(tested.error.is_empty(), "{}", tested.error);
        assert!(tested.request.unwrap().url.ends_with("/tickets"));
    }
    assert_eq!(sandbox.requests().len(), 3);
    assert_eq!(
        sandbox.requests()[0].header("authorization"),
        Some(format!("Bearer {}", common::SANDBOX_KEY).as_str())
    );

    // Validated as CreateDestination would, every problem named from `draft`; nothing is sent.
    let status = client
        .test_destination(proto::TestDestinationRequest {
            draft: Some(proto::DestinationDraft {
                credential: "main".into(),
                config: Some(template("nope", &[])),
            }),
            ..test_draft(template("create_ticket", &[]), "bad")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields = common::fields_of(&status);
    assert!(
        fields.contains(&"draft.credential".to_string()),
        "{fields:?}"
    );
    assert!(
        fields.contains(&"draft.config.template.template_id".to_string()),
        "{fields:?}"
    );
    let status = client
        .test_destination(proto::TestDestinationRequest {
            draft: Some(proto::DestinationDraft {
                credential: "credentials/main".into(),
                config: None,
            }),
            ..test_draft(template("create_ticket", &[]), "bad")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A name and a draft at once is ambiguous.
    let status = client
        .test_destination(proto::TestDestinationRequest {
            name: "destinations/tickets".into(),
            ..test_draft(template("create_ticket", &[]), "bad")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A credential that does not exist.
    let status = client
        .test_destination(proto::TestDestinationRequest {
            draft: Some(proto::DestinationDraft {
                credential: "credentials/nope".into(),
                config: Some(template("create_ticket", &[])),
            }),
            ..test_draft(template("create_ticket", &[]), "bad")
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert_eq!(sandbox.requests().len(), 3, "refused drafts reached groove");

    // Never saved, and not in the ledger: once saved and active, the same id is delivered, not a duplicate.
    let listed = client
        .list_destinations(proto::ListDestinationsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert!(listed.destinations.is_empty());
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let answered = send(&server, &name, vec![vec![raw("probe", ticket(1))]])
        .await
        .unwrap();
    assert_eq!(answered.of("probe").outcome(), Outcome::Delivered);

    // Through the credential's pacer: once Groove tells this key to wait a minute, a draft's test send waits
    // with every other call of the key, and sends nothing before its caller gives up.
    sandbox.set_faults(Faults {
        script: vec![ScriptedAnswer {
            status: 429,
            after_processing: false,
            retry_after_s: Some(60),
        }],
        ..Faults::default()
    });
    let limited = client
        .test_destination(test_draft(template("create_ticket", &[]), "limited"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(limited.response.unwrap().http_status, 429);
    let sent_before = sandbox.requests().len();
    let mut waiting = tonic::Request::new(test_draft(template("create_ticket", &[]), "waits"));
    waiting.set_timeout(Duration::from_secs(1));
    let status = client.test_destination(waiting).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(
        sandbox.requests().len(),
        sent_before,
        "a draft's test send went past the credential's pacer"
    );
    server.stop().await;
}

/// What a local webhook receiver got: the JSON bodies, and the `Authorization` header of each call.
#[derive(Clone, Default)]
struct Received {
    bodies: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
    authorizations: std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
}

/// A local webhook receiver; its URL is `http://127.0.0.1:<port>/hook`.
async fn webhook_receiver() -> (String, Received) {
    use axum::{extract::State, http::HeaderMap, routing::post, Json, Router};
    let received = Received::default();
    let app = Router::new()
        .route(
            "/hook",
            post(
                |State(seen): State<Received>,
                 headers: HeaderMap,
                 Json(body): Json<serde_json::Value>| async move {
                    let authorization = headers
                        .get("authorization")
                        .and_then(|value| value.to_str().ok())
                        .map(str::to_string);
                    seen.authorizations.lock().unwrap().push(authorization);
                    seen.bodies.lock().unwrap().push(body);
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (hook, received)
}

/// A server whose webhooks may reach the loopback receiver.
async fn setup_allowing_loopback_webhooks(
) -> (groove_sandbox::SandboxHandle, tempfile::TempDir, TestServer) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with(dir.path(), &sandbox.base_url(), |settings| {
        settings.webhook_allowed_hosts = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    credential(&server, "main").await;
    (sandbox, dir, server)
}

#[tokio::test]
async fn the_response_webhook_receives_every_result() {
    let (hook, received) = webhook_receiver().await;
    // The receiver is on loopback, which webhooks reach only when it is listed.
    let (sandbox, _dir, server) = setup_allowing_loopback_webhooks().await;
    let mut config = template("create_ticket", &[]);
    config.response_webhook = Some(proto::ResponseWebhook { url: hook });
    let name = active_destination(&server, "tickets", config).await;
    let mut records: Vec<_> = (0..10)
        .map(|index| raw(&format!("r-{index}"), ticket(index)))
        .collect();
    records.push(raw("bad", json!({"body": "no sender"})));
    send(&server, &name, vec![records]).await.unwrap();
    let mut waited = 0;
    while received.bodies.lock().unwrap().len() < 11 && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let received = received.bodies.lock().unwrap().clone();
    assert_eq!(received.len(), 11);
    let delivered: Vec<_> = received
        .iter()
        .filter(|result| result["outcome"] == "delivered")
        .collect();
    assert_eq!(delivered.len(), 10);
    assert_eq!(delivered[0]["destination"], name);
    assert_eq!(delivered[0]["http_status"], 201);
    assert!(delivered[0]["response"]["body"]["ticket"].is_object());
    let all = serde_json::to_string(&received).unwrap();
    assert!(
        !all.contains(common::SANDBOX_KEY),
        "the key reached the webhook"
    );
    assert_eq!(sandbox.stats().count(201), 10);
    server.stop().await;
}

#[tokio::test]
async fn a_webhook_on_loopback_is_refused_by_default_and_delivery_goes_on() {
    let (hook, received) = webhook_receiver().await;
    let (sandbox, _dir, server) = setup().await;
    let mut config = template("create_ticket", &[]);
    config.response_webhook = Some(proto::ResponseWebhook { url: hook });
    let name = active_destination(&server, "tickets", config).await;
    let records: Vec<_> = (0..3)
        .map(|index| raw(&format!("r-{index}"), ticket(index)))
        .collect();
    let answered = send(&server, &name, vec![records]).await.unwrap();
    assert_eq!(answered.summary.unwrap().delivered, 3);
    assert_eq!(sandbox.stats().count(201), 3);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        received.bodies.lock().unwrap().is_empty(),
        "a refused webhook got results"
    );
    // The server is unharmed: the next stream works too.
    let again = send(&server, &name, vec![vec![raw("r-9", ticket(9))]])
        .await
        .unwrap();
    assert_eq!(again.of("r-9").outcome(), Outcome::Delivered);
    server.stop().await;
}

#[tokio::test]
async fn a_webhook_password_is_never_shown_and_survives_a_read_modify_write() {
    use base64::Engine;
    let (hook, received) = webhook_receiver().await;
    let with_password = hook.replacen("http://", "http://hooks:s3cret@", 1);
    let shown = hook.replacen("http://", "http://hooks:***@", 1);
    let (_sandbox, _dir, server) = setup_allowing_loopback_webhooks().await;
    let mut client = server.destinations().await;
    let mut config = template("create_ticket", &[]);
    config.response_webhook = Some(proto::ResponseWebhook {
        url: with_password.clone(),
    });
    let webhook_of = |destination: &proto::Destination| {
        destination
            .config
            .as_ref()
            .and_then(|config| config.response_webhook.as_ref())
            .map(|webhook| webhook.url.clone())
    };
    let created = client
        .create_destination(proto::CreateDestinationRequest {
            destination_id: "tickets".into(),
            destination: Some(proto::Destination {
                display_name: "tickets".into(),
                credential: "credentials/main".into(),
                config: Some(config),
                ..Default::default()
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(webhook_of(&created).as_deref(), Some(shown.as_str()));
    let got = client
        .get_destination(proto::GetDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(webhook_of(&got).as_deref(), Some(shown.as_str()));
    let listed = client
        .list_destinations(proto::ListDestinationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .destinations;
    assert_eq!(webhook_of(&listed[0]).as_deref(), Some(shown.as_str()));

    // A client that reads, edits another field and writes the whole destination back sends the redacted URL.
    let mut edited = got.clone();
    edited.display_name = "renamed".into();
    let updated = client
        .update_destination(proto::UpdateDestinationRequest {
            destination: Some(edited),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(updated.display_name, "renamed");
    assert_eq!(webhook_of(&updated).as_deref(), Some(shown.as_str()));

    // The stored password is the one sent: the webhook is called with it.
    client
        .activate_destination(proto::ActivateDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    send(&server, &created.name, vec![vec![raw("r-1", ticket(1))]])
        .await
        .unwrap();
    let mut waited = 0;
    while received.authorizations.lock().unwrap().is_empty() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(25)).await;
        waited += 1;
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("hooks:s3cret")
    );
    assert_eq!(
        received.authorizations.lock().unwrap().clone(),
        [Some(expected)]
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_goes_away_leaves_every_record_accounted_for() {
    let (sandbox, _dir, server) = setup().await;
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(20),
        ..Faults::default()
    });
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let (requests, mut stream) = flows::open(&server, &name).await;
    for chunk in 0..5 {
        requests
            .send(flows::batch(
                (0..10)
                    .map(|index| raw(&format!("r-{chunk}-{index}"), ticket(index)))
                    .collect(),
            ))
            .await
            .unwrap();
    }
    // Read one result, then vanish without half-closing.
    let _ = stream.message().await.unwrap();
    drop(stream);
    drop(requests);
    // Replaying every id later: each is either a duplicate (delivered and in the ledger) or delivered now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sandbox.set_faults(Faults::default());
    let all: Vec<_> = (0..5)
        .flat_map(|chunk| {
            (0..10).map(move |index| raw(&format!("r-{chunk}-{index}"), ticket(index)))
        })
        .collect();
    let replay = send(&server, &name, vec![all]).await.unwrap();
    let summary = replay.summary.unwrap();
    assert_eq!(summary.duplicate + summary.delivered, 50, "{summary:?}");
    assert!(summary.duplicate > 0);
    assert_eq!(sandbox.stats().count(201), 50, "no record was sent twice");
    server.stop().await;
}

#[tokio::test]
async fn pausing_stops_an_open_stream_after_what_it_accepted() {
    let (sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests
        .send(flows::batch(
            (0..5)
                .map(|index| raw(&format!("r-{index}"), ticket(index)))
                .collect(),
        ))
        .await
        .unwrap();
    flows::next_results(&mut stream, 5).await;
    server
        .destinations()
        .await
        .pause_destination(proto::PauseDestinationRequest { name: name.clone() })
        .await
        .unwrap();
    // The stream notices within its state-check period, sends the summary and ends FAILED_PRECONDITION.
    let last = stream.message().await.unwrap().unwrap();
    assert!(last.results.is_empty());
    let summary = last.summary.expect("summary expected");
    assert_eq!(summary.delivered, 5);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("paused"), "{}", status.message());
    // Records sent after the pause are not delivered.
    let _ = requests
        .send(flows::batch(vec![raw("late", ticket(9))]))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sandbox.stats().count(201), 5);
    server.stop().await;
}

#[tokio::test]
async fn outcome_only_results_leave_out_bodies_and_requests() {
    let (_sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let requests = vec![
        proto::SendRecordsRequest {
            message: Some(proto::send_records_request::Message::Start(
                proto::StreamStart {
                    destination: name.clone(),
                    result_detail: proto::ResultDetail::OutcomeOnly as i32,
                },
            )),
        },
        flows::batch(vec![raw("r-1", ticket(1))]),
    ];
    let mut stream = server
        .delivery()
        .await
        .send_records(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let result = flows::next_results(&mut stream, 1).await.remove(0);
    assert_eq!(result.outcome(), Outcome::Delivered);
    let response = result.response.unwrap();
    assert_eq!(response.http_status, 201);
    assert!(response.body.is_none() && response.headers.is_empty() && result.request.is_none());
    server.stop().await;
}

#[tokio::test]
async fn deleting_the_destination_ends_an_open_stream_with_not_found() {
    let (_sandbox, _dir, server) = setup().await;
    let name = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let (requests, mut stream) = flows::open(&server, &name).await;
    requests
        .send(flows::batch(vec![raw("r-1", ticket(1))]))
        .await
        .unwrap();
    flows::next_results(&mut stream, 1).await;
    server
        .destinations()
        .await
        .delete_destination(proto::DeleteDestinationRequest {
            name: name.clone(),
            etag: String::new(),
        })
        .await
        .unwrap();
    let last = stream.message().await.unwrap().unwrap();
    assert_eq!(last.summary.expect("summary before the end").delivered, 1);
    let status = stream.message().await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("deleted"), "{}", status.message());
    drop(requests);
    server.stop().await;
}
