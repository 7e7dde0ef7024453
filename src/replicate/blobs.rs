//! Moving one blob: one upload per (target, digest) at a time, present
//! blobs skipped, known ones mounted, the rest streamed in one request or
//! in resumable chunks.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use super::chunked;
use super::decide;
use super::{CopyRequest, Progress, ReplicateError, Replicator};
use crate::manifest::Descriptor;
use crate::registry::{MountOrUpload, RegistryError, Tap};

impl Replicator {
    pub(super) async fn copy_blob(
        &self,
        req: &CopyRequest<'_>,
        wanted: &super::graph::Wanted,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        req.check_cancel()?;
        let blob = &wanted.blob;
        // One upload of a digest per target at a time, whatever the
        // repository: a second job that wants the same blob waits, then
        // finds it present or mounts it from where the first put it (so a
        // base layer shared by many images crosses the network once).
        let _turn = self.inflight.acquire(req.target.name(), &blob.digest).await;
        // And across relays sharing a ledger (PostgreSQL).
        let _fleet_turn = self
            .ledger
            .upload_turn(req.target.name(), &blob.digest)
            .await;
        let _in_flight = self.metrics.as_ref().map(|m| m.transfer_started());
        // No retry here: the transport repeats a failed request and the job
        // scheduler repeats a failed job (whose next attempt skips or mounts
        // what this one copied, and resumes chunked uploads); see
        // ARCHITECTURE.md, "Who retries what".
        self.copy_blob_once(req, wanted, progress).await?;
        self.ledger
            .blob_seen(req.target.name(), &blob.digest, req.target_repository)
            .await;
        Ok(())
    }

    async fn copy_blob_once(
        &self,
        req: &CopyRequest<'_>,
        wanted: &super::graph::Wanted,
        progress: &Progress,
    ) -> Result<(), ReplicateError> {
        let (target, repo) = (req.target, req.target_repository);
        let blob = &wanted.blob;
        // In a fan-out: this copy's word on the blob, which the other
        // targets' copies wait for; dropped unused, it says "no read".
        let answer = req.seat.map(|s| s.answer(&blob.digest, &wanted.owners));
        let known = self
            .ledger
            .blob_locations(target.name(), &blob.digest)
            .await;
        let (threshold, _) = target.chunking();
        let chunkable = blob.digest.starts_with("sha256:");
        let big = blob.size > threshold && chunkable;
        if !known.is_empty() || big {
            // Known to the ledger (likely present, or mountable from where
            // it went), or too big to open a stream for on a guess: ask
            // first, the target and (for its word that it holds the blob
            // in this repository) the source, together.
            let (source_has, target_has) = futures_util::future::try_join(
                self.source_holds(req, blob, progress),
                target.has_blob(repo, &blob.digest),
            )
            .await?;
            match decide::held(source_has, target_has) {
                decide::Held::Skip => {
                    progress.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                    self.count("skipped");
                    return Ok(());
                }
                decide::Held::MountOrUpload => {
                    if self.mount_known(req, blob, &known, progress).await {
                        return Ok(());
                    }
                }
                // Read it: the source's error names the blob it lacks.
                decide::Held::Read => {}
            }
            if big {
                return self.copy_chunked(req, blob, progress, answer).await;
            }
        }
        // One POST that either finds the blob in the repository after all
        // (a mount from itself) or opens the upload session, while the
        // source starts sending: for a new blob, two round trips fewer than
        // HEAD, then POST, then GET.
        let (opened, read) = futures_util::future::join(
            target.mount_or_begin(repo, &blob.digest, repo),
            read_from_start(req, blob, answer),
        )
        .await;
        let location = match opened? {
            // Skipped only on the source's word too: its answer to the GET.
            MountOrUpload::Mounted => {
                drop(read?);
                progress.blobs_skipped.fetch_add(1, Ordering::Relaxed);
                self.count("skipped");
                return Ok(());
            }
            MountOrUpload::Upload(location) => location,
        };
        let body = match read {
            Ok(body) => body,
            Err(e) => {
                target.cancel_upload(repo, location.as_str()).await;
                return Err(e.into());
            }
        };
        self.upload(req, blob, progress, location, body, chunkable)
            .await
    }

    /// Whether the source holds `blob` in the job's source repository
    /// (a `HEAD` by digest, asked once per job and digest).
    async fn source_holds(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        progress: &Progress,
    ) -> Result<bool, RegistryError> {
        if progress.proven(&blob.digest) {
            return Ok(true);
        }
        let has = req
            .source
            .has_blob(req.source_repository, &blob.digest)
            .await?;
        if has {
            progress.prove(&blob.digest);
        } else {
            tracing::warn!(digest = %blob.digest, repository = %req.source_repository, "the source does not hold this blob in the repository whose manifest names it: not skipped or mounted");
        }
        Ok(has)
    }

    /// Mounts `blob` from another repository of the same target project
    /// that the ledger saw it in ([`decide::mount_sources`]); true if one
    /// mount took.
    async fn mount_known(
        &self,
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        known: &[String],
        progress: &Progress,
    ) -> bool {
        let (target, repo) = (req.target, req.target_repository);
        for from in decide::mount_sources(known, repo) {
            match target.mount_blob(repo, &blob.digest, from).await {
                Ok(true) => {
                    progress.blobs_mounted.fetch_add(1, Ordering::Relaxed);
                    self.count("mounted");
                    tracing::debug!(digest = %blob.digest, from = %from, "blob mounted");
                    return true;
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(digest = %blob.digest, from = %from, error = %e, "mount failed")
                }
            }
        }
        false
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
        let body: crate::registry::ByteStream = match &req.moved {
            None => body,
            Some(moved) => {
                let moved = moved.clone();
                Box::pin(futures_util::StreamExt::inspect(body, move |item| {
                    if let Ok(b) = item {
                        moved.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                }))
            }
        };
        let (tap, body) = Tap::wrap(body);
        let session = location.to_string();
        let put = target.put_blob_at(location, repo, &blob.digest, blob.size, body);
        let sent = tokio::select! {
            sent = put => sent,
            () = req.cancelled() => {
                target.cancel_upload(repo, &session).await;
                return Err(ReplicateError::Cancelled);
            }
        };
        if let Err(e) = sent {
            // A session whose one request failed cannot go on: cancelled,
            // so that what it received does not stay in the target's
            // upload area.
            target.cancel_upload(repo, &session).await;
            if let Some(fault) = tap.source_error() {
                return Err(ReplicateError::source_read(req, blob, fault));
            }
            // A proxy in front of the target refused the body's size: send
            // it again in chunks, which such proxies usually let through.
            if chunkable && matches!(e, RegistryError::Status { status: 413, .. }) {
                tracing::info!(digest = %blob.digest, size = blob.size, "target refused one request this large (413); uploading in chunks");
                return self.copy_chunked(req, blob, progress, None).await;
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
        answer: Option<super::tee::Answer<'_>>,
    ) -> Result<(), ReplicateError> {
        let on_chunk = |n: u64| {
            if let Some(m) = &self.metrics {
                m.bytes_copied.inc_by(n);
            }
            if let Some(moved) = &req.moved {
                moved.fetch_add(n, Ordering::Relaxed);
            }
        };
        let done = chunked::copy(
            req,
            blob,
            self.ledger.as_ref(),
            &on_chunk,
            &self.stopping,
            answer,
        )
        .await?;
        self.blob_copied(progress, done.sent);
        if done.resumed {
            progress.blobs_resumed.fetch_add(1, Ordering::Relaxed);
            self.count("resumed");
        }
        Ok(())
    }
}

/// `blob` from the source from its first byte, verified; in a fan-out,
/// through this copy's `answer`: the read shared with the other targets.
pub(super) async fn read_from_start(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    answer: Option<super::tee::Answer<'_>>,
) -> Result<crate::registry::ByteStream, RegistryError> {
    let Some(answer) = answer else {
        return req
            .source
            .get_blob(req.source_repository, &blob.digest, blob.size)
            .await
            .map(|(body, _)| body);
    };
    let (source, repository) = (req.source.clone(), req.source_repository.to_string());
    let (digest, size) = (blob.digest.clone(), blob.size);
    let from: super::tee::OpenFrom = std::sync::Arc::new(move |offset| {
        let (source, repository, digest) = (source.clone(), repository.clone(), digest.clone());
        Box::pin(async move {
            source
                .get_blob_from(&repository, &digest, offset, size)
                .await
        })
    });
    answer.read(blob.size, from).await
}

/// Per-(target registry, digest) upload turns.
#[derive(Clone, Default)]
pub(super) struct Inflight {
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
