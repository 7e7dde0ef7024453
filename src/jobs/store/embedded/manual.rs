//! What changes a job from outside its run: an operator's `retry` and
//! `cancel`, and what a deletion's enqueue does to the push it follows.

use std::sync::atomic::Ordering;

use super::{SledStore, id_of, key};
use crate::jobs::store::transition;
use crate::jobs::store::{CancelError, RetryError, StoreError};
use crate::jobs::{Job, JobSpec};

impl SledStore {
    /// Queues a failed job again, with a fresh count of attempts.
    pub async fn retry(&self, id: u64) -> Result<Job, RetryError> {
        let job = {
            let _g = self.guard();
            let mut job = self.load(id)?.ok_or(RetryError::NotFound(id))?;
            if !transition::retryable(&job) {
                return Err(RetryError::NotFailed {
                    id,
                    state: job.state.as_str(),
                });
            }
            let dkey = job.spec.dedupe_key();
            if let Some(other) = self.dedupe.get(dkey.as_bytes())? {
                let other = id_of(&other);
                if other != id && self.load(other)?.is_some_and(|o| o.state.is_active()) {
                    return Err(RetryError::Duplicate { active: other });
                }
            }
            transition::rearm(&mut job);
            self.save(&job)?;
            self.dedupe.insert(dkey.as_bytes(), &key(id))?;
            self.queue.insert(key(id), &[])?;
            self.queued.fetch_add(1, Ordering::Relaxed);
            job
        };
        self.durable().await.map_err(RetryError::Store)?;
        self.wake.notify_waiters();
        Ok(job)
    }

    /// Queues at once the held jobs an event of `repository` releases
    /// ([`transition::released_by`]): they look at their gates again.
    /// Returns how many.
    pub async fn release(&self, repository: &str) -> Result<usize, StoreError> {
        self.releases.note(repository, (self.clock)());
        if self.held() == 0 {
            return Ok(0);
        }
        self.requeue_where(|job| transition::released_by(job, repository))
            .await
    }

    /// Queues at once the jobs that wait for `registry` to answer again
    /// ([`transition::waits_for`]). Returns how many.
    pub async fn release_down(&self, registry: &str) -> Result<usize, StoreError> {
        self.requeue_where(|job| transition::waits_for(job, registry))
            .await
    }

    /// Queues every waiting job that `pick` chooses, durably. Returns how
    /// many.
    async fn requeue_where(&self, pick: impl Fn(&Job) -> bool) -> Result<usize, StoreError> {
        let mut moved = 0;
        {
            let _g = self.guard();
            let mut due = Vec::new();
            for item in self.delayed.iter() {
                let (k, _) = item?;
                if let Some(job) = self.load(id_of(&k))?
                    && pick(&job)
                {
                    due.push((k, job));
                }
            }
            for (k, mut job) in due {
                self.delayed.remove(&k)?;
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

    /// When the longest-held job was first held, if any job is held.
    pub async fn oldest_held(&self) -> Result<Option<u64>, StoreError> {
        if self.held() == 0 {
            return Ok(None);
        }
        let mut oldest: Option<u64> = None;
        for item in self.delayed.iter() {
            let (k, _) = item?;
            if let Some(job) = self.load(id_of(&k))?
                && job.state == crate::jobs::JobState::Held
                && let Some(since) = job.held_since_ms
            {
                oldest = Some(oldest.map_or(since, |o| o.min(since)));
            }
        }
        Ok(oldest)
    }

    /// For a deletion: [`transition::deleting`] against the newest copy
    /// of the same artifact, whose window is closed here if it says so.
    /// `None` for a copy. Called under the write guard.
    pub(super) fn weigh_delete(
        &self,
        spec: &JobSpec,
    ) -> Result<Option<transition::Deleting>, StoreError> {
        let Some(push_key) = spec.push_key() else {
            return Ok(None);
        };
        let push = match self.dedupe.get(push_key.as_bytes())? {
            Some(id) => self.load(id_of(&id))?,
            None => None,
        };
        let decision = transition::deleting(push.as_ref(), spec);
        if let (transition::Deleting::Queue { close: true }, Some(mut push)) = (&decision, push) {
            transition::close_window(&mut push);
            self.save(&push)?;
        }
        Ok(Some(decision))
    }

    /// Cancels a waiting job (failed with `why`, out of the queue or the
    /// retry schedule, on disk before it returns); a running or finished
    /// one is refused with what to do.
    pub async fn cancel(&self, id: u64, why: &str) -> Result<Job, CancelError> {
        let job = {
            let _g = self.guard();
            let mut job = self.load(id)?.ok_or(CancelError::NotFound(id))?;
            transition::cancellable(&job)?;
            // Out of the retry schedule or the queue, whichever holds it.
            let waiting = job.next_attempt_ms.filter(|_| job.state.is_waiting());
            let counted = match waiting {
                Some(at) => self
                    .delayed
                    .remove(super::delayed_key(at, id))?
                    .map(|_| self.waiting_count(job.state)),
                None => self.queue.remove(key(id))?.map(|_| &self.queued),
            };
            if let Some(counter) = counted {
                counter.fetch_sub(1, Ordering::Relaxed);
            }
            transition::cancel(&mut job, why.to_string(), (self.clock)());
            let dkey = job.spec.dedupe_key();
            if self.dedupe.get(dkey.as_bytes())?.as_deref() == Some(&key(id)[..]) {
                self.dedupe.remove(dkey.as_bytes())?;
            }
            self.save(&job)?;
            job
        };
        self.durable().await?;
        Ok(job)
    }
}
