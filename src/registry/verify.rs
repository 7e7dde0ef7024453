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

enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
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
