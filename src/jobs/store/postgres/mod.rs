//! The job store on PostgreSQL, for several relays sharing one queue.
//!
//! One table, `relay_jobs`: the job as JSON (the same record sled keeps)
//! and the columns the queue needs beside it (state, due time, dedupe key,
//! lease). Every change is a transaction that reads the row `FOR UPDATE`,
//! applies [`super::transition`] in Rust and writes the row back, so the
//! state machine is sled's. Across relays:
//! - a worker claims the oldest queued job, or a running job whose lease
//!   expired (its relay died), with `FOR UPDATE SKIP LOCKED`, and holds a
//!   lease it renews; a result from a relay that lost its lease is
//!   dropped;
//! - enqueueing takes a transaction-scoped advisory lock on the dedupe key,
//!   so two relays given the same event fold it into one job;
//! - `NOTIFY relay_jobs` on commit wakes idle workers of every relay
//!   (`LISTEN` on a connection of its own, with a poll every second as a
//!   fallback), so pickup does not wait for a poll.
//!
//! The schema is migrated at start under an advisory lock; a database
//! whose schema is newer than this binary knows is refused.
//!
//! - this file: the store, its connections' pool, reads and counts;
//! - `schema.rs`: migrations and the TLS to the database;
//! - `queue.rs`: enqueue, claim, finish, retry: the queue's changes;
//! - `ledger.rs`: the replicator's ledger in tables every relay reads;
//! - `tend.rs`: lease renewal, counts for `/readyz`, `LISTEN/NOTIFY`.

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::Notify;

use super::{DEFAULT_COALESCE_WINDOW, StoreError};
use crate::jobs::{Job, JobState};

mod guard;
mod ledger;
mod queue;
mod schema;
mod tend;

pub use schema::DbTls;
pub use tend::tend;

/// [`PgStore::save`]'s statement.
const SAVE: &str = "INSERT INTO relay_jobs (id, dedupe_key, state, next_attempt_ms, finished_ms, lease_owner, lease_until_ms, job)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
     ON CONFLICT (id) DO UPDATE SET state = $3, next_attempt_ms = $4, finished_ms = $5,
         lease_owner = $6, lease_until_ms = $7, job = $8";

/// How long a claimed job is ours without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// The job store on PostgreSQL.
pub struct PgStore {
    pub(super) pool: Pool,
    pub(super) tls: DbTls,
    /// This relay, as written in the leases it holds.
    pub(super) owner: String,
    pub(super) lease_ms: u64,
    /// Jobs this relay holds leases on.
    held: Mutex<HashSet<u64>>,
    /// Blob uploads this relay holds the fleet's turn for.
    pub(super) turns: std::sync::Arc<Mutex<HashSet<String>>>,
    wake: Notify,
    queued: AtomicUsize,
    running: AtomicUsize,
    retrying: AtomicUsize,
    held_jobs: AtomicUsize,
    /// Releases this relay saw lately ([`super::released`]).
    releases: super::released::Releases,
    size: AtomicU64,
    takeovers: AtomicU64,
    /// Why the database could not be read at the last look, if it could not.
    unreachable: Mutex<Option<String>>,
    coalesce_window_ms: AtomicU64,
    max_queued: AtomicUsize,
    pub(super) clock: fn() -> u64,
}

/// The error and its causes, joined (a TLS failure's reason is a few
/// sources down).
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let t = s.to_string();
        if !parts.iter().any(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    parts.join(": ")
}

pub(super) fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Postgres(chain(&e))
}

fn pool_err(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Postgres(chain(&e))
}

/// Counts one less in a gauge that the next refresh corrects anyway
/// (never below zero).
fn decrement(gauge: &AtomicUsize) {
    let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
        Some(n.saturating_sub(1))
    });
}

pub(super) fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl PgStore {
    /// Connects to `url`, migrates the schema, and starts the lease and
    /// wake-up tasks. `owner` names this relay in leases.
    pub async fn open(
        config: tokio_postgres::Config,
        tls: DbTls,
        owner: &str,
        lease: Duration,
    ) -> Result<PgStore, StoreError> {
        let pool = tls.pool(config)?;
        let store = PgStore {
            pool,
            tls,
            owner: owner.to_string(),
            lease_ms: lease.as_millis() as u64,
            held: Mutex::new(HashSet::new()),
            turns: Default::default(),
            wake: Notify::new(),
            queued: AtomicUsize::new(0),
            running: AtomicUsize::new(0),
            retrying: AtomicUsize::new(0),
            held_jobs: AtomicUsize::new(0),
            releases: Default::default(),
            size: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            unreachable: Mutex::new(None),
            coalesce_window_ms: AtomicU64::new(DEFAULT_COALESCE_WINDOW.as_millis() as u64),
            max_queued: AtomicUsize::new(usize::MAX),
            clock: crate::clock::now_ms,
        };
        store.migrate().await?;
        store.refresh().await?;
        Ok(store)
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }

    /// Replaces the clock (tests move time instead of sleeping).
    pub fn set_clock(&mut self, clock: fn() -> u64) {
        self.clock = clock;
    }

    /// See [`super::SledStore::set_max_queued`].
    pub fn set_max_queued(&self, max: usize) {
        self.max_queued.store(max.max(1), Ordering::Relaxed);
    }

    /// See [`super::SledStore::set_coalesce_window`].
    pub fn set_coalesce_window(&self, window: Duration) {
        self.coalesce_window_ms
            .store(window.as_millis() as u64, Ordering::Relaxed);
    }

    /// Reads the fleet's counts and the table's size into the gauges, and
    /// notes whether the database answered (for `/readyz`).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let read = self.read_counts().await;
        *self.unreachable.lock().unwrap_or_else(|p| p.into_inner()) =
            read.as_ref().err().map(|e| e.to_string());
        read
    }

    /// Why the database could not be read at the last look, if so.
    pub fn problem(&self) -> Option<String> {
        self.unreachable
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn read_counts(&self) -> Result<(), StoreError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT state, count(*) FROM relay_jobs WHERE state IN ('queued','running','retrying','held') GROUP BY state",
                &[],
            )
            .await
            .map_err(db)?;
        let (mut q, mut r, mut t, mut h) = (0, 0, 0, 0);
        for row in rows {
            let n = row.get::<_, i64>(1) as usize;
            match row.get::<_, &str>(0) {
                "queued" => q = n,
                "running" => r = n,
                "held" => h = n,
                _ => t = n,
            }
        }
        self.held_jobs.store(h, Ordering::Relaxed);
        self.queued.store(q, Ordering::Relaxed);
        self.running.store(r, Ordering::Relaxed);
        self.retrying.store(t, Ordering::Relaxed);
        let size = c
            .query_one("SELECT pg_total_relation_size('relay_jobs')", &[])
            .await
            .map_err(db)?;
        self.size
            .store(size.get::<_, i64>(0).max(0) as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes `job` into its row (insert or update), with the queue's
    /// columns taken from it. Prepared once per connection, as every
    /// statement of the queue's hot path: a statement given as text costs
    /// a second round trip (parse, then execute) each time.
    async fn save(
        tx: &deadpool_postgres::Transaction<'_>,
        job: &Job,
        lease: Option<(&str, u64)>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_value(job)?;
        let save = tx.prepare_cached(SAVE).await.map_err(db)?;
        tx.execute(
            &save,
            &[
                &ms(job.id),
                &job.spec.dedupe_key(),
                &job.state.as_str(),
                &job.next_attempt_ms.map(ms),
                &job.finished_ms.map(ms),
                &lease.map(|(o, _)| o),
                &lease.map(|(_, u)| ms(u)),
                &body,
            ],
        )
        .await
        .map_err(db)?;
        Ok(())
    }

    fn job_of(row: &tokio_postgres::Row, col: &str) -> Result<Job, StoreError> {
        let v: serde_json::Value = row.get(col);
        Ok(serde_json::from_value(v)?)
    }

    /// Jobs waiting (queued, retrying, held) by target registry, in the
    /// whole fleet (`cap` is for the embedded store's scan).
    pub async fn waiting_by_target(
        &self,
        _cap: usize,
    ) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT job->'spec'->>'to' AS target, count(*) AS n FROM relay_jobs
                 WHERE state IN ('queued','retrying','held') GROUP BY 1",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(rows
            .iter()
            .map(|r| {
                let target: Option<String> = r.get("target");
                (target.unwrap_or_default(), r.get::<_, i64>("n") as usize)
            })
            .collect())
    }

    /// When the earliest retry is due, if any.
    pub async fn next_due(&self) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT min(next_attempt_ms) FROM relay_jobs WHERE state IN ('retrying','held')",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64))
    }

    /// Deletes jobs that finished before `before_ms`.
    pub async fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM relay_jobs WHERE state IN ('succeeded','failed','refused') AND finished_ms < $1",
                &[&ms(before_ms)],
            )
            .await
            .map_err(db)?;
        Ok(n as usize)
    }

    /// One job by id.
    pub async fn get(&self, id: u64) -> Result<Option<Job>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt("SELECT job FROM relay_jobs WHERE id = $1", &[&ms(id)])
            .await
            .map_err(db)?;
        row.map(|r| Self::job_of(&r, "job")).transpose()
    }

    /// Jobs newest first, optionally only those in `state`, at most `limit`.
    pub async fn list(
        &self,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let c = self.client().await?;
        let rows = match state {
            Some(s) => {
                c.query(
                    "SELECT job FROM relay_jobs WHERE state = $1 ORDER BY id DESC LIMIT $2",
                    &[&s.as_str(), &limit],
                )
                .await
            }
            None => {
                c.query(
                    "SELECT job FROM relay_jobs ORDER BY id DESC LIMIT $1",
                    &[&limit],
                )
                .await
            }
        }
        .map_err(db)?;
        rows.iter().map(|r| Self::job_of(r, "job")).collect()
    }

    /// Whether this relay runs the next reconcile pass of `rule`: true for
    /// exactly one relay of the fleet per `interval` (the row of the rule
    /// records when its last pass started and by whom).
    pub async fn reconcile_turn(&self, rule: &str, interval: Duration) -> Result<bool, StoreError> {
        let now = (self.clock)();
        let since = ms(now.saturating_sub(interval.as_millis() as u64));
        let n = self
            .client()
            .await?
            .execute(
                "INSERT INTO relay_reconcile (rule, last_pass_ms, owner) VALUES ($1, $2, $3)
                 ON CONFLICT (rule) DO UPDATE SET last_pass_ms = $2, owner = $3
                 WHERE relay_reconcile.last_pass_ms <= $4",
                &[&rule, &ms(now), &self.owner, &since],
            )
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    /// The table's size, as last read.
    pub fn size_on_disk(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    /// Jobs waiting for a worker, across the fleet (as last read).
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Jobs being copied, across the fleet (as last read).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Relaxed)
    }

    /// Jobs waiting for their next attempt, across the fleet (as last read).
    pub fn retrying(&self) -> usize {
        self.retrying.load(Ordering::Relaxed)
    }

    /// Jobs held at a gate, across the fleet (as last read).
    pub fn held(&self) -> usize {
        self.held_jobs.load(Ordering::Relaxed)
    }

    /// The counter of jobs waiting in `state` (retrying or held).
    fn waiting_count(&self, state: JobState) -> &AtomicUsize {
        match state {
            JobState::Held => &self.held_jobs,
            _ => &self.retrying,
        }
    }

    /// Jobs this relay took over from a relay whose lease expired.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Leases this relay holds now.
    pub fn leases_held(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Waits until new work may be there (see [`super::SledStore::notified`]).
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.wake.notified()
    }

    /// Wakes the workers (a `NOTIFY` arrived, or the fallback poll).
    pub fn wake(&self) {
        self.wake.notify_waiters();
    }

    /// The lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }
}
