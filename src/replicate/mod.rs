//! Copying one artifact from a source registry to a target registry.
//!
//! The order is what keeps the target consistent:
//! 1. read the top manifest from the source (by tag: what the tag points at
//!    *now*, so out-of-order events still leave the newest content), and
//!    at the same time ask the target whether it holds the event's digest;
//! 2. if the target already has that digest, only write the tag (unless
//!    it already points there);
//! 3. otherwise walk the graph: an index's child manifests first (each
//!    with its blobs), an image's config and layers (several at a time);
//!    a blob the [`ledger`] has never seen on the target gets one `POST`
//!    that mounts it if the repository has it after all or else opens the
//!    upload, while the source starts sending; a known one is HEADed, then
//!    mounted from where it went; what is missing is streamed from source
//!    to target;
//! 4. write each manifest by digest once everything it points at is there;
//! 5. write the tag last.
//!
//! An event for what the ledger says this daemon already left under the
//! tag costs one `HEAD` of the target's tag, and nothing on the source.
//!
//! Manifests are pushed with their original bytes and media type, so
//! digests are preserved. Blob bytes are hashed on the way (the source
//! stream verifies the digest) and never held whole in memory.
//!
//! A missing blob is first mounted from another repository of the target
//! that is known (from the [`ledger`]) to hold it; otherwise it is uploaded,
//! in one request, or above the target's `chunk_size_threshold` in chunks
//! that resume after failures and restarts ([`chunked`]).

pub mod chunked;
pub mod ledger;
mod summary;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::manifest::{Children, Descriptor, Manifest};
use crate::metrics::Metrics;
use crate::reference::Reference;
use crate::registry::{Mismatch, MountOrUpload, Registry, RegistryError, SourceFault, Tap};

use ledger::Ledger;
pub use summary::Summary;

/// How deep indexes may nest (an index of indexes is legal but rare; a
/// deeper chain is treated as malformed rather than followed forever).
const MAX_DEPTH: usize = 4;

/// Why a copy failed. The message is what the job record and the CLI show.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// A registry call failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest could not be understood.
    #[error("source '{registry}': {source}")]
    Manifest {
        /// Source registry name.
        registry: String,
        /// The problem.
        source: crate::manifest::ManifestError,
    },
    /// Reading from the source failed while the target was being written.
    #[error("copying blob {digest}: reading from source '{registry}' failed: {detail}")]
    SourceRead {
        /// Source registry name.
        registry: String,
        /// The blob.
        digest: String,
        /// What the source stream said (e.g. a digest mismatch).
        detail: String,
        /// Set when the content is not what its manifest declares.
        mismatch: Option<Mismatch>,
    },
    /// An index nests deeper than [`MAX_DEPTH`].
    #[error("manifest {0}: indexes nested more than {MAX_DEPTH} deep")]
    TooDeep(String),
    /// The daemon is stopping; the upload stopped between two chunks and
    /// continues at the next start.
    #[error("stopped between chunks for shutdown; the upload continues at the next start")]
    Interrupted,
}

impl ReplicateError {
    /// True when another attempt cannot succeed without someone changing
    /// something (config, credentials, the source): such jobs fail at once.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReplicateError::Registry(e) => e.is_permanent(),
            ReplicateError::Manifest { .. } | ReplicateError::TooDeep(_) => true,
            // The source served a blob of another size than its manifest
            // declares, cleanly (a cut connection is a transport error, not
            // this): content-addressed, so it will every time.
            ReplicateError::SourceRead { mismatch, .. } => *mismatch == Some(Mismatch::Size),
            ReplicateError::Interrupted => false,
        }
    }

    /// A [`ReplicateError::SourceRead`] for `blob` of `req`'s source.
    fn source_read(req: &CopyRequest<'_>, blob: &Descriptor, fault: SourceFault) -> ReplicateError {
        ReplicateError::SourceRead {
            registry: req.source.name().to_string(),
            digest: blob.digest.clone(),
            detail: fault.detail,
            mismatch: fault.mismatch,
        }
    }

    /// True when content did not match its digest: worth another job
    /// attempt later (it may have been the wire), not an immediate retry.
    pub fn is_corrupt(&self) -> bool {
        match self {
            ReplicateError::Registry(RegistryError::DigestMismatch { .. }) => true,
            ReplicateError::SourceRead { mismatch, .. } => mismatch.is_some(),
            _ => false,
        }
    }
}

/// What refers to a subject on the source, found before it is copied.
struct Referrers {
    /// From the OCI referrers API (`None`: the source has no such API).
    listed: Option<Vec<Descriptor>>,
    /// The fallback and cosign tags asked for...
    tags: Vec<Reference>,
    /// ...and the digest each points at, if it exists.
    resolved: Vec<Option<String>>,
}

/// Asks the source, all at once (on a registry without referrers they are
/// all misses, and one round trip is better than five), for the referrers
/// of `subject`: the referrers API, the `sha256-<hex>` fallback tag and
/// cosign's `.sig`, `.att` and `.sbom` tags.
async fn find_referrers(req: &CopyRequest<'_>, subject: &str) -> Result<Referrers, ReplicateError> {
    let (source, src_repo) = (req.source, req.source_repository);
    let hex = subject.strip_prefix("sha256:").unwrap_or_default();
    let tags: Vec<Reference> = if hex.is_empty() {
        Vec::new()
    } else {
        ["", ".sig", ".att", ".sbom"]
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
        listed,
        tags,
        resolved,
    })
}

/// Copies artifacts; one per daemon, shared by all workers.
#[derive(Clone)]
pub struct Replicator {
    blob_concurrency: usize,
    inflight: Inflight,
    metrics: Option<Arc<Metrics>>,
    ledger: Arc<dyn Ledger>,
    stopping: tokio_util::sync::CancellationToken,
    projects: Arc<crate::harbor::ProjectCache>,
}

/// One copy's endpoints.
pub struct CopyRequest<'a> {
    /// Where to read.
    pub source: &'a Registry,
    /// Repository on the source.
    pub source_repository: &'a str,
    /// Tag or digest to copy.
    pub reference: &'a Reference,
    /// Where to write.
    pub target: &'a Registry,
    /// Repository on the target.
    pub target_repository: &'a str,
    /// Overwrite a target tag that points at another digest.
    pub overwrite: bool,
    /// Copy referrers (signatures, SBOMs) after the artifact.
    pub referrers: bool,
    /// Only these platforms of an index (`os/arch[/variant]`).
    pub platforms: Option<&'a [String]>,
    /// The digest the event said the tag pointed at, if it said.
    pub event_digest: Option<&'a str>,
    /// Copy only if the manifest has an OCI 1.1 `subject` (a referrer
    /// pushed by digest under a rule that selects tags); otherwise the job
    /// ends skipped, saying why.
    pub referrer_only: bool,
}

#[derive(Default)]
struct Progress {
    manifests_copied: AtomicU64,
    blobs_copied: AtomicU64,
    blobs_skipped: AtomicU64,
    blobs_mounted: AtomicU64,
    blobs_resumed: AtomicU64,
    bytes_copied: AtomicU64,
    referrers_copied: AtomicU64,
}

impl Replicator {
    /// A replicator moving `blob_concurrency` blobs of a job at a time,
    /// remembering uploads and blob locations in `ledger`.
    pub fn new(
        blob_concurrency: usize,
        metrics: Option<Arc<Metrics>>,
        ledger: Arc<dyn Ledger>,
    ) -> Replicator {
        Replicator {
            blob_concurrency: blob_concurrency.max(1),
            inflight: Inflight::default(),
            metrics,
            ledger,
            stopping: tokio_util::sync::CancellationToken::new(),
            projects: Arc::default(),
        }
    }

    /// Chunked uploads stop between two chunks once `stopping` is
    /// cancelled, so that they resume cleanly at the next start: a registry
    /// that received part of a chunk (CNCF distribution, and so Harbor)
    /// invalidates the whole upload session.
    pub fn with_stop(mut self, stopping: tokio_util::sync::CancellationToken) -> Replicator {
        self.stopping = stopping;
        self
    }

    fn count(&self, outcome: &str) {
        if let Some(m) = &self.metrics {
            m.blobs.with_label_values(&[outcome]).inc();
        }
    }

    /// Remembers what a tagged copy left on the target (see
    /// [`Ledger::tag_synced`]).
    fn record_tag(&self, req: &CopyRequest<'_>, source: &str, target: &str) {
        if let Reference::Tag(tag) = req.reference {
            self.ledger.record_tag(
                req.target.name(),
                req.target_repository,
                tag,
                &ledger::TagRecord {
                    source: source.to_string(),
                    target: target.to_string(),
                },
            );
        }
    }

    /// Copies one artifact and says what it did.
    pub async fn copy(&self, req: &CopyRequest<'_>) -> Result<Summary, ReplicateError> {
        // An event for what this daemon already left under the tag (a
        // redelivery, a second webhook, a replay): one request to the
        // target settles it. Anything else takes the full path below; a tag
        // with no record, or another digest, goes there without asking.
        if let (Reference::Tag(tag), Some(event_digest)) = (req.reference, req.event_digest)
            && let Some(known) =
                self.ledger
                    .tag_synced(req.target.name(), req.target_repository, tag)
            && known.source == event_digest
            && req
                .target
                .resolve(req.target_repository, req.reference)
                .await?
                .as_deref()
                == Some(known.target.as_str())
        {
            tracing::debug!(digest = %known.target, "already on the target under this tag (as this daemon left it)");
            return Ok(Summary {
                digest: known.target,
                ..Summary::default()
            });
        }
        let progress = Progress::default();
        // With the event's digest, whether the target holds that manifest
        // is asked while the source manifest is read. When it does not (a
        // new image: the usual case) and the tag may be overwritten, where
        // the target's tag points does not matter: it cannot point at a
        // manifest the target lacks, so that request is saved. Otherwise
        // (no event digest, the manifest is there, override = false) the
        // tag is asked too: for an artifact already replicated that is the
        // whole job.
        let event_digest = match req.reference {
            Reference::Tag(_) => req.event_digest,
            Reference::Digest(_) => None,
        };
        let tag_later = event_digest.is_some() && req.overwrite;
        let resolve_tag = || async {
            match req.reference {
                Reference::Tag(_) => {
                    req.target
                        .resolve(req.target_repository, req.reference)
                        .await
                }
                Reference::Digest(_) => Ok(None),
            }
        };
        let (top, there, held) = futures_util::future::try_join3(
            req.source
                .get_manifest(req.source_repository, req.reference),
            async {
                match tag_later {
                    true => Ok(None),
                    false => resolve_tag().await,
                }
            },
            async {
                match event_digest {
                    Some(d) => req
                        .target
                        .has_manifest(req.target_repository, d)
                        .await
                        .map(|held| Some((d, held))),
                    None => Ok(None),
                }
            },
        )
        .await?;
        if req.referrer_only && top.subject().is_none() {
            let reason = format!(
                "{}{} was pushed by digest and is not a referrer (no subject); the rule selects tags, so it is copied with its tagged push",
                req.source_repository, req.reference
            );
            tracing::debug!("{reason}");
            return Ok(Summary {
                digest: top.digest,
                skipped: Some(reason),
                ..Summary::default()
            });
        }
        let mut note = None;
        let source_digest = top.digest.clone();
        let top = match req.platforms {
            Some(wanted) if top.is_index() => {
                let subset =
                    platform_subset(&top, wanted).map_err(|source| ReplicateError::Manifest {
                        registry: req.source.name().to_string(),
                        source,
                    })?;
                if subset.digest != top.digest {
                    note = Some(format!(
                        "platforms {}: a new index {} listing only them was written; the source index is {}",
                        wanted.join(", "),
                        subset.digest,
                        top.digest
                    ));
                }
                subset
            }
            _ => top,
        };
        let absent = matches!(held, Some((d, false)) if d == top.digest);
        let there = match tag_later && !absent {
            true => resolve_tag().await?,
            false => there,
        };
        if there.as_deref() == Some(top.digest.as_str()) {
            // Already in sync. Referrers are not looked for again: pushing
            // one sends its own event, and reconcile passes list the tags.
            tracing::debug!(digest = %top.digest, "already on the target under this tag");
            self.record_tag(req, &source_digest, &top.digest);
            return Ok(Summary {
                digest: top.digest,
                note,
                ..Summary::default()
            });
        }
        if !req.overwrite
            && let Some(there) = &there
        {
            let reason = format!(
                "not overwritten: {}{} on the target points at {there}, the source at {} (rule has override = false)",
                req.target_repository, req.reference, top.digest
            );
            tracing::info!("{reason}");
            return Ok(Summary {
                digest: top.digest,
                skipped: Some(reason),
                ..Summary::default()
            });
        }
        if req.target.creates_projects()
            && let Some((project, _)) = req.target_repository.split_once('/')
        {
            self.projects.ensure(req.target, project).await?;
        }
        let content = async {
            let present = match held {
                Some((d, held)) if d == top.digest => held,
                _ => {
                    req.target
                        .has_manifest(req.target_repository, &top.digest)
                        .await?
                }
            };
            if present {
                // Another tag has it already: only the tag is written.
                tracing::debug!(digest = %top.digest, "manifest already on target");
                if let Reference::Tag(_) = req.reference {
                    req.target
                        .put_manifest(req.target_repository, req.reference, &top)
                        .await?;
                }
            } else {
                // Copy what the manifest needs, then write it: under the tag
                // in one PUT for a tagged copy, which is the tag written last.
                let under = matches!(req.reference, Reference::Tag(_)).then_some(req.reference);
                self.copy_manifest(req, &top, 0, &progress, under).await?;
            }
            Ok::<_, ReplicateError>(())
        };
        // Which referrers the source has is asked while the content copies
        // (reads only); they are written after their subject, so they
        // never point at nothing, and a job with none ends with its tag.
        let lookup = async {
            match req.referrers {
                true => find_referrers(req, &top.digest).await.map(Some),
                false => Ok(None),
            }
        };
        let ((), found) = futures_util::future::try_join(content, lookup).await?;
        self.record_tag(req, &source_digest, &top.digest);
        if let Some(found) = found {
            self.copy_referrers(req, found, &progress).await?;
        }
        Ok(Summary {
            digest: top.digest,
            manifests_copied: progress.manifests_copied.into_inner(),
            blobs_copied: progress.blobs_copied.into_inner(),
            blobs_skipped: progress.blobs_skipped.into_inner(),
            blobs_mounted: progress.blobs_mounted.into_inner(),
            blobs_resumed: progress.blobs_resumed.into_inner(),
            bytes_copied: progress.bytes_copied.into_inner(),
            deleted: false,
            skipped: None,
            referrers_copied: progress.referrers_copied.into_inner(),
            note,
        })
    }

    /// Copies what refers to `subject`: manifests listed by the source's
    /// OCI referrers API; the referrers tag schema's `sha256-<hex>` index
    /// (which must be an index); and cosign's `sha256-<hex>.sig`, `.att`
    /// and `.sbom` tags. Each is copied whole, byte for byte, so on a target
    /// without the referrers API the same fallback tag serves its clients.
    async fn copy_referrers(
        &self,
        req: &CopyRequest<'_>,
        found: Referrers,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let (source, target) = (req.source, req.target);
        let (src_repo, dst_repo) = (req.source_repository, req.target_repository);
        let mut copied = HashSet::new();
        let Referrers {
            listed,
            tags,
            resolved,
        } = found;
        if let Some(list) = listed {
            for d in list {
                if !copied.insert(d.digest.clone())
                    || target.has_manifest(dst_repo, &d.digest).await?
                {
                    continue;
                }
                let m = source
                    .get_manifest(src_repo, &Reference::Digest(d.digest.clone()))
                    .await?;
                self.copy_manifest(req, &m, 1, progress, None).await?;
                progress.referrers_copied.fetch_add(1, Ordering::Relaxed);
            }
        }
        for (tag, digest) in tags.iter().zip(resolved) {
            let Some(digest) = digest else {
                continue;
            };
            let m = source
                .get_manifest(src_repo, &Reference::Digest(digest.clone()))
                .await?;
            let fallback_index = !tag.as_str().contains('.');
            if fallback_index && !m.is_index() {
                tracing::warn!(tag = %tag, "referrers fallback tag is not an index; not copied");
                continue;
            }
            if target.resolve(dst_repo, tag).await?.as_deref() == Some(digest.as_str()) {
                continue;
            }
            if !target.has_manifest(dst_repo, &digest).await? {
                self.copy_manifest(req, &m, 1, progress, None).await?;
            }
            target.put_manifest(dst_repo, tag, &m).await?;
            progress.referrers_copied.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Replicates a deletion: deletes the manifest with `digest` from the
    /// target (which removes its tags there, as Harbor does), but only if
    /// what the target has under the deleted reference is that digest.
    pub async fn delete(
        &self,
        target: &Registry,
        repository: &str,
        reference: &Reference,
        digest: &str,
    ) -> Result<Summary, ReplicateError> {
        let skipped = |why: String| {
            tracing::info!("{why}");
            Ok(Summary {
                digest: digest.to_string(),
                skipped: Some(why),
                ..Summary::default()
            })
        };
        match target.resolve(repository, reference).await? {
            None => {
                return skipped(format!(
                    "{repository}{reference} is not on the target; nothing to delete"
                ));
            }
            Some(there) if there != digest => {
                return skipped(format!(
                    "not deleted: {repository}{reference} on the target is {there}, not the deleted {digest}"
                ));
            }
            Some(_) => {}
        }
        let deleted = target.delete_manifest(repository, digest).await?;
        Ok(Summary {
            digest: digest.to_string(),
            deleted,
            ..Summary::default()
        })
    }

    /// Copies a manifest's content (blobs, or child manifests, recursively)
    /// and then the manifest itself, by digest, or under `under` (the
    /// job's tag) for the top manifest of a tagged copy.
    fn copy_manifest<'a>(
        &'a self,
        req: &'a CopyRequest<'a>,
        m: &'a Manifest,
        depth: usize,
        progress: &'a Progress,
        under: Option<&'a Reference>,
    ) -> futures_util::future::BoxFuture<'a, Result<(), ReplicateError>> {
        Box::pin(async move {
            if depth > MAX_DEPTH {
                return Err(ReplicateError::TooDeep(m.digest.clone()));
            }
            let children = m.children().map_err(|source| ReplicateError::Manifest {
                registry: req.source.name().to_string(),
                source,
            })?;
            match children {
                Children::Manifests(list) => {
                    let mut seen = HashSet::new();
                    for child in list {
                        if !seen.insert(child.digest.clone())
                            || req
                                .target
                                .has_manifest(req.target_repository, &child.digest)
                                .await?
                        {
                            continue;
                        }
                        let cm = req
                            .source
                            .get_manifest(
                                req.source_repository,
                                &Reference::Digest(child.digest.clone()),
                            )
                            .await?;
                        self.copy_manifest(req, &cm, depth + 1, progress, None)
                            .await?;
                    }
                }
                Children::Blobs(blobs) => {
                    let mut seen = HashSet::new();
                    let unique: Vec<Descriptor> = blobs
                        .into_iter()
                        .filter(|b| seen.insert(b.digest.clone()))
                        .collect();
                    stream::iter(unique)
                        .map(|b| async move { self.copy_blob(req, &b, progress).await })
                        .buffer_unordered(self.blob_concurrency)
                        .try_collect::<Vec<()>>()
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

    async fn copy_blob(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        // One upload of a digest per target at a time, whatever the
        // repository: a second job that wants the same blob waits, then
        // finds it present or mounts it from where the first put it (so a
        // base layer shared by many images crosses the network once).
        let _turn = self.inflight.acquire(req.target.name(), &blob.digest).await;
        let _in_flight = self.metrics.as_ref().map(|m| m.transfer_started());
        // No retry here: the transport repeats a failed request and the job
        // scheduler repeats a failed job (whose next attempt skips or mounts
        // what this one copied, and resumes chunked uploads); see
        // ARCHITECTURE.md, "Who retries what".
        self.copy_blob_once(req, blob, progress).await?;
        self.ledger
            .blob_seen(req.target.name(), &blob.digest, req.target_repository);
        Ok(())
    }

    async fn copy_blob_once(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let (target, repo) = (req.target, req.target_repository);
        let known = self.ledger.blob_locations(target.name(), &blob.digest);
        let (threshold, _) = target.chunking();
        let chunkable = blob.digest.starts_with("sha256:");
        let big = blob.size > threshold && chunkable;
        if !known.is_empty() || big {
            // Known to the ledger (likely present, or mountable from where
            // it went), or too big to open a stream for on a guess: ask
            // first.
            if target.has_blob(repo, &blob.digest).await? {
                progress.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                self.count("skipped");
                return Ok(());
            }
            for from in known.iter().filter(|r| r.as_str() != repo).take(3) {
                match target.mount_blob(repo, &blob.digest, from).await {
                    Ok(true) => {
                        progress.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                        self.count("mounted");
                        tracing::debug!(digest = %blob.digest, from = %from, "blob mounted");
                        return Ok(());
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::debug!(digest = %blob.digest, from = %from, error = %e, "mount failed")
                    }
                }
            }
            if big {
                return self.copy_chunked(req, blob, progress).await;
            }
        }
        // One POST that either finds the blob in the repository after all
        // (a mount from itself) or opens the upload session, while the
        // source starts sending: for a new blob, two round trips fewer than
        // HEAD, then POST, then GET.
        let (opened, read) = futures_util::future::join(
            target.mount_or_begin(repo, &blob.digest, repo),
            req.source
                .get_blob(req.source_repository, &blob.digest, blob.size),
        )
        .await;
        let location = match opened? {
            MountOrUpload::Mounted => {
                progress.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                self.count("skipped");
                return Ok(());
            }
            MountOrUpload::Upload(location) => location,
        };
        let body = match read {
            Ok((body, _)) => body,
            Err(e) => {
                target.cancel_upload(repo, location.as_str()).await;
                return Err(e.into());
            }
        };
        self.upload(req, blob, progress, location, body, chunkable)
            .await
    }

    /// Streams `body` into the open upload session at `location`.
    async fn upload(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        progress: &Progress,
        location: url::Url,
        body: crate::registry::ByteStream,
        chunkable: bool,
    ) -> Result<(), ReplicateError> {
        let (target, repo) = (req.target, req.target_repository);
        let (tap, body) = Tap::wrap(body);
        let sent = target
            .put_blob_at(location, repo, &blob.digest, blob.size, body)
            .await;
        if let Err(e) = sent {
            if let Some(fault) = tap.source_error() {
                return Err(ReplicateError::source_read(req, blob, fault));
            }
            // A proxy in front of the target refused the body's size: send
            // it again in chunks, which such proxies usually let through.
            if chunkable && matches!(e, RegistryError::Status { status: 413, .. }) {
                tracing::info!(digest = %blob.digest, size = blob.size, "target refused one request this large (413); uploading in chunks");
                return self.copy_chunked(req, blob, progress).await;
            }
            return Err(e.into());
        }
        if let Some(m) = &self.metrics {
            m.bytes_copied.inc_by(tap.count());
        }
        self.blob_copied(progress, tap.count());
        tracing::debug!(digest = %blob.digest, bytes = tap.count(), "blob copied");
        Ok(())
    }
}

impl Replicator {
    /// Counts one uploaded blob of `bytes` bytes sent (the byte metric is
    /// counted as bytes go, by the caller).
    fn blob_copied(&self, progress: &Progress, bytes: u64) {
        progress.blobs_copied.fetch_add(1, Ordering::Relaxed);
        progress.bytes_copied.fetch_add(bytes, Ordering::Relaxed);
        self.count("copied");
    }

    async fn copy_chunked(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let on_chunk = |n: u64| {
            if let Some(m) = &self.metrics {
                m.bytes_copied.inc_by(n);
            }
        };
        let done =
            chunked::copy(req, blob, self.ledger.as_ref(), &on_chunk, &self.stopping).await?;
        self.blob_copied(progress, done.sent);
        if done.resumed {
            progress.blobs_resumed.fetch_add(1, Ordering::Relaxed);
            self.count("resumed");
        }
        Ok(())
    }
}

/// An index that lists only the children whose platform is wanted
/// (`os/arch` matches any variant; `os/arch/variant` only that one). Other
/// fields are kept; the bytes, and so the digest, are new.
pub fn platform_subset(
    index: &Manifest,
    wanted: &[String],
) -> Result<Manifest, crate::manifest::ManifestError> {
    let malformed = |problem: String| crate::manifest::ManifestError::Malformed {
        digest: index.digest.clone(),
        problem,
    };
    let mut doc: serde_json::Value =
        serde_json::from_slice(&index.bytes).map_err(|e| malformed(e.to_string()))?;
    let list = doc["manifests"]
        .as_array()
        .ok_or_else(|| malformed("index without manifests".into()))?;
    let matches = |d: &serde_json::Value| {
        let p = &d["platform"];
        let (os, arch) = (p["os"].as_str(), p["architecture"].as_str());
        let variant = p["variant"].as_str();
        wanted.iter().any(|w| {
            let parts: Vec<&str> = w.split('/').collect();
            Some(parts[0]) == os
                && parts.get(1).copied() == arch
                && parts.get(2).is_none_or(|v| Some(*v) == variant)
        })
    };
    let kept: Vec<serde_json::Value> = list.iter().filter(|d| matches(d)).cloned().collect();
    if kept.is_empty() {
        return Err(malformed(format!(
            "none of its platforms is in {}",
            wanted.join(", ")
        )));
    }
    if kept.len() == list.len() {
        return Ok(index.clone());
    }
    doc["manifests"] = serde_json::Value::Array(kept);
    let bytes = bytes::Bytes::from(serde_json::to_vec(&doc).map_err(|e| malformed(e.to_string()))?);
    Manifest::from_bytes(bytes, Some(&index.media_type))
}

/// Per-(target registry, digest) upload turns.
#[derive(Clone, Default)]
struct Inflight {
    locks: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

struct Turn {
    key: String,
    lock: Arc<tokio::sync::Mutex<()>>,
    owner: Inflight,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut map = self.owner.locks.lock().unwrap_or_else(|p| p.into_inner());
        // Three references are ours: the map's, `lock` and the guard's.
        // Anyone else waiting holds more, and removes the entry when done.
        if Arc::strong_count(&self.lock) <= 3 {
            map.remove(&self.key);
        }
    }
}

impl Inflight {
    async fn acquire(&self, registry: &str, digest: &str) -> Turn {
        let key = format!("{registry}@{digest}");
        let lock = {
            let mut map = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.clone()).or_default().clone()
        };
        let guard = lock.clone().lock_owned().await;
        Turn {
            key,
            lock,
            owner: self.clone(),
            _guard: guard,
        }
    }
}
