//! Caller authentication: bearer tokens from the callers file, scopes, destination limits, reflection,
//! reloading the file, and the refusal to serve other hosts without authentication.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::flows::{self, template, ticket};
use common::{replace_file, sha256_hex, start_sandbox, AsCaller, GrpcServer, TestServer};
use groove_destination::proto;
use groove_destination::settings::Settings;
use tonic::Code;

const ADMIN: &str = "admin-token-7f3a";
const READER: &str = "reader-token-19bc";
const CRM_SENDER: &str = "crm-sender-token-55d0";
const CRM_ADMIN: &str = "crm-admin-token-0c21";
const LATE: &str = "late-token-a410";

/// One `[[caller]]` table.
fn caller(name: &str, token: &str, scopes: &[&str], destinations: Option<&[&str]>) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut table = format!(
        "[[caller]]\nname = {name:?}\ntoken_sha256 = \"{}\"\nscopes = [{}]\n",
        sha256_hex(token),
        list(scopes)
    );
    if let Some(destinations) = destinations {
        table.push_str(&format!("destinations = [{}]\n", list(destinations)));
    }
    table
}

fn standard_callers() -> String {
    [
        caller("platform-admin", ADMIN, &["admin", "send"], None),
        caller("dashboard", READER, &["read"], None),
        caller("crm-sync", CRM_SENDER, &["send"], Some(&["crm-*"])),
        caller("crm-admin", CRM_ADMIN, &["admin"], Some(&["crm-*"])),
    ]
    .concat()
}

async fn server_with_callers(dir: &Path, groove_url: &str) -> (TestServer, PathBuf) {
    let callers = dir.join("callers.toml");
    replace_file(&callers, &standard_callers());
    let mut settings = Settings::for_tests(dir.join("data"), groove_url.parse().unwrap());
    settings.auth_tokens_file = Some(callers.clone());
    (TestServer::start_with_settings(settings).await, callers)
}

fn code_and_message<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("the call should be refused");
    (status.code(), status.message().to_string())
}

#[tokio::test]
async fn every_call_needs_a_known_caller_with_the_scope() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_callers(dir.path(), &sandbox.base_url()).await;
    let anonymous = AsCaller::plaintext(&server, None).await;
    let stranger = AsCaller::plaintext(&server, Some("not-a-known-token")).await;
    let admin = AsCaller::plaintext(&server, Some(ADMIN)).await;
    let reader = AsCaller::plaintext(&server, Some(READER)).await;

    // No token, an unknown token, or a token in the wrong scheme: UNAUTHENTICATED, and nothing is done.
    let listing = proto::ListCredentialsRequest::default();
    let (code, message) = code_and_message(
        anonymous
            .credentials()
            .await
            .list_credentials(listing.clone())
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);
    assert!(message.contains("authorization: Bearer"), "{message}");
    let (code, message) = code_and_message(
        stranger
            .credentials()
            .await
            .list_credentials(listing.clone())
            .await,
    );
    assert_eq!(
        (code, message.as_str()),
        (
            Code::Unauthenticated,
            "the bearer token is not known to this server"
        )
    );
    let mut basic = tonic::Request::new(listing.clone());
    basic
        .metadata_mut()
        .insert("authorization", "Basic YWRtaW46YWRtaW4=".parse().unwrap());
    let (code, _) = code_and_message(
        proto::credential_service_client::CredentialServiceClient::new(server.channel().await)
            .list_credentials(basic)
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    // Health needs no caller: probes and load balancers have none.
    let health = tonic_health::pb::health_client::HealthClient::new(server.channel().await)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health without a token");
    assert_eq!(health.into_inner().status, 1);

    // A reader reads but may not write; the refusal names the scope.
    reader
        .credentials()
        .await
        .list_credentials(listing.clone())
        .await
        .expect("reader lists");
    let (code, message) = code_and_message(
        reader
            .credentials()
            .await
            .create_credential(proto::CreateCredentialRequest {
                credential_id: "main".into(),
                display_name: "main".into(),
                api_key: common::SANDBOX_KEY.into(),
            })
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("caller dashboard lacks the admin scope"),
        "{message}"
    );
    assert!(!message.contains(READER));

    // The attack: a caller without admin cannot point a destination at a key and test-send with it.
    flows::credential(&admin, "main").await;
    let name =
        flows::active_destination(&admin, "crm-tickets", template("create_ticket", &[])).await;
    let (code, _) = code_and_message(
        reader
            .destinations()
            .await
            .test_destination(proto::TestDestinationRequest {
                name: name.clone(),
                draft: None,
                payload: Some(proto::test_destination_request::Payload::Record(ticket(
                    "t0",
                ))),
            })
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    let (code, _) = code_and_message(flows::send(&reader, &name, vec![vec![ticket("r1")]]).await);
    assert_eq!(code, Code::PermissionDenied);
    assert_eq!(sandbox.requests().len(), 0, "refused calls reached groove");

    let answered = flows::send(&admin, &name, vec![vec![ticket("a1")]])
        .await
        .expect("admin sends");
    assert_eq!(answered.of("a1").outcome(), proto::Outcome::Delivered);
}

#[tokio::test]
async fn a_caller_limited_to_some_destinations_touches_only_those() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_callers(dir.path(), &sandbox.base_url()).await;
    let admin = AsCaller::plaintext(&server, Some(ADMIN)).await;
    let crm_sender = AsCaller::plaintext(&server, Some(CRM_SENDER)).await;
    let crm_admin = AsCaller::plaintext(&server, Some(CRM_ADMIN)).await;
    flows::credential(&admin, "main").await;
    let billing =
        flows::active_destination(&admin, "billing", template("create_ticket", &[])).await;

    // A limited admin manages destinations matching its patterns, with an id it chooses.
    let crm =
        flows::active_destination(&crm_admin, "crm-tickets", template("create_ticket", &[])).await;
    let create = |destination_id: &str| proto::CreateDestinationRequest {
        destination_id: destination_id.to_string(),
        destination: Some(proto::Destination {
            display_name: "x".into(),
            credential: "credentials/main".into(),
            config: Some(template("create_ticket", &[])),
            ..Default::default()
        }),
    };
    let (code, message) = code_and_message(
        crm_admin
            .destinations()
            .await
            .create_destination(create("sales"))
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert_eq!(
        message,
        "caller crm-admin may not use destinations/sales (it may use crm-*)"
    );
    let (code, message) = code_and_message(
        crm_admin
            .destinations()
            .await
            .create_destination(create(""))
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("choose a destination_id"), "{message}");
    // A draft names no destination, so a limited admin cannot test one (it can test its own saved ones).
    let requests_before = sandbox.requests().len();
    let (code, message) = code_and_message(
        crm_admin
            .destinations()
            .await
            .test_destination(proto::TestDestinationRequest {
                name: String::new(),
                draft: Some(proto::DestinationDraft {
                    credential: "credentials/main".into(),
                    config: Some(template("create_ticket", &[])),
                }),
                payload: Some(proto::test_destination_request::Payload::Record(ticket(
                    "d0",
                ))),
            })
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("a draft names no destination"),
        "{message}"
    );
    assert_eq!(sandbox.requests().len(), requests_before);
    // Credentials are shared by destinations: only an admin over all of them changes them.
    let (code, message) = code_and_message(
        crm_admin
            .credentials()
            .await
            .delete_credential(proto::DeleteCredentialRequest {
                name: "credentials/main".into(),
            })
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("needs an admin over all destinations"),
        "{message}"
    );
    // Someone else's destination is refused before anything about it is looked up.
    for name in [billing.as_str(), "destinations/does-not-exist"] {
        let (code, _) = code_and_message(
            crm_admin
                .destinations()
                .await
                .pause_destination(proto::PauseDestinationRequest {
                    name: name.to_string(),
                })
                .await,
        );
        assert_eq!(code, Code::PermissionDenied, "{name}");
    }
    let listed = crm_admin
        .destinations()
        .await
        .list_destinations(proto::ListDestinationsRequest::default())
        .await
        .unwrap()
        .into_inner()
        .destinations;
    let names: Vec<_> = listed
        .iter()
        .map(|destination| destination.name.as_str())
        .collect();
    assert_eq!(names, [crm.as_str()]);

    // A limited sender sends to its destinations only.
    let answered = flows::send(&crm_sender, &crm, vec![vec![ticket("c1")]])
        .await
        .expect("crm send");
    assert_eq!(answered.of("c1").outcome(), proto::Outcome::Delivered);
    let (code, message) =
        code_and_message(flows::send(&crm_sender, &billing, vec![vec![ticket("b1")]]).await);
    assert_eq!(code, Code::PermissionDenied);
    assert!(
        message.contains("may not use destinations/billing"),
        "{message}"
    );
    let (code, _) = code_and_message(
        crm_sender
            .delivery()
            .await
            .list_failed_records(proto::ListFailedRecordsRequest {
                destination: billing.clone(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::PermissionDenied);
    crm_sender
        .delivery()
        .await
        .list_failed_records(proto::ListFailedRecordsRequest {
            destination: crm.clone(),
            ..Default::default()
        })
        .await
        .expect("its own failed records");
    let bodies: Vec<String> = sandbox
        .requests()
        .iter()
        .map(|request| request.body.clone())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert!(bodies[0].contains("[c1]"));
}

#[tokio::test]
async fn reflection_needs_a_caller_unless_public() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    async fn list_services(server: &TestServer, token: Option<&str>) -> Result<(), tonic::Status> {
        let mut client =
            ServerReflectionClient::with_interceptor(server.channel().await, common::bearer(token));
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut answers = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await?
            .into_inner();
        answers.message().await?.expect("a reflection answer");
        Ok(())
    }

    let dir = tempfile::tempdir().unwrap();
    let (server, callers) = server_with_callers(dir.path(), "http://127.0.0.1:9").await;
    let status = list_services(&server, None)
        .await
        .expect_err("anonymous reflection");
    assert_eq!(status.code(), Code::Unauthenticated);
    // Any known caller may list the API, whatever its scopes.
    list_services(&server, Some(CRM_SENDER))
        .await
        .expect("caller reflection");
    server.stop().await;

    let mut settings = Settings::for_tests(
        dir.path().join("data"),
        "http://127.0.0.1:9".parse().unwrap(),
    );
    settings.auth_tokens_file = Some(callers);
    settings.public_reflection = true;
    let public = TestServer::start_with_settings(settings).await;
    list_services(&public, None)
        .await
        .expect("public reflection");
    let (code, _) = code_and_message(
        AsCaller::plaintext(&public, None)
            .await
            .credentials()
            .await
            .list_credentials(proto::ListCredentialsRequest::default())
            .await,
    );
    assert_eq!(
        code,
        Code::Unauthenticated,
        "public reflection opened more than reflection"
    );
}

/// Waits until a call with `token` gets an answer other than UNAUTHENTICATED (`admitted`) or UNAUTHENTICATED.
async fn until_token(server: &impl GrpcServer, token: &str, admitted: bool) {
    let caller = AsCaller::plaintext(server, Some(token)).await;
    for _ in 0..200 {
        let result = caller
            .destinations()
            .await
            .list_templates(proto::ListTemplatesRequest::default())
            .await;
        let unauthenticated =
            matches!(&result, Err(status) if status.code() == Code::Unauthenticated);
        if unauthenticated != admitted {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("token {token} admitted={admitted} not seen within 10 s of the file changing");
}

#[tokio::test]
async fn a_changed_callers_file_applies_to_new_calls_and_keeps_open_streams() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let (server, callers) = server_with_callers(dir.path(), &sandbox.base_url()).await;
    let admin = AsCaller::plaintext(&server, Some(ADMIN)).await;
    flows::credential(&admin, "main").await;
    let name =
        flows::active_destination(&admin, "crm-tickets", template("create_ticket", &[])).await;
    let crm_sender = AsCaller::plaintext(&server, Some(CRM_SENDER)).await;
    let (requests, mut stream) = flows::open(&crm_sender, &name).await;
    requests
        .send(flows::batch(vec![ticket("before")]))
        .await
        .unwrap();
    flows::next_results(&mut stream, 1).await;

    // crm-sync is removed, a new caller is added; a broken file in between changes nothing.
    replace_file(&callers, "[[caller]]\nname = broken\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    AsCaller::plaintext(&server, Some(READER))
        .await
        .destinations()
        .await
        .list_templates(proto::ListTemplatesRequest::default())
        .await
        .expect("the last good file stays in force");
    replace_file(
        &callers,
        &[
            caller("platform-admin", ADMIN, &["admin", "send"], None),
            caller("late", LATE, &["read"], None),
        ]
        .concat(),
    );
    until_token(&server, LATE, true).await;
    until_token(&server, CRM_SENDER, false).await;

    // The stream opened before goes on and ends OK.
    let answered = flows::finish(requests, &mut stream, vec![ticket("after")]).await;
    assert_eq!(answered.of("after").outcome(), proto::Outcome::Delivered);
    assert_eq!(answered.summary.unwrap().delivered, 2);
}

#[tokio::test]
async fn other_hosts_are_not_served_without_caller_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let any_address = || async { tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap() };
    let settings = Settings::for_tests(
        dir.path().join("data"),
        "http://127.0.0.1:9".parse().unwrap(),
    );

    let error = groove_destination::serve(
        settings.clone(),
        any_address().await,
        std::future::pending(),
    )
    .await
    .expect_err("served 0.0.0.0 without authentication");
    let message = error.to_string();
    assert!(
        message.starts_with("refusing to serve 0.0.0.0:"),
        "{message}"
    );
    assert!(
        message.contains("--auth-tokens-file") && message.contains("--allow-unauthenticated"),
        "{message}"
    );

    // Explicitly allowed (a mesh sidecar authenticates), or with a callers file, it serves.
    for allowed in [true, false] {
        let mut settings = settings.clone();
        if allowed {
            settings.allow_unauthenticated = true;
        } else {
            let callers = dir.path().join("callers.toml");
            replace_file(&callers, &standard_callers());
            settings.auth_tokens_file = Some(callers);
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = tokio::spawn(groove_destination::serve(
            settings,
            any_address().await,
            async {
                let _ = stopped.await;
            },
        ));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !serving.is_finished(),
            "allowed={allowed}: the server stopped at once"
        );
        let _ = stop.send(());
        serving.await.unwrap().expect("served and stopped");
    }
}

#[tokio::test]
async fn the_binary_names_the_missing_setting() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_groove-destination"))
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .env_remove("GROOVE_DESTINATION_AUTH_TOKENS_FILE")
        .env_remove("GROOVE_DESTINATION_ALLOW_UNAUTHENTICATED")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("error: refusing to serve 0.0.0.0:"),
        "{stderr}"
    );
    assert!(stderr.contains("--auth-tokens-file"), "{stderr}");
}

#[tokio::test]
async fn sighup_rereads_the_callers_file() {
    let dir = tempfile::tempdir().unwrap();
    let callers = dir.path().join("callers.toml");
    replace_file(&callers, &standard_callers());
    let server = common::child::ChildServer::start_with(
        dir.path(),
        "http://127.0.0.1:9",
        common::child::ChildOptions {
            args: vec!["--auth-tokens-file".into(), callers.display().to_string()],
            ..Default::default()
        },
    )
    .await;
    let server = &server;
    let reads = |token: &'static str| async move {
        AsCaller::plaintext(server, Some(token))
            .await
            .destinations()
            .await
            .list_templates(proto::ListTemplatesRequest::default())
            .await
            .map(drop)
    };
    reads(READER).await.expect("the reader reads");

    // The reader's token is replaced in place, with the same length and modification time, so the change
    // cannot be seen from the file's metadata: only SIGHUP makes the server read it.
    let modified = std::fs::metadata(&callers).unwrap().modified().unwrap();
    let text = standard_callers().replace(&sha256_hex(READER), &sha256_hex(LATE));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(&callers)
        .unwrap();
    std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
    file.set_modified(modified).unwrap();
    drop(file);
    tokio::time::sleep(groove_destination::auth::POLL_INTERVAL * 2).await;
    reads(READER)
        .await
        .expect("no reload without a signal or a visible change");

    let pid = server.pid().expect("running").to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    until_token(server, LATE, true).await;
    assert_eq!(
        reads(READER).await.unwrap_err().code(),
        Code::Unauthenticated
    );
}
