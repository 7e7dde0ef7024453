//! One read of a blob from the source for every target of a fan-out.
//!
//! A rule with several targets makes one job per target (each with its own
//! state, ledger entries and retries); a worker claims them together and
//! runs their copies at once, each holding a [`Seat`] at the [`Tee`] of
//! their group ([`Tees`]: siblings another worker claimed at the same
//! moment meet there too). Each
//! copy decides per blob, against its own target, as it always does
//! (present, mounted, resumed, or to be read); the tee only changes where
//! the bytes of a blob read from offset 0 come from:
//!
//! - a copy that must read a blob asks the tee ([`Answer::read`]), naming
//!   the manifests it reads it for; one that does not (its target has it, a
//!   mount took) says so by dropping its [`Answer`] unused; one whose
//!   target holds a manifest says so once ([`Seat::holds`]), which answers
//!   for every blob read for that manifest (a registry takes a manifest
//!   only once it holds its blobs, so that copy never asks for them); and a
//!   copy that ends leaves every blob it has not answered;
//! - once every seat still copying has answered for the blob, or the first
//!   reader has waited [`GATHER`], one reader opens the source and the
//!   bytes go to every reader that asked, each through its own bounded
//!   channel, hashed once by the read;
//! - a target slower than the others holds the read back only so long
//!   ([`lags`]: [`LAG`] in all, and a quarter of the read's time): then it
//!   is cut loose, and reads the rest of the blob from the source alone,
//!   from the byte it had reached, its hash carried on
//!   ([`crate::registry::verify::Resume`]), so the other targets go at their
//!   own pace and its upload never sees a seam;
//! - a target that takes nothing for [`STALL`] while nobody else takes
//!   either is cut off (its upload fails, its job retries alone); a reader
//!   that asks after the read began reads on its own.
//!
//! The manifests the copies read from the source, and the lookups of the
//! referrers, are shared the same way ([`reads`]): one read of each for
//! the fan-out.
//!
//! Nothing a target does reaches another's copy: each gets the same bytes,
//! hashed by the source stream's verifier (whose error every reader gets)
//! and checked again by its own registry.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use prometheus::{IntCounter, IntCounterVec};
use tokio::sync::{Notify, mpsc, oneshot};

use crate::manifest::Manifest;
use crate::reference::Reference;
use crate::registry::verify::Verify;
use crate::registry::{ByteStream, RegistryError};

mod pump;
pub mod reads;

pub use pump::{LAG, lags};
use pump::{Out, pump, receiving};

/// How long the first copy to ask for a blob waits for the other seats'
/// answers: they ask their own targets at the same time, so this is only
/// reached when one is far slower (or gone without saying); then it reads
/// alone later.
pub const GATHER: Duration = Duration::from_secs(2);

/// How long one target may take nothing while the others wait for it.
pub const STALL: Duration = Duration::from_secs(30);

/// How many chunks the read may be ahead of a reader: what the tee holds
/// per blob is this many chunks, shared by every reader.
const AHEAD: usize = 4;

/// Opens the source's blob from a byte on, unverified (the tee verifies):
/// from 0 for the shared read, from where a reader that was cut loose
/// stood for the rest of its copy. `'static`, as that reader's stream is.
pub type OpenFrom =
    Arc<dyn Fn(u64) -> BoxFuture<'static, Result<ByteStream, RegistryError>> + Send + Sync>;

/// What the daemon counts of its fan-outs' reads.
#[derive(Clone)]
pub struct Counts {
    /// `harbor_relay_fanout_reads_total`, by `began`.
    pub reads: IntCounterVec,
    /// `harbor_relay_fanout_detached_total`: targets cut loose.
    pub detached: IntCounter,
}

/// The meeting point of one fan-out's copies.
#[derive(Clone)]
pub struct Tee(Arc<Shared>);

struct Shared {
    state: Mutex<State>,
    changed: Notify,
    /// What the daemon counts, when it does.
    counts: Option<Counts>,
    /// The manifests read from the source for the copies.
    manifests: reads::Reads<Manifest>,
    /// The referrers looked up on the source, by subject.
    referrers: reads::Reads<super::referrers::Referrers>,
}

#[derive(Default)]
struct State {
    /// Seats whose copy has not ended.
    live: BTreeSet<usize>,
    /// The manifests each seat's target holds, as its copy found them.
    held: HashMap<usize, HashSet<String>>,
    /// The id the next seat gets.
    next: usize,
    blobs: HashMap<String, Gathering>,
}

#[derive(Default)]
struct Gathering {
    /// When the first reader asked.
    since: Option<Instant>,
    answered: BTreeSet<usize>,
    /// The manifests the readers read the blob for: a seat that holds one
    /// of them has answered.
    owners: HashSet<String>,
    readers: Vec<oneshot::Sender<ByteStream>>,
    /// The read began: later readers read alone.
    started: bool,
}

/// Whether the read of a blob begins now, and why.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Due {
    /// Not yet: a seat still copying has not answered.
    No,
    /// Every seat still copying has answered (for the blob, or by holding
    /// a manifest it is read for).
    Answered,
    /// The first reader has waited [`GATHER`] for a seat that has not.
    Waited,
}

impl Due {
    /// The `began` label of `harbor_relay_fanout_reads_total`, for a read
    /// that begins (`None`: not yet).
    fn label(self) -> Option<&'static str> {
        match self {
            Due::No => None,
            Due::Answered => Some("answered"),
            Due::Waited => Some("waited"),
        }
    }
}

fn due(
    live: &BTreeSet<usize>,
    held: &HashMap<usize, HashSet<String>>,
    g: &Gathering,
    waited: Duration,
) -> Due {
    let answered = |seat: &usize| {
        g.answered.contains(seat) || held.get(seat).is_some_and(|h| !h.is_disjoint(&g.owners))
    };
    if live.iter().all(answered) {
        Due::Answered
    } else if waited >= GATHER {
        Due::Waited
    } else {
        Due::No
    }
}

impl Tee {
    /// A tee with no seat yet, counting its reads in `counts`.
    fn new(counts: Option<Counts>) -> Tee {
        Tee(Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            counts,
            manifests: reads::Reads::default(),
            referrers: reads::Reads::default(),
        }))
    }

    /// A tee with `n` seats, one per copy of the fan-out.
    pub fn seats(n: usize) -> Vec<Seat> {
        let tee = Tee::new(None);
        (0..n).map(|_| tee.join()).collect()
    }

    /// A new seat: from now on, the reads wait for its answers too.
    fn join(&self) -> Seat {
        let mut state = self.state();
        let id = state.next;
        state.next += 1;
        state.live.insert(id);
        Seat {
            id,
            tee: self.clone(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The tees of the fan-outs copying now, by group
/// (a job's `fanout_group`): the copies of one fan-out meet
/// at one tee however they were claimed (together by one worker, or by
/// several workers at once).
#[derive(Default)]
pub struct Tees {
    open: Mutex<HashMap<String, std::sync::Weak<Shared>>>,
    counts: Option<Counts>,
}

impl Tees {
    /// Tees that count their reads in `counts`.
    pub fn counted(counts: Option<Counts>) -> Tees {
        Tees {
            open: Mutex::default(),
            counts,
        }
    }

    /// A seat at `group`'s tee, made if no copy of the group holds one.
    pub fn seat(&self, group: &str) -> Seat {
        let mut tees = self.open.lock().unwrap_or_else(|p| p.into_inner());
        tees.retain(|_, t| t.strong_count() > 0);
        let tee = match tees.get(group).and_then(std::sync::Weak::upgrade) {
            Some(shared) => Tee(shared),
            None => {
                let tee = Tee::new(self.counts.clone());
                tees.insert(group.to_string(), Arc::downgrade(&tee.0));
                tee
            }
        };
        tee.join()
    }
}

/// One copy's place at a [`Tee`]; dropping it (the copy ended) answers
/// for every blob it did not.
pub struct Seat {
    id: usize,
    tee: Tee,
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut state = self.tee.state();
        state.live.remove(&self.id);
        state.held.remove(&self.id);
        drop(state);
        self.tee.0.changed.notify_waiters();
    }
}

impl Seat {
    /// This copy's answer for `digest`, which it wants for the manifests
    /// `owners` (the image, and the indexes above it): [`Answer::read`] it,
    /// or drop it to say the blob needs no read for this target.
    pub fn answer(&self, digest: &str, owners: &[String]) -> Answer<'_> {
        Answer {
            seat: self,
            digest: digest.to_string(),
            owners: owners.to_vec(),
            used: false,
        }
    }

    /// This copy's target holds `manifest` (so every blob it points at,
    /// and every manifest below it): the other copies do not wait for this
    /// one's answer for the blobs they read for it.
    pub fn holds(&self, manifest: &str) {
        let mut state = self.tee.state();
        state
            .held
            .entry(self.id)
            .or_default()
            .insert(manifest.to_string());
        drop(state);
        self.tee.0.changed.notify_waiters();
    }

    /// The source's manifest `reference` in `repository`: one read for
    /// every copy of the fan-out that asks, `fetch`'s for the first (see
    /// [`reads`]).
    pub async fn manifest<F, Fut>(
        &self,
        repository: &str,
        reference: &Reference,
        fetch: F,
    ) -> Result<Manifest, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Manifest, RegistryError>>,
    {
        // A tag has no `:`, so a tag and a digest never share a key.
        let key = format!("{repository}@{}", reference.as_str());
        self.tee.0.manifests.get(key, fetch).await
    }

    /// What refers to `subject` in the source's `repository`: one lookup
    /// for every copy of the fan-out that asks, `find`'s for the first.
    pub(super) async fn referrers<F, Fut, E>(
        &self,
        repository: &str,
        subject: &str,
        find: F,
    ) -> Result<super::referrers::Referrers, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<super::referrers::Referrers, E>>,
    {
        let key = format!("{repository}@{subject}");
        self.tee.0.referrers.get(key, find).await
    }

    fn pass(&self, digest: &str) {
        let mut state = self.tee.state();
        let g = state.blobs.entry(digest.to_string()).or_default();
        g.answered.insert(self.id);
        drop(state);
        self.tee.0.changed.notify_waiters();
    }
}

/// A copy's pending answer for one blob (see [`Seat::answer`]).
pub struct Answer<'a> {
    seat: &'a Seat,
    digest: String,
    owners: Vec<String>,
    used: bool,
}

impl Drop for Answer<'_> {
    fn drop(&mut self) {
        if !self.used {
            self.seat.pass(&self.digest);
        }
    }
}

impl Answer<'_> {
    /// The blob's bytes from offset 0, `size` of them, verified: the shared
    /// read's, or `from`'s own when the shared read began without this copy
    /// (or could not open), or when this copy's target was cut loose.
    pub async fn read(mut self, size: u64, from: OpenFrom) -> Result<ByteStream, RegistryError> {
        self.used = true;
        let tee = self.seat.tee.clone();
        let joined = {
            let mut state = tee.state();
            let g = state.blobs.entry(self.digest.clone()).or_default();
            (!g.started).then(|| {
                g.since.get_or_insert_with(Instant::now);
                g.answered.insert(self.seat.id);
                g.owners.extend(self.owners.iter().cloned());
                let (tx, rx) = oneshot::channel();
                g.readers.push(tx);
                rx
            })
        };
        let Some(mut mine) = joined else {
            return self.alone(size, &from).await;
        };
        tee.0.changed.notify_waiters();
        loop {
            let changed = tee.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (lead, since) = self.lead_if_due(&tee);
            if let Some(readers) = lead {
                return self.lead(readers, size, from, mine).await;
            }
            tokio::select! {
                got = &mut mine => return match got {
                    Ok(stream) => Ok(stream),
                    // The reader that led could not open the source: each
                    // reads alone and says why.
                    Err(_) => self.alone(size, &from).await,
                },
                () = &mut changed => {}
                () = tokio::time::sleep_until((since + GATHER).into()) => {}
            }
        }
    }

    /// The readers to serve, if the read is due and nobody leads it yet;
    /// and when the first reader asked.
    fn lead_if_due(&self, tee: &Tee) -> (Option<Vec<oneshot::Sender<ByteStream>>>, Instant) {
        let mut state = tee.state();
        let State {
            live, held, blobs, ..
        } = &mut *state;
        let Some(g) = blobs.get_mut(&self.digest) else {
            return (None, Instant::now());
        };
        let since = g.since.unwrap_or_else(Instant::now);
        let began = due(live, held, g, since.elapsed()).label();
        let (Some(began), false) = (began, g.started) else {
            return (None, since);
        };
        g.started = true;
        if let Some(counts) = &tee.0.counts {
            counts.reads.with_label_values(&[began]).inc();
        }
        (Some(std::mem::take(&mut g.readers)), since)
    }

    /// This copy's own read of the whole blob, verified.
    async fn alone(&self, size: u64, from: &OpenFrom) -> Result<ByteStream, RegistryError> {
        let raw = from(0).await?;
        Ok(Box::pin(Verify::new(
            raw,
            &self.digest,
            size,
            Arc::default(),
        )))
    }

    /// Opens the source and hands every reader its channel of the bytes.
    async fn lead(
        &self,
        readers: Vec<oneshot::Sender<ByteStream>>,
        size: u64,
        from: OpenFrom,
        mine: oneshot::Receiver<ByteStream>,
    ) -> Result<ByteStream, RegistryError> {
        let raw = from(0).await?;
        let source = Verify::new(raw, &self.digest, size, Arc::default());
        let digest: Arc<str> = self.digest.as_str().into();
        let mut outs = Vec::with_capacity(readers.len());
        for reader in readers {
            let (tx, rx) = mpsc::channel(AHEAD);
            let stream = receiving(rx, size, digest.clone(), from.clone());
            // A reader gone (its copy ended) gets nothing.
            if reader.send(stream).is_ok() {
                outs.push(Out {
                    tx,
                    held: Duration::ZERO,
                });
            }
        }
        tracing::debug!(digest = %self.digest, readers = outs.len(), "one read of the source for this many targets");
        let detached = self.seat.tee.0.counts.as_ref().map(|c| c.detached.clone());
        tokio::spawn(pump(source, outs, digest, detached));
        match mine.await {
            Ok(stream) => Ok(stream),
            Err(_) => Err(RegistryError::Other {
                registry: "(fan-out)".into(),
                what: format!("reading blob {}", self.digest),
                detail: "the shared read of this blob ended before it began".into(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
