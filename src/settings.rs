//! Start-up settings, from flags or environment. A bad value stops start-up with a one-line error that names
//! the setting (clap prints it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use url::Url;

use crate::domain::host_policy::{AllowedHost, HostPolicy};

mod database_url;

pub use database_url::DatabaseUrl;

/// groove-destination: delivers streams of records to the Groove helpdesk API.
#[derive(Clone, Debug, Parser)]
#[command(
    name = "groove-destination",
    version,
    about,
    after_help = "Commands:\n  send    stream a JSON Lines or CSV file of records to a destination \
                  (groove-destination send --help)"
)]
pub struct Settings {
    /// Address the gRPC server listens on.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_LISTEN",
        default_value = "127.0.0.1:50051"
    )]
    pub listen: SocketAddr,

    /// Folder for the embedded store (SQLite file) and the generated secret key file; created if missing.
    #[arg(long, env = "GROOVE_DESTINATION_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Groove API base URL. API keys are only ever sent to URLs under it.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_GROOVE_URL",
        default_value = "https://api.groovehq.com/v1",
        value_parser = parse_groove_url
    )]
    pub groove_url: Url,

    /// PostgreSQL database shared by all replicas (`postgres://user:password@host:5432/db`, `?sslmode=require`
    /// for TLS). Unset: the embedded SQLite store in the data dir, for one process.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_DATABASE_URL",
        hide_env_values = true,
        value_parser = database_url::DatabaseUrlParser
    )]
    pub database_url: Option<DatabaseUrl>,

    /// With `--database-url`: how long a replica's claims outlive it. A replica renews its lease five times per
    /// lease; the records a stopped replica was sending are answered as maybe delivered (creates) about this
    /// long after it stopped, and until then a replay through another replica waits for them.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_REPLICA_LEASE",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub replica_lease: Duration,

    /// Key that encrypts stored API keys: base64 of 32 bytes. Unset: generated once into
    /// `<data-dir>/secret.key` (mode 0600).
    #[arg(long, env = "GROOVE_DESTINATION_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,

    /// Log filter: a level (`info`, `debug` …) or tracing directives (`groove_destination=debug,info`).
    #[arg(long, env = "GROOVE_DESTINATION_LOG", default_value = "info", value_parser = parse_log_filter)]
    pub log: String,

    /// Most Groove calls per second per credential (all its destinations together). Unset: no fixed cap;
    /// the pace follows Groove's rate-limit answers.
    #[arg(long, env = "GROOVE_DESTINATION_MAX_RATE_PER_CREDENTIAL", value_parser = parse_rate)]
    pub max_rate_per_credential: Option<f64>,

    /// Hours a delivered record id is remembered, so a replayed record is reported as a duplicate instead of
    /// being sent again.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_LEDGER_RETENTION_HOURS",
        default_value_t = 168
    )]
    pub ledger_retention_hours: u64,

    /// Most delivered record ids remembered per destination; the oldest are forgotten first (the embedded
    /// store forgets a batch's ids together, so it may keep up to one batch more).
    #[arg(
        long,
        env = "GROOVE_DESTINATION_LEDGER_MAX_PER_DESTINATION",
        default_value_t = 10_000_000
    )]
    pub ledger_max_per_destination: u64,

    /// Log line format.
    #[arg(long, env = "GROOVE_DESTINATION_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// TOML file of callers: each with a name, the SHA-256 of its bearer token and/or client certificate
    /// names, its scopes (admin, read, send) and optionally the destinations it may use. Re-read when it
    /// changes and on SIGHUP. Unset: callers are not authenticated by token.
    #[arg(long, env = "GROOVE_DESTINATION_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,

    /// Serve server reflection without caller credentials (it lists the API, not its data).
    #[arg(long, env = "GROOVE_DESTINATION_PUBLIC_REFLECTION")]
    pub public_reflection: bool,

    /// Serve a non-loopback address without authenticating callers: only where something in front (a
    /// service-mesh sidecar) authenticates them.
    #[arg(long, env = "GROOVE_DESTINATION_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// PEM certificate chain for TLS on the gRPC port; needs --tls-key. Re-read when it changes.
    #[arg(long, env = "GROOVE_DESTINATION_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "GROOVE_DESTINATION_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates: clients must present a certificate one of them signed (mTLS). Its URI or DNS
    /// names can stand for a caller in --auth-tokens-file; without that file any such client is an admin.
    #[arg(long, env = "GROOVE_DESTINATION_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Where response webhooks may reach loopback, private and CGNAT addresses, comma-separated: networks
    /// (`10.0.0.0/8`, `127.0.0.1/32`) and host names (`hooks.internal`, allowed whatever they resolve to).
    /// Link-local and cloud-metadata addresses are refused whatever this lists. Unset: public addresses only.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_WEBHOOK_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub webhook_allowed_hosts: Vec<AllowedHost>,

    /// OpenTelemetry collector to export traces to over OTLP/gRPC (`http://otel-collector:4317`). Unset: no
    /// export; a caller's `traceparent` still puts its trace id in the logs.
    #[arg(long, env = "GROOVE_DESTINATION_OTLP_ENDPOINT", value_parser = parse_otlp_endpoint)]
    pub otlp_endpoint: Option<Url>,

    /// How often an idle client connection is pinged (HTTP/2 PING), so dead peers and silently dropped
    /// connections are noticed; `0s`: never.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_HTTP2_KEEPALIVE_INTERVAL",
        default_value = "30s",
        value_parser = parse_duration
    )]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_HTTP2_KEEPALIVE_TIMEOUT",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub http2_keepalive_timeout: Duration,

    /// Most concurrent calls and streams on one client connection.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_MAX_CONCURRENT_STREAMS",
        default_value_t = 1024,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub max_concurrent_streams: u32,

    /// Age after which a client connection is asked to go away (GOAWAY): its client opens new calls on a
    /// new connection (through the load balancer again) while the open ones finish. Unset: never.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_MAX_CONNECTION_AGE",
        value_parser = parse_positive_duration
    )]
    pub max_connection_age: Option<Duration>,

    /// How long calls still open on a connection past its max age may go on before it is closed under
    /// them; their records are let go and a replay sends them. Unset: they finish on their own.
    #[arg(
        long,
        env = "GROOVE_DESTINATION_MAX_CONNECTION_AGE_GRACE",
        requires = "max_connection_age",
        value_parser = parse_positive_duration
    )]
    pub max_connection_age_grace: Option<Duration>,

    /// Address of a separate HTTP listener serving Prometheus metrics at `GET /metrics` (OpenMetrics text),
    /// e.g. `0.0.0.0:9090`. Unset: no metrics are kept or served.
    #[arg(long, env = "GROOVE_DESTINATION_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl Settings {
    /// Settings for tests and embedding: defaults, with the given data dir and Groove URL.
    pub fn for_tests(data_dir: PathBuf, groove_url: Url) -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            groove_url,
            database_url: None,
            replica_lease: Duration::from_secs(10),
            secret_key: None,
            log: "warn".to_string(),
            log_format: LogFormat::Text,
            max_rate_per_credential: None,
            ledger_retention_hours: 168,
            ledger_max_per_destination: 10_000_000,
            auth_tokens_file: None,
            public_reflection: false,
            allow_unauthenticated: false,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            webhook_allowed_hosts: Vec::new(),
            otlp_endpoint: None,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            max_concurrent_streams: 1024,
            max_connection_age: None,
            max_connection_age_grace: None,
            metrics_listen: None,
        }
    }

    pub fn server_options(&self) -> crate::api::ServerOptions {
        crate::api::ServerOptions {
            keepalive_interval: (!self.http2_keepalive_interval.is_zero())
                .then_some(self.http2_keepalive_interval),
            keepalive_timeout: self.http2_keepalive_timeout,
            max_concurrent_streams: self.max_concurrent_streams,
            max_connection_age: self.max_connection_age,
            max_connection_age_grace: self.max_connection_age_grace,
        }
    }

    pub fn security_options(&self) -> crate::auth::SecurityOptions {
        crate::auth::SecurityOptions {
            auth_tokens_file: self.auth_tokens_file.clone(),
            tls: self.tls_files(),
            public_reflection: self.public_reflection,
            allow_unauthenticated: self.allow_unauthenticated,
        }
    }

    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::auth::TlsFiles> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(certificate), Some(key)) => Some(crate::auth::TlsFiles {
                certificate: certificate.clone(),
                key: key.clone(),
                client_ca: self.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }

    pub fn engine_options(&self) -> crate::delivery::EngineOptions {
        crate::delivery::EngineOptions {
            max_rate_per_credential: self.max_rate_per_credential,
            ledger_retention: std::time::Duration::from_secs(
                self.ledger_retention_hours.saturating_mul(3600),
            ),
            ledger_max_entries_per_destination: self.ledger_max_per_destination,
            webhook_hosts: HostPolicy::new(&self.webhook_allowed_hosts),
            metrics: None,
            ..Default::default()
        }
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err("must be a positive number of calls per second".to_string()),
    }
}

fn parse_groove_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none() {
        return Err("the URL has no host".to_string());
    }
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err("the URL must not carry a query, fragment or user name".to_string());
    }
    Ok(url)
}

fn parse_otlp_endpoint(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|error| format!("not a URL: {error}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".to_string());
    }
    Ok(url)
}

/// A duration written as `30s`, `1m 30s`, `500ms`, `2h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|error| format!("not a duration such as 30s, 5m or 1h: {error}"))
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        duration if duration.is_zero() => Err("must be longer than zero".to_string()),
        duration => Ok(duration),
    }
}

fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|error| format!("not a log filter: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let settings = Settings::try_parse_from(["groove-destination"]).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:50051");
        assert_eq!(settings.data_dir, PathBuf::from("./data"));
        assert_eq!(settings.groove_url.as_str(), "https://api.groovehq.com/v1");
        assert!(settings.webhook_allowed_hosts.is_empty());
        assert_eq!(settings.metrics_listen, None, "metrics are off by default");
    }

    #[test]
    fn metrics_listen_takes_an_address() {
        let settings =
            Settings::try_parse_from(["groove-destination", "--metrics-listen", "0.0.0.0:9090"])
                .unwrap();
        assert_eq!(
            settings.metrics_listen,
            Some(SocketAddr::from(([0, 0, 0, 0], 9090)))
        );
    }

    #[test]
    fn server_settings_default_to_the_documented_values_and_read_durations() {
        let defaults = Settings::try_parse_from(["groove-destination"])
            .unwrap()
            .server_options();
        assert_eq!(defaults.keepalive_interval, Some(Duration::from_secs(30)));
        assert_eq!(defaults.keepalive_timeout, Duration::from_secs(10));
        assert_eq!(defaults.max_concurrent_streams, 1024);
        assert_eq!(defaults.max_connection_age, None);
        assert_eq!(defaults.max_connection_age_grace, None);

        let set = Settings::try_parse_from([
            "groove-destination",
            "--http2-keepalive-interval",
            "0s",
            "--max-connection-age",
            "1h 30m",
            "--max-connection-age-grace",
            "500ms",
        ])
        .unwrap()
        .server_options();
        assert_eq!(set.keepalive_interval, None);
        assert_eq!(set.max_connection_age, Some(Duration::from_secs(5400)));
        assert_eq!(
            set.max_connection_age_grace,
            Some(Duration::from_millis(500))
        );
    }

    #[test]
    fn a_grace_needs_a_max_connection_age() {
        let error =
            Settings::try_parse_from(["groove-destination", "--max-connection-age-grace", "30s"])
                .unwrap_err();
        assert!(
            error.to_string().contains("--max-connection-age <"),
            "{error}"
        );
    }

    #[test]
    fn webhook_allowed_hosts_are_comma_separated_networks_and_names() {
        let settings = Settings::try_parse_from([
            "groove-destination",
            "--webhook-allowed-hosts",
            "10.0.0.0/8,127.0.0.1, hooks.internal",
        ])
        .unwrap();
        let shown: Vec<String> = settings
            .webhook_allowed_hosts
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32", "hooks.internal"]);
    }

    #[test]
    fn bad_values_name_the_setting() {
        for (flag, value) in [
            ("--listen", "nowhere"),
            ("--groove-url", "ftp://api.groovehq.com/v1"),
            ("--groove-url", "https://user@api.groovehq.com/v1"),
            ("--log", "=="),
            ("--log-format", "xml"),
            ("--tls-cert", "server.pem"),
            ("--tls-client-ca", "ca.pem"),
            ("--webhook-allowed-hosts", "10.0.0.0/8,*.internal"),
            ("--webhook-allowed-hosts", "169.254.169.254"),
            ("--otlp-endpoint", "otel-collector:4317"),
            ("--http2-keepalive-interval", "soon"),
            ("--http2-keepalive-timeout", "0s"),
            ("--max-concurrent-streams", "0"),
            ("--max-connection-age", "30"),
            ("--max-connection-age", "0s"),
            ("--metrics-listen", "9090"),
        ] {
            let error = Settings::try_parse_from(["groove-destination", flag, value]).unwrap_err();
            assert!(error.to_string().contains(flag), "{flag}: {error}");
        }
    }
}
