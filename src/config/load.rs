//! Validation: from [`super::raw`] to [`super::types`], one message per
//! problem naming the file, the key and what to change. This file holds
//! the loader, secrets, `[server]`, `[jobs]` and `[log]`; `registry.rs`,
//! `rule.rs` and `store.rs` load their sections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::*;

/// `jobs.workers` when not set: the most jobs at once, a cap; how many run
/// follows the registries' adaptive limits (`jobs::workers::admit`).
pub const AUTO_WORKERS: usize = 32;

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
    /// The files secrets were read from (`*_file`, `server.tls_key`), by
    /// key, for the warning about files others may read.
    pub(super) secret_files: std::cell::RefCell<Vec<(String, PathBuf)>>,
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

    /// A duration like `"30s"`, `"10m"` or `"7d"`, if given: the one
    /// parser for every duration key, so each refuses the same way.
    pub(super) fn duration(
        &self,
        key: &str,
        v: Option<String>,
    ) -> Result<Option<Duration>, ConfigError> {
        v.map(|t| {
            humantime::parse_duration(&t).map_err(|e| {
                self.invalid(
                    key,
                    format!("`{t}` is not a duration like \"30s\", \"10m\" or \"7d\": {e}"),
                )
            })
        })
        .transpose()
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
                let mut why = format!("environment variable {name} is not set (used as ${{{name}}})");
                if name == "CREDENTIALS_DIRECTORY" {
                    // systemd sets it for the service; an admin's shell does not.
                    why.push_str(": outside systemd, name the directory the unit's LoadCredential= files are in, as root: `export CREDENTIALS_DIRECTORY=/etc/harbor-relay/credentials`");
                }
                self.invalid(key, why)
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
                self.secret_files
                    .borrow_mut()
                    .push((file_key.clone(), PathBuf::from(&path)));
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
            secret_files: self.secret_files.take(),
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
        // The listener's own cap (api::MAX_CONNECTIONS) by default.
        let max_connections = self
            .at_least(
                "server.max_connections",
                raw.max_connections,
                16,
                "must be at least 16",
            )?
            .unwrap_or(1024);
        let ipv6_client_prefix = raw.ipv6_client_prefix.unwrap_or(64);
        if !(16..=128).contains(&ipv6_client_prefix) {
            return Err(self.invalid(
                "server.ipv6_client_prefix",
                "must be between 16 and 128 (64: one IPv6 subnet counts as one client)",
            ));
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
            max_connections,
            ipv6_client_prefix,
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
                self.secret_files
                    .borrow_mut()
                    .push(("server.tls_key".to_string(), key_file.clone()));
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
        let workers = raw.workers.unwrap_or(AUTO_WORKERS);
        if !(1..=256).contains(&workers) {
            return Err(self.invalid("jobs.workers", "must be between 1 and 256"));
        }
        let blob_concurrency = raw.blob_concurrency.unwrap_or(4);
        if !(1..=64).contains(&blob_concurrency) {
            return Err(self.invalid("jobs.blob_concurrency", "must be between 1 and 64"));
        }
        let duration = |key: &str, value: Option<String>, default: Duration| {
            self.duration(&format!("jobs.{key}"), value)
                .map(|d| d.unwrap_or(default))
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
}
