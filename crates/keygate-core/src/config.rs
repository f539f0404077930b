//! The configuration file's types (what users write). Loading and environment overrides live in
//! the binary; the runtime snapshot each component needs is derived from these after
//! [`Config::validate`] has passed.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use url::Url;

/// The whole configuration file. Every field has a default, so an empty file is valid.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct Config {
    /// Address the gateway listens on.
    pub listen: Option<SocketAddr>,
    /// Limits on the sockets clients open (slow and idle clients, descriptor exhaustion).
    pub server: ServerConfig,
    /// HTTPS on the listen address.
    pub tls: TlsConfig,
    /// The operations listener: health, readiness and metrics off the public port.
    pub admin: AdminConfig,
    /// Rules shared by every MCP endpoint.
    pub mcp: McpConfig,
    /// URL clients use to reach the gateway; defaults to `http://{listen}`.
    pub public_url: Option<Url>,
    /// Directory for the embedded database and the generated vault key. The binary's loader
    /// sets it to the per-user data directory when nothing names one.
    pub data_dir: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Persistence.
    pub database: DatabaseConfig,
    /// Secret sealing.
    pub vault: VaultConfig,
    /// Authorization server.
    pub auth: AuthConfig,
    /// Management API.
    pub api: ApiConfig,
    /// Requests the gateway makes to URLs that users supply.
    pub outbound: OutboundConfig,
    /// The MCP proxy.
    pub proxy: ProxyConfig,
    /// OAuth toward upstream providers (users' connections).
    pub upstream_oauth: UpstreamOAuthConfig,
    /// Trace events: one per JSON-RPC exchange.
    pub traces: TracesConfig,
    /// OpenTelemetry export and Prometheus metrics.
    pub telemetry: TelemetryConfig,
}

/// Listener limits: what a slow, idle or flooding client can hold.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Seconds a client has to send a request's complete headers, from when the connection
    /// opens or (kept alive) from the next request's first byte; then the connection is closed.
    pub header_read_timeout_secs: Option<u64>,
    /// Seconds an idle keep-alive connection (no request in flight, no byte of the next one)
    /// stays open.
    pub idle_timeout_secs: Option<u64>,
    /// Open client connections at most. At the cap the oldest idle connection is closed to
    /// make room; with none idle, health checks get a few reserved slots and anything else is
    /// refused at once (and logged). Default: the open-files limit (raised to its hard limit at
    /// start) less a reserve for the database, upstream connections and files, halved.
    pub max_connections: Option<u32>,
}

/// HTTPS on the listen address. Both files set: the gateway speaks TLS 1.2 and 1.3 only
/// (HTTP/2 and HTTP/1.1 by ALPN), and presents a certificate replaced on disk to new
/// handshakes within seconds, without a restart.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's own certificate first.
    pub cert_file: Option<String>,
    /// PEM file with the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<String>,
    /// Seconds a new connection has to complete its TLS handshake.
    pub handshake_timeout_secs: Option<u64>,
}

/// The operations listener.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address serving `/healthz`, `/readyz` and `/metrics` (plain HTTP). When set, those
    /// routes are served there only, not on the public listener.
    pub listen: Option<SocketAddr>,
}

/// Settings every MCP endpoint shares.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct McpConfig {
    /// Browser origins (`https://app.example.com`) allowed besides the public URL's own. A
    /// request with any other `Origin` header gets 403 (DNS-rebinding protection); requests
    /// without one (non-browser clients) are served.
    pub allowed_origins: Vec<String>,
}

/// Trace event settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct TracesConfig {
    /// Record a trace event per JSON-RPC exchange (default true).
    pub enabled: Option<bool>,
    /// Payload capture: `off` (default), `redacted` or `full`.
    pub capture: Option<String>,
    /// Extra JSON field names masked in `redacted` mode (besides tokens, secrets, passwords…).
    pub redact_fields: Vec<String>,
    /// Largest request or response payload kept per event, in bytes.
    pub max_payload_bytes: Option<usize>,
    /// Events older than this many days are deleted; 0 keeps them forever.
    pub retention_days: Option<u32>,
    /// Events that may wait to be written; more are dropped (and counted), never waited for.
    pub queue_capacity: Option<usize>,
}

/// OpenTelemetry and Prometheus settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL (e.g. `http://127.0.0.1:4318`); spans go to `{url}/v1/traces`.
    /// Unset (and no `otlp_traces_endpoint`): no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// The full URL spans are sent to, used as is; wins over `otlp_endpoint`.
    pub otlp_traces_endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    pub otlp_protocol: Option<String>,
    /// Headers on every export request (a hosted collector's API key): `key=value` pairs
    /// separated by commas, values percent-encoded.
    pub otlp_headers: Option<String>,
    /// Milliseconds one export request may take (default 10000).
    pub otlp_timeout_ms: Option<u64>,
    /// Finished spans that may wait for export; more are dropped and counted (default 2048).
    pub otlp_queue_capacity: Option<usize>,
    /// `parentbased_always_on` (default), `parentbased_always_off`,
    /// `parentbased_traceidratio`, `always_on`, `always_off` or `traceidratio`.
    pub traces_sampler: Option<String>,
    /// The ratio of the `traceidratio` samplers, 0 to 1 (default 1).
    pub traces_sampler_arg: Option<String>,
    /// `service.name` of exported spans.
    pub service_name: Option<String>,
    /// Serve Prometheus metrics at `/metrics` (default true).
    pub metrics_enabled: Option<bool>,
    /// When set, `/metrics` requires `Authorization: Bearer <this>`.
    pub metrics_token: Option<String>,
}

/// OAuth toward upstream providers.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct UpstreamOAuthConfig {
    /// Seconds before its expiry that an access token is refreshed; at most a quarter of the
    /// token's lifetime, so a short-lived token is used for three quarters of its life first.
    pub refresh_skew_secs: Option<u64>,
    /// Named providers that integrations refer to with `oauth.provider`. File only: a map has
    /// no environment variables.
    pub providers: std::collections::BTreeMap<String, OAuthProviderConfig>,
}

/// One upstream OAuth provider.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct OAuthProviderConfig {
    pub authorization_url: Option<Url>,
    pub token_url: Option<Url>,
    pub revocation_url: Option<Url>,
    pub userinfo_url: Option<Url>,
    pub client_id: Option<String>,
    /// The client secret sealed by `keygate vault seal` (`vault:…`), so the file holds no
    /// plaintext secret.
    pub client_secret: Option<String>,
    /// Scopes requested when the integration names none.
    pub scopes: Vec<String>,
    /// Extra parameters of the authorization request (`prompt = "consent"`, `access_type`, …).
    pub authorize_params: std::collections::BTreeMap<String, String>,
}

/// MCP proxy settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Seconds an upstream may take to send response headers before the client gets 504.
    /// Streams have no total timeout once they started.
    pub upstream_header_timeout_secs: Option<u64>,
    /// Seconds a pooled upstream connection may sit idle before it is closed.
    pub upstream_idle_timeout_secs: Option<u64>,
    /// Seconds a streamed upstream answer may stay silent (no byte, keep-alives included)
    /// before the gateway ends it; the client may resume with `Last-Event-ID`.
    pub stream_idle_timeout_secs: Option<u64>,
    /// Seconds each upstream gets to answer its part of an aggregated fan-out (`initialize`,
    /// `tools/list`, …); one that misses it is left out of that answer and asked again later.
    pub fanout_timeout_secs: Option<u64>,
}

/// Outbound request settings (the SSRF guard).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct OutboundConfig {
    /// Hosts that may be reached even though they resolve to loopback or private addresses,
    /// and that may be reached over plain http: for local development only.
    pub allowed_private_hosts: Vec<String>,
}

/// Logging settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: Option<String>,
    /// A `tracing` filter such as `info` or `keygate=debug,info`.
    pub level: Option<String>,
}

/// Database settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` or `postgres://…`; defaults to `{data_dir}/keygate.db`.
    pub url: Option<String>,
    /// Upper bound of pooled connections.
    pub max_connections: Option<u32>,
}

/// Vault (envelope encryption) settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct VaultConfig {
    /// The key-encryption key, 32 bytes in standard base64. Takes precedence over `key_file`.
    pub key: Option<String>,
    /// File holding the key-encryption key; generated (mode 0600) when absent.
    pub key_file: Option<String>,
}

/// Authorization server settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Lifetime of issued access tokens, in seconds.
    pub access_token_ttl_secs: Option<u64>,
    /// Seconds a connect link (`/oauth/connect?session=…`) stays usable; it is single-use and
    /// only for the user it was minted for.
    pub connect_link_ttl_secs: Option<u64>,
    /// Failed sign-ins of one account (email) before each further attempt must wait, the wait
    /// doubling from one second with every further failure.
    pub login_failures_per_account: Option<u32>,
    /// Failed sign-ins from one client address (an IPv6 /64) before each further attempt must
    /// wait, as for an account.
    pub login_failures_per_ip: Option<u32>,
    /// Failed client authentications (wrong or missing secret, unknown client) of one
    /// `client_id` at the token and revocation endpoints before each further attempt must wait.
    pub client_auth_failures_per_client: Option<u32>,
    /// Failed client authentications from one client address before each further attempt
    /// must wait.
    pub client_auth_failures_per_ip: Option<u32>,
    /// The longest wait those growing delays reach, in seconds; a key's failures are forgotten
    /// after twice this long without one.
    pub failure_delay_max_secs: Option<u64>,
    /// Dynamic client registrations (`/oauth2/register`) per minute from one client address.
    pub registrations_per_ip_per_minute: Option<u32>,
    /// Dynamic client registrations per minute from everyone together.
    pub registrations_per_minute: Option<u32>,
}

/// Management API settings.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Requests per minute allowed per credential.
    pub rate_limit_per_minute: Option<u32>,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: Option<usize>,
}

/// The type of a configuration leaf, for parsing environment overrides.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldKind {
    String,
    Integer,
    /// Comma-separated in the environment.
    StringList,
    /// `true` or `false`.
    Bool,
}

/// Every leaf of the file, dotted. `KEYGATE_` + the path in upper case with `.` → `_` is its
/// environment variable (`database.url` → `KEYGATE_DATABASE_URL`).
pub const FIELDS: &[(&str, FieldKind)] = &[
    ("listen", FieldKind::String),
    ("server.header_read_timeout_secs", FieldKind::Integer),
    ("server.idle_timeout_secs", FieldKind::Integer),
    ("server.max_connections", FieldKind::Integer),
    ("tls.cert_file", FieldKind::String),
    ("tls.key_file", FieldKind::String),
    ("tls.handshake_timeout_secs", FieldKind::Integer),
    ("admin.listen", FieldKind::String),
    ("mcp.allowed_origins", FieldKind::StringList),
    ("public_url", FieldKind::String),
    ("data_dir", FieldKind::String),
    ("log.format", FieldKind::String),
    ("log.level", FieldKind::String),
    ("database.url", FieldKind::String),
    ("database.max_connections", FieldKind::Integer),
    ("vault.key", FieldKind::String),
    ("vault.key_file", FieldKind::String),
    ("auth.access_token_ttl_secs", FieldKind::Integer),
    ("auth.connect_link_ttl_secs", FieldKind::Integer),
    ("auth.login_failures_per_account", FieldKind::Integer),
    ("auth.login_failures_per_ip", FieldKind::Integer),
    ("auth.client_auth_failures_per_client", FieldKind::Integer),
    ("auth.client_auth_failures_per_ip", FieldKind::Integer),
    ("auth.failure_delay_max_secs", FieldKind::Integer),
    ("auth.registrations_per_ip_per_minute", FieldKind::Integer),
    ("auth.registrations_per_minute", FieldKind::Integer),
    ("api.rate_limit_per_minute", FieldKind::Integer),
    ("api.max_body_bytes", FieldKind::Integer),
    ("outbound.allowed_private_hosts", FieldKind::StringList),
    ("proxy.upstream_header_timeout_secs", FieldKind::Integer),
    ("proxy.upstream_idle_timeout_secs", FieldKind::Integer),
    ("proxy.stream_idle_timeout_secs", FieldKind::Integer),
    ("proxy.fanout_timeout_secs", FieldKind::Integer),
    ("upstream_oauth.refresh_skew_secs", FieldKind::Integer),
    ("traces.enabled", FieldKind::Bool),
    ("traces.capture", FieldKind::String),
    ("traces.redact_fields", FieldKind::StringList),
    ("traces.max_payload_bytes", FieldKind::Integer),
    ("traces.retention_days", FieldKind::Integer),
    ("traces.queue_capacity", FieldKind::Integer),
    ("telemetry.otlp_endpoint", FieldKind::String),
    ("telemetry.otlp_traces_endpoint", FieldKind::String),
    ("telemetry.otlp_protocol", FieldKind::String),
    ("telemetry.otlp_headers", FieldKind::String),
    ("telemetry.otlp_timeout_ms", FieldKind::Integer),
    ("telemetry.otlp_queue_capacity", FieldKind::Integer),
    ("telemetry.traces_sampler", FieldKind::String),
    ("telemetry.traces_sampler_arg", FieldKind::String),
    ("telemetry.service_name", FieldKind::String),
    ("telemetry.metrics_enabled", FieldKind::Bool),
    ("telemetry.metrics_token", FieldKind::String),
];

/// The environment variable that overrides a dotted field.
pub fn env_var_for(field: &str) -> String {
    format!("KEYGATE_{}", field.replace('.', "_").to_ascii_uppercase())
}

/// A configuration error, naming the field at fault (empty when the file cannot be parsed
/// at all) and, when it is in the file, where.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
    /// `FILE:LINE:COLUMN` (1-based) of the error in the configuration file.
    pub at: Option<String>,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
            at: None,
        }
    }

    /// The same error, located in the configuration file.
    pub fn at(mut self, location: impl Into<String>) -> Self {
        self.at = Some(location.into());
        self
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid configuration: ")?;
        if let Some(at) = &self.at {
            write!(f, "{at}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "`{}`: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// How a value sealed by `keygate vault seal` starts.
pub const SEALED_PREFIX: &str = "vault:";

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// The data directory of a `Config` built in code without one. The binary's loader always
/// sets `data_dir` (to the per-user data directory when nothing names one), so that the
/// server and local commands find the same database from any working directory.
pub const DEFAULT_DATA_DIR: &str = "./data";
pub const DEFAULT_ACCESS_TOKEN_TTL_SECS: u64 = 900;
pub const DEFAULT_RATE_LIMIT_PER_MINUTE: u32 = 120;
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
pub const DEFAULT_MAX_CONNECTIONS: u32 = 10;
pub const DEFAULT_UPSTREAM_HEADER_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_REFRESH_SKEW_SECS: u64 = 60;
pub const DEFAULT_HEADER_READ_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 60;
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS: u64 = 10;
pub const DEFAULT_STREAM_IDLE_TIMEOUT_SECS: u64 = 300;
pub const DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS: u64 = 90;
pub const DEFAULT_FANOUT_TIMEOUT_SECS: u64 = 5;
pub const DEFAULT_CONNECT_LINK_TTL_SECS: u64 = 600;
pub const DEFAULT_LOGIN_FAILURES_PER_ACCOUNT: u32 = 5;
pub const DEFAULT_LOGIN_FAILURES_PER_IP: u32 = 20;
pub const DEFAULT_CLIENT_AUTH_FAILURES_PER_CLIENT: u32 = 10;
pub const DEFAULT_CLIENT_AUTH_FAILURES_PER_IP: u32 = 30;
pub const DEFAULT_FAILURE_DELAY_MAX_SECS: u64 = 900;
pub const DEFAULT_REGISTRATIONS_PER_IP_PER_MINUTE: u32 = 20;
pub const DEFAULT_REGISTRATIONS_PER_MINUTE: u32 = 300;
pub const DEFAULT_TRACE_MAX_PAYLOAD_BYTES: usize = 16 * 1024;
pub const DEFAULT_TRACE_RETENTION_DAYS: u32 = 30;
pub const DEFAULT_TRACE_QUEUE_CAPACITY: usize = 20_000;

impl Config {
    pub fn listen(&self) -> SocketAddr {
        self.listen
            .unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("valid default"))
    }

    /// The public URL without a trailing slash; by default the listen address, over https
    /// when TLS is on.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.as_str().trim_end_matches('/').to_owned(),
            None if self.tls_enabled() => format!("https://{}", self.listen()),
            None => format!("http://{}", self.listen()),
        }
    }

    /// Whether the listener speaks TLS (both files are set; validation refuses one alone).
    pub fn tls_enabled(&self) -> bool {
        self.tls.cert_file.is_some() && self.tls.key_file.is_some()
    }

    pub fn tls_handshake_timeout_secs(&self) -> u64 {
        self.tls
            .handshake_timeout_secs
            .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT_SECS)
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "tls.key_file",
                    "is required when tls.cert_file is set",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "tls.cert_file",
                    "is required when tls.key_file is set",
                ));
            }
            (Some(c), Some(k)) if c.trim().is_empty() || k.trim().is_empty() => {
                return Err(ConfigError::new("tls.cert_file", "must name a file"));
            }
            _ => {}
        }
        if !(1..=60).contains(&self.tls_handshake_timeout_secs()) {
            return Err(ConfigError::new(
                "tls.handshake_timeout_secs",
                "must be between 1 and 60",
            ));
        }
        if self.tls_enabled()
            && let Some(url) = &self.public_url
            && url.scheme() != "https"
        {
            return Err(ConfigError::new(
                "public_url",
                "must be https when the listener speaks TLS (tls.cert_file is set)",
            ));
        }
        if let Some(admin) = self.admin.listen
            && admin.port() != 0
            && admin == self.listen()
        {
            return Err(ConfigError::new(
                "admin.listen",
                "must differ from listen (the admin listener is a port of its own)",
            ));
        }
        Ok(())
    }

    pub fn data_dir(&self) -> &str {
        self.data_dir.as_deref().unwrap_or(DEFAULT_DATA_DIR)
    }

    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}/keygate.db", self.data_dir()),
        }
    }

    pub fn access_token_ttl_secs(&self) -> u64 {
        self.auth
            .access_token_ttl_secs
            .unwrap_or(DEFAULT_ACCESS_TOKEN_TTL_SECS)
    }

    pub fn rate_limit_per_minute(&self) -> u32 {
        self.api
            .rate_limit_per_minute
            .unwrap_or(DEFAULT_RATE_LIMIT_PER_MINUTE)
    }

    pub fn max_body_bytes(&self) -> usize {
        self.api.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    pub fn upstream_header_timeout_secs(&self) -> u64 {
        self.proxy
            .upstream_header_timeout_secs
            .unwrap_or(DEFAULT_UPSTREAM_HEADER_TIMEOUT_SECS)
    }

    pub fn refresh_skew_secs(&self) -> u64 {
        self.upstream_oauth
            .refresh_skew_secs
            .unwrap_or(DEFAULT_REFRESH_SKEW_SECS)
    }

    pub fn header_read_timeout_secs(&self) -> u64 {
        self.server
            .header_read_timeout_secs
            .unwrap_or(DEFAULT_HEADER_READ_TIMEOUT_SECS)
    }

    pub fn idle_timeout_secs(&self) -> u64 {
        self.server
            .idle_timeout_secs
            .unwrap_or(DEFAULT_IDLE_TIMEOUT_SECS)
    }

    pub fn upstream_idle_timeout_secs(&self) -> u64 {
        self.proxy
            .upstream_idle_timeout_secs
            .unwrap_or(DEFAULT_UPSTREAM_IDLE_TIMEOUT_SECS)
    }

    pub fn stream_idle_timeout_secs(&self) -> u64 {
        self.proxy
            .stream_idle_timeout_secs
            .unwrap_or(DEFAULT_STREAM_IDLE_TIMEOUT_SECS)
    }

    pub fn fanout_timeout_secs(&self) -> u64 {
        self.proxy
            .fanout_timeout_secs
            .unwrap_or(DEFAULT_FANOUT_TIMEOUT_SECS)
    }

    pub fn connect_link_ttl_secs(&self) -> u64 {
        self.auth
            .connect_link_ttl_secs
            .unwrap_or(DEFAULT_CONNECT_LINK_TTL_SECS)
    }

    pub fn login_failures_per_account(&self) -> u32 {
        self.auth
            .login_failures_per_account
            .unwrap_or(DEFAULT_LOGIN_FAILURES_PER_ACCOUNT)
    }

    pub fn login_failures_per_ip(&self) -> u32 {
        self.auth
            .login_failures_per_ip
            .unwrap_or(DEFAULT_LOGIN_FAILURES_PER_IP)
    }

    pub fn client_auth_failures_per_client(&self) -> u32 {
        self.auth
            .client_auth_failures_per_client
            .unwrap_or(DEFAULT_CLIENT_AUTH_FAILURES_PER_CLIENT)
    }

    pub fn client_auth_failures_per_ip(&self) -> u32 {
        self.auth
            .client_auth_failures_per_ip
            .unwrap_or(DEFAULT_CLIENT_AUTH_FAILURES_PER_IP)
    }

    pub fn failure_delay_max_secs(&self) -> u64 {
        self.auth
            .failure_delay_max_secs
            .unwrap_or(DEFAULT_FAILURE_DELAY_MAX_SECS)
    }

    pub fn registrations_per_ip_per_minute(&self) -> u32 {
        self.auth
            .registrations_per_ip_per_minute
            .unwrap_or(DEFAULT_REGISTRATIONS_PER_IP_PER_MINUTE)
    }

    pub fn registrations_per_minute(&self) -> u32 {
        self.auth
            .registrations_per_minute
            .unwrap_or(DEFAULT_REGISTRATIONS_PER_MINUTE)
    }

    pub fn max_connections(&self) -> u32 {
        self.database
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    pub fn traces_enabled(&self) -> bool {
        self.traces.enabled.unwrap_or(true)
    }

    /// `off`, `redacted` or `full`.
    pub fn trace_capture(&self) -> &str {
        self.traces.capture.as_deref().unwrap_or("off")
    }

    pub fn trace_max_payload_bytes(&self) -> usize {
        self.traces
            .max_payload_bytes
            .unwrap_or(DEFAULT_TRACE_MAX_PAYLOAD_BYTES)
    }

    pub fn trace_retention_days(&self) -> u32 {
        self.traces
            .retention_days
            .unwrap_or(DEFAULT_TRACE_RETENTION_DAYS)
    }

    pub fn trace_queue_capacity(&self) -> usize {
        self.traces
            .queue_capacity
            .unwrap_or(DEFAULT_TRACE_QUEUE_CAPACITY)
    }

    pub fn metrics_enabled(&self) -> bool {
        self.telemetry.metrics_enabled.unwrap_or(true)
    }

    fn validate_telemetry(&self) -> Result<(), ConfigError> {
        if !matches!(self.trace_capture(), "off" | "redacted" | "full") {
            return Err(ConfigError::new(
                "traces.capture",
                "must be `off`, `redacted` or `full`",
            ));
        }
        if !(256..=1024 * 1024).contains(&self.trace_max_payload_bytes()) {
            return Err(ConfigError::new(
                "traces.max_payload_bytes",
                "must be between 256 and 1048576",
            ));
        }
        if self.trace_retention_days() > 3650 {
            return Err(ConfigError::new(
                "traces.retention_days",
                "must be at most 3650 (0 keeps events forever)",
            ));
        }
        if !(100..=10_000_000).contains(&self.trace_queue_capacity()) {
            return Err(ConfigError::new(
                "traces.queue_capacity",
                "must be between 100 and 10000000",
            ));
        }
        self.telemetry.otlp()?;
        if self
            .telemetry
            .metrics_token
            .as_ref()
            .is_some_and(|t| t.len() < 16)
        {
            return Err(ConfigError::new(
                "telemetry.metrics_token",
                "must be at least 16 characters",
            ));
        }
        Ok(())
    }

    /// Checks everything that can be checked without touching the network or the disk.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_telemetry()?;
        self.validate_listeners()?;
        if let Some(url) = &self.public_url {
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "public_url",
                    "must be an http or https URL",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(ConfigError::new(
                    "public_url",
                    "must not have a query or fragment",
                ));
            }
        }
        if let Some(format) = &self.log.format
            && !matches!(format.as_str(), "text" | "json")
        {
            return Err(ConfigError::new("log.format", "must be `text` or `json`"));
        }
        let db = self.database_url();
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(ConfigError::new(
                "database.url",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if self.max_connections() == 0 {
            return Err(ConfigError::new(
                "database.max_connections",
                "must be at least 1",
            ));
        }
        if let Some(ttl) = self.auth.access_token_ttl_secs
            && !(60..=86_400).contains(&ttl)
        {
            return Err(ConfigError::new(
                "auth.access_token_ttl_secs",
                "must be between 60 and 86400",
            ));
        }
        if self.rate_limit_per_minute() == 0 {
            return Err(ConfigError::new(
                "api.rate_limit_per_minute",
                "must be at least 1",
            ));
        }
        if !(1..=3600).contains(&self.upstream_header_timeout_secs()) {
            return Err(ConfigError::new(
                "proxy.upstream_header_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        for (field, value, range) in [
            (
                "server.header_read_timeout_secs",
                self.header_read_timeout_secs(),
                1..=300,
            ),
            (
                "server.idle_timeout_secs",
                self.idle_timeout_secs(),
                1..=3600,
            ),
            (
                "proxy.upstream_idle_timeout_secs",
                self.upstream_idle_timeout_secs(),
                1..=3600,
            ),
            (
                "proxy.stream_idle_timeout_secs",
                self.stream_idle_timeout_secs(),
                1..=86_400,
            ),
            (
                "proxy.fanout_timeout_secs",
                self.fanout_timeout_secs(),
                1..=300,
            ),
            (
                "auth.connect_link_ttl_secs",
                self.connect_link_ttl_secs(),
                30..=86_400,
            ),
            (
                "auth.failure_delay_max_secs",
                self.failure_delay_max_secs(),
                1..=86_400,
            ),
        ] {
            if !range.contains(&value) {
                return Err(ConfigError::new(
                    field,
                    format!("must be between {} and {}", range.start(), range.end()),
                ));
            }
        }
        for (field, value) in [
            (
                "auth.login_failures_per_account",
                self.login_failures_per_account(),
            ),
            ("auth.login_failures_per_ip", self.login_failures_per_ip()),
            (
                "auth.client_auth_failures_per_client",
                self.client_auth_failures_per_client(),
            ),
            (
                "auth.client_auth_failures_per_ip",
                self.client_auth_failures_per_ip(),
            ),
            (
                "auth.registrations_per_ip_per_minute",
                self.registrations_per_ip_per_minute(),
            ),
            (
                "auth.registrations_per_minute",
                self.registrations_per_minute(),
            ),
        ] {
            if !(1..=1_000_000).contains(&value) {
                return Err(ConfigError::new(field, "must be between 1 and 1000000"));
            }
        }
        if self.server.max_connections == Some(0) {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be at least 1",
            ));
        }
        for origin in &self.mcp.allowed_origins {
            let ok = Url::parse(origin).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.query().is_none()
                    && !origin.ends_with('/')
            });
            if !ok {
                return Err(ConfigError::new(
                    "mcp.allowed_origins",
                    format!("`{origin}` is not an origin (scheme://host[:port], no path)"),
                ));
            }
        }
        if self.refresh_skew_secs() > 3600 {
            return Err(ConfigError::new(
                "upstream_oauth.refresh_skew_secs",
                "must be at most 3600",
            ));
        }
        for (name, p) in &self.upstream_oauth.providers {
            let field = |f: &str| format!("upstream_oauth.providers.{name}.{f}");
            for (f, url) in [
                ("authorization_url", &p.authorization_url),
                ("token_url", &p.token_url),
            ] {
                if url.is_none() {
                    return Err(ConfigError::new(field(f), "is required"));
                }
            }
            if p.client_id.as_deref().is_none_or(str::is_empty) {
                return Err(ConfigError::new(field("client_id"), "is required"));
            }
            if p.client_secret
                .as_deref()
                .is_some_and(|s| !s.starts_with(SEALED_PREFIX))
            {
                return Err(ConfigError::new(
                    field("client_secret"),
                    "must be sealed with `keygate vault seal` (it starts with `vault:`)",
                ));
            }
        }
        if self.max_body_bytes() < 1024 {
            return Err(ConfigError::new(
                "api.max_body_bytes",
                "must be at least 1024",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(prefix: &str, value: &toml::Value, out: &mut Vec<String>) {
        match value {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let path = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    leaves(&path, v, out);
                }
            }
            // Named providers are a map: file only, no environment variables.
            _ if prefix.starts_with("upstream_oauth.providers.") => {}
            _ => out.push(prefix.to_owned()),
        }
    }

    /// The example file documents every field, and every field can be set from the
    /// environment: the three lists stay in step.
    #[test]
    fn example_file_fields_and_env_list_agree() {
        let text = include_str!("../../../config/keygate.example.toml");
        let uncommented: String = text
            .lines()
            .map(|l| {
                l.strip_prefix("# ")
                    .filter(|l| l.contains(" = ") || l.starts_with('['))
                    .unwrap_or(l)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let value: toml::Value = toml::from_str(&uncommented).expect("example parses");
        let config: Config = value.clone().try_into().expect("example deserializes");
        config.validate().expect("example validates");
        let mut found = Vec::new();
        leaves("", &value, &mut found);
        found.sort();
        let mut listed: Vec<String> = FIELDS.iter().map(|(f, _)| (*f).to_owned()).collect();
        listed.sort();
        assert_eq!(found, listed);
    }

    #[test]
    fn env_names_follow_the_rule() {
        assert_eq!(env_var_for("database.url"), "KEYGATE_DATABASE_URL");
        assert_eq!(env_var_for("public_url"), "KEYGATE_PUBLIC_URL");
    }

    #[test]
    fn tls_needs_both_files_and_an_https_public_url() {
        let mut c = Config::default();
        c.tls.cert_file = Some("cert.pem".into());
        assert_eq!(c.validate().unwrap_err().field, "tls.key_file");
        c.tls.key_file = Some("key.pem".into());
        c.validate().expect("both files");
        assert!(c.public_url().starts_with("https://"));
        c.public_url = Some("http://gw.example".parse().unwrap());
        assert_eq!(c.validate().unwrap_err().field, "public_url");
    }

    #[test]
    fn the_admin_listener_is_a_port_of_its_own() {
        let mut c = Config::default();
        c.admin.listen = Some(c.listen());
        assert_eq!(c.validate().unwrap_err().field, "admin.listen");
        c.admin.listen = Some("127.0.0.1:9090".parse().unwrap());
        c.validate().expect("another port");
    }

    #[test]
    fn validation_names_the_field() {
        let mut c = Config::default();
        c.database.url = Some("mysql://x".into());
        assert_eq!(c.validate().unwrap_err().field, "database.url");
        let mut c = Config::default();
        c.auth.access_token_ttl_secs = Some(5);
        assert_eq!(
            c.validate().unwrap_err().field,
            "auth.access_token_ttl_secs"
        );
    }
}
