//! A registry that lies, and a foreign host that records what reaches it.
//!
//! [`HostileRegistry`] serves one small image over the Distribution API
//! behind Basic auth, like any registry, except for the one [`Attack`] it
//! is started with: a token realm on another host, a blob redirect to a
//! store that answers `401` with its own realm, an upload `Location` or a
//! paging `Link` on another host, a huge `Retry-After`, endless pages, a
//! `Docker-Content-Digest` that is a path. [`Recorder`] is that other host:
//! it keeps every request that reaches it (method, path, headers, body),
//! so a test can assert that no credential ever did.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use harbor_relay::manifest::{OCI_MANIFEST, sha256_digest};

/// What the hostile registry does wrong.
#[derive(Clone, Debug)]
pub enum Attack {
    /// Nothing: a well-behaved registry (for the control case).
    None,
    /// Every request without credentials gets `401 Bearer realm=<url>`.
    Realm(String),
    /// Blob `GET`s are redirected to `<url>` (which answers 401 with a
    /// realm of its own).
    BlobRedirect(String),
    /// Upload sessions are opened at `<url>`.
    UploadLocation(String),
    /// `tags/list` pages link to `<url>` as the next page.
    TagsLink(String),
    /// The first manifest `GET` is answered `429` with this `Retry-After`.
    RetryAfter(String),
    /// `tags/list` answers an endless chain of pages of this many bytes.
    EndlessPages(usize),
    /// Manifest `HEAD`s carry this `Docker-Content-Digest`.
    DigestHeader(String),
}

/// One request as a server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    /// The whole request as text, for "is this secret anywhere in it".
    pub fn text(&self) -> String {
        let mut t = format!("{} {}\n", self.method, self.path);
        for (k, v) in &self.headers {
            t.push_str(&format!("{k}: {v}\n"));
        }
        t.push_str(&String::from_utf8_lossy(&self.body));
        t
    }
}

/// Serves `app` on a fresh loopback port; returns its base URL.
async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{addr}")
}

fn record(headers: &HeaderMap, method: &Method, path: String, body: &[u8]) -> Seen {
    Seen {
        method: method.to_string(),
        path,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect(),
        body: body.to_vec(),
    }
}

/// A foreign host: records every request and answers `401` with a Bearer
/// realm of its own (to be learned by a careless client).
pub struct Recorder {
    pub url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start() -> Recorder {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let s2 = seen.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let seen = s2.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 64 << 20)
                    .await
                    .unwrap_or_default();
                let path = parts
                    .uri
                    .path_and_query()
                    .map(|p| p.to_string())
                    .unwrap_or_default();
                let host = parts
                    .headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                seen.lock()
                    .expect("seen")
                    .push(record(&parts.headers, &parts.method, path, &body));
                let realm = format!("Bearer realm=\"http://{host}/steal\",service=\"evil\"");
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, realm)],
                    "who are you",
                )
                    .into_response()
            }
        });
        Recorder {
            url: serve(app).await,
            seen,
        }
    }

    /// `host:port`.
    pub fn host(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    /// Every request that reached it.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Asserts that none of `secrets` (nor any `Authorization` header)
    /// reached this host.
    pub fn assert_no_credentials(&self, secrets: &[&str]) {
        for s in self.seen() {
            assert!(
                !s.headers
                    .iter()
                    .any(|(k, _)| k.eq_ignore_ascii_case("authorization")),
                "an Authorization header reached the foreign host: {}",
                s.text()
            );
            let text = s.text();
            let basic = |u: &str, p: &str| {
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            };
            for secret in secrets {
                assert!(
                    !text.contains(secret) && !text.contains(&basic(USER, secret)),
                    "a secret reached the foreign host: {text}"
                );
            }
        }
    }
}

/// The account the hostile registry accepts.
pub const USER: &str = "robot$relay";
/// Its password: must never reach another host.
pub const PASS: &str = "s0urce-Pa55word";

/// The small image the hostile registry serves.
pub struct Image {
    pub manifest: Bytes,
    pub digest: String,
    pub blobs: HashMap<String, Bytes>,
}

impl Image {
    fn new() -> Image {
        let config = Bytes::from_static(br#"{"architecture":"amd64","os":"linux"}"#);
        let layer = Bytes::from(vec![7u8; 4096]);
        let (cd, ld) = (sha256_digest(&config), sha256_digest(&layer));
        let manifest = Bytes::from(
            serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": layer.len()}],
            }))
            .expect("json"),
        );
        Image {
            digest: sha256_digest(&manifest),
            manifest,
            blobs: HashMap::from([(cd, config), (ld, layer)]),
        }
    }
}

struct St {
    attack: Attack,
    image: Image,
    requests: AtomicUsize,
    pages: AtomicUsize,
    throttled: AtomicUsize,
}

/// A registry serving `library/app:1` behind Basic auth, with one attack.
pub struct HostileRegistry {
    pub url: String,
    pub digest: String,
    st: Arc<St>,
}

impl HostileRegistry {
    pub async fn start(attack: Attack) -> HostileRegistry {
        Self::start_with(attack, None).await
    }

    /// Like [`HostileRegistry::start`], over HTTPS with the PKI's
    /// certificate.
    pub async fn start_tls(attack: Attack, pki: &super::Pki) -> HostileRegistry {
        Self::start_with(attack, Some(pki)).await
    }

    async fn start_with(attack: Attack, pki: Option<&super::Pki>) -> HostileRegistry {
        let st = Arc::new(St {
            attack,
            image: Image::new(),
            requests: AtomicUsize::new(0),
            pages: AtomicUsize::new(0),
            throttled: AtomicUsize::new(0),
        });
        let s2 = st.clone();
        let app = axum::Router::new().fallback(move |req: Request| handle(s2.clone(), req));
        let url = match pki {
            None => serve(app).await,
            Some(pki) => {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind");
                let addr = listener.local_addr().expect("addr");
                // The task lives as long as the runtime, as `serve`'s does.
                let (_task, scheme) = super::serve(listener, app, Some(pki));
                format!("{scheme}://{addr}")
            }
        };
        HostileRegistry {
            url,
            digest: st.image.digest.clone(),
            st,
        }
    }

    /// Requests served.
    pub fn requests(&self) -> usize {
        self.st.requests.load(Ordering::Relaxed)
    }

    /// `tags/list` pages served.
    pub fn pages(&self) -> usize {
        self.st.pages.load(Ordering::Relaxed)
    }

    /// `429`s sent.
    pub fn throttled(&self) -> usize {
        self.st.throttled.load(Ordering::Relaxed)
    }
}

fn authorized(headers: &HeaderMap) -> bool {
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"))
    );
    headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes() == want.as_bytes())
}

async fn handle(st: Arc<St>, req: Request) -> Response {
    st.requests.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    if !authorized(req.headers()) {
        let challenge = match &st.attack {
            Attack::Realm(url) => format!("Bearer realm=\"{url}\",service=\"registry\""),
            _ => "Basic realm=\"hostile\"".to_string(),
        };
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    let image = &st.image;
    let manifest_paths = [
        "/v2/library/app/manifests/1".to_string(),
        format!("/v2/library/app/manifests/{}", image.digest),
    ];
    match (&method, path.as_str(), &st.attack) {
        (_, "/v2/", _) => StatusCode::OK.into_response(),
        (&Method::GET, p, Attack::RetryAfter(v)) if manifest_paths.iter().any(|m| m == p) => {
            if st.throttled.fetch_add(1, Ordering::Relaxed) == 0 {
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(
                        header::RETRY_AFTER,
                        HeaderValue::from_str(v).expect("value"),
                    )],
                )
                    .into_response();
            }
            manifest(image, true)
        }
        (&Method::HEAD, p, Attack::DigestHeader(d)) if manifest_paths.iter().any(|m| m == p) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, OCI_MANIFEST.to_string()),
                (
                    header::HeaderName::from_static("docker-content-digest"),
                    d.clone(),
                ),
            ],
        )
            .into_response(),
        (m, p, _) if manifest_paths.iter().any(|x| x == p) => manifest(image, m == Method::GET),
        (&Method::GET, p, Attack::BlobRedirect(to)) if p.starts_with("/v2/library/app/blobs/") => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{to}/store{p}"))],
        )
            .into_response(),
        (m, p, _) if p.starts_with("/v2/library/app/blobs/sha256:") => {
            let d = p.trim_start_matches("/v2/library/app/blobs/");
            match image.blobs.get(d) {
                Some(b) if m == Method::GET => b.clone().into_response(),
                Some(b) => (StatusCode::OK, [(header::CONTENT_LENGTH, b.len())]).into_response(),
                None => StatusCode::NOT_FOUND.into_response(),
            }
        }
        (&Method::POST, p, Attack::UploadLocation(to)) if p.ends_with("/blobs/uploads/") => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, format!("{to}/upload/1"))],
        )
            .into_response(),
        (&Method::GET, "/v2/library/app/tags/list", attack) => tags(&st, attack),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

fn manifest(image: &Image, body: bool) -> Response {
    let headers = [
        (header::CONTENT_TYPE, OCI_MANIFEST.to_string()),
        (
            header::HeaderName::from_static("docker-content-digest"),
            image.digest.clone(),
        ),
    ];
    if body {
        (StatusCode::OK, headers, image.manifest.clone()).into_response()
    } else {
        (StatusCode::OK, headers).into_response()
    }
}

fn tags(st: &St, attack: &Attack) -> Response {
    let n = st.pages.fetch_add(1, Ordering::Relaxed);
    match attack {
        Attack::TagsLink(to) => (
            StatusCode::OK,
            [(
                header::LINK,
                format!("<{to}/v2/library/app/tags/list?last=1>; rel=\"next\""),
            )],
            axum::Json(json!({"name": "library/app", "tags": ["1"]})),
        )
            .into_response(),
        Attack::EndlessPages(size) => {
            let tag = format!("t{n}");
            let pad = "x".repeat(*size);
            (
                StatusCode::OK,
                [(
                    header::LINK,
                    format!("</v2/library/app/tags/list?last={tag}>; rel=\"next\""),
                )],
                format!(r#"{{"name":"library/app","tags":["{tag}"],"pad":"{pad}"}}"#),
            )
                .into_response()
        }
        _ => axum::Json(json!({"name": "library/app", "tags": ["1"]})).into_response(),
    }
}

/// Config text for the hostile registry as `[registries.external]`.
pub fn hostile_toml(url: &str, extra: &str) -> String {
    format!(
        "[registries.external]\nurl = \"{url}\"\nusername = \"{USER}\"\npassword = \"{PASS}\"\n{extra}\n"
    )
}

/// A Harbor-like front for registry auth, as Harbor's `v2auth` middleware
/// does it (`src/server/middleware/v2auth/auth.go`): the method decides
/// the action (`GET`/`HEAD` pull, `POST`/`PUT`/`PATCH` push, `DELETE`
/// delete); a request without `Authorization` gets a Bearer challenge for
/// the token service on the same host; a request whose credentials do not
/// grant the action gets `401 Basic realm="harbor"`; Basic credentials are
/// accepted too, and counted. The token service
/// (`src/core/service/token/`) grants what was asked (the account holds
/// every action here) and encodes the grant in the token.
pub struct HarborAuth {
    pub url: String,
    basic_uses: Arc<AtomicUsize>,
    pub seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl HarborAuth {
    pub async fn start() -> HarborAuth {
        let basic_uses = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
        let (b2, s2) = (basic_uses.clone(), seen.clone());
        let app = axum::Router::new()
            .route(
                "/service/token",
                axum::routing::get(
                    |headers: HeaderMap,
                     axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>| async move {
                        if !authorized(&headers) {
                            return StatusCode::UNAUTHORIZED.into_response();
                        }
                        let scopes: Vec<String> = q
                            .into_iter()
                            .filter(|(k, _)| k == "scope")
                            .map(|(_, v)| v)
                            .collect();
                        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD
                            .encode(scopes.join(" "));
                        axum::Json(json!({"token": token, "expires_in": 1800})).into_response()
                    },
                ),
            )
            .fallback(move |req: Request| {
                let (basic, seen) = (b2.clone(), s2.clone());
                async move { harbor_v2(req, &basic, &seen) }
            });
        HarborAuth {
            url: serve(app).await,
            basic_uses,
            seen,
        }
    }

    /// Requests to `/v2/…` authenticated with Basic credentials.
    pub fn basic_uses(&self) -> usize {
        self.basic_uses.load(Ordering::Relaxed)
    }
}

fn harbor_v2(
    req: Request,
    basic: &AtomicUsize,
    seen: &Mutex<Vec<(String, String, String)>>,
) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let action = match method {
        Method::GET | Method::HEAD => "pull",
        Method::DELETE => "delete",
        _ => "push",
    };
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    seen.lock()
        .expect("seen")
        .push((method.to_string(), path.clone(), auth.clone()));
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_string();
    if auth.is_empty() {
        let challenge = format!(
            "Bearer realm=\"http://{host}/service/token\",service=\"harbor-registry\",scope=\"repository:library/app:{action}\""
        );
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, challenge)],
        )
            .into_response();
    }
    let granted = if let Some(t) = auth.strip_prefix("Bearer ") {
        let scopes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(t)
            .map(|b| String::from_utf8_lossy(&b).to_string())
            .unwrap_or_default();
        path == "/v2/"
            || scopes.split(' ').any(|s| {
                s.rsplit_once(':')
                    .is_some_and(|(_, a)| a.split(',').any(|x| x == action || x == "*"))
            })
    } else if authorized(req.headers()) {
        basic.fetch_add(1, Ordering::Relaxed);
        true
    } else {
        false
    };
    if !granted {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"harbor\"")],
        )
            .into_response();
    }
    match (&method, path.as_str()) {
        (&Method::POST, p) if p.ends_with("/blobs/uploads/") => (
            StatusCode::ACCEPTED,
            [(header::LOCATION, "/v2/library/app/blobs/uploads/session-1")],
        )
            .into_response(),
        (&Method::DELETE, p) if p.contains("/blobs/uploads/") => {
            StatusCode::NO_CONTENT.into_response()
        }
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}
