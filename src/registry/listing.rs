//! Listing: `_catalog` and `tags/list`, paged by `Link` on the registry's
//! own origin only, each page read with a limit and the whole listing
//! capped; names that fail the grammar are dropped.

use reqwest::StatusCode;

use super::{Registry, RegistryError, cut, pull, transport};

impl Registry {
    /// Every repository the registry lists (`/v2/_catalog`, paged).
    pub async fn catalog(&self) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            repositories: Option<Vec<String>>,
        }
        self.pages(
            "listing repositories",
            &[],
            &format!("{}/v2/_catalog?n=1000", self.t.base),
            &|body| {
                Ok(serde_json::from_slice::<Page>(body)?
                    .repositories
                    .unwrap_or_default())
            },
            crate::reference::is_valid_repository,
        )
        .await
    }

    /// Every tag of a repository (`/v2/<name>/tags/list`, paged).
    pub async fn tags(&self, repository: &str) -> Result<Vec<String>, RegistryError> {
        #[derive(serde::Deserialize)]
        struct Page {
            tags: Option<Vec<String>>,
        }
        self.pages(
            &format!("listing tags of {repository}"),
            &pull(repository),
            &self.url(&format!("{repository}/tags/list?n=1000")),
            &|body| {
                Ok(serde_json::from_slice::<Page>(body)?
                    .tags
                    .unwrap_or_default())
            },
            crate::reference::is_valid_tag,
        )
        .await
    }

    /// GETs a paged list (`Link: <…>; rel="next"`, on the registry's own
    /// origin only) and returns its valid entries. Each page is read with
    /// a limit, and the whole listing stops with an error past the
    /// registry's `max_list_bytes` or `max_list_entries`, so a registry
    /// that answers without end cannot fill memory. Entries that fail
    /// `valid` (the grammar webhook input passes) are dropped and counted.
    async fn pages(
        &self,
        what: &str,
        scopes: &[String],
        first: &str,
        parse: &PageParser,
        valid: fn(&str) -> bool,
    ) -> Result<Vec<String>, RegistryError> {
        let limits = &self.t.limits;
        let mut url = first.to_string();
        let mut out = Vec::new();
        let (mut bytes, mut dropped) = (0u64, 0usize);
        let too_much = |detail: String| RegistryError::Other {
            registry: self.t.name.clone(),
            what: what.to_string(),
            detail,
        };
        loop {
            let resp = self.t.send(what, scopes, true, &|c| c.get(&url)).await?;
            if resp.status() != StatusCode::OK {
                return Err(self.t.status_error(resp, what).await);
            }
            let next = next_link(&self.t, &resp, what)?;
            let left = limits.max_list_bytes.saturating_sub(bytes);
            let body = self
                .t
                .read_limited(resp, left.min(16 << 20) as usize, what)
                .await
                .map_err(|e| match e {
                    RegistryError::Other { .. } => too_much(format!(
                        "the listing is larger than max_list_bytes ({} bytes in all, 16 MiB a page); raise max_list_bytes for this registry if it really is",
                        limits.max_list_bytes
                    )),
                    e => e,
                })?;
            bytes += body.len() as u64;
            let entries = parse(&body)
                .map_err(|e| too_much(format!("unexpected answer: {}", cut(&e.to_string()))))?;
            for e in entries {
                if valid(&e) {
                    out.push(e);
                } else {
                    dropped += 1;
                }
            }
            if out.len() > limits.max_list_entries {
                return Err(too_much(format!(
                    "more than max_list_entries ({}) entries; raise max_list_entries for this registry if it really has that many",
                    limits.max_list_entries
                )));
            }
            match next {
                Some(n) => url = n.to_string(),
                None => break,
            }
        }
        if dropped > 0 {
            tracing::warn!(registry = %self.t.name, %what, dropped, "ignored names that are not valid repository names or tags");
        }
        Ok(out)
    }
}

/// Takes the entries out of one page of a listing.
type PageParser = dyn Fn(&[u8]) -> Result<Vec<String>, serde_json::Error> + Sync;

/// The `Link: <…>; rel="next"` page of a paged answer, as an absolute URL
/// on the registry's own origin (anything else is refused: the next page
/// would be asked with the registry's credentials).
pub(super) fn next_link(
    t: &transport::Transport,
    resp: &reqwest::Response,
    what: &str,
) -> Result<Option<url::Url>, RegistryError> {
    let next = resp
        .headers()
        .get(reqwest::header::LINK)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| l.split('<').nth(1))
        .and_then(|l| l.split('>').next())
        .and_then(|l| resp.url().join(l).ok());
    next.map(|u| t.own(u, "Link", what)).transpose()
}
