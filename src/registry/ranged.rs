//! Reading one big blob over several `Range` GETs at once (issue 29).
//!
//! A WAN link, or the proxy in front of it, often caps what one TCP flow
//! gets well below what the link carries; a 1 GiB layer read over one
//! `GET` then takes as long as that one flow needs, whatever the link.
//! Both CNCF distribution and Harbor serve `Range` on blobs
//! (`Accept-Ranges: bytes`), so a blob bigger than the source's
//! `range_threshold` is read as pieces of [`PIECE`] bytes, several at
//! once, and handed on in order: the upload, and the hash, see one
//! sequential stream, exactly as from one `GET`.
//!
//! How many pieces are read at once is found as BBR's startup finds a
//! path's bandwidth (`draft-cardwell-iccrg-bbr`, "full pipe": the
//! bandwidth estimate stopped growing by 25% for three rounds): [`Width`]
//! starts at one flow and doubles after each round (one piece per flow)
//! whose delivery rate grew by a quarter, up to `source_streams`; the
//! first round that does not grow ends the search at the width that was
//! best (one round, not three: a blob has few). A link with no
//! per-flow cap (or a target that is the bottleneck) stays at one or two
//! flows, and so holds no more memory than one `GET`; a capped link widens
//! until the link, not the flow, is the limit.
//!
//! Memory: a piece read ahead of its turn is held until its turn, so a
//! blob holds at most (its width) × [`PIECE`] bytes; the extra flows of
//! every ranged read of one registry draw from one budget of
//! `source_streams`, so the whole relay holds at most that many pieces
//! beyond the one each blob streams through.
//!
//! Nothing a source says is taken on trust: a piece counts only as a
//! `206` whose `Content-Range` is exactly the range asked and whose body is
//! exactly its length ([`judge`]). Any other answer (a `200`, a wrong
//! range, a short or long body, a reset) ends the ranged read: the rest is
//! read over one plain `GET` (the bytes already handed on are skipped),
//! and a registry that lied about a range gets no more range requests from
//! this relay. The digest is checked over the whole stream by the caller
//! as before, so a wrong blob is never written.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::verify::ByteStream;
use super::{Registry, RegistryError, pull};

/// Bytes asked in one range request once the width is found. Each piece
/// being read then has its successor asked already, so no flow waits a
/// round trip between pieces, and the size only bounds what is held:
/// eight pieces read ahead are 32 MiB.
pub const PIECE: u64 = 4 * 1024 * 1024;

/// Bytes asked in one range request while the width is searched: small,
/// so that each round of the search is short (2 MiB at 50 Mbit/s is a
/// third of a second) and the flows the search has not opened yet cost
/// little time.
const SEARCH_PIECE: u64 = 2 * 1024 * 1024;

/// A round's delivery rate must beat the best so far by this factor for
/// the width to double again (BBR's startup uses 1.25).
const GROWTH: f64 = 1.25;

/// The piece that starts at `at` of a blob of `size` bytes, as the
/// inclusive `(first, last)` that HTTP's `Range` writes; `None` at the end.
pub(super) fn piece(at: u64, size: u64, len: u64) -> Option<(u64, u64)> {
    (at < size).then(|| (at, at.saturating_add(len.max(1)).min(size) - 1))
}

/// What an answer to `Range: bytes=first-last` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Answer {
    /// `206` with exactly the asked range: its body is the piece.
    Piece,
    /// `200`: the registry ignored `Range` and sends the whole blob.
    Whole,
    /// A `206` or `416` that does not fit the blob as declared: the
    /// registry's ranges are not to be trusted.
    Lie(String),
    /// Another status (`404`, `5xx` after retries): not about ranges; the
    /// plain `GET` will say what it is.
    Status(u16),
}

/// Judges an answer to a range request for `asked` of a `size`-byte blob.
pub(super) fn judge(
    status: u16,
    content_range: Option<&str>,
    asked: (u64, u64),
    size: u64,
) -> Answer {
    let want = format!("bytes {}-{}/{size}", asked.0, asked.1);
    match status {
        200 => Answer::Whole,
        206 => match content_range {
            Some(cr) if content_range_is(cr, asked, size) => Answer::Piece,
            Some(cr) => Answer::Lie(format!(
                "answered Content-Range {cr:?} to a request for {want}"
            )),
            None => Answer::Lie(format!(
                "answered 206 without Content-Range to a request for {want}"
            )),
        },
        416 => Answer::Lie(format!(
            "answered 416 (range not satisfiable) to a request for {want}: it holds fewer bytes than the manifest declares"
        )),
        other => Answer::Status(other),
    }
}

/// True if `header` is `bytes first-last/size` (or `/*`, a length the
/// server does not know), spaces around it allowed (RFC 9110, 14.4).
fn content_range_is(header: &str, asked: (u64, u64), size: u64) -> bool {
    let Some(rest) = header.trim().strip_prefix("bytes ") else {
        return false;
    };
    let Some((range, total)) = rest.trim().split_once('/') else {
        return false;
    };
    let Some((first, last)) = range.split_once('-') else {
        return false;
    };
    let total_ok = total == "*" || total.parse::<u64>().ok() == Some(size);
    first.parse::<u64>().ok() == Some(asked.0)
        && last.parse::<u64>().ok() == Some(asked.1)
        && total_ok
}

/// How many pieces are read at once (see the module doc): starts at one,
/// doubles while a round's rate grows by [`GROWTH`], then keeps the best.
#[derive(Debug, Clone)]
pub(super) struct Width {
    now: usize,
    max: usize,
    /// The widest width whose round grew the rate, and that rate (bytes/s).
    best: (usize, f64),
    settled: bool,
    round: Round,
}

#[derive(Debug, Clone, Default)]
struct Round {
    started: Option<Instant>,
    bytes: u64,
    pieces: usize,
}

impl Width {
    /// One flow, at most `max`.
    pub(super) fn new(max: usize) -> Width {
        let max = max.max(1);
        Width {
            now: 1,
            max,
            best: (1, 0.0),
            settled: max == 1,
            round: Round::default(),
        }
    }

    /// The pieces to read at once now.
    pub(super) fn now(&self) -> usize {
        self.now
    }

    /// True once the search has ended.
    pub(super) fn settled(&self) -> bool {
        self.settled
    }

    /// The first byte was handed on at `at`: the first round starts.
    pub(super) fn begin(&mut self, at: Instant) {
        self.round.started.get_or_insert(at);
    }

    /// A piece of `bytes` was handed on whole at `at`. A round is as many
    /// pieces as the width; at its end the width grows or settles.
    pub(super) fn delivered(&mut self, bytes: u64, at: Instant) {
        let started = *self.round.started.get_or_insert(at);
        self.round.bytes += bytes;
        self.round.pieces += 1;
        if self.settled || self.round.pieces < self.now {
            return;
        }
        let secs = at.saturating_duration_since(started).as_secs_f64();
        let rate = if secs > 0.0 {
            self.round.bytes as f64 / secs
        } else {
            f64::INFINITY
        };
        let grew = rate >= self.best.1 * GROWTH;
        if grew {
            self.best = (self.now, rate);
        }
        if grew && self.now < self.max {
            self.now = (self.now * 2).min(self.max);
        } else {
            // Not a quarter better: the narrower width, which holds less
            // and asks less of the source, does as well.
            self.now = self.best.0;
            self.settled = true;
        }
        self.round = Round {
            started: Some(at),
            ..Round::default()
        };
    }
}

/// The ranged reads' settings and shared state, one per registry.
#[derive(Debug)]
pub(super) struct Ranges {
    /// Blobs (the part still to read) bigger than this are read by ranges.
    pub threshold: u64,
    /// The most pieces one blob reads at once.
    pub streams: usize,
    /// The extra flows (beyond each blob's first) of every ranged read.
    pub budget: Arc<Semaphore>,
    /// Set once the registry answered a range request with a lie.
    pub distrusted: std::sync::atomic::AtomicBool,
    /// The width the last search found, and when: blobs read from this
    /// registry within [`LEARNED_FOR`] of it use it without a search.
    learned: std::sync::Mutex<Option<(usize, Instant)>>,
    /// One blob searches at a time; the others read with one flow until
    /// it has found the width, then use that (so four big blobs at once
    /// on a path that needs one flow hold one piece of probe, not four).
    searching: std::sync::atomic::AtomicBool,
}

/// How long a width found by one blob holds for the next ones before a
/// blob searches again (paths change).
const LEARNED_FOR: std::time::Duration = std::time::Duration::from_secs(600);

impl Ranges {
    /// Settings for a registry; `streams` of 1 turns ranged reads off.
    pub(super) fn new(threshold: u64, streams: usize) -> Ranges {
        Ranges {
            threshold,
            streams: streams.max(1),
            budget: Arc::new(Semaphore::new(streams.saturating_sub(1))),
            distrusted: Default::default(),
            learned: Default::default(),
            searching: Default::default(),
        }
    }

    /// The width a recent search found.
    fn learned(&self) -> Option<usize> {
        let learned = *self.learned.lock().unwrap_or_else(|p| p.into_inner());
        learned.and_then(|(w, at)| (at.elapsed() < LEARNED_FOR).then_some(w))
    }

    /// Takes the search, if no other blob holds it.
    fn begin_search(&self) -> bool {
        self.searching
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Ends a search; `found` is its width, if it got that far.
    fn end_search(&self, found: Option<usize>) {
        if let Some(w) = found {
            *self.learned.lock().unwrap_or_else(|p| p.into_inner()) = Some((w, Instant::now()));
        }
        self.searching.store(false, Ordering::Release);
    }

    /// Whether the `rest` bytes still to read go by ranges: not when a
    /// recent search found that one flow does as well as several.
    pub(super) fn apply(&self, rest: u64) -> bool {
        self.streams > 1
            && rest > self.threshold
            && !self.distrusted.load(Ordering::Relaxed)
            && self.learned() != Some(1)
    }
}

/// One blob, where to read it and how big it is declared.
#[derive(Clone)]
pub(super) struct Blob {
    pub repository: String,
    pub digest: String,
    pub size: u64,
}

impl Blob {
    fn what(&self) -> String {
        format!("reading blob {}@{}", self.repository, self.digest)
    }
}

type Asked = BoxFuture<'static, Result<reqwest::Response, RegistryError>>;

enum State {
    Asking(Asked),
    Reading(ByteStream),
    Done,
}

/// One piece: its range, what is asked or read of it, and its bytes held.
struct Slot {
    first: u64,
    last: u64,
    state: State,
    held: VecDeque<Bytes>,
    /// What a piece read ahead of its turn holds: one buffer of its
    /// length, not the network's frames (whose buffers would each stay
    /// allocated until the piece's turn).
    ahead: BytesMut,
    got: u64,
}

impl Slot {
    fn len(&self) -> u64 {
        self.last - self.first + 1
    }
}

/// Why the ranged read stops and the rest goes over one `GET`.
enum Fault {
    /// The registry sent the whole blob (`200`): read on from it.
    Whole(Box<reqwest::Response>),
    /// It lied about a range: no more ranges from it.
    Lie(String),
    /// The request or body failed (a reset, a status): try once plainly.
    Broken(String),
}

impl Registry {
    /// Sends `Range: bytes=first-last` for `blob`.
    fn ask(&self, blob: &Blob, (first, last): (u64, u64)) -> Asked {
        let reg = self.clone();
        let url = self.url(&format!("{}/blobs/{}", blob.repository, blob.digest));
        let what = format!("{} bytes {first}-{last}", blob.what());
        let scopes = pull(&blob.repository);
        async move {
            reg.t
                .send(&what, &scopes, true, &|c| {
                    c.get(url.clone())
                        .header(reqwest::header::RANGE, format!("bytes={first}-{last}"))
                })
                .await
        }
        .boxed()
    }

    /// The body of a response as a metered byte stream.
    pub(super) fn body(&self, resp: reqwest::Response) -> ByteStream {
        let raw: ByteStream = Box::pin(
            resp.bytes_stream()
                .map(|r| r.map_err(std::io::Error::other)),
        );
        self.metered(raw, &self.t.stats.bytes_read)
    }

    /// `blob` from byte `from` to its end over one `GET` without `Range`,
    /// the first `from` bytes dropped: what a source whose ranges failed
    /// gets.
    pub(super) async fn plain_from(
        &self,
        blob: &Blob,
        from: u64,
    ) -> Result<ByteStream, RegistryError> {
        let what = blob.what();
        let url = self.url(&format!("{}/blobs/{}", blob.repository, blob.digest));
        let resp = self
            .t
            .send(&what, &pull(&blob.repository), true, &|c| {
                c.get(url.clone())
            })
            .await?;
        if resp.status() != reqwest::StatusCode::OK {
            return Err(self.t.status_error(resp, &what).await);
        }
        let body = self.body(resp);
        Ok(if from == 0 {
            body
        } else {
            super::blobs::skip_bytes(body, from)
        })
    }

    /// Reads `blob` from byte `from` on by ranges, unverified (the caller
    /// hashes). The first piece is asked before this returns, so a blob the
    /// source lacks is an error here, as with one `GET`.
    pub(super) async fn ranged_from(
        &self,
        blob: Blob,
        from: u64,
    ) -> Result<ByteStream, RegistryError> {
        // The first piece is a search piece whoever searches: a small
        // request finds out whether the source serves ranges at all.
        let Some(first) = piece(from, blob.size, SEARCH_PIECE) else {
            return self.plain_from(&blob, from).await;
        };
        let resp = self.ask(&blob, first).await?;
        let content_range = header(&resp, reqwest::header::CONTENT_RANGE);
        let state = match judge(
            resp.status().as_u16(),
            content_range.as_deref(),
            first,
            blob.size,
        ) {
            Answer::Piece => State::Reading(self.body(resp)),
            Answer::Whole => {
                self.distrust(&blob.digest, "answered 200 to a range request");
                return Ok(super::blobs::skip_bytes(self.body(resp), from));
            }
            Answer::Lie(why) => {
                self.distrust(&blob.digest, &why);
                return self.plain_from(&blob, from).await;
            }
            Answer::Status(_) => return Err(self.t.status_error(resp, &blob.what()).await),
        };
        let slot = Slot {
            first: first.0,
            last: first.1,
            state,
            held: VecDeque::new(),
            ahead: BytesMut::new(),
            got: 0,
        };
        let ranges = &self.t.ranges;
        let search = ranges.learned().is_none() && ranges.begin_search();
        Ok(Box::pin(Ranged {
            search,
            reg: self.clone(),
            next: first.1 + 1,
            emitted: from,
            slots: VecDeque::from([slot]),
            width: Width::new(ranges.streams),
            flows: Vec::new(),
            fallback: None,
            blob,
        }))
    }

    /// Stops range requests to this registry: it answered one with a lie.
    pub(super) fn distrust(&self, digest: &str, why: &str) {
        if !self.t.ranges.distrusted.swap(true, Ordering::Relaxed) {
            tracing::warn!(registry = %self.t.name, %digest, %why, "the registry's range answers cannot be trusted: this and every later blob from it are read over one GET");
        }
    }
}

/// A response header as text, if it is.
pub(super) fn header(
    resp: &reqwest::Response,
    name: reqwest::header::HeaderName,
) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

enum Fallback {
    Opening(BoxFuture<'static, Result<ByteStream, RegistryError>>),
    Open(ByteStream),
}

/// The stream [`Registry::ranged_from`] returns; see the module doc.
struct Ranged {
    /// This blob searches the width (see [`Ranges`]); otherwise it uses
    /// the width found, one flow until there is one.
    search: bool,
    reg: Registry,
    blob: Blob,
    /// The first byte no piece has asked for yet.
    next: u64,
    /// Bytes handed on (counted from 0, so it starts at `from`).
    emitted: u64,
    /// The pieces asked, in order; the first is the one handed on.
    slots: VecDeque<Slot>,
    width: Width,
    /// Budget permits for the flows beyond the first.
    flows: Vec<OwnedSemaphorePermit>,
    fallback: Option<Fallback>,
}

impl Ranged {
    /// Pieces read at once now: the width, within the budget held.
    fn reading(&mut self) -> usize {
        let want = if self.search {
            self.width.now()
        } else {
            self.reg.t.ranges.learned().unwrap_or(1)
        };
        while self.flows.len() + 1 < want {
            match self.reg.t.ranges.budget.clone().try_acquire_owned() {
                Ok(p) => self.flows.push(p),
                Err(_) => break,
            }
        }
        self.flows.truncate(want.saturating_sub(1));
        self.flows.len() + 1
    }

    /// Asks pieces until `reading` are being read and more are asked ahead
    /// (their answers wait, unread, while the others are read, so a flow
    /// whose piece ends goes on without a round trip): one while the width
    /// is searched (more would be flows the search does not count), as
    /// many as are read once it is found.
    fn top_up(&mut self, reading: usize) {
        // Once one flow is known to do as well as several, the rest is one
        // request: no more requests than a plain `GET` costs the source.
        let learned = self.reg.t.ranges.learned();
        let (len, ahead) = match (self.search, learned) {
            (true, _) => (SEARCH_PIECE, 1),
            (false, Some(1)) => (u64::MAX, 1),
            (false, _) => (PIECE, reading),
        };
        while self.slots.len() < reading + ahead {
            let Some(range) = piece(self.next, self.blob.size, len) else {
                return;
            };
            self.next = range.1 + 1;
            self.slots.push_back(Slot {
                first: range.0,
                last: range.1,
                state: State::Asking(self.reg.ask(&self.blob, range)),
                held: VecDeque::new(),
                ahead: BytesMut::new(),
                got: 0,
            });
        }
    }

    /// Moves every piece on as far as it goes without waiting.
    fn drive(&mut self, cx: &mut Context<'_>, reading: usize) -> Result<(), Fault> {
        let size = self.blob.size;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if let State::Asking(fut) = &mut slot.state {
                match fut.poll_unpin(cx) {
                    Poll::Pending => continue,
                    Poll::Ready(Err(e)) => return Err(Fault::Broken(e.to_string())),
                    Poll::Ready(Ok(resp)) => {
                        let cr = header(&resp, reqwest::header::CONTENT_RANGE);
                        match judge(
                            resp.status().as_u16(),
                            cr.as_deref(),
                            (slot.first, slot.last),
                            size,
                        ) {
                            Answer::Piece => slot.state = State::Reading(self.reg.body(resp)),
                            Answer::Whole => return Err(Fault::Whole(Box::new(resp))),
                            Answer::Lie(why) => return Err(Fault::Lie(why)),
                            Answer::Status(s) => {
                                return Err(Fault::Broken(format!(
                                    "answered {s} to a range request"
                                )));
                            }
                        }
                    }
                }
            }
            if i >= reading {
                continue;
            }
            if i == 0 && !slot.ahead.is_empty() {
                slot.held.push_back(slot.ahead.split().freeze());
            }
            let (len, first, last) = (slot.len(), slot.first, slot.last);
            let State::Reading(body) = &mut slot.state else {
                continue;
            };
            // The head hands on one frame at a time; the others read ahead.
            while i > 0 || slot.held.is_empty() {
                match body.poll_next_unpin(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(b))) => {
                        slot.got += b.len() as u64;
                        if slot.got > len {
                            return Err(Fault::Lie(format!(
                                "sent more than the {len} bytes of range {first}-{last}"
                            )));
                        }
                        if i == 0 {
                            slot.held.push_back(b);
                        } else {
                            if slot.ahead.capacity() == 0 {
                                slot.ahead.reserve(len as usize);
                            }
                            slot.ahead.extend_from_slice(&b);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Err(Fault::Broken(e.to_string())),
                    Poll::Ready(None) if slot.got < len => {
                        return Err(Fault::Lie(format!(
                            "ended range {first}-{last} after {} of its {len} bytes",
                            slot.got
                        )));
                    }
                    Poll::Ready(None) => {
                        slot.state = State::Done;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives up on ranges: the rest comes over one `GET`.
    fn fall_back(&mut self, fault: Fault) {
        let from = self.emitted;
        if std::mem::take(&mut self.search) {
            self.reg.t.ranges.end_search(None);
        }
        self.slots.clear();
        self.flows.clear();
        let (reg, blob) = (self.reg.clone(), self.blob.clone());
        self.fallback = Some(match fault {
            Fault::Whole(resp) => {
                reg.distrust(&blob.digest, "answered 200 to a range request");
                Fallback::Open(super::blobs::skip_bytes(reg.body(*resp), from))
            }
            Fault::Lie(why) => {
                reg.distrust(&blob.digest, &why);
                Fallback::Opening(async move { reg.plain_from(&blob, from).await }.boxed())
            }
            Fault::Broken(why) => {
                tracing::info!(registry = %reg.t.name, digest = %blob.digest, at = from, %why, "a range read failed: reading the rest over one GET");
                Fallback::Opening(async move { reg.plain_from(&blob, from).await }.boxed())
            }
        });
    }

    fn poll_fallback(&mut self, cx: &mut Context<'_>) -> Poll<Option<std::io::Result<Bytes>>> {
        loop {
            match self.fallback.as_mut() {
                None => return Poll::Ready(None),
                Some(Fallback::Open(s)) => return s.poll_next_unpin(cx),
                Some(Fallback::Opening(fut)) => match fut.poll_unpin(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(s)) => self.fallback = Some(Fallback::Open(s)),
                    Poll::Ready(Err(e)) => {
                        self.fallback = None;
                        return Poll::Ready(Some(Err(std::io::Error::other(e.to_string()))));
                    }
                },
            }
        }
    }
}

impl Drop for Ranged {
    fn drop(&mut self) {
        if self.search {
            // Ended (or failed) before the search did: another blob tries.
            self.reg.t.ranges.end_search(None);
        }
    }
}

impl Stream for Ranged {
    type Item = std::io::Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.fallback.is_some() {
                return this.poll_fallback(cx);
            }
            let reading = this.reading();
            this.top_up(reading);
            if let Err(fault) = this.drive(cx, reading) {
                this.fall_back(fault);
                continue;
            }
            let Some(head) = this.slots.front_mut() else {
                return Poll::Ready(None);
            };
            if let Some(b) = head.held.pop_front() {
                this.emitted += b.len() as u64;
                this.width.begin(Instant::now());
                return Poll::Ready(Some(Ok(b)));
            }
            if !matches!(head.state, State::Done) {
                return Poll::Pending;
            }
            let len = head.len();
            this.slots.pop_front();
            let before = this.width.now();
            this.width.delivered(len, Instant::now());
            if !this.search {
                continue;
            }
            if this.width.now() != before {
                tracing::debug!(registry = %this.reg.t.name, digest = %this.blob.digest, from = before, to = this.width.now(), rate = this.width.best.1, "range reads at once");
            }
            if this.width.settled() {
                tracing::info!(registry = %this.reg.t.name, digest = %this.blob.digest, width = this.width.now(), "range reads: this many at once read fastest (kept for ten minutes)");
                this.reg.t.ranges.end_search(Some(this.width.now()));
                this.search = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pieces_cover_the_blob_in_order() {
        assert_eq!(piece(0, 10, 4), Some((0, 3)));
        assert_eq!(piece(8, 10, 4), Some((8, 9)), "the last is short");
        assert_eq!(piece(10, 10, 4), None);
        assert_eq!(piece(3, 10, 100), Some((3, 9)));
        let mut at = 0;
        let mut n = 0;
        while let Some((a, b)) = piece(at, 25, 8) {
            assert_eq!(a, at);
            at = b + 1;
            n += 1;
        }
        assert_eq!((at, n), (25, 4));
    }

    #[test]
    fn only_the_exact_range_counts_as_a_piece() {
        let j = |s, cr| judge(s, cr, (8, 15), 100);
        assert_eq!(j(206, Some("bytes 8-15/100")), Answer::Piece);
        assert_eq!(j(206, Some(" bytes 8-15/* ")), Answer::Piece);
        assert_eq!(j(200, None), Answer::Whole);
        for lie in [
            "bytes 0-7/100",
            "bytes 8-16/100",
            "bytes 8-15/101",
            "bytes 8-15",
            "items 8-15/100",
            "bytes -15/100",
        ] {
            assert!(matches!(j(206, Some(lie)), Answer::Lie(_)), "{lie}");
        }
        assert!(matches!(j(206, None), Answer::Lie(_)));
        assert!(matches!(j(416, None), Answer::Lie(_)), "past the end");
        assert_eq!(j(404, None), Answer::Status(404));
        assert_eq!(j(503, None), Answer::Status(503));
    }

    /// Feeds `width` rounds whose rate is `rate(width)` bytes/s.
    fn run(max: usize, rate: impl Fn(usize) -> f64, rounds: usize) -> usize {
        let mut w = Width::new(max);
        let mut t = Instant::now();
        w.begin(t);
        for _ in 0..rounds {
            let n = w.now();
            // n pieces in flight at rate(n) in all: one lands each
            // PIECE / rate(n) seconds.
            let per = Duration::from_secs_f64(PIECE as f64 / rate(n));
            for _ in 0..n {
                t += per;
                w.delivered(PIECE, t);
            }
        }
        w.now()
    }

    #[test]
    fn the_width_grows_while_the_rate_does() {
        // Each flow capped at 6.25 MB/s, a link of 50 MB/s: eight flows.
        let capped = |n: usize| (n as f64 * 6.25e6).min(50e6);
        assert_eq!(run(8, capped, 10), 8);
        assert_eq!(run(4, capped, 10), 4, "source_streams is a cap");
        assert_eq!(run(16, capped, 10), 8, "no wider than helps");
    }

    #[test]
    fn the_width_stays_narrow_when_one_flow_fills_the_path() {
        // One flow fills the link (or the target is slower): two flows
        // bring nothing, so one stays.
        assert_eq!(run(8, |_| 1e9, 10), 1);
        // Two flows help a little (10%), not a quarter: back to one.
        assert_eq!(run(8, |n| if n > 1 { 1.1e9 } else { 1e9 }, 10), 1);
        // Two help, four do not: two.
        assert_eq!(run(8, |n| if n > 1 { 2e9 } else { 1e9 }, 10), 2);
        assert_eq!(run(1, |n| n as f64, 10), 1);
    }
}
