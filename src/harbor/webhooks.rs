//! Harbor's webhook policies: registering harbor-relay's on a source
//! project (merged into what an admin set there), and reading a policy and
//! its latest deliveries for `check`.

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{api_error, get_json, paged};
use crate::registry::{Registry, RegistryError};

/// Name of the webhook policy harbor-relay registers.
pub const POLICY_NAME: &str = "harbor-relay";

/// A project's webhook policy, as much of it as `check` needs.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The policy's id.
    pub id: u64,
    /// The policy's name.
    pub name: String,
    /// Whether Harbor sends it.
    pub enabled: bool,
    /// Event types, e.g. `PUSH_ARTIFACT`.
    pub events: Vec<String>,
    /// Target addresses (URLs).
    pub addresses: Vec<String>,
}

impl Policy {
    /// An enabled policy that sends pushes to a harbor-relay endpoint.
    pub fn feeds_relay(&self) -> bool {
        self.enabled
            && self.events.iter().any(|e| e == "PUSH_ARTIFACT")
            && self
                .addresses
                .iter()
                .any(|a| a.contains("/webhooks/harbor"))
    }
}

/// The webhook policies of `project`.
pub async fn webhook_policies(
    registry: &Registry,
    project: &str,
) -> Result<Vec<Policy>, RegistryError> {
    let list: Vec<serde_json::Value> = paged(
        registry,
        &format!("listing webhook policies of project '{project}'"),
        &format!("/api/v2.0/projects/{project}/webhook/policies?"),
    )
    .await?;
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    Ok(list
        .iter()
        .map(|p| Policy {
            id: p["id"].as_u64().unwrap_or(0),
            name: p["name"].as_str().unwrap_or_default().to_string(),
            enabled: p["enabled"].as_bool().unwrap_or(false),
            events: strings(&p["event_types"]),
            addresses: p["targets"]
                .as_array()
                .map(|t| {
                    t.iter()
                        .filter_map(|x| x["address"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect())
}

/// One delivery of a webhook policy, as Harbor recorded it (an execution
/// of the policy: swagger `Execution`, statuses from
/// `src/jobservice/job/status.go`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// `Success`, `Error`, `Running`, `Pending`, `Stopped`.
    pub status: String,
    /// Harbor's words about it, if any.
    pub message: String,
    /// When it started.
    pub at: String,
    /// Which event it carried, e.g. `PUSH_ARTIFACT`.
    pub event: String,
}

/// The latest deliveries of a webhook policy, newest first
/// (`GET /projects/{p}/webhook/policies/{id}/executions`).
pub async fn last_deliveries(
    registry: &Registry,
    project: &str,
    policy_id: u64,
) -> Result<Vec<Delivery>, RegistryError> {
    let what =
        format!("reading the deliveries of webhook policy {policy_id} of project '{project}'");
    let path = format!(
        "/api/v2.0/projects/{project}/webhook/policies/{policy_id}/executions?page=1&page_size=10&sort=-start_time"
    );
    let list: Vec<serde_json::Value> = get_json(registry, &what, &path, 4 << 20).await?;
    let text = |v: &serde_json::Value| crate::registry::cut(v.as_str().unwrap_or_default());
    Ok(list
        .iter()
        .map(|e| Delivery {
            status: text(&e["status"]),
            message: text(&e["status_message"]),
            at: text(&e["start_time"]),
            event: text(&e["extra_attrs"]["event_type"]),
        })
        .collect())
}

/// What [`register_webhook`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Registered {
    /// A new policy, with its id.
    Created(u64),
    /// The existing policy of that name, updated.
    Updated(u64),
}

/// Creates or updates the project's `harbor-relay` webhook policy: events
/// `PUSH_ARTIFACT`, `DELETE_ARTIFACT` and the three `SCANNING_*` (which
/// release jobs a scan gate holds), to `url`, with `auth_header` (the
/// daemon's `webhook_auth`) and the given payload format (`Default` or
/// `CloudEvents`).
pub async fn register_webhook(
    registry: &Registry,
    project: &str,
    target: &WebhookTarget<'_>,
) -> Result<Registered, RegistryError> {
    let base = format!("/api/v2.0/projects/{project}/webhook/policies");
    let ours = our_policy(target);
    for _ in 0..2 {
        if let Some(existing) = find_policy(registry, project, &base).await? {
            let id = existing["id"].as_u64().unwrap_or(0);
            let what = format!("updating webhook policy {id} of project '{project}'");
            // Harbor's PUT replaces every column (UpdateWebhookPolicyOfProject
            // in src/server/v2.0/handler/webhook.go), so what the admin set
            // must be sent back: merge, never overwrite.
            let body = merged_policy(&existing, &ours, target.url);
            let resp = registry
                .api(&what, Method::PUT, &format!("{base}/{id}"), Some(body))
                .await?;
            if !resp.status().is_success() {
                return Err(api_error(registry, resp, &what, (Method::PUT, &base)).await);
            }
            return Ok(Registered::Updated(id));
        }
        let what = format!("creating the webhook policy of project '{project}'");
        let resp = registry
            .api(&what, Method::POST, &base, Some(ours.clone()))
            .await?;
        match resp.status() {
            StatusCode::CREATED => {
                let id = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|l| l.rsplit('/').next())
                    .and_then(|id| id.parse().ok())
                    .unwrap_or(0);
                return Ok(Registered::Created(id));
            }
            // Created meanwhile: find it and update it.
            StatusCode::CONFLICT => continue,
            _ => return Err(api_error(registry, resp, &what, (Method::POST, &base)).await),
        }
    }
    Err(RegistryError::Other {
        registry: registry.name().to_string(),
        what: format!("registering the webhook of project '{project}'"),
        detail: "Harbor reported a policy of that name but did not list it".into(),
    })
}

/// Where and how Harbor should deliver the relay's webhooks.
#[derive(Debug, Clone)]
pub struct WebhookTarget<'a> {
    /// The relay's webhook URL, e.g. `https://jumpvm:8080/webhooks/harbor`.
    pub url: &'a str,
    /// The `Authorization` header Harbor sends (`server.webhook_auth`).
    pub auth_header: Option<&'a str>,
    /// `Default` or `CloudEvents`.
    pub payload_format: &'a str,
    /// Harbor does not verify the relay's certificate (a self-signed
    /// listener certificate Harbor does not trust).
    pub skip_cert_verify: bool,
}

/// The event types the relay needs.
const RELAY_EVENTS: [&str; 5] = [
    "PUSH_ARTIFACT",
    "DELETE_ARTIFACT",
    // A settled scan releases the jobs a scan gate holds (issue 26).
    "SCANNING_COMPLETED",
    "SCANNING_FAILED",
    "SCANNING_STOPPED",
];

fn our_target(t: &WebhookTarget<'_>) -> serde_json::Value {
    json!({
        "type": "http",
        "address": t.url,
        "auth_header": t.auth_header.unwrap_or(""),
        "skip_cert_verify": t.skip_cert_verify,
        "payload_format": t.payload_format,
    })
}

fn our_policy(t: &WebhookTarget<'_>) -> serde_json::Value {
    json!({
        "name": POLICY_NAME,
        "description": "replication by harbor-relay",
        "enabled": true,
        "event_types": RELAY_EVENTS,
        "targets": [our_target(t)],
    })
}

/// The existing policy with the relay's target (replacing one at the same
/// address) and event types added; everything else the admin set (other
/// targets, event types, description, creator) kept as it was.
pub fn merged_policy(
    existing: &serde_json::Value,
    ours: &serde_json::Value,
    url: &str,
) -> serde_json::Value {
    let mut out = existing.clone();
    let mut events: Vec<serde_json::Value> = existing["event_types"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for e in RELAY_EVENTS {
        if !events.iter().any(|x| x == e) {
            events.push(e.into());
        }
    }
    let mut targets: Vec<serde_json::Value> = existing["targets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|t| t["address"] != url)
        .collect();
    targets.extend(ours["targets"].as_array().cloned().unwrap_or_default());
    out["event_types"] = events.into();
    out["targets"] = targets.into();
    out["enabled"] = true.into();
    if out["description"].as_str().is_none_or(str::is_empty) {
        out["description"] = ours["description"].clone();
    }
    out
}

async fn find_policy(
    registry: &Registry,
    project: &str,
    base: &str,
) -> Result<Option<serde_json::Value>, RegistryError> {
    let what = format!("listing webhook policies of project '{project}'");
    let list = paged(registry, &what, &format!("{base}?")).await?;
    Ok(list.into_iter().find(|p| p["name"] == POLICY_NAME))
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "https://relay.example:8080/webhooks/harbor";

    fn target(skip: bool) -> WebhookTarget<'static> {
        WebhookTarget {
            url: URL,
            auth_header: Some("Bearer s"),
            payload_format: "Default",
            skip_cert_verify: skip,
        }
    }

    #[test]
    fn registering_keeps_what_the_admin_set_and_replaces_only_our_target() {
        let existing = json!({
            "id": 7, "name": POLICY_NAME, "description": "ours, edited by the admin",
            "creator": "admin", "enabled": false, "project_id": 3,
            "event_types": ["PUSH_ARTIFACT", "SCANNING_COMPLETED"],
            "targets": [
                {"type": "http", "address": "https://audit.example/hook", "skip_cert_verify": true},
                {"type": "http", "address": URL, "auth_header": "old", "skip_cert_verify": false}
            ]
        });
        let merged = merged_policy(&existing, &our_policy(&target(true)), URL);
        assert_eq!(merged["creator"], "admin");
        assert_eq!(merged["description"], "ours, edited by the admin");
        assert_eq!(merged["id"], 7);
        assert_eq!(merged["enabled"], true);
        assert_eq!(
            merged["event_types"],
            json!([
                "PUSH_ARTIFACT",
                "SCANNING_COMPLETED",
                "DELETE_ARTIFACT",
                "SCANNING_FAILED",
                "SCANNING_STOPPED"
            ])
        );
        let targets = merged["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 2, "{merged}");
        assert_eq!(targets[0]["address"], "https://audit.example/hook");
        assert_eq!(targets[0]["skip_cert_verify"], true);
        assert_eq!(targets[1]["address"], URL);
        assert_eq!(targets[1]["auth_header"], "Bearer s");
        assert_eq!(targets[1]["skip_cert_verify"], true);
    }
}
