//! The durable job store, on sled.
//!
//! Three trees: `jobs` (id → job as JSON), `queue` (ids waiting for a
//! worker, in order) and `dedupe` (dedupe key → id of the active job with
//! that key). Every change is flushed to disk before the caller is told it
//! happened, so a `202` to a webhook means the job survives `kill -9`.
//! On open, jobs left `running` by a crash are queued again, and the queue
//! is rebuilt from the jobs themselves, so a crash between two tree writes
//! loses nothing.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

use super::{Job, JobSpec, JobState, Summary, now_ms};

/// sled's page cache; the default (1 GiB) is far more than a job store needs.
const CACHE_CAPACITY: u64 = 16 * 1024 * 1024;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself failed (disk full, corruption, locked).
    #[error("job store: {0}")]
    Db(#[from] sled::Error),
    /// A record could not be (de)serialised.
    #[error("job store: bad record: {0}")]
    Record(#[from] serde_json::Error),
}

/// The outcome of enqueueing one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: u64,
    /// True when an active job for the same thing already existed.
    pub coalesced: bool,
}

/// The job store.
pub struct Store {
    db: sled::Db,
    jobs: sled::Tree,
    queue: sled::Tree,
    dedupe: sled::Tree,
    /// Serialises read-modify-write sequences across trees.
    lock: Mutex<()>,
    queued: AtomicUsize,
    running: AtomicUsize,
    wake: Notify,
}

fn key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

impl Store {
    /// Opens (or creates) the store in `path` and recovers from a crash.
    /// Returns the store and how many interrupted jobs were queued again.
    pub fn open(path: &Path) -> Result<(Store, usize), StoreError> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_CAPACITY)
            .open()?;
        let store = Store {
            jobs: db.open_tree("jobs")?,
            queue: db.open_tree("queue")?,
            dedupe: db.open_tree("dedupe")?,
            db,
            lock: Mutex::new(()),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            wake: Notify::new(),
        };
        let recovered = store.recover()?;
        Ok((store, recovered))
    }

    fn guard(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic while holding the lock leaves the trees consistent (each
        // write is whole), so a poisoned lock is safe to take.
        self.lock.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recover(&self) -> Result<usize, StoreError> {
        let _g = self.guard();
        let mut recovered = 0;
        let mut queued = 0;
        self.queue.clear()?;
        for item in self.jobs.iter() {
            let (k, v) = item?;
            let mut job: Job = serde_json::from_slice(&v)?;
            if job.state == JobState::Running {
                job.state = JobState::Queued;
                self.jobs.insert(&k, serde_json::to_vec(&job)?)?;
                recovered += 1;
            }
            if job.state == JobState::Queued {
                self.queue.insert(&k, &[])?;
                self.dedupe.insert(job.spec.dedupe_key().as_bytes(), &k)?;
                queued += 1;
            }
        }
        self.db.flush()?;
        self.queued.store(queued, Ordering::Relaxed);
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
    pub async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>, StoreError> {
        let mut out = Vec::with_capacity(specs.len());
        {
            let _g = self.guard();
            for spec in specs {
                let dkey = spec.dedupe_key();
                if let Some(existing) = self.dedupe.get(dkey.as_bytes())? {
                    let id = u64::from_be_bytes(existing.as_ref().try_into().unwrap_or([0; 8]));
                    if let Some(mut job) = self.load(id)?
                        && job.state.is_active()
                    {
                        job.coalesced += 1;
                        self.save(&job)?;
                        out.push(Enqueued {
                            id,
                            coalesced: true,
                        });
                        continue;
                    }
                }
                let id = self.db.generate_id()? + 1;
                let job = Job {
                    id,
                    spec,
                    state: JobState::Queued,
                    attempts: 0,
                    created_ms: now_ms(),
                    started_ms: None,
                    finished_ms: None,
                    coalesced: 0,
                    summary: None,
                    last_error: None,
                };
                self.save(&job)?;
                self.dedupe.insert(dkey.as_bytes(), &key(id))?;
                self.queue.insert(key(id), &[])?;
                self.queued.fetch_add(1, Ordering::Relaxed);
                out.push(Enqueued {
                    id,
                    coalesced: false,
                });
            }
        }
        self.db.flush_async().await?;
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
                let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
                let Some(mut job) = self.load(id)? else {
                    continue;
                };
                if job.state != JobState::Queued {
                    continue;
                }
                job.state = JobState::Running;
                job.attempts += 1;
                job.started_ms = Some(now_ms());
                self.save(&job)?;
                self.running.fetch_add(1, Ordering::Relaxed);
                break Some(job);
            }
        };
        if job.is_some() {
            self.db.flush_async().await?;
        }
        Ok(job)
    }

    /// Records how a running job ended.
    pub async fn finish(
        &self,
        id: u64,
        outcome: Result<Summary, String>,
    ) -> Result<Option<Job>, StoreError> {
        let job = {
            let _g = self.guard();
            let Some(mut job) = self.load(id)? else {
                return Ok(None);
            };
            if job.state == JobState::Running {
                self.running.fetch_sub(1, Ordering::Relaxed);
            }
            job.finished_ms = Some(now_ms());
            match outcome {
                Ok(summary) => {
                    job.state = JobState::Succeeded;
                    job.summary = Some(summary);
                    job.last_error = None;
                }
                Err(e) => {
                    job.state = JobState::Failed;
                    job.last_error = Some(e);
                }
            }
            self.save(&job)?;
            let dkey = job.spec.dedupe_key();
            if self.dedupe.get(dkey.as_bytes())?.as_deref() == Some(&key(id)[..]) {
                self.dedupe.remove(dkey.as_bytes())?;
            }
            job
        };
        self.db.flush_async().await?;
        Ok(Some(job))
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

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Jobs being copied now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Waits until new work may be there. Create the future (and `enable`
    /// it) *before* checking the queue, so no wake-up is missed.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Writes everything to disk (on shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::Reference;

    fn spec(tag: &str) -> JobSpec {
        JobSpec {
            rule: "r".into(),
            from: "external".into(),
            to: "integrated".into(),
            source_repository: "library/nginx".into(),
            target_repository: "library/nginx".into(),
            reference: Reference::Tag(tag.into()),
            digest: None,
            occurred_at: None,
        }
    }

    #[tokio::test]
    async fn enqueue_claim_finish_and_coalesce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, recovered) = Store::open(dir.path()).expect("open");
        assert_eq!(recovered, 0);
        let a = store
            .enqueue(vec![spec("1"), spec("2")])
            .await
            .expect("enqueue");
        assert!(a.iter().all(|e| !e.coalesced));
        let again = store.enqueue(vec![spec("1")]).await.expect("enqueue");
        assert_eq!(
            again[0],
            Enqueued {
                id: a[0].id,
                coalesced: true
            }
        );
        assert_eq!(store.queued(), 2);

        let job = store.claim().await.expect("claim").expect("a job");
        assert_eq!(job.id, a[0].id);
        assert_eq!(job.state, JobState::Running);
        assert_eq!(job.coalesced, 1);
        // Still active while running: a redelivery joins it.
        let again = store.enqueue(vec![spec("1")]).await.expect("enqueue");
        assert!(again[0].coalesced);

        let done = store
            .finish(job.id, Ok(Summary::default()))
            .await
            .expect("finish")
            .expect("exists");
        assert_eq!(done.state, JobState::Succeeded);
        // Finished: the same event now makes a new job.
        let fresh = store.enqueue(vec![spec("1")]).await.expect("enqueue");
        assert!(!fresh[0].coalesced);
        assert_ne!(fresh[0].id, job.id);

        let failed = store.list(Some(JobState::Succeeded), 10).expect("list");
        assert_eq!(failed.len(), 1);
    }

    #[tokio::test]
    async fn running_jobs_are_requeued_after_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let (store, _) = Store::open(dir.path()).expect("open");
            store.enqueue(vec![spec("1")]).await.expect("enqueue");
            let job = store.claim().await.expect("claim").expect("job");
            job.id
            // dropped without finishing: as after kill -9
        };
        let (store, recovered) = Store::open(dir.path()).expect("reopen");
        assert_eq!(recovered, 1);
        assert_eq!(store.queued(), 1);
        let job = store.claim().await.expect("claim").expect("job");
        assert_eq!(job.id, id);
        assert_eq!(job.attempts, 2);
    }
}
