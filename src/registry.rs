//! One OCI Distribution client per configured registry.
//!
//! Wraps `oci-client` (which does the `/v2/` protocol, Basic auth and the
//! Docker token flow Harbor uses) with what replication needs: manifests as
//! raw bytes, blob HEAD, a streamed blob GET feeding a streamed monolithic
//! blob PUT, and errors a person can act on. In particular a failed TLS
//! handshake is reported as such, with the config key that fixes it.
//!
//! TLS is per registry, so each registry gets its own client: system roots,
//! exactly one pinned CA (`tls.ca_file`), or no verification at all.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt, stream::BoxStream};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference as OciReference, client::ClientConfig};

use crate::config::{RegistryConfig, TlsMode};
use crate::manifest::{self, Manifest};
use crate::reference::Reference;

/// The `User-Agent` every request carries.
pub const USER_AGENT: &str = concat!("harbor-relay/", env!("CARGO_PKG_VERSION"));

/// How long to wait for a TCP + TLS connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a read may wait for the next bytes before the transfer counts as
/// stalled: a per-read limit, not a deadline for a whole (maybe huge) blob.
const STALL_TIMEOUT: Duration = Duration::from_secs(120);

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
    /// No connection at all.
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
    /// The content read did not hash to its digest.
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
    /// Any other failure (status codes, protocol errors).
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
        )
    }

    /// True when the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}

/// A streamed blob body.
pub type BlobStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// A client for one configured registry.
#[derive(Clone)]
pub struct Registry {
    name: String,
    host: String,
    url: String,
    tls: TlsMode,
    client: Client,
    auth: RegistryAuth,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("name", &self.name)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Builds the client for a configured registry. A bad TLS setting is an
    /// error here, never a silently different client.
    pub fn new(cfg: &RegistryConfig) -> Result<Registry, RegistryError> {
        let mut cc = ClientConfig {
            protocol: if cfg.is_plain_http() {
                oci_client::client::ClientProtocol::Http
            } else {
                oci_client::client::ClientProtocol::Https
            },
            use_monolithic_push: true,
            connect_timeout: Some(CONNECT_TIMEOUT),
            read_timeout: Some(STALL_TIMEOUT),
            user_agent: USER_AGENT,
            // We walk indexes ourselves and never let the client pick a platform.
            platform_resolver: None,
            ..ClientConfig::default()
        };
        match &cfg.tls {
            TlsMode::System => {}
            TlsMode::Pinned { pem, .. } => {
                cc.tls_certs_only = vec![oci_client::client::Certificate {
                    encoding: oci_client::client::CertificateEncoding::Pem,
                    data: pem.clone(),
                }];
            }
            TlsMode::InsecureSkipVerify => cc.accept_invalid_certificates = true,
        }
        let client = Client::try_from(cc).map_err(|e| RegistryError::Other {
            registry: cfg.name.clone(),
            what: "building the HTTP client".into(),
            detail: error_chain(&e),
        })?;
        let auth = match (&cfg.username, &cfg.password) {
            (Some(u), Some(p)) => RegistryAuth::Basic(u.clone(), p.expose().to_string()),
            (Some(u), None) => RegistryAuth::Basic(u.clone(), String::new()),
            _ => RegistryAuth::Anonymous,
        };
        Ok(Registry {
            name: cfg.name.clone(),
            host: cfg.host(),
            url: cfg.url.to_string(),
            tls: cfg.tls.clone(),
            client,
            auth,
        })
    }

    /// The configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn oci_ref(&self, repository: &str, reference: &Reference) -> OciReference {
        match reference {
            Reference::Tag(t) => {
                OciReference::with_tag(self.host.clone(), repository.to_string(), t.clone())
            }
            Reference::Digest(d) => {
                OciReference::with_digest(self.host.clone(), repository.to_string(), d.clone())
            }
        }
    }

    async fn ready(&self) {
        self.client
            .store_auth_if_needed(&self.host, &self.auth)
            .await;
    }

    /// Reads a manifest, byte for byte, and checks it against the digest
    /// when the reference is one.
    ///
    /// oci-client does not return the response `Content-Type`, so the media
    /// type comes from the document's own `mediaType` (always present in
    /// Docker schema 2 and in practice in OCI manifests) or its shape.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let what = || format!("manifest {repository}{reference}");
        let r = self.oci_ref(repository, reference);
        let (bytes, _) = self
            .client
            .pull_manifest_raw(&r, &self.auth, manifest::ACCEPTED)
            .await
            .map_err(|e| self.classify(e, what()))?;
        if bytes.len() > manifest::MAX_MANIFEST_BYTES {
            return Err(RegistryError::Other {
                registry: self.name.clone(),
                what: what(),
                detail: format!(
                    "{} bytes is over the {} byte limit for manifests",
                    bytes.len(),
                    manifest::MAX_MANIFEST_BYTES
                ),
            });
        }
        let m = Manifest::from_bytes(bytes, None).map_err(|source| RegistryError::Manifest {
            registry: self.name.clone(),
            source,
        })?;
        if let Reference::Digest(d) = reference
            && *d != m.digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.name.clone(),
                what: what(),
                detail: format!("asked for {d}, got content hashing to {}", m.digest),
            });
        }
        Ok(m)
    }

    /// True if the repository holds a manifest with this digest.
    pub async fn has_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        self.ready().await;
        let r = self.oci_ref(repository, &Reference::Digest(digest.to_string()));
        match self.client.fetch_manifest_digest(&r, &self.auth).await {
            Ok(_) => Ok(true),
            Err(e) => match self.classify(e, format!("manifest {repository}@{digest}")) {
                e if e.is_not_found() => Ok(false),
                e => Err(e),
            },
        }
    }

    /// Writes a manifest under a tag or its digest, with its media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        m: &Manifest,
    ) -> Result<(), RegistryError> {
        self.ready().await;
        let what = || format!("writing manifest {repository}{reference}");
        let content_type = reqwest::header::HeaderValue::from_str(&m.media_type).map_err(|e| {
            RegistryError::Other {
                registry: self.name.clone(),
                what: what(),
                detail: e.to_string(),
            }
        })?;
        let r = self.oci_ref(repository, reference);
        self.client
            .push_manifest_raw(&r, m.bytes.clone(), content_type)
            .await
            .map_err(|e| self.classify(e, what()))?;
        Ok(())
    }

    /// True if the repository holds a blob with this digest.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, RegistryError> {
        self.ready().await;
        let r = self.oci_ref(repository, &Reference::Digest(digest.to_string()));
        self.client
            .blob_exists(&r, digest)
            .await
            .map_err(|e| self.classify(e, format!("blob {repository}@{digest}")))
    }

    /// Opens a blob for reading. The stream hashes every byte and yields an
    /// error at its end if the content does not match `digest`.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<BlobStream, RegistryError> {
        self.ready().await;
        let r = self.oci_ref(repository, &Reference::Digest(digest.to_string()));
        let s = self
            .client
            .pull_blob_stream(&r, digest)
            .await
            .map_err(|e| self.classify(e, format!("reading blob {repository}@{digest}")))?;
        Ok(s.stream)
    }

    /// Uploads a blob from a stream in one monolithic PUT with a known
    /// length. Memory use does not depend on the blob size.
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
        self.ready().await;
        let r = self.oci_ref(repository, &Reference::Digest(digest.to_string()));
        let body = body.map_err(OciDistributionError::from);
        self.client
            .push_blob_stream(&r, body, digest, Some(size))
            .await
            .map_err(|e| self.classify(e, format!("uploading blob {repository}@{digest}")))?;
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

    /// Turns a client error into one that says what to do.
    fn classify(&self, e: OciDistributionError, what: String) -> RegistryError {
        let registry = self.name.clone();
        match e {
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => RegistryError::Unauthorized {
                registry,
                what,
                detail: "401 Unauthorized".into(),
            },
            OciDistributionError::ImageManifestNotFoundError(_) => {
                RegistryError::NotFound { registry, what }
            }
            OciDistributionError::RegistryError { envelope, .. } => {
                let codes: Vec<String> = envelope
                    .errors
                    .iter()
                    .map(|x| format!("{:?}", x.code))
                    .collect();
                let detail = envelope.to_string();
                let joined = codes.join(",").to_ascii_uppercase();
                if joined.contains("UNKNOWN") {
                    RegistryError::NotFound { registry, what }
                } else if joined.contains("DENIED") || joined.contains("UNAUTHORIZED") {
                    RegistryError::Unauthorized {
                        registry,
                        what,
                        detail,
                    }
                } else if joined.contains("DIGEST") {
                    RegistryError::DigestMismatch {
                        registry,
                        what,
                        detail,
                    }
                } else {
                    RegistryError::Other {
                        registry,
                        what,
                        detail,
                    }
                }
            }
            OciDistributionError::ServerError { code, message, .. } => match code {
                404 => RegistryError::NotFound { registry, what },
                401 | 403 => RegistryError::Unauthorized {
                    registry,
                    what,
                    detail: format!("{code} {}", short(&message)),
                },
                _ => RegistryError::Other {
                    registry,
                    what,
                    detail: format!("answered {code}: {}", short(&message)),
                },
            },
            OciDistributionError::DigestError(d) => RegistryError::DigestMismatch {
                registry,
                what,
                detail: d.to_string(),
            },
            other => self.classify_transport(other, what),
        }
    }

    fn classify_transport(&self, e: OciDistributionError, what: String) -> RegistryError {
        let chain = error_chain(&e);
        let lower = chain.to_ascii_lowercase();
        let registry = self.name.clone();
        if lower.contains("digest") && lower.contains("verif") {
            return RegistryError::DigestMismatch {
                registry,
                what,
                detail: chain,
            };
        }
        let tls_words = [
            "certificate",
            "unknownissuer",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
            "tls",
        ];
        if !matches!(self.url.as_str(), u if u.starts_with("http://"))
            && tls_words.iter().any(|w| lower.contains(w))
        {
            let hint = if lower.contains("invalidcontenttype") || lower.contains("corrupt message")
            {
                format!(
                    "registry '{}' does not answer with TLS; if it serves plain HTTP, write its url as http://",
                    self.name
                )
            } else {
                match &self.tls {
                    TlsMode::System => format!(
                        "set tls.ca_file for registry '{}' to the CA that signed its certificate (or, at your own risk, tls.insecure_skip_verify = true)",
                        self.name
                    ),
                    TlsMode::Pinned { file, .. } => format!(
                        "registry '{}' presented a certificate not signed by the CA in {} (check tls.ca_file and the certificate's host names)",
                        self.name,
                        file.display()
                    ),
                    TlsMode::InsecureSkipVerify => "TLS handshake failed".to_string(),
                }
            };
            let detail = match lower.find("invalid peer certificate") {
                Some(i) => chain[i..].to_string(),
                None => last_cause(&chain),
            };
            return RegistryError::Tls {
                registry,
                hint,
                detail,
            };
        }
        let is_connect = match &e {
            OciDistributionError::RequestError(r) => r.is_connect() || r.is_timeout(),
            _ => false,
        };
        if is_connect {
            return RegistryError::Connect {
                registry,
                url: self.url.clone(),
                detail: last_cause(&chain),
            };
        }
        RegistryError::Other {
            registry,
            what,
            detail: chain,
        }
    }
}

/// The error and its sources, joined, for matching and for messages.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

fn last_cause(chain: &str) -> String {
    chain.rsplit(": ").next().unwrap_or(chain).to_string()
}

fn short(s: &str) -> String {
    let s = s.trim();
    s.chars().take(300).collect()
}

/// Wraps a blob stream to count bytes and remember the first read error, so
/// that when the upload fails because the *source* failed, the job says so.
pub struct Tap {
    /// Bytes that passed.
    pub bytes: Arc<std::sync::atomic::AtomicU64>,
    /// The first error the source stream yielded.
    pub error: Arc<Mutex<Option<String>>>,
}

impl Tap {
    /// Wraps `s`.
    pub fn wrap(s: BlobStream) -> (Tap, BlobStream) {
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (b, e) = (bytes.clone(), error.clone());
        let wrapped = s
            .inspect(move |item| match item {
                Ok(chunk) => {
                    b.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Err(err) => {
                    if let Ok(mut slot) = e.lock()
                        && slot.is_none()
                    {
                        *slot = Some(error_chain(err));
                    }
                }
            })
            .boxed();
        (Tap { bytes, error }, wrapped)
    }

    /// The first source error, if any.
    pub fn source_error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|s| s.clone())
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.bytes.load(std::sync::atomic::Ordering::Relaxed)
    }
}
