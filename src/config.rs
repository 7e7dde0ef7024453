//! The configuration file: what the daemon listens on, where it keeps its
//! store, which registries it talks to and which rules say what to copy.
//!
//! The file is TOML. Every string may hold `${VAR}`, replaced from the
//! environment after parsing (so a value can never inject TOML syntax).
//! Secrets come from the environment or from `password_file`, never need to
//! be written into the file itself, and are wrapped in [`Secret`] so that a
//! stray `{:?}` cannot print them.
//!
//! Loading validates everything a running daemon would otherwise trip over
//! later (unknown keys, bad URLs, rules naming unknown registries, unreadable
//! CA files) and refuses with one message naming the file, the key and the
//! problem.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Why a configuration file was refused. Each variant names the file; the
/// invalid ones also name the key, so the admin knows exactly what to edit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("config {file}: cannot read: {source}")]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has keys or types we do not know.
    #[error("config {file}: {message}")]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config {file}: {key}: {problem}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The dotted key, e.g. `registries.integrated.tls.ca_file`.
        key: String,
        /// What is wrong and, where possible, how to fix it.
        problem: String,
    },
}

/// A secret value (password, webhook token). Its `Debug` and `Display` never
/// show the value, so it cannot leak through logs or error messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file came from (for messages).
    pub file: PathBuf,
    /// The HTTP listener.
    pub server: ServerConfig,
    /// The durable job store.
    pub store: StoreConfig,
    /// How jobs run.
    pub jobs: JobsConfig,
    /// Registries by the name rules use for them.
    pub registries: BTreeMap<String, RegistryConfig>,
    /// Replication rules, in file order.
    pub rules: Vec<RuleConfig>,
    /// Logging.
    pub log: LogConfig,
    /// Keys whose secret is written in the file itself (not `${VAR}` or a
    /// `*_file`): worth a warning when the file is readable by others.
    pub inline_secrets: Vec<String>,
}

/// `[log]`: the level and format of the daemon's logs. `RUST_LOG` and
/// `--log-format` win over these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `info,harbor_relay=debug`.
    pub level: Option<String>,
    /// One JSON object per line instead of text.
    pub json: bool,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the webhook, API and metrics listener binds.
    pub listen: SocketAddr,
    /// When set, the exact `Authorization` header value a webhook must carry.
    pub webhook_auth: Option<Secret>,
    /// When set, `/api/v1/*` needs `Authorization: Bearer <token>`; when
    /// not, the API is read-only.
    pub api_token: Option<Secret>,
    /// A second listener for `/metrics`, `/healthz` and `/readyz` only.
    pub metrics_listen: Option<SocketAddr>,
    /// Webhooks per second one client address may send (bursts up to
    /// twice that); beyond it, `429` with `Retry-After`. 0: no limit.
    pub webhook_rate_limit: u32,
    /// Connections one client address may hold open at once; more are
    /// closed at accept, so idle sockets from one address never lock out
    /// another (Harbor's deliveries).
    pub max_connections_per_client: usize,
    /// HTTPS on `listen`: the certificate chain and key (PEM), read again
    /// on reload.
    pub tls: Option<ListenerTls>,
}

/// `server.tls_cert` and `server.tls_key`, checked and read.
#[derive(Clone, PartialEq)]
pub struct ListenerTls {
    /// The certificate chain file (PEM), for messages and reloads.
    pub cert_file: PathBuf,
    /// The key file (PEM).
    pub key_file: PathBuf,
    /// The chain, leaf first (PEM).
    pub cert_pem: Vec<u8>,
    /// The private key (PEM).
    pub key_pem: Secret,
}

impl ListenerTls {
    /// The rustls server settings for these files.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, String> {
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<rustls_pki_types::CertificateDer<'static>> =
            rustls_pki_types::CertificateDer::pem_slice_iter(&self.cert_pem)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", self.cert_file.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "{}: no certificate in it",
                self.cert_file.display()
            ));
        }
        let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.expose().as_bytes())
            .map_err(|e| format!("{}: {e}", self.key_file.display()))?;
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(|mut c| {
            c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            c
        })
        .map_err(|e| {
            format!(
                "{} and {}: {e}",
                self.cert_file.display(),
                self.key_file.display()
            )
        })
    }
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// `[store]`.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the embedded database.
    pub path: PathBuf,
}

/// `[jobs]`: how many jobs and blobs move at once, and how long a stopping
/// daemon waits for running jobs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Jobs run at the same time.
    pub workers: usize,
    /// Blobs of one job copied at the same time.
    pub blob_concurrency: usize,
    /// How long SIGTERM waits for running jobs before leaving them to the
    /// next start.
    pub shutdown_grace: Duration,
    /// Attempts before a job counts as failed.
    pub max_attempts: u32,
    /// Wait before the first retry; it doubles (with jitter) each time.
    pub retry_initial_delay: Duration,
    /// Longest wait between two attempts.
    pub retry_max_delay: Duration,
    /// How long finished jobs stay in the store before they are pruned.
    pub retention: Duration,
    /// A repeated event within this time after its job succeeded joins
    /// that job instead of copying again.
    pub coalesce_window: Duration,
    /// Jobs waiting (queued or due for a retry) at most; beyond it a
    /// webhook is answered `503` with `Retry-After`, so a flood of events
    /// cannot grow the store without bound.
    pub max_queued: usize,
}

/// How to verify a registry's TLS certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsMode {
    /// The system's trusted roots.
    System,
    /// Trust exactly the CA certificates in this PEM (the recommended way to
    /// reach an integrated Harbor with a self-signed certificate).
    Pinned {
        /// The PEM file, for messages.
        file: PathBuf,
        /// Its contents.
        pem: Vec<u8>,
    },
    /// Do not verify at all (logged as a warning at start).
    InsecureSkipVerify,
}

/// `[registries.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryConfig {
    /// The name used in rules and messages.
    pub name: String,
    /// Base URL, `https://host[:port]` or `http://host[:port]`.
    pub url: url::Url,
    /// Basic-auth / token-service user name.
    pub username: Option<String>,
    /// Its password, from the environment, the file or `password_file`.
    pub password: Option<Secret>,
    /// Certificate verification.
    pub tls: TlsMode,
    /// How hard we may push this registry, and how blobs are uploaded.
    pub limits: RegistryLimits,
    /// A Harbor target: create missing projects before pushing into them.
    pub create_projects: bool,
    /// `harbor` when the registry is a Harbor (its REST API is then used
    /// to list it); `registry` for any other.
    pub is_harbor: bool,
    /// Hosts (`host` or `host:port`) besides the registry's own that may
    /// serve its token realm (Docker Hub's `auth.docker.io`). A realm
    /// anywhere else never receives the credentials.
    pub token_realm_hosts: Vec<String>,
}

/// Per-registry limits and upload settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryLimits {
    /// Requests in flight to this registry at once.
    pub max_concurrent_requests: Option<usize>,
    /// Blob bytes per second to or from this registry (a bandwidth cap).
    pub max_bytes_per_second: Option<u64>,
    /// Attempts for a request that can safely be repeated.
    pub request_attempts: u32,
    /// No byte moved for this long: the transfer counts as stalled.
    pub stall_timeout: Duration,
    /// Blobs larger than this are uploaded in chunks, resumably.
    pub chunk_size_threshold: u64,
    /// Size of each chunk (raised to the registry's `OCI-Chunk-Min-Length`).
    pub chunk_size: u64,
    /// Longest `Retry-After` honoured; a registry asking for more waits
    /// this long (a huge value must not freeze every request to it).
    pub max_retry_after: Duration,
    /// Bytes read in all across the pages of one listing (`_catalog`,
    /// `tags/list`, Harbor's project and repository lists).
    pub max_list_bytes: u64,
    /// Entries kept in all across the pages of one listing.
    pub max_list_entries: usize,
}

impl Default for RegistryLimits {
    fn default() -> Self {
        RegistryLimits {
            max_concurrent_requests: None,
            max_bytes_per_second: None,
            request_attempts: 5,
            stall_timeout: Duration::from_secs(60),
            chunk_size_threshold: 64 * 1024 * 1024,
            chunk_size: 16 * 1024 * 1024,
            max_retry_after: Duration::from_secs(600),
            max_list_bytes: 64 * 1024 * 1024,
            max_list_entries: 1_000_000,
        }
    }
}

impl RegistryConfig {
    /// `host[:port]` as it appears in image references.
    pub fn host(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    }

    /// True for `http://` registries (no TLS).
    pub fn is_plain_http(&self) -> bool {
        self.url.scheme() == "http"
    }
}

/// `[[rules]]`: which pushes replicate and where to.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    /// Unique name, used in job records and metrics.
    pub name: String,
    /// Source registry name.
    pub from: String,
    /// Target registry name.
    pub to: String,
    /// Globs over the source project (Harbor namespace).
    pub projects: Vec<String>,
    /// Globs over the repository path inside the project.
    pub repositories: Vec<String>,
    /// Target project; `{project}` stands for the source project. With
    /// `{repository}` it is the whole target path.
    pub target_project: String,
    /// Path components of the repository (inside the project) to drop.
    pub flatten: usize,
    /// Globs a tag must match.
    pub tags: Vec<String>,
    /// Globs that exclude a tag even when `tags` matches.
    pub exclude_tags: Vec<String>,
    /// Overwrite a target tag that points at another digest.
    pub overwrite: bool,
    /// Replicate `DELETE_ARTIFACT` events.
    pub replicate_deletes: bool,
    /// Copy what refers to a replicated manifest (signatures, SBOMs).
    pub referrers: bool,
    /// Only these platforms of an index (`os/arch[/variant]`); all if unset.
    pub platforms: Option<Vec<String>>,
    /// Compare source and target this often and repair the differences.
    pub reconcile_interval: Option<Duration>,
}

impl RuleConfig {
    /// A rule with every optional key at its default, for code and tests.
    pub fn new(name: &str, from: &str, to: &str) -> RuleConfig {
        RuleConfig {
            name: name.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            projects: vec!["**".into()],
            repositories: vec!["**".into()],
            target_project: "{project}".into(),
            flatten: 0,
            tags: vec!["**".into()],
            exclude_tags: vec![],
            overwrite: true,
            replicate_deletes: false,
            referrers: true,
            platforms: None,
            reconcile_interval: None,
        }
    }
}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    store: Option<RawStore>,
    #[serde(default)]
    jobs: RawJobs,
    #[serde(default)]
    registries: BTreeMap<String, RawRegistry>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    level: Option<String>,
    format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    webhook_auth: Option<String>,
    webhook_auth_file: Option<String>,
    api_token: Option<String>,
    api_token_file: Option<String>,
    metrics_listen: Option<String>,
    webhook_rate_limit: Option<u32>,
    max_connections_per_client: Option<usize>,
    tls_cert: Option<String>,
    tls_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    path: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawJobs {
    workers: Option<usize>,
    blob_concurrency: Option<usize>,
    shutdown_grace: Option<String>,
    max_attempts: Option<u32>,
    retry_initial_delay: Option<String>,
    retry_max_delay: Option<String>,
    retention: Option<String>,
    coalesce_window: Option<String>,
    max_queued: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegistry {
    url: String,
    username: Option<String>,
    password: Option<String>,
    password_file: Option<String>,
    tls: Option<RawTls>,
    max_concurrent_requests: Option<usize>,
    max_bytes_per_second: Option<RawSize>,
    request_attempts: Option<u32>,
    stall_timeout: Option<String>,
    chunk_size_threshold: Option<RawSize>,
    chunk_size: Option<RawSize>,
    create_projects: Option<bool>,
    kind: Option<String>,
    token_realm_hosts: Option<Vec<String>>,
    max_retry_after: Option<String>,
    max_list_bytes: Option<RawSize>,
    max_list_entries: Option<usize>,
}

/// A size: a number of bytes, or text like "64MiB".
#[derive(Deserialize)]
#[serde(untagged)]
enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca_file: Option<String>,
    #[serde(default)]
    insecure_skip_verify: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    from: String,
    to: String,
    projects: Option<Vec<String>>,
    repositories: Option<Vec<String>>,
    target_project: Option<String>,
    flatten: Option<usize>,
    tags: Option<Vec<String>>,
    exclude_tags: Option<Vec<String>>,
    #[serde(rename = "override")]
    overwrite: Option<bool>,
    replicate_deletes: Option<bool>,
    referrers: Option<bool>,
    platforms: Option<Vec<String>>,
    reconcile_interval: Option<String>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// The URL of the API of a daemon running with this config file, read
/// without loading the rest (so `harbor-relay jobs` works in a shell that
/// lacks the daemon's secrets). A wildcard listen address becomes loopback.
pub fn api_url(file: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        file: file.to_path_buf(),
        source,
    })?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let listen = value
        .get("server")
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or(DEFAULT_LISTEN);
    let addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Invalid {
        file: file.to_path_buf(),
        key: "server.listen".into(),
        problem: format!("`{listen}` is not an address like 0.0.0.0:8080"),
    })?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}", addr.port()))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates configuration text; `env` looks up `${VAR}`s.
    /// Split from [`Config::load`] so tests need not touch the process
    /// environment.
    pub fn parse(
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::parse(text).map_err(|e| parse_error(file, text, "", &e))?;
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            parse_error(file, text, &key, e.inner())
        })?;
        Loader {
            file,
            env,
            inline: Default::default(),
        }
        .build(raw)
    }
}

/// "line L, column C: KEY: what is wrong", from the parser's error.
fn parse_error(file: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = String::new();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        message.push_str(&format!("line {line}, column {column}: "));
    }
    if !key.is_empty() && key != "." {
        message.push_str(key);
        message.push_str(": ");
    }
    message.push_str(e.message().trim());
    ConfigError::Parse {
        file: file.to_path_buf(),
        message,
    }
}

struct Loader<'a> {
    file: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    inline: std::cell::RefCell<Vec<String>>,
}

impl Loader<'_> {
    fn invalid(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Replaces every `${VAR}` from the environment; a missing variable is
    /// an error naming the key, not a silent empty string.
    fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| self.invalid(key, "unclosed `${` (write `${NAME}`)"))?;
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(self.invalid(key, format!("`${{{name}}}` is not a variable name")));
            }
            let v = (self.env)(name).ok_or_else(|| {
                self.invalid(
                    key,
                    format!("environment variable {name} is not set (used as ${{{name}}})"),
                )
            })?;
            out.push_str(&v);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A secret given inline (`KEY`, usually `${VAR}`) or read from a file
    /// (`KEY_file`, e.g. `${CREDENTIALS_DIRECTORY}/name` under systemd's
    /// `LoadCredential=`), trailing newline removed; never both, never empty.
    fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        file: Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        let file_key = format!("{key}_file");
        let name = key.rsplit('.').next().unwrap_or(key);
        let value = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    key,
                    format!("set either `{name}` or `{name}_file`, not both"),
                ));
            }
            (Some(v), None) => {
                if !v.contains("${") {
                    self.inline.borrow_mut().push(key.to_string());
                }
                let v = self.expand(key, &v)?;
                if v.is_empty() {
                    return Err(self.invalid(key, "is empty; remove the key instead"));
                }
                v
            }
            (None, Some(f)) => {
                let path = self.expand(&file_key, &f)?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| self.invalid(&file_key, format!("cannot read {path}: {e}")))?;
                let v = text.trim_end_matches(['\n', '\r']).to_string();
                if v.is_empty() {
                    return Err(self.invalid(&file_key, format!("{path} is empty")));
                }
                v
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Secret::new(value)))
    }

    fn expand_opt(&self, key: &str, value: Option<String>) -> Result<Option<String>, ConfigError> {
        value.map(|v| self.expand(key, &v)).transpose()
    }

    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        if let Some(level) = &raw.level
            && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level)
        {
            return Err(self.invalid(
                "log.level",
                format!(
                    "`{level}` is not a log filter like `info` or `info,harbor_relay=debug`: {e}"
                ),
            ));
        }
        let json = match raw.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(self.invalid(
                    "log.format",
                    format!("`{other}` is not a format; use \"text\" or \"json\""),
                ));
            }
        };
        Ok(LogConfig {
            level: raw.level,
            json,
        })
    }

    fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let listen_text = self
            .expand_opt("server.listen", raw.server.listen)?
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            self.invalid(
                "server.listen",
                format!("`{listen_text}` is not an address like 0.0.0.0:8080"),
            )
        })?;
        let webhook_auth = self.secret(
            "server.webhook_auth",
            raw.server.webhook_auth,
            raw.server.webhook_auth_file,
        )?;
        let api_token = self.secret(
            "server.api_token",
            raw.server.api_token,
            raw.server.api_token_file,
        )?;
        let metrics_listen = self
            .expand_opt("server.metrics_listen", raw.server.metrics_listen)?
            .map(|m| {
                m.parse::<SocketAddr>().map_err(|_| {
                    self.invalid(
                        "server.metrics_listen",
                        format!("`{m}` is not an address like 127.0.0.1:9090"),
                    )
                })
            })
            .transpose()?;
        if metrics_listen == Some(listen) {
            return Err(self.invalid(
                "server.metrics_listen",
                "is the same as server.listen; remove it to serve metrics on the main listener",
            ));
        }
        let tls = match (raw.server.tls_cert, raw.server.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_file = PathBuf::from(self.expand("server.tls_cert", &cert)?);
                let key_file = PathBuf::from(self.expand("server.tls_key", &key)?);
                let cert_pem = std::fs::read(&cert_file).map_err(|e| {
                    self.invalid(
                        "server.tls_cert",
                        format!("cannot read {}: {e}", cert_file.display()),
                    )
                })?;
                let key_pem = std::fs::read_to_string(&key_file).map_err(|e| {
                    self.invalid(
                        "server.tls_key",
                        format!("cannot read {}: {e}", key_file.display()),
                    )
                })?;
                let tls = ListenerTls {
                    cert_file,
                    key_file,
                    cert_pem,
                    key_pem: Secret::new(key_pem),
                };
                tls.server_config()
                    .map_err(|e| self.invalid("server.tls_cert", e))?;
                Some(tls)
            }
            _ => {
                return Err(self.invalid(
                    "server.tls_cert",
                    "set both tls_cert and tls_key (PEM files), or neither",
                ));
            }
        };
        let log = self.log(raw.log)?;

        let store = raw
            .store
            .ok_or_else(|| self.invalid("store.path", "missing: say where the job store lives"))?;
        let store_path = self.expand("store.path", &store.path)?;
        if store_path.is_empty() {
            return Err(self.invalid("store.path", "is empty"));
        }

        let jobs = self.jobs(raw.jobs)?;

        let mut registries = BTreeMap::new();
        for (name, r) in raw.registries {
            let reg = self.registry(&name, r)?;
            registries.insert(name, reg);
        }

        let max_connections_per_client = raw.server.max_connections_per_client.unwrap_or(128);
        if max_connections_per_client < 1 {
            return Err(self.invalid("server.max_connections_per_client", "must be at least 1"));
        }
        let mut rules: Vec<RuleConfig> = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let rule = self.rule(i, r, &registries)?;
            if rules.iter().any(|o| o.name == rule.name) {
                return Err(self.invalid(
                    format!("rules[{i}].name"),
                    format!(
                        "duplicate rule name '{}'; give each rule its own `name`",
                        rule.name
                    ),
                ));
            }
            rules.push(rule);
        }

        Ok(Config {
            file: self.file.to_path_buf(),
            server: ServerConfig {
                listen,
                webhook_auth,
                api_token,
                metrics_listen,
                webhook_rate_limit: raw.server.webhook_rate_limit.unwrap_or(1000),
                max_connections_per_client,
                tls,
            },
            store: StoreConfig {
                path: PathBuf::from(store_path),
            },
            log,
            inline_secrets: self.inline.take(),
            jobs,
            registries,
            rules,
        })
    }

    fn jobs(&self, raw: RawJobs) -> Result<JobsConfig, ConfigError> {
        let workers = raw.workers.unwrap_or(4);
        if !(1..=256).contains(&workers) {
            return Err(self.invalid("jobs.workers", "must be between 1 and 256"));
        }
        let blob_concurrency = raw.blob_concurrency.unwrap_or(4);
        if !(1..=64).contains(&blob_concurrency) {
            return Err(self.invalid("jobs.blob_concurrency", "must be between 1 and 64"));
        }
        let duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                self.invalid(
                    format!("jobs.{key}"),
                    format!("`{text}` is not a duration like \"30s\", \"10m\" or \"7d\": {e}"),
                )
            }),
        };
        let shutdown_grace = duration(
            "shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(30),
        )?;
        let max_attempts = raw.max_attempts.unwrap_or(8);
        if !(1..=1000).contains(&max_attempts) {
            return Err(self.invalid("jobs.max_attempts", "must be between 1 and 1000"));
        }
        let retry_initial_delay = duration(
            "retry_initial_delay",
            raw.retry_initial_delay,
            Duration::from_secs(10),
        )?;
        let retry_max_delay = duration(
            "retry_max_delay",
            raw.retry_max_delay,
            Duration::from_secs(15 * 60),
        )?;
        if retry_max_delay < retry_initial_delay {
            return Err(self.invalid(
                "jobs.retry_max_delay",
                "is shorter than jobs.retry_initial_delay",
            ));
        }
        let retention = duration(
            "retention",
            raw.retention,
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let coalesce_window = duration(
            "coalesce_window",
            raw.coalesce_window,
            Duration::from_secs(600),
        )?;
        let max_queued = raw.max_queued.unwrap_or(100_000);
        if max_queued < 1 {
            return Err(self.invalid("jobs.max_queued", "must be at least 1"));
        }
        Ok(JobsConfig {
            max_queued,
            workers,
            blob_concurrency,
            shutdown_grace,
            max_attempts,
            retry_initial_delay,
            retry_max_delay,
            retention,
            coalesce_window,
        })
    }

    fn registry(&self, name: &str, r: RawRegistry) -> Result<RegistryConfig, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
                format!("registries.{name}"),
                "a registry name may hold only letters, digits, '-' and '_'",
            ));
        }
        let url_text = self.expand(&key("url"), &r.url)?;
        let url = url::Url::parse(&url_text)
            .map_err(|e| self.invalid(key("url"), format!("`{url_text}` is not a URL: {e}")))?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.invalid(
                key("url"),
                format!("`{url_text}`: scheme must be https:// or http://"),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.invalid(key("url"), format!("`{url_text}` has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(
                key("url"),
                "must not carry credentials; use `username` and `password`/`password_file`",
            ));
        }
        if (url.path() != "/" && !url.path().is_empty()) || url.query().is_some() {
            return Err(self.invalid(
                key("url"),
                format!(
                    "`{url_text}` has a path or query; give only scheme, host and port (the registry API lives at /v2/)"
                ),
            ));
        }

        let username = self.expand_opt(&key("username"), r.username)?;
        let password = self.secret(&key("password"), r.password, r.password_file)?;
        if password.is_some() && username.as_deref().is_none_or(str::is_empty) {
            return Err(self.invalid(key("username"), "a password is set but no username"));
        }

        let tls = match r.tls {
            None => TlsMode::System,
            Some(t) => {
                if url.scheme() == "http" {
                    return Err(self.invalid(
                        key("tls"),
                        "the registry URL is http://, so TLS settings would be ignored; remove `tls` or use https://",
                    ));
                }
                match (t.ca_file, t.insecure_skip_verify) {
                    (Some(_), true) => {
                        return Err(self.invalid(
                            key("tls"),
                            "set either `ca_file` (recommended) or `insecure_skip_verify`, not both",
                        ));
                    }
                    (Some(f), false) => {
                        let path = self.expand(&key("tls.ca_file"), &f)?;
                        let pem = std::fs::read(&path).map_err(|e| {
                            self.invalid(key("tls.ca_file"), format!("cannot read {path}: {e}"))
                        })?;
                        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                            self.invalid(
                                key("tls.ca_file"),
                                format!("{path} is not a PEM certificate: {e}"),
                            )
                        })?;
                        if certs.is_empty() {
                            return Err(self.invalid(
                                key("tls.ca_file"),
                                format!("{path} holds no PEM certificate"),
                            ));
                        }
                        TlsMode::Pinned {
                            file: PathBuf::from(path),
                            pem,
                        }
                    }
                    (None, true) => TlsMode::InsecureSkipVerify,
                    (None, false) => TlsMode::System,
                }
            }
        };

        let size = |k: &str, v: Option<RawSize>| -> Result<Option<u64>, ConfigError> {
            match v {
                None => Ok(None),
                Some(RawSize::Bytes(n)) => Ok(Some(n)),
                Some(RawSize::Text(t)) => {
                    let t = self.expand(&key(k), &t)?;
                    t.parse::<bytesize::ByteSize>()
                        .map(|b| Some(b.as_u64()))
                        .map_err(|e| {
                            self.invalid(key(k), format!("`{t}` is not a size like \"64MiB\": {e}"))
                        })
                }
            }
        };
        let defaults = RegistryLimits::default();
        let limits = RegistryLimits {
            max_concurrent_requests: match r.max_concurrent_requests {
                Some(0) => {
                    return Err(self.invalid(key("max_concurrent_requests"), "must be at least 1"));
                }
                v => v,
            },
            max_bytes_per_second: match size("max_bytes_per_second", r.max_bytes_per_second)? {
                Some(n) if n < 1024 => {
                    return Err(self.invalid(
                        key("max_bytes_per_second"),
                        "must be at least 1KiB (omit it for no limit)",
                    ));
                }
                v => v,
            },
            request_attempts: match r.request_attempts {
                Some(0) => return Err(self.invalid(key("request_attempts"), "must be at least 1")),
                Some(n) => n,
                None => defaults.request_attempts,
            },
            stall_timeout: match r.stall_timeout {
                None => defaults.stall_timeout,
                Some(t) => humantime::parse_duration(&t).map_err(|e| {
                    self.invalid(
                        key("stall_timeout"),
                        format!("`{t}` is not a duration: {e}"),
                    )
                })?,
            },
            chunk_size_threshold: size("chunk_size_threshold", r.chunk_size_threshold)?
                .unwrap_or(defaults.chunk_size_threshold),
            chunk_size: match size("chunk_size", r.chunk_size)? {
                Some(n) if n < 64 * 1024 => {
                    return Err(self.invalid(key("chunk_size"), "must be at least 64KiB"));
                }
                Some(n) => n,
                None => defaults.chunk_size,
            },
            max_retry_after: match r.max_retry_after {
                None => defaults.max_retry_after,
                Some(t) => humantime::parse_duration(&t).map_err(|e| {
                    self.invalid(
                        key("max_retry_after"),
                        format!("`{t}` is not a duration: {e}"),
                    )
                })?,
            },
            max_list_bytes: match size("max_list_bytes", r.max_list_bytes)? {
                Some(n) if n < 1024 * 1024 => {
                    return Err(self.invalid(key("max_list_bytes"), "must be at least 1MiB"));
                }
                Some(n) => n,
                None => defaults.max_list_bytes,
            },
            max_list_entries: match r.max_list_entries {
                Some(n) if n < 1000 => {
                    return Err(self.invalid(key("max_list_entries"), "must be at least 1000"));
                }
                Some(n) => n,
                None => defaults.max_list_entries,
            },
        };
        let token_realm_hosts = r.token_realm_hosts.unwrap_or_default();
        for h in &token_realm_hosts {
            let valid = !h.is_empty()
                && !h.contains('/')
                && url::Url::parse(&format!("https://{h}/")).is_ok_and(|u| {
                    u.host_str().is_some() && u.path() == "/" && u.username().is_empty()
                });
            if !valid {
                return Err(self.invalid(
                    key("token_realm_hosts"),
                    format!("`{h}` is not a host or host:port (like \"auth.example.com\")"),
                ));
            }
        }
        Ok(RegistryConfig {
            name: name.to_string(),
            url,
            username,
            password,
            tls,
            limits,
            create_projects: r.create_projects.unwrap_or(false),
            token_realm_hosts,
            is_harbor: match r.kind.as_deref() {
                None | Some("registry") => false,
                Some("harbor") => true,
                Some(other) => {
                    return Err(self.invalid(
                        key("kind"),
                        format!("`{other}`: use \"harbor\" or \"registry\""),
                    ));
                }
            },
        })
    }

    fn rule(
        &self,
        i: usize,
        r: RawRule,
        registries: &BTreeMap<String, RegistryConfig>,
    ) -> Result<RuleConfig, ConfigError> {
        let key = |k: &str| format!("rules[{i}].{k}");
        for (k, v) in [("from", &r.from), ("to", &r.to)] {
            if !registries.contains_key(v) {
                let known: Vec<&str> = registries.keys().map(String::as_str).collect();
                return Err(self.invalid(
                    key(k),
                    format!(
                        "unknown registry '{v}' (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        let name = match r.name {
            Some(n) => self.expand(&key("name"), &n)?,
            None => format!("{}-to-{}", r.from, r.to),
        };
        if name.is_empty() {
            return Err(self.invalid(key("name"), "is empty"));
        }
        let list = |k: &str,
                    v: Option<Vec<String>>,
                    default: &[&str]|
         -> Result<Vec<String>, ConfigError> {
            let v = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            let v = v
                .iter()
                .map(|p| self.expand(&key(k), p))
                .collect::<Result<Vec<_>, _>>()?;
            for p in &v {
                globset::Glob::new(p)
                    .map_err(|e| self.invalid(key(k), format!("`{p}` is not a glob: {e}")))?;
            }
            Ok(v)
        };
        let projects = list("projects", r.projects, &["**"])?;
        let tags = list("tags", r.tags, &["**"])?;
        let exclude_tags = list("exclude_tags", r.exclude_tags, &[])?;
        let repositories = list("repositories", r.repositories, &["**"])?;
        let target_project = self
            .expand_opt(&key("target_project"), r.target_project)?
            .unwrap_or_else(|| "{project}".to_string());
        let whole_path = target_project.contains("{repository}");
        let probe = target_project
            .replace("{project}", "project")
            .replace("{repository}", "repo");
        if probe.contains('{') || probe.contains('}') {
            return Err(self.invalid(
                key("target_project"),
                format!("`{target_project}`: the placeholders are {{project}} and {{repository}}"),
            ));
        }
        if !crate::reference::is_valid_repository(&probe) || (probe.contains('/') && !whole_path) {
            return Err(self.invalid(
                key("target_project"),
                format!(
                    "`{target_project}` is not a valid project name (lowercase letters, digits, '.', '_', '-')"
                ),
            ));
        }
        Ok(RuleConfig {
            name,
            from: r.from,
            to: r.to,
            projects,
            repositories,
            target_project,
            flatten: r.flatten.unwrap_or(0),
            tags,
            exclude_tags,
            overwrite: r.overwrite.unwrap_or(true),
            replicate_deletes: r.replicate_deletes.unwrap_or(false),
            referrers: r.referrers.unwrap_or(true),
            platforms: match r.platforms {
                None => None,
                Some(list) => {
                    for p in &list {
                        let parts: Vec<&str> = p.split('/').collect();
                        if !(2..=3).contains(&parts.len()) || parts.iter().any(|x| x.is_empty()) {
                            return Err(self.invalid(
                                key("platforms"),
                                format!("`{p}` is not os/architecture[/variant], e.g. linux/amd64"),
                            ));
                        }
                    }
                    if list.is_empty() {
                        return Err(self.invalid(
                            key("platforms"),
                            "is empty; remove it to copy every platform",
                        ));
                    }
                    Some(list)
                }
            },
            reconcile_interval: match r.reconcile_interval {
                None => None,
                Some(t) => {
                    let d = humantime::parse_duration(&t).map_err(|e| {
                        self.invalid(
                            key("reconcile_interval"),
                            format!("`{t}` is not a duration like \"15m\": {e}"),
                        )
                    })?;
                    if d < Duration::from_secs(1) {
                        return Err(self.invalid(key("reconcile_interval"), "must be at least 1s"));
                    }
                    Some(d)
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/relay.toml"), text, &|name| match name {
            "PW" => Some("s3cret".to_string()),
            "HOOK" => Some("Bearer hook".to_string()),
            _ => None,
        })
    }

    const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:9000"
        webhook_auth = "${HOOK}"
        [store]
        path = "/var/lib/relay"
        [registries.external]
        url = "http://127.0.0.1:5000"
        [registries.integrated]
        url = "https://harbor.local:8443"
        username = "admin"
        password = "${PW}"
        tls = { insecure_skip_verify = true }
        [[rules]]
        from = "external"
        to = "integrated"
        projects = ["library", "team-*"]
    "#;

    #[test]
    fn parses_a_good_file_with_defaults() {
        let c = parse(GOOD).expect("valid config");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(
            c.server.webhook_auth.as_ref().map(Secret::expose),
            Some("Bearer hook")
        );
        let integrated = &c.registries["integrated"];
        assert_eq!(integrated.host(), "harbor.local:8443");
        assert_eq!(
            integrated.password.as_ref().map(Secret::expose),
            Some("s3cret")
        );
        assert_eq!(integrated.tls, TlsMode::InsecureSkipVerify);
        assert!(c.registries["external"].is_plain_http());
        assert_eq!(integrated.limits, RegistryLimits::default());
        let rule = &c.rules[0];
        assert_eq!(rule.name, "external-to-integrated");
        assert_eq!(rule.target_project, "{project}");
        assert_eq!(rule.tags, vec!["**"]);
        assert!(rule.exclude_tags.is_empty());
        assert_eq!(c.jobs.workers, 4);
        assert_eq!(c.jobs.blob_concurrency, 4);
        assert_eq!(c.jobs.max_attempts, 8);
        assert_eq!(c.jobs.retention, Duration::from_secs(7 * 24 * 3600));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let c = parse(GOOD).expect("valid config");
        let dump = format!("{c:?}");
        assert!(!dump.contains("s3cret"), "{dump}");
        assert!(!dump.contains("Bearer hook"), "{dump}");
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("should be refused").to_string()
    }

    #[test]
    fn unknown_key_is_refused_with_file_and_key() {
        let e = error_of(&GOOD.replace("listen =", "lisen ="));
        assert!(
            e.starts_with("config /etc/relay.toml: line 3, column 9: "),
            "{e}"
        );
        assert!(e.contains("unknown field `lisen`"), "{e}");
        let e = error_of(&GOOD.replace("username = \"admin\"", "username = 7"));
        assert!(
            e.contains("registries.integrated.username: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn missing_env_var_names_key_and_variable() {
        let e = error_of(&GOOD.replace("${PW}", "${NOPE}"));
        assert!(e.contains("registries.integrated.password"), "{e}");
        assert!(e.contains("NOPE is not set"), "{e}");
    }

    #[test]
    fn bad_url_is_refused() {
        let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "ftp://x"));
        assert!(e.contains("registries.external.url"), "{e}");
        let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "not a url"));
        assert!(e.contains("registries.external.url"), "{e}");
        let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "http://h/v2/"));
        assert!(e.contains("path"), "{e}");
    }

    #[test]
    fn rule_with_unknown_registry_is_refused() {
        let e = error_of(&GOOD.replace("to = \"integrated\"", "to = \"nowhere\""));
        assert!(e.contains("rules[0].to"), "{e}");
        assert!(e.contains("unknown registry 'nowhere'"), "{e}");
    }

    #[test]
    fn unreadable_ca_file_is_refused() {
        let e = error_of(&GOOD.replace(
            "insecure_skip_verify = true",
            "ca_file = \"/nonexistent/ca.pem\"",
        ));
        assert!(e.contains("registries.integrated.tls.ca_file"), "{e}");
        assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn ca_file_that_is_not_pem_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("ca.pem");
        std::fs::write(&f, "hello").expect("write");
        let e = error_of(&GOOD.replace(
            "insecure_skip_verify = true",
            &format!("ca_file = \"{}\"", f.display()),
        ));
        assert!(e.contains("tls.ca_file"), "{e}");
    }

    #[test]
    fn both_tls_modes_are_refused() {
        let e = error_of(&GOOD.replace(
            "insecure_skip_verify = true",
            "insecure_skip_verify = true, ca_file = \"/x\"",
        ));
        assert!(e.contains("registries.integrated.tls"), "{e}");
    }

    #[test]
    fn secrets_come_from_systemd_credentials() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("webhook-auth"), "Bearer from-cred\n").expect("write");
        std::fs::write(dir.path().join("pw"), "pw-from-cred").expect("write");
        let text = GOOD
            .replace(
                "webhook_auth = \"${HOOK}\"",
                "webhook_auth_file = \"${CREDENTIALS_DIRECTORY}/webhook-auth\"",
            )
            .replace(
                "password = \"${PW}\"",
                "password_file = \"${CREDENTIALS_DIRECTORY}/pw\"",
            );
        let creds = dir.path().display().to_string();
        let c = Config::parse(Path::new("/etc/relay.toml"), &text, &|name| {
            (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone())
        })
        .expect("valid");
        assert_eq!(
            c.server.webhook_auth.as_ref().map(Secret::expose),
            Some("Bearer from-cred")
        );
        assert_eq!(
            c.registries["integrated"]
                .password
                .as_ref()
                .map(Secret::expose),
            Some("pw-from-cred")
        );
        // Outside systemd the variable is missing: said plainly.
        let e = parse(&text).expect_err("no CREDENTIALS_DIRECTORY");
        assert!(
            e.to_string().contains(
                "server.webhook_auth_file: environment variable CREDENTIALS_DIRECTORY is not set"
            ),
            "{e}"
        );
        let both = GOOD.replace(
            "webhook_auth = \"${HOOK}\"",
            "webhook_auth = \"x\"\nwebhook_auth_file = \"/x\"",
        );
        let e = parse(&both).expect_err("both");
        assert!(e.to_string().contains("not both"), "{e}");
    }

    #[test]
    fn log_level_and_format_are_checked() {
        let c = parse(&format!(
            "{GOOD}\n[log]\nlevel = \"info,harbor_relay=debug\"\nformat = \"json\"\n"
        ))
        .expect("valid");
        assert!(c.log.json);
        assert_eq!(c.log.level.as_deref(), Some("info,harbor_relay=debug"));
        let e = parse(&format!("{GOOD}\n[log]\nformat = \"xml\"\n")).expect_err("bad format");
        assert!(e.to_string().contains("log.format"), "{e}");
        let e = parse(&format!("{GOOD}\n[log]\nlevel = \"info,=[\"\n")).expect_err("bad level");
        assert!(e.to_string().contains("log.level"), "{e}");
    }

    #[test]
    fn password_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("pw");
        std::fs::write(&f, "from-file\n").expect("write");
        let c = parse(&GOOD.replace(
            "password = \"${PW}\"",
            &format!("password_file = \"{}\"", f.display()),
        ))
        .expect("valid");
        assert_eq!(
            c.registries["integrated"]
                .password
                .as_ref()
                .map(Secret::expose),
            Some("from-file")
        );
    }

    #[test]
    fn duplicate_default_rule_names_are_refused() {
        let text = format!("{GOOD}\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n");
        let e = error_of(&text);
        assert!(e.contains("rules[1].name"), "{e}");
    }

    #[test]
    fn missing_store_is_refused() {
        let e = error_of(&GOOD.replace("[store]\n        path = \"/var/lib/relay\"", ""));
        assert!(e.contains("store.path"), "{e}");
    }

    #[test]
    fn registry_limits_take_sizes_and_durations() {
        let c = parse(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            "tls = { insecure_skip_verify = true }\nmax_bytes_per_second = \"10MiB\"\nchunk_size = 1048576\nchunk_size_threshold = \"1 GiB\"\nstall_timeout = \"2m\"\nmax_concurrent_requests = 8",
        ))
        .expect("valid");
        let l = &c.registries["integrated"].limits;
        assert_eq!(l.max_bytes_per_second, Some(10 * 1024 * 1024));
        assert_eq!(l.chunk_size, 1024 * 1024);
        assert_eq!(l.chunk_size_threshold, 1024 * 1024 * 1024);
        assert_eq!(l.stall_timeout, Duration::from_secs(120));
        assert_eq!(l.max_concurrent_requests, Some(8));
        let e = error_of(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            "chunk_size = \"lots\"",
        ));
        assert!(e.contains("registries.integrated.chunk_size"), "{e}");
    }

    #[test]
    fn trust_limits_have_defaults_and_are_checked() {
        let c = parse(GOOD).expect("valid");
        let r = &c.registries["integrated"];
        assert!(r.token_realm_hosts.is_empty());
        assert_eq!(r.limits.max_retry_after, Duration::from_secs(600));
        assert_eq!(r.limits.max_list_bytes, 64 * 1024 * 1024);
        assert_eq!(c.jobs.max_queued, 100_000);
        assert_eq!(c.server.max_connections_per_client, 128);
        let c = parse(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            "tls = { insecure_skip_verify = true }\ntoken_realm_hosts = [\"auth.docker.io\", \"10.0.0.1:5001\"]\nmax_retry_after = \"30s\"\nmax_list_bytes = \"8MiB\"\nmax_list_entries = 5000",
        ))
        .expect("valid");
        let r = &c.registries["integrated"];
        assert_eq!(r.token_realm_hosts, ["auth.docker.io", "10.0.0.1:5001"]);
        assert_eq!(r.limits.max_retry_after, Duration::from_secs(30));
        assert_eq!(r.limits.max_list_bytes, 8 * 1024 * 1024);
        assert_eq!(r.limits.max_list_entries, 5000);
        for bad in ["https://auth.docker.io", "auth.docker.io/token", ""] {
            let e = error_of(&GOOD.replace(
                "tls = { insecure_skip_verify = true }",
                &format!("token_realm_hosts = [\"{bad}\"]"),
            ));
            assert!(
                e.contains("registries.integrated.token_realm_hosts") && e.contains("host:port"),
                "{e}"
            );
        }
    }

    #[test]
    fn the_example_config_parses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pw = dir.path().join("external.password");
        std::fs::write(&pw, "robot-secret\n").expect("write");
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
        std::fs::write(&ca, cert.cert.pem()).expect("write");
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("config/harbor-relay.example.toml"),
        )
        .expect("example config")
        .replace(
            "/etc/harbor-relay/external.password",
            &pw.display().to_string(),
        )
        .replace(
            "/etc/harbor-relay/integrated-ca.pem",
            &ca.display().to_string(),
        );
        let env = |name: &str| match name {
            "HARBOR_WEBHOOK_SECRET" | "INTEGRATED_PASSWORD" => Some(format!("value-of-{name}")),
            _ => None,
        };
        let c = Config::parse(Path::new("example.toml"), &text, &env).expect("example parses");
        assert_eq!(c.rules[0].name, "tanzu");
        assert_eq!(c.rules[0].exclude_tags, vec!["*-rc*"]);
        assert!(matches!(
            c.registries["integrated"].tls,
            TlsMode::Pinned { .. }
        ));
        assert_eq!(
            c.registries["external"]
                .password
                .as_ref()
                .map(Secret::expose),
            Some("robot-secret")
        );
    }

    #[test]
    fn bad_target_project_is_refused() {
        let text = GOOD.replace(
            "projects = [\"library\", \"team-*\"]",
            "target_project = \"{repo}\"",
        );
        let e = error_of(&text);
        assert!(e.contains("rules[0].target_project"), "{e}");
    }
}
