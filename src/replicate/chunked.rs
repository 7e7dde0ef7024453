//! Uploading a large blob in chunks that survive failures and restarts.
//!
//! Each chunk is a `PATCH` streamed straight from the source (nothing is
//! buffered beyond a network frame). After the target accepts a chunk, the
//! upload URL, the offset and the SHA-256 state are recorded in the
//! [`Ledger`]. A later attempt (after a dropped connection, a `kill -9`, a
//! restart) asks the target how much it holds; if that matches the record,
//! it restores the hash state, reads the source from that offset with a
//! `Range` request and carries on. Persisting the hash state (about 100
//! bytes) rather than re-reading the committed prefix from the source means
//! a resumed 2 GiB layer costs only the bytes still missing, on both sides.
//! The digest is checked before the upload is closed; a mismatch abandons
//! the session and nothing is linked on the target.
//!
//! A limit of the registries, not of this code: CNCF distribution (and so
//! Harbor) writes a chunk as it arrives, and when a later request names an
//! offset other than the bytes it holds, it cancels the whole session
//! ("upload resumed at wrong offset"). So an upload cut off *in the middle
//! of* a chunk (a `kill -9`, a dropped connection) cannot continue there,
//! and starts over; one stopped *between* chunks continues. That is why a
//! stopping daemon finishes the chunk in flight before it exits, and why
//! chunks should not be larger than a few seconds of transfer.

use std::sync::Arc;

use futures_util::StreamExt;
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

use super::ledger::{Ledger, UploadRecord};
use super::{CopyRequest, ReplicateError};
use crate::clock::now_ms;
use crate::manifest::Descriptor;
use crate::registry::verify::mismatch;
use crate::registry::{ByteStream, Mismatch, SourceFault, Tap};

/// What a chunked copy did.
pub struct Chunked {
    /// Bytes sent to the target in this attempt.
    pub sent: u64,
    /// True if it continued an earlier upload.
    pub resumed: bool,
}

fn save_state(h: &Sha256) -> String {
    hex::encode(h.serialize().as_slice())
}

fn load_state(s: &str) -> Option<Sha256> {
    let bytes = hex::decode(s).ok()?;
    let state = SerializedState::<Sha256>::try_from(bytes.as_slice()).ok()?;
    Sha256::deserialize(&state).ok()
}

/// The source, shared by the chunk bodies that take turns reading it.
struct Feed {
    source: ByteStream,
    leftover: Option<bytes::Bytes>,
    hasher: Sha256,
}

/// A body of exactly `len` bytes taken from the feed, hashed as it goes.
fn chunk_body(feed: Arc<tokio::sync::Mutex<Feed>>, len: u64) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        (feed, len),
        |(feed, remaining)| async move {
            if remaining == 0 {
                return None;
            }
            let mut f = feed.lock().await;
            let next = match f.leftover.take() {
                Some(b) => Some(Ok(b)),
                None => f.source.next().await,
            };
            match next {
                None => {
                    drop(f);
                    Some((
                        Err(mismatch(
                            Mismatch::Size,
                            format!(
                                "size mismatch: the source ended {remaining} bytes short of the size the manifest declares"
                            ),
                        )),
                        (feed, 0),
                    ))
                }
                Some(Err(e)) => {
                    drop(f);
                    Some((Err(e), (feed, 0)))
                }
                Some(Ok(mut b)) => {
                    if b.len() as u64 > remaining {
                        f.leftover = Some(b.split_off(remaining as usize));
                    }
                    f.hasher.update(&b);
                    let n = b.len() as u64;
                    drop(f);
                    Some((Ok(b), (feed, remaining - n)))
                }
            }
        },
    ))
}

/// The ledger key of an upload.
pub fn upload_key(registry: &str, repository: &str, digest: &str) -> String {
    format!("{registry}\n{repository}\n{digest}")
}

/// Copies one blob in chunks, resuming a recorded upload when the target
/// still holds exactly what was recorded.
pub async fn copy(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    on_chunk: &(dyn Fn(u64) + Sync),
    stopping: &tokio_util::sync::CancellationToken,
    answer: Option<super::tee::Answer<'_>>,
) -> Result<Chunked, ReplicateError> {
    let copied = copy_resumably(req, blob, ledger, on_chunk, stopping, answer).await;
    if let Err(e) = &copied
        && req.last_attempt
        && !matches!(e, ReplicateError::Interrupted)
    {
        // The job fails for good: no attempt will resume this session,
        // so what the target holds of it goes now.
        let key = upload_key(req.target.name(), req.target_repository, &blob.digest);
        if let Some(rec) = ledger.upload(&key).await
            && let Ok(location) = url::Url::parse(&rec.location)
        {
            abandon(req, ledger, &key, &location).await;
        }
    }
    copied
}

async fn copy_resumably(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    on_chunk: &(dyn Fn(u64) + Sync),
    stopping: &tokio_util::sync::CancellationToken,
    answer: Option<super::tee::Answer<'_>>,
) -> Result<Chunked, ReplicateError> {
    let (target, repo) = (req.target, req.target_repository);
    let key = upload_key(target.name(), repo, &blob.digest);
    let resumed = recorded_session(req, blob, ledger, &key).await;
    let was_resumed = resumed.is_some();
    let session = match resumed {
        Some(s) => s,
        None => open_session(req, blob, ledger, &key).await?,
    };
    let (_, configured) = target.chunking();
    let chunk = configured.max(session.min_chunk.unwrap_or(0)).max(1);

    // Read from where the hash state stands; bytes the target already
    // holds beyond it only go through the hasher. From the start, in a
    // fan-out, the read is the one shared with the other targets.
    let from = || {
        req.source.get_blob_from(
            req.source_repository,
            &blob.digest,
            session.hashed,
            blob.size,
        )
    };
    let source = match answer {
        // Verified as every reader of a shared read is (the others may
        // upload it in one request, hashed by the stream alone).
        Some(answer) if session.hashed == 0 => {
            super::blobs::read_from_start(req, blob, Some(answer)).await?
        }
        _ => from().await?,
    };
    let feed = Arc::new(tokio::sync::Mutex::new(Feed {
        source,
        leftover: None,
        hasher: session.hasher,
    }));
    let source_failed = |fault: SourceFault| ReplicateError::source_read(req, blob, fault);
    if session.offset > session.hashed {
        let mut catch_up = chunk_body(feed.clone(), session.offset - session.hashed);
        while let Some(item) = catch_up.next().await {
            item.map_err(|e| source_failed(SourceFault::from(&e)))?;
        }
    }
    let mut location = session.location;
    let mut offset = session.offset;
    let mut sent = 0;
    while offset < blob.size {
        if stopping.is_cancelled() {
            return Err(ReplicateError::Interrupted);
        }
        if req.check_cancel().is_err() {
            abandon(req, ledger, &key, &location).await;
            return Err(ReplicateError::Cancelled);
        }
        let len = chunk.min(blob.size - offset);
        location = send_chunk(req, blob, ledger, &key, &feed, (&location, offset, len)).await?;
        offset += len;
        sent += len;
        on_chunk(len);
        record(ledger, &key, &location, offset, &feed.lock().await.hasher).await;
    }
    finish(req, blob, ledger, &key, &feed, &location).await?;
    Ok(Chunked {
        sent,
        resumed: was_resumed,
    })
}

/// An upload session and where it stands.
struct Session {
    location: url::Url,
    /// Bytes the target holds.
    offset: u64,
    /// The hash of the first `hashed` bytes.
    hasher: Sha256,
    hashed: u64,
    /// The registry's smallest accepted chunk, if it said.
    min_chunk: Option<u64>,
}

/// The session the ledger recorded for this blob, if the target still holds
/// it as recorded; otherwise it is cancelled and forgotten.
async fn recorded_session(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    key: &str,
) -> Option<Session> {
    let (target, repo) = (req.target, req.target_repository);
    let rec = ledger.upload(key).await?;
    let mut resume = None;
    match target.upload_offset(repo, &rec.location).await {
        // The target may hold more than recorded: part of the chunk in
        // flight when we were cut off. Those bytes are re-hashed from
        // the source, not sent again.
        Ok(Some((loc, held))) if held >= rec.offset && held <= blob.size => {
            if let Some(h) = load_state(&rec.hash_state) {
                tracing::info!(digest = %blob.digest, offset = held, recorded = rec.offset, size = blob.size, "resuming upload");
                resume = Some(Session {
                    location: loc,
                    offset: held,
                    hasher: h,
                    hashed: rec.offset,
                    min_chunk: None,
                });
            }
        }
        Ok(Some((_, held))) => {
            tracing::info!(digest = %blob.digest, recorded = rec.offset, held, "upload on the target does not match the record; starting over");
            target.cancel_upload(repo, &rec.location).await;
        }
        Ok(None) => {
            tracing::info!(digest = %blob.digest, "recorded upload is gone from the target; starting over");
        }
        Err(e) => {
            tracing::info!(digest = %blob.digest, error = %e, "cannot check the recorded upload; starting over")
        }
    }
    if resume.is_none() {
        ledger.clear_upload(key).await;
    }
    resume
}

/// Opens a new session and records it before the first byte.
async fn open_session(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    key: &str,
) -> Result<Session, ReplicateError> {
    let (target, repo) = (req.target, req.target_repository);
    let what = format!("uploading blob {repo}@{} in chunks", blob.digest);
    let (location, min_chunk) = target.begin_upload(repo, &what).await?;
    let hasher = Sha256::new();
    record(ledger, key, &location, 0, &hasher).await;
    Ok(Session {
        location,
        offset: 0,
        hasher,
        hashed: 0,
        min_chunk,
    })
}

/// Records where an upload session stands (on disk before the next chunk),
/// so a restart resumes it: `offset` bytes sent, `hasher` over them.
async fn record(ledger: &dyn Ledger, key: &str, location: &url::Url, offset: u64, hasher: &Sha256) {
    ledger
        .save_upload(
            key,
            &UploadRecord {
                location: location.to_string(),
                offset,
                hash_state: save_state(hasher),
                updated_ms: now_ms(),
            },
        )
        .await;
    ledger.persist().await;
}

/// Drops an upload session a source cannot fill as declared: cancelled on
/// the target, forgotten by the ledger.
async fn abandon(req: &CopyRequest<'_>, ledger: &dyn Ledger, key: &str, location: &url::Url) {
    req.target
        .cancel_upload(req.target_repository, location.as_str())
        .await;
    ledger.clear_upload(key).await;
}

/// Sends one chunk (`at`: session, offset, length); returns the session's
/// next URL. A chunk that fails because of the source is blamed on it, and
/// the session is dropped: a source that cannot serve the blob as declared
/// leaves nothing worth resuming.
async fn send_chunk(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    key: &str,
    feed: &Arc<tokio::sync::Mutex<Feed>>,
    at: (&url::Url, u64, u64),
) -> Result<url::Url, ReplicateError> {
    let (target, repo) = (req.target, req.target_repository);
    let (location, offset, len) = at;
    let (tap, body) = Tap::wrap(chunk_body(feed.clone(), len));
    match target.upload_chunk(repo, location, offset, len, body).await {
        Ok(next) => Ok(next),
        Err(e) => match tap.source_error() {
            Some(fault) => {
                abandon(req, ledger, key, location).await;
                Err(ReplicateError::source_read(req, blob, fault))
            }
            None => Err(e.into()),
        },
    }
}

/// Checks the whole blob's hash, then closes the session with the digest.
async fn finish(
    req: &CopyRequest<'_>,
    blob: &Descriptor,
    ledger: &dyn Ledger,
    key: &str,
    feed: &Arc<tokio::sync::Mutex<Feed>>,
    location: &url::Url,
) -> Result<(), ReplicateError> {
    let (target, repo) = (req.target, req.target_repository);
    let actual = {
        let f = feed.lock().await;
        format!("sha256:{}", hex::encode(f.hasher.clone().finalize()))
    };
    if actual != blob.digest {
        abandon(req, ledger, key, location).await;
        return Err(ReplicateError::source_read(
            req,
            blob,
            SourceFault {
                detail: format!(
                    "digest mismatch: expected {}, content hashes to {actual}",
                    blob.digest
                ),
                mismatch: Some(Mismatch::Digest),
            },
        ));
    }
    target.finish_upload(repo, location, &blob.digest).await?;
    ledger.clear_upload(key).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_state_round_trips() {
        let mut h = Sha256::new();
        h.update(b"hello ");
        let restored = load_state(&save_state(&h)).expect("restores");
        let mut a = h.clone();
        let mut b = restored;
        a.update(b"world");
        b.update(b"world");
        assert_eq!(a.finalize(), b.finalize());
        assert!(load_state("zz").is_none());
        assert!(load_state("00").is_none());
    }
}
