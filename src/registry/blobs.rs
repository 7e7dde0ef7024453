//! Blobs as they are read: `HEAD`, the verified streaming `GET`, the ranged
//! `GET` a resumed upload reads from, and [`Tap`], which tells a source's
//! failure from a target's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;

use super::ranged::{self, Blob};
use super::verify::{self, ByteStream, Mismatch};
use super::{Registry, RegistryError, pull};

fn blob(repository: &str, digest: &str, size: u64) -> Blob {
    Blob {
        repository: repository.to_string(),
        digest: digest.to_string(),
        size,
    }
}

impl Registry {
    /// Counts a blob stream's bytes into `counter` and holds it to
    /// `max_bytes_per_second`, if one is set.
    pub(super) fn metered(&self, s: ByteStream, counter: &Arc<AtomicU64>) -> ByteStream {
        let counter = counter.clone();
        let s: ByteStream = Box::pin(s.inspect(move |item| {
            if let Ok(b) = item {
                counter.fetch_add(b.len() as u64, Ordering::Relaxed);
            }
        }));
        match &self.t.pacer {
            None => s,
            Some(p) => {
                let p = p.clone();
                Box::pin(s.then(move |item| {
                    let p = p.clone();
                    async move {
                        if let Ok(b) = &item {
                            p.take(b.len()).await;
                        }
                        item
                    }
                }))
            }
        }
    }

    /// True if the repository holds a blob with this digest.
    pub async fn has_blob(&self, repository: &str, digest: &str) -> Result<bool, RegistryError> {
        let what = format!("blob {repository}@{digest}");
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        Ok(self.head(&what, repository, &url, false).await?.is_some())
    }

    /// Opens a blob for reading. The stream hashes every byte and yields an
    /// error at its end if the content does not match `digest` and `size`.
    pub async fn get_blob(
        &self,
        repository: &str,
        digest: &str,
        size: u64,
    ) -> Result<(ByteStream, Arc<AtomicU64>), RegistryError> {
        let whole = blob(repository, digest, size);
        let raw = if self.t.ranges.apply(size) {
            self.ranged_from(whole, 0).await?
        } else {
            self.plain_from(&whole, 0).await?
        };
        let seen = Arc::new(AtomicU64::new(0));
        let verified = verify::Verify::new(raw, digest, size, seen.clone());
        Ok((Box::pin(verified), seen))
    }

    /// Reads a blob of `size` bytes from `offset` on (`Range`; by several
    /// ranges at once when the rest is big), unverified: the caller
    /// hashes, having restored the hash of the part before `offset`.
    pub async fn get_blob_from(
        &self,
        repository: &str,
        digest: &str,
        offset: u64,
        size: u64,
    ) -> Result<ByteStream, RegistryError> {
        if self.t.ranges.apply(size.saturating_sub(offset)) {
            return self
                .ranged_from(blob(repository, digest, size), offset)
                .await;
        }
        let what = format!("reading blob {repository}@{digest} from byte {offset}");
        let url = self.url(&format!("{repository}/blobs/{digest}"));
        let resp = self
            .t
            .send(&what, &pull(repository), true, &|c| {
                let rb = c.get(&url);
                if offset > 0 {
                    rb.header(reqwest::header::RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        let content_range = ranged::header(&resp, reqwest::header::CONTENT_RANGE);
        let asked = (offset, size.saturating_sub(1));
        let status = resp.status().as_u16();
        let skip = match ranged::judge(status, content_range.as_deref(), asked, size) {
            ranged::Answer::Piece => 0,
            // The registry ignored Range: drop the bytes we already have.
            ranged::Answer::Whole => offset,
            ranged::Answer::Lie(why) => {
                self.distrust(digest, &why);
                return self
                    .plain_from(&blob(repository, digest, size), offset)
                    .await;
            }
            ranged::Answer::Status(_) => return Err(self.t.status_error(resp, &what).await),
        };
        let raw: ByteStream = Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        );
        let raw = if skip == 0 {
            raw
        } else {
            skip_bytes(raw, skip)
        };
        Ok(self.metered(raw, &self.t.stats.bytes_read))
    }
}

/// Drops the first `n` bytes of a stream.
pub(super) fn skip_bytes(s: ByteStream, n: u64) -> ByteStream {
    let mut left = n;
    Box::pin(s.filter_map(move |item| {
        let out = match item {
            Ok(mut b) if left > 0 => {
                if (b.len() as u64) <= left {
                    left -= b.len() as u64;
                    None
                } else {
                    let rest = b.split_off(left as usize);
                    left = 0;
                    Some(Ok(rest))
                }
            }
            other => Some(other),
        };
        std::future::ready(out)
    }))
}

/// What went wrong reading a blob from the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFault {
    /// The stream's error message.
    pub detail: String,
    /// Set when the content is not what its manifest declares.
    pub mismatch: Option<Mismatch>,
}

impl From<&std::io::Error> for SourceFault {
    fn from(e: &std::io::Error) -> SourceFault {
        SourceFault {
            detail: e.to_string(),
            mismatch: verify::mismatch_of(e),
        }
    }
}

/// Wraps a blob stream to count bytes and remember the first read error, so
/// that when the upload fails because the *source* failed, the job says so.
pub struct Tap {
    bytes: Arc<AtomicU64>,
    error: Arc<Mutex<Option<SourceFault>>>,
}

impl Tap {
    /// Wraps `s`.
    pub fn wrap(s: ByteStream) -> (Tap, ByteStream) {
        let bytes = Arc::new(AtomicU64::new(0));
        let error = Arc::new(Mutex::new(None));
        let (b, e) = (bytes.clone(), error.clone());
        let wrapped = s.inspect(move |item| match item {
            Ok(chunk) => {
                b.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                if let Ok(mut slot) = e.lock()
                    && slot.is_none()
                {
                    *slot = Some(SourceFault::from(err));
                }
            }
        });
        (Tap { bytes, error }, Box::pin(wrapped))
    }

    /// The first source error, if any.
    pub fn source_error(&self) -> Option<SourceFault> {
        self.error.lock().ok().and_then(|s| s.clone())
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}
