//! A source, a TLS target and their clients: the usual set-up of a test.

use harbor_relay::config::TlsMode;
use harbor_relay::registry::Registry;

use std::sync::Arc;

use tempfile::TempDir;

use super::*;

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

/// A TLS target behind Docker token auth (the flow Harbor uses), with its
/// HTTPS token issuer and a client for it.
pub struct TokenTarget {
    _pki_dir: TempDir,
    pub pki: Pki,
    pub issuer: Arc<TokenIssuer>,
    pub target: RegistryProc,
    pub dst: Registry,
}

impl TokenTarget {
    pub async fn start() -> TokenTarget {
        let pki_dir = tempfile::tempdir().expect("tempdir");
        let pki = Pki::new(pki_dir.path());
        let issuer = TokenIssuer::start_tls(USER, PASS, &pki).await;
        let target = RegistryProc::start(Some(&pki), Auth::Token(issuer.clone())).await;
        let dst = client(&target.url, Some((USER, PASS)), pinned(&pki));
        TokenTarget {
            _pki_dir: pki_dir,
            pki,
            issuer,
            target,
            dst,
        }
    }

    /// Its `[registries.integrated]` entry: CA pinned, the issuer's host
    /// allowed as its token realm.
    pub fn toml(&self) -> String {
        registry_toml(
            "integrated",
            &self.target.url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", self.pki.ca_pem.display()),
        ) + &self.issuer.realm_toml()
    }
}
