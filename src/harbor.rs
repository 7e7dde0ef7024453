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

/// Makes sure a project exists; returns true if it was created.
pub async fn ensure_project(registry: &Registry, project: &str) -> Result<bool, RegistryError> {
    let what = format!("checking project '{project}'");
    let resp = registry
        .api(
            &what,
            Method::HEAD,
            &format!("/api/v2.0/projects?project_name={project}"),
            None,
        )
        .await?;
    match resp.status() {
        StatusCode::OK => return Ok(false),
        StatusCode::NOT_FOUND => {}
        _ => return Err(registry.error_from(resp, &what).await),
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
        _ => Err(registry.error_from(resp, &what).await),
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

/// Lists `(repository, tag, digest)` of every tagged artifact in the
/// projects `take_project` accepts, through Harbor's REST API
/// (`/projects`, `/projects/{p}/repositories`, `…/artifacts?with_tag=true`,
/// all paged). Unlike `/v2/_catalog` this works for any account that can
/// read the projects, and gives the digests without a request per tag.
pub async fn list_tagged(
    registry: &Registry,
    take_project: &(dyn Fn(&str) -> bool + Sync),
) -> Result<Vec<(String, String, String)>, RegistryError> {
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
                    "/api/v2.0/projects/{project}/repositories/{encoded}/artifacts?with_tag=true&"
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
                        out.push((full.to_string(), tag.to_string(), digest.to_string()));
                    }
                }
            }
        }
    }
    Ok(out)
}

/// True for a name Harbor accepts as a project's
/// (`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`, at most 255 characters;
/// `src/pkg/project/manager.go`). Names from Harbor's answers go into URL
/// paths, so anything else is dropped.
pub fn is_valid_project(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 255
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || matches!(c, b'.' | b'_' | b'-'))
        && !b.windows(2).any(|w| !alnum(w[0]) && !alnum(w[1]))
}

/// Reads a JSON answer of the Harbor API with a limit.
async fn json_body<T: serde::de::DeserializeOwned>(
    registry: &Registry,
    resp: reqwest::Response,
    limit: u64,
    what: &str,
) -> Result<T, RegistryError> {
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
            return Err(registry.error_from(resp, what).await);
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
    url: &str,
    auth_header: Option<&str>,
    payload_format: &str,
) -> Result<Registered, RegistryError> {
    let base = format!("/api/v2.0/projects/{project}/webhook/policies");
    let policy = json!({
        "name": POLICY_NAME,
        "description": "replication by harbor-relay",
        "enabled": true,
        "event_types": ["PUSH_ARTIFACT", "DELETE_ARTIFACT"],
        "targets": [{
            "type": "http",
            "address": url,
            "auth_header": auth_header.unwrap_or(""),
            "skip_cert_verify": false,
            "payload_format": payload_format,
        }],
    });
    for _ in 0..2 {
        if let Some(id) = find_policy(registry, project, &base).await? {
            let what = format!("updating webhook policy {id} of project '{project}'");
            let mut body = policy.clone();
            body["id"] = id.into();
            let resp = registry
                .api(&what, Method::PUT, &format!("{base}/{id}"), Some(body))
                .await?;
            if !resp.status().is_success() {
                return Err(registry.error_from(resp, &what).await);
            }
            return Ok(Registered::Updated(id));
        }
        let what = format!("creating the webhook policy of project '{project}'");
        let resp = registry
            .api(&what, Method::POST, &base, Some(policy.clone()))
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
            _ => return Err(registry.error_from(resp, &what).await),
        }
    }
    Err(RegistryError::Other {
        registry: registry.name().to_string(),
        what: format!("registering the webhook of project '{project}'"),
        detail: "Harbor reported a policy of that name but did not list it".into(),
    })
}

async fn find_policy(
    registry: &Registry,
    project: &str,
    base: &str,
) -> Result<Option<u64>, RegistryError> {
    let what = format!("listing webhook policies of project '{project}'");
    let resp = registry
        .api(&what, Method::GET, &format!("{base}?page_size=100"), None)
        .await?;
    if resp.status() != StatusCode::OK {
        return Err(registry.error_from(resp, &what).await);
    }
    let list: Vec<serde_json::Value> = json_body(registry, resp, 16 << 20, &what).await?;
    Ok(list
        .iter()
        .find(|p| p["name"] == POLICY_NAME)
        .and_then(|p| p["id"].as_u64()))
}
