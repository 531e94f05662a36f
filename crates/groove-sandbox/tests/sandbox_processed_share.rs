//! The sandbox's `processed_share` knob over real HTTP: random faults that were carried out before
//! the fault was answered, next to the same faults refused before anything happened, and the
//! recording that tells the two apart.

use groove_sandbox::{self as sandbox, Faults, SandboxConfig, SandboxHandle, ScriptedAnswer};
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};

const KEY: &str = "test-key";

async fn start(faults: Faults) -> SandboxHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    sandbox::start(
        listener,
        SandboxConfig {
            api_key: KEY.into(),
            faults,
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap()
}

fn ticket_body(subject: &str) -> Value {
    json!({
        "subject": subject,
        "body": "I'm here to help!",
        "from": "support@sandbox.example.com",
        "to": {"email": "billybob@example.com", "name": "Billy Bob"},
    })
}

/// The response, or `None` when the connection was reset without one.
async fn post_ticket(handle: &SandboxHandle, subject: &str) -> Option<reqwest::Response> {
    match Client::new()
        .post(format!("{}/tickets", handle.base_url()))
        .bearer_auth(KEY)
        .json(&ticket_body(subject))
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

fn ticket_titles(handle: &SandboxHandle) -> Vec<String> {
    handle.snapshot()["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ticket| ticket["title"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Status and `fault_after_processing` of every recorded call, in arrival order.
fn recorded(handle: &SandboxHandle) -> Vec<(u16, bool)> {
    handle
        .requests()
        .iter()
        .map(|request| (request.status, request.fault_after_processing))
        .collect()
}

fn always_500(processed_share: f64) -> Faults {
    Faults {
        error_rate: 1.0,
        error_statuses: vec![500],
        processed_share,
        ..Faults::default()
    }
}

#[tokio::test]
async fn a_random_500_creates_the_ticket_only_when_processed_share_picks_it() {
    let handle = start(always_500(1.0)).await;
    let processed = post_ticket(&handle, "carried out").await.unwrap();
    assert_eq!(processed.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(processed.headers().get("location").is_none());
    let body: Value = processed.json().await.unwrap();
    assert!(
        body.get("ticket").is_none(),
        "the real answer is lost: {body}"
    );
    assert!(body["errors"].is_array(), "{body}");
    assert_eq!(ticket_titles(&handle), ["carried out"]);

    handle.set_faults(always_500(0.0));
    let refused = post_ticket(&handle, "refused").await.unwrap();
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        ticket_titles(&handle),
        ["carried out"],
        "a 500 not picked by processed_share creates nothing"
    );
    assert_eq!(recorded(&handle), [(500, true), (500, false)]);
}

#[tokio::test]
async fn a_random_reset_creates_the_ticket_only_when_processed_share_picks_it() {
    let dropping = |processed_share| Faults {
        drop_rate: 1.0,
        processed_share,
        ..Faults::default()
    };
    let handle = start(dropping(1.0)).await;
    assert!(post_ticket(&handle, "carried out").await.is_none());
    assert_eq!(ticket_titles(&handle), ["carried out"]);

    handle.set_faults(dropping(0.0));
    assert!(post_ticket(&handle, "refused").await.is_none());
    assert_eq!(ticket_titles(&handle), ["carried out"]);
    assert_eq!(recorded(&handle), [(0, true), (0, false)]);
}

#[tokio::test]
async fn processed_share_is_steerable_through_the_control_endpoint() {
    let handle = start(Faults::default()).await;
    let client = Client::new();
    let faults = client
        .get(format!("{}/faults", handle.control_url()))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert!(faults.get("processed_share").is_none(), "{faults}");
    let set = client
        .put(format!("{}/faults", handle.control_url()))
        .json(&json!({"error_rate": 1.0, "error_statuses": [502], "processed_share": 1.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(set.status(), StatusCode::OK);
    assert_eq!(handle.faults().processed_share, 1.0);
    let answered = post_ticket(&handle, "via control").await.unwrap();
    assert_eq!(answered.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(ticket_titles(&handle), ["via control"]);

    let bad = client
        .put(format!("{}/faults", handle.control_url()))
        .json(&json!({"processed_share": 1.5}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(handle.faults().processed_share, 1.0);
}

#[tokio::test]
async fn the_recording_tells_which_faults_took_effect() {
    let handle = start(Faults {
        script: vec![
            ScriptedAnswer::fail(503).once_processed(),
            ScriptedAnswer::fail(503),
            ScriptedAnswer::drop_connection().once_processed(),
        ],
        ..Faults::default()
    })
    .await;
    for subject in [
        "scripted 503 done",
        "scripted 503 refused",
        "scripted reset done",
    ] {
        post_ticket(&handle, subject).await;
    }
    post_ticket(&handle, "plain").await.unwrap();
    assert_eq!(
        recorded(&handle),
        [(503, true), (503, false), (0, true), (201, false)]
    );
    assert_eq!(
        ticket_titles(&handle),
        ["scripted 503 done", "scripted reset done", "plain"]
    );
}
