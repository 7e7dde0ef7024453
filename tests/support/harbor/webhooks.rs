//! Harbor's webhook policies in the double: list, create and update
//! (`PUT` replaces the whole policy, as Harbor's handler does), who may
//! manage them, and their executions (deliveries).

use super::*;

/// Harbor's answer to a webhook-policy call: `401` without valid
/// credentials, `403` for an account without `notification-policy`.
pub(super) fn webhook_refusal(st: &HarborState, headers: &HeaderMap) -> Option<Response> {
    let Some(user) = who(st, headers) else {
        return Some(errors(StatusCode::UNAUTHORIZED, "unauthorized"));
    };
    (!may_manage_webhooks(st, &user)).then(|| errors(StatusCode::FORBIDDEN, "forbidden"))
}

/// Whether `user` may manage the webhook policies of a project on this
/// Harbor version: robot accounts hold `notification-policy` only from
/// v2.10 (`src/common/rbac/const.go`, commit 5c02fd807e "add permission
/// api", first released in v2.10.0); users here are project admins.
pub(super) fn may_manage_webhooks(st: &HarborState, user: &str) -> bool {
    !user.starts_with("robot$") || *st.version.lock().expect("version") >= (2, 10)
}

pub(super) fn valid_policy(p: &Value) -> Result<(), &'static str> {
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

pub(super) async fn list_policies(
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
    paged_answer(&policies_of(&st, &project), &p)
}

/// The policies of a project, as stored.
pub(super) fn policies_of(st: &HarborState, project: &str) -> Vec<Value> {
    st.policies
        .lock()
        .expect("policies")
        .get(project)
        .cloned()
        .unwrap_or_default()
}

/// What creating and updating a policy share: the call recorded, Harbor's
/// refusal of an account that may not manage webhooks, then the body
/// parsed and checked as Harbor's handler does.
fn policy_body(
    st: &HarborState,
    headers: &HeaderMap,
    method: &str,
    path: String,
    body: &str,
) -> Result<Value, Box<Response>> {
    st.calls.lock().expect("calls").push((method.into(), path));
    if let Some(refused) = webhook_refusal(st, headers) {
        return Err(Box::new(refused));
    }
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Err(Box::new(errors(StatusCode::BAD_REQUEST, "invalid JSON")));
    };
    valid_policy(&v).map_err(|e| Box::new(errors(StatusCode::BAD_REQUEST, e)))?;
    Ok(v)
}

pub(super) async fn create_policy(
    State(st): State<St>,
    headers: HeaderMap,
    Path(project): Path<String>,
    body: String,
) -> Response {
    let path = format!("/projects/{project}/webhook/policies");
    let mut v = match policy_body(&st, &headers, "POST", path, &body) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
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

pub(super) async fn update_policy(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, id)): Path<(String, u64)>,
    body: String,
) -> Response {
    let path = format!("/projects/{project}/webhook/policies/{id}");
    let mut v = match policy_body(&st, &headers, "PUT", path, &body) {
        Ok(v) => v,
        Err(refused) => return *refused,
    };
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

/// `GET …/webhook/policies/{id}/executions` (ListExecutionsOfWebhookPolicy
/// in src/server/v2.0/handler/webhook.go: the policy must be in the
/// project, paged, X-Total-Count).
pub(super) async fn list_executions(
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
