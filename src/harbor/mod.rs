//! Harbor's REST API (`/api/v2.0`), for what a plain registry cannot do:
//! creating a project on the target before the first push into it, and
//! registering harbor-relay's webhook policy on a source project.
//!
//! Written against Harbor v2.8 to v2.15 (swagger `api/v2.0/swagger.yaml`):
//! `HEAD /projects?project_name=`, `POST /projects` with `metadata.public`
//! as a string, `GET/POST/PUT /projects/{name}/webhook/policies`.
//!
//! Split by what it acts on, as regclient splits the registry protocol:
//! `projects.rs`, `artifacts.rs` (tags and labels), `webhooks.rs` (the
//! webhook policy and its deliveries); this file holds what they share
//! (paged `GET`s with a body limit, Harbor's error bodies) and the
//! version and naming rules.

use reqwest::{Method, StatusCode};

use crate::registry::{Registry, RegistryError};

mod artifacts;
mod projects;
mod webhooks;

pub use artifacts::{
    Tagged, artifact_labels, delete_tag, list_tagged, missing_labels, scan_overview,
    vulnerabilities,
};
pub use projects::{ProjectCache, ensure_project, project_exists, projects};
pub use webhooks::{
    Delivery, POLICY_NAME, Policy, Registered, WebhookTarget, last_deliveries, merged_policy,
    register_webhook, webhook_policies,
};

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

#[cfg(test)]
mod tests {
    use super::*;

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
