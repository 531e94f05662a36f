//! `groove-destination send`, run as users run it: the real binary, a file (or standard input), a real server
//! delivering to the sandbox. Each test reads the report the command writes and compares it with what the
//! sandbox received.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::child::ChildServer;
use common::flows::{active_destination, credential, template};
use common::{start_sandbox, GrpcServer, TestServer};
use groove_sandbox::{Faults, SandboxHandle};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

fn send_command(server: &impl GrpcServer, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_groove-destination"));
    command
        .arg("send")
        .arg("--server")
        .arg(format!("http://{}", server.grpc_addr()))
        .args(args)
        .env_remove("GROOVE_DESTINATION_TOKEN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run(server: &impl GrpcServer, args: &[&str]) -> Output {
    send_command(server, args).output().await.expect("run send")
}

fn printed(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The report's entries as (line, id, outcome), in line order.
fn report(path: &Path) -> Vec<Value> {
    let mut entries: Vec<Value> = std::fs::read_to_string(path)
        .expect("read report")
        .lines()
        .map(|line| serde_json::from_str(line).expect("report line is json"))
        .collect();
    entries.sort_by_key(|entry| entry["line"].as_u64());
    entries
}

fn summary(entries: &[Value]) -> Vec<(u64, String, String)> {
    entries
        .iter()
        .map(|entry| {
            (
                entry["line"].as_u64().unwrap(),
                entry["id"].as_str().unwrap_or_default().to_string(),
                entry["outcome"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn ticket_line(id: &str) -> String {
    json!({"event": id, "body": format!("[{id}] help"), "from": "customer@example.com", "to": "support@sandbox.example.com"})
        .to_string()
}

/// The ticket ids the sandbox created, from the `[id]` its bodies start with.
fn created(sandbox: &SandboxHandle) -> BTreeSet<String> {
    sandbox
        .requests()
        .iter()
        .filter(|request| request.status == 201)
        .filter_map(|request| {
            let body = request.json.as_ref()?["body"].as_str()?.to_string();
            Some(body.strip_prefix('[')?.split(']').next()?.to_string())
        })
        .collect()
}

async fn ready_server() -> (SandboxHandle, tempfile::TempDir, TestServer) {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    active_destination(&server, "tickets", template("create_ticket", &[])).await;
    (sandbox, dir, server)
}

#[tokio::test]
async fn a_json_lines_file_is_reported_line_by_line_and_bad_lines_do_not_stop_it() {
    let (sandbox, dir, server) = ready_server().await;
    let file = dir.path().join("export.jsonl");
    let lines = [
        ticket_line("e-1"),
        "{not json".to_string(),
        String::new(),
        ticket_line("e-2"),
        json!({"event": "e-3", "body": "no addresses"}).to_string(),
        json!({"body": "no id"}).to_string(),
        ticket_line("e-4"),
    ];
    std::fs::write(&file, lines.join("\n")).unwrap();
    let report_path = dir.path().join("report.jsonl");
    let output = run(
        &server,
        &[
            "--destination",
            "tickets",
            "--id-field",
            "event",
            "--report",
            report_path.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let entries = report(&report_path);
    let outcomes: Vec<(u64, String, String)> = summary(&entries);
    assert_eq!(
        outcomes,
        [
            (1, "e-1".into(), "delivered".into()),
            (2, String::new(), "invalid".into()),
            (4, "e-2".into(), "delivered".into()),
            (5, "e-3".into(), "invalid".into()),
            (6, String::new(), "invalid".into()),
            (7, "e-4".into(), "delivered".into()),
        ]
    );
    assert!(
        entries[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("line 2: not valid json"),
        "{}",
        entries[1]
    );
    assert!(
        entries[3]["field"].as_str().unwrap().starts_with("record."),
        "the server names the missing field: {}",
        entries[3]
    );
    assert_eq!(
        entries[4]["error"],
        "line 6: id field \"event\" is missing or empty"
    );
    assert_eq!(entries[0]["http_status"], 201);
    assert_eq!(
        created(&sandbox),
        BTreeSet::from(["e-1".into(), "e-2".into(), "e-4".into()])
    );
    let table = String::from_utf8_lossy(&output.stdout);
    assert!(
        table.contains("delivered              3") && table.contains("invalid                3"),
        "{table}"
    );
    server.stop().await;
}

#[tokio::test]
async fn csv_from_standard_input_takes_line_number_ids() {
    let (sandbox, dir, server) = ready_server().await;
    let report_path = dir.path().join("report.jsonl");
    let mut child = send_command(
        &server,
        &[
            "--destination",
            "destinations/tickets",
            "--format",
            "csv",
            "--report",
            report_path.to_str().unwrap(),
            "-",
        ],
    )
    .stdin(Stdio::piped())
    .spawn()
    .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"body,from,to\n\
              \"[c-1] help, please\",customer@example.com,support@sandbox.example.com\n\
              [c-2] help,customer@example.com\n\
              [c-3] help,customer@example.com,support@sandbox.example.com\n",
        )
        .await
        .unwrap();
    drop(stdin);
    let output = child.wait_with_output().await.unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", printed(&output));
    let entries = report(&report_path);
    assert_eq!(
        summary(&entries),
        [
            (2, "stdin:2".into(), "delivered".into()),
            (3, String::new(), "invalid".into()),
            (4, "stdin:4".into(), "delivered".into()),
        ]
    );
    assert_eq!(
        entries[1]["error"],
        "line 3: 2 columns where the header has 3"
    );
    assert_eq!(
        created(&sandbox),
        BTreeSet::from(["c-1".into(), "c-3".into()])
    );
    server.stop().await;
}

#[tokio::test]
async fn a_rerun_is_answered_duplicate_and_a_resume_sends_nothing_again() {
    let (sandbox, dir, server) = ready_server().await;
    let file = dir.path().join("tickets.jsonl");
    let lines: Vec<String> = (1..=5)
        .map(|index| ticket_line(&format!("r-{index}")))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let report_path = dir.path().join("report.jsonl");
    let report_arg = report_path.to_str().unwrap();
    let file_arg = file.to_str().unwrap();

    let first = run(
        &server,
        &["--destination", "tickets", "--report", report_arg, file_arg],
    )
    .await;
    assert_eq!(first.status.code(), Some(0), "{}", printed(&first));
    let ids: Vec<String> = report(&report_path)
        .iter()
        .map(|entry| entry["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ids,
        (1..=5)
            .map(|line| format!("tickets.jsonl:{line}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(sandbox.requests().len(), 5);

    // Everything again: the server's ledger answers duplicates and sends nothing.
    let second_report = dir.path().join("second.jsonl");
    let second = run(
        &server,
        &[
            "--destination",
            "tickets",
            "--report",
            second_report.to_str().unwrap(),
            file_arg,
        ],
    )
    .await;
    assert_eq!(second.status.code(), Some(0), "{}", printed(&second));
    assert!(summary(&report(&second_report))
        .iter()
        .all(|(_, _, outcome)| outcome == "duplicate"));
    assert_eq!(sandbox.requests().len(), 5);

    // With the first report: not even sent; the report is rewritten in place, each entry marked resumed.
    std::fs::write(
        &file,
        format!("{}\n{}\n", lines.join("\n"), ticket_line("r-6")),
    )
    .unwrap();
    let resumed = run(
        &server,
        &[
            "--destination",
            "tickets",
            "--resume",
            report_arg,
            "--report",
            report_arg,
            file_arg,
        ],
    )
    .await;
    assert_eq!(resumed.status.code(), Some(0), "{}", printed(&resumed));
    let entries = report(&report_path);
    assert_eq!(entries.len(), 6);
    assert!(entries[..5]
        .iter()
        .all(|entry| entry["outcome"] == "delivered" && entry["resumed"] == true));
    assert_eq!(entries[5]["outcome"], "delivered");
    assert_eq!(sandbox.requests().len(), 6, "only the new line was sent");
    assert!(String::from_utf8_lossy(&resumed.stdout).contains("resumed                5"));
    server.stop().await;
}

#[tokio::test]
async fn a_server_killed_mid_file_leaves_a_report_of_what_was_delivered_and_what_may_have_been() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(dir.path(), &sandbox.base_url()).await;
    credential(&server, "main").await;
    active_destination(&server, "tickets", template("create_ticket", &[])).await;
    sandbox.set_faults(Faults {
        latency: Duration::from_millis(100),
        ..Faults::default()
    });
    let file = dir.path().join("big.jsonl");
    let total = 20_000;
    let lines: Vec<String> = (1..=total)
        .map(|index| ticket_line(&format!("k-{index}")))
        .collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let report_path = dir.path().join("report.jsonl");
    let child = send_command(
        &server,
        &[
            "--destination",
            "tickets",
            "--id-field",
            "event",
            "--batch-size",
            "10",
            "--report",
            report_path.to_str().unwrap(),
            file.to_str().unwrap(),
        ],
    )
    .spawn()
    .unwrap();
    for _ in 0..500 {
        if sandbox.requests().len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(sandbox.requests().len() >= 10, "the file started going out");
    server.kill_9();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("send ends once its server is gone")
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{}", printed(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("error:"),
        "{}",
        printed(&output)
    );
    // Calls on the wire at the kill still end at the sandbox.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let entries = report(&report_path);
    let with = |outcome: &str| -> BTreeSet<String> {
        entries
            .iter()
            .filter(|entry| entry["outcome"] == outcome)
            .map(|entry| entry["id"].as_str().unwrap().to_string())
            .collect()
    };
    let delivered = with("delivered");
    let unanswered = with("unanswered");
    assert!(!delivered.is_empty(), "some were delivered before the kill");
    assert_eq!(
        delivered.len() + unanswered.len(),
        entries.len(),
        "only delivered and unanswered records: {entries:?}"
    );
    let in_groove = created(&sandbox);
    assert!(
        delivered.is_subset(&in_groove),
        "every record reported delivered is in groove"
    );
    let reported: BTreeSet<String> = delivered.union(&unanswered).cloned().collect();
    assert!(
        in_groove.is_subset(&reported),
        "every record in groove is reported delivered or unanswered: {:?}",
        in_groove.difference(&reported).collect::<Vec<_>>()
    );
    let table = String::from_utf8_lossy(&output.stdout);
    // The table leaves out outcomes with no records: with every line read already sent, there is no such row.
    let not_sent: usize = table
        .lines()
        .find_map(|row| row.strip_prefix("not sent"))
        .map_or(Some(0), |count| count.trim().parse().ok())
        .unwrap_or_else(|| panic!("unreadable not-sent row: {table}"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let read_up_to: u64 = stderr
        .split("read up to line ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("no last line read: {stderr}"));
    assert_eq!(
        entries.len() + not_sent,
        read_up_to as usize,
        "every line read is reported or counted as not sent"
    );
    assert!(read_up_to < total as u64, "reading stopped with the stream");
    assert!(entries
        .iter()
        .all(|entry| entry["line"].as_u64().unwrap() <= read_up_to));
}

#[tokio::test]
async fn a_server_with_callers_needs_the_token_which_send_takes_from_the_environment() {
    use common::{replace_file, sha256_hex, AsCaller};
    use groove_destination::settings::Settings;

    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let callers = dir.path().join("callers.toml");
    replace_file(
        &callers,
        &format!(
            "[[caller]]\nname = \"importer\"\ntoken_sha256 = \"{}\"\nscopes = [\"admin\", \"send\"]\n",
            sha256_hex("importer-token")
        ),
    );
    let mut settings =
        Settings::for_tests(dir.path().join("data"), sandbox.base_url().parse().unwrap());
    settings.auth_tokens_file = Some(callers);
    let server = TestServer::start_with_settings(settings).await;
    let importer = AsCaller::plaintext(&server, Some("importer-token")).await;
    credential(&importer, "main").await;
    active_destination(&importer, "tickets", template("create_ticket", &[])).await;
    let file = dir.path().join("one.jsonl");
    std::fs::write(&file, ticket_line("t-1")).unwrap();
    let args = ["--destination", "tickets", file.to_str().unwrap()];

    let refused = run(&server, &args).await;
    assert_eq!(refused.status.code(), Some(2), "{}", printed(&refused));
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "{}",
        printed(&refused)
    );
    assert!(sandbox.requests().is_empty());

    let sent = send_command(&server, &args)
        .env("GROOVE_DESTINATION_TOKEN", "importer-token")
        .output()
        .await
        .unwrap();
    assert_eq!(sent.status.code(), Some(0), "{}", printed(&sent));
    assert_eq!(created(&sandbox), BTreeSet::from(["t-1".into()]));
    server.stop().await;
}
