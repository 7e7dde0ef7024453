//! A blob body that hashes every byte as it passes and fails at the end if
//! the content does not match its digest or its size. Feeding it straight
//! into an upload means a corrupt blob aborts the upload instead of landing
//! on the target.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use sha2::{Digest as _, Sha256, Sha512};

/// A stream of blob bytes.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// How content differed from what its manifest declares. The source will
/// serve the same bytes again (content is addressed by digest), so callers
/// decide retries on this, not on the wording of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mismatch {
    /// More or fewer bytes than the declared size.
    Size,
    /// Bytes that hash to another digest.
    Digest,
}

/// The error inside a stream's `io::Error` for a [`Mismatch`].
#[derive(Debug)]
struct ContentMismatch {
    kind: Mismatch,
    message: String,
}

impl std::fmt::Display for ContentMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ContentMismatch {}

/// A stream error saying the content is not what was declared; its
/// message is `message`.
pub fn mismatch(kind: Mismatch, message: String) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        ContentMismatch { kind, message },
    )
}

/// The [`Mismatch`] a stream error reports, if it is one.
pub fn mismatch_of(e: &std::io::Error) -> Option<Mismatch> {
    e.get_ref()?
        .downcast_ref::<ContentMismatch>()
        .map(|m| m.kind)
}

#[derive(Clone)]
enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Where a verified stream stands: the bytes it passed and their hash, so
/// that another stream of the rest ([`Verify::resume`]) checks the whole
/// blob as this one would have.
#[derive(Clone)]
pub struct Resume {
    offset: u64,
    hasher: Hasher,
}

impl Resume {
    /// How many bytes were passed: the rest begins there.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// Wraps a byte stream; see the module doc.
pub struct Verify {
    inner: ByteStream,
    hasher: Option<Hasher>,
    expected: String,
    size: u64,
    seen: Arc<AtomicU64>,
    done: bool,
}

impl Verify {
    /// Verifies `inner` against `digest` (`sha256:` or `sha512:`) and
    /// `size`. `seen` counts the bytes that passed.
    pub fn new(inner: ByteStream, digest: &str, size: u64, seen: Arc<AtomicU64>) -> Verify {
        let hasher = if digest.starts_with("sha512:") {
            Hasher::Sha512(Sha512::new())
        } else {
            Hasher::Sha256(Sha256::new())
        };
        Verify {
            inner,
            hasher: Some(hasher),
            expected: digest.to_string(),
            size,
            seen,
            done: false,
        }
    }

    /// Verifies `rest`, the bytes of the blob from `at`'s offset on, as
    /// the stream `at` was taken from would have: the digest and size
    /// are of the whole blob.
    pub fn resume(rest: ByteStream, digest: &str, size: u64, at: Resume) -> Verify {
        Verify {
            inner: rest,
            hasher: Some(at.hasher),
            expected: digest.to_string(),
            size,
            seen: Arc::new(AtomicU64::new(at.offset)),
            done: false,
        }
    }

    /// Where this stream stands now (`None` once it has ended).
    pub fn resume_point(&self) -> Option<Resume> {
        let hasher = self.hasher.clone().filter(|_| !self.done)?;
        Some(Resume {
            offset: self.seen.load(Ordering::Relaxed),
            hasher,
        })
    }

    fn finish(&mut self) -> Option<std::io::Error> {
        let seen = self.seen.load(Ordering::Relaxed);
        if seen != self.size {
            return Some(mismatch(
                Mismatch::Size,
                format!("size mismatch: expected {} bytes, got {seen}", self.size),
            ));
        }
        let actual = match self.hasher.take()? {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        };
        (actual != self.expected).then(|| {
            mismatch(
                Mismatch::Digest,
                format!(
                    "digest mismatch: expected {}, content hashes to {actual}",
                    self.expected
                ),
            )
        })
    }
}

impl Stream for Verify {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                let total =
                    self.seen.fetch_add(chunk.len() as u64, Ordering::Relaxed) + chunk.len() as u64;
                if total > self.size {
                    self.done = true;
                    return Poll::Ready(Some(Err(mismatch(
                        Mismatch::Size,
                        format!(
                            "size mismatch: more than the {} bytes the manifest declares",
                            self.size
                        ),
                    ))));
                }
                match self.hasher.as_mut() {
                    Some(Hasher::Sha256(h)) => h.update(&chunk),
                    Some(Hasher::Sha512(h)) => h.update(&chunk),
                    None => {}
                }
                // The last byte is held back until the digest is checked:
                // a target given every byte of a request with a known
                // length would close the upload itself (and answer with
                // its own DIGEST_INVALID, blaming no one) before the
                // stream's end reported the source's fault.
                if total == self.size
                    && let Some(e) = self.finish()
                {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                match self.finish() {
                    Some(e) => Poll::Ready(Some(Err(e))),
                    None => Poll::Ready(None),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn stream(parts: Vec<&'static [u8]>) -> ByteStream {
        Box::pin(futures_util::stream::iter(
            parts.into_iter().map(|p| Ok(Bytes::from_static(p))),
        ))
    }

    async fn run(v: Verify) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        let mut v = v;
        while let Some(item) = v.next().await {
            out.extend_from_slice(&item.map_err(|e| e.to_string())?);
        }
        Ok(out)
    }

    /// The first error of a verified stream.
    async fn first_error(v: Verify) -> std::io::Error {
        let mut v = v;
        while let Some(item) = v.next().await {
            if let Err(e) = item {
                return e;
            }
        }
        panic!("the stream ended without an error");
    }

    #[tokio::test]
    async fn mismatches_say_their_kind_and_other_errors_do_not() {
        let digest = crate::manifest::sha256_digest(b"hello world");
        let v = |parts| Verify::new(stream(parts), &digest, 11, Arc::default());
        let corrupt = first_error(v(vec![b"hello ", b"w0rld"])).await;
        assert_eq!(mismatch_of(&corrupt), Some(Mismatch::Digest));
        assert!(
            corrupt.to_string().starts_with("digest mismatch"),
            "{corrupt}"
        );
        let short = first_error(v(vec![b"hello"])).await;
        assert_eq!(mismatch_of(&short), Some(Mismatch::Size));
        let long = first_error(v(vec![b"hello world!"])).await;
        assert_eq!(mismatch_of(&long), Some(Mismatch::Size));
        assert_eq!(
            mismatch_of(&std::io::Error::other("connection reset")),
            None
        );
    }

    #[tokio::test]
    async fn a_resumed_stream_checks_the_whole_blob() {
        let digest = crate::manifest::sha256_digest(b"hello world");
        let mut first = Verify::new(
            stream(vec![b"hello ", b"world"]),
            &digest,
            11,
            Arc::default(),
        );
        let head = first.next().await.expect("a chunk").expect("bytes");
        assert_eq!(&head[..], b"hello ");
        let at = first.resume_point().expect("still reading");
        assert_eq!(at.offset(), 6);
        let rest =
            |part: &'static [u8]| run(Verify::resume(stream(vec![part]), &digest, 11, at.clone()));
        let whole = rest(b"world").await;
        assert_eq!(whole.expect("the rest completes the blob"), b"world");
        let wrong = rest(b"w0rld").await;
        assert!(wrong.expect_err("corrupt rest").contains("digest mismatch"));
        let long = rest(b"world!").await;
        assert!(long.expect_err("long rest").contains("size mismatch"));
        assert!(run(first).await.is_ok());
    }

    #[tokio::test]
    async fn passes_matching_content_and_fails_otherwise() {
        let digest = crate::manifest::sha256_digest(b"hello world");
        let seen = Arc::new(AtomicU64::new(0));
        let ok = run(Verify::new(
            stream(vec![b"hello ", b"world"]),
            &digest,
            11,
            seen.clone(),
        ))
        .await;
        assert_eq!(ok.expect("valid"), b"hello world");
        assert_eq!(seen.load(Ordering::Relaxed), 11);

        let bad = run(Verify::new(
            stream(vec![b"hello ", b"w0rld"]),
            &digest,
            11,
            Arc::default(),
        ))
        .await;
        assert!(bad.expect_err("corrupt").contains("digest mismatch"));
        let short = run(Verify::new(
            stream(vec![b"hello"]),
            &digest,
            11,
            Arc::default(),
        ))
        .await;
        assert!(short.expect_err("short").contains("size mismatch"));
        let long = run(Verify::new(
            stream(vec![b"hello world!"]),
            &digest,
            11,
            Arc::default(),
        ))
        .await;
        assert!(long.expect_err("long").contains("size mismatch"));
    }
}
