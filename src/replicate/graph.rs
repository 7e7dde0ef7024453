//! Walking a manifest's graph onto the target: what it points at first,
//! then the manifest itself.
//!
//! An index's child manifests are taken [`CHILDREN_AT_ONCE`] at a time:
//! the target is asked about each of them at once (and the source for
//! those it lacks), then the blobs of all the platform images among them
//! move in one stream, `blob_concurrency` per image as when they went one
//! by one, in the index's order, then those images are written at once.
//! A 4-platform image so pays the round trips of one platform, not four
//! (the registries' adaptive limits bound the requests of every job
//! together, whatever a job asks). The order is the index's, the same
//! for every target of a fan-out, so their copies ask the [`Tee`](super::Tee)
//! for the same blobs in the same order.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use futures_util::{StreamExt, TryStreamExt, stream};

use super::{CopyRequest, MAX_DEPTH, Progress, ReplicateError, Replicator, decide};
use crate::manifest::{Children, Descriptor, Manifest};
use crate::reference::Reference;

/// How many child manifests of an index are asked about and copied
/// together. What a batch holds in memory is at most this many manifests
/// (each at most [`crate::manifest::MAX_MANIFEST_BYTES`]), so 8 bounds it
/// at 32 MiB against a source that serves the largest it may.
pub(super) const CHILDREN_AT_ONCE: usize = 8;

/// A blob to move, and the manifests it is moved for: its image, and the
/// indexes above it. In a fan-out, a copy whose target holds one of them
/// has the blob too (see [`Seat::holds`](super::Seat::holds)).
pub(super) struct Wanted {
    pub(super) blob: Descriptor,
    pub(super) owners: Vec<String>,
}

/// Each blob once, in its first place, moved for every manifest that
/// lists it: platform images may share a layer.
fn unique_wanted(list: Vec<Wanted>) -> Vec<Wanted> {
    let mut at: std::collections::HashMap<String, usize> = Default::default();
    let mut out: Vec<Wanted> = Vec::new();
    for w in list {
        match at.get(&w.blob.digest) {
            Some(&i) => {
                let owners = &mut out[i].owners;
                for o in w.owners {
                    if !owners.contains(&o) {
                        owners.push(o);
                    }
                }
            }
            None => {
                at.insert(w.blob.digest.clone(), out.len());
                out.push(w);
            }
        }
    }
    out
}

/// `blobs`, each moved for `owners`.
fn wanted(blobs: Vec<Descriptor>, owners: &[String]) -> Vec<Wanted> {
    blobs
        .into_iter()
        .map(|blob| Wanted {
            blob,
            owners: owners.to_vec(),
        })
        .collect()
}

/// `above` and then `digest`: the manifests a blob of `digest` is moved for.
fn chain(above: &[String], digest: &str) -> Vec<String> {
    let mut chain = above.to_vec();
    chain.push(digest.to_string());
    chain
}

/// Each descriptor once, in its first place: an index may list a
/// manifest twice, and platform images may share a layer.
pub(super) fn unique(list: Vec<Descriptor>) -> Vec<Descriptor> {
    let mut seen = HashSet::new();
    list.into_iter()
        .filter(|d| seen.insert(d.digest.clone()))
        .collect()
}

impl Replicator {
    /// Copies a manifest's content (blobs, or child manifests, recursively)
    /// and then the manifest itself, by digest, or under `under` (the
    /// job's tag) for the top manifest of a tagged copy. `above` are the
    /// indexes this one was reached through.
    pub(super) fn copy_manifest<'a>(
        &'a self,
        req: &'a CopyRequest<'a>,
        m: &'a Manifest,
        depth: usize,
        progress: &'a Progress,
        under: Option<&'a Reference>,
        above: &'a [String],
    ) -> futures_util::future::BoxFuture<'a, Result<(), ReplicateError>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err(ReplicateError::TooDeep(m.digest.clone()));
            }
            let chain = chain(above, &m.digest);
            match children(req, m)? {
                Children::Manifests(list) => {
                    progress.visit(list.len())?;
                    for batch in unique(list).chunks(CHILDREN_AT_ONCE) {
                        self.copy_children(req, batch, depth + 1, progress, &chain)
                            .await?;
                    }
                }
                Children::Blobs(blobs) => {
                    let blobs = wanted(image_blobs(req, blobs, progress)?, &chain);
                    self.copy_blobs(req, blobs, self.blob_concurrency, progress)
                        .await?;
                }
            }
            let by_digest = Reference::Digest(m.digest.clone());
            req.target
                .put_manifest(req.target_repository, under.unwrap_or(&by_digest), m)
                .await?;
            progress.manifests_copied.fetch_add(1, Ordering::Relaxed);
            Ok(())
        })
    }

    /// One batch of an index's children, at `depth` below the indexes
    /// `above`: those the target lacks are read, their images' blobs
    /// copied in one stream, then the images written; a nested index goes
    /// down on its own.
    async fn copy_children(
        &self,
        req: &CopyRequest<'_>,
        batch: &[Descriptor],
        depth: usize,
        progress: &Progress,
        above: &[String],
    ) -> Result<(), ReplicateError> {
        req.check_cancel()?;
        let missing: Vec<Manifest> = futures_util::future::try_join_all(
            batch
                .iter()
                .map(|c| self.missing_manifest(req, &c.digest, progress)),
        )
        .await?
        .into_iter()
        .flatten()
        .collect();
        if let Some(m) = missing.first()
            && depth > MAX_DEPTH
        {
            return Err(ReplicateError::TooDeep(m.digest.clone()));
        }
        let mut images = Vec::new();
        let mut blobs = Vec::new();
        let mut indexes = Vec::new();
        for m in missing {
            match children(req, &m)? {
                Children::Blobs(list) => {
                    let owners = chain(above, &m.digest);
                    blobs.extend(wanted(image_blobs(req, list, progress)?, &owners));
                    images.push(m);
                }
                Children::Manifests(_) => indexes.push(m),
            }
        }
        // `blob_concurrency` for each image, as when they were copied one
        // by one: the registries' limits bound the requests in any case.
        let at_once = self.blob_concurrency * images.len().max(1);
        self.copy_blobs(req, blobs, at_once, progress).await?;
        futures_util::future::try_join_all(images.iter().map(|m| async move {
            req.target
                .put_manifest(
                    req.target_repository,
                    &Reference::Digest(m.digest.clone()),
                    m,
                )
                .await?;
            progress.manifests_copied.fetch_add(1, Ordering::Relaxed);
            progress.now_present(&m.digest);
            Ok::<_, ReplicateError>(())
        }))
        .await?;
        for m in &indexes {
            req.check_cancel()?;
            self.copy_manifest(req, m, depth, progress, None, above)
                .await?;
            progress.now_present(&m.digest);
        }
        Ok(())
    }

    /// A manifest the target lacks, read from the source; `None` if this
    /// job found or wrote it already, or the target holds it.
    pub(super) async fn missing_manifest(
        &self,
        req: &CopyRequest<'_>,
        digest: &str,
        progress: &Progress,
    ) -> Result<Option<Manifest>, ReplicateError> {
        if progress.is_present(digest) {
            return Ok(None);
        }
        if req
            .target
            .has_manifest(req.target_repository, digest)
            .await?
        {
            progress.now_present(digest);
            req.target_holds(digest);
            return Ok(None);
        }
        let m = req
            .source_manifest(&Reference::Digest(digest.to_string()))
            .await?;
        Ok(Some(m))
    }

    /// Moves `blobs` (each once), `at_once` at a time.
    async fn copy_blobs(
        &self,
        req: &CopyRequest<'_>,
        blobs: Vec<Wanted>,
        at_once: usize,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        stream::iter(unique_wanted(blobs))
            .map(|w| async move { self.copy_blob(req, &w, progress).await })
            .buffer_unordered(at_once)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }
}

/// What `m` points at, or why it cannot be read.
fn children(req: &CopyRequest<'_>, m: &Manifest) -> Result<Children, ReplicateError> {
    m.children().map_err(|source| ReplicateError::Manifest {
        registry: req.source.name().to_string(),
        source,
    })
}

/// An image's blobs, counted against the job's cap and each within the
/// size limit that applies (the registries' and the rule's).
fn image_blobs(
    req: &CopyRequest<'_>,
    blobs: Vec<Descriptor>,
    progress: &Progress,
) -> Result<Vec<Descriptor>, ReplicateError> {
    let (limit, key) = decide::blob_limit(
        (req.source.name(), req.source.max_blob_size()),
        (req.target.name(), req.target.max_blob_size()),
        req.max_blob_size,
    );
    progress.visit(blobs.len())?;
    if let Some(b) = decide::too_big(&blobs, limit) {
        return Err(ReplicateError::TooBig {
            digest: b.digest.clone(),
            size: b.size,
            limit,
            key,
        });
    }
    Ok(blobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Descriptor {
        Descriptor {
            media_type: crate::manifest::OCI_MANIFEST.to_string(),
            digest: format!("sha256:{}", c.to_string().repeat(64)),
            size: 5,
        }
    }

    #[test]
    fn a_layer_two_images_share_is_moved_once_for_both() {
        let own = |c: char, image: &str| Wanted {
            blob: d(c),
            owners: vec!["sha256:index".to_string(), image.to_string()],
        };
        let got = unique_wanted(vec![
            own('a', "sha256:amd64"),
            own('b', "sha256:amd64"),
            own('a', "sha256:arm64"),
        ]);
        let got: Vec<(String, Vec<String>)> =
            got.into_iter().map(|w| (w.blob.digest, w.owners)).collect();
        assert_eq!(
            got,
            [
                (
                    d('a').digest,
                    vec![
                        "sha256:index".into(),
                        "sha256:amd64".into(),
                        "sha256:arm64".into()
                    ]
                ),
                (
                    d('b').digest,
                    vec!["sha256:index".into(), "sha256:amd64".into()]
                ),
            ]
        );
    }

    #[test]
    fn each_descriptor_is_kept_once_in_its_first_place() {
        let got: Vec<String> = unique(vec![d('a'), d('b'), d('a'), d('c'), d('b')])
            .into_iter()
            .map(|x| x.digest)
            .collect();
        assert_eq!(got, [d('a').digest, d('b').digest, d('c').digest]);
    }
}
