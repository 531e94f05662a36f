//! Metrics end to end: a real server with `--metrics-listen` on an ephemeral port delivers to a real
//! groove-sandbox, and `GET /metrics` is read and parsed as a scraper would.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use common::flows::{active_destination, credential, raw, send, template};
use common::{start_sandbox, TestServer};
use groove_destination::proto::Outcome;
use groove_destination::settings::Settings;
use groove_sandbox::{Faults, ScriptedAnswer};
use serde_json::json;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// One sample of the exposition: its name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Reads the OpenMetrics text format's samples (`name{label="value",...} value`); comments are skipped, and the
/// exposition must end with `# EOF`.
fn parse(text: &str) -> Vec<Sample> {
    assert!(text.ends_with("# EOF\n"), "no # EOF at the end:\n{text}");
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.strip_suffix('}').expect("labels close")),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("label=value");
                    let value = value
                        .strip_prefix('"')
                        .and_then(|value| value.strip_suffix('"'))
                        .expect("a quoted label value");
                    (key.to_string(), value.to_string())
                })
                .collect();
            let value = match value {
                "+Inf" => f64::INFINITY,
                value => value.parse().expect("a numeric value"),
            };
            Sample {
                name: name.to_string(),
                labels,
                value,
            }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(value))
        })
        .collect();
    assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
    found[0].value
}

async fn get(addr: SocketAddr, path: &str) -> reqwest::Response {
    reqwest::get(format!("http://{addr}{path}"))
        .await
        .expect("metrics answer")
}

async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let response = get(addr, "/metrics").await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        OPENMETRICS
    );
    parse(&response.text().await.expect("metrics body"))
}

#[tokio::test]
async fn metrics_count_records_calls_and_their_latency() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_with_metrics(dir.path(), &sandbox.base_url()).await;
    let metrics = server.metrics_addr.expect("metrics on");
    credential(&server, "main").await;

    // Tickets 1 and 2, through a destination of their own.
    let tickets = active_destination(&server, "tickets", template("create_ticket", &[])).await;
    let ticket = |index: u32| json!({"body": format!("help {index}"), "from": "customer@example.com", "to": "support@sandbox.example.com"});
    send(
        &server,
        &tickets,
        vec![vec![raw("t-1", ticket(1)), raw("t-2", ticket(2))]],
    )
    .await
    .unwrap();

    let states = active_destination(
        &server,
        "states",
        template("update_ticket_state", &[("ticket_number", "{number}")]),
    )
    .await;
    // The first call is refused with a 429 and a 503, and retried (a state update is safe to repeat).
    sandbox.set_faults(Faults {
        script: vec![ScriptedAnswer::fail(429), ScriptedAnswer::fail(503)],
        ..Faults::default()
    });
    let closed = |number: u32| json!({"number": number, "state": "closed"});
    let answered = send(
        &server,
        &states,
        vec![vec![
            raw("a", closed(1)),
            raw("b", closed(2)),
            // Tickets that do not exist: Groove answers 404.
            raw("x", closed(901)),
            raw("y", closed(902)),
            raw("", closed(1)),
        ]],
    )
    .await
    .unwrap();
    assert_eq!(answered.of("a").outcome(), Outcome::Delivered);
    assert_eq!(answered.of("x").outcome(), Outcome::Rejected);
    // Sent again: a duplicate.
    send(&server, &states, vec![vec![raw("a", closed(1))]])
        .await
        .unwrap();

    let samples = scrape(metrics).await;
    let records = |outcome: &str| {
        value(
            &samples,
            "groove_destination_records_total",
            &[("destination", "states"), ("outcome", outcome)],
        )
    };
    assert_eq!(records("delivered"), 2.0);
    assert_eq!(records("rejected"), 2.0);
    assert_eq!(records("invalid"), 1.0);
    assert_eq!(records("duplicate"), 1.0);
    assert_eq!(records("failed"), 0.0);
    let calls = |class: &str| {
        value(
            &samples,
            "groove_destination_groove_calls_total",
            &[("destination", "states"), ("status_class", class)],
        )
    };
    assert_eq!(calls("2xx"), 2.0);
    assert_eq!(calls("4xx"), 2.0);
    assert_eq!(calls("429"), 1.0);
    assert_eq!(calls("5xx"), 1.0);
    assert_eq!(calls("transport"), 0.0);
    let states_label = [("destination", "states")];
    assert_eq!(
        value(
            &samples,
            "groove_destination_groove_call_duration_seconds_count",
            &states_label
        ),
        6.0,
        "one observation per call"
    );
    assert_eq!(
        value(
            &samples,
            "groove_destination_groove_retries_total",
            &states_label
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "groove_destination_failed_records_stored_total",
            &states_label
        ),
        2.0
    );
    assert_eq!(
        value(
            &samples,
            "groove_destination_records_total",
            &[("destination", "tickets"), ("outcome", "delivered")]
        ),
        2.0
    );
    // Every stream has ended and every outcome is stored.
    for gauge in [
        "groove_destination_open_streams",
        "groove_destination_records_in_flight",
        "groove_destination_records_queued",
    ] {
        assert_eq!(value(&samples, gauge, &states_label), 0.0, "{gauge}");
    }
    assert!(value(&samples, "groove_destination_ledger_commit_rows_count", &[]) >= 1.0);
    assert_eq!(
        value(
            &samples,
            "groove_destination_rate_limited_total",
            &[("credential", "main")]
        ),
        1.0
    );
    // After the 429 the pacer slow-starts: a finite rate.
    let rate = value(
        &samples,
        "groove_destination_pacer_rate_per_second",
        &[("credential", "main")],
    );
    assert!(rate.is_finite() && rate > 0.0, "{rate}");
    assert_eq!(
        value(
            &samples,
            "groove_destination_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    // The dashboard's list is what the server declares, kinds included (a family appears once it has a
    // sample, which this stream gave every one).
    let text = get(metrics, "/metrics").await.text().await.unwrap();
    assert_eq!(declared(&text), dashboard_names());

    let missing = get(metrics, "/other").await;
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn a_metrics_address_in_use_stops_start_up_naming_the_flag() {
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::for_tests(
        dir.path().to_path_buf(),
        "http://127.0.0.1:1/v1".parse().unwrap(),
    );
    settings.metrics_listen = Some(taken.local_addr().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = groove_destination::serve(settings, listener, async {})
        .await
        .expect_err("the metrics address is taken");
    let message = error.to_string();
    assert!(message.contains("--metrics-listen"), "{message}");
    assert!(!message.contains('\n'), "{message}");
}

/// The families the exposition declares (`# TYPE`), by the name PromQL queries (a counter's ends in `_total`),
/// with their kinds.
fn declared(text: &str) -> std::collections::BTreeSet<(String, String)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .map(|declaration| {
            let (family, kind) = declaration.split_once(' ').expect("# TYPE name kind");
            let name = match kind {
                "counter" => format!("{family}_total"),
                _ => family.to_string(),
            };
            (name, kind.to_string())
        })
        .collect()
}

/// `deploy/grafana/metric-names.txt`: the names the dashboard's CI check holds the dashboard to.
fn dashboard_names() -> std::collections::BTreeSet<(String, String)> {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/metric-names.txt"),
    )
    .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (name, kind) = line.split_once(' ').expect("name kind");
            (name.to_string(), kind.trim().to_string())
        })
        .collect()
}
