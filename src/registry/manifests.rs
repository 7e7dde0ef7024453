//! Manifests: `GET` (bytes kept exactly, checked against a digest
//! reference), `HEAD`, `PUT` with the media type, `DELETE`, and the OCI 1.1
//! referrers API.

use reqwest::StatusCode;
use reqwest::header::{ACCEPT, CONTENT_TYPE};

use super::listing::next_link;
use super::{Registry, RegistryError, auth, pull, push};
use crate::manifest::{self, Manifest};
use crate::reference::Reference;

impl Registry {
    /// Reads a manifest, byte for byte, with its media type, and checks it
    /// against the digest when the reference is one.
    pub async fn get_manifest(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Manifest, RegistryError> {
        let what = format!("manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let resp = self
            .t
            .send(&what, &pull(repository), true, &|c| {
                c.get(&url).header(ACCEPT, manifest::ACCEPTED.join(", "))
            })
            .await?;
        if resp.status() != StatusCode::OK {
            return Err(self.t.status_error(resp, &what).await);
        }
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_string());
        let bytes = self
            .t
            .read_limited(resp, manifest::MAX_MANIFEST_BYTES, &what)
            .await?;
        let m = Manifest::from_bytes(bytes, content_type.as_deref()).map_err(|source| {
            RegistryError::Manifest {
                registry: self.t.name.clone(),
                source,
            }
        })?;
        if let Reference::Digest(d) = reference
            && *d != m.digest
        {
            return Err(RegistryError::DigestMismatch {
                registry: self.t.name.clone(),
                what,
                detail: format!("asked for {d}, got content hashing to {}", m.digest),
            });
        }
        Ok(m)
    }

    /// `HEAD` on a manifest or blob URL: the answer, or `None` for `404`.
    pub(super) async fn head(
        &self,
        what: &str,
        repository: &str,
        url: &str,
        manifest: bool,
    ) -> Result<Option<reqwest::Response>, RegistryError> {
        let resp = self
            .t
            .send(what, &pull(repository), true, &|c| {
                let rb = c.head(url);
                if manifest {
                    rb.header(ACCEPT, manifest::ACCEPTED.join(", "))
                } else {
                    rb
                }
            })
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(Some(resp)),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(self.t.status_error(resp, what).await),
        }
    }

    /// True if the repository holds a manifest with this digest.
    pub async fn has_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("manifest {repository}@{digest}");
        let url = self.url(&format!("{repository}/manifests/{digest}"));
        Ok(self.head(&what, repository, &url, true).await?.is_some())
    }

    /// The digest a tag (or digest) resolves to, by `HEAD`; `None` if it
    /// does not exist.
    pub async fn resolve(
        &self,
        repository: &str,
        reference: &Reference,
    ) -> Result<Option<String>, RegistryError> {
        let what = format!("manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let Some(resp) = self.head(&what, repository, &url, true).await? else {
            return Ok(None);
        };
        let header = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        match header {
            Some(d) if crate::reference::is_valid_digest(&d) => Ok(Some(d)),
            Some(d) => Err(RegistryError::Untrusted {
                registry: self.t.name.clone(),
                detail: format!(
                    "{what}: its Docker-Content-Digest `{}` is not a digest",
                    super::cut(&d)
                ),
            }),
            // No digest header: read the manifest and hash it.
            None => Ok(Some(self.get_manifest(repository, reference).await?.digest)),
        }
    }

    /// The referrers of a manifest by the OCI 1.1 API
    /// (`GET /v2/<name>/referrers/<digest>`, following `Link` pages), or
    /// `None` if the registry does not offer the API.
    pub async fn referrers(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<Option<Vec<manifest::Descriptor>>, RegistryError> {
        if self.t.lacks_referrers_api() {
            return Ok(None);
        }
        let what = format!("referrers of {repository}@{digest}");
        let mut url = self.url(&format!("{repository}/referrers/{digest}"));
        let mut all = Vec::new();
        for _ in 0..50 {
            let resp = self
                .t
                .send(&what, &pull(repository), true, &|c| {
                    c.get(&url).header(ACCEPT, manifest::OCI_INDEX)
                })
                .await?;
            match resp.status() {
                StatusCode::OK => {}
                // A registry with the API never answers 404 here (OCI 1.1:
                // an unknown subject has an empty list), so this means it
                // has none: remember that for a while.
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                    if all.is_empty() {
                        self.t.note_no_referrers_api();
                        return Ok(None);
                    }
                    return Ok(Some(all));
                }
                _ => return Err(self.t.status_error(resp, &what).await),
            }
            let next = next_link(&self.t, &resp, &what)?;
            let body = self
                .t
                .read_limited(resp, manifest::MAX_MANIFEST_BYTES, &what)
                .await?;
            let index =
                Manifest::from_bytes(body, Some(manifest::OCI_INDEX)).map_err(|source| {
                    RegistryError::Manifest {
                        registry: self.t.name.clone(),
                        source,
                    }
                })?;
            self.t.note_referrers_api();
            if let Ok(manifest::Children::Manifests(list)) = index.children() {
                all.extend(list);
            }
            match next {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
        Ok(Some(all))
    }

    /// What is known of the registry's OCI referrers API: `Some(true)` it
    /// answered with a list, `Some(false)` it has none (asked lately),
    /// `None` not known yet.
    pub fn referrers_api(&self) -> Option<bool> {
        self.t.referrers_api()
    }

    /// Deletes a manifest by digest (which removes the tags pointing at
    /// it). Returns false if it was not there.
    pub async fn delete_manifest(
        &self,
        repository: &str,
        digest: &str,
    ) -> Result<bool, RegistryError> {
        let what = format!("deleting manifest {repository}@{digest}");
        let resp = self.delete_reference(repository, digest, &what).await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            StatusCode::METHOD_NOT_ALLOWED => Err(RegistryError::Status {
                registry: self.t.name.clone(),
                what,
                status: 405,
                detail: "answered 405: deletion is disabled on this registry (CNCF distribution: storage.delete.enabled: true)".into(),
            }),
            _ => Err(self.t.status_error(resp, &what).await),
        }
    }

    /// `DELETE /v2/<name>/manifests/<reference>` with a `delete` token.
    async fn delete_reference(
        &self,
        repository: &str,
        reference: &str,
        what: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(&format!("{repository}/manifests/{reference}"));
        let scopes = vec![auth::scope(repository, "delete")];
        self.t.send(what, &scopes, true, &|c| c.delete(&url)).await
    }

    /// Removes a tag alone (`DELETE /v2/<name>/manifests/<tag>`, OCI 1.1):
    /// true when removed or already gone, false when the registry cannot
    /// (CNCF distribution 2.x answers `400`; others `405`).
    pub async fn delete_tag(&self, repository: &str, tag: &str) -> Result<bool, RegistryError> {
        let what = format!("removing tag {repository}:{tag}");
        let resp = self.delete_reference(repository, tag, &what).await?;
        match resp.status() {
            StatusCode::ACCEPTED | StatusCode::OK | StatusCode::NO_CONTENT => Ok(true),
            StatusCode::NOT_FOUND => Ok(true),
            StatusCode::BAD_REQUEST | StatusCode::METHOD_NOT_ALLOWED => Ok(false),
            _ => Err(self.t.status_error(resp, &what).await),
        }
    }

    /// Writes a manifest under a tag or its digest, with its media type.
    pub async fn put_manifest(
        &self,
        repository: &str,
        reference: &Reference,
        m: &Manifest,
    ) -> Result<(), RegistryError> {
        let what = format!("writing manifest {repository}{reference}");
        let url = self.url(&format!("{repository}/manifests/{}", reference.as_str()));
        let resp = self
            .t
            .send(&what, &push(repository), true, &|c| {
                c.put(&url)
                    .header(CONTENT_TYPE, m.media_type.as_str())
                    .body(m.bytes.clone())
            })
            .await?;
        if !resp.status().is_success() {
            return Err(self.t.status_error(resp, &what).await);
        }
        Ok(())
    }
}
