//! Loading `[store]`: the embedded store's `path`, or a PostgreSQL `url`
//! shared by several relays (its password inline, in `password` or in
//! `password_file`, its TLS per `sslmode` and `ca_file`, its `lease`).

use std::path::PathBuf;

use super::raw::*;
use super::*;

impl Loader<'_> {
    /// `[store]`: `path` (sled) or `url` (PostgreSQL, with its password
    /// inline in the URL, or as `password`/`password_file`).
    pub(super) fn store(&self, raw: Option<RawStore>) -> Result<StoreConfig, ConfigError> {
        let raw = raw.ok_or_else(|| {
            self.invalid(
                "store.path",
                "missing: say where the job store lives (or `store.url` for PostgreSQL)",
            )
        })?;
        match (raw.path, raw.url) {
            (Some(_), Some(_)) => Err(self.invalid(
                "store.url",
                "set either `path` (the embedded store) or `url` (PostgreSQL), not both",
            )),
            (None, None) => Err(self.invalid(
                "store.path",
                "missing: say where the job store lives (or `store.url` for PostgreSQL)",
            )),
            (Some(path), None) => {
                let path = self.expand("store.path", &path)?;
                if path.is_empty() {
                    return Err(self.invalid("store.path", "is empty"));
                }
                Ok(StoreConfig {
                    path: PathBuf::from(path),
                    postgres: None,
                })
            }
            (None, Some(url)) => {
                let mut postgres =
                    self.postgres(url, raw.password, raw.password_file, raw.lease)?;
                if let Some(f) = raw.ca_file {
                    let path = self.expand("store.ca_file", &f)?;
                    let pem = std::fs::read(&path).map_err(|e| {
                        self.invalid("store.ca_file", format!("cannot read {path}: {e}"))
                    })?;
                    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                        return Err(self
                            .invalid("store.ca_file", format!("{path} holds no PEM certificate")));
                    }
                    postgres.ca_pem = Some(pem);
                }
                Ok(StoreConfig {
                    path: PathBuf::new(),
                    postgres: Some(postgres),
                })
            }
        }
    }

    fn postgres(
        &self,
        url: String,
        password: Option<String>,
        password_file: Option<String>,
        lease: Option<String>,
    ) -> Result<crate::config::PostgresStore, ConfigError> {
        let expanded = self.expand("store.url", &url)?;
        let mut connect: tokio_postgres::Config = expanded.parse().map_err(|e| {
            self.invalid(
                "store.url",
                format!("not a PostgreSQL URL ({e}); write postgres://USER@HOST:PORT/DBNAME"),
            )
        })?;
        if !expanded.contains("sslmode") {
            // libpq's default, `prefer`, falls back to the clear when the
            // server (or whoever answers in its place) declines TLS: the
            // default here is TLS with the certificate and host checked.
            connect.ssl_mode(tokio_postgres::config::SslMode::Require);
        }
        if connect.get_password().is_some() && !url.contains("${") {
            self.inline.borrow_mut().push("store.url".to_string());
        }
        if let Some(p) = self.secret("store.password", password, password_file)? {
            if connect.get_password().is_some() {
                return Err(
                    self.invalid("store.password", "the URL has a password already; keep one")
                );
            }
            connect.password(p.expose());
        }
        if connect.get_user().is_none() {
            return Err(self.invalid(
                "store.url",
                "names no user: write postgres://USER@HOST/DBNAME",
            ));
        }
        let lease = self
            .duration("store.lease", lease)?
            .unwrap_or(std::time::Duration::from_secs(30));
        if lease < std::time::Duration::from_secs(3) {
            return Err(self.invalid(
                "store.lease",
                "must be at least 3s (it is renewed every third)",
            ));
        }
        let shown = format!(
            "{}/{}",
            connect
                .get_hosts()
                .first()
                .map(|h| match h {
                    tokio_postgres::config::Host::Tcp(h) => h.clone(),
                    tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                })
                .unwrap_or_default(),
            connect.get_dbname().unwrap_or("")
        );
        Ok(crate::config::PostgresStore {
            connect,
            lease,
            shown,
            ca_pem: None,
        })
    }
}
