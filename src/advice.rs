//! The commands harbor-relay prints as advice ("retry with …", "register
//! the webhook with …"), spelled in one place so that each runs when an
//! admin pastes it: the config file this process read and the credentials
//! directory it was given go into the command, in absolute form and quoted
//! for a shell. A placeholder never does.
//!
//! Held by `tests/install.rs::printed_advice_runs_as_pasted`, which takes
//! each such command from `check`, `jobs show` and the status page and runs
//! it.

use std::path::{Path, PathBuf};

/// How the admin reading a message reaches this relay: its config file
/// and, when it was given one, the credentials directory its `*_file`
/// secrets are read from (`CREDENTIALS_DIRECTORY`, which systemd sets and
/// a root shell must set by hand).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advice {
    /// `--config` or `--url`, with its value: which relay the command asks.
    target: Vec<String>,
    /// `CREDENTIALS_DIRECTORY`, when this process had it.
    credentials: Option<PathBuf>,
}

impl Advice {
    /// Advice for a process that read `config`, with this process's
    /// `CREDENTIALS_DIRECTORY`.
    pub fn for_config(config: &Path) -> Advice {
        let config = std::fs::canonicalize(config).unwrap_or_else(|_| config.to_path_buf());
        Advice {
            target: vec!["--config".into(), config.display().to_string()],
            credentials: credentials_directory(),
        }
    }

    /// Advice for a `jobs` client that was pointed at `url` (the token, if
    /// any, stays in the environment it came from: it is never printed).
    pub fn for_url(url: &str) -> Advice {
        Advice {
            target: vec!["--url".into(), url.to_string()],
            credentials: None,
        }
    }

    /// The `harbor-relay` command line for `subcommand` (the words before
    /// the target, e.g. `["jobs"]`) and `args` (the words after it).
    pub fn command(&self, subcommand: &[&str], args: &[&str]) -> String {
        let mut words: Vec<String> = Vec::new();
        if let Some(dir) = &self.credentials {
            words.push(format!(
                "CREDENTIALS_DIRECTORY={}",
                quote(&dir.display().to_string())
            ));
        }
        words.push("harbor-relay".into());
        words.extend(subcommand.iter().map(|w| quote(w)));
        words.extend(self.target.iter().map(|w| quote(w)));
        words.extend(args.iter().map(|w| quote(w)));
        words.join(" ")
    }

    /// `harbor-relay jobs … retry ID`.
    pub fn retry(&self, id: u64) -> String {
        self.command(&["jobs"], &["retry", &id.to_string()])
    }
}

/// This process's `CREDENTIALS_DIRECTORY`, when set and not empty.
fn credentials_directory() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `word` as a POSIX shell reads it back: as it is when it has nothing a
/// shell would change, else in single quotes.
fn quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@%,".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The URL Harbor should send webhooks to, as well as the relay can tell
/// from where it listens: the listener's own address when it is a specific
/// one, else this machine's host name (what another machine most likely
/// reaches it by), with the scheme its TLS setting gives.
pub fn webhook_url(listen: std::net::SocketAddr, tls: bool, hostname: Option<&str>) -> String {
    let scheme = if tls { "https" } else { "http" };
    let host = match (listen.ip().is_unspecified(), hostname) {
        (true, Some(h)) if !h.is_empty() => h.to_string(),
        (true, _) => "127.0.0.1".to_string(),
        (false, _) => match listen.ip() {
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        },
    };
    format!("{scheme}://{host}:{}/webhooks/harbor", listen.port())
}

/// This machine's host name (Linux's `/proc/sys/kernel/hostname`).
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn advice(credentials: Option<&str>) -> Advice {
        Advice {
            target: vec![
                "--config".into(),
                "/etc/harbor-relay/harbor-relay.toml".into(),
            ],
            credentials: credentials.map(PathBuf::from),
        }
    }

    #[test]
    fn a_command_names_the_config_and_the_credentials_directory() {
        assert_eq!(
            advice(Some("/run/credentials/harbor-relay.service")).retry(7),
            "CREDENTIALS_DIRECTORY=/run/credentials/harbor-relay.service harbor-relay jobs --config /etc/harbor-relay/harbor-relay.toml retry 7"
        );
        assert_eq!(
            advice(None).command(&["harbor", "register-webhook"], &["--project", "tkgs-demo"]),
            "harbor-relay harbor register-webhook --config /etc/harbor-relay/harbor-relay.toml --project tkgs-demo"
        );
        assert_eq!(
            Advice::for_url("http://10.0.0.5:8080").retry(3),
            "harbor-relay jobs --url http://10.0.0.5:8080 retry 3"
        );
    }

    #[test]
    fn words_a_shell_would_change_are_quoted() {
        assert_eq!(quote("/tmp/my relay.toml"), "'/tmp/my relay.toml'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote("$HOME"), "'$HOME'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("robot$relay"), "'robot$relay'");
    }

    #[test]
    fn the_webhook_url_is_where_the_relay_listens() {
        let any: std::net::SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(
            webhook_url(any, false, Some("jumpvm")),
            "http://jumpvm:8080/webhooks/harbor"
        );
        let one: std::net::SocketAddr = "192.0.2.4:9443".parse().expect("addr");
        assert_eq!(
            webhook_url(one, true, Some("jumpvm")),
            "https://192.0.2.4:9443/webhooks/harbor"
        );
        let v6: std::net::SocketAddr = "[2001:db8::1]:8080".parse().expect("addr");
        assert_eq!(
            webhook_url(v6, false, None),
            "http://[2001:db8::1]:8080/webhooks/harbor"
        );
    }
}
