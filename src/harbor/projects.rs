//! Harbor projects: whether one exists, creating one on a target before
//! the first push into it (a Harbor refuses a push into a project it does
//! not have), and listing those a rule reads.

use std::collections::HashSet;
use std::sync::Mutex;

use reqwest::{Method, StatusCode};
use serde_json::json;

use super::{api_error, is_valid_project, paged};
use crate::registry::{Registry, RegistryError};

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
