//! The webhook step of `check` for a Harbor source: a policy that sends
//! pushes (and deletions) to the relay on each project the rules read, and
//! what its latest deliveries say.

use super::{Report, Status, is_pattern};
use crate::config::RuleConfig;
use crate::registry::{Registry, RegistryError};

/// What `check` tells an admin to run when a project has no webhook for
/// the relay: `register-webhook` with this config, this source and the
/// relay's own address, ready to paste.
pub(super) struct RegisterHint {
    pub(super) advice: crate::advice::Advice,
    pub(super) registry: String,
    pub(super) url: String,
}

impl RegisterHint {
    /// The command that registers the webhook on `project`.
    fn command(&self, project: &str) -> String {
        self.advice.command(
            &["harbor", "register-webhook"],
            &[
                "--registry",
                &self.registry,
                "--project",
                project,
                "--url",
                &self.url,
            ],
        )
    }
}

/// The projects rules copy from, as literal names: listed in `projects`
/// without patterns, or, with none listed, every project of the source.
pub(super) async fn check_webhooks(
    client: &Registry,
    rules: &[&RuleConfig],
    register: &RegisterHint,
    out: &mut Report,
) {
    let mut literal: Vec<String> = Vec::new();
    let mut any = false;
    for r in rules {
        if r.projects.is_empty() || r.projects.iter().any(|p| is_pattern(p)) {
            any = true;
        }
        literal.extend(r.projects.iter().filter(|p| !is_pattern(p)).cloned());
    }
    let projects = if any {
        let globs: Vec<globset::GlobMatcher> = rules
            .iter()
            .flat_map(|r| r.projects.iter())
            .filter_map(|p| globset::Glob::new(p).ok())
            .map(|g| g.compile_matcher())
            .collect();
        let all = rules.iter().any(|r| r.projects.is_empty());
        let take = |p: &str| all || globs.iter().any(|g| g.is_match(p));
        match crate::harbor::projects(client, &take).await {
            Ok(p) => p,
            Err(e) => {
                out.add(
                    "webhook",
                    Status::Fail,
                    format!("cannot list projects: {e}"),
                );
                return;
            }
        }
    } else {
        literal.sort();
        literal.dedup();
        literal
    };
    if projects.is_empty() {
        out.add(
            "webhook",
            Status::Warn,
            "no project on this Harbor matches the rules' `projects`",
        );
    }
    for project in projects {
        match crate::harbor::webhook_policies(client, &project).await {
            Ok(policies) => match policies.iter().find(|p| p.feeds_relay()) {
                Some(p) => {
                    let deliveries = crate::harbor::last_deliveries(client, &project, p.id).await;
                    let (status, said) = delivery_verdict(&deliveries);
                    out.add(
                        "webhook",
                        status,
                        format!(
                            "project '{project}': policy '{}' sends pushes to {}; {said}",
                            p.name,
                            p.addresses.join(", ")
                        ),
                    )
                }
                None => out.add(
                    "webhook",
                    Status::Fail,
                    format!(
                        "project '{project}': no enabled webhook policy sends PUSH_ARTIFACT to a harbor-relay (/webhooks/harbor); pushes there are not replicated until `{}`",
                        register.command(&project)
                    ),
                ),
            },
            Err(e) => out.add("webhook", Status::Fail, format!("project '{project}': {e}")),
        }
    }
}

/// What the latest deliveries of a policy say: whether Harbor reaches the
/// relay.
fn delivery_verdict(
    deliveries: &Result<Vec<crate::harbor::Delivery>, RegistryError>,
) -> (Status, String) {
    match deliveries {
        Err(e) => (Status::Warn, format!("its deliveries cannot be read: {e}")),
        Ok(list) => match list.first() {
            None => (Status::Ok, "no delivery yet".to_string()),
            Some(d) if d.status == "Error" => (
                Status::Fail,
                format!(
                    "its last delivery ({} at {}) FAILED{}: Harbor cannot reach the relay (check the address and the firewall; a relay with a self-signed certificate needs register-webhook --skip-cert-verify)",
                    if d.event.is_empty() {
                        "an event"
                    } else {
                        d.event.as_str()
                    },
                    d.at,
                    if d.message.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", d.message)
                    }
                ),
            ),
            Some(d) => (
                Status::Ok,
                format!("its last delivery at {} was {}", d.at, d.status),
            ),
        },
    }
}
