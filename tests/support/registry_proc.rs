//! Real `docker-registry` processes (CNCF distribution, what Harbor embeds): plain or TLS, no auth, htpasswd or token auth; clients for them; their config text.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use harbor_relay::config::{RegistryConfig, Secret, TlsMode};
use harbor_relay::registry::Registry;
use tempfile::TempDir;

use super::*;

/// A registry's own directory (storage, config, htpasswd): under
/// `BENCH_REGISTRY_DIR` when set, else the temp dir. The bench sets it to
/// tmpfs: distribution `fsync`s every blob it writes
/// (`registry/storage/driver/filesystem/driver.go`, `fileWriter.Commit`),
/// and a floor computed from the registries' CPU counts none of that wait.
/// (Not `REGISTRY_*`: distribution reads every such variable it inherits
/// as an override of its config file.)
fn storage_dir() -> TempDir {
    match std::env::var_os("BENCH_REGISTRY_DIR") {
        Some(root) => tempfile::tempdir_in(&root)
            .unwrap_or_else(|e| panic!("tempdir in BENCH_REGISTRY_DIR={root:?}: {e}")),
        None => tempfile::tempdir().expect("tempdir"),
    }
}

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

/// How a test registry authenticates.
pub enum Auth {
    None,
    Basic {
        user: String,
        pass: String,
    },
    Token(Arc<TokenIssuer>),
    /// Token auth whose realm clients reach at another address (the
    /// issuer behind a proxy): the base URL to announce.
    TokenVia(Arc<TokenIssuer>, String),
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
    /// [`RegistryProc::requests_served`] once the access log has stopped
    /// growing (the registry writes it after answering).
    pub async fn settled_requests(&self) -> usize {
        super::settled(|| self.requests_served()).await
    }

    pub fn requests_served(&self) -> usize {
        let re = regex::Regex::new(r#""(GET|HEAD|PUT|POST|PATCH|DELETE) /v2/"#).expect("regex");
        re.find_iter(&self.log()).count()
    }

    /// Starts a plain registry that sends its notifications to `url`
    /// with `Authorization: <auth>`.
    pub async fn start_notifying(url: &str, auth: &str) -> RegistryProc {
        Self::start_full(free_port(), None, Auth::None, Some((url, auth)), false).await
    }

    pub(super) async fn start_full(
        port: u16,
        tls: Option<&Pki>,
        auth: Auth,
        notify: Option<(&str, &str)>,
        access_log: bool,
    ) -> RegistryProc {
        let bin = registry_binary();
        let dir = storage_dir();
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
            Auth::Token(issuer) | Auth::TokenVia(issuer, _) => {
                let realm = match &auth {
                    Auth::TokenVia(_, via) => via.as_str(),
                    _ => issuer.url.as_str(),
                };
                cfg.push_str(&format!(
                    "auth:\n  token:\n    realm: {realm}/token\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                    issuer.service, issuer.issuer, issuer.cert_pem.display()
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

    /// Stops the registry (SIGKILL), keeping its storage, for a test of
    /// a registry that goes away and comes back ([`RegistryProc::restart`]).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the stopped registry again on the same port, storage and
    /// config; its access log goes on where it was.
    pub async fn restart(&mut self) {
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("log");
        self.child = Command::new(registry_binary())
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let wait = Deadline::new(Duration::from_secs(15));
        while wait.open() {
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
        password_note: None,
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
