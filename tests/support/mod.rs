//! Test harness: real registries, real certificates, a real token issuer,
//! the real daemon binary, and a small slowing proxy.
//!
//! - [`RegistryProc`] runs the Debian `docker-registry` binary (CNCF
//!   distribution, what Harbor embeds) on a free loopback port with its own
//!   temp storage: plain HTTP, or TLS with a certificate from [`Pki`], with
//!   no auth, htpasswd basic auth, or Docker token auth via [`TokenIssuer`].
//! - [`TestImage`] / [`TestIndex`] build random images and push them with
//!   the project's own registry client.
//! - [`Relay`] runs `harbor-relay serve` as a child process.
//! - [`SlowProxy`] forwards TCP to an upstream at a set byte rate, to make
//!   copies last long enough to be interrupted.

#![allow(dead_code)]

pub mod fault;
pub mod harbor;
pub mod hostile;

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harbor_relay::config::{RegistryConfig, Secret, TlsMode};
use harbor_relay::manifest::{OCI_INDEX, OCI_MANIFEST, sha256_digest};
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use rand::RngCore;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The registry binary, or a loud failure that says how to install it.
pub fn registry_binary() -> PathBuf {
    for p in ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "the CNCF distribution registry is not installed; the end-to-end tests need it:\n    apt-get install -y docker-registry\n(scripts/test.sh installs it)"
    );
}

/// A config file for the one-shot commands: a `[store]` in its own temp
/// directory, then `body`.
pub struct ConfigFile {
    _dir: TempDir,
    /// Where it is.
    pub path: String,
}

impl ConfigFile {
    pub fn new(body: &str) -> ConfigFile {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay.toml");
        std::fs::write(
            &path,
            format!(
                "[store]\npath = \"{}\"\n\n{body}",
                dir.path().join("store").display()
            ),
        )
        .expect("config");
        ConfigFile {
            path: path.to_str().expect("utf-8").to_string(),
            _dir: dir,
        }
    }
}

/// A `harbor-relay serve` whose `[server]` section the test writes itself
/// (a [`Relay`] writes its own): `listen` on `port`, then `server_lines`,
/// and a store in a temp directory. Killed when dropped.
pub struct RawRelay {
    child: Child,
    /// Holds the config and the store.
    pub dir: TempDir,
}

impl RawRelay {
    pub fn spawn(port: u16, server_lines: &str) -> RawRelay {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "[server]\nlisten = \"127.0.0.1:{port}\"\n{server_lines}\n[store]\npath = \"{}\"\n",
                dir.path().join("store").display()
            ),
        )
        .expect("config");
        let child = Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start harbor-relay");
        RawRelay { child, dir }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for RawRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (20 s at most) until `GET url` through `http` gets an answer;
/// `what` says what failed to happen otherwise.
pub async fn wait_until_answers(http: &reqwest::Client, url: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http.get(url).send().await.is_err() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the `harbor-relay` binary with `args` and waits for it.
pub fn relay_cmd(args: &[&str]) -> std::process::Output {
    relay_cmd_env(args, &[])
}

/// [`relay_cmd`] with extra environment variables.
pub fn relay_cmd_env(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("HARBOR_RELAY_API_TOKEN")
        .envs(env.iter().copied())
        .output()
        .expect("run harbor-relay")
}

/// A free loopback port (bound and released; the window for a race is tiny).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A test CA and a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub ca_pem: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "harbor-relay test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("server key");
        let mut sp = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params");
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let cert = sp.signed_by(&key, &issuer).expect("server cert");
        std::fs::create_dir_all(dir).expect("pki dir");
        let out = Pki {
            ca_pem: dir.join("ca.pem"),
            cert_pem: dir.join("server.pem"),
            key_pem: dir.join("server.key"),
        };
        std::fs::write(&out.ca_pem, ca_cert.pem()).expect("write ca");
        std::fs::write(&out.cert_pem, cert.pem()).expect("write cert");
        std::fs::write(&out.key_pem, key.serialize_pem()).expect("write key");
        out
    }
}

/// How a test registry authenticates.
pub enum Auth {
    None,
    Basic { user: String, pass: String },
    Token(Arc<TokenIssuer>),
}

/// A running `docker-registry`.
pub struct RegistryProc {
    child: Child,
    pub url: String,
    pub addr: SocketAddr,
    pub dir: TempDir,
}

impl Drop for RegistryProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RegistryProc {
    /// Starts a registry; `tls` makes it HTTPS with that PKI's certificate.
    pub async fn start(tls: Option<&Pki>, auth: Auth) -> RegistryProc {
        Self::start_on(free_port(), tls, auth).await
    }

    /// Starts a registry on a given loopback port.
    pub async fn start_on(port: u16, tls: Option<&Pki>, auth: Auth) -> RegistryProc {
        Self::start_full(port, tls, auth, None, false).await
    }

    /// Like [`RegistryProc::start_on`], with the access log on (one line
    /// per request, for counting requests).
    pub async fn start_logged(port: u16, tls: Option<&Pki>, auth: Auth) -> RegistryProc {
        Self::start_full(port, tls, auth, None, true).await
    }

    /// The registry's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// HTTP requests the registry has answered so far (needs the access
    /// log: [`RegistryProc::start_logged`]).
    pub fn requests_served(&self) -> usize {
        let re = regex::Regex::new(r#""(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/"#).expect("regex");
        re.find_iter(&self.log()).count()
    }

    /// Starts a plain registry that sends its notifications to `url`
    /// with `Authorization: <auth>`.
    pub async fn start_notifying(url: &str, auth: &str) -> RegistryProc {
        Self::start_full(free_port(), None, Auth::None, Some((url, auth)), false).await
    }

    async fn start_full(
        port: u16,
        tls: Option<&Pki>,
        auth: Auth,
        notify: Option<(&str, &str)>,
        access_log: bool,
    ) -> RegistryProc {
        let bin = registry_binary();
        let dir = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n  secret: test-secret\n",
            !access_log,
            dir.path().join("data").display()
        );
        if let Some(p) = tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                p.cert_pem.display(),
                p.key_pem.display()
            ));
        }
        match &auth {
            Auth::None => {}
            Auth::Basic { user, pass } => {
                let hash = bcrypt::hash(pass, 4).expect("bcrypt");
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, format!("{user}:{hash}\n")).expect("htpasswd");
                cfg.push_str(&format!(
                    "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                    file.display()
                ));
            }
            Auth::Token(issuer) => {
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: {}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.url, issuer.service, issuer.issuer, issuer.cert_pem.display()
                ));
            }
        }
        if let Some((url, header)) = notify {
            cfg.push_str(&format!(
                "notifications:\n  endpoints:\n    - name: relay\n      url: {url}\n      headers:\n        Authorization: [\"{header}\"]\n      timeout: 2s\n      threshold: 5\n      backoff: 500ms\n"
            ));
        }
        let cfg_path = dir.path().join("config.yml");
        std::fs::write(&cfg_path, cfg).expect("registry config");
        let log = std::fs::File::create(dir.path().join("registry.log")).expect("log");
        let child = Command::new(bin)
            .arg("serve")
            .arg(&cfg_path)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let r = RegistryProc {
            child,
            url: format!("{scheme}://{addr}"),
            addr,
            dir,
        };
        r.wait_ready().await;
        r
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "registry did not start on {}; its log:\n{}",
            self.addr,
            self.log()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }
}

/// A Docker token issuer (the `/service/token` flow Harbor uses): checks
/// Basic credentials and signs an ES256 JWT granting the requested scopes.
pub struct TokenIssuer {
    pub url: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: PathBuf,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// The scope parameters of every token request, space-joined.
    pub scopes: Arc<std::sync::Mutex<Vec<String>>>,
    _dir: TempDir,
    _task: tokio::task::JoinHandle<()>,
}

impl TokenIssuer {
    /// `host:port` of the issuer, for `token_realm_hosts`.
    pub fn realm_host(&self) -> String {
        self.url
            .split("://")
            .nth(1)
            .expect("issuer url")
            .trim_end_matches('/')
            .to_string()
    }

    /// The config line that lets a registry's credentials go to this
    /// issuer (it listens on another port than the registry).
    pub fn realm_toml(&self) -> String {
        format!("token_realm_hosts = [\"{}\"]\n", self.realm_host())
    }

    /// An issuer over plain HTTP (for plain-HTTP registries).
    pub async fn start(user: &str, pass: &str) -> Arc<TokenIssuer> {
        TokenIssuer::start_with(user, pass, None).await
    }

    /// An issuer over HTTPS with the PKI's certificate: an HTTPS registry's
    /// realm must be HTTPS, or the relay sends it no credentials.
    pub async fn start_tls(user: &str, pass: &str, pki: &Pki) -> Arc<TokenIssuer> {
        TokenIssuer::start_with(user, pass, Some(pki)).await
    }

    async fn start_with(user: &str, pass: &str, pki: Option<&Pki>) -> Arc<TokenIssuer> {
        use axum::extract::{Query, State};
        use axum::http::{HeaderMap, StatusCode};
        use axum::response::IntoResponse;
        use base64::Engine as _;

        let dir = tempfile::tempdir().expect("tempdir");
        let key = rcgen::KeyPair::generate().expect("signing key");
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).expect("signing params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "token-signer");
        let cert = params.self_signed(&key).expect("signing cert");
        let cert_pem = dir.path().join("token-signer.pem");
        std::fs::write(&cert_pem, cert.pem()).expect("write cert");
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let encoding =
            jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");

        struct St {
            user: String,
            pass: String,
            x5c: String,
            key: jsonwebtoken::EncodingKey,
            requests: Arc<std::sync::atomic::AtomicUsize>,
            scopes: Arc<std::sync::Mutex<Vec<String>>>,
        }
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scopes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let st = Arc::new(St {
            user: user.into(),
            pass: pass.into(),
            x5c,
            key: encoding,
            requests: requests.clone(),
            scopes: scopes.clone(),
        });
        async fn token(
            State(st): State<Arc<St>>,
            headers: HeaderMap,
            Query(q): Query<Vec<(String, String)>>,
        ) -> axum::response::Response {
            use base64::Engine as _;
            st.requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let asked: Vec<&str> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .map(|(_, v)| v.as_str())
                .collect();
            st.scopes.lock().expect("scopes").push(asked.join(" "));
            let expected = format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD
                    .encode(format!("{}:{}", st.user, st.pass))
            );
            let ok = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v == expected);
            if !ok {
                return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            let access: Vec<Value> = q
                .iter()
                .filter(|(k, _)| k == "scope")
                .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    let (t, n, a) = (parts.next()?, parts.next()?, parts.next()?);
                    Some(json!({"type": t, "name": n, "actions": a.split(',').collect::<Vec<_>>()}))
                })
                .collect();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("time")
                .as_secs();
            let claims = json!({
                "iss": "test-issuer", "sub": st.user, "aud": "test-registry",
                "exp": now + 300, "nbf": now - 10, "iat": now,
                "jti": format!("{now}-{}", rand::random::<u64>()),
                "access": access,
            });
            let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
            header.x5c = Some(vec![st.x5c.clone()]);
            let jwt = jsonwebtoken::encode(&header, &claims, &st.key).expect("sign");
            axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": 300}))
                .into_response()
        }
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (task, scheme) = match pki {
            None => (
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app).await;
                }),
                "http",
            ),
            Some(pki) => {
                let tls = harbor_relay::config::ListenerTls {
                    cert_file: pki.cert_pem.clone(),
                    key_file: pki.key_pem.clone(),
                    cert_pem: std::fs::read(&pki.cert_pem).expect("cert"),
                    key_pem: Secret::new(std::fs::read_to_string(&pki.key_pem).expect("key")),
                };
                let slot = Arc::new(harbor_relay::api::TlsSlot::new(
                    tls.server_config().expect("tls config"),
                ));
                (
                    tokio::spawn(async move {
                        let _ = harbor_relay::api::serve(
                            listener,
                            app,
                            Some(slot),
                            harbor_relay::api::ConnLimits::default(),
                            tokio_util::sync::CancellationToken::new(),
                        )
                        .await;
                    }),
                    "https",
                )
            }
        };
        Arc::new(TokenIssuer {
            url: format!("{scheme}://{addr}"),
            service: "test-registry".into(),
            issuer: "test-issuer".into(),
            cert_pem,
            requests,
            scopes,
            _dir: dir,
            _task: task,
        })
    }
}

/// A client for a test registry, built like the daemon builds its own.
pub fn client(url: &str, user: Option<(&str, &str)>, tls: TlsMode) -> Registry {
    Registry::new(&RegistryConfig {
        name: "test".into(),
        url: url.parse().expect("url"),
        username: user.map(|u| u.0.to_string()),
        password: user.map(|u| Secret::new(u.1)),
        tls,
        limits: Default::default(),
        create_projects: false,
        is_harbor: false,
        token_realm_hosts: token_realm_hosts(url),
    })
    .expect("client")
}

/// Test clients let a token realm on any port of the registry's host (the
/// test token issuers listen on their own port).
fn token_realm_hosts(url: &str) -> Vec<String> {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .into_iter()
        .collect()
}

/// A CA pin for [`client`].
pub fn pinned(pki: &Pki) -> TlsMode {
    TlsMode::Pinned {
        file: pki.ca_pem.clone(),
        pem: std::fs::read(&pki.ca_pem).expect("ca"),
    }
}

/// Random bytes.
pub fn random_bytes(n: usize) -> Bytes {
    let mut v = vec![0u8; n];
    rand::rng().fill_bytes(&mut v);
    Bytes::from(v)
}

/// A single-platform OCI image made of given layers.
#[derive(Clone)]
pub struct TestImage {
    pub config: Bytes,
    pub layers: Vec<Bytes>,
    pub manifest: Bytes,
    pub digest: String,
}

impl TestImage {
    pub fn random(layer_sizes: &[usize]) -> TestImage {
        Self::from_layers(
            layer_sizes.iter().map(|&n| random_bytes(n)).collect(),
            "linux",
            "amd64",
        )
    }

    pub fn from_layers(layers: Vec<Bytes>, os: &str, arch: &str) -> TestImage {
        let config = Bytes::from(
            serde_json::to_vec(&json!({
                "architecture": arch, "os": os,
                "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256_digest(l)).collect::<Vec<_>>()},
                "config": {"Labels": {"nonce": rand::random::<u64>().to_string()}},
            }))
            .expect("config json"),
        );
        let desc = |mt: &str, b: &Bytes| json!({"mediaType": mt, "digest": sha256_digest(b), "size": b.len()});
        let manifest = Bytes::from(
            serde_json::to_vec_pretty(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": desc("application/vnd.oci.image.config.v1+json", &config),
                "layers": layers.iter().map(|l| desc("application/vnd.oci.image.layer.v1.tar", l)).collect::<Vec<_>>(),
            }))
            .expect("manifest json"),
        );
        let digest = sha256_digest(&manifest);
        TestImage {
            config,
            layers,
            manifest,
            digest,
        }
    }

    pub fn blob_digests(&self) -> Vec<String> {
        std::iter::once(&self.config)
            .chain(self.layers.iter())
            .map(|b| sha256_digest(b))
            .collect()
    }

    pub async fn push(&self, reg: &Registry, repo: &str, reference: &Reference) {
        for b in std::iter::once(&self.config).chain(self.layers.iter()) {
            if reg
                .has_blob(repo, &sha256_digest(b))
                .await
                .expect("HEAD blob")
            {
                continue;
            }
            reg.put_blob_bytes(repo, b.clone())
                .await
                .expect("push blob");
        }
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("manifest");
        reg.put_manifest(repo, reference, &m)
            .await
            .expect("push manifest");
    }
}

/// A two-platform OCI index.
pub struct TestIndex {
    pub images: Vec<TestImage>,
    pub manifest: Bytes,
    pub digest: String,
}

impl TestIndex {
    pub fn random() -> TestIndex {
        let images = vec![
            TestImage::from_layers(
                vec![random_bytes(300_000), random_bytes(50_000)],
                "linux",
                "amd64",
            ),
            TestImage::from_layers(
                vec![random_bytes(280_000), random_bytes(40_000)],
                "linux",
                "arm64",
            ),
        ];
        let manifest = Bytes::from(
            serde_json::to_vec_pretty(&json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": images.iter().zip(["amd64", "arm64"]).map(|(i, arch)| json!({
                    "mediaType": OCI_MANIFEST, "digest": i.digest, "size": i.manifest.len(),
                    "platform": {"os": "linux", "architecture": arch}
                })).collect::<Vec<_>>(),
            }))
            .expect("index json"),
        );
        let digest = sha256_digest(&manifest);
        TestIndex {
            images,
            manifest,
            digest,
        }
    }

    pub async fn push(&self, reg: &Registry, repo: &str, tag: &str) {
        for i in &self.images {
            i.push(reg, repo, &Reference::Digest(i.digest.clone()))
                .await;
        }
        let m = harbor_relay::manifest::Manifest::from_bytes(self.manifest.clone(), None)
            .expect("index");
        reg.put_manifest(repo, &Reference::Tag(tag.into()), &m)
            .await
            .expect("push index");
    }
}

/// Asserts that `repo` on `reg` holds the image whole: manifest by digest,
/// every blob, and (if given) the tag resolving to the same digest.
pub async fn assert_image_on(reg: &Registry, repo: &str, image: &TestImage, tag: Option<&str>) {
    let m = reg
        .get_manifest(repo, &Reference::Digest(image.digest.clone()))
        .await
        .expect("manifest on target");
    assert_eq!(m.bytes, image.manifest, "manifest bytes differ");
    for d in image.blob_digests() {
        assert!(
            reg.has_blob(repo, &d).await.expect("HEAD blob"),
            "blob {d} missing on target"
        );
    }
    if let Some(t) = tag {
        let m = reg
            .get_manifest(repo, &Reference::Tag(t.into()))
            .await
            .expect("tag on target");
        assert_eq!(m.digest, image.digest, "tag {t} resolves elsewhere");
    }
}

/// A Harbor Default-format PUSH_ARTIFACT body.
pub fn push_event(repo_full: &str, tag: Option<&str>, digest: &str) -> Vec<u8> {
    let (ns, name) = repo_full.split_once('/').expect("project/name");
    let reference = tag.unwrap_or(digest);
    let url = match tag {
        Some(t) => format!("harbor.example.com/{repo_full}:{t}"),
        None => format!("harbor.example.com/{repo_full}@{digest}"),
    };
    serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT",
        "occur_at": 1724572800,
        "operator": "robot$library+ci",
        "event_data": {
            "resources": [{"digest": digest, "tag": reference, "resource_url": url}],
            "repository": {"date_created": 1724500000, "name": name, "namespace": ns,
                            "repo_full_name": repo_full, "repo_type": "private"}
        }
    }))
    .expect("json")
}

/// The same event in Harbor's CloudEvents format.
pub fn push_cloudevent(repo_full: &str, tag: &str, digest: &str) -> Vec<u8> {
    let (ns, name) = repo_full.split_once('/').expect("project/name");
    serde_json::to_vec(&json!({
        "specversion": "1.0",
        "id": format!("{:032x}", rand::random::<u128>()),
        "source": "/projects/1/webhook/policies/3",
        "type": "harbor.artifact.pushed",
        "datacontenttype": "application/json",
        "time": "2024-08-25T08:00:00Z",
        "operator": "robot$library+ci",
        "data": {
            "resources": [{"digest": digest, "tag": tag, "resource_url": format!("harbor.example.com/{repo_full}:{tag}")}],
            "repository": {"date_created": 1724500000, "name": name, "namespace": ns,
                            "repo_full_name": repo_full, "repo_type": "private"}
        }
    }))
    .expect("json")
}

/// A running `harbor-relay serve`.
pub struct Relay {
    child: Option<Child>,
    env: Vec<(String, String)>,
    pub url: String,
    pub dir: TempDir,
    pub config_path: PathBuf,
    http: reqwest::Client,
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub const WEBHOOK_SECRET: &str = "Bearer webhook-s3cret";
/// The `server.api_token` of every [`Relay`]; its client sends it.
pub const API_TOKEN: &str = "api-t0ken-for-tests";

impl Relay {
    /// Writes a config with `[server]` and `[store]` filled in, followed by
    /// `rest` (registries and rules), and starts the daemon.
    pub async fn start(rest: &str) -> Relay {
        Self::start_with_jobs("", rest).await
    }

    /// Like [`Relay::start`], with extra lines for the `[jobs]` section.
    pub async fn start_with_jobs(jobs: &str, rest: &str) -> Relay {
        Self::start_on(free_port(), jobs, rest).await
    }

    /// Like [`Relay::start_with_jobs`], listening on `port`.
    pub async fn start_on(port: u16, jobs: &str, rest: &str) -> Relay {
        Self::start_env(port, jobs, rest, &[]).await
    }

    /// Like [`Relay::start_on`], with extra environment variables.
    pub async fn start_env(port: u16, jobs: &str, rest: &str, env: &[(&str, &str)]) -> Relay {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nwebhook_auth = \"{WEBHOOK_SECRET}\"\napi_token = \"{API_TOKEN}\"\n\n[store]\npath = \"{}\"\n\n[jobs]\n{}{jobs}\n{rest}",
            dir.path().join("store").display(),
            if jobs.contains("shutdown_grace") {
                ""
            } else {
                "shutdown_grace = \"5s\"\n"
            }
        );
        let config_path = dir.path().join("relay.toml");
        std::fs::write(&config_path, config).expect("config");
        let mut r = Relay {
            child: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            url: format!("http://127.0.0.1:{port}"),
            dir,
            config_path,
            http: reqwest::Client::builder()
                .default_headers(
                    [(
                        reqwest::header::AUTHORIZATION,
                        format!("Bearer {API_TOKEN}").parse().expect("header"),
                    )]
                    .into_iter()
                    .collect(),
                )
                .build()
                .expect("client"),
        };
        r.spawn().await;
        r
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("relay.log")
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .env("RUST_LOG", "info,harbor_relay=debug")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start harbor-relay");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = self.http.get(format!("{}/healthz", self.url)).send().await
                && r.status().is_success()
            {
                return;
            }
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("harbor-relay exited with {status}; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("harbor-relay did not become healthy; log:\n{}", self.logs());
    }

    /// Peak resident memory of the daemon so far (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `signal` (e.g. "HUP") to the daemon.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let ok = Command::new("kill")
            .args([format!("-{signal}"), pid])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{signal}");
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM, then wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let pid = c.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = c.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    /// POSTs a webhook; returns status and JSON body.
    pub async fn webhook(
        &self,
        body: Vec<u8>,
        content_type: &str,
        auth: Option<&str>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/harbor", self.url))
            .header("content-type", content_type)
            .body(body);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.expect("POST webhook");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    /// Sends a Harbor webhook (JSON) with the right secret; returns status
    /// and JSON body, whatever they are.
    pub async fn deliver(&self, body: Vec<u8>) -> (u16, Value) {
        self.webhook(body, "application/json", Some(WEBHOOK_SECRET))
            .await
    }

    /// Sends a push webhook with the right secret and returns the job ids.
    pub async fn push(&self, body: Vec<u8>) -> Vec<u64> {
        let (status, v) = self.deliver(body).await;
        assert_eq!(status, 202, "webhook answer: {v}");
        v["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .map(|j| j["id"].as_u64().expect("id"))
            .collect()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn job(&self, id: u64) -> Value {
        let (status, v) = self.get(&format!("/api/v1/jobs/{id}")).await;
        assert_eq!(status, 200, "{v}");
        v
    }

    /// Waits until job `id` has finished, and returns it.
    pub async fn wait_job(&self, id: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let j = self.job(id).await;
            if j["state"] == "succeeded" || j["state"] == "failed" {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} did not finish: {j}\nlog:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until job `id` is in `state`.
    pub async fn wait_state(&self, id: u64, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let j = self.job(id).await;
            if j["state"] == state {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} never became {state}: {j}\nlog:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for the job and asserts it succeeded.
    pub async fn wait_success(&self, id: u64) -> Value {
        let j = self.wait_job(id).await;
        assert_eq!(
            j["state"],
            "succeeded",
            "job failed: {j}\nlog:\n{}",
            self.logs()
        );
        j
    }
}

/// Config text for a registry entry.
pub fn registry_toml(name: &str, url: &str, user: Option<(&str, &str)>, tls: &str) -> String {
    let mut s = format!("[registries.{name}]\nurl = \"{url}\"\n");
    if let Some((u, p)) = user {
        s.push_str(&format!("username = \"{u}\"\npassword = \"{p}\"\n"));
    }
    if !tls.is_empty() {
        s.push_str(&format!("tls = {tls}\n"));
    }
    s.push('\n');
    s
}

pub const RULE: &str = "[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n";

/// A TCP proxy that forwards to `upstream`, sending the upstream's bytes
/// back at no more than `bytes_per_sec`.
pub struct SlowProxy {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlowProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SlowProxy {
    pub async fn start(upstream: SocketAddr, bytes_per_sec: u64) -> SlowProxy {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(up) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut ur, mut uw) = up.into_split();
                    let to_up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut cr, &mut uw).await;
                        let _ = uw.shutdown().await;
                    });
                    let mut buf = vec![0u8; 16 * 1024];
                    let start = Instant::now();
                    let mut sent: u64 = 0;
                    loop {
                        let n = match ur.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => n,
                        };
                        if cw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        sent += n as u64;
                        let due = Duration::from_secs_f64(sent as f64 / bytes_per_sec as f64);
                        if let Some(wait) = due.checked_sub(start.elapsed()) {
                            tokio::time::sleep(wait).await;
                        }
                    }
                    let _ = cw.shutdown().await;
                    to_up.abort();
                });
            }
        });
        SlowProxy { addr, task }
    }
}

/// The target's user name in [`World`].
pub const USER: &str = "relay";
/// The target's password in [`World`].
pub const PASS: &str = "target-pa55word";

/// A plain-HTTP source registry and a TLS target with basic auth, whose
/// certificate comes from a CA made for the test.
pub struct World {
    pub source: RegistryProc,
    pub target: RegistryProc,
    _pki_dir: tempfile::TempDir,
    pub pki: Pki,
    pub src: Registry,
    pub dst: Registry,
}

impl World {
    pub async fn new() -> World {
        Self::with_access_logs(false).await
    }

    /// Like [`World::new`], with both registries' access logs on, for
    /// [`RegistryProc::requests_served`].
    pub async fn with_access_logs(on: bool) -> World {
        let pki_dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(pki_dir.path());
        let source = RegistryProc::start_full(free_port(), None, Auth::None, None, on).await;
        let target = RegistryProc::start_full(
            free_port(),
            Some(&pki),
            Auth::Basic {
                user: USER.into(),
                pass: PASS.into(),
            },
            None,
            on,
        )
        .await;
        let src = client(&source.url, None, TlsMode::System);
        let dst = client(&target.url, Some((USER, PASS)), pinned(&pki));
        World {
            source,
            target,
            _pki_dir: pki_dir,
            pki,
            src,
            dst,
        }
    }

    /// The two registries; the target pinned to the test CA.
    pub fn registries(&self) -> String {
        format!(
            "{}{}",
            registry_toml("external", &self.source.url, None, ""),
            self.target_toml()
        )
    }

    /// The target alone, as `integrated`, pinned to the test CA (for tests
    /// that put their own source in front of it).
    pub fn target_toml(&self) -> String {
        registry_toml(
            "integrated",
            &self.target.url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", self.pki.ca_pem.display()),
        )
    }

    /// Registries and one rule; the target pinned to the test CA.
    pub fn config(&self) -> String {
        self.config_with_tls(&format!(
            "{{ ca_file = \"{}\" }}",
            self.pki.ca_pem.display()
        ))
    }

    pub fn config_with_tls(&self, tls: &str) -> String {
        format!(
            "{}{}{RULE}",
            registry_toml("external", &self.source.url, None, ""),
            registry_toml("integrated", &self.target.url, Some((USER, PASS)), tls),
        )
    }
}
