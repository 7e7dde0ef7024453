//! A fake of the few Harbor REST calls harbor-relay makes, following
//! Harbor's swagger (`api/v2.0/swagger.yaml`, v2.8 to v2.15): paths,
//! status codes and bodies as in `shared/research/harbor.md` §4. Harbor
//! cannot run here; its registry side is a real registry behind the same
//! address (everything not under `/api/v2.0` is forwarded to it).
//!
//! This file holds the state, the server and what the calls share (who is
//! asking, paging, Harbor's error body); `projects.rs`, `webhooks.rs` and
//! `artifacts.rs` hold the handlers, each behaviour citing Harbor's source.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::fault::{FaultProxy, Gate};
use super::harbor_auth::{Account, HarborAuth};

mod artifacts;
mod notify;
mod projects;
pub mod scans;
mod webhooks;

use artifacts::*;
use projects::*;
use webhooks::*;

pub struct HarborState {
    /// The real registry behind the fake (lists come from it).
    pub upstream: String,
    /// Accounts, the token service and `v2auth` (`harbor_auth.rs`).
    pub auth: HarborAuth,
    /// Project name → id.
    pub projects: Mutex<BTreeMap<String, u64>>,
    /// Project → policies (as stored, with ids).
    pub policies: Mutex<BTreeMap<String, Vec<Value>>>,
    /// (method, path) of every API call.
    pub calls: Mutex<Vec<(String, String)>>,
    /// Bodies of project creations.
    pub created: Mutex<Vec<Value>>,
    /// Deliveries (executions) by policy id, newest first.
    pub executions: Mutex<BTreeMap<u64, Vec<Value>>>,
    /// Label names by artifact digest.
    pub labels: Mutex<BTreeMap<String, Vec<String>>>,
    /// The Harbor version played (major, minor); permissions follow it.
    pub version: Mutex<(u32, u32)>,
    /// Tags removed through `deleteTag`: (repository, digest, tag).
    pub deleted_tags: Mutex<Vec<(String, String, String)>>,
    /// The CA that signed this Harbor's certificate, when it serves HTTPS.
    pub ca: Option<Vec<u8>>,
    /// Whether a scanner is configured (artifacts are scannable).
    pub scanner: Mutex<bool>,
    /// The scanner's reports by artifact digest.
    pub scans: Mutex<BTreeMap<String, scans::Scan>>,
}

type St = Arc<HarborState>;

fn who(st: &HarborState, headers: &HeaderMap) -> Option<String> {
    st.auth.basic(headers).map(|(u, _)| u)
}

/// Whether a project exists: created through the API, or holding a
/// repository in the registry behind (pushed there by the test).
async fn project_names(st: &HarborState) -> std::collections::BTreeSet<String> {
    let mut names: std::collections::BTreeSet<String> = upstream_catalog(st)
        .await
        .iter()
        .filter_map(|r| r.split_once('/').map(|(p, _)| p.to_string()))
        .collect();
    names.extend(st.projects.lock().expect("projects").keys().cloned());
    names
}

/// `GET /service/token`: Harbor's token service (`harbor_auth.rs`).
async fn service_token(
    State(st): State<St>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    let names = project_names(&st).await;
    st.auth.token(&headers, &q, &|p| names.contains(p))
}

fn errors(status: StatusCode, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"errors": [{"code": status.canonical_reason().unwrap_or("ERROR").to_uppercase().replace(' ', "_"), "message": message}]})),
    )
        .into_response()
}

/// `GET /api/v2.0/systeminfo`, answered without login (GetSystemInfo in
/// src/server/v2.0/handler/systeminfo.go), with the version played.
async fn systeminfo(State(st): State<St>) -> Response {
    let (major, minor) = *st.version.lock().expect("version");
    axum::Json(
        json!({"harbor_version": format!("v{major}.{minor}.0-fake"), "auth_mode": "db_auth"}),
    )
    .into_response()
}

/// `GET /api/v2.0/systeminfo/getcert`: the CA as a file download, without
/// login, or `404` when the instance has none (GetCert in
/// src/server/v2.0/handler/systeminfo.go; harbor.md §4).
async fn getcert(State(st): State<St>) -> Response {
    match &st.ca {
        Some(pem) => (
            [
                ("content-type", "application/octet-stream"),
                ("content-disposition", "attachment; filename=ca.crt"),
            ],
            pem.clone(),
        )
            .into_response(),
        None => errors(StatusCode::NOT_FOUND, "the CA does not exist"),
    }
}

#[derive(serde::Deserialize)]
struct Paging {
    page: Option<usize>,
    page_size: Option<usize>,
}

/// A page of a list as Harbor answers it: `X-Total-Count` with the whole
/// list's size (ListWebhookPoliciesOfProject and the other list handlers
/// of src/server/v2.0/handler/), `page_size` at most 100.
fn paged_answer(all: &[Value], p: &Paging) -> Response {
    if p.page_size.is_some_and(|s| s > 100) {
        return errors(StatusCode::BAD_REQUEST, "page_size must be at most 100");
    }
    (
        [("x-total-count", all.len().to_string())],
        axum::Json(page_of(all, p)),
    )
        .into_response()
}

fn page_of<T: Clone>(all: &[T], p: &Paging) -> Vec<T> {
    let size = p.page_size.unwrap_or(10).clamp(1, 100);
    let page = p.page.unwrap_or(1).max(1);
    all.iter()
        .skip((page - 1) * size)
        .take(size)
        .cloned()
        .collect()
}

async fn upstream_catalog(st: &HarborState) -> Vec<String> {
    let v: Value = reqwest::get(format!("{}/v2/_catalog?n=1000", st.upstream))
        .await
        .expect("catalog")
        .json()
        .await
        .expect("json");
    v["repositories"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str().map(str::to_string))
        .collect()
}

/// A fake Harbor: its REST API here, its registry a real one behind it.
pub struct FakeHarbor {
    pub proxy: FaultProxy,
    pub state: St,
}

impl FakeHarbor {
    /// A Harbor with one account: `user` is a system admin, or, named
    /// `robot$<name>`, a system robot holding pull, push and delete on
    /// every project and `project:create`, or, named
    /// `robot$<project>+<name>`, a robot of that project with pull, push
    /// and delete there.
    pub async fn start(registry_url: &str, user: &str, pass: &str) -> FakeHarbor {
        let account = match user.strip_prefix("robot$") {
            None => Account::admin(pass),
            Some(r) => match r.split_once('+') {
                Some((project, _)) => {
                    Account::project_robot(pass, project, &["pull", "push", "delete"])
                }
                None => Account::system_robot(pass, &["pull", "push", "delete"], true),
            },
        };
        Self::start_with(registry_url, BTreeMap::from([(user.to_string(), account)])).await
    }

    /// [`FakeHarbor::start`] over HTTPS with `pki`'s certificate, its CA
    /// served at `/api/v2.0/systeminfo/getcert` as Harbor serves its own.
    pub async fn start_tls(
        registry_url: &str,
        user: &str,
        pass: &str,
        pki: &super::Pki,
    ) -> FakeHarbor {
        let account = match user.strip_prefix("robot$") {
            None => Account::admin(pass),
            Some(_) => Account::system_robot(pass, &["pull", "push", "delete"], true),
        };
        let accounts = BTreeMap::from([(user.to_string(), account)]);
        Self::start_full(registry_url, accounts, Some(pki)).await
    }

    /// A Harbor with these accounts.
    pub async fn start_with(registry_url: &str, accounts: BTreeMap<String, Account>) -> FakeHarbor {
        Self::start_full(registry_url, accounts, None).await
    }

    async fn start_full(
        registry_url: &str,
        accounts: BTreeMap<String, Account>,
        pki: Option<&super::Pki>,
    ) -> FakeHarbor {
        let state = Arc::new(HarborState {
            upstream: registry_url.trim_end_matches('/').to_string(),
            auth: HarborAuth::new(accounts),
            projects: Mutex::default(),
            policies: Mutex::default(),
            calls: Mutex::default(),
            created: Mutex::default(),
            executions: Mutex::default(),
            labels: Mutex::default(),
            version: Mutex::new((2, 14)),
            deleted_tags: Mutex::default(),
            ca: pki.map(|p| std::fs::read(&p.ca_pem).expect("ca")),
            scanner: Mutex::new(false),
            scans: Mutex::default(),
        });
        let routes = axum::Router::new()
            .route(
                "/api/v2.0/projects",
                axum::routing::head(head_project)
                    .get(list_projects)
                    .post(create_project),
            )
            .route("/api/v2.0/systeminfo", get(systeminfo))
            .route("/api/v2.0/systeminfo/getcert", get(getcert))
            .route("/service/token", get(service_token))
            .route(
                "/api/v2.0/projects/{project}/repositories",
                get(list_repositories),
            )
            .route(
                "/api/v2.0/projects/{project}/repositories/{repo}/artifacts",
                get(list_artifacts),
            )
            .route(
                "/api/v2.0/projects/{project}/repositories/{repo}/artifacts/{reference}",
                get(get_artifact),
            )
            .route(
                "/api/v2.0/projects/{project}/repositories/{repo}/artifacts/{reference}/additions/vulnerabilities",
                get(scans::vulnerabilities),
            )
            .route(
                "/api/v2.0/projects/{project}/repositories/{repo}/artifacts/{reference}/tags/{tag}",
                axum::routing::delete(delete_tag),
            )
            .route(
                "/api/v2.0/projects/{project}/webhook/policies",
                get(list_policies).post(create_policy),
            )
            .route(
                "/api/v2.0/projects/{project}/webhook/policies/{id}",
                put(update_policy),
            )
            .route(
                "/api/v2.0/projects/{project}/webhook/policies/{id}/executions",
                get(list_executions),
            )
            .with_state(state.clone());
        let observed = state.clone();
        let observer: super::fault::Observer = Arc::new(move |method, path, status, headers| {
            let host = headers
                .get("host")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            notify::pushed(&observed, method, path, status, headers, &host);
        });
        let gate_state = state.clone();
        let gate: Gate = Arc::new(move |method, path, headers| {
            let st = gate_state.clone();
            Box::pin(async move {
                let names = project_names(&st).await;
                let host = headers
                    .get("host")
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                let scheme = if st.ca.is_some() { "https" } else { "http" };
                let origin = format!("{scheme}://{host}");
                if let Some(refused) = st
                    .auth
                    .check_v2(&method, &path, &headers, &origin, &|p| names.contains(p))
                {
                    return Some(refused);
                }
                referrers(&st, &method, &path).await
            })
        });
        FakeHarbor {
            proxy: FaultProxy::start_observed(
                registry_url,
                routes,
                Some(gate),
                Some(observer),
                pki,
            )
            .await,
            state,
        }
    }

    pub fn url(&self) -> &str {
        &self.proxy.url
    }
}
