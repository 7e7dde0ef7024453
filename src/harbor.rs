//! Harbor's REST API (`/api/v2.0`), for what a plain registry cannot do:
//! creating a project on the target before the first push into it, and
//! registering harbor-relay's webhook policy on a source project.
//!
//! Written against Harbor v2.8 to v2.15 (swagger `api/v2.0/swagger.yaml`):
//! `HEAD /projects?project_name=`, `POST /projects` with `metadata.public`
//! as a string, `GET/POST/PUT /projects/{name}/webhook/policies`.

use std::collections::HashSet;
use std::sync::Mutex;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::registry::{Registry, RegistryError};

/// Name of the webhook policy harbor-relay registers.
pub const POLICY_NAME: &str = "harbor-relay";

/// Projects known to exist, per registry, so each is checked once.
#[derive(Default)]
pub struct ProjectCache {
    known: Mutex<HashSet<String>>,
}

impl ProjectCache {
    /// Makes sure `project` exists on `registry`, creating it (private)
    /// when missing. `409` (created meanwhile) counts as success.
    pub async fn ensure(&self, registry: &Registry, project: &str) -> Result<(), RegistryError> {
        let key = format!("{}/{project}", registry.name());
        if self.known.lock().map(|k| k.contains(&key)).unwrap_or(false) {
            return Ok(());
        }
        ensure_project(registry, project).await?;
        if let Ok(mut k) = self.known.lock() {
            k.insert(key);
        }
        Ok(())
    }
}

/// The Harbor version (`GET /api/v2.0/systeminfo`, which Harbor answers
/// without login): also the proof that the registry is a Harbor at all.
pub async fn version(registry: &Registry) -> Result<String, RegistryError> {
    let what = "reading Harbor's version (is it a Harbor?)";
    let path = "/api/v2.0/systeminfo";
    let info: serde_json::Value = get_json(registry, what, path, 1 << 20).await?;
    info["harbor_version"]
        .as_str()
        .map(crate::registry::cut)
        .ok_or_else(|| RegistryError::Other {
            registry: registry.name().to_string(),
            what: what.to_string(),
            detail: "GET /api/v2.0/systeminfo answered without a harbor_version: this registry is not a Harbor (check its `kind` and `create_projects`)".into(),
        })
}

/// Whether a project exists (`HEAD /api/v2.0/projects?project_name=`).
pub async fn project_exists(registry: &Registry, project: &str) -> Result<bool, RegistryError> {
    let what = format!("checking project '{project}'");
    let path = format!("/api/v2.0/projects?project_name={project}");
    let resp = registry.api(&what, Method::HEAD, &path, None).await?;
    match resp.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(api_error(registry, resp, &what, (Method::HEAD, &path)).await),
    }
}

/// Makes sure a project exists; returns true if it was created.
pub async fn ensure_project(registry: &Registry, project: &str) -> Result<bool, RegistryError> {
    if project_exists(registry, project).await? {
        return Ok(false);
    }
    let what = format!("creating project '{project}'");
    let resp = registry
        .api(
            &what,
            Method::POST,
            "/api/v2.0/projects",
            Some(json!({ "project_name": project, "metadata": { "public": "false" } })),
        )
        .await?;
    match resp.status() {
        StatusCode::CREATED => {
            tracing::info!(registry = %registry.name(), project, "created project on the target");
            Ok(true)
        }
        StatusCode::CONFLICT => Ok(false),
        StatusCode::FORBIDDEN => Err(RegistryError::Unauthorized {
            registry: registry.name().to_string(),
            what,
            detail: "403: creating projects needs a system admin or a system-level robot account with project:create (a project robot cannot)".into(),
        }),
        _ => Err(api_error(registry, resp, &what, (Method::POST, "/api/v2.0/projects")).await),
    }
}

/// Removes a tag from an artifact, leaving the artifact (swagger
/// `deleteTag`: `DELETE /projects/{p}/repositories/{r}/artifacts/{digest}/tags/{tag}`,
/// the repository's '/' encoded twice). A tag already gone is fine.
pub async fn delete_tag(
    registry: &Registry,
    repository: &str,
    digest: &str,
    tag: &str,
) -> Result<(), RegistryError> {
    let what = format!("removing tag {repository}:{tag}");
    let Some((project, inside)) = repository.split_once('/') else {
        return Err(RegistryError::Refused {
            registry: registry.name().to_string(),
            what,
            detail: "a Harbor repository is always inside a project".into(),
        });
    };
    let path = format!(
        "/api/v2.0/projects/{project}/repositories/{}/artifacts/{digest}/tags/{tag}",
        inside.replace('/', "%252F")
    );
    let resp = registry.api(&what, Method::DELETE, &path, None).await?;
    match resp.status() {
        StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
        _ => Err(api_error(registry, resp, &what, (Method::DELETE, &path)).await),
    }
}

/// The names of the projects `take_project` accepts (paged).
pub async fn projects(
    registry: &Registry,
    take_project: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<String>, RegistryError> {
    let all: Vec<serde_json::Value> =
        paged(registry, "listing projects", "/api/v2.0/projects?").await?;
    Ok(all
        .iter()
        .filter_map(|p| p["name"].as_str())
        .filter(|p| is_valid_project(p))
        .filter(|p| take_project(p))
        .map(str::to_string)
        .collect())
}

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

/// The labels of `wanted` an artifact with `have` lacks: Harbor's label
/// filter takes an artifact only if it carries every one
/// (`artifactLabelFilter` in `src/pkg/reg/filter/artifact.go`).
pub fn missing_labels(wanted: Option<&[String]>, have: &[String]) -> Vec<String> {
    wanted
        .unwrap_or_default()
        .iter()
        .filter(|w| !have.contains(w))
        .cloned()
        .collect()
}

/// One tag of an artifact in a Harbor project, with the artifact's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tagged {
    /// `project/…` repository.
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// The artifact's digest.
    pub digest: String,
    /// Names of the Harbor labels on the artifact.
    pub labels: Vec<String>,
}

/// Names of the labels in a Harbor artifact's JSON (`labels[].name`).
fn label_names(artifact: &serde_json::Value) -> Vec<String> {
    artifact["labels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|l| l["name"].as_str())
        .map(crate::registry::cut)
        .collect()
}

/// The labels of one artifact (`GET …/artifacts/{reference}?with_label=true`),
/// for a rule with `labels`.
pub async fn artifact_labels(
    registry: &Registry,
    repository: &str,
    reference: &str,
) -> Result<Vec<String>, RegistryError> {
    let Some((project, inside)) = repository.split_once('/') else {
        return Ok(Vec::new());
    };
    let what = format!("reading the labels of {repository}:{reference}");
    // Harbor wants a repository name with '/' encoded twice.
    let path = format!(
        "/api/v2.0/projects/{project}/repositories/{}/artifacts/{reference}?with_label=true",
        inside.replace('/', "%252F")
    );
    let artifact: serde_json::Value = get_json(registry, &what, &path, 4 << 20).await?;
    Ok(label_names(&artifact))
}

/// Lists `(repository, tag, digest)` of every tagged artifact in the
/// projects `take_project` accepts, through Harbor's REST API
/// (`/projects`, `/projects/{p}/repositories`, `…/artifacts?with_tag=true`,
/// all paged). Unlike `/v2/_catalog` this works for any account that can
/// read the projects, and gives the digests without a request per tag.
pub async fn list_tagged(
    registry: &Registry,
    take_project: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<Tagged>, RegistryError> {
    let mut out = Vec::new();
    for project in projects(registry, take_project).await? {
        let project = project.as_str();
        let repos: Vec<serde_json::Value> = paged(
            registry,
            &format!("listing repositories of project '{project}'"),
            &format!("/api/v2.0/projects/{project}/repositories?"),
        )
        .await?;
        for r in repos {
            let Some(full) = r["name"].as_str() else {
                continue;
            };
            if !crate::reference::is_valid_repository(full) {
                continue;
            }
            let Some(inside) = full.strip_prefix(project).and_then(|x| x.strip_prefix('/')) else {
                continue;
            };
            // Harbor wants a repository name with '/' encoded twice.
            let encoded = inside.replace('/', "%252F");
            let artifacts: Vec<serde_json::Value> = paged(
                registry,
                &format!("listing artifacts of {full}"),
                &format!(
                    "/api/v2.0/projects/{project}/repositories/{encoded}/artifacts?with_tag=true&with_label=true&"
                ),
            )
            .await?;
            for a in artifacts {
                let Some(digest) = a["digest"]
                    .as_str()
                    .filter(|d| crate::reference::is_valid_digest(d))
                else {
                    continue;
                };
                for t in a["tags"].as_array().into_iter().flatten() {
                    if let Some(tag) = t["name"].as_str()
                        && crate::reference::is_valid_tag(tag)
                    {
                        out.push(Tagged {
                            repository: full.to_string(),
                            tag: tag.to_string(),
                            digest: digest.to_string(),
                            labels: label_names(&a),
                        });
                    }
                }
            }
        }
    }
    Ok(out)
}

pub use crate::reference::is_valid_harbor_project as is_valid_project;

/// Why Harbor would refuse `target_repository` as a place to push, before
/// any upload: Harbor keeps every repository in a project, named by its own
/// rule. `None` if it is fine.
pub fn target_problem(target_repository: &str) -> Option<String> {
    match target_repository.split_once('/') {
        None => Some(format!(
            "Harbor keeps every repository in a project, and '{target_repository}' has none; set the rule's target_project (e.g. target_project = \"library\")"
        )),
        Some((project, _)) if !is_valid_project(project) => Some(format!(
            "Harbor refuses the project name '{project}' (it must match [a-z0-9]+(?:[._-][a-z0-9]+)*, 1-255 characters); change the rule's target_project"
        )),
        Some(_) => None,
    }
}

/// `GET path` on Harbor's REST API: the answer's JSON, read with a limit of
/// `limit` bytes, or an error that names the method, path and cause.
async fn get_json<T: serde::de::DeserializeOwned>(
    registry: &Registry,
    what: &str,
    path: &str,
    limit: u64,
) -> Result<T, RegistryError> {
    let resp = registry.api(what, Method::GET, path, None).await?;
    if resp.status() != StatusCode::OK {
        return Err(api_error(registry, resp, what, (Method::GET, path)).await);
    }
    let body = registry.read_body(resp, limit, what).await?;
    decode(registry, &body, what)
}

/// Parses a JSON answer; the error quotes at most a short prefix of it.
fn decode<T: serde::de::DeserializeOwned>(
    registry: &Registry,
    body: &[u8],
    what: &str,
) -> Result<T, RegistryError> {
    serde_json::from_slice(body).map_err(|e| RegistryError::Other {
        registry: registry.name().to_string(),
        what: what.to_string(),
        detail: format!(
            "unexpected answer: {}",
            crate::registry::cut(&e.to_string())
        ),
    })
}

/// GETs every page (`page`, `page_size=100`) of a Harbor list, within the
/// registry's `max_list_bytes` and `max_list_entries` in all.
async fn paged(
    registry: &Registry,
    what: &str,
    path_with_query: &str,
) -> Result<Vec<serde_json::Value>, RegistryError> {
    const PAGE: usize = 100;
    let (max_bytes, max_entries) = registry.list_limits();
    let mut bytes = 0u64;
    let mut all = Vec::new();
    for page in 1..=10_000 {
        let resp = registry
            .api(
                what,
                Method::GET,
                &format!("{path_with_query}page={page}&page_size={PAGE}"),
                None,
            )
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(api_error(registry, resp, what, (Method::GET, path_with_query)).await);
        }
        let left = max_bytes.saturating_sub(bytes).min(16 << 20);
        let body = registry.read_body(resp, left, what).await?;
        bytes += body.len() as u64;
        let list: Vec<serde_json::Value> = decode(registry, &body, what)?;
        let n = list.len();
        all.extend(list);
        if all.len() > max_entries {
            return Err(RegistryError::Other {
                registry: registry.name().to_string(),
                what: what.to_string(),
                detail: format!(
                    "more than max_list_entries ({max_entries}) entries; raise max_list_entries for this registry if it really has that many"
                ),
            });
        }
        if n < PAGE {
            break;
        }
    }
    Ok(all)
}

/// An error answer of Harbor's REST API at `path`, in words that say what
/// to do: a `403` on webhook policies names Harbor's permission model (robot
/// accounts hold `notification-policy` only from Harbor 2.10), not the
/// password.
async fn api_error(
    registry: &Registry,
    resp: reqwest::Response,
    what: &str,
    (method, path): (Method, &str),
) -> RegistryError {
    if resp.status() == StatusCode::FORBIDDEN && path.contains("/webhook/policies") {
        let robot = registry.username().is_some_and(|u| u.starts_with("robot$"));
        let detail = if robot {
            "Harbor answered 403: this robot account may not manage webhook policies. Harbor grants robots the notification-policy permission only from v2.10; on an older Harbor use a project admin account, or add the policy in the UI (project > Webhooks)"
        } else {
            "Harbor answered 403: the account needs the project admin role (notification-policy permission) on this project"
        };
        return RegistryError::Refused {
            registry: registry.name().to_string(),
            what: what.to_string(),
            detail: detail.into(),
        };
    }
    let status = resp.status();
    let path_only = path.split('?').next().unwrap_or(path);
    if status == StatusCode::NOT_FOUND {
        let cause = if path_only.ends_with("/systeminfo") {
            "this registry is not a Harbor (check its `kind` and `create_projects`)"
        } else if method == Method::POST && path_only.ends_with("/projects") {
            "this registry has no Harbor API: create_projects needs a Harbor (check its `kind`)"
        } else if path_only.contains("/repositories/") {
            "the repository does not exist"
        } else if path_only.contains("/webhook/policies/") {
            "the policy is not in this project"
        } else {
            "the project does not exist, or this registry is not a Harbor (check its `kind` in the config)"
        };
        return RegistryError::Status {
            registry: registry.name().to_string(),
            what: what.to_string(),
            status: 404,
            detail: format!("404 from {method} {path_only}: {cause}"),
        };
    }
    match registry.error_from(resp, what).await {
        RegistryError::Status {
            registry,
            what,
            status,
            detail,
        } => RegistryError::Status {
            registry,
            what,
            status,
            detail: format!("{method} {path_only}: {detail}"),
        },
        other => other,
    }
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
/// `PUSH_ARTIFACT` and `DELETE_ARTIFACT`, to `url`, with `auth_header` (the
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
const RELAY_EVENTS: [&str; 2] = ["PUSH_ARTIFACT", "DELETE_ARTIFACT"];

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

    #[test]
    fn an_artifact_must_carry_every_label_of_the_rule() {
        let wanted = vec!["release".to_string(), "approved".to_string()];
        let have = vec!["approved".to_string(), "other".to_string()];
        assert_eq!(missing_labels(Some(&wanted), &have), ["release"]);
        let all = vec!["release".to_string(), "approved".to_string()];
        assert!(missing_labels(Some(&wanted), &all).is_empty());
        assert!(missing_labels(None, &[]).is_empty());
    }

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
            json!(["PUSH_ARTIFACT", "SCANNING_COMPLETED", "DELETE_ARTIFACT"])
        );
        let targets = merged["targets"].as_array().expect("targets");
        assert_eq!(targets.len(), 2, "{merged}");
        assert_eq!(targets[0]["address"], "https://audit.example/hook");
        assert_eq!(targets[0]["skip_cert_verify"], true);
        assert_eq!(targets[1]["address"], URL);
        assert_eq!(targets[1]["auth_header"], "Bearer s");
        assert_eq!(targets[1]["skip_cert_verify"], true);
    }

    #[test]
    fn a_repository_harbor_would_refuse_is_named_before_any_upload() {
        let e = target_problem("app").expect("no project");
        assert!(e.contains("target_project"), "{e}");
        let e = target_problem("team__a/app").expect("bad project");
        assert!(e.contains("'team__a'"), "{e}");
        assert_eq!(target_problem("library/app"), None);
        assert_eq!(target_problem("tkgs-demo/team/app"), None);
    }

    #[test]
    fn project_names_follow_harbors_rule() {
        for ok in ["library", "tkgs-demo", "a.b_c-d", "x1"] {
            assert!(is_valid_project(ok), "{ok}");
        }
        for bad in [
            "",
            "Library",
            "-a",
            "a-",
            "a..b",
            "a/b",
            "../users",
            &"a".repeat(256),
        ] {
            assert!(!is_valid_project(bad), "{bad}");
        }
    }
}
