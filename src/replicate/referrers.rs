//! Referrers: signatures, SBOMs and attestations found on the source (the
//! OCI 1.1 API, the `sha256-<hex>` fallback tag, cosign's tags) and copied
//! after their subject.

use std::sync::atomic::Ordering;

use futures_util::{StreamExt, TryStreamExt, stream};

use super::{CopyRequest, Progress, ReplicateError, Replicator};
use crate::manifest::{Children, Descriptor, Manifest};
use crate::reference::Reference;

/// What refers to a subject on the source, found before it is copied.
#[derive(Clone)]
pub(super) struct Referrers {
    /// The subject's digest.
    subject: String,
    /// From the OCI referrers API (`None`: the source has no such API).
    listed: Option<Vec<Descriptor>>,
    /// The fallback and cosign tags asked for...
    tags: Vec<Reference>,
    /// ...and the digest each points at, if it exists.
    resolved: Vec<Option<String>>,
}

/// The manifests whose referrers come along with `top`: itself and, for an
/// index, each child manifest (a platform image signed on its own).
pub(super) fn referrer_subjects(top: &Manifest) -> Vec<String> {
    let mut out = vec![top.digest.clone()];
    if let Ok(Children::Manifests(list)) = top.children() {
        out.extend(list.into_iter().map(|d| d.digest));
    }
    out
}

/// Which `sha256-<hex><suffix>` tags to look for beside the referrers
/// API, from what is known of the source's API: all four while it is not
/// known (asked at once with the API: one round trip, not two); with the
/// API, not the `sha256-<hex>` fallback index it replaces (OCI 1.1); from
/// a Harbor with the API, none, since Harbor lists cosign's signatures,
/// attestations and SBOMs as accessories in it
/// (`src/server/registry/referrers.go`).
pub(super) fn tags_to_ask(api: Option<bool>, harbor: bool) -> &'static [&'static str] {
    match (api, harbor) {
        (Some(true), true) => &[],
        (Some(true), false) => &[".sig", ".att", ".sbom"],
        _ => &["", ".sig", ".att", ".sbom"],
    }
}

impl super::tee::reads::Weigh for Referrers {
    fn weight(&self) -> usize {
        // A descriptor read from JSON is about this much; a tag and a
        // digest each a little less.
        const EACH: usize = 256;
        (self.listed.as_ref().map_or(0, Vec::len) + self.tags.len()) * EACH
    }
}

/// What refers to `subject` on the source ([`look_up`]): in a fan-out, one
/// lookup for every copy.
pub(super) async fn find_referrers(
    req: &CopyRequest<'_>,
    subject: &str,
) -> Result<Referrers, ReplicateError> {
    match req.seat {
        Some(seat) => {
            let find = || look_up(req, subject);
            seat.referrers(req.source_repository, subject, find).await
        }
        None => look_up(req, subject).await,
    }
}

/// Asks the source, all at once, for the referrers of `subject`: the
/// referrers API and the tags [`tags_to_ask`] names (the `sha256-<hex>`
/// fallback tag, cosign's `.sig`, `.att` and `.sbom`).
async fn look_up(req: &CopyRequest<'_>, subject: &str) -> Result<Referrers, ReplicateError> {
    let (source, src_repo) = (req.source, req.source_repository);
    let hex = subject.strip_prefix("sha256:").unwrap_or_default();
    let tags: Vec<Reference> = if hex.is_empty() {
        Vec::new()
    } else {
        tags_to_ask(source.referrers_api(), source.is_harbor())
            .iter()
            .map(|suffix| Reference::Tag(format!("sha256-{hex}{suffix}")))
            .collect()
    };
    let (listed, resolved) = futures_util::future::try_join(
        source.referrers(src_repo, subject),
        futures_util::future::try_join_all(tags.iter().map(|t| source.resolve(src_repo, t))),
    )
    .await?;
    Ok(Referrers {
        subject: subject.to_string(),
        listed,
        tags,
        resolved,
    })
}

impl Replicator {
    /// Copies what refers to `subject`: manifests listed by the source's
    /// OCI referrers API; the referrers tag schema's `sha256-<hex>` index
    /// (which must be an index); and cosign's `sha256-<hex>.sig`, `.att`
    /// and `.sbom` tags. Each is copied whole, byte for byte, so on a target
    /// without the referrers API the same fallback tag serves its clients.
    pub(super) async fn copy_referrers(
        &self,
        req: &CopyRequest<'_>,
        found: Referrers,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let Referrers {
            subject,
            listed,
            tags,
            resolved,
        } = found;
        if let Some(list) = listed {
            let subject = subject.as_str();
            // At once, but no more than a batch of an index's children: a
            // source may list thousands.
            let copies: Vec<_> = super::graph::unique(list)
                .into_iter()
                .map(|d| self.copy_listed(req, subject, d, progress))
                .collect();
            stream::iter(copies)
                .buffer_unordered(super::graph::CHILDREN_AT_ONCE)
                .try_collect::<Vec<()>>()
                .await?;
        }
        futures_util::future::try_join_all(
            tags.iter()
                .zip(resolved)
                .filter_map(|(tag, digest)| Some((tag, digest?)))
                .map(|(tag, digest)| self.copy_tagged(req, tag, digest, progress)),
        )
        .await?;
        Ok(())
    }

    /// One referrer the source's API listed for `subject`, unless the
    /// target holds it (or this job found or wrote it already).
    async fn copy_listed(
        &self,
        req: &CopyRequest<'_>,
        subject: &str,
        d: Descriptor,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let Some(m) = self.missing_manifest(req, &d.digest, progress).await? else {
            return Ok(());
        };
        // A cosign signature a Harbor lists as an accessory has no
        // subject: it is found by its tag, which it gets back.
        let tag = match (m.subject(), m.cosign_suffix()) {
            (None, Some(suffix)) => subject
                .strip_prefix("sha256:")
                .map(|hex| Reference::Tag(format!("sha256-{hex}{suffix}"))),
            _ => None,
        };
        self.copy_manifest(req, &m, 1, progress, tag.as_ref(), &[])
            .await?;
        progress.now_present(&m.digest);
        progress.referrers_copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// What a fallback or cosign `tag` points at on the source (`digest`),
    /// under the same tag on the target.
    async fn copy_tagged(
        &self,
        req: &CopyRequest<'_>,
        tag: &Reference,
        digest: String,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let (target, dst_repo) = (req.target, req.target_repository);
        let m = req
            .source_manifest(&Reference::Digest(digest.clone()))
            .await?;
        let fallback_index = !tag.as_str().contains('.');
        if fallback_index && !m.is_index() {
            tracing::warn!(tag = %tag, "referrers fallback tag is not an index; not copied");
            return Ok(());
        }
        if target.resolve(dst_repo, tag).await?.as_deref() == Some(digest.as_str()) {
            return Ok(());
        }
        match target.has_manifest(dst_repo, &digest).await? {
            true => req.target_holds(&digest),
            false => self.copy_manifest(req, &m, 1, progress, None, &[]).await?,
        }
        target.put_manifest(dst_repo, tag, &m).await?;
        progress.referrers_copied.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_tags_are_asked_only_where_the_api_does_not_list_them() {
        assert_eq!(
            tags_to_ask(None, true).len(),
            4,
            "unknown: ask everything at once"
        );
        assert_eq!(tags_to_ask(Some(false), false).len(), 4);
        assert_eq!(tags_to_ask(Some(true), false), [".sig", ".att", ".sbom"]);
        assert!(
            tags_to_ask(Some(true), true).is_empty(),
            "Harbor lists cosign's too"
        );
    }

    #[test]
    fn an_index_brings_the_referrers_of_each_child() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[{{"mediaType":"{}","digest":"{}","size":5}},{{"mediaType":"{}","digest":"{}","size":5}}]}}"#,
            crate::manifest::OCI_INDEX,
            crate::manifest::OCI_MANIFEST,
            d('a'),
            crate::manifest::OCI_MANIFEST,
            d('b')
        );
        let m = Manifest::from_bytes(bytes::Bytes::from(index), None).expect("index");
        assert_eq!(referrer_subjects(&m), [m.digest.clone(), d('a'), d('b')]);
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"digest":"{}","size":2}},"layers":[]}}"#,
            crate::manifest::OCI_MANIFEST,
            d('c')
        );
        let m = Manifest::from_bytes(bytes::Bytes::from(image), None).expect("image");
        assert_eq!(referrer_subjects(&m), vec![m.digest]);
    }
}
