//! The configuration file: what the daemon listens on, where it keeps its
//! store, which registries it talks to and which rules say what to copy.
//!
//! The file is TOML. Every string may hold `${VAR}`, replaced from the
//! environment after parsing (so a value can never inject TOML syntax).
//! Secrets come from the environment or from `password_file`, never need to
//! be written into the file itself, and are wrapped in [`Secret`] so that a
//! stray `{:?}` cannot print them.
//!
//! Loading validates everything a running daemon would otherwise trip over
//! later (unknown keys, bad URLs, rules naming unknown registries, unreadable
//! CA files) and refuses with one message naming the file, the key and the
//! problem.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod load;
mod raw;
mod registry;
mod rule;
mod store;
#[cfg(test)]
mod tests;
mod types;

pub use types::*;

use load::Loader;
use raw::RawConfig;

/// Why a configuration file was refused. Each variant names the file; the
/// invalid ones also name the key, so the admin knows exactly what to edit.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read at all.
    #[error("config {file}: cannot read: {io}")]
    Read {
        /// The configuration file.
        file: PathBuf,
        /// The I/O error (in the message, not a source: shown once).
        io: std::io::Error,
    },
    /// The file is not valid TOML or has keys or types we do not know.
    #[error("config {file}: {message}")]
    Parse {
        /// The configuration file.
        file: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value parsed but makes no sense.
    #[error("config {file}: {key}: {problem}")]
    Invalid {
        /// The configuration file.
        file: PathBuf,
        /// The dotted key, e.g. `registries.integrated.tls.ca_file`.
        key: String,
        /// What is wrong and, where possible, how to fix it.
        problem: String,
    },
}

/// A secret value (password, webhook token). Its `Debug` and `Display` never
/// show the value, so it cannot leak through logs or error messages.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The value itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";

/// The URL of the API of a daemon running with this config file, read
/// without loading the rest (so `harbor-relay jobs` works in a shell that
/// lacks the daemon's secrets). A wildcard listen address becomes loopback.
pub fn api_url(file: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|io| ConfigError::Read {
        file: file.to_path_buf(),
        io,
    })?;
    let value: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: file.to_path_buf(),
        message: e.message().to_string(),
    })?;
    let listen = value
        .get("server")
        .and_then(|s| s.get("listen"))
        .and_then(|l| l.as_str())
        .unwrap_or(DEFAULT_LISTEN);
    let addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Invalid {
        file: file.to_path_buf(),
        key: "server.listen".into(),
        problem: format!("`{listen}` is not an address like 0.0.0.0:8080"),
    })?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    Ok(format!("http://{host}:{}", addr.port()))
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|io| ConfigError::Read {
            file: file.to_path_buf(),
            io,
        })?;
        Self::parse(file, &text, &|name| std::env::var(name).ok())
    }

    /// Parses and validates configuration text; `env` looks up `${VAR}`s.
    /// Split from [`Config::load`] so tests need not touch the process
    /// environment.
    pub fn parse(
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        Self::parse_with(file, text, env, false)
    }

    /// Reads and validates a configuration file without its secrets: no
    /// password, token or webhook secret is looked up (they are `None`).
    /// For commands that need the rules and registries but never call
    /// anyone, such as `rules test`, so they run in a shell without the
    /// daemon's credentials.
    pub fn load_without_secrets(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|io| ConfigError::Read {
            file: file.to_path_buf(),
            io,
        })?;
        Self::parse_with(file, &text, &|name| std::env::var(name).ok(), true)
    }

    fn parse_with(
        file: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
        without_secrets: bool,
    ) -> Result<Config, ConfigError> {
        let raw = parse_raw(file, text)?;
        Loader {
            file,
            env,
            inline: Default::default(),
            without_secrets,
            notes: Default::default(),
            secret_files: Default::default(),
        }
        .build(raw)
    }
}

/// The jobs API token of the daemon running with this config file
/// (`server.api_token` or `api_token_file`, through `${VAR}` and
/// `CREDENTIALS_DIRECTORY` as the daemon reads it), without loading the
/// rest: what `harbor-relay jobs --config` sends.
pub fn api_token(file: &Path) -> Result<Option<Secret>, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|io| ConfigError::Read {
        file: file.to_path_buf(),
        io,
    })?;
    let raw = parse_raw(file, &text)?;
    Loader {
        file,
        env: &|name| std::env::var(name).ok(),
        inline: Default::default(),
        without_secrets: false,
        notes: Default::default(),
        secret_files: Default::default(),
    }
    .secret(
        "server.api_token",
        raw.server.api_token,
        raw.server.api_token_file,
    )
}

/// The file as written, every key known.
fn parse_raw(file: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error(file, text, "", &e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        parse_error(file, text, &key, e.inner())
    })
}

/// "line L, column C: KEY: what is wrong", from the parser's error.
fn parse_error(file: &Path, text: &str, key: &str, e: &toml::de::Error) -> ConfigError {
    let mut message = String::new();
    if let Some(span) = e.span() {
        let before = &text[..span.start.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        message.push_str(&format!("line {line}, column {column}: "));
    }
    if !key.is_empty() && key != "." {
        message.push_str(key);
        message.push_str(": ");
    }
    message.push_str(&in_words(e.message().trim()));
    if let Some(hint) = parse_hint(text, key, e) {
        message.push_str("; ");
        message.push_str(&hint);
    }
    ConfigError::Parse {
        file: file.to_path_buf(),
        message,
    }
}

/// The parser's Rust type names in the words an admin reads: `expected
/// usize` is "expected a whole number".
fn in_words(message: &str) -> String {
    let mut m = message.to_string();
    for (rust, words) in [
        ("expected usize", "expected a whole number"),
        ("expected u64", "expected a whole number"),
        ("expected u32", "expected a whole number"),
        ("expected u16", "expected a whole number up to 65535"),
        ("expected u8", "expected a whole number up to 255"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        if let Some(at) = m.find(rust)
            && !m[at + rust.len()..].starts_with(|c: char| c.is_ascii_alphanumeric())
        {
            m.replace_range(at..at + rust.len(), words);
        }
    }
    m
}

/// What the usual slips behind a parse error are, and the fix: `[rules]`
/// written for `[[rules]]`, and a duration or size left unquoted.
fn parse_hint(text: &str, key: &str, e: &toml::de::Error) -> Option<String> {
    if key == "rules" && e.message().contains("sequence") {
        return Some(
            "rules are a list of tables: write each as [[rules]] (two brackets), not [rules]"
                .into(),
        );
    }
    let span = e.span()?;
    let start = text[..span.start.min(text.len())]
        .rfind('\n')
        .map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let (k, v) = line.split_once('=')?;
    let (k, v) = (k.trim(), v.trim());
    let unquoted_unit = v.starts_with(|c: char| c.is_ascii_digit())
        && v.chars().any(|c| c.is_ascii_alphabetic())
        && !v.starts_with(['"', '\'']);
    unquoted_unit
        .then(|| format!("`{k}`: durations and sizes are strings in quotes: {k} = \"{v}\""))
}
