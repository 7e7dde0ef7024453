//! Validation: from [`super::raw`] to [`super::types`], one message per
//! problem naming the file, the key and what to change.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

/// Turns the file as written into the validated configuration, with
/// errors that name the file and the key.
pub(super) struct Loader<'a> {
    pub(super) file: &'a Path,
    pub(super) env: &'a dyn Fn(&str) -> Option<String>,
    pub(super) inline: std::cell::RefCell<Vec<String>>,
    /// Leave every secret out (no environment variable or file read for
    /// one): for commands that need the rules, not the credentials.
    pub(super) without_secrets: bool,
    /// Remarks about secrets read from files, by key (e.g. trailing
    /// whitespace), for the error a refused login gets.
    pub(super) notes: std::cell::RefCell<BTreeMap<String, String>>,
}

impl Loader<'_> {
    pub(super) fn invalid(
        &self,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }

    /// Replaces every `${VAR}` from the environment; a missing variable is
    /// an error naming the key, not a silent empty string.
    pub(super) fn expand(&self, key: &str, value: &str) -> Result<String, ConfigError> {
        let mut out = String::with_capacity(value.len());
        let mut rest = value;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| self.invalid(key, "unclosed `${` (write `${NAME}`)"))?;
            let name = &after[..end];
            let valid =
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(self.invalid(key, format!("`${{{name}}}` is not a variable name")));
            }
            let v = (self.env)(name).ok_or_else(|| {
                self.invalid(
                    key,
                    format!("environment variable {name} is not set (used as ${{{name}}})"),
                )
            })?;
            out.push_str(&v);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// A secret given inline (`KEY`, usually `${VAR}`) or read from a file
    /// (`KEY_file`, e.g. `${CREDENTIALS_DIRECTORY}/name` under systemd's
    /// `LoadCredential=`), trailing newline removed; never both, never empty.
    pub(super) fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        file: Option<String>,
    ) -> Result<Option<Secret>, ConfigError> {
        if self.without_secrets {
            return Ok(None);
        }
        let file_key = format!("{key}_file");
        let name = key.rsplit('.').next().unwrap_or(key);
        let value = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(
                    key,
                    format!("set either `{name}` or `{name}_file`, not both"),
                ));
            }
            (Some(v), None) => {
                if !v.contains("${") {
                    self.inline.borrow_mut().push(key.to_string());
                }
                let v = self.expand(key, &v)?;
                if v.is_empty() {
                    return Err(self.invalid(key, "is empty; remove the key instead"));
                }
                v
            }
            (None, Some(f)) => {
                let path = self.expand(&file_key, &f)?;
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| self.invalid(&file_key, format!("cannot read {path}: {e}")))?;
                let v = text.trim_end_matches(['\n', '\r']).to_string();
                let one_newline_less = text.strip_suffix('\n').unwrap_or(&text);
                if one_newline_less.ends_with(char::is_whitespace) {
                    self.notes.borrow_mut().insert(
                        key.to_string(),
                        format!("{path} ends in whitespace other than one newline (trailing newlines and carriage returns are dropped, spaces and tabs are kept)"),
                    );
                }
                if v.is_empty() {
                    return Err(self.invalid(&file_key, format!("{path} is empty")));
                }
                v
            }
            (None, None) => return Ok(None),
        };
        Ok(Some(Secret::new(value)))
    }

    /// `[store]`: `path` (sled) or `url` (PostgreSQL, with its password
    /// inline in the URL, or as `password`/`password_file`).
    fn store(&self, raw: Option<RawStore>) -> Result<StoreConfig, ConfigError> {
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
        let lease = match lease {
            None => std::time::Duration::from_secs(30),
            Some(l) => humantime::parse_duration(&l)
                .map_err(|e| self.invalid("store.lease", format!("`{l}`: {e} (e.g. \"30s\")")))?,
        };
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

    pub(super) fn expand_opt(
        &self,
        key: &str,
        value: Option<String>,
    ) -> Result<Option<String>, ConfigError> {
        value.map(|v| self.expand(key, &v)).transpose()
    }

    fn log(&self, raw: RawLog) -> Result<LogConfig, ConfigError> {
        if let Some(level) = &raw.level
            && let Err(e) = tracing_subscriber::EnvFilter::builder().parse(level)
        {
            return Err(self.invalid(
                "log.level",
                format!(
                    "`{level}` is not a log filter like `info` or `info,harbor_relay=debug`: {e}"
                ),
            ));
        }
        let json = match raw.format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(self.invalid(
                    "log.format",
                    format!("`{other}` is not a format; use \"text\" or \"json\""),
                ));
            }
        };
        Ok(LogConfig {
            level: raw.level,
            json,
        })
    }

    pub(super) fn build(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let log = self.log(raw.log)?;
        let store = self.store(raw.store)?;
        let jobs = self.jobs(raw.jobs)?;
        let mut registries = BTreeMap::new();
        for (name, r) in raw.registries {
            let reg = self.registry(&name, r)?;
            registries.insert(name, reg);
        }
        let mut rules: Vec<RuleConfig> = Vec::new();
        for (i, r) in raw.rules.into_iter().enumerate() {
            let rule = self.rule(i, r, &registries)?;
            if rules.iter().any(|o| o.name == rule.name) {
                return Err(self.invalid(
                    format!("rules[{i}].name"),
                    format!(
                        "duplicate rule name '{}'; give each rule its own `name`",
                        rule.name
                    ),
                ));
            }
            rules.push(rule);
        }
        Ok(Config {
            file: self.file.to_path_buf(),
            server,
            store,
            log,
            inline_secrets: self.inline.take(),
            jobs,
            registries,
            rules,
        })
    }

    /// `[server]`.
    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let listen_text = self
            .expand_opt("server.listen", raw.listen)?
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            self.invalid(
                "server.listen",
                format!("`{listen_text}` is not an address like 0.0.0.0:8080"),
            )
        })?;
        let metrics_listen = self
            .expand_opt("server.metrics_listen", raw.metrics_listen)?
            .map(|m| {
                m.parse::<SocketAddr>().map_err(|_| {
                    self.invalid(
                        "server.metrics_listen",
                        format!("`{m}` is not an address like 127.0.0.1:9090"),
                    )
                })
            })
            .transpose()?;
        if metrics_listen == Some(listen) {
            return Err(self.invalid(
                "server.metrics_listen",
                "is the same as server.listen; remove it to serve metrics on the main listener",
            ));
        }
        let max_connections_per_client = raw.max_connections_per_client.unwrap_or(128);
        if max_connections_per_client < 1 {
            return Err(self.invalid("server.max_connections_per_client", "must be at least 1"));
        }
        Ok(ServerConfig {
            listen,
            webhook_auth: self.secret(
                "server.webhook_auth",
                raw.webhook_auth,
                raw.webhook_auth_file,
            )?,
            api_token: self.secret("server.api_token", raw.api_token, raw.api_token_file)?,
            metrics_listen,
            webhook_rate_limit: raw.webhook_rate_limit.unwrap_or(1000),
            max_connections_per_client,
            tls: self.listener_tls(raw.tls_cert, raw.tls_key)?,
        })
    }

    /// `server.tls_cert` and `server.tls_key`: both read now, or neither.
    fn listener_tls(
        &self,
        cert: Option<String>,
        key: Option<String>,
    ) -> Result<Option<ListenerTls>, ConfigError> {
        let tls = match (cert, key) {
            (None, None) => None,
            (Some(cert), Some(key)) => {
                let cert_file = PathBuf::from(self.expand("server.tls_cert", &cert)?);
                let key_file = PathBuf::from(self.expand("server.tls_key", &key)?);
                let cert_pem = std::fs::read(&cert_file).map_err(|e| {
                    self.invalid(
                        "server.tls_cert",
                        format!("cannot read {}: {e}", cert_file.display()),
                    )
                })?;
                let key_pem = std::fs::read_to_string(&key_file).map_err(|e| {
                    self.invalid(
                        "server.tls_key",
                        format!("cannot read {}: {e}", key_file.display()),
                    )
                })?;
                let tls = ListenerTls {
                    cert_file,
                    key_file,
                    cert_pem,
                    key_pem: Secret::new(key_pem),
                };
                tls.server_config()
                    .map_err(|e| self.invalid("server.tls_cert", e))?;
                Some(tls)
            }
            _ => {
                return Err(self.invalid(
                    "server.tls_cert",
                    "set both tls_cert and tls_key (PEM files), or neither",
                ));
            }
        };
        Ok(tls)
    }

    fn jobs(&self, raw: RawJobs) -> Result<JobsConfig, ConfigError> {
        let workers = raw.workers.unwrap_or(4);
        if !(1..=256).contains(&workers) {
            return Err(self.invalid("jobs.workers", "must be between 1 and 256"));
        }
        let blob_concurrency = raw.blob_concurrency.unwrap_or(4);
        if !(1..=64).contains(&blob_concurrency) {
            return Err(self.invalid("jobs.blob_concurrency", "must be between 1 and 64"));
        }
        let duration = |key: &str, value: Option<String>, default: Duration| match value {
            None => Ok(default),
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                self.invalid(
                    format!("jobs.{key}"),
                    format!("`{text}` is not a duration like \"30s\", \"10m\" or \"7d\": {e}"),
                )
            }),
        };
        let shutdown_grace = duration(
            "shutdown_grace",
            raw.shutdown_grace,
            Duration::from_secs(30),
        )?;
        let max_attempts = raw.max_attempts.unwrap_or(8);
        if !(1..=1000).contains(&max_attempts) {
            return Err(self.invalid("jobs.max_attempts", "must be between 1 and 1000"));
        }
        let retry_initial_delay = duration(
            "retry_initial_delay",
            raw.retry_initial_delay,
            Duration::from_secs(10),
        )?;
        let retry_max_delay = duration(
            "retry_max_delay",
            raw.retry_max_delay,
            Duration::from_secs(15 * 60),
        )?;
        if retry_max_delay < retry_initial_delay {
            return Err(self.invalid(
                "jobs.retry_max_delay",
                "is shorter than jobs.retry_initial_delay",
            ));
        }
        let retention = duration(
            "retention",
            raw.retention,
            Duration::from_secs(7 * 24 * 3600),
        )?;
        let coalesce_window = duration(
            "coalesce_window",
            raw.coalesce_window,
            Duration::from_secs(600),
        )?;
        let max_queued = raw.max_queued.unwrap_or(100_000);
        if max_queued < 1 {
            return Err(self.invalid("jobs.max_queued", "must be at least 1"));
        }
        Ok(JobsConfig {
            max_queued,
            workers,
            blob_concurrency,
            shutdown_grace,
            max_attempts,
            retry_initial_delay,
            retry_max_delay,
            retention,
            coalesce_window,
        })
    }

    fn rule(
        &self,
        i: usize,
        r: RawRule,
        registries: &BTreeMap<String, RegistryConfig>,
    ) -> Result<RuleConfig, ConfigError> {
        let key = |k: &str| format!("rules[{i}].{k}");
        for (k, v) in [("from", &r.from), ("to", &r.to)] {
            if !registries.contains_key(v) {
                let known: Vec<&str> = registries.keys().map(String::as_str).collect();
                return Err(self.invalid(
                    key(k),
                    format!(
                        "unknown registry '{v}' (defined: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                ));
            }
        }
        let name = match r.name {
            Some(n) => self.expand(&key("name"), &n)?,
            None => format!("{}-to-{}", r.from, r.to),
        };
        if name.is_empty() {
            return Err(self.invalid(key("name"), "is empty"));
        }
        let list = |k: &str,
                    v: Option<Vec<String>>,
                    default: &[&str]|
         -> Result<Vec<String>, ConfigError> {
            let v = v.unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
            let v = v
                .iter()
                .map(|p| self.expand(&key(k), p))
                .collect::<Result<Vec<_>, _>>()?;
            for p in &v {
                globset::Glob::new(p)
                    .map_err(|e| self.invalid(key(k), format!("`{p}` is not a glob: {e}")))?;
            }
            Ok(v)
        };
        let projects = list("projects", r.projects, &["**"])?;
        if let Some(p) = projects.iter().find(|p| p.contains('/')) {
            return Err(self.invalid(
                key("projects"),
                format!(
                    "`{p}`: a project name has no '/'; to pick repositories inside a project, use `repositories` (e.g. projects = [\"{}\"], repositories = [\"{}\"])",
                    p.split('/').next().unwrap_or(p),
                    p.split_once('/').map(|(_, r)| if r.is_empty() { "**" } else { r }).unwrap_or("**")
                ),
            ));
        }
        let tags = list("tags", r.tags, &["**"])?;
        let exclude_tags = list("exclude_tags", r.exclude_tags, &[])?;
        let repositories = list("repositories", r.repositories, &["**"])?;
        let labels = self.labels(&key("labels"), r.labels.clone(), &registries[&r.from])?;
        let target_project = self.target_project(&key("target_project"), r.target_project)?;
        Ok(RuleConfig {
            name,
            from: r.from,
            to: r.to,
            projects,
            repositories,
            target_project,
            flatten: r.flatten.unwrap_or(0),
            tags,
            exclude_tags,
            overwrite: r.overwrite.unwrap_or(true),
            replicate_deletes: r.replicate_deletes.unwrap_or(false),
            referrers: r.referrers.unwrap_or(true),
            platforms: self.platforms(&key("platforms"), r.platforms)?,
            artifact_types: self.artifact_types(&key("artifact_types"), r.artifact_types)?,
            labels,
            prune: r.prune.unwrap_or(false),
            reconcile_interval: self
                .reconcile_interval(&key("reconcile_interval"), r.reconcile_interval)?,
        })
    }

    /// `rules[].target_project`: a project name, or a path template with
    /// `{project}` and `{repository}`.
    fn target_project(&self, key: &str, raw: Option<String>) -> Result<String, ConfigError> {
        let target_project = self
            .expand_opt(key, raw)?
            .unwrap_or_else(|| "{project}".to_string());
        let whole_path = target_project.contains("{repository}");
        let probe = target_project
            .replace("{project}", "project")
            .replace("{repository}", "repo");
        if probe.contains('{') || probe.contains('}') {
            return Err(self.invalid(
                key,
                format!("`{target_project}`: the placeholders are {{project}} and {{repository}}"),
            ));
        }
        if !crate::reference::is_valid_repository(&probe) || (probe.contains('/') && !whole_path) {
            return Err(self.invalid(
                key,
                format!(
                    "`{target_project}` is not a valid project name (lowercase letters, digits, '.', '_', '-')"
                ),
            ));
        }
        Ok(target_project)
    }

    /// `rules[].platforms`: `os/arch[/variant]` each, not empty.
    fn platforms(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Option<Vec<String>>, ConfigError> {
        let Some(list) = raw else {
            return Ok(None);
        };
        for p in &list {
            let parts: Vec<&str> = p.split('/').collect();
            if !(2..=3).contains(&parts.len()) || parts.iter().any(|x| x.is_empty()) {
                return Err(self.invalid(
                    key,
                    format!("`{p}` is not os/architecture[/variant], e.g. linux/amd64"),
                ));
            }
        }
        if list.is_empty() {
            return Err(self.invalid(key, "is empty; remove it to copy every platform"));
        }
        Ok(Some(list))
    }

    /// `rules[].labels`: Harbor label names, for a Harbor source only.
    fn labels(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
        from: &RegistryConfig,
    ) -> Result<Vec<String>, ConfigError> {
        let list = raw.unwrap_or_default();
        if !list.is_empty() && !from.is_harbor {
            return Err(self.invalid(
                key,
                format!(
                    "labels are Harbor's: the source registry '{}' needs kind = \"harbor\"",
                    from.name
                ),
            ));
        }
        if list.iter().any(|l| l.trim().is_empty()) {
            return Err(self.invalid(key, "holds an empty label name"));
        }
        Ok(list)
    }

    /// `rules[].artifact_types`: Harbor type names (lowercase) or `*`.
    fn artifact_types(
        &self,
        key: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let list = raw.unwrap_or_else(|| vec!["*".into()]);
        if list.is_empty() {
            return Err(self.invalid(key, "is empty; remove it to copy every type"));
        }
        for t in &list {
            let ok = t == "*"
                || (!t.is_empty()
                    && t.chars().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_'
                    }));
            if !ok {
                return Err(self.invalid(
                    key,
                    format!("`{t}` is not a Harbor artifact type: use image, chart, cnab, wasm, sbom, … (lowercase) or \"*\""),
                ));
            }
        }
        Ok(list)
    }

    /// `rules[].reconcile_interval`: a duration of at least a second.
    fn reconcile_interval(
        &self,
        key: &str,
        raw: Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        let Some(t) = raw else {
            return Ok(None);
        };
        let d = humantime::parse_duration(&t)
            .map_err(|e| self.invalid(key, format!("`{t}` is not a duration like \"15m\": {e}")))?;
        if d < Duration::from_secs(1) {
            return Err(self.invalid(key, "must be at least 1s"));
        }
        Ok(Some(d))
    }
}
