//! One OCI Distribution client per configured registry.
//!
//! Written directly on reqwest rather than over `oci-client`, because a
//! replicator that an SRE can trust on a bad day needs what that crate does
//! not expose: the response headers (`Retry-After`, `Content-Type`,
//! `Location`), a token with two scopes for a cross-repository mount,
//! per-host pacing after a `429`, retries of idempotent requests, and the
//! request itself for errors that say what to do. The Distribution API is
//! small; all of it used here is in this module:
//!
//! - manifests: `GET`/`HEAD`/`PUT /v2/<name>/manifests/<ref>`, bytes kept
//!   exactly, media type from `Content-Type`;
//! - blobs: `HEAD`, streamed `GET` (hashed on the way by [`verify`]),
//!   upload as `POST` then one streamed `PUT` with a known length, and
//!   `POST …?mount=&from=`;
//! - auth ([`auth`]): the `401` challenge, Basic, or the Docker token flow;
//! - `transport`: TLS per registry (system roots, one pinned CA, or none),
//!   connect and stall timeouts, retries on connect errors, 408, 429 and
//!   5xx with backoff, and `Retry-After` honoured for every request to the
//!   host while it lasts;
//! - `ranged`: a big blob read over several `Range` GETs at once, put
//!   back in order;
//! - `limit`: how many requests the registry gets at once, adapted to
//!   its answers (AIMD with a latency signal).

pub mod auth;
mod authn;
mod blobs;
mod classify;
mod error;
mod grant;
mod limit;
mod listing;
mod manifests;
mod pacer;
mod ranged;
mod transport;
mod trust;
mod uploads;
pub mod verify;

use std::sync::Arc;

use bytes::Bytes;
use reqwest::{Method, StatusCode};

use crate::config::RegistryConfig;

pub use blobs::{SourceFault, Tap};
pub use error::RegistryError;
pub use ranged::PIECE as RANGE_PIECE;
pub use transport::Stats;
pub use trust::cut;
pub use uploads::MountOrUpload;
pub use verify::{ByteStream, Mismatch};

/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("harbor-relay/", env!("CARGO_PKG_VERSION"));

/// A client for one configured registry. Cheap to clone.
#[derive(Clone)]
pub struct Registry {
    t: Arc<transport::Transport>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.t.name)
            .field("url", &self.t.base)
            .finish_non_exhaustive()
    }
}

fn pull(repository: &str) -> Vec<String> {
    vec![auth::scope(repository, "pull")]
}

fn push(repository: &str) -> Vec<String> {
    vec![auth::scope(repository, "pull,push")]
}

/// The vulnerability report types asked of Harbor, newest first (the
/// swagger's `acceptVulnerabilities` default).
pub const ACCEPT_VULNERABILITIES: &str = "application/vnd.security.vulnerability.report; version=1.1, application/vnd.scanner.adapter.vuln.report.harbor+json; version=1.0";

impl Registry {
    /// Builds the client for a configured registry. A bad TLS setting is an
    /// error here, never a silently different client.
    pub fn new(cfg: &RegistryConfig) -> Result<Registry, RegistryError> {
        let mut t = transport::Transport::new(cfg)?;
        Ok(Registry {
            t: Arc::new_cyclic(|me| {
                t.me = me.clone();
                t
            }),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.t.name
    }

    /// The configured user name, if any (never the password).
    pub fn username(&self) -> Option<&str> {
        self.t.username.as_deref()
    }

    /// True if projects are created on this (Harbor) registry before the
    /// first push into them.
    pub fn creates_projects(&self) -> bool {
        self.t.create_projects
    }

    /// `GET /v2/`: the registry answers, its certificate is trusted under
    /// the configured mode, and it accepts our credentials. Says how we
    /// authenticated: `anonymous`, `basic` or `token`.
    pub async fn ping(&self) -> Result<&'static str, RegistryError> {
        let what = "checking the registry API (GET /v2/)";
        let url = format!("{}/v2/", self.t.base);
        let resp = self.t.send(what, &[], true, &|c| c.get(&url)).await?;
        if resp.status() != StatusCode::OK {
            return Err(self.t.status_error(resp, what).await);
        }
        Ok(self.t.auth_kind())
    }

    /// True if the config says this registry is a Harbor (`kind = "harbor"`).
    pub fn is_harbor(&self) -> bool {
        self.t.is_harbor
    }

    /// Sends a request to the registry's REST API (Harbor's `/api/v2.0/…`,
    /// `path` starting with `/`), authenticated with Basic credentials.
    pub async fn api(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}{path}", self.t.base);
        self.t
            .send_api(what, &|c| {
                // Harbor answers scan overviews in the first report type
                // of this list it knows, else its 1.0 type only
                // (parseScanReportMimeTypes, src/server/v2.0/handler/util.go).
                let rb = c
                    .request(method.clone(), &url)
                    .header("X-Is-Resource-Name", "true")
                    .header("X-Accept-Vulnerabilities", ACCEPT_VULNERABILITIES);
                match &body {
                    Some(b) => rb.json(b),
                    None => rb,
                }
            })
            .await
    }

    /// Reads an answer's body, at most `limit` bytes (more is an error that
    /// says so; a registry cannot fill memory with one answer).
    pub async fn read_body(
        &self,
        resp: reqwest::Response,
        limit: u64,
        what: &str,
    ) -> Result<Bytes, RegistryError> {
        self.t
            .read_limited(resp, usize::try_from(limit).unwrap_or(usize::MAX), what)
            .await
    }

    /// `max_list_bytes` and `max_list_entries`: the most one paged listing
    /// of this registry may read and keep.
    pub fn list_limits(&self) -> (u64, usize) {
        (self.t.limits.max_list_bytes, self.t.limits.max_list_entries)
    }

    /// Turns an error answer into an error that says what to do.
    pub async fn error_from(&self, resp: reqwest::Response, what: &str) -> RegistryError {
        self.t.status_error(resp, what).await
    }

    /// Requests, retries, 429s and bytes moved, for metrics.
    pub fn stats(&self) -> &Stats {
        &self.t.stats
    }

    /// How many requests this registry gets at once now: the adaptive
    /// limit, which also paces how many jobs run (`jobs::workers`).
    pub fn concurrency(&self) -> usize {
        self.t.limiter.limit()
    }

    pub(super) fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.t.base)
    }

    /// The largest blob read from or written to this registry
    /// (`max_blob_size`).
    pub fn max_blob_size(&self) -> u64 {
        self.t.limits.max_blob_size
    }

    /// The chunked-upload settings for uploads to this registry:
    /// (threshold, chunk size).
    pub fn chunking(&self) -> (u64, u64) {
        (self.t.limits.chunk_size_threshold, self.t.limits.chunk_size)
    }
}
