//! A Docker token issuer (the `/service/token` flow Harbor uses).

use std::path::PathBuf;
use std::sync::Arc;

use harbor_relay::config::Secret;
use serde_json::{Value, json};
use tempfile::TempDir;

use super::*;

/// A Docker token issuer (the `/service/token` flow Harbor uses): checks
/// Basic credentials and signs an ES256 JWT, granting as Harbor's token
/// service does: every action on each repository asked for, and, to
/// credentials it does not accept, an anonymous token granting nothing.
pub struct TokenIssuer {
    pub url: String,
    pub service: String,
    pub issuer: String,
    pub cert_pem: PathBuf,
    pub requests: Arc<std::sync::atomic::AtomicUsize>,
    /// The scope parameters of every token request, space-joined.
    pub scopes: Arc<std::sync::Mutex<Vec<String>>>,
    /// The `expires_in` of the tokens it gives (Harbor's 1800 s unless set).
    pub expires_in: Arc<std::sync::atomic::AtomicU64>,
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
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert_pem, x5c, key) = signing_key(&dir);
        let requests = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scopes = Arc::new(std::sync::Mutex::new(Vec::new()));
        let expires_in = Arc::new(std::sync::atomic::AtomicU64::new(1800));
        let st = Arc::new(IssuerState {
            expires_in: expires_in.clone(),
            user: user.into(),
            pass: pass.into(),
            x5c,
            key,
            requests: requests.clone(),
            scopes: scopes.clone(),
        });
        let app = axum::Router::new()
            .route("/token", axum::routing::get(token))
            .with_state(st);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (task, scheme) = serve(listener, app, pki);
        Arc::new(TokenIssuer {
            url: format!("{scheme}://{addr}"),
            service: "test-registry".into(),
            issuer: "test-issuer".into(),
            cert_pem,
            requests,
            scopes,
            expires_in,
            _dir: dir,
            _task: task,
        })
    }
}

/// The issuer's ES256 signing key and its self-signed certificate: the
/// certificate's file (for the registry's `rootcertbundle`), its DER in
/// base64 (the tokens' `x5c`), and the key.
fn signing_key(dir: &TempDir) -> (PathBuf, String, jsonwebtoken::EncodingKey) {
    use base64::Engine as _;
    let key = rcgen::KeyPair::generate().expect("signing key");
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("signing params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "token-signer");
    let cert = params.self_signed(&key).expect("signing cert");
    let cert_pem = dir.path().join("token-signer.pem");
    std::fs::write(&cert_pem, cert.pem()).expect("write cert");
    let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
    let encoding =
        jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key");
    (cert_pem, x5c, encoding)
}

/// What the `/token` handler reads and counts.
struct IssuerState {
    user: String,
    pass: String,
    x5c: String,
    key: jsonwebtoken::EncodingKey,
    requests: Arc<std::sync::atomic::AtomicUsize>,
    scopes: Arc<std::sync::Mutex<Vec<String>>>,
    expires_in: Arc<std::sync::atomic::AtomicU64>,
}

/// `GET /token?scope=…`: a signed token granting what [`granted`] says.
async fn token(
    axum::extract::State(st): axum::extract::State<Arc<IssuerState>>,
    headers: axum::http::HeaderMap,
    axum::extract::Query(q): axum::extract::Query<Vec<(String, String)>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
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
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", st.user, st.pass))
    );
    let ok = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == expected);
    // As Harbor's token service (`src/core/service/token/creator.go`):
    // credentials it does not accept make the caller anonymous, which is a
    // 401 only without a scope (`docker login`).
    if !ok && asked.is_empty() {
        return (axum::http::StatusCode::UNAUTHORIZED, "bad credentials").into_response();
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("time")
        .as_secs();
    // `MakeToken` (`authutils.go`): 30 minutes by default.
    let expires_in = st.expires_in.load(std::sync::atomic::Ordering::Relaxed);
    let sub = if ok { st.user.as_str() } else { "" };
    let claims = json!({
        "iss": "test-issuer", "sub": sub, "aud": "test-registry",
        "exp": now + expires_in, "nbf": now - 10, "iat": now,
        "jti": format!("{now}-{}", rand::random::<u64>()),
        "access": granted(ok, &asked),
    });
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.x5c = Some(vec![st.x5c.clone()]);
    let jwt = jsonwebtoken::encode(&header, &claims, &st.key).expect("sign");
    axum::Json(json!({"token": jwt, "access_token": jwt, "expires_in": expires_in})).into_response()
}

/// The token's `access` claim, as Harbor's token service grants: each
/// repository scope gets every action the account holds (all here; none
/// for anonymous, `ok == false`), whatever was asked.
fn granted(ok: bool, asked: &[&str]) -> Vec<Value> {
    asked
        .iter()
        .flat_map(|v| v.split(' '))
        .filter_map(|s| {
            let mut parts = s.splitn(3, ':');
            let (t, n, a) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<&str> = match (ok, t) {
                (false, _) => Vec::new(),
                (true, "repository") => vec!["pull", "push", "delete"],
                (true, _) => a.split(',').collect(),
            };
            Some(json!({"type": t, "name": n, "actions": actions}))
        })
        .collect()
}

/// Serves the issuer over plain HTTP, or over HTTPS with the PKI's
/// certificate through the relay's own listener.
/// Serves `app` on `listener`, over TLS with the PKI's certificate if
/// given (through the relay's own listener); returns the task and scheme.
pub fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    pki: Option<&Pki>,
) -> (tokio::task::JoinHandle<()>, &'static str) {
    let Some(pki) = pki else {
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        return (task, "http");
    };
    let tls = harbor_relay::config::ListenerTls {
        cert_file: pki.cert_pem.clone(),
        key_file: pki.key_pem.clone(),
        cert_pem: std::fs::read(&pki.cert_pem).expect("cert"),
        key_pem: Secret::new(std::fs::read_to_string(&pki.key_pem).expect("key")),
    };
    let slot = Arc::new(harbor_relay::api::TlsSlot::new(
        tls.server_config().expect("tls config"),
    ));
    let task = tokio::spawn(async move {
        let _ = harbor_relay::api::serve(
            listener,
            app,
            Some(slot),
            harbor_relay::api::ConnLimits::default(),
            tokio_util::sync::CancellationToken::new(),
        )
        .await;
    });
    (task, "https")
}
