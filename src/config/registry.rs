//! Loading one `[registries.NAME]`: its URL, credentials, TLS mode,
//! limits and token realm hosts, each checked with a message that names the
//! key.

use super::raw::{RawRegistry, RawSize, RawTls};
use super::*;

impl Loader<'_> {
    /// One `[registries.NAME]`, validated.
    pub(super) fn registry(
        &self,
        name: &str,
        r: RawRegistry,
    ) -> Result<RegistryConfig, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(self.invalid(
                format!("registries.{name}"),
                "a registry name may hold only letters, digits, '-' and '_'",
            ));
        }
        let url = self.registry_url(name, &r.url)?;
        let limits = self.registry_limits(name, r.clone())?;

        let username = self.expand_opt(&key("username"), r.username)?;
        let password = self.secret(&key("password"), r.password, r.password_file)?;
        if password.is_some() && username.as_deref().is_none_or(str::is_empty) {
            return Err(self.invalid(key("username"), "a password is set but no username"));
        }
        let tls = self.registry_tls(name, &url, r.tls.clone())?;
        let token_realm_hosts = self.realm_hosts(name, r.token_realm_hosts.clone())?;
        Ok(RegistryConfig {
            name: name.to_string(),
            url,
            username,
            password,
            tls,
            limits,
            create_projects: r.create_projects.unwrap_or(false),
            token_realm_hosts,
            password_note: self.notes.borrow().get(&key("password")).cloned(),
            is_harbor: match r.kind.as_deref() {
                None | Some("registry") => false,
                Some("harbor") => true,
                Some(other) => {
                    return Err(self.invalid(
                        key("kind"),
                        format!("`{other}`: use \"harbor\" or \"registry\""),
                    ));
                }
            },
        })
    }

    /// `url`: `https://host[:port]` or `http://host[:port]`, nothing else.
    fn registry_url(&self, name: &str, raw: &str) -> Result<url::Url, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");
        let url_text = self.expand(&key("url"), raw)?;
        let url = url::Url::parse(&url_text).map_err(|e| {
            let hint = if url_text.contains("://") {
                String::new()
            } else {
                format!("; write it with its scheme: https://{url_text}")
            };
            self.invalid(key("url"), format!("`{url_text}` is not a URL: {e}{hint}"))
        })?;
        if url.scheme() != "https" && url.scheme() != "http" {
            return Err(self.invalid(
                key("url"),
                if url_text.contains("://") {
                    format!("`{url_text}`: scheme must be https:// or http://")
                } else {
                    format!("`{url_text}` has no scheme: write https://{url_text} (or http:// for a plain-HTTP registry)")
                },
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self.invalid(key("url"), format!("`{url_text}` has no host")));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(self.invalid(
                key("url"),
                "must not carry credentials; use `username` and `password`/`password_file`",
            ));
        }
        if (url.path() != "/" && !url.path().is_empty()) || url.query().is_some() {
            return Err(self.invalid(
                key("url"),
                format!(
                    "`{url_text}` has a path or query; give only scheme, host and port (the registry API lives at /v2/)"
                ),
            ));
        }
        Ok(url)
    }

    /// `tls`: the system roots, a pinned CA read now, or no verification.
    fn registry_tls(
        &self,
        name: &str,
        url: &url::Url,
        raw: Option<RawTls>,
    ) -> Result<TlsMode, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");

        let tls = match raw {
            None => TlsMode::System,
            Some(t) => {
                if url.scheme() == "http" {
                    return Err(self.invalid(
                        key("tls"),
                        "the registry URL is http://, so TLS settings would be ignored; remove `tls` or use https://",
                    ));
                }
                match (t.ca_file, t.insecure_skip_verify) {
                    (Some(_), true) => {
                        return Err(self.invalid(
                            key("tls"),
                            "set either `ca_file` (recommended) or `insecure_skip_verify`, not both",
                        ));
                    }
                    (Some(f), false) => {
                        let path = self.expand(&key("tls.ca_file"), &f)?;
                        let pem = std::fs::read(&path).map_err(|e| {
                            self.invalid(key("tls.ca_file"), format!("cannot read {path}: {e}"))
                        })?;
                        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
                            self.invalid(
                                key("tls.ca_file"),
                                format!("{path} is not a PEM certificate: {e}"),
                            )
                        })?;
                        if certs.is_empty() {
                            return Err(self.invalid(
                                key("tls.ca_file"),
                                format!("{path} holds no PEM certificate"),
                            ));
                        }
                        TlsMode::Pinned {
                            file: PathBuf::from(path),
                            pem,
                        }
                    }
                    (None, true) => TlsMode::InsecureSkipVerify,
                    (None, false) => TlsMode::System,
                }
            }
        };
        Ok(tls)
    }

    /// The request, bandwidth, upload and listing limits.
    fn registry_limits(&self, name: &str, r: RawRegistry) -> Result<RegistryLimits, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");
        let defaults = RegistryLimits::default();
        let bytes_per_second = self.size(&key("max_bytes_per_second"), r.max_bytes_per_second)?;
        let chunk_size = self.size(&key("chunk_size"), r.chunk_size)?;
        let max_list_bytes = self.size(&key("max_list_bytes"), r.max_list_bytes)?;
        let max_blob_size = self.size(&key("max_blob_size"), r.max_blob_size)?;
        Ok(RegistryLimits {
            max_concurrent_requests: self.at_least(
                &key("max_concurrent_requests"),
                r.max_concurrent_requests,
                1,
                "must be at least 1",
            )?,
            max_bytes_per_second: self.at_least(
                &key("max_bytes_per_second"),
                bytes_per_second,
                1024,
                "must be at least 1KiB (omit it for no limit)",
            )?,
            request_attempts: self
                .at_least(
                    &key("request_attempts"),
                    r.request_attempts,
                    1,
                    "must be at least 1",
                )?
                .unwrap_or(defaults.request_attempts),
            stall_timeout: self
                .duration(&key("stall_timeout"), r.stall_timeout)?
                .unwrap_or(defaults.stall_timeout),
            chunk_size_threshold: self
                .size(&key("chunk_size_threshold"), r.chunk_size_threshold)?
                .unwrap_or(defaults.chunk_size_threshold),
            chunk_size: self
                .at_least(
                    &key("chunk_size"),
                    chunk_size,
                    64 * 1024,
                    "must be at least 64KiB",
                )?
                .unwrap_or(defaults.chunk_size),
            range_threshold: self
                .size(&key("range_threshold"), r.range_threshold)?
                .unwrap_or(defaults.range_threshold),
            source_streams: match r.source_streams {
                None => defaults.source_streams,
                Some(n @ 1..=64) => n,
                Some(_) => {
                    return Err(self.invalid(key("source_streams"), "must be between 1 and 64"));
                }
            },
            max_retry_after: self
                .duration(&key("max_retry_after"), r.max_retry_after)?
                .unwrap_or(defaults.max_retry_after),
            max_list_bytes: self
                .at_least(
                    &key("max_list_bytes"),
                    max_list_bytes,
                    1024 * 1024,
                    "must be at least 1MiB",
                )?
                .unwrap_or(defaults.max_list_bytes),
            max_list_entries: self
                .at_least(
                    &key("max_list_entries"),
                    r.max_list_entries,
                    1000,
                    "must be at least 1000",
                )?
                .unwrap_or(defaults.max_list_entries),
            max_blob_size: self
                .at_least(
                    &key("max_blob_size"),
                    max_blob_size,
                    1024 * 1024,
                    "must be at least 1MiB",
                )?
                .unwrap_or(defaults.max_blob_size),
        })
    }

    /// A size: a number of bytes, or text like `"64MiB"` (`${VAR}`
    /// expanded).
    pub(super) fn size(&self, key: &str, v: Option<RawSize>) -> Result<Option<u64>, ConfigError> {
        match v {
            None => Ok(None),
            Some(RawSize::Bytes(n)) => Ok(Some(n)),
            Some(RawSize::Text(t)) => {
                let t = self.expand(key, &t)?;
                t.parse::<bytesize::ByteSize>()
                    .map(|b| Some(b.as_u64()))
                    .map_err(|e| {
                        self.invalid(key, format!("`{t}` is not a size like \"64MiB\": {e}"))
                    })
            }
        }
    }

    /// `v` if absent or at least `min`; below it, `problem`.
    pub(super) fn at_least<T: PartialOrd>(
        &self,
        key: &str,
        v: Option<T>,
        min: T,
        problem: &str,
    ) -> Result<Option<T>, ConfigError> {
        match v {
            Some(n) if n < min => Err(self.invalid(key, problem)),
            v => Ok(v),
        }
    }

    /// `token_realm_hosts`: each a host or `host:port`.
    fn realm_hosts(
        &self,
        name: &str,
        raw: Option<Vec<String>>,
    ) -> Result<Vec<String>, ConfigError> {
        let key = |k: &str| format!("registries.{name}.{k}");
        let token_realm_hosts = raw.unwrap_or_default();
        for h in &token_realm_hosts {
            let valid = !h.is_empty()
                && !h.contains('/')
                && url::Url::parse(&format!("https://{h}/")).is_ok_and(|u| {
                    u.host_str().is_some() && u.path() == "/" && u.username().is_empty()
                });
            if !valid {
                return Err(self.invalid(
                    key("token_realm_hosts"),
                    format!("`{h}` is not a host or host:port (like \"auth.example.com\")"),
                ));
            }
        }
        Ok(token_realm_hosts)
    }
}
