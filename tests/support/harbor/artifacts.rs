//! Harbor's artifacts in the double: repositories and artifacts listed
//! from the real registry behind it (names encoded twice, as Harbor wants),
//! labels, `deleteTag`, and the OCI referrers API Harbor 2.8+ serves.

use super::*;

/// A repository name inside a project as Harbor's artifact handlers take
/// it, URL-encoded twice (they path-unescape the already-decoded parameter
/// again: src/server/v2.0/handler/util.go, unescapePathParams). axum undid
/// one encoding; a name encoded only once arrives with a bare '/', which
/// Harbor's router does not match: `None`.
pub(super) fn twice_decoded(repo: &str) -> Option<String> {
    (!repo.contains('/')).then(|| repo.replace("%2F", "/"))
}

/// Harbor's 404 for a repository name encoded only once.
pub(super) fn not_twice_encoded() -> Response {
    errors(
        StatusCode::NOT_FOUND,
        "the repository name must be URL-encoded twice (%252F)",
    )
}

#[derive(serde::Deserialize, Default)]
pub(super) struct Labels {
    with_label: Option<bool>,
    with_scan_overview: Option<bool>,
}

/// `GET …/repositories/{repo}/artifacts/{reference}` (GetArtifact): one
/// artifact by tag or digest, its labels with `with_label=true`.
/// `DELETE …/artifacts/{reference}/tags/{tag}` (swagger `deleteTag`):
/// the repository's '/' encoded twice; `403` without the `delete`
/// permission on the project (`rbac.ActionDelete` on `ResourceTag`);
/// `404` when the tag is not on that artifact. The registry behind cannot
/// untag, so the removal is recorded in `deleted_tags`.
pub(super) async fn delete_tag(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo, reference, tag)): Path<(String, String, String, String)>,
) -> Response {
    st.calls.lock().expect("calls").push((
        "DELETE".into(),
        format!("/projects/{project}/repositories/{repo}/artifacts/{reference}/tags/{tag}"),
    ));
    let Some(repo) = twice_decoded(&repo) else {
        return not_twice_encoded();
    };
    let repo = format!("{project}/{repo}");
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
pub(super) async fn upstream_tags(st: &HarborState, repository: &str) -> Vec<String> {
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
pub(super) async fn upstream_digest(
    st: &HarborState,
    repository: &str,
    reference: &str,
) -> Option<String> {
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

pub(super) async fn get_artifact(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo, reference)): Path<(String, String, String)>,
    Query(q): Query<Labels>,
) -> Response {
    let Some(repo) = twice_decoded(&repo) else {
        return not_twice_encoded();
    };
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
    let mut artifact = json!({"digest": digest, "labels": labels});
    if q.with_scan_overview == Some(true) {
        let repository = format!("{project}/{repo}");
        super::scans::add_overview(&st, &headers, &repository, &digest, &mut artifact).await;
    }
    axum::Json(artifact).into_response()
}

pub(super) async fn list_repositories(
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

pub(super) async fn list_artifacts(
    State(st): State<St>,
    headers: HeaderMap,
    Path((project, repo)): Path<(String, String)>,
    Query(p): Query<Paging>,
    Query(q): Query<Labels>,
) -> Response {
    let Some(repo) = twice_decoded(&repo) else {
        return not_twice_encoded();
    };
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
pub(super) async fn referrers(
    st: &HarborState,
    method: &axum::http::Method,
    path: &str,
) -> Option<Response> {
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
