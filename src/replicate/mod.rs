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

mod blobs;
pub mod chunked;
mod decide;
mod error;
pub mod gates;
mod graph;
pub mod ledger;
mod platforms;
mod progress;
mod referrers;
mod summary;
pub mod tee;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{StreamExt, TryStreamExt, stream};

use crate::manifest::Manifest;
use crate::metrics::Metrics;
use crate::reference::Reference;
use crate::registry::{Registry, RegistryError};

use blobs::Inflight;
pub use error::ReplicateError;
use ledger::Ledger;
pub use platforms::platform_subset;
use progress::Progress;
use referrers::{find_referrers, referrer_subjects};
pub use summary::Summary;
pub use tee::{Seat, Tee, Tees};

/// How deep indexes may nest (an index of indexes is legal but rare; a
/// deeper chain is treated as malformed rather than followed forever).
const MAX_DEPTH: usize = 4;

/// Copies artifacts; one per daemon, shared by all workers.
#[derive(Clone)]
pub struct Replicator {
    blob_concurrency: usize,
    inflight: Inflight,
    metrics: Option<Arc<Metrics>>,
    ledger: Arc<dyn Ledger>,
    stopping: tokio_util::sync::CancellationToken,
    projects: Arc<crate::harbor::ProjectCache>,
    tees: Arc<tee::Tees>,
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
    /// Only artifacts of these Harbor types (`None`: every type).
    pub artifact_types: Option<&'a [String]>,
    /// Only artifacts carrying every one of these Harbor labels (read from
    /// the source's REST API when the copy starts).
    pub labels: Option<&'a [String]>,
    /// The rule's `max_blob_size` (the registries' own apply too).
    pub max_blob_size: Option<u64>,
    /// Counts blob bytes as they are sent, for whoever watches the copy
    /// (the status page's running jobs).
    pub moved: Option<Arc<AtomicU64>>,
    /// Cancelled when an operator cancels the job: the copy stops at its
    /// next step and cancels the upload in flight.
    pub cancel: Option<tokio_util::sync::CancellationToken>,
    /// This is the job's last attempt: a chunked upload that fails is
    /// cancelled on the target instead of kept for a resume.
    pub last_attempt: bool,
    /// The rule that asked (for the gates' metrics).
    pub rule: &'a str,
    /// The rule's gates: judged before anything is written to the target.
    pub gates: Option<&'a crate::gate::Gates>,
    /// This copy's seat at its fan-out's [`Tee`]: blobs read from offset 0
    /// are read once for every target of the fan-out. `None`: one target.
    pub seat: Option<&'a Seat>,
}

impl CopyRequest<'_> {
    /// An operator cancelled the job: the copy stops here.
    fn check_cancel(&self) -> Result<(), ReplicateError> {
        match &self.cancel {
            Some(c) if c.is_cancelled() => Err(ReplicateError::Cancelled),
            _ => Ok(()),
        }
    }

    /// The source's manifest `reference` in the job's source repository:
    /// in a fan-out, one read for every copy.
    async fn source_manifest(&self, reference: &Reference) -> Result<Manifest, RegistryError> {
        let fetch = || self.source.get_manifest(self.source_repository, reference);
        match self.seat {
            Some(seat) => {
                seat.manifest(self.source_repository, reference, fetch)
                    .await
            }
            None => fetch().await,
        }
    }

    /// This copy's target holds `manifest`: the other copies of its
    /// fan-out do not wait for its word on that manifest's blobs.
    fn target_holds(&self, manifest: &str) {
        if let Some(seat) = self.seat {
            seat.holds(manifest);
        }
    }

    /// Resolves when the job is cancelled (never without a token).
    async fn cancelled(&self) {
        match &self.cancel {
            Some(c) => c.cancelled().await,
            None => std::future::pending().await,
        }
    }
}

impl Replicator {
    /// A replicator moving `blob_concurrency` blobs of an image at a time,
    /// remembering uploads and blob locations in `ledger`.
    pub fn new(
        blob_concurrency: usize,
        metrics: Option<Arc<Metrics>>,
        ledger: Arc<dyn Ledger>,
    ) -> Replicator {
        let fanout_counts = metrics.as_ref().map(|m| tee::Counts {
            reads: m.fanout_reads.clone(),
            detached: m.fanout_detached.clone(),
        });
        Replicator {
            blob_concurrency: blob_concurrency.max(1),
            inflight: Inflight::default(),
            metrics,
            ledger,
            stopping: tokio_util::sync::CancellationToken::new(),
            projects: Arc::default(),
            tees: Arc::new(tee::Tees::counted(fanout_counts)),
        }
    }

    /// A seat at the tee of fan-out `group`, for one of its copies: the
    /// copies of a fan-out running at once read each blob once.
    pub fn seat(&self, group: &str) -> Seat {
        self.tees.seat(group)
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
    async fn record_tag(&self, req: &CopyRequest<'_>, source: &str, target: &str) {
        if let Reference::Tag(tag) = req.reference {
            let record = ledger::TagRecord {
                source: source.to_string(),
                target: target.to_string(),
            };
            self.ledger
                .record_tag(req.target.name(), req.target_repository, tag, &record)
                .await;
        }
    }

    /// Copies one artifact and says what it did: runs the steps
    /// `decide` chooses, asking what can be asked at once together.
    pub async fn copy(&self, req: &CopyRequest<'_>) -> Result<Summary, ReplicateError> {
        let tagged = matches!(req.reference, Reference::Tag(_));
        if let Some(summary) = self.unlabelled(req).await? {
            return Ok(summary);
        }
        // Gates first: a held or refused artifact writes nothing, not even
        // the target's project. The source manifest read for them is the
        // one the copy uses.
        let read = match req.gates {
            Some(gates) => Some(self.gate(req, gates).await?),
            None => None,
        };
        self.prepare_target(req).await?;
        if let Some(summary) = self.settled(req, tagged).await? {
            return Ok(summary);
        }
        let asks = decide::first_asks(tagged, req.event_digest, req.overwrite);
        let resolve_tag = || req.target.resolve(req.target_repository, req.reference);
        let (source_top, mut there, held) = self.first_round(req, &asks, read).await?;
        let source_digest = source_top.digest.clone();
        let has_subject = source_top.subject().is_some();
        // The artifact's Harbor type, worked out only for a rule that
        // filters by it.
        let kind = req.artifact_types.map(|_| source_top.harbor_type());
        let type_wanted = decide::type_wanted(req.artifact_types, kind.as_deref());
        let (top, note) = self.subset(req, source_top)?;
        let mut tag_asked = asks.tag;
        let manifest_there = loop {
            let step = decide::next(&decide::Known {
                tagged,
                overwrite: req.overwrite,
                referrer_only: req.referrer_only,
                type_wanted,
                has_subject,
                top: &top.digest,
                tag_asked,
                there: there.as_deref(),
                held,
            });
            let skipped = |reason: String| {
                tracing::info!("{reason}");
                Ok(Summary {
                    digest: top.digest.clone(),
                    skipped: Some(reason),
                    ..Summary::default()
                })
            };
            match step {
                decide::Next::AskTag => {
                    there = resolve_tag().await?;
                    tag_asked = true;
                }
                decide::Next::NotAReferrer
                | decide::Next::OtherType
                | decide::Next::KeepTheirs(_) => {
                    return skipped(why_skipped(req, &step, kind.as_deref(), &top.digest));
                }
                decide::Next::InSync => {
                    // Referrers are not looked for again: pushing one sends
                    // its own event, and reconcile passes list the tags.
                    tracing::debug!(digest = %top.digest, "already on the target under this tag");
                    self.record_tag(req, &source_digest, &top.digest).await;
                    return Ok(Summary {
                        digest: top.digest,
                        note,
                        ..Summary::default()
                    });
                }
                decide::Next::Write { manifest_there } => break manifest_there,
            }
        };
        self.write(req, &top, manifest_there, &source_digest, note)
            .await
    }

    /// The first round of requests, sent together: the source manifest,
    /// and on the target what [`decide::first_asks`] chose (the tag, the
    /// event's digest).
    async fn first_round<'a>(
        &self,
        req: &CopyRequest<'a>,
        asks: &decide::FirstAsks<'a>,
        read: Option<Manifest>,
    ) -> Result<(Manifest, Option<String>, Option<(&'a str, bool)>), ReplicateError> {
        let (top, there, held) = futures_util::future::try_join3(
            async {
                match read {
                    Some(m) => Ok(m),
                    None => req.source_manifest(req.reference).await,
                }
            },
            async {
                match asks.tag {
                    true => {
                        req.target
                            .resolve(req.target_repository, req.reference)
                            .await
                    }
                    false => Ok(None),
                }
            },
            async {
                match asks.held {
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
        Ok((top, there, held))
    }

    /// Harbor's label filter (a rule with `labels`): the artifact's labels
    /// are read when the copy starts, so a label added later counts at the
    /// next event or reconcile pass. `Some` if the copy ends here, skipped.
    async fn unlabelled(&self, req: &CopyRequest<'_>) -> Result<Option<Summary>, ReplicateError> {
        let Some(wanted) = req.labels else {
            return Ok(None);
        };
        let have = crate::harbor::artifact_labels(
            req.source,
            req.source_repository,
            req.reference.as_str(),
        )
        .await?;
        let missing = crate::harbor::missing_labels(Some(wanted), &have);
        if missing.is_empty() {
            return Ok(None);
        }
        let reason = format!(
            "{}{} lacks the Harbor label(s) {} that the rule requires (labels)",
            req.source_repository,
            req.reference,
            missing.join(", ")
        );
        tracing::info!("{reason}");
        Ok(Some(Summary {
            skipped: Some(reason),
            ..Summary::default()
        }))
    }

    /// Step 1 of [`decide`]: an event for what this daemon already left
    /// under the tag (a redelivery, a second webhook, a replay) is settled
    /// by one request to the target.
    async fn settled(
        &self,
        req: &CopyRequest<'_>,
        tagged: bool,
    ) -> Result<Option<Summary>, ReplicateError> {
        let record = match req.reference {
            Reference::Tag(tag) => {
                self.ledger
                    .tag_synced(req.target.name(), req.target_repository, tag)
                    .await
            }
            Reference::Digest(_) => None,
        };
        let Some(expect) = decide::settled_by(tagged, req.event_digest, record.as_ref()) else {
            return Ok(None);
        };
        let there = req
            .target
            .resolve(req.target_repository, req.reference)
            .await?;
        if there.as_deref() != Some(expect) {
            return Ok(None);
        }
        tracing::debug!(digest = %expect, "already on the target under this tag (as this daemon left it)");
        Ok(Some(Summary {
            digest: expect.to_string(),
            ..Summary::default()
        }))
    }

    /// The manifest to write: the source's, or for an index under a rule
    /// with `platforms`, a new index listing only those (with a note).
    fn subset(
        &self,
        req: &CopyRequest<'_>,
        top: Manifest,
    ) -> Result<(Manifest, Option<String>), ReplicateError> {
        match req.platforms {
            Some(wanted) if top.is_index() => {
                let subset =
                    platform_subset(&top, wanted).map_err(|source| ReplicateError::Manifest {
                        registry: req.source.name().to_string(),
                        source,
                    })?;
                let note = (subset.digest != top.digest).then(|| {
                    format!(
                        "platforms {}: a new index {} listing only them was written; the source index is {}",
                        wanted.join(", "),
                        subset.digest,
                        top.digest
                    )
                });
                Ok((subset, note))
            }
            _ => Ok((top, None)),
        }
    }

    /// Before the target is asked anything: a repository Harbor cannot
    /// hold is refused, and on a target that creates projects, the project
    /// is made. Harbor answers any request into a project that does not
    /// exist with a `401` (`src/server/middleware/v2auth/auth.go`), so
    /// even the first `HEAD` needs the project.
    async fn prepare_target(&self, req: &CopyRequest<'_>) -> Result<(), ReplicateError> {
        if (req.target.is_harbor() || req.target.creates_projects())
            && let Some(detail) = crate::harbor::target_problem(req.target_repository)
        {
            return Err(RegistryError::Refused {
                registry: req.target.name().to_string(),
                what: format!("writing {}{}", req.target_repository, req.reference),
                detail,
            }
            .into());
        }
        if req.target.creates_projects()
            && let Some(project) = decide::project_of(req.target_repository)
        {
            self.projects.ensure(req.target, project).await?;
        }
        Ok(())
    }

    /// The write of a copy: the content unless the manifest is there, the manifest (under the
    /// tag, last), then the referrers, looked up while the content copies.
    async fn write(
        &self,
        req: &CopyRequest<'_>,
        top: &Manifest,
        manifest_there: Option<bool>,
        source_digest: &str,
        note: Option<String>,
    ) -> Result<Summary, ReplicateError> {
        let progress = Progress::default();
        let content = async {
            let present = match manifest_there {
                Some(known) => known,
                None => {
                    req.target
                        .has_manifest(req.target_repository, &top.digest)
                        .await?
                }
            };
            if present {
                req.target_holds(&top.digest);
                // Another tag has it already: only the tag is written.
                tracing::debug!(digest = %top.digest, "manifest already on target");
                if let Reference::Tag(_) = req.reference {
                    req.target
                        .put_manifest(req.target_repository, req.reference, top)
                        .await?;
                    progress.tag_written.store(true, Ordering::Relaxed);
                }
            } else {
                // Copy what the manifest needs, then write it: under the tag
                // in one PUT for a tagged copy, which is the tag written last.
                let under = matches!(req.reference, Reference::Tag(_)).then_some(req.reference);
                self.copy_manifest(req, top, 0, &progress, under, &[])
                    .await?;
                progress
                    .tag_written
                    .store(under.is_some(), Ordering::Relaxed);
            }
            Ok::<_, ReplicateError>(())
        };
        // Which referrers the source has is asked while the content copies
        // (reads only); they are written after their subject, so they
        // never point at nothing, and a job with none ends with its tag.
        // Those of an index's children too: cosign signs each platform
        // manifest (`--recursive`), and the signatures are worth as much.
        let lookup = async {
            if !req.referrers {
                return Ok(Vec::new());
            }
            let subjects = referrer_subjects(top);
            let asks: Vec<_> = subjects.iter().map(|d| find_referrers(req, d)).collect();
            stream::iter(asks)
                .buffer_unordered(graph::CHILDREN_AT_ONCE)
                .try_collect::<Vec<_>>()
                .await
        };
        let ((), found) = futures_util::future::try_join(content, lookup).await?;
        self.record_tag(req, source_digest, &top.digest).await;
        // Each subject's at once (an index's platforms are signed each).
        let copies: Vec<_> = found
            .into_iter()
            .map(|f| self.copy_referrers(req, f, &progress))
            .collect();
        stream::iter(copies)
            .buffer_unordered(graph::CHILDREN_AT_ONCE)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(progress.summary(top.digest.clone(), note))
    }

    /// Replicates a deletion: deletes the manifest with `digest` from the
    /// target (which removes its tags there, as Harbor does), but only if
    /// the source no longer has that manifest (a delete event proves
    /// nothing by itself: it may be replayed, reordered or forged) and
    /// what the target has under the deleted reference is that digest.
    pub async fn delete(
        &self,
        req: &CopyRequest<'_>,
        digest: &str,
    ) -> Result<Summary, ReplicateError> {
        let (target, repository, reference) = (req.target, req.target_repository, req.reference);
        let skipped = |why: String| {
            tracing::info!("{why}");
            Ok(Summary {
                digest: digest.to_string(),
                skipped: Some(why),
                ..Summary::default()
            })
        };
        let (source_has, there) = futures_util::future::try_join(
            req.source.has_manifest(req.source_repository, digest),
            target.resolve(repository, reference),
        )
        .await?;
        match decide::deletion(source_has, there.as_deref(), digest) {
            decide::Deletion::SourceHolds => {
                return skipped(format!(
                    "not deleted: the source still has {}@{digest}; a delete event for what the source holds is replayed, reordered or forged",
                    req.source_repository
                ));
            }
            decide::Deletion::Absent => {
                return skipped(format!(
                    "{repository}{reference} is not on the target; nothing to delete"
                ));
            }
            decide::Deletion::Other(there) => {
                return skipped(format!(
                    "not deleted: {repository}{reference} on the target is {there}, not the deleted {digest}"
                ));
            }
            decide::Deletion::Delete => {}
        }
        let deleted = target.delete_manifest(repository, digest).await?;
        Ok(Summary {
            digest: digest.to_string(),
            deleted,
            ..Summary::default()
        })
    }
}

/// Why a copy ends without writing, in words for the job record.
fn why_skipped(
    req: &CopyRequest<'_>,
    step: &decide::Next,
    kind: Option<&str>,
    top: &str,
) -> String {
    match step {
        decide::Next::NotAReferrer => format!(
            "{}{} was pushed by digest and is not a referrer (no subject); the rule selects tags, so it is copied with its tagged push",
            req.source_repository, req.reference
        ),
        decide::Next::OtherType => format!(
            "{}{} is a {} artifact; the rule copies only {} (artifact_types)",
            req.source_repository,
            req.reference,
            kind.unwrap_or("unknown"),
            req.artifact_types.unwrap_or_default().join(", ")
        ),
        decide::Next::KeepTheirs(there) => format!(
            "not overwritten: {}{} on the target points at {there}, the source at {top} (rule has override = false)",
            req.target_repository, req.reference
        ),
        _ => String::new(),
    }
}
