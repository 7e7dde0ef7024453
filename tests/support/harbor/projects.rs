//! Harbor's projects in the double: `HEAD` by name, `POST` (with Harbor's
//! checks of the name and `metadata.public`), and the paged listing.

use super::*;

pub(super) async fn head_project(
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

pub(super) async fn create_project(
    State(st): State<St>,
    headers: HeaderMap,
    body: String,
) -> Response {
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
        .insert(name.to_string(), super::super::harbor_auth::now());
    st.created.lock().expect("created").push(v.clone());
    (
        StatusCode::CREATED,
        [("location", format!("/api/v2.0/projects/{id}"))],
    )
        .into_response()
}

pub(super) async fn list_projects(
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
