//! Everything a user can do before any record is sent, through a real server and real clients.

mod common;

use common::GrpcServer;
use common::{fields_of, start_sandbox, TestServer, SANDBOX_KEY};
use groove_destination::proto::{
    self, destination::State, destination_config::Endpoint, verify_credential_response::Verdict,
};
use tonic::{Code, Request};

const SECRET_KEY_TEXT: &str = "groove-key-which-must-never-leak-7f3e";

async fn create_credential(server: &TestServer, id: &str, key: &str) -> proto::Credential {
    common::flows::credential_with_key(server, id, key).await
}

fn template_config(template_id: &str, parameters: &[(&str, &str)]) -> proto::DestinationConfig {
    proto::DestinationConfig {
        endpoint: Some(Endpoint::Template(proto::TemplateEndpoint {
            template_id: template_id.to_string(),
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
        ..Default::default()
    }
}

fn manual_config(method: proto::HttpMethod, url: &str, headers: &str) -> proto::DestinationConfig {
    proto::DestinationConfig {
        endpoint: Some(Endpoint::Manual(proto::ManualEndpoint {
            method: method as i32,
            url: url.to_string(),
            headers: headers.to_string(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn destination(credential: &str, config: proto::DestinationConfig) -> proto::Destination {
    proto::Destination {
        display_name: "tickets from crm".to_string(),
        credential: credential.to_string(),
        config: Some(config),
        ..Default::default()
    }
}

async fn create_destination(
    server: &TestServer,
    id: &str,
    destination: proto::Destination,
) -> Result<proto::Destination, tonic::Status> {
    server
        .destinations()
        .await
        .create_destination(proto::CreateDestinationRequest {
            destination_id: id.to_string(),
            destination: Some(destination),
        })
        .await
        .map(|response| {
            response
                .into_inner()
                .destination
                .expect("destination in response")
        })
}

#[tokio::test]
async fn credentials_are_stored_listed_and_never_shown() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let mut client = server.credentials().await;

    let created = create_credential(&server, "main", SECRET_KEY_TEXT).await;
    assert_eq!(created.name, "credentials/main");
    assert_eq!(created.api_key_hint, "****7f3e");
    assert!(created.create_time.is_some());

    let generated = create_credential(&server, "", "another-key-abcdefgh").await;
    assert!(
        generated.name.starts_with("credentials/cred-"),
        "{}",
        generated.name
    );

    let fetched = client
        .get_credential(proto::GetCredentialRequest {
            name: "credentials/main".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let listed = client
        .list_credentials(proto::ListCredentialsRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.credentials.len(), 2);
    for shown in [
        format!("{created:?}"),
        format!("{fetched:?}"),
        format!("{listed:?}"),
    ] {
        assert!(!shown.contains(SECRET_KEY_TEXT), "the key leaked: {shown}");
    }

    let duplicate = client
        .create_credential(proto::CreateCredentialRequest {
            credential_id: "main".into(),
            display_name: "again".into(),
            api_key: SECRET_KEY_TEXT.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(duplicate.code(), Code::AlreadyExists);
    assert!(!duplicate.message().contains(SECRET_KEY_TEXT));

    let missing = client
        .get_credential(proto::GetCredentialRequest {
            name: "credentials/nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert!(
        missing.message().contains("credentials/nope"),
        "{}",
        missing.message()
    );

    // The key is encrypted at rest: it is nowhere in the data dir in clear.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains(SECRET_KEY_TEXT),
            "key found in clear in the data dir"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn credential_input_errors_name_the_field() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let mut client = server.credentials().await;
    let cases = [
        ("ok-id", "", "key-1234567890", "display_name"),
        ("ok-id", "name", "", "api_key"),
        ("ok-id", "name", "key with spaces", "api_key"),
        ("Bad_Id", "name", "key-1234567890", "credential_id"),
    ];
    for (id, display_name, key, field) in cases {
        let status = client
            .create_credential(proto::CreateCredentialRequest {
                credential_id: id.into(),
                display_name: display_name.into(),
                api_key: key.into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert_eq!(
            fields_of(&status),
            vec![field.to_string()],
            "{}",
            status.message()
        );
        assert!(!status.message().contains("key-1234567890"));
    }
    let status = client
        .get_credential(proto::GetCredentialRequest {
            name: "destinations/x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields_of(&status), vec!["name".to_string()]);
    let status = client
        .list_credentials(proto::ListCredentialsRequest {
            page_size: 1,
            page_token: "garbage!".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(fields_of(&status), vec!["page_token".to_string()]);
    server.stop().await;
}

#[tokio::test]
async fn credentials_page_through_in_id_order() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    for id in ["c-a", "c-b", "c-c", "c-d", "c-e"] {
        create_credential(&server, id, "key-abcdefghijkl").await;
    }
    let mut client = server.credentials().await;
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = client
            .list_credentials(proto::ListCredentialsRequest {
                page_size: 2,
                page_token: token,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.credentials.len() <= 2);
        seen.extend(
            page.credentials
                .into_iter()
                .map(|credential| credential.name),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    assert_eq!(
        seen,
        ["c-a", "c-b", "c-c", "c-d", "c-e"].map(|id| format!("credentials/{id}"))
    );
    server.stop().await;
}

#[tokio::test]
async fn verify_credential_asks_groove() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "good", SANDBOX_KEY).await;
    create_credential(&server, "bad", "not-the-sandbox-key-000").await;
    let mut client = server.credentials().await;

    let good = client
        .verify_credential(proto::VerifyCredentialRequest {
            name: "credentials/good".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(good.verdict(), Verdict::Valid, "{good:?}");
    assert_eq!(good.http_status, 200);

    let bad = client
        .verify_credential(proto::VerifyCredentialRequest {
            name: "credentials/bad".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(bad.verdict(), Verdict::Invalid, "{bad:?}");
    assert_eq!(bad.http_status, 401);

    // The sandbox saw the key only as a Bearer header, on its own address.
    let requests = sandbox.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests
        .iter()
        .all(|request| request.method == "GET" && request.path == "/v1/mailboxes"));
    assert_eq!(
        requests[0].header("authorization"),
        Some(format!("Bearer {SANDBOX_KEY}").as_str())
    );

    // Groove unreachable: a port nobody listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_url = format!("http://{}/v1", closed.local_addr().unwrap());
    drop(closed);
    let dir2 = tempfile::tempdir().unwrap();
    let offline = TestServer::start(dir2.path(), &closed_url).await;
    create_credential(&offline, "good", SANDBOX_KEY).await;
    let unreachable = offline
        .credentials()
        .await
        .verify_credential(proto::VerifyCredentialRequest {
            name: "credentials/good".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        unreachable.verdict(),
        Verdict::Unreachable,
        "{unreachable:?}"
    );
    assert_eq!(unreachable.http_status, 0);
    assert!(!unreachable.detail.contains(SANDBOX_KEY));
    offline.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn destination_lifecycle() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let mut client = server.destinations().await;

    let created = create_destination(
        &server,
        "states",
        destination(
            "credentials/main",
            template_config(
                "update_ticket_state",
                &[("ticket_number", "{ticket.number}")],
            ),
        ),
    )
    .await
    .unwrap();
    assert_eq!(created.name, "destinations/states");
    assert_eq!(created.state(), State::Inactive);
    assert!(!created.etag.is_empty());
    let config = created.config.clone().unwrap();
    assert_eq!(
        config.batching.unwrap().batch_size,
        100,
        "default batch size"
    );
    assert_eq!(config.delivery.unwrap().concurrency, 8);

    // Pausing something never activated makes no sense.
    let status = client
        .pause_destination(proto::PauseDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);

    let active = client
        .activate_destination(proto::ActivateDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(active.state(), State::Active);
    assert_ne!(active.etag, created.etag);
    let paused = client
        .pause_destination(proto::PauseDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(paused.state(), State::Paused);

    // Update with a mask and the current etag.
    let mut change = paused.clone();
    change.display_name = "renamed".into();
    change.config.as_mut().unwrap().exclude_attributes = vec!["internal.notes".into()];
    let updated = client
        .update_destination(proto::UpdateDestinationRequest {
            destination: Some(change.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into(), "config.exclude_attributes".into()],
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(updated.display_name, "renamed");
    assert_eq!(
        updated.config.as_ref().unwrap().exclude_attributes,
        vec!["internal.notes".to_string()]
    );
    assert_eq!(updated.state(), State::Paused, "an update keeps the state");

    // The old etag is stale now.
    let stale = client
        .update_destination(proto::UpdateDestinationRequest {
            destination: Some(change),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code(), Code::Aborted, "{}", stale.message());

    // An update is validated like a create.
    let mut bad = updated.clone();
    bad.config = Some(template_config("no_such_template", &[]));
    let status = client
        .update_destination(proto::UpdateDestinationRequest {
            destination: Some(bad),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["config.template".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        fields_of(&status),
        vec!["destination.config.template.template_id".to_string()]
    );
    let status = client
        .update_destination(proto::UpdateDestinationRequest {
            destination: Some(updated.clone()),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["state".into()],
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(fields_of(&status), vec!["update_mask".to_string()]);

    // The credential cannot go while the destination uses it.
    let status = server
        .credentials()
        .await
        .delete_credential(proto::DeleteCredentialRequest {
            name: "credentials/main".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("destinations/states"),
        "{}",
        status.message()
    );

    let status = client
        .delete_destination(proto::DeleteDestinationRequest {
            name: updated.name.clone(),
            etag: created.etag.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted);
    client
        .delete_destination(proto::DeleteDestinationRequest {
            name: updated.name.clone(),
            etag: updated.etag,
        })
        .await
        .unwrap();
    let status = client
        .get_destination(proto::GetDestinationRequest {
            name: updated.name.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("destinations/states"));
    server
        .credentials()
        .await
        .delete_credential(proto::DeleteCredentialRequest {
            name: "credentials/main".into(),
        })
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test]
async fn destination_validation_names_each_field() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let cred = "credentials/main";
    let batching = |size: u32| proto::Batching {
        enabled: true,
        batch_size: size,
        ..Default::default()
    };
    let with_batching = |mut config: proto::DestinationConfig, size| {
        config.batching = Some(batching(size));
        config
    };
    let webhook = |url: &str| {
        let mut config = template_config("create_ticket", &[]);
        config.response_webhook = Some(proto::ResponseWebhook { url: url.into() });
        config
    };
    let post = proto::HttpMethod::Post;
    let cases: Vec<(&str, proto::DestinationConfig, &str)> = vec![
        (
            "unknown template",
            template_config("create_tiket", &[]),
            "destination.config.template.template_id",
        ),
        (
            "missing parameter",
            template_config("update_ticket_state", &[]),
            "destination.config.template.parameters.ticket_number",
        ),
        (
            "malformed reference",
            template_config(
                "update_ticket_state",
                &[("ticket_number", "{ticket.number")],
            ),
            "destination.config.template.parameters.ticket_number",
        ),
        (
            "batch size too big",
            with_batching(manual_config(post, "tickets", ""), 1001),
            "destination.config.batching.batch_size",
        ),
        (
            "batching a template",
            with_batching(template_config("create_ticket", &[]), 10),
            "destination.config.batching.enabled",
        ),
        (
            "authorization header",
            manual_config(post, "tickets", "Authorization:Bearer x"),
            "destination.config.manual.headers",
        ),
        (
            "absolute url",
            manual_config(post, "https://evil.example/v1/tickets", ""),
            "destination.config.manual.url",
        ),
        (
            "scheme-relative url",
            manual_config(post, "//evil.example/v1/tickets", ""),
            "destination.config.manual.url",
        ),
        (
            "dot-dot url",
            manual_config(post, "../../evil", ""),
            "destination.config.manual.url",
        ),
        (
            "at-sign url",
            manual_config(post, "@evil.example/tickets", ""),
            "destination.config.manual.url",
        ),
        (
            "other scheme url",
            manual_config(post, "javascript:alert(1)", ""),
            "destination.config.manual.url",
        ),
        (
            "webhook not http",
            webhook("ftp://hooks.example/x"),
            "destination.config.response_webhook",
        ),
        (
            "webhook on the cloud metadata address",
            webhook("http://169.254.169.254/latest/meta-data/"),
            "destination.config.response_webhook",
        ),
        (
            "webhook on aws's ipv6 metadata address",
            webhook("http://[fd00:ec2::254]/"),
            "destination.config.response_webhook",
        ),
    ];
    for (case, config, field) in cases {
        let status = create_destination(&server, "", destination(cred, config))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{case}: {}",
            status.message()
        );
        let fields = fields_of(&status);
        assert!(
            fields.iter().any(|reported| reported.starts_with(field)),
            "{case}: expected {field}, got {fields:?} ({})",
            status.message()
        );
        assert!(
            status
                .message()
                .contains(field.trim_start_matches("destination.")),
            "{case}: {}",
            status.message()
        );
    }

    // Several problems at once are all reported.
    let status = create_destination(
        &server,
        "",
        proto::Destination {
            display_name: "".into(),
            credential: "".into(),
            config: None,
            ..Default::default()
        },
    )
    .await
    .unwrap_err();
    let fields = fields_of(&status);
    for field in [
        "destination.display_name",
        "destination.credential",
        "destination.config",
    ] {
        assert!(
            fields.contains(&field.to_string()),
            "{field} missing from {fields:?}"
        );
    }

    let status = create_destination(
        &server,
        "",
        destination("credentials/ghost", template_config("create_ticket", &[])),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("credentials/ghost"));

    let status = create_destination(
        &server,
        "Not_An_Id",
        destination(cred, template_config("create_ticket", &[])),
    )
    .await
    .unwrap_err();
    assert_eq!(fields_of(&status), vec!["destination_id".to_string()]);

    create_destination(
        &server,
        "dup",
        destination(cred, template_config("create_ticket", &[])),
    )
    .await
    .unwrap();
    let status = create_destination(
        &server,
        "dup",
        destination(cred, template_config("create_ticket", &[])),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);

    // A valid manual config with headers and batching is accepted and shown back.
    let mut manual = manual_config(
        post,
        "tickets/{ticket_number}/messages",
        "X-Source:crm, X-Team:eu",
    );
    manual.batching = Some(batching(50));
    let saved = create_destination(&server, "manual", destination(cred, manual))
        .await
        .unwrap();
    let config = saved.config.unwrap();
    let Some(Endpoint::Manual(endpoint)) = config.endpoint else {
        panic!("manual endpoint expected")
    };
    assert_eq!(
        endpoint.header_map.get("X-Source").map(String::as_str),
        Some("crm")
    );
    assert_eq!(
        endpoint.header_map.get("X-Team").map(String::as_str),
        Some("eu")
    );
    let batching = config.batching.unwrap();
    assert_eq!(batching.batch_size, 50);
    assert_eq!(
        batching.grouping(),
        proto::GroupingAlgorithm::RenderedRequest
    );
    server.stop().await;
}

#[tokio::test]
async fn destinations_page_through() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    for index in 0..7 {
        create_destination(
            &server,
            &format!("d-{index}"),
            destination("credentials/main", template_config("create_ticket", &[])),
        )
        .await
        .unwrap();
    }
    let mut client = server.destinations().await;
    let first = client
        .list_destinations(proto::ListDestinationsRequest {
            page_size: 3,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.destinations.len(), 3);
    let second = client
        .list_destinations(proto::ListDestinationsRequest {
            page_size: 10,
            page_token: first.next_page_token,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second.destinations.len(), 4);
    assert!(second.next_page_token.is_empty());
    assert_eq!(second.destinations[0].name, "destinations/d-3");
    server.stop().await;
}

#[tokio::test]
async fn list_templates_returns_the_fifteen() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let templates = server
        .destinations()
        .await
        .list_templates(proto::ListTemplatesRequest {})
        .await
        .unwrap()
        .into_inner()
        .templates;
    assert_eq!(templates.len(), 15);
    let find = |id: &str| {
        templates
            .iter()
            .find(|template| template.id == id)
            .unwrap_or_else(|| panic!("{id}"))
    };
    let state = find("update_ticket_state");
    assert_eq!(state.method(), proto::HttpMethod::Put);
    assert_eq!(state.path, "tickets/{ticket_number}/state");
    assert_eq!(state.path_parameters[0].name, "ticket_number");
    assert!(state
        .allowed_values
        .iter()
        .any(|allowed| allowed.field == "state" && allowed.values.contains(&"opened".to_string())));
    let create = find("create_ticket");
    assert_eq!(create.method(), proto::HttpMethod::Post);
    assert!(create
        .required_fields
        .iter()
        .any(|requirement| requirement.any_of == ["to", "mailbox"]));
    for template in &templates {
        assert!(
            !template.display_name.is_empty() && !template.description.is_empty(),
            "{}",
            template.id
        );
        assert!(!template.batchable, "{}", template.id);
        for parameter in &template.path_parameters {
            assert!(
                template.path.contains(&format!("{{{}}}", parameter.name)),
                "{}",
                template.id
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn data_survives_a_restart() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let created = create_destination(
        &server,
        "kept",
        destination(
            "credentials/main",
            template_config("create_message", &[("ticket_number", "{number}")]),
        ),
    )
    .await
    .unwrap();
    server
        .destinations()
        .await
        .activate_destination(proto::ActivateDestinationRequest {
            name: created.name.clone(),
        })
        .await
        .unwrap();
    server.stop().await;

    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let kept = server
        .destinations()
        .await
        .get_destination(proto::GetDestinationRequest {
            name: "destinations/kept".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .destination
        .unwrap();
    assert_eq!(kept.state(), State::Active);
    assert_eq!(kept.config, created.config);
    // The key was decrypted with the persisted secret key file.
    let verdict = server
        .credentials()
        .await
        .verify_credential(proto::VerifyCredentialRequest {
            name: "credentials/main".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(verdict.verdict(), Verdict::Valid);
    server.stop().await;
}

#[tokio::test]
async fn a_second_server_on_a_data_dir_in_use_is_refused() {
    use groove_destination::store::DataDirError;
    use groove_destination::ServeError;

    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    create_credential(&server, "main", SANDBOX_KEY).await;
    let settings = groove_destination::settings::Settings::for_tests(
        dir.path().to_path_buf(),
        sandbox.base_url().parse().unwrap(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Refused before serving: it returns at once, without waiting for the shutdown future.
    let refused = groove_destination::serve(settings, listener, std::future::pending())
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, ServeError::DataDir(DataDirError::InUse { pid: Some(pid), .. }) if *pid == std::process::id()),
        "{refused:?}"
    );
    // The first one goes on serving.
    create_credential(&server, "second", SANDBOX_KEY).await;
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let mut server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let channel = server.channel().await;

    let mut health = HealthClient::new(channel.clone());
    for service in [
        "groove.destination.v1.CredentialService",
        "groove.destination.v1.DestinationService",
        "groove.destination.v1.DeliveryService",
        "",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, 1, "{service} should be SERVING");
    }

    let mut reflection = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(Request::new(tokio_stream::iter(vec![request])))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for expected in [
        "groove.destination.v1.CredentialService",
        "groove.destination.v1.DestinationService",
        "groove.destination.v1.DeliveryService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.contains(&expected.to_string()),
            "{expected} not in {names:?}"
        );
    }

    // On shutdown, health turns NOT_SERVING before the server goes away.
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "groove.destination.v1.DeliveryService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, 1);
    server.signal_shutdown();
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status, 2, "NOT_SERVING expected");
}

#[test]
fn a_bad_setting_stops_start_up_naming_it() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_groove-destination"))
        .args(["--groove-url", "ftp://api.groovehq.com/v1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--groove-url"), "{stderr}");
}

/// Every detail type an INVALID_ARGUMENT carries resolves through reflection, with the files it imports, so
/// grpcurl and buf curl decode `grpc-status-details-bin` instead of calling its type unknown.
#[tokio::test]
async fn reflection_resolves_the_error_details_the_service_returns() {
    use prost::Message;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;

    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(dir.path(), &sandbox.base_url()).await;
    let refused = server
        .destinations()
        .await
        .create_destination(proto::CreateDestinationRequest {
            destination_id: "Not An Id".into(),
            destination: None,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let status = tonic_types::pb::Status::decode(refused.details()).unwrap();
    let detail_types: Vec<String> = status
        .details
        .iter()
        .map(|any| {
            let (_, name) = any.type_url.rsplit_once('/').unwrap();
            name.to_string()
        })
        .collect();
    assert!(
        detail_types.contains(&"google.rpc.BadRequest".to_string()),
        "{detail_types:?}"
    );

    let mut reflection = ServerReflectionClient::new(server.channel().await);
    let mut ask = async |request: MessageRequest| {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut responses = reflection
            .server_reflection_info(Request::new(tokio_stream::iter(vec![request])))
            .await
            .unwrap()
            .into_inner();
        match responses.message().await.unwrap().unwrap().message_response {
            Some(MessageResponse::FileDescriptorResponse(files)) => files
                .file_descriptor_proto
                .iter()
                .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
                .collect::<Vec<_>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    };
    for symbol in detail_types {
        let files = ask(MessageRequest::FileContainingSymbol(symbol.clone())).await;
        let file = &files[0];
        let message = symbol.rsplit_once('.').unwrap().1;
        assert!(
            file.message_type
                .iter()
                .any(|declared| declared.name() == message),
            "{symbol} not declared in {}",
            file.name()
        );
        for dependency in &file.dependency {
            let files = ask(MessageRequest::FileByFilename(dependency.clone())).await;
            assert_eq!(files[0].name(), dependency);
        }
    }
    let files = ask(MessageRequest::FileContainingSymbol(
        "google.rpc.Status".into(),
    ))
    .await;
    assert_eq!(files[0].name(), "google/rpc/status.proto");
}
