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
//! - [`transport`]: TLS per registry (system roots, one pinned CA, or none),
//!   connect and stall timeouts, retries on connect errors, 408, 429 and
//!   5xx with backoff, and `Retry-After` honoured for every request to the
//!   host while it lasts.

pub mod auth;
mod transport;
pub mod verify;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE};
use reqwest::{Method, StatusCode};

use crate::config::RegistryConfig;
use crate::manifest::{self, Manifest};
use crate::reference::Reference;

pub use transport::{Stats, cut};
pub use verify::{ByteStream, Mismatch};

/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("harbor-relay/", env!("CARGO_PKG_VERSION"));

/// A registry request that failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The TLS handshake failed.
    #[error("registry '{registry}': certificate not trusted: {hint} ({detail})")]
    Tls {
        /// Registry name from the config.
        registry: String,
        /// How to fix it.
        hint: String,
        /// The TLS library's reason.
        detail: String,
    },
    /// No connection at all, or it broke or stalled.
    #[error("registry '{registry}': cannot connect to {url}: {detail}")]
    Connect {
        /// Registry name.
        registry: String,
        /// The registry URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The registry refused our credentials or lacks a permission.
    #[error(
        "registry '{registry}': access denied for {what}: check its username/password and that the account may pull/push there ({detail})"
    )]
    Unauthorized {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// The registry's words.
        detail: String,
    },
    /// The manifest, blob or repository does not exist.
    #[error("registry '{registry}': {what} not found")]
    NotFound {
        /// Registry name.
        registry: String,
        /// What was asked for.
        what: String,
    },
    /// The content did not hash to its digest.
    #[error("registry '{registry}': {what}: digest mismatch: {detail}")]
    DigestMismatch {
        /// Registry name.
        registry: String,
        /// What was read.
        what: String,
        /// Expected and actual digests.
        detail: String,
    },
    /// A manifest we cannot copy.
    #[error("registry '{registry}': {source}")]
    Manifest {
        /// Registry name.
        registry: String,
        /// The problem.
        source: manifest::ManifestError,
    },
    /// The registry answered with an error status.
    #[error("registry '{registry}': {what}: {detail}")]
    Status {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// The status code.
        status: u16,
        /// The registry's words, and a hint where one helps.
        detail: String,
    },
    /// The registry asked for something a careful client refuses: its
    /// credentials sent to another host, or over plain HTTP, or a name or
    /// digest that is not one. Permanent: it needs a config change or a
    /// fixed registry.
    #[error("registry '{registry}': refused to trust its answer: {detail}")]
    Untrusted {
        /// Registry name.
        registry: String,
        /// What it asked for and why it is refused.
        detail: String,
    },
    /// Any other failure (protocol errors, bad answers).
    #[error("registry '{registry}': {what}: {detail}")]
    Other {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// What went wrong.
        detail: String,
    },
}

impl RegistryError {
    /// True when retrying cannot help until someone changes something: an
    /// untrusted certificate, refused credentials, a missing artifact, a
    /// manifest we cannot copy.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RegistryError::Tls { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::NotFound { .. }
                | RegistryError::Manifest { .. }
                | RegistryError::Untrusted { .. }
                | RegistryError::Status { status: 405, .. }
        )
    }

    /// True when the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

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

impl Registry {
    /// Builds the client for a configured registry. A bad TLS setting is an
    /// error here, never a silently different client.
    pub fn new(cfg: &RegistryConfig) -> Result<Registry, RegistryError> {
        Ok(Registry {
            t: Arc::new(transport::Transport::new(cfg)?),
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.t.name
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
                let rb = c
                    .request(method.clone(), &url)
                    .header("X-Is-Resource-Name", "true");
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

    /// Sends a streamed body of `len` bytes once (it cannot be replayed),
    /// paced to the bandwidth cap, and gives up if the registry stops
    /// taking bytes for `stall_timeout` (reads have their own timeout).
    #[allow(clippy::too_many_arguments)]
    async fn send_body(
        &self,
        what: &str,
        repository: &str,
        method: Method,
        url: &str,
        len: u64,
        body: ByteStream,
        content_range: Option<String>,
    ) -> Result<reqwest::Response, RegistryError> {
        let sent = Arc::new(AtomicU64::new(0));
        let last = Arc::new(Mutex::new(std::time::Instant::now()));
        let (s2, l2) = (sent.clone(), last.clone());
        let tracked: ByteStream = Box::pin(
            self.metered(body, &self.t.stats.bytes_written)
                .inspect(move |item| {
                    if let Ok(b) = item {
                        s2.fetch_add(b.len() as u64, Ordering::Relaxed);
                        if let Ok(mut t) = l2.lock() {
                            *t = std::time::Instant::now();
                        }
                    }
                }),
        );
        let body = Mutex::new(Some(reqwest::Body::wrap_stream(tracked)));
        let scopes = push(repository);
        let make = |c: &reqwest::Client| {
            let mut rb = c
                .request(method.clone(), url)
                .header(CONTENT_TYPE, "application/octet-stream")
                .header(CONTENT_LENGTH, len);
            if let Some(r) = &content_range {
                rb = rb.header("content-range", r.as_str());
            }
            match body.lock().ok().and_then(|mut b| b.take()) {
                Some(b) => rb.body(b),
                None => rb,
            }
        };
        let send = self.t.send(what, &scopes, false, &make);
        let stall = self.t.limits.stall_timeout;
        let watchdog = async {
            loop {
                tokio::time::sleep((stall / 4).min(std::time::Duration::from_secs(1))).await;
                if sent.load(Ordering::Relaxed) >= len {
                    // The body is out; waiting for the answer is the read
                    // timeout's business.
                    std::future::pending::<()>().await;
                }
                let idle = last.lock().map(|t| t.elapsed()).unwrap_or_default();
                if idle >= stall {
                    return idle;
                }
            }
        };
        tokio::select! {
            r = send => r,
            idle = watchdog => Err(RegistryError::Connect {
                registry: self.t.name.clone(),
                url: self.t.base.clone(),
                detail: format!("{what}: stalled, the registry took no bytes for {idle:?}"),
            }),
        }
    }

    /// Counts a blob stream's bytes into `counter` and holds it to
    /// `max_bytes_per_second`, if one is set.
    fn metered(&self, s: ByteStream, counter: &Arc<AtomicU64>) -> ByteStream {
        let counter = counter.clone();
        let s: ByteStream = Box::pin(s.inspect(move |item| {
            if let Ok(b) = item {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }));
        match &self.t.pacer {
            None => s,
            Some(p) => {
                let p = p.clone();
                Box::pin(s.then(move |item| {
                    let p = p.clone();
                    async move {
                        if let Ok(b) = &item {
                            p.take(b.len()).await;
                        }
                        item
                    }
                }))
            }
        }
    }

    /// Requests, retries, 429s and bytes moved, for metrics.
    pub fn stats(&self) -> &Stats {
        &self.t.stats
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{path}", self.t.base)
    }

    /// Reads a manifest, byte for byte, with its media type, and checks it
    /// against the digest when the reference is one.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let resp = self
            .t
            .send(&what, &pull(repository), true, &|c| {
                c.get(&url).header(ACCEPT, manifest::ACCEPTED.join(", "))
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self.t.status_error(resp, &what).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = self
            .t
            .read_limited(resp, manifest::MAX_MANIFEST_BYTES, &what)
            .await?;
        let m = Manifest::from_bytes(bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                registry: self.t.name.clone(),
                source,
            }
        })?;
        if let Reference::Digest(d) = reference
            && *d != m.digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.t.name.clone(),
                what,
                detail: format!("asked for {d}, got content hashing to {}", m.digest),
            });
        }
        Ok(m)
    }

    /// `HEAD` on a manifest or blob URL: the answer, or `None` for `404`.
    async fn head(
        &self,
        what: &str,
        repository: &str,
        url: &str,
        manifest: bool,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        let resp = self
            .t
            .send(what, &pull(repository), true, &|c| {
                let rb = c.head(url);
                if manifest {
                    rb.header(ACCEPT, manifest::ACCEPTED.join(", "))
                } else {
                    rb
                }
            })
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Some(resp)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.t.status_error(resp, what).await),
        }
    }

    /// True if the repository holds a manifest with this digest.
    pub async fn has_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("manifest {repository}@{digest}");
        let url = self.url(&format!("{repository}/manifests/{digest}"));
        Ok(self.head(&what, repository, &url, true).await?.is_some())
    }

    /// The digest a tag (or digest) resolves to, by `HEAD`; `None` if it
    /// does not exist.
    pub async fn resolve(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let Some(resp) = self.head(&what, repository, &url, true).await? else {
            return Ok(None);
        };
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match header {
            Some(d) if crate::reference::is_valid_digest(&d) => Ok(Some(d)),
            Some(d) => Err(RegistryError::Untrusted {
                registry: self.t.name.clone(),
                detail: format!(
                    "{what}: its Docker-Content-Digest `{}` is not a digest",
                    transport::cut(&d)
                ),
            }),
            // No digest header: read the manifest and hash it.
            None => Ok(Some(self.get_manifest(repository, reference).await?.digest)),
        }
    }

    /// The referrers of a manifest by the OCI 1.1 API
    /// (`GET /v2/<name>/referrers/<digest>`, following `Link` pages), or
    /// `None` if the registry does not offer the API.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<manifest::Descriptor>>, RegistryError> {
        if self.t.lacks_referrers_api() {
            return Ok(None);
        }
        let what = format!("referrers of {repository}@{digest}");
        let mut url = self.url(&format!("{repository}/referrers/{digest}"));
        let mut all = Vec::new();
        for _ in 0..50 {
            let resp = self
                .t
                .send(&what, &pull(repository), true, &|c| {
                    c.get(&url).header(ACCEPT, manifest::OCI_INDEX)
                })
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                // A registry with the API never answers 404 here (OCI 1.1:
                // an unknown subject has an empty list), so this means it
                // has none: remember that for a while.
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                    if all.is_empty() {
                        self.t.note_no_referrers_api();
                        return Ok(None);
                    }
                    return Ok(Some(all));
                }
                _ => return Err(self.t.status_error(resp, &what).await),
            }
            let next = next_link(&self.t, &resp, &what)?;
            let body = self
                .t
                .read_limited(resp, manifest::MAX_MANIFEST_BYTES, &what)
                .await?;
            let index =
                Manifest::from_bytes(body, Some(manifest::OCI_INDEX)).map_err(|source| {
                    RegistryError::Manifest {
                        registry: self.t.name.clone(),
                        source,
                    }
                })?;
            if let Ok(manifest::Children::Manifests(list)) = index.children() {
                all.extend(list);
            }
            match next {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
        Ok(Some(all))
    }

    /// Every repository the registry lists (`/v2/_catalog`, paged).
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        self.pages(
            "listing repositories",
            &[],
            &format!("{}/v2/_catalog?n=1000", self.t.base),
            &|body| {
                Ok(serde_json::from_slice::<Page>(body)?
                    .repositories
                    .unwrap_or_default())
            },
            crate::reference::is_valid_repository,
        )
        .await
    }

    /// Every tag of a repository (`/v2/<name>/tags/list`, paged).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        self.pages(
            &format!("listing tags of {repository}"),
            &pull(repository),
            &self.url(&format!("{repository}/tags/list?n=1000")),
            &|body| {
                Ok(serde_json::from_slice::<Page>(body)?
                    .tags
                    .unwrap_or_default())
            },
            crate::reference::is_valid_tag,
        )
        .await
    }

    /// GETs a paged list (`Link: <…>; rel="next"`, on the registry's own
    /// origin only) and returns its valid entries. Each page is read with
    /// a limit, and the whole listing stops with an error past the
    /// registry's `max_list_bytes` or `max_list_entries`, so a registry
    /// that answers without end cannot fill memory. Entries that fail
    /// `valid` (the grammar webhook input passes) are dropped and counted.
    async fn pages(
        &self,
        what: &str,
        scopes: &[String],
        first: &str,
        parse: &PageParser,
        valid: fn(&str) -> bool,
    ) -> Result<Vec<String>, RegistryError> {
        let limits = &self.t.limits;
        let mut url = first.to_string();
        let mut out = Vec::new();
        let (mut bytes, mut dropped) = (0u64, 0usize);
        let too_much = |detail: String| RegistryError::Other {
            registry: self.t.name.clone(),
            what: what.to_string(),
            detail,
        };
        loop {
            let resp = self.t.send(what, scopes, true, &|c| c.get(&url)).await?;
            if resp.status() != StatusCode::OK {
                return Err(self.t.status_error(resp, what).await);
            }
            let next = next_link(&self.t, &resp, what)?;
            let left = limits.max_list_bytes.saturating_sub(bytes);
            let body = self
                .t
                .read_limited(resp, left.min(16 << 20) as usize, what)
                .await
                .map_err(|e| match e {
                    RegistryError::Other { .. } => too_much(format!(
                        "the listing is larger than max_list_bytes ({} bytes in all, 16 MiB a page); raise max_list_bytes for this registry if it really is",
                        limits.max_list_bytes
                    )),
                    e => e,
                })?;
            bytes += body.len() as u64;
            let entries = parse(&body)
                .map_err(|e| too_much(format!("unexpected answer: {}", cut(&e.to_string()))))?;
            for e in entries {
                if valid(&e) {
                    out.push(e);
                } else {
                    dropped += 1;
                }
            }
            if out.len() > limits.max_list_entries {
                return Err(too_much(format!(
                    "more than max_list_entries ({}) entries; raise max_list_entries for this registry if it really has that many",
                    limits.max_list_entries
                )));
            }
            match next {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
        if dropped > 0 {
            tracing::warn!(registry = %self.t.name, %what, dropped, "ignored names that are not valid repository names or tags");
        }
        Ok(out)
    }

    /// Deletes a manifest by digest (which removes the tags pointing at
    /// it). Returns false if it was not there.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("deleting manifest {repository}@{digest}");
        let url = self.url(&format!("{repository}/manifests/{digest}"));
        let scopes = vec![auth::scope(repository, "delete")];
        let resp = self
            .t
            .send(&what, &scopes, true, &|c| c.delete(&url))
            .await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::METHOD_NOT_ALLOWED => Err(RegistryError::Status {
                registry: self.t.name.clone(),
                what,
                status: 405,
                detail: "answered 405: deletion is disabled on this registry (CNCF distribution: storage.delete.enabled: true)".into(),
            }),
            _ => Err(self.t.status_error(resp, &what).await),
        }
    }

    /// Writes a manifest under a tag or its digest, with its media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        m: &Manifest,
    ) -> Result<(), RegistryError> {
        let what = format!("writing manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| {
                c.put(&url)
                    .header(CONTENT_TYPE, m.media_type.as_str())
                    .body(m.bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }

    /// True if the repository holds a blob with this digest.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, RegistryError> {
        let what = format!("blob {repository}@{digest}");
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        Ok(self.head(&what, repository, &url, false).await?.is_some())
    }

    /// Opens a blob for reading. The stream hashes every byte and yields an
    /// error at its end if the content does not match `digest` and `size`.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
    ) -> Result<(ByteStream, Arc<AtomicU64>), RegistryError> {
        let what = format!("reading blob {repository}@{digest}");
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let resp = self
            .t
            .send(&what, &pull(repository), true, &|c| c.get(&url))
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self.t.status_error(resp, &what).await);
        }
        let raw: ByteStream = Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        );
        let raw = self.metered(raw, &self.t.stats.bytes_read);
        let seen = Arc::new(AtomicU64::new(0));
        let verified = verify::Verify::new(raw, digest, size, seen.clone());
        Ok((Box::pin(verified), seen))
    }

    /// Starts an upload session; returns its URL and the registry's
    /// smallest accepted chunk (`OCI-Chunk-Min-Length`), if it says.
    pub async fn begin_upload(
        &self,
        repository: &str,
        what: &str,
    ) -> Result<(url::Url, Option<u64>), RegistryError> {
        let url = self.url(&format!("{repository}/blobs/uploads/"));
        let resp = self
            .t
            .send(what, &push(repository), true, &|c| {
                c.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(self.t.status_error(resp, what).await);
        }
        let min = resp
            .headers()
            .get("oci-chunk-min-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok((self.t.location(&resp, what)?, min))
    }

    async fn start_upload(&self, repository: &str, what: &str) -> Result<url::Url, RegistryError> {
        Ok(self.begin_upload(repository, what).await?.0)
    }

    /// How many bytes an upload session holds, asked of the registry
    /// (`GET` on the upload URL). `None` if the session is gone.
    pub async fn upload_offset(
        &self,
        repository: &str,
        location: &str,
    ) -> Result<Option<(url::Url, u64)>, RegistryError> {
        let what = format!("checking upload progress in {repository}");
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| c.get(location))
            .await?;
        match resp.status() {
            StatusCode::NO_CONTENT | StatusCode::OK => {}
            StatusCode::NOT_FOUND => return Ok(None),
            _ => return Err(self.t.status_error(resp, &what).await),
        }
        let end = resp
            .headers()
            .get(reqwest::header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|r| r.rsplit('-').next())
            .and_then(|e| e.trim().parse::<u64>().ok());
        // Distribution answers "0-0" both for nothing and for one byte; we
        // only ever resume at offsets we recorded after whole chunks.
        let offset = match end {
            Some(0) | None => 0,
            Some(e) => e + 1,
        };
        let loc = match self.t.location(&resp, &what) {
            Ok(l) => l,
            Err(_) => url::Url::parse(location).map_err(|e| RegistryError::Other {
                registry: self.t.name.clone(),
                what: what.clone(),
                detail: e.to_string(),
            })?,
        };
        Ok(Some((loc, offset)))
    }

    /// Sends one chunk (`PATCH` with `Content-Range`) from a stream of
    /// exactly `len` bytes; returns the session URL for the next request.
    pub async fn upload_chunk(
        &self,
        repository: &str,
        location: &url::Url,
        offset: u64,
        len: u64,
        body: ByteStream,
    ) -> Result<url::Url, RegistryError> {
        let what = format!(
            "uploading bytes {offset}-{} in {repository}",
            offset + len.saturating_sub(1)
        );
        let range = format!("{offset}-{}", offset + len.saturating_sub(1));
        let resp = self
            .send_body(
                &what,
                repository,
                Method::PATCH,
                location.as_str(),
                len,
                body,
                Some(range),
            )
            .await?;
        if resp.status() != StatusCode::ACCEPTED && resp.status() != StatusCode::NO_CONTENT {
            return Err(self.t.status_error(resp, &what).await);
        }
        self.t.location(&resp, &what)
    }

    /// Closes an upload session: the registry checks the digest and links
    /// the blob.
    pub async fn finish_upload(
        &self,
        repository: &str,
        location: &url::Url,
        digest: &str,
    ) -> Result<(), RegistryError> {
        let what = format!("completing upload of blob {repository}@{digest}");
        let mut url = location.clone();
        url.query_pairs_mut().append_pair("digest", digest);
        let url = url.to_string();
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| {
                c.put(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }

    /// Abandons an upload session (best effort).
    pub async fn cancel_upload(&self, repository: &str, location: &str) {
        let what = format!("cancelling an upload in {repository}");
        if let Err(e) = self
            .t
            .send(&what, &push(repository), true, &|c| c.delete(location))
            .await
        {
            tracing::debug!(error = %e, "cancelling an upload");
        }
    }

    /// Reads a blob from `offset` on (`Range`), unverified: the caller
    /// hashes, having restored the hash of the part before `offset`.
    pub async fn get_blob_from(
        &self,
        repository: &str,
        digest: &str,
        offset: u64,
    ) -> Result<ByteStream, RegistryError> {
        let what = format!("reading blob {repository}@{digest} from byte {offset}");
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let resp = self
            .t
            .send(&what, &pull(repository), true, &|c| {
                let rb = c.get(&url);
                if offset > 0 {
                    rb.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        let skip = match resp.status() {
            StatusCode::PARTIAL_CONTENT => 0,
            // The registry ignored Range: drop the bytes we already have.
            StatusCode::OK => offset,
            _ => return Err(self.t.status_error(resp, &what).await),
        };
        let raw: ByteStream = Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        );
        let raw = if skip == 0 {
            raw
        } else {
            skip_bytes(raw, skip)
        };
        Ok(self.metered(raw, &self.t.stats.bytes_read))
    }

    /// The chunked-upload settings for uploads to this registry:
    /// (threshold, chunk size).
    pub fn chunking(&self) -> (u64, u64) {
        (self.t.limits.chunk_size_threshold, self.t.limits.chunk_size)
    }

    /// Uploads a blob from a stream: a `POST` for the session, then one
    /// `PUT` with the whole body and its length. Memory use does not depend
    /// on the blob size. The body is not replayable, so this request is not
    /// retried here; the caller retries the whole blob.
    pub async fn put_blob<S>(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("uploading blob {repository}@{digest} ({size} bytes)");
        let location = self.start_upload(repository, &what).await?;
        self.put_blob_at(location, repository, digest, size, body)
            .await
    }

    /// Sends a blob's bytes into an upload session already started with
    /// [`Registry::begin_upload`] (so the caller can open the session while
    /// the source starts sending), and closes it with the digest.
    pub async fn put_blob_at<S>(
        &self,
        mut location: url::Url,
        repository: &str,
        digest: &str,
        size: u64,
        body: S,
    ) -> Result<(), RegistryError>
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static,
    {
        let what = format!("uploading blob {repository}@{digest} ({size} bytes)");
        location.query_pairs_mut().append_pair("digest", digest);
        let url = location.to_string();
        let resp = self
            .send_body(
                &what,
                repository,
                Method::PUT,
                &url,
                size,
                Box::pin(body),
                None,
            )
            .await?;
        if resp.status() != StatusCode::CREATED {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }

    /// Uploads a small blob held in memory (test images, configs).
    pub async fn put_blob_bytes(
        &self,
        repository: &str,
        data: Bytes,
    ) -> Result<String, RegistryError> {
        let digest = manifest::sha256_digest(&data);
        let size = data.len() as u64;
        let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(data) });
        self.put_blob(repository, &digest, size, body).await?;
        Ok(digest)
    }

    /// Links a blob another repository of this registry holds into
    /// `repository` (`POST …/blobs/uploads/?mount=&from=`), with a token
    /// that may pull `from`. True if mounted; false if the registry
    /// declined (the upload session it opened instead is cancelled).
    pub async fn mount_blob(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<bool, RegistryError> {
        match self.mount_or_begin(repository, digest, from).await? {
            MountOrUpload::Mounted => Ok(true),
            MountOrUpload::Upload(loc) => {
                self.cancel_upload(repository, loc.as_str()).await;
                Ok(false)
            }
        }
    }

    /// One request that either links the blob from `from` (which may be
    /// `repository` itself: then it answers whether the blob is already
    /// there) or opens an upload session for it.
    pub async fn mount_or_begin(
        &self,
        repository: &str,
        digest: &str,
        from: &str,
    ) -> Result<MountOrUpload, RegistryError> {
        let what = format!("mounting blob {digest} from {from} into {repository}");
        let url = format!(
            "{}?mount={}&from={}",
            self.url(&format!("{repository}/blobs/uploads/")),
            digest,
            from
        );
        let mut scopes = vec![auth::scope(repository, "pull,push")];
        if from != repository {
            scopes.push(auth::scope(from, "pull"));
        }
        let resp = self
            .t
            .send(&what, &scopes, true, &|c| {
                c.post(&url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(MountOrUpload::Mounted),
            StatusCode::ACCEPTED => Ok(MountOrUpload::Upload(self.t.location(&resp, &what)?)),
            _ => Err(self.t.status_error(resp, &what).await),
        }
    }
}

/// Takes the entries out of one page of a listing.
type PageParser = dyn Fn(&[u8]) -> Result<Vec<String>, serde_json::Error> + Sync;

/// What a mount request did.
#[derive(Debug)]
pub enum MountOrUpload {
    /// The blob is in the repository now (it was mounted, or was there).
    Mounted,
    /// The registry opened an upload session at this URL instead.
    Upload(url::Url),
}

/// The `Link: <…>; rel="next"` page of a paged answer, as an absolute URL
/// on the registry's own origin (anything else is refused: the next page
/// would be asked with the registry's credentials).
fn next_link(
    t: &transport::Transport,
    resp: &reqwest::Response,
    what: &str,
) -> Result<Option<url::Url>, RegistryError> {
    let next = resp
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.split('<').nth(1))
        .and_then(|l| l.split('>').next())
        .and_then(|l| resp.url().join(l).ok());
    next.map(|u| t.own(u, "Link", what)).transpose()
}

/// Drops the first `n` bytes of a stream.
fn skip_bytes(s: ByteStream, n: u64) -> ByteStream {
    let mut left = n;
    Box::pin(s.filter_map(move |item| {
        let out = match item {
            Ok(mut b) if left > 0 => {
                if (b.len() as u64) <= left {
                    left -= b.len() as u64;
                    None
                } else {
                    let rest = b.split_off(left as usize);
                    left = 0;
                    Some(Ok(rest))
                }
            }
            other => Some(other),
        };
        std::future::ready(out)
    }))
}

/// What went wrong reading a blob from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFault {
    /// The stream's error message.
    pub detail: String,
    /// Set when the content is not what its manifest declares.
    pub mismatch: Option<Mismatch>,
}

impl From<&std::io::Error> for SourceFault {
    fn from(e: &std::io::Error) -> SourceFault {
        SourceFault {
            detail: e.to_string(),
            mismatch: verify::mismatch_of(e),
        }
    }
}

/// Wraps a blob stream to count bytes and remember the first read error, so
/// that when the upload fails because the *source* failed, the job says so.
pub struct Tap {
    bytes: Arc<AtomicU64>,
    error: Arc<Mutex<Option<SourceFault>>>,
}

impl Tap {
    /// Wraps `s`.
    pub fn wrap(s: ByteStream) -> (Tap, ByteStream) {
        let bytes = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (b, e) = (bytes.clone(), error.clone());
        let wrapped = s.inspect(move |item| match item {
            Ok(chunk) => {
                b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                if let Ok(mut slot) = e.lock()
                    && slot.is_none()
                {
                    *slot = Some(SourceFault::from(err));
                }
            }
        });
        (Tap { bytes, error }, Box::pin(wrapped))
    }

    /// The first source error, if any.
    pub fn source_error(&self) -> Option<SourceFault> {
        self.error.lock().ok().and_then(|s| s.clone())
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
