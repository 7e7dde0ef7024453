//! A fake of the few Harbor REST calls harbor-relay makes, following
//! Harbor's swagger (`api/v2.0/swagger.yaml`, v2.8 to v2.15): paths,
//! status codes and bodies as in `shared/research/harbor.md` §4. Harbor
//! cannot run here; its registry side is a real registry behind the same
//! address (everything not under `/api/v2.0` is forwarded to it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use serde_json::{Value, json};

use super::fault::{FaultProxy, Gate};
use super::harbor_auth::{Account, HarborAuth};

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
}

/// Harbor's answer to a webhook-policy call: `401` without valid
/// credentials, `403` for an account without `notification-policy`.
fn webhook_refusal(st: &HarborState, headers: &HeaderMap) -> Option<Response> {
    let Some(user) = who(st, headers) else {
        return Some(errors(StatusCode::UNAUTHORIZED, "unauthorized"));
    };
    (!may_manage_webhooks(st, &user)).then(|| errors(StatusCode::FORBIDDEN, "forbidden"))
}

/// Whether `user` may manage the webhook policies of a project on this
/// Harbor version: robot accounts hold `notification-policy` only from
/// v2.10 (`src/common/rbac/const.go`, commit 5c02fd807e "add permission
/// api", first released in v2.10.0); users here are project admins.
fn may_manage_webhooks(st: &HarborState, user: &str) -> bool {
    !user.starts_with("robot$") || *st.version.lock().expect("version") >= (2, 10)
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

async fn head_project(
    State(st): State<St>,
    headers: HeaderMap,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    st.calls
        .lock()
        .expect("calls")
        .push(("HEAD".into(), "/projects".into()));
    if who(&st, &headers).is_none() {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    let name = q.get("project_name").cloned().unwrap_or_default();
    if st.projects.lock().expect("projects").contains_key(&name) {
        StatusCode::OK.into_response()
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

async fn create_project(State(st): State<St>, headers: HeaderMap, body: String) -> Response {
    st.calls
        .lock()
        .expect("calls")
        .push(("POST".into(), "/projects".into()));
    let Some((_, account)) = st.auth.basic(&headers) else {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    // Project-level robots (robot$<project>+<name>) hold no system
    // permissions; a system robot needs `project:create`
    // (`src/common/rbac/const.go`, `ResourceProject`/`ActionCreate`).
    if !account.create_project {
        return errors(StatusCode::FORBIDDEN, "forbidden");
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let Some(name) = v["project_name"].as_str() else {
        return errors(StatusCode::BAD_REQUEST, "project_name is required");
    };
    // `restrictedNameChars` and the 1-255 length of src/pkg/project/manager.go.
    if !harbor_relay::harbor::is_valid_project(name) {
        return errors(
            StatusCode::BAD_REQUEST,
            "project name must match [a-z0-9]+(?:[._-][a-z0-9]+)* and be 1-255 characters",
        );
    }
    if let Some(public) = v["metadata"].get("public")
        && !matches!(public.as_str(), Some("true") | Some("false"))
    {
        return errors(
            StatusCode::BAD_REQUEST,
            "metadata.public must be \"true\" or \"false\"",
        );
    }
    let mut projects = st.projects.lock().expect("projects");
    if projects.contains_key(name) {
        return errors(StatusCode::CONFLICT, "project already exists");
    }
    let id = projects.len() as u64 + 1;
    projects.insert(name.to_string(), id);
    st.auth
        .created_at
        .lock()
        .expect("created")
        .insert(name.to_string(), super::harbor_auth::now());
    st.created.lock().expect("created").push(v.clone());
    (
        StatusCode::CREATED,
        [("location", format!("/api/v2.0/projects/{id}"))],
    )
        .into_response()
}

fn valid_policy(p: &Value) -> Result<(), &'static str> {
    const TYPES: [&str; 10] = [
        "PUSH_ARTIFACT",
        "PULL_ARTIFACT",
        "DELETE_ARTIFACT",
        "SCANNING_COMPLETED",
        "SCANNING_FAILED",
        "SCANNING_STOPPED",
        "QUOTA_EXCEED",
        "QUOTA_WARNING",
        "REPLICATION",
        "TAG_RETENTION",
    ];
    let types = p["event_types"]
        .as_array()
        .ok_or("event_types is required")?;
    if types.is_empty()
        || !types
            .iter()
            .all(|t| t.as_str().is_some_and(|t| TYPES.contains(&t)))
    {
        return Err("invalid event_types");
    }
    let targets = p["targets"].as_array().ok_or("targets is required")?;
    if targets.is_empty() {
        return Err("targets is required");
    }
    for t in targets {
        if t["type"] != "http" {
            return Err("target type must be http or slack");
        }
        if !matches!(
            t["payload_format"].as_str(),
            None | Some("Default") | Some("CloudEvents")
        ) {
            return Err("payload_format must be Default or CloudEvents");
        }
    }
    Ok(())
}

async fn list_policies(
    State(st): State<St>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(p): Query<Paging>,
) -> Response {
    st.calls.lock().expect("calls").push((
        "GET".into(),
        format!("/projects/{project}/webhook/policies"),
    ));
    if let Some(refused) = webhook_refusal(&st, &headers) {
        return refused;
    }
    let list = st
        .policies
        .lock()
        .expect("policies")
        .get(&project)
        .cloned()
        .unwrap_or_default();
    paged_answer(&list, &p)
}

async fn create_policy(
    State(st): State<St>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: String,
) -> Response {
    st.calls.lock().expect("calls").push((
        "POST".into(),
        format!("/projects/{project}/webhook/policies"),
    ));
    if let Some(refused) = webhook_refusal(&st, &headers) {
        return refused;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    if let Err(e) = valid_policy(&v) {
        return errors(StatusCode::BAD_REQUEST, e);
    }
    let mut all = st.policies.lock().expect("policies");
    let list = all.entry(project.clone()).or_default();
    if list.iter().any(|p| p["name"] == v["name"]) {
        return errors(StatusCode::CONFLICT, "name already exists");
    }
    let id = list.len() as u64 + 100;
    v["id"] = id.into();
    list.push(v);
    (
        StatusCode::CREATED,
        [(
            "location",
            format!("/api/v2.0/projects/{project}/webhook/policies/{id}"),
        )],
    )
        .into_response()
}

async fn update_policy(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, id)): Path<(String, u64)>,
    body: String,
) -> Response {
    st.calls.lock().expect("calls").push((
        "PUT".into(),
        format!("/projects/{project}/webhook/policies/{id}"),
    ));
    if let Some(refused) = webhook_refusal(&st, &headers) {
        return refused;
    }
    let Ok(mut v) = serde_json::from_str::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    if let Err(e) = valid_policy(&v) {
        return errors(StatusCode::BAD_REQUEST, e);
    }
    let mut all = st.policies.lock().expect("policies");
    let Some(p) = all
        .get_mut(&project)
        .and_then(|l| l.iter_mut().find(|p| p["id"] == id))
    else {
        return errors(StatusCode::NOT_FOUND, "policy not found");
    };
    v["id"] = id.into();
    *p = v;
    StatusCode::OK.into_response()
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

/// `GET …/webhook/policies/{id}/executions` (ListExecutionsOfWebhookPolicy
/// in src/server/v2.0/handler/webhook.go: the policy must be in the
/// project, paged, X-Total-Count).
async fn list_executions(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, id)): Path<(String, u64)>,
    Query(p): Query<Paging>,
) -> Response {
    if let Some(refused) = webhook_refusal(&st, &headers) {
        return refused;
    }
    let in_project = st
        .policies
        .lock()
        .expect("policies")
        .get(&project)
        .is_some_and(|l| l.iter().any(|p| p["id"] == id));
    if !in_project {
        return errors(StatusCode::NOT_FOUND, "policy not found in the project");
    }
    let list = st
        .executions
        .lock()
        .expect("executions")
        .get(&id)
        .cloned()
        .unwrap_or_default();
    paged_answer(&list, &p)
}

#[derive(serde::Deserialize, Default)]
struct Labels {
    with_label: Option<bool>,
}

/// `GET …/repositories/{repo}/artifacts/{reference}` (GetArtifact): one
/// artifact by tag or digest, its labels with `with_label=true`.
/// `DELETE …/artifacts/{reference}/tags/{tag}` (swagger `deleteTag`):
/// the repository's '/' encoded twice; `403` without the `delete`
/// permission on the project (`rbac.ActionDelete` on `ResourceTag`);
/// `404` when the tag is not on that artifact. The registry behind cannot
/// untag, so the removal is recorded in `deleted_tags`.
async fn delete_tag(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo, reference, tag)): Path<(String, String, String, String)>,
) -> Response {
    st.calls.lock().expect("calls").push((
        "DELETE".into(),
        format!("/projects/{project}/repositories/{repo}/artifacts/{reference}/tags/{tag}"),
    ));
    if repo.contains('/') {
        return errors(
            StatusCode::NOT_FOUND,
            "the repository name must be URL-encoded twice (%252F)",
        );
    }
    let repo = format!("{project}/{}", repo.replace("%2F", "/"));
    let Some((_, account)) = st.auth.basic(&headers) else {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    };
    if !account.actions_on(&project).contains("delete") {
        return errors(StatusCode::FORBIDDEN, "forbidden");
    }
    let on_artifact =
        upstream_digest(&st, &repo, &tag).await.as_deref() == Some(reference.as_str());
    if !on_artifact {
        return errors(StatusCode::NOT_FOUND, "tag not found on this artifact");
    }
    st.deleted_tags
        .lock()
        .expect("deleted")
        .push((repo, reference, tag));
    StatusCode::OK.into_response()
}

/// The tags of `repository` in the registry behind (none if it has none).
async fn upstream_tags(st: &HarborState, repository: &str) -> Vec<String> {
    let v: Value = reqwest::get(format!("{}/v2/{repository}/tags/list", st.upstream))
        .await
        .expect("tags")
        .json()
        .await
        .unwrap_or_default();
    v["tags"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect()
}

/// What `reference` resolves to in `repository` of the registry behind
/// (its `Docker-Content-Digest`), if it exists.
async fn upstream_digest(st: &HarborState, repository: &str, reference: &str) -> Option<String> {
    reqwest::Client::new()
        .head(format!(
            "{}/v2/{repository}/manifests/{reference}",
            st.upstream
        ))
        .header("accept", harbor_relay::manifest::ACCEPTED.join(", "))
        .send()
        .await
        .expect("HEAD")
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn get_artifact(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo, reference)): Path<(String, String, String)>,
    Query(q): Query<Labels>,
) -> Response {
    if repo.contains('/') {
        return errors(
            StatusCode::NOT_FOUND,
            "the repository name must be URL-encoded twice (%252F)",
        );
    }
    let repo = repo.replace("%2F", "/");
    if who(&st, &headers).is_none() {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let Some(digest) = upstream_digest(&st, &format!("{project}/{repo}"), &reference).await else {
        return errors(StatusCode::NOT_FOUND, "artifact not found");
    };
    let labels: Vec<Value> = match q.with_label {
        Some(true) => st
            .labels
            .lock()
            .expect("labels")
            .get(&digest)
            .into_iter()
            .flatten()
            .map(|n| json!({"name": n, "scope": "g"}))
            .collect(),
        _ => Vec::new(),
    };
    axum::Json(json!({"digest": digest, "labels": labels})).into_response()
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

async fn list_projects(
    State(st): State<St>,
    headers: HeaderMap,
    Query(p): Query<Paging>,
) -> Response {
    st.calls
        .lock()
        .expect("calls")
        .push(("GET".into(), "/projects".into()));
    if who(&st, &headers).is_none() {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let mut names: Vec<String> = upstream_catalog(&st)
        .await
        .iter()
        .filter_map(|r| r.split_once('/').map(|(p, _)| p.to_string()))
        .collect();
    names.sort();
    names.dedup();
    let all: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| json!({"project_id": i + 1, "name": n}))
        .collect();
    paged_answer(&all, &p)
}

async fn list_repositories(
    State(st): State<St>,
    headers: HeaderMap,
    Path(project): Path<String>,
    Query(p): Query<Paging>,
) -> Response {
    st.calls
        .lock()
        .expect("calls")
        .push(("GET".into(), format!("/projects/{project}/repositories")));
    if who(&st, &headers).is_none() {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let all: Vec<Value> = upstream_catalog(&st)
        .await
        .into_iter()
        .filter(|r| r.starts_with(&format!("{project}/")))
        .map(|r| json!({"name": r}))
        .collect();
    paged_answer(&all, &p)
}

async fn list_artifacts(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo)): Path<(String, String)>,
    Query(p): Query<Paging>,
    Query(q): Query<Labels>,
) -> Response {
    // Harbor takes the repository name URL-encoded twice (its handlers
    // path-unescape the already-decoded parameter again:
    // src/server/v2.0/handler/util.go, unescapePathParams). axum undid one
    // encoding; a name encoded only once arrives here with a bare '/',
    // which Harbor's router does not match: 404.
    if repo.contains('/') {
        return errors(
            StatusCode::NOT_FOUND,
            "the repository name must be URL-encoded twice (%252F)",
        );
    }
    let repo = repo.replace("%2F", "/");
    st.calls.lock().expect("calls").push((
        "GET".into(),
        format!("/projects/{project}/repositories/{repo}/artifacts"),
    ));
    if who(&st, &headers).is_none() {
        return errors(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    let full = format!("{project}/{repo}");
    let mut by_digest: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for t in upstream_tags(&st, &full).await.iter().map(String::as_str) {
        let digest = upstream_digest(&st, &full, t).await.unwrap_or_default();
        by_digest
            .entry(digest)
            .or_default()
            .push(json!({"name": t}));
    }
    let labels = st.labels.lock().expect("labels").clone();
    let all: Vec<Value> = by_digest
        .into_iter()
        .map(|(d, tags)| {
            // Labels only with_label=true (ListArtifacts, swagger
            // `withLabel`).
            let l: Vec<Value> = match q.with_label {
                Some(true) => labels
                    .get(&d)
                    .into_iter()
                    .flatten()
                    .map(|n| json!({"name": n, "scope": "g"}))
                    .collect(),
                _ => Vec::new(),
            };
            json!({"digest": d, "tags": tags, "labels": l})
        })
        .collect();
    paged_answer(&all, &p)
}

/// `GET /v2/<repo>/referrers/<digest>` as Harbor (from v2.8) answers it
/// (`src/server/registry/referrers.go`): an OCI index of the subject's
/// accessories. Harbor records a cosign signature, attestation or SBOM
/// pushed under `sha256-<hex>.sig`/`.att`/`.sbom` as an accessory of the
/// subject (`src/server/middleware/cosign`), so those are listed, though
/// their manifests have no `subject`. Before v2.8 there is no such route.
async fn referrers(st: &HarborState, method: &axum::http::Method, path: &str) -> Option<Response> {
    let (repo, subject) = path.strip_prefix("/v2/")?.split_once("/referrers/")?;
    if method != axum::http::Method::GET || *st.version.lock().expect("version") < (2, 8) {
        return None;
    }
    let hex = subject.strip_prefix("sha256:")?;
    let tags = upstream_tags(st, repo).await;
    let mut manifests = Vec::new();
    for suffix in [".sig", ".att", ".sbom"] {
        let tag = format!("sha256-{hex}{suffix}");
        if !tags.contains(&tag) {
            continue;
        }
        let head = reqwest::Client::new()
            .head(format!("{}/v2/{repo}/manifests/{tag}", st.upstream))
            .header("accept", harbor_relay::manifest::ACCEPTED.join(", "))
            .send()
            .await
            .ok()?;
        let header = |h: &str| {
            head.headers()
                .get(h)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        manifests.push(json!({
            "mediaType": header("content-type"),
            "digest": header("docker-content-digest"),
            "size": header("content-length").parse::<u64>().unwrap_or(0),
        }));
    }
    let body = json!({"schemaVersion": 2, "mediaType": harbor_relay::manifest::OCI_INDEX, "manifests": manifests});
    Some(
        (
            StatusCode::OK,
            [("content-type", harbor_relay::manifest::OCI_INDEX)],
            body.to_string(),
        )
            .into_response(),
    )
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

    /// A Harbor with these accounts.
    pub async fn start_with(registry_url: &str, accounts: BTreeMap<String, Account>) -> FakeHarbor {
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
        });
        let routes = axum::Router::new()
            .route(
                "/api/v2.0/projects",
                axum::routing::head(head_project)
                    .get(list_projects)
                    .post(create_project),
            )
            .route("/api/v2.0/systeminfo", get(systeminfo))
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
                if let Some(refused) = st
                    .auth
                    .check_v2(&method, &path, &headers, &host, &|p| names.contains(p))
                {
                    return Some(refused);
                }
                referrers(&st, &method, &path).await
            })
        });
        FakeHarbor {
            proxy: FaultProxy::start_gated(registry_url, routes, Some(gate)).await,
            state,
        }
    }

    pub fn url(&self) -> &str {
        &self.proxy.url
    }
}
