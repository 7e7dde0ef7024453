//! The embedded job store, on sled (the default: one relay per host).
//!
//! Job trees: `jobs` (id → job as JSON), `queue` (ids waiting for a
//! worker, in order), `delayed` (due time + id of jobs waiting to retry)
//! and `dedupe` (dedupe key → id of the active job with that key). Every
//! accepted job is flushed to disk before the caller is told, so a `202`
//! to a webhook means the job survives `kill -9`. The store is also the
//! replicator's [`Ledger`](crate::replicate::ledger::Ledger): `uploads`
//! (chunked uploads in progress), `blobs` (where each blob lives on each
//! target, for mounts) and `tags` (what this daemon last left under each
//! target tag, so a redelivered event costs one request).
//! On open, jobs left `running` by a crash are queued again, and the queue
//! is rebuilt from the jobs themselves, so a crash between two tree writes
//! loses nothing.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::transition::{self, After};
use super::{DEFAULT_COALESCE_WINDOW, Enqueued, StoreError};
use crate::jobs::{Job, JobSpec, JobState, Outcome};
use crate::replicate::ledger::{TagRecord, UploadRecord, remember, tag_key};

mod health;
mod manual;

pub use health::MARK_FILE;

/// sled's page cache; the default (1 GiB) is far more than a job store needs.
const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

/// The job store on sled.
pub struct SledStore {
    db: sled::Db,
    jobs: sled::Tree,
    queue: sled::Tree,
    delayed: sled::Tree,
    dedupe: sled::Tree,
    uploads: sled::Tree,
    blobs: sled::Tree,
    tags: sled::Tree,
    /// The highest job id ever created ([`health`]'s high-water).
    meta: sled::Tree,
    /// Where the store lives (its high-water mark file too).
    dir: std::path::PathBuf,
    /// Whether writes work, and when the mark was last written.
    health: health::Health,
    /// Serialises read-modify-write sequences across trees.
    lock: Mutex<()>,
    queued: AtomicUsize,
    running: AtomicUsize,
    retrying: AtomicUsize,
    held: AtomicUsize,
    /// Releases seen lately ([`super::released`]).
    releases: super::released::Releases,
    wake: Notify,
    /// Group commit: tickets taken after writing, and the highest ticket
    /// known to be on disk. One caller flushes for all who wait.
    written: AtomicU64,
    flushed: AtomicU64,
    flush_turn: tokio::sync::Mutex<()>,
    flushes: AtomicU64,
    /// A delivery of an event whose job succeeded less than this long ago
    /// joins that job instead of copying again.
    coalesce_window_ms: AtomicU64,
    /// Jobs that may wait (queued or retrying) before enqueue refuses.
    max_queued: AtomicUsize,
    /// Milliseconds since the epoch; tests set their own.
    clock: fn() -> u64,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn id_of(k: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let tail = &k[k.len().saturating_sub(8)..];
    b[8 - tail.len()..].copy_from_slice(tail);
    u64::from_be_bytes(b)
}

/// `delayed` key: due time first, so the tree is ordered by it.
fn delayed_key(at_ms: u64, id: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..].copy_from_slice(&id.to_be_bytes());
    k
}

/// sled's refusal to open a directory another process holds (its file
/// lock), told apart: the usual cause is a daemon still running on it.
fn in_use(e: sled::Error, path: &Path) -> StoreError {
    match e {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::InUse(path.to_path_buf())
        }
        e => StoreError::Db(e),
    }
}

impl SledStore {
    /// Opens (or creates) the store in `path` and recovers from a crash.
    /// Returns the store and how many interrupted jobs were queued again.
    pub fn open(path: &Path) -> Result<(SledStore, usize), StoreError> {
        // A store made here is the relay's alone: jobs name repositories
        // and errors, the ledger upload sessions. (Under systemd the unit's
        // StateDirectory makes it, with its own mode.)
        if !path.exists() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(sled::Error::Io)?;
        }
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()
            .map_err(|e| in_use(e, path))?;
        let store = SledStore {
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
            delayed: db.open_tree("delayed")?,
            uploads: db.open_tree("uploads")?,
            blobs: db.open_tree("blobs")?,
            tags: db.open_tree("tags")?,
            dedupe: db.open_tree("dedupe")?,
            meta: db.open_tree("meta")?,
            dir: path.to_path_buf(),
            health: health::Health::default(),
            db,
            lock: Mutex::new(()),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            releases: Default::default(),
            wake: Notify::new(),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_turn: tokio::sync::Mutex::new(()),
            flushes: AtomicU64::new(0),
            coalesce_window_ms: AtomicU64::new(DEFAULT_COALESCE_WINDOW.as_millis() as u64),
            max_queued: AtomicUsize::new(usize::MAX),
            clock: crate::clock::now_ms,
        };
        let high = store.high()?;
        if let Some(mark) = health::behind(high, health::read_mark(path)) {
            return Err(StoreError::Behind {
                path: path.to_path_buf(),
                high,
                mark,
            });
        }
        let recovered = store.recover()?;
        Ok((store, recovered))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves the trees consistent (each
        // write is whole), so a poisoned lock is safe to take.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the clock (tests move time instead of sleeping).
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// Sets `jobs.max_queued`: how many jobs may wait before
    /// [`super::Store::enqueue`] refuses more.
    pub fn set_max_queued(&self, max: usize) {
        self.max_queued.store(max.max(1), Ordering::Relaxed);
    }

    /// How long after success a repeated event still joins its job.
    pub fn set_coalesce_window(&self, window: std::time::Duration) {
        self.coalesce_window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// Returns once everything written before the call is on disk. Callers
    /// that arrive while a flush runs share the next one, so a burst of
    /// webhooks costs a few fsyncs, not one each.
    async fn durable(&self) -> Result<(), StoreError> {
        let ticket = self.written.fetch_add(1, Ordering::SeqCst) + 1;
        loop {
            if self.flushed.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            let _turn = self.flush_turn.lock().await;
            if self.flushed.load(Ordering::SeqCst) >= ticket {
                return Ok(());
            }
            let covers = self.written.load(Ordering::SeqCst);
            self.flush_noted().await?;
            self.flushes.fetch_add(1, Ordering::Relaxed);
            self.flushed.fetch_max(covers, Ordering::SeqCst);
        }
    }

    fn recover(&self) -> Result<usize, StoreError> {
        let _g = self.guard();
        let mut recovered = 0;
        let mut queued = 0;
        let mut retrying = 0;
        let mut held = 0;
        self.queue.clear()?;
        self.delayed.clear()?;
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let mut job: Job = serde_json::from_slice(&v)?;
            if job.state == JobState::Running {
                job.state = JobState::Queued;
                self.jobs.insert(&k, serde_json::to_vec(&job)?)?;
                recovered += 1;
            }
            match job.state {
                JobState::Queued => {
                    self.queue.insert(&k, &[])?;
                    queued += 1;
                }
                JobState::Retrying | JobState::Held => {
                    let at = job.next_attempt_ms.unwrap_or(0);
                    self.delayed.insert(delayed_key(at, job.id), &[])?;
                    match job.state {
                        JobState::Held => held += 1,
                        _ => retrying += 1,
                    }
                }
                _ => continue,
            }
            self.dedupe.insert(job.spec.dedupe_key().as_bytes(), &k)?;
        }
        self.db.flush()?;
        self.queued.store(queued, Ordering::Relaxed);
        self.retrying.store(retrying, Ordering::Relaxed);
        self.held.store(held, Ordering::Relaxed);
        Ok(recovered)
    }

    fn load(&self, id: u64) -> Result<Option<Job>, StoreError> {
        match self.jobs.get(key(id))? {
            Some(v) => Ok(Some(serde_json::from_slice(&v)?)),
            None => Ok(None),
        }
    }

    fn save(&self, job: &Job) -> Result<(), StoreError> {
        self.jobs.insert(key(job.id), serde_json::to_vec(job)?)?;
        Ok(())
    }

    /// Adds jobs, folding each into an active job with the same dedupe key,
    /// and returns once all of it is on disk.
    /// Every spec is checked first ([`JobSpec::validate`]); with
    /// `max_queued` jobs already waiting, nothing is stored and the answer
    /// is [`StoreError::Full`].
    pub async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>, StoreError> {
        for spec in &specs {
            spec.validate().map_err(StoreError::Invalid)?;
        }
        let mut out = Vec::with_capacity(specs.len());
        let mut wrote = Vec::with_capacity(specs.len());
        {
            let _g = self.guard();
            let waiting = self.queued() + self.retrying();
            let max = self.max_queued.load(Ordering::Relaxed);
            if waiting >= max {
                return Err(StoreError::Full { waiting, max });
            }
            for spec in specs {
                let dkey = spec.dedupe_key();
                if let Some(existing) = self.dedupe.get(dkey.as_bytes())? {
                    let id = id_of(&existing);
                    let window = self.coalesce_window_ms.load(Ordering::Relaxed);
                    if let Some(mut job) = self.load(id)?
                        && transition::joins(&job, window, (self.clock)())
                    {
                        job.coalesced += 1;
                        self.save(&job)?;
                        wrote.push(health::Wrote::Folded(id));
                        out.push(Enqueued {
                            id,
                            coalesced: true,
                        });
                        continue;
                    }
                }
                let deleting = self.weigh_delete(&spec)?;
                let id = self.db.generate_id()? + 1;
                let mut job = transition::new_job(id, spec, (self.clock)());
                let queued = match deleting {
                    Some(transition::Deleting::Stale(why)) => {
                        transition::ignored(&mut job, why, (self.clock)());
                        false
                    }
                    _ => true,
                };
                self.save(&job)?;
                self.meta.insert(health::HIGH, &key(id))?;
                if queued {
                    self.queue.insert(key(id), &[])?;
                    self.queued.fetch_add(1, Ordering::Relaxed);
                }
                self.dedupe.insert(dkey.as_bytes(), &key(id))?;
                wrote.push(health::Wrote::New {
                    id,
                    dedupe: dkey,
                    queued,
                });
                out.push(Enqueued {
                    id,
                    coalesced: false,
                });
            }
        }
        if let Err(e) = self.durable().await {
            // Answered with an error: nothing of it may stay.
            self.take_back(&wrote);
            return Err(e);
        }
        self.wake.notify_waiters();
        Ok(out)
    }

    /// Takes the oldest queued job and marks it running (on disk).
    pub async fn claim(&self) -> Result<Option<Job>, StoreError> {
        let job = {
            let _g = self.guard();
            loop {
                let Some((k, _)) = self.queue.pop_min()? else {
                    break None;
                };
                self.queued.fetch_sub(1, Ordering::Relaxed);
                let id = id_of(&k);
                let Some(mut job) = self.load(id)? else {
                    continue;
                };
                if job.state != JobState::Queued {
                    continue;
                }
                transition::start(&mut job, (self.clock)());
                self.save(&job)?;
                self.running.fetch_add(1, Ordering::Relaxed);
                break Some(job);
            }
        };
        // Not flushed here: if the daemon dies before the next flush the
        // job is still `queued` on disk and runs again, which is what a
        // `running` job found at start gets anyway. Saves an fsync per job.
        Ok(job)
    }

    /// The queued jobs of `job`'s fan-out ([`JobSpec::fanout_group`]),
    /// marked running as [`SledStore::claim`] marks one: enqueued with it,
    /// they sit just after it in the queue, so only the next
    /// [`super::SIBLINGS_SCAN`] ids are looked at.
    pub async fn claim_siblings(&self, job: &Job) -> Result<Vec<Job>, StoreError> {
        let Some(group) = job.spec.fanout_group() else {
            return Ok(Vec::new());
        };
        let _g = self.guard();
        let mut found = Vec::new();
        let ids = key(job.id + 1)..=key(job.id + super::SIBLINGS_SCAN);
        let keys: Vec<_> = self.queue.range(ids).keys().collect::<Result<_, _>>()?;
        for k in keys {
            let Some(mut sibling) = self.load(id_of(&k))? else {
                continue;
            };
            if sibling.state != JobState::Queued
                || sibling.spec.fanout_group().as_deref() != Some(group.as_str())
            {
                continue;
            }
            if self.queue.remove(&k)?.is_some() {
                self.queued.fetch_sub(1, Ordering::Relaxed);
            }
            transition::start(&mut sibling, (self.clock)());
            self.save(&sibling)?;
            self.running.fetch_add(1, Ordering::Relaxed);
            found.push(sibling);
        }
        Ok(found)
    }

    /// Records how an attempt ended: done, failed for good, or to be
    /// retried later.
    pub async fn finish(&self, id: u64, outcome: Outcome) -> Result<Option<Job>, StoreError> {
        let job = {
            let _g = self.guard();
            let Some(mut job) = self.load(id)? else {
                return Ok(None);
            };
            if job.state == JobState::Running {
                self.running.fetch_sub(1, Ordering::Relaxed);
            }
            let outcome = self.releases.adjust(&job, outcome, (self.clock)());
            let finished = match transition::finish(&mut job, outcome, (self.clock)()) {
                After::Finished => true,
                After::Queued => {
                    self.queue.insert(key(id), &[])?;
                    self.queued.fetch_add(1, Ordering::Relaxed);
                    false
                }
                After::Retrying(at_ms) => {
                    self.delayed.insert(delayed_key(at_ms, id), &[])?;
                    self.waiting_count(job.state)
                        .fetch_add(1, Ordering::Relaxed);
                    false
                }
            };
            if finished {
                // A failed job's key goes, so a redelivery tries again; a
                // succeeded job's stays for the coalesce window.
                let dkey = job.spec.dedupe_key();
                if job.state == JobState::Failed
                    && self.dedupe.get(dkey.as_bytes())?.as_deref() == Some(&key(id)[..])
                {
                    self.dedupe.remove(dkey.as_bytes())?;
                }
            }
            self.save(&job)?;
            job
        };
        // Not waited for: sled writes it out within its flush interval
        // (500 ms). A result lost to a crash before then leaves the job
        // `running` on disk, so it runs again at start, and copying an
        // artifact that is already there costs two requests. The worker
        // is free for the next job an fsync sooner.
        Ok(Some(job))
    }

    /// Moves retrying and held jobs whose time has come back to the queue.
    /// Returns how many moved.
    pub async fn promote_due(&self, now: u64) -> Result<usize, StoreError> {
        let mut moved = 0;
        {
            let _g = self.guard();
            loop {
                let Some((k, _)) = self.delayed.first()? else {
                    break;
                };
                let due = id_of(&k[..8]);
                if due > now {
                    break;
                }
                self.delayed.remove(&k)?;
                let id = id_of(&k);
                let Some(mut job) = self.load(id)? else {
                    continue;
                };
                if !job.state.is_waiting() {
                    continue;
                }
                self.requeue(&mut job)?;
                moved += 1;
            }
        }
        if moved > 0 {
            self.durable().await?;
            self.wake.notify_waiters();
        }
        Ok(moved)
    }

    /// A waiting job (retrying or held, its delayed key removed) back in
    /// the queue. Called under the write guard.
    fn requeue(&self, job: &mut Job) -> Result<(), StoreError> {
        self.waiting_count(job.state)
            .fetch_sub(1, Ordering::Relaxed);
        transition::promote(job);
        self.save(job)?;
        self.queue.insert(key(job.id), &[])?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// When the earliest retry is due, if any.
    pub fn next_due(&self) -> Result<Option<u64>, StoreError> {
        Ok(self.delayed.first()?.map(|(k, _)| id_of(&k[..8])))
    }

    /// Deletes finished jobs that finished before `before_ms`. Returns how
    /// many were deleted.
    pub async fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        let mut removed = 0;
        {
            let _g = self.guard();
            let mut doomed = Vec::new();
            for item in self.jobs.iter() {
                let (k, v) = item?;
                let job: Job = serde_json::from_slice(&v)?;
                if transition::expired(&job, before_ms) {
                    doomed.push(k);
                }
            }
            for k in doomed {
                self.jobs.remove(k)?;
                removed += 1;
            }
            // Dedupe keys of jobs that are gone or long finished.
            let window = self.coalesce_window_ms.load(Ordering::Relaxed);
            let mut stale = Vec::new();
            for item in self.dedupe.iter() {
                let (k, v) = item?;
                let keep = self.load(id_of(&v))?.is_some_and(|j| {
                    transition::joins(&j, window, (self.clock)())
                        || (j.state == JobState::Failed
                            && j.finished_ms.is_some_and(|f| f + window >= (self.clock)()))
                });
                if !keep {
                    stale.push(k);
                }
            }
            for k in stale {
                self.dedupe.remove(k)?;
            }
        }
        if removed > 0 {
            self.db.flush_async().await?;
        }
        Ok(removed)
    }

    /// One job by id.
    pub fn get(&self, id: u64) -> Result<Option<Job>, StoreError> {
        self.load(id)
    }

    /// Jobs newest first, optionally only those in `state`, at most `limit`.
    pub fn list(&self, state: Option<JobState>, limit: usize) -> Result<Vec<Job>, StoreError> {
        let mut out = Vec::new();
        for item in self.jobs.iter().rev() {
            if out.len() >= limit {
                break;
            }
            let (_, v) = item?;
            let job: Job = serde_json::from_slice(&v)?;
            if state.is_none_or(|s| s == job.state) {
                out.push(job);
            }
        }
        Ok(out)
    }

    /// Jobs waiting (queued, retrying, held) by target registry, looking at
    /// `cap` of them at most: the status page's backlog per site.
    pub fn waiting_by_target(
        &self,
        cap: usize,
    ) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        let mut out = std::collections::BTreeMap::new();
        // Both trees' keys end with the job's id.
        let ids = self
            .queue
            .iter()
            .keys()
            .chain(self.delayed.iter().keys())
            .map(|k| k.map(|k| id_of(&k)));
        for id in ids.take(cap) {
            if let Some(job) = self.load(id?)?
                && matches!(
                    job.state,
                    JobState::Queued | JobState::Retrying | JobState::Held
                )
            {
                *out.entry(job.spec.to).or_default() += 1;
            }
        }
        Ok(out)
    }

    /// Bytes the store takes on disk (0 if it cannot tell).
    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Jobs being copied now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Group-commit flushes done so far (each one an fsync).
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::Relaxed)
    }

    /// Jobs waiting for their next attempt.
    pub fn retrying(&self) -> usize {
        self.retrying.load(Ordering::Relaxed)
    }

    /// Jobs held at a gate.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// The counter of jobs waiting in `state` (retrying or held).
    fn waiting_count(&self, state: JobState) -> &AtomicUsize {
        match state {
            JobState::Held => &self.held,
            _ => &self.retrying,
        }
    }

    /// Waits until new work may be there. Create the future (and `enable`
    /// it) *before* checking the queue, so no wake-up is missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Writes everything to disk (on shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let high = self.flush_noted().await?;
        self.mark(high);
        Ok(())
    }
}

/// The replicator's memory: uploads in progress and blob locations, kept
/// in the same database as the jobs. Errors are logged: the worst outcome
/// of a lost record is bytes sent again.
impl crate::replicate::ledger::LocalLedger for SledStore {
    fn upload(&self, key: &str) -> Option<UploadRecord> {
        match self.uploads.get(key.as_bytes()) {
            Ok(Some(v)) => serde_json::from_slice(&v).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "reading upload progress");
                None
            }
        }
    }

    /// Not flushed here: the chunk loop awaits `LocalLedger::persist`, which
    /// flushes on sled's own thread pool instead of blocking a runtime
    /// worker for an fsync.
    fn save_upload(&self, key: &str, record: &UploadRecord) {
        let result = serde_json::to_vec(record)
            .map_err(StoreError::from)
            .and_then(|v| Ok(self.uploads.insert(key.as_bytes(), v)?));
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording upload progress");
        }
    }

    fn persist(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(e) = self.db.flush_async().await {
                tracing::warn!(error = %e, "writing upload progress to disk");
            }
        })
    }

    fn clear_upload(&self, key: &str) {
        if let Err(e) = self.uploads.remove(key.as_bytes()) {
            tracing::warn!(error = %e, "clearing upload progress");
        }
    }

    fn blob_locations(&self, registry: &str, digest: &str) -> Vec<String> {
        self.blobs
            .get(format!("{registry}\n{digest}").as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
            .unwrap_or_default()
    }

    fn blob_seen(&self, registry: &str, digest: &str, repository: &str) {
        let key = format!("{registry}\n{digest}");
        let result = self.blobs.fetch_and_update(key.as_bytes(), |old| {
            let mut list: Vec<String> = old
                .and_then(|v| serde_json::from_slice(v).ok())
                .unwrap_or_default();
            remember(&mut list, repository);
            serde_json::to_vec(&list).ok()
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording a blob location");
        }
    }

    fn tag_synced(&self, registry: &str, repository: &str, tag: &str) -> Option<TagRecord> {
        self.tags
            .get(tag_key(registry, repository, tag).as_bytes())
            .ok()
            .flatten()
            .and_then(|v| serde_json::from_slice(&v).ok())
    }

    /// Not flushed: a lost record only costs the next job for this tag
    /// its fast path.
    fn record_tag(&self, registry: &str, repository: &str, tag: &str, record: &TagRecord) {
        let result = serde_json::to_vec(record)
            .map_err(StoreError::from)
            .and_then(|v| {
                Ok(self
                    .tags
                    .insert(tag_key(registry, repository, tag).as_bytes(), v)?)
            });
        if let Err(e) = result {
            tracing::warn!(error = %e, "recording a replicated tag");
        }
    }
}
