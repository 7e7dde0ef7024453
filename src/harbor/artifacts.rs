//! Harbor artifacts through the REST API, where `/v2/` has nothing: the
//! labels a rule filters on, every tag of a project with its digest in one
//! paged listing, and a tag removed while its artifact stays.

use reqwest::{Method, StatusCode};

use super::{api_error, get_json, paged, projects};
use crate::registry::{Registry, RegistryError};

/// `/api/v2.0/projects/{project}/repositories/{inside}`, the repository's
/// '/' encoded twice, as Harbor's artifact handlers want it (they unescape
/// the path parameter once more).
fn repository_path(project: &str, inside: &str) -> String {
    format!(
        "/api/v2.0/projects/{project}/repositories/{}",
        inside.replace('/', "%252F")
    )
}

/// One artifact's path: [`repository_path`]`/artifacts/{reference}`.
fn artifact_path(project: &str, inside: &str, reference: &str) -> String {
    format!("{}/artifacts/{reference}", repository_path(project, inside))
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
    let path = format!("{}/tags/{tag}", artifact_path(project, inside, digest));
    let resp = registry.api(&what, Method::DELETE, &path, None).await?;
    match resp.status() {
        StatusCode::OK | StatusCode::NOT_FOUND => Ok(()),
        _ => Err(api_error(registry, resp, &what, (Method::DELETE, &path)).await),
    }
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
    let path = format!(
        "{}?with_label=true",
        artifact_path(project, inside, reference)
    );
    let artifact: serde_json::Value = get_json(registry, &what, &path, 4 << 20).await?;
    Ok(label_names(&artifact))
}

/// One artifact with its scan overview (`GET …/artifacts/{reference}?with_scan_overview=true`),
/// as Harbor answers it, for the scan gate to judge.
pub async fn scan_overview(
    registry: &Registry,
    repository: &str,
    reference: &str,
) -> Result<serde_json::Value, RegistryError> {
    let (project, inside) = repository.split_once('/').unwrap_or((repository, ""));
    let what = format!("reading the scan of {repository}@{reference}");
    let path = format!(
        "{}?with_scan_overview=true",
        artifact_path(project, inside, reference)
    );
    get_json(registry, &what, &path, 4 << 20).await
}

/// An artifact's findings (`GET …/artifacts/{reference}/additions/vulnerabilities`),
/// for a rule's `allow_cves`; `{}` before a report exists.
pub async fn vulnerabilities(
    registry: &Registry,
    repository: &str,
    reference: &str,
) -> Result<serde_json::Value, RegistryError> {
    let (project, inside) = repository.split_once('/').unwrap_or((repository, ""));
    let what = format!("reading the findings of {repository}@{reference}");
    let path = format!(
        "{}/additions/vulnerabilities",
        artifact_path(project, inside, reference)
    );
    get_json(registry, &what, &path, 64 << 20).await
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
            let artifacts: Vec<serde_json::Value> = paged(
                registry,
                &format!("listing artifacts of {full}"),
                &format!(
                    "{}/artifacts?with_tag=true&with_label=true&",
                    repository_path(project, inside)
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
}
