//! The shared read of one blob: the pump that reads the source once and
//! hands each chunk to every reader, and each reader's side of it,
//! including the rest of the blob read alone by a reader that fell behind
//! (see the parent module).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt as _;
use prometheus::IntCounter;
use tokio::sync::mpsc;

use super::{OpenFrom, STALL};
use crate::registry::ByteStream;
use crate::registry::verify::{Resume, Verify};

/// How long, in all, one target may hold the shared read of a blob back
/// (the others sitting idle until it takes a chunk) before it is cut loose
/// to read the rest alone; see [`lags`].
pub const LAG: Duration = Duration::from_secs(2);

/// The share of the read's time one target must have held it back, as
/// well as [`LAG`], to be cut loose: a target a little slower than the
/// others (which would re-read most of the blob) stays.
const LAG_SHARE: f64 = 0.25;

/// Whether a reader that held the read back `held` in all, in a read
/// going for `elapsed`, is cut loose: it held it back for [`LAG`] and for a
/// quarter of the time ([`LAG_SHARE`]: the others went at most 3/4 as
/// fast as they could).
pub fn lags(held: Duration, elapsed: Duration) -> bool {
    held >= LAG && held.as_secs_f64() >= elapsed.as_secs_f64() * LAG_SHARE
}

/// What the read sends a reader.
pub(super) enum Piece {
    /// The next bytes, or the read's error.
    Data(std::io::Result<Bytes>),
    /// The reader held the read back too long ([`lags`]): it reads the
    /// rest alone, from where this says it stands.
    Loose(Box<Resume>),
}

/// One reader of a shared read, as the pump sees it.
pub(super) struct Out {
    pub(super) tx: mpsc::Sender<Piece>,
    /// How long, in all, the others sat idle until this reader took a
    /// chunk.
    pub(super) held: Duration,
}

/// Where a reader takes its next bytes from.
enum Feed {
    /// The shared read, and the bytes taken from it so far.
    Shared(mpsc::Receiver<Piece>, u64),
    /// Its own read of the rest, after it was cut loose.
    Alone(ByteStream),
    Done,
}

/// A reader's side: the chunks the pump sends; when it is cut loose, its
/// own read of the rest from `from`, verified as one stream with what came
/// before; and an error if the shared chunks end short of `size` without
/// one (it was cut off for stalling).
pub(super) fn receiving(
    rx: mpsc::Receiver<Piece>,
    size: u64,
    digest: Arc<str>,
    from: OpenFrom,
) -> ByteStream {
    Box::pin(futures_util::stream::unfold(
        Feed::Shared(rx, 0),
        move |feed| {
            let (digest, from) = (digest.clone(), from.clone());
            async move { next_piece(feed, size, &digest, &from).await }
        },
    ))
}

async fn next_piece(
    feed: Feed,
    size: u64,
    digest: &str,
    from: &OpenFrom,
) -> Option<(std::io::Result<Bytes>, Feed)> {
    let (mut rx, seen) = match feed {
        Feed::Done => return None,
        Feed::Alone(rest) => return next_alone(rest).await,
        Feed::Shared(rx, seen) => (rx, seen),
    };
    match rx.recv().await {
        Some(Piece::Data(Ok(b))) => {
            let seen = seen + b.len() as u64;
            Some((Ok(b), Feed::Shared(rx, seen)))
        }
        Some(Piece::Data(Err(e))) => Some((Err(e), Feed::Done)),
        Some(Piece::Loose(at)) => match from(at.offset()).await {
            Ok(rest) => next_alone(Box::pin(Verify::resume(rest, digest, size, *at))).await,
            Err(e) => Some((
                Err(std::io::Error::other(format!(
                    "this target fell behind the others' shared read and could not read the rest alone: {e}"
                ))),
                Feed::Done,
            )),
        },
        None if seen < size => Some((
            Err(std::io::Error::other(format!(
                "the shared read of this blob stopped for this target after {seen} of {size} bytes (it took nothing for {}s while the other targets waited)",
                STALL.as_secs()
            ))),
            Feed::Done,
        )),
        None => None,
    }
}

async fn next_alone(mut rest: ByteStream) -> Option<(std::io::Result<Bytes>, Feed)> {
    let item = rest.next().await?;
    let feed = if item.is_ok() {
        Feed::Alone(rest)
    } else {
        Feed::Done
    };
    Some((item, feed))
}

/// Reads `source` and sends each chunk to every reader: one that held the
/// others back too long is cut loose ([`deliver`]), one that takes
/// nothing for [`STALL`] with nobody else taking either is dropped, and the
/// read stops when no reader is left.
pub(super) async fn pump(
    mut source: Verify,
    mut outs: Vec<Out>,
    digest: Arc<str>,
    detached: Option<IntCounter>,
) {
    // Tokio's clock, which tests can pause.
    let began = tokio::time::Instant::now();
    while let Some(item) = source.next().await {
        let last = item.is_err();
        let fates = deliver(&outs, &item, began).await;
        let mut kept = Vec::with_capacity(outs.len());
        for (mut out, fate) in outs.into_iter().zip(fates) {
            match fate {
                Fate::Took(held) => {
                    out.held += held;
                    kept.push(out);
                }
                Fate::Loose => loosen(out, &item, &source, &digest, detached.as_ref()),
                Fate::Gone => {}
            }
        }
        outs = kept;
        if last || outs.is_empty() {
            return;
        }
    }
}

/// What became of one reader for one chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// It took the chunk, having held the others back (left them idle)
    /// this long.
    Took(Duration),
    /// It held the others back too long: it reads the rest alone.
    Loose,
    /// It took nothing for [`STALL`] (or its copy ended): dropped.
    Gone,
}

/// How often the pump looks, while a reader has not taken a chunk the
/// others took, at whether the others sit idle.
const TICK: Duration = Duration::from_millis(50);

/// Whether the reader behind `tx` has taken everything it was sent (it
/// waits on the read, or will as soon as its upload takes what it holds).
fn idle<T>(tx: &mpsc::Sender<T>) -> bool {
    tx.capacity() == tx.max_capacity()
}

/// Sends one chunk (or the read's error) to every reader, and says what
/// became of each. While a reader has not taken it after another did, the
/// time during which a reader that took it sits idle is charged to it
/// (time a reader is merely later than another, with chunks still queued
/// before it, holds nobody back); once [`lags`] says so it is cut loose.
/// Nobody taking it for [`STALL`] ends the wait.
async fn deliver(
    outs: &[Out],
    item: &std::io::Result<Bytes>,
    began: tokio::time::Instant,
) -> Vec<Fate> {
    use futures_util::stream::FuturesUnordered;
    let at = tokio::time::Instant::now();
    let mut sends: FuturesUnordered<_> = outs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let item = copy_of(item);
            async move { (i, o.tx.send(Piece::Data(item)).await.is_ok()) }
        })
        .collect();
    let n = outs.len();
    // Per reader: the idle time charged when it took the chunk.
    let mut took: Vec<Option<Duration>> = vec![None; n];
    let mut gone = vec![false; n];
    let mut loose = vec![false; n];
    // How long, since a reader first took the chunk, one that took it sat
    // idle.
    let mut idled = Duration::ZERO;
    loop {
        let waiting = |i: usize| took[i].is_none() && !gone[i] && !loose[i];
        if !(0..n).any(waiting) {
            break;
        }
        let wake = if took.iter().any(Option::is_some) {
            tokio::time::Instant::now() + TICK
        } else {
            at + STALL
        };
        tokio::select! {
            done = sends.next() => match done {
                Some((i, true)) => {
                    // One marked loose that took it after all goes on.
                    loose[i] = false;
                    took[i] = Some(idled);
                }
                Some((i, false)) => gone[i] = true,
                None => break,
            },
            () = tokio::time::sleep_until(wake.min(at + STALL)) => {
                if at.elapsed() >= STALL {
                    break;
                }
                if (0..n).any(|j| took[j].is_some() && idle(&outs[j].tx)) {
                    idled += TICK;
                }
                let elapsed = began.elapsed();
                let lagging: Vec<usize> = (0..n)
                    .filter(|&i| waiting(i) && lags(outs[i].held + idled, elapsed))
                    .collect();
                for i in lagging {
                    loose[i] = true;
                }
            }
        }
    }
    (0..n)
        .map(|i| match took[i] {
            Some(charged) => Fate::Took(charged),
            None if loose[i] => Fate::Loose,
            None => Fate::Gone,
        })
        .collect()
}

/// Tells `out`, which has not taken `item`, to read the rest alone: it
/// gets `item`, then the word of where `source` stands after it, each
/// waiting in its channel behind the chunks it has not taken, and the read
/// goes on without it. The resume point is only taken here, off the path
/// of every chunk; after the last chunk (or the read's error) there is no
/// rest, and `out` just gets `item`.
fn loosen(
    out: Out,
    item: &std::io::Result<Bytes>,
    source: &Verify,
    digest: &str,
    detached: Option<&IntCounter>,
) {
    let at = source.resume_point();
    if let Some(at) = &at {
        tracing::info!(%digest, offset = at.offset(), held_s = out.held.as_secs_f64(), "a target fell behind the others' shared read; it reads the rest of this blob alone");
        if let Some(c) = detached {
            c.inc();
        }
    }
    let item = copy_of(item);
    tokio::spawn(async move {
        if out.tx.send(Piece::Data(item)).await.is_ok()
            && let Some(at) = at
        {
            let _ = out.tx.send(Piece::Loose(Box::new(at))).await;
        }
    });
}

/// The same chunk, or the same error, for another reader.
fn copy_of(item: &std::io::Result<Bytes>) -> std::io::Result<Bytes> {
    match item {
        Ok(b) => Ok(b.clone()),
        Err(e) => Err(same_error(e)),
    }
}

/// The same stream error for another reader, keeping what it says of the
/// content (a [`crate::registry::verify::Mismatch`]).
fn same_error(e: &std::io::Error) -> std::io::Error {
    use crate::registry::verify;
    match verify::mismatch_of(e) {
        Some(kind) => verify::mismatch(kind, e.to_string()),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}
