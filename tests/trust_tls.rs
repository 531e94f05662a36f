//! TLS and mutual TLS on the gRPC port, with a real TLS client (tonic over rustls) and a CA and certificates
//! made here: tokens over TLS, client certificate names standing for callers, and certificates rotated while
//! a stream is open.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::flows::{self, template, ticket};
use common::relay::CountingRelay;
use common::{replace_file, sha256_hex, start_sandbox, AsCaller, GrpcServer, TestServer};
use groove_destination::proto;
use groove_destination::settings::Settings;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

const ADMIN: &str = "tls-admin-token-3c9e";
const READER_NAME: &str = "spiffe://cluster.local/ns/dashboards/sa/reader";

struct Authority {
    certificate: rcgen::Certificate,
    key: KeyPair,
}

impl Authority {
    fn new(name: &str) -> Authority {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        Authority { certificate, key }
    }

    fn pem(&self) -> String {
        self.certificate.pem()
    }

    /// A certificate and its key, in PEM.
    fn issue(&self, names: Vec<SanType>, purpose: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = names;
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().unwrap();
        let certificate = params
            .signed_by(&key, &self.certificate, &self.key)
            .unwrap();
        (certificate.pem(), key.serialize_pem())
    }

    fn server_certificate(&self) -> (String, String) {
        self.issue(
            vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    fn client_certificate(&self, uri: &str) -> (String, String) {
        self.issue(
            vec![SanType::URI(uri.try_into().unwrap())],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

struct TlsServer {
    server: TestServer,
    certificate: PathBuf,
    key: PathBuf,
}

async fn tls_server(
    dir: &Path,
    groove_url: &str,
    authority: &Authority,
    client_ca: Option<&Authority>,
    callers: Option<&str>,
) -> TlsServer {
    tls_server_with(dir, groove_url, authority, client_ca, callers, |_| {}).await
}

/// [`tls_server`] with settings changed by `adjust`.
async fn tls_server_with(
    dir: &Path,
    groove_url: &str,
    authority: &Authority,
    client_ca: Option<&Authority>,
    callers: Option<&str>,
    adjust: impl FnOnce(&mut Settings),
) -> TlsServer {
    let (certificate_pem, key_pem) = authority.server_certificate();
    let certificate = dir.join("server.pem");
    let key = dir.join("server.key");
    replace_file(&certificate, &certificate_pem);
    replace_file(&key, &key_pem);
    let mut settings = Settings::for_tests(dir.join("data"), groove_url.parse().unwrap());
    settings.tls_cert = Some(certificate.clone());
    settings.tls_key = Some(key.clone());
    if let Some(client_ca) = client_ca {
        let path = dir.join("client-ca.pem");
        replace_file(&path, &client_ca.pem());
        settings.tls_client_ca = Some(path);
    }
    if let Some(callers) = callers {
        let path = dir.join("callers.toml");
        replace_file(&path, callers);
        settings.auth_tokens_file = Some(path);
    }
    adjust(&mut settings);
    TlsServer {
        server: TestServer::start_with_settings(settings).await,
        certificate,
        key,
    }
}

/// A TLS channel that trusts `trusted` and presents `identity` (certificate and key PEM), if given.
async fn tls_channel(
    server: &TestServer,
    trusted: &Authority,
    identity: Option<&(String, String)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(trusted.pem()))
        .domain_name("localhost");
    if let Some((certificate, key)) = identity {
        tls = tls.identity(Identity::from_pem(certificate, key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{}", server.addr.port()))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn callers_file() -> String {
    let hash = sha256_hex(ADMIN);
    format!(
        "[[caller]]\nname = \"admin\"\ntoken_sha256 = \"{hash}\"\nscopes = [\"admin\", \"send\"]\n\n\
         [[caller]]\nname = \"dashboards\"\ncertificate_names = [\"{READER_NAME}\"]\nscopes = [\"read\"]\n"
    )
}

async fn list_credentials(caller: &AsCaller) -> Result<(), tonic::Status> {
    caller
        .credentials()
        .await
        .list_credentials(proto::ListCredentialsRequest::default())
        .await
        .map(drop)
}

#[tokio::test]
async fn tokens_travel_over_tls_and_plaintext_is_refused() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("server ca");
    let tls = tls_server(
        dir.path(),
        &sandbox.base_url(),
        &authority,
        None,
        Some(&callers_file()),
    )
    .await;
    let channel = tls_channel(&tls.server, &authority, None)
        .await
        .expect("tls connects");
    let admin = AsCaller {
        channel: channel.clone(),
        token: Some(ADMIN.into()),
    };
    flows::credential(&admin, "main").await;
    let name = flows::active_destination(&admin, "tickets", template("create_ticket", &[])).await;
    let answered = flows::send(&admin, &name, vec![vec![ticket("t1")]])
        .await
        .unwrap();
    assert_eq!(answered.of("t1").outcome(), proto::Outcome::Delivered);
    let anonymous = AsCaller {
        channel,
        token: None,
    };
    assert_eq!(
        list_credentials(&anonymous).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A plaintext HTTP/2 client gets no gRPC answer from a TLS port.
    let plaintext = Channel::from_shared(format!("http://127.0.0.1:{}", tls.server.addr.port()))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(plaintext) = plaintext {
        let refused = list_credentials(&AsCaller {
            channel: plaintext,
            token: Some(ADMIN.into()),
        })
        .await
        .expect_err("a plaintext call on the tls port");
        assert_ne!(refused.code(), Code::Ok);
    }
}

#[tokio::test]
async fn client_certificate_names_stand_for_callers() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Authority::new("server ca");
    let client_ca = Authority::new("client ca");
    let tls = tls_server(
        dir.path(),
        "http://127.0.0.1:9",
        &server_ca,
        Some(&client_ca),
        Some(&callers_file()),
    )
    .await;

    // The reader's certificate is the reader: it reads without a token, and may not write.
    let reader_identity = client_ca.client_certificate(READER_NAME);
    let reader = AsCaller {
        channel: tls_channel(&tls.server, &server_ca, Some(&reader_identity))
            .await
            .unwrap(),
        token: None,
    };
    list_credentials(&reader)
        .await
        .expect("the certificate's caller reads");
    let denied = reader
        .credentials()
        .await
        .create_credential(proto::CreateCredentialRequest {
            credential_id: "main".into(),
            display_name: "main".into(),
            api_key: common::SANDBOX_KEY.into(),
        })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("caller dashboards lacks the admin scope"),
        "{}",
        denied.message()
    );
    // A token, when sent, decides over the certificate.
    let as_admin = AsCaller {
        channel: reader.channel.clone(),
        token: Some(ADMIN.into()),
    };
    flows::credential(&as_admin, "main").await;

    // A certificate the CA signed but the file does not list is not a caller.
    let stranger_identity = client_ca.client_certificate("spiffe://cluster.local/ns/other/sa/x");
    let stranger = AsCaller {
        channel: tls_channel(&tls.server, &server_ca, Some(&stranger_identity))
            .await
            .unwrap(),
        token: None,
    };
    let refused = list_credentials(&stranger).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        refused
            .message()
            .contains("spiffe://cluster.local/ns/other/sa/x"),
        "{}",
        refused.message()
    );

    // No certificate, or one from another CA: the handshake fails, so no call gets through.
    let other_ca = Authority::new("other ca");
    let forged = other_ca.client_certificate(READER_NAME);
    for identity in [None, Some(&forged)] {
        let outcome = match tls_channel(&tls.server, &server_ca, identity).await {
            Err(_) => None,
            Ok(channel) => Some(
                list_credentials(&AsCaller {
                    channel,
                    token: Some(ADMIN.into()),
                })
                .await,
            ),
        };
        assert!(
            !matches!(outcome, Some(Ok(()))),
            "a client without a valid certificate was served"
        );
    }
}

#[tokio::test]
async fn without_a_callers_file_the_client_ca_decides() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Authority::new("server ca");
    let client_ca = Authority::new("client ca");
    let tls = tls_server(
        dir.path(),
        "http://127.0.0.1:9",
        &server_ca,
        Some(&client_ca),
        None,
    )
    .await;
    let identity = client_ca.client_certificate("spiffe://cluster.local/ns/crm/sa/sync");
    let caller = AsCaller {
        channel: tls_channel(&tls.server, &server_ca, Some(&identity))
            .await
            .unwrap(),
        token: None,
    };
    flows::credential(&caller, "main").await;
}

#[tokio::test]
async fn rotated_certificates_serve_new_connections_and_keep_open_streams() {
    let sandbox = start_sandbox().await;
    let dir = tempfile::tempdir().unwrap();
    let first_ca = Authority::new("first ca");
    let tls = tls_server(
        dir.path(),
        &sandbox.base_url(),
        &first_ca,
        None,
        Some(&callers_file()),
    )
    .await;
    let old = AsCaller {
        channel: tls_channel(&tls.server, &first_ca, None).await.unwrap(),
        token: Some(ADMIN.into()),
    };
    flows::credential(&old, "main").await;
    let name = flows::active_destination(&old, "tickets", template("create_ticket", &[])).await;
    let (requests, mut stream) = flows::open(&old, &name).await;
    requests
        .send(flows::batch(vec![ticket("before")]))
        .await
        .unwrap();
    flows::next_results(&mut stream, 1).await;

    // cert-manager renews the certificate from a new CA: key first, then the certificate.
    let second_ca = Authority::new("second ca");
    let (certificate, key) = second_ca.server_certificate();
    replace_file(&tls.key, &key);
    replace_file(&tls.certificate, &certificate);
    let mut rotated = false;
    for _ in 0..200 {
        if let Ok(channel) = tls_channel(&tls.server, &second_ca, None).await {
            let caller = AsCaller {
                channel,
                token: Some(ADMIN.into()),
            };
            if list_credentials(&caller).await.is_ok() {
                rotated = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        rotated,
        "new connections did not get the new certificate within 10 s"
    );
    assert!(
        tls_channel(&tls.server, &first_ca, None).await.is_err(),
        "a new connection still got the old certificate"
    );

    // The stream on the old connection goes on and ends OK.
    let answered = flows::finish(requests, &mut stream, vec![ticket("after")]).await;
    assert_eq!(answered.of("after").outcome(), proto::Outcome::Delivered);
}

#[tokio::test]
async fn a_mismatched_key_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new("ca");
    let (certificate, _) = authority.server_certificate();
    let (_, other_key) = authority.server_certificate();
    let certificate_path = dir.path().join("server.pem");
    let key_path = dir.path().join("server.key");
    replace_file(&certificate_path, &certificate);
    replace_file(&key_path, &other_key);
    let mut settings = Settings::for_tests(
        dir.path().join("data"),
        "http://127.0.0.1:9".parse().unwrap(),
    );
    settings.tls_cert = Some(certificate_path);
    settings.tls_key = Some(key_path);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = groove_destination::serve(settings, listener, std::future::pending())
        .await
        .expect_err("served with a key that does not match");
    assert!(
        error.to_string().contains("cannot be used together"),
        "{error}"
    );
}

/// The connection settings hold behind the TLS acceptor too, and a connection closed for its age keeps
/// nothing from the next one: the client certificate still names the caller.
#[tokio::test]
async fn over_mtls_a_connection_past_its_age_and_grace_is_closed_and_the_client_reconnects() {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = Authority::new("server ca");
    let client_ca = Authority::new("client ca");
    let tls = tls_server_with(
        dir.path(),
        "http://127.0.0.1:9",
        &server_ca,
        Some(&client_ca),
        Some(&callers_file()),
        |settings| {
            settings.max_connection_age = Some(Duration::from_millis(200));
            settings.max_connection_age_grace = Some(Duration::from_millis(100));
        },
    )
    .await;
    let relay = CountingRelay::start(tls.server.addr).await;
    let identity = client_ca.client_certificate(READER_NAME);
    let tls_config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(server_ca.pem()))
        .domain_name("localhost")
        .identity(Identity::from_pem(&identity.0, &identity.1));
    let channel = Channel::from_shared(format!("https://{}", relay.addr))
        .unwrap()
        .tls_config(tls_config)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let reader = AsCaller {
        channel,
        token: None,
    };
    list_credentials(&reader).await.unwrap();
    assert_eq!(relay.connections(), 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    // The first call may still meet the closed connection; the channel then connects again.
    if let Err(status) = list_credentials(&reader).await {
        assert!(
            matches!(status.code(), Code::Unavailable | Code::Cancelled),
            "{status:?}"
        );
        list_credentials(&reader).await.unwrap();
    }
    assert_eq!(relay.connections(), 2);
    tls.server.stop().await;
}
