//! The validated configuration: what the rest of the daemon reads.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::Secret;

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
    /// The files secrets were read from (`*_file`, `server.tls_key`), by
    /// key: worth a warning when others may read or change them.
    pub secret_files: Vec<(String, std::path::PathBuf)>,
}

/// The part of a `target_project` template that names the target project:
/// its first path component (`{project}-dr` of `{project}-dr/{repository}`).
pub fn project_part(template: &str) -> &str {
    template.split('/').next().unwrap_or(template)
}

/// What is wrong with the mode of a file that holds a secret, if anything:
/// readable by its group or by others, or writable by others.
pub fn loose_mode(mode: u32) -> Option<&'static str> {
    if mode & 0o002 != 0 {
        Some("writable by other users")
    } else if mode & 0o004 != 0 {
        Some("readable by every user")
    } else if mode & 0o040 != 0 {
        Some("readable by its group")
    } else {
        None
    }
}

impl Config {
    /// Each secret file whose mode is [`loose_mode`], with why: key, path,
    /// mode, problem.
    pub fn loose_secret_files(&self) -> Vec<(String, std::path::PathBuf, u32, &'static str)> {
        use std::os::unix::fs::PermissionsExt;
        self.secret_files
            .iter()
            .filter_map(|(key, path)| {
                let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
                loose_mode(mode).map(|why| (key.clone(), path.clone(), mode, why))
            })
            .collect()
    }
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
    /// Connections open at once in all; when every one is taken, the
    /// idlest that never authenticated is closed to make room.
    pub max_connections: usize,
    /// IPv6 clients are counted (connections, webhook rate) by this many
    /// leading bits of their address: 64, one subnet, by default.
    pub ipv6_client_prefix: u8,
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

/// `[store]`: the embedded database (`path`) or a shared PostgreSQL
/// (`url`), never both.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Directory of the embedded database (empty with `url`).
    pub path: PathBuf,
    /// The shared PostgreSQL store, when `url` is set.
    pub postgres: Option<PostgresStore>,
}

/// `[store] url = "postgres://…"`: several relays share one queue.
#[derive(Clone)]
pub struct PostgresStore {
    /// The connection settings, the password included.
    pub connect: tokio_postgres::Config,
    /// How long a claimed job stays this relay's without renewal
    /// (`store.lease`, 30 s).
    pub lease: std::time::Duration,
    /// `host:port/dbname`, for messages (no credentials).
    pub shown: String,
    /// PEM of the CA that signed the database's certificate
    /// (`store.ca_file`); without it, the system's trust store. Used when
    /// the URL's `sslmode` is `require` (the default) or `prefer`.
    pub ca_pem: Option<Vec<u8>>,
}

impl PostgresStore {
    /// What to warn about at start, if the connection may run without TLS
    /// (`sslmode=disable` or `prefer`).
    pub fn clear_text_warning(&self) -> Option<String> {
        use tokio_postgres::config::SslMode;
        let mode = match self.connect.get_ssl_mode() {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            _ => return None,
        };
        Some(format!(
            "store.url has sslmode={mode}: the connection to the database {} may run without TLS, where anyone on the path reads and changes the job queue (harbor-relay still never sends the password in cleartext or as MD5 there); use sslmode=require (the default) with store.ca_file",
            self.shown
        ))
    }
}

impl std::fmt::Debug for PostgresStore {
    /// Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("at", &self.shown)
            .field("lease", &self.lease)
            .finish()
    }
}

/// `[jobs]`: how many jobs and blobs move at once, and how long a stopping
/// daemon waits for running jobs.
#[derive(Debug, Clone)]
pub struct JobsConfig {
    /// Jobs run at the same time.
    pub workers: usize,
    /// Blobs of one image copied at the same time (an index's platform
    /// images are copied together, each with as many).
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
    /// A remark about the password as read (e.g. its file ends in
    /// whitespace), told when the registry refuses the login.
    pub password_note: Option<String>,
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
    /// Blobs read from this registry that are bigger than this are read
    /// over several `Range` requests at once.
    pub range_threshold: u64,
    /// The most range requests one blob read from this registry has at
    /// once (1: one `GET` per blob); how many are used is found per blob.
    pub source_streams: usize,
    /// Longest `Retry-After` honoured; a registry asking for more waits
    /// this long (a huge value must not freeze every request to it).
    pub max_retry_after: Duration,
    /// Bytes read in all across the pages of one listing (`_catalog`,
    /// `tags/list`, Harbor's project and repository lists).
    pub max_list_bytes: u64,
    /// Entries kept in all across the pages of one listing.
    pub max_list_entries: usize,
    /// The largest blob read from or written to this registry: a copy
    /// whose manifest declares a bigger one fails before any byte moves,
    /// so a hostile source cannot fill the target's disk with a "1 TiB"
    /// layer of zeros.
    pub max_blob_size: u64,
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
            range_threshold: 64 * 1024 * 1024,
            source_streams: 8,
            max_retry_after: Duration::from_secs(600),
            max_list_bytes: 64 * 1024 * 1024,
            max_list_entries: 1_000_000,
            max_blob_size: 20 * 1024 * 1024 * 1024,
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
    /// Target registry names: one, or several for a fan-out (one read of
    /// each blob from the source streamed to every target that lacks it).
    /// Never empty, no name twice.
    pub to: Vec<String>,
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
    /// Harbor artifact types to copy (`image`, `chart`, `cnab`, `wasm`,
    /// `sbom`, …, or `*`); referrers follow their subject whatever their
    /// type.
    pub artifact_types: Vec<String>,
    /// Harbor labels an artifact must all carry to be copied (empty: no
    /// label filter); needs a `kind = "harbor"` source.
    pub labels: Vec<String>,
    /// Reconcile removes target tags the rule covers that the source no
    /// longer has (Harbor sends no event when a tag is removed); with
    /// `replicate_deletes`, also a manifest left without tags there that
    /// the source no longer holds.
    pub prune: bool,
    /// The largest blob this rule copies (below the registries' own
    /// `max_blob_size`); `None`: theirs alone.
    pub max_blob_size: Option<u64>,
    /// The rule's gates (`require_signature`, `max_severity`), key files
    /// read; `None`: every artifact crosses.
    pub gates: Option<crate::gate::Gates>,
}

impl RuleConfig {
    /// A rule with every optional key at its default, for code and tests.
    pub fn new(name: &str, from: &str, to: &str) -> RuleConfig {
        RuleConfig {
            name: name.to_string(),
            from: from.to_string(),
            to: vec![to.to_string()],
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
            artifact_types: vec!["*".into()],
            labels: vec![],
            max_blob_size: None,
            prune: false,
            gates: None,
        }
    }
}
