//! `harbor-relay check`: is everything the config names reachable and
//! usable? Harbor's "Test Connection", step by step, so a failure says
//! which step broke: DNS, TCP, TLS (with the certificate it saw), the
//! `/v2/` API and our credentials, push permission on each rule's target
//! project (an upload session opened and cancelled, so nothing is written),
//! and, for a Harbor source, a webhook policy that feeds the relay.
//!
//! Each check is a [`Row`]; nothing here prints or exits, `main` does. No
//! row ever holds a secret: details come from error messages, which never
//! carry credentials.
//!
//! `tls.rs` reads the certificate a server presents and judges it against
//! the configured trust; `webhooks.rs` checks a Harbor source's webhook
//! policy and its last deliveries; this file runs the steps in order.

mod tls;
mod webhooks;

pub use tls::SeenCertificate;
use tls::check_tls;
use webhooks::{RegisterHint, check_webhooks};

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::config::{Config, RegistryConfig, RuleConfig, TlsMode};
use crate::registry::{Registry, RegistryError};

/// How long one network step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// The repository name used for the push check (never written to).
pub const PROBE_REPOSITORY: &str = "harbor-relay-check";

/// The verdict of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Works.
    Ok,
    /// Works, but look at it.
    Warn,
    /// Does not work; replication through it will fail.
    Fail,
    /// Not checked, because an earlier step failed.
    Skipped,
}

impl Status {
    /// The word shown in the table.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skipped => "skipped",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Row {
    /// The registry's configured name.
    pub registry: String,
    /// Which step: dns, tcp, tls, api, push, webhook.
    pub check: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was seen, or why it failed and what to do.
    pub detail: String,
}

struct Report {
    rows: Vec<Row>,
    registry: String,
}

impl Report {
    fn add(&mut self, check: &'static str, status: Status, detail: impl Into<String>) {
        self.rows.push(Row {
            registry: self.registry.clone(),
            check,
            status,
            detail: detail.into(),
        });
    }
}

/// Runs every check for every configured registry, in config order.
pub async fn run(config: &Config) -> Vec<Row> {
    let mut rows = file_rows(config);
    for (name, reg) in &config.registries {
        let mut report = Report {
            rows: Vec::new(),
            registry: name.clone(),
        };
        check_registry(config, reg, &mut report).await;
        rows.extend(report.rows);
    }
    rows
}

/// The config file and each pinned CA must be readable by the service's
/// user: the systemd unit runs as a `DynamicUser`, not as the root who
/// wrote them (a `umask 077` left over from writing the secrets makes them
/// 0600 root).
fn file_rows(config: &Config) -> Vec<Row> {
    let mut files = vec![("config".to_string(), config.file.clone())];
    for (name, reg) in &config.registries {
        if let TlsMode::Pinned { file, .. } = &reg.tls {
            files.push((name.clone(), file.clone()));
        }
    }
    let mut rows = Vec::new();
    for (who, path) in files {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777;
        if readable_by_others(mode) {
            continue;
        }
        let inline = (who == "config").then_some(&config.inline_secrets);
        let fix = match inline {
            Some(keys) if !keys.is_empty() => format!(
                "it holds secrets inline ({}), so do not make it readable by all: move them to *_file systemd credentials (LoadCredential), then install it with -m 0644",
                keys.join(", ")
            ),
            _ => "install it with -m 0644 (it holds no secret)".to_string(),
        };
        rows.push(Row {
            registry: who,
            check: "file",
            status: Status::Warn,
            detail: format!(
                "{} is not readable by other users (mode {mode:o}): the systemd unit's DynamicUser cannot read it; {fix}",
                path.display(),
            ),
        });
    }
    for (key, path, mode, why) in config.loose_secret_files() {
        rows.push(Row {
            registry: key,
            check: "file",
            status: Status::Warn,
            detail: format!(
                "{} holds a secret and is {why} (mode {mode:o}): chmod 600 it, or give it as a systemd credential",
                path.display()
            ),
        });
    }
    rows
}

/// True if a file with this mode can be read by a user who neither owns it
/// nor is in its group.
fn readable_by_others(mode: u32) -> bool {
    mode & 0o004 != 0
}

async fn check_registry(config: &Config, reg: &RegistryConfig, out: &mut Report) {
    let host = reg.url.host_str().unwrap_or_default().to_string();
    let port = reg.url.port_or_known_default().unwrap_or(443);
    let skip_rest = |out: &mut Report, from: &[&'static str]| {
        for c in from {
            out.add(c, Status::Skipped, "an earlier step failed");
        }
    };
    let Some(addrs) = check_dns(&host, port, out).await else {
        return skip_rest(out, &["tcp", "tls", "api", "push"]);
    };
    let Some(addr) = check_tcp(&addrs, port, out).await else {
        return skip_rest(out, &["tls", "api", "push"]);
    };
    let client = match Registry::new(reg) {
        Ok(c) => c,
        Err(e) => {
            out.add("api", Status::Fail, e.to_string());
            return skip_rest(out, &["push"]);
        }
    };
    let ping = client.ping().await;
    if reg.url.scheme() == "https" {
        check_tls(reg, addr, &host, &ping, out).await;
    }
    if !check_api(reg, &ping, out) {
        return skip_rest(out, &["push"]);
    }
    let rules: Vec<&RuleConfig> = config
        .rules
        .iter()
        .filter(|r| r.to.contains(&reg.name))
        .collect();
    let missing = if reg.is_harbor || reg.create_projects {
        match check_harbor(reg, &client, &rules, out).await {
            Some(m) => m,
            None => return skip_rest(out, &["push"]),
        }
    } else {
        Vec::new()
    };
    for rule in &rules {
        check_push(reg, &client, rule, &missing, out).await;
    }
    // A Harbor source: does a webhook policy feed the relay?
    let sourcing: Vec<&RuleConfig> = config.rules.iter().filter(|r| r.from == reg.name).collect();
    if reg.is_harbor && !sourcing.is_empty() {
        let register = RegisterHint {
            advice: crate::advice::Advice::for_config(&config.file),
            registry: reg.name.clone(),
            url: crate::advice::webhook_url(
                config.server.listen,
                config.server.tls.is_some(),
                crate::advice::hostname().as_deref(),
            ),
        };
        check_webhooks(&client, &sourcing, &register, out).await;
    }
}

/// DNS: the registry's host resolves.
async fn check_dns(host: &str, port: u16, out: &mut Report) -> Option<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await {
            Ok(Ok(a)) => a.collect(),
            Ok(Err(e)) => {
                out.add("dns", Status::Fail, format!("cannot resolve {host}: {e}"));
                return None;
            }
            Err(_) => {
                out.add("dns", Status::Fail, format!("resolving {host} timed out"));
                return None;
            }
        };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    out.add(
        "dns",
        Status::Ok,
        format!("{host} resolves to {}", shown.join(", ")),
    );

    Some(addrs)
}

/// TCP: one of its addresses takes a connection.
async fn check_tcp(addrs: &[SocketAddr], port: u16, out: &mut Report) -> Option<SocketAddr> {
    let started = Instant::now();
    let mut connected = None;
    let mut last_error = String::new();
    for addr in addrs {
        match tokio::time::timeout(STEP_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => {
                connected = Some(*addr);
                break;
            }
            Ok(Err(e)) => last_error = format!("{addr}: {e}"),
            Err(_) => last_error = format!("{addr}: timed out after {STEP_TIMEOUT:?}"),
        }
    }
    let Some(addr) = connected else {
        out.add(
            "tcp",
            Status::Fail,
            format!(
                "cannot connect to port {port}: {last_error} (firewall, wrong port, registry down?)"
            ),
        );
        return None;
    };
    out.add(
        "tcp",
        Status::Ok,
        format!(
            "connected to {addr} in {} ms",
            started.elapsed().as_millis()
        ),
    );

    Some(addr)
}

/// The API and our credentials; false if it failed.
fn check_api(
    reg: &RegistryConfig,
    ping: &Result<&'static str, RegistryError>,
    out: &mut Report,
) -> bool {
    match ping {
        Ok(kind) => {
            let how = match (*kind, reg.username.as_deref()) {
                ("anonymous", _) => "no credentials asked".to_string(),
                (kind, Some(who)) => format!("{kind} auth, as {who}"),
                (kind, None) => format!("{kind} auth, anonymous"),
            };
            out.add("api", Status::Ok, format!("GET /v2/ answered 200 ({how})"));
        }
        Err(e) => {
            out.add("api", Status::Fail, e.to_string());
            return false;
        }
    }

    true
}

/// A Harbor target: that it is a Harbor (its version), and for each rule's
/// target project the same project API a job uses (`create_projects`).
/// The projects that do not exist yet and will be created at the first
/// push; `None` if the registry is not a Harbor.
async fn check_harbor(
    reg: &RegistryConfig,
    client: &Registry,
    rules: &[&RuleConfig],
    out: &mut Report,
) -> Option<Vec<String>> {
    match crate::harbor::version(client).await {
        Ok(v) => out.add("harbor", Status::Ok, format!("Harbor {v}")),
        Err(e) => {
            out.add("harbor", Status::Fail, e.to_string());
            return None;
        }
    }
    let mut missing = Vec::new();
    for rule in rules {
        for project in target_projects(rule) {
            match crate::harbor::project_exists(client, &project).await {
                Ok(true) => out.add(
                    "harbor",
                    Status::Ok,
                    format!("rule '{}': project '{project}' exists", rule.name),
                ),
                Ok(false) if reg.create_projects => {
                    out.add(
                        "harbor",
                        Status::Ok,
                        format!("rule '{}': project '{project}' will be created at the first push (create_projects; needs a system admin or a system-level robot with project:create)", rule.name),
                    );
                    missing.push(project);
                }
                Ok(false) => out.add(
                    "harbor",
                    Status::Fail,
                    format!("rule '{}': project '{project}' does not exist: create it on the target, or set create_projects = true", rule.name),
                ),
                Err(e) => out.add("harbor", Status::Fail, format!("rule '{}': {e}", rule.name)),
            }
        }
    }
    Some(missing)
}

/// Push permission on a rule's target projects.
/// A project in `missing` does not exist yet (it is created at the first
/// push): nothing can be pushed into it before, so it is not tried.
async fn check_push(
    reg: &RegistryConfig,
    client: &Registry,
    rule: &RuleConfig,
    missing: &[String],
    out: &mut Report,
) {
    let projects = target_projects(rule);
    if projects.is_empty() {
        out.add(
            "push",
            Status::Warn,
            format!(
                "rule '{}': its target projects depend on the source (patterns); none checked",
                rule.name
            ),
        );
    }
    for project in projects {
        if missing.contains(&project) {
            out.add(
                "push",
                Status::Warn,
                format!("rule '{}': project '{project}' does not exist yet, so push into it is not tried; the first job creates it and pushes (run check again after it)", rule.name),
            );
            continue;
        }
        let repo = format!("{project}/{PROBE_REPOSITORY}");
        let what = format!("opening an upload session in {repo}");
        match client.begin_upload(&repo, &what).await {
            Ok((location, _)) => {
                client.cancel_upload(&repo, location.as_str()).await;
                out.add(
                        "push",
                        Status::Ok,
                        format!("rule '{}': may push to project '{project}' (upload session opened and cancelled)", rule.name),
                    );
            }
            Err(e) => {
                let hint = if reg.create_projects {
                    " (create_projects = true: the project is created at the first push if it is missing)"
                } else if matches!(e, RegistryError::NotFound { .. }) {
                    " (create the project on the target, or set create_projects = true)"
                } else {
                    ""
                };
                let status = if reg.create_projects && matches!(e, RegistryError::NotFound { .. }) {
                    Status::Warn
                } else {
                    Status::Fail
                };
                out.add(
                    "push",
                    status,
                    format!("rule '{}': project '{project}': {e}{hint}", rule.name),
                );
            }
        }
    }
}

fn is_pattern(s: &str) -> bool {
    s.contains(['*', '?', '[', '{'])
}

/// The literal target projects of a rule: `target_project` itself when it
/// names one project, else the rule's literal source projects put through
/// it. Empty when they depend on patterns.
pub fn target_projects(rule: &RuleConfig) -> Vec<String> {
    // The first path component is the project; the config refuses one
    // that {repository} is part of.
    let t = crate::config::project_part(&rule.target_project).to_string();
    if t.contains("{repository}") {
        return Vec::new();
    }
    if !t.contains("{project}") {
        return vec![t];
    }
    if rule.projects.is_empty() || rule.projects.iter().any(|p| is_pattern(p)) {
        return Vec::new();
    }
    let mut out: Vec<String> = rule
        .projects
        .iter()
        .map(|p| t.replace("{project}", p))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_others_read_bit_counts() {
        assert!(readable_by_others(0o100644));
        assert!(readable_by_others(0o444));
        assert!(!readable_by_others(0o100600));
        assert!(!readable_by_others(0o640));
    }

    #[test]
    fn target_projects_only_when_literal() {
        let mut r = RuleConfig::new("r", "a", "b");
        r.target_project = "mirror".into();
        assert_eq!(target_projects(&r), vec!["mirror"]);
        r.target_project = "{project}".into();
        assert!(target_projects(&r).is_empty());
        r.projects = vec!["library".into(), "team".into()];
        assert_eq!(target_projects(&r), vec!["library", "team"]);
        r.target_project = "tanzu-{project}".into();
        assert_eq!(target_projects(&r), vec!["tanzu-library", "tanzu-team"]);
        r.projects.push("team-*".into());
        assert!(target_projects(&r).is_empty());
        r.target_project = "{project}/{repository}".into();
        assert!(target_projects(&r).is_empty());
        r.projects.pop();
        r.target_project = "{project}-dr/{repository}".into();
        assert_eq!(
            target_projects(&r),
            vec!["library-dr", "team-dr"],
            "the project is the first path component"
        );
    }

    #[test]
    fn a_config_with_inline_secrets_is_never_told_to_be_world_readable() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("relay.toml");
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").expect("pw");
        std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let text = |password: &str| {
            format!(
                "[store]\npath = \"/x\"\n[registries.a]\nurl = \"http://127.0.0.1:1\"\nusername = \"u\"\n{password}\n"
            )
        };
        let rows_for = |body: String| {
            std::fs::write(&file, &body).expect("write");
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
            let c = Config::parse(&file, &body, &|_| None).expect("config");
            file_rows(&c)
        };
        let inline = rows_for(text("password = \"hunter2\""));
        assert!(
            inline.iter().any(|r| r
                .detail
                .contains("holds secrets inline (registries.a.password)")
                && !r.detail.contains("it holds no secret")),
            "{:?}",
            inline.iter().map(|r| &r.detail).collect::<Vec<_>>()
        );
        let by_file = rows_for(text(&format!("password_file = \"{}\"", pw.display())));
        let details: Vec<&String> = by_file.iter().map(|r| &r.detail).collect();
        assert!(
            details
                .iter()
                .any(|d| d.contains("-m 0644 (it holds no secret)")),
            "{details:?}"
        );
        assert!(
            by_file
                .iter()
                .any(|r| r.registry == "registries.a.password_file"
                    && r.detail.contains("readable by every user")),
            "{details:?}"
        );
    }
}
