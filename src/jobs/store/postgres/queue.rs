//! The queue's state changes on PostgreSQL: each a transaction that reads
//! the job's row `FOR UPDATE`, applies [`transition`] and writes it back.

use std::sync::atomic::Ordering;

use super::{PgStore, db, decrement, ms};
use crate::jobs::store::transition::{self, After};
use crate::jobs::store::{CancelError, Enqueued, RetryError, StoreError};
use crate::jobs::{Job, JobSpec, JobState, Outcome};

/// The newest job with a dedupe key, locked: what an event folds into, and
/// what a deletion is weighed against.
const NEWEST_BY_KEY: &str =
    "SELECT job FROM relay_jobs WHERE dedupe_key = $1 ORDER BY id DESC LIMIT 1 FOR UPDATE";

impl PgStore {
    /// Writes back a job whose queue columns did not change (a fold, a
    /// closed window): its JSON alone.
    async fn rewrite(tx: &deadpool_postgres::Transaction<'_>, job: &Job) -> Result<(), StoreError> {
        let update = tx
            .prepare_cached("UPDATE relay_jobs SET job = $2 WHERE id = $1")
            .await
            .map_err(db)?;
        tx.execute(&update, &[&ms(job.id), &serde_json::to_value(job)?])
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Adds jobs, folding each into an active job with the same dedupe
    /// key, and returns once the transaction is committed.
    pub async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>, StoreError> {
        for spec in &specs {
            spec.validate().map_err(StoreError::Invalid)?;
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        self.check_room(&tx, specs.len()).await?;
        let (now, window) = (
            (self.clock)(),
            self.coalesce_window_ms.load(Ordering::Relaxed),
        );
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            out.push(Self::fold_or_add(&tx, spec, window, now).await?);
        }
        tx.commit().await.map_err(db)?;
        let added = out.iter().filter(|e| !e.coalesced).count();
        self.queued.fetch_add(added, Ordering::Relaxed);
        self.wake.notify_waiters();
        Ok(out)
    }

    /// Refuses `adding` more jobs when `jobs.max_queued` are waiting. The
    /// exact count costs a scan of the waiting jobs: only near the cap
    /// (the estimate is the fleet's counts, read every second).
    async fn check_room(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        adding: usize,
    ) -> Result<(), StoreError> {
        let max = self.max_queued.load(Ordering::Relaxed);
        let estimate = self.queued() + self.retrying() + adding;
        if estimate.saturating_mul(10) < max.saturating_mul(9) {
            return Ok(());
        }
        let waiting: i64 = tx
            .query_one(
                "SELECT count(*) FROM relay_jobs WHERE state IN ('queued','retrying')",
                &[],
            )
            .await
            .map_err(db)?
            .get(0);
        match waiting as usize {
            w if w >= max => Err(StoreError::Full { waiting: w, max }),
            _ => Ok(()),
        }
    }

    /// One spec of an enqueue: folded into the newest job with its dedupe
    /// key if that one [`transition::joins`] it, else a new queued job.
    /// Two round trips. The first is pipelined: the advisory lock on the
    /// key, then (a statement of its own, so its snapshot is taken once the
    /// lock is held) the newest job with the key, and an id in case a new
    /// job is needed (an id left unused is a gap; ids need only grow). The
    /// second writes the job with the `NOTIFY` that wakes the fleet (sent
    /// on commit, once however many jobs the transaction adds).
    async fn fold_or_add(
        tx: &deadpool_postgres::Transaction<'_>,
        spec: JobSpec,
        window: u64,
        now: u64,
    ) -> Result<Enqueued, StoreError> {
        let key = spec.dedupe_key();
        let (lock, newest, next_id) = futures_util::try_join!(
            tx.prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"),
            tx.prepare_cached(NEWEST_BY_KEY),
            tx.prepare_cached("SELECT nextval('relay_jobs_id')"),
        )
        .map_err(db)?;
        let by_key: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&key];
        let (_, last, id) = futures_util::try_join!(
            tx.execute(&lock, &by_key),
            tx.query_opt(&newest, &by_key),
            tx.query_one(&next_id, &[]),
        )
        .map_err(db)?;
        if let Some(row) = last {
            let mut job = Self::job_of(&row, "job")?;
            if transition::joins(&job, window, now) {
                job.coalesced += 1;
                Self::rewrite(tx, &job).await?;
                return Ok(Enqueued {
                    id: job.id,
                    coalesced: true,
                });
            }
        }
        let deleting = Self::weigh_delete(tx, &spec).await?;
        let mut job = transition::new_job(id.get::<_, i64>(0) as u64, spec, now);
        if let Some(transition::Deleting::Stale(why)) = deleting {
            transition::ignored(&mut job, why, now);
            Self::save(tx, &job, None).await?;
            return Ok(Enqueued {
                id: job.id,
                coalesced: false,
            });
        }
        futures_util::try_join!(Self::save(tx, &job, None), async {
            tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)
        })?;
        Ok(Enqueued {
            id: job.id,
            coalesced: false,
        })
    }

    /// For a deletion: [`transition::deleting`] against the newest copy of
    /// the same artifact (locked, as [`PgStore::fold_or_add`] locks its
    /// own key), whose window is closed here if it says so. `None` for a
    /// copy.
    async fn weigh_delete(
        tx: &deadpool_postgres::Transaction<'_>,
        spec: &JobSpec,
    ) -> Result<Option<transition::Deleting>, StoreError> {
        let Some(push_key) = spec.push_key() else {
            return Ok(None);
        };
        let newest = tx.prepare_cached(NEWEST_BY_KEY).await.map_err(db)?;
        let push = match tx.query_opt(&newest, &[&push_key]).await.map_err(db)? {
            Some(row) => Some(Self::job_of(&row, "job")?),
            None => None,
        };
        let decision = transition::deleting(push.as_ref(), spec);
        if let (transition::Deleting::Queue { close: true }, Some(mut push)) = (&decision, push) {
            transition::close_window(&mut push);
            Self::rewrite(tx, &push).await?;
        }
        Ok(Some(decision))
    }

    /// Takes the oldest queued job, or a running one whose lease expired
    /// (its relay is gone), and leases it to this relay.
    pub async fn claim(&self) -> Result<Option<Job>, StoreError> {
        let now = (self.clock)();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let next = tx
            .prepare_cached(
                "SELECT job, state FROM relay_jobs
                 WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < $1)
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
            )
            .await
            .map_err(db)?;
        let row = tx.query_opt(&next, &[&ms(now)]).await.map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job = Self::job_of(&row, "job")?;
        let taken_over = row.get::<_, &str>("state") == "running";
        transition::start(&mut job, now);
        job.relay = Some(self.owner.clone());
        Self::save(&tx, &job, Some((&self.owner, now + self.lease_ms))).await?;
        tx.commit().await.map_err(db)?;
        if !taken_over {
            decrement(&self.queued);
            self.running.fetch_add(1, Ordering::Relaxed);
        }
        if taken_over {
            self.takeovers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id = job.id,
                "took over a job whose relay stopped renewing its lease"
            );
        }
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job.id);
        Ok(Some(job))
    }

    /// The queued jobs of `job`'s fan-out ([`JobSpec::fanout_group`]),
    /// leased to this relay as [`PgStore::claim`] leases one. Their dedupe
    /// keys start with the group's; only ids just after `job`'s are looked
    /// at (they were enqueued with it), and a sibling another relay holds
    /// is skipped.
    pub async fn claim_siblings(&self, job: &Job) -> Result<Vec<Job>, StoreError> {
        let Some(group) = job.spec.fanout_group() else {
            return Ok(Vec::new());
        };
        let prefix = format!("{group}\n");
        let now = (self.clock)();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let rows = tx
            .query(
                "SELECT job FROM relay_jobs
                 WHERE state = 'queued' AND id > $1 AND id <= $2
                   AND left(dedupe_key, length($3)) = $3
                 ORDER BY id FOR UPDATE SKIP LOCKED",
                &[
                    &ms(job.id),
                    &ms(job.id + crate::jobs::store::SIBLINGS_SCAN),
                    &prefix,
                ],
            )
            .await
            .map_err(db)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let mut sibling = Self::job_of(&row, "job")?;
            if sibling.spec.fanout_group().as_deref() != Some(group.as_str()) {
                continue;
            }
            transition::start(&mut sibling, now);
            sibling.relay = Some(self.owner.clone());
            Self::save(&tx, &sibling, Some((&self.owner, now + self.lease_ms))).await?;
            found.push(sibling);
        }
        tx.commit().await.map_err(db)?;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        for sibling in &found {
            decrement(&self.queued);
            self.running.fetch_add(1, Ordering::Relaxed);
            held.insert(sibling.id);
        }
        Ok(found)
    }

    /// Renews the leases this relay holds; returns how many rows it still
    /// holds.
    pub async fn renew_leases(&self) -> Result<usize, StoreError> {
        self.renew_turns().await?;
        let ids: Vec<i64> = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|&i| ms(i))
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let until = ms((self.clock)() + self.lease_ms);
        let n = self
            .client()
            .await?
            .execute(
                "UPDATE relay_jobs SET lease_until_ms = $1 WHERE id = ANY($2) AND lease_owner = $3 AND state = 'running'",
                &[&until, &ids, &self.owner],
            )
            .await
            .map_err(db)?;
        Ok(n as usize)
    }

    /// Records how an attempt ended. A relay that lost the job's lease to
    /// another (it stopped renewing too long) has its result dropped.
    pub async fn finish(&self, id: u64, outcome: Outcome) -> Result<Option<Job>, StoreError> {
        let recorded = self.record(id, outcome).await;
        // The lease is renewed until the result is in: a database that is
        // down for a moment must not turn a finished copy into a takeover.
        if recorded.is_ok() {
            self.held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id);
        }
        recorded
    }

    async fn record(&self, id: u64, outcome: Outcome) -> Result<Option<Job>, StoreError> {
        let now = (self.clock)();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .prepare_cached("SELECT job, lease_owner FROM relay_jobs WHERE id = $1 FOR UPDATE")
            .await
            .map_err(db)?;
        let Some(row) = tx.query_opt(&row, &[&ms(id)]).await.map_err(db)? else {
            return Ok(None);
        };
        let mut job = Self::job_of(&row, "job")?;
        let owner: Option<&str> = row.get("lease_owner");
        if job.state != JobState::Running {
            // Recorded already: a commit whose answer the connection lost,
            // then tried again.
            return Ok(None);
        }
        if owner != Some(self.owner.as_str()) {
            tracing::warn!(
                id,
                "another relay holds this job now; this attempt's result is dropped"
            );
            return Ok(None);
        }
        let outcome = self.releases.adjust(&job, outcome, now);
        let after = transition::finish(&mut job, outcome, now);
        Self::save(&tx, &job, None).await?;
        if after == After::Queued {
            tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        decrement(&self.running);
        match after {
            After::Queued => self.queued.fetch_add(1, Ordering::Relaxed),
            After::Retrying(_) => self
                .waiting_count(job.state)
                .fetch_add(1, Ordering::Relaxed),
            After::Finished => 0,
        };
        Ok(Some(job))
    }

    /// Moves retrying and held jobs whose time has come back to the queue.
    pub async fn promote_due(&self, now: u64) -> Result<usize, StoreError> {
        self.promote_where(
            "SELECT job FROM relay_jobs WHERE state IN ('retrying','held') AND next_attempt_ms <= $1 FOR UPDATE SKIP LOCKED",
            &ms(now),
        )
        .await
    }

    /// Queues at once the held jobs an event of `repository` releases
    /// ([`transition::released_by`]): they look at their gates again.
    pub async fn release(&self, repository: &str) -> Result<usize, StoreError> {
        self.releases.note(repository, (self.clock)());
        self.promote_where(
            "SELECT job FROM relay_jobs WHERE state = 'held' AND job->'spec'->>'source_repository' = $1 FOR UPDATE SKIP LOCKED",
            &repository,
        )
        .await
    }

    /// Queues at once the jobs that wait for `registry` to answer again.
    pub async fn release_down(&self, registry: &str) -> Result<usize, StoreError> {
        self.promote_where(
            "SELECT job FROM relay_jobs WHERE state = 'retrying' AND job->>'down' = $1 FOR UPDATE SKIP LOCKED",
            &registry,
        )
        .await
    }

    /// When the longest-held job was first held, across the fleet.
    pub async fn oldest_held(&self) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT min((job->>'held_since_ms')::bigint) FROM relay_jobs WHERE state = 'held'",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64))
    }

    /// Queues the waiting jobs `select` (one parameter) picks.
    async fn promote_where(
        &self,
        select: &str,
        param: &(dyn tokio_postgres::types::ToSql + Sync),
    ) -> Result<usize, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let rows = tx.query(select, &[param]).await.map_err(db)?;
        for row in &rows {
            let mut job = Self::job_of(row, "job")?;
            decrement(self.waiting_count(job.state));
            transition::promote(&mut job);
            Self::save(&tx, &job, None).await?;
            self.queued.fetch_add(1, Ordering::Relaxed);
        }
        if !rows.is_empty() {
            tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        if !rows.is_empty() {
            self.wake.notify_waiters();
        }
        Ok(rows.len())
    }

    /// Job `id`, locked for the rest of the transaction.
    async fn locked(
        tx: &deadpool_postgres::Transaction<'_>,
        id: u64,
    ) -> Result<Option<Job>, StoreError> {
        let row = tx
            .query_opt(
                "SELECT job FROM relay_jobs WHERE id = $1 FOR UPDATE",
                &[&ms(id)],
            )
            .await
            .map_err(db)?;
        row.map(|r| Self::job_of(&r, "job")).transpose()
    }

    /// Cancels a waiting job (failed with `why`, committed before it
    /// returns); a running or finished one is refused with what to do.
    pub async fn cancel(&self, id: u64, why: &str) -> Result<Job, CancelError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let mut job = Self::locked(&tx, id)
            .await?
            .ok_or(CancelError::NotFound(id))?;
        transition::cancellable(&job)?;
        let was = job.state;
        transition::cancel(&mut job, why.to_string(), (self.clock)());
        Self::save(&tx, &job, None).await?;
        tx.commit().await.map_err(db)?;
        match was {
            JobState::Queued => decrement(&self.queued),
            w => decrement(self.waiting_count(w)),
        }
        Ok(job)
    }

    /// Queues a failed job again, with a fresh count of attempts.
    pub async fn retry(&self, id: u64) -> Result<Job, RetryError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let mut job = Self::locked(&tx, id)
            .await?
            .ok_or(RetryError::NotFound(id))?;
        if !transition::retryable(&job) {
            return Err(RetryError::NotFailed {
                id,
                state: job.state.as_str(),
            });
        }
        let other = tx
            .query_opt(
                "SELECT id FROM relay_jobs WHERE dedupe_key = $1 AND id <> $2 AND state IN ('queued','running','retrying','held') LIMIT 1",
                &[&job.spec.dedupe_key(), &ms(id)],
            )
            .await
            .map_err(db)?;
        if let Some(o) = other {
            return Err(RetryError::Duplicate {
                active: o.get::<_, i64>(0) as u64,
            });
        }
        transition::rearm(&mut job);
        Self::save(&tx, &job, None).await?;
        tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_waiters();
        Ok(job)
    }
}
