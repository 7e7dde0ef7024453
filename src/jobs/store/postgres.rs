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

use std::collections::HashSet;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::Notify;
use tokio_postgres::NoTls;
use tokio_postgres::config::SslMode;

use super::transition::{self, After};
use super::{DEFAULT_COALESCE_WINDOW, Enqueued, RetryError, StoreError};
use crate::jobs::{Job, JobSpec, JobState, Outcome};

/// The schema, one migration per entry, applied in order.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE relay_jobs (
    id bigint PRIMARY KEY,
    dedupe_key text NOT NULL,
    state text NOT NULL,
    next_attempt_ms bigint,
    finished_ms bigint,
    lease_owner text,
    lease_until_ms bigint,
    job jsonb NOT NULL
);
CREATE SEQUENCE relay_jobs_id;
CREATE INDEX relay_jobs_waiting ON relay_jobs (id) WHERE state = 'queued';
CREATE INDEX relay_jobs_due ON relay_jobs (next_attempt_ms) WHERE state = 'retrying';
CREATE INDEX relay_jobs_leases ON relay_jobs (lease_until_ms) WHERE state = 'running';
CREATE INDEX relay_jobs_dedupe ON relay_jobs (dedupe_key, id DESC);
CREATE INDEX relay_jobs_finished ON relay_jobs (finished_ms) WHERE finished_ms IS NOT NULL;
"#,
    r#"
CREATE TABLE relay_reconcile (
    rule text PRIMARY KEY,
    last_pass_ms bigint NOT NULL,
    owner text NOT NULL
);
"#,
    r#"
CREATE TABLE relay_uploads (key text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE relay_blobs (key text PRIMARY KEY, record jsonb NOT NULL);
CREATE TABLE relay_tags (key text PRIMARY KEY, record jsonb NOT NULL);
"#,
    r#"
CREATE TABLE relay_upload_turns (key text PRIMARY KEY, owner text NOT NULL, until_ms bigint NOT NULL);
"#,
];

/// Advisory lock key for migrations ("hrmigrat").
const MIGRATION_LOCK: i64 = 0x6872_6d69_6772_6174;

/// How long a claimed job is ours without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How connections to the database are made: in the clear (the URL says
/// `sslmode=disable`), or with TLS whose certificate is checked against
/// `store.ca_file` or the system's trust store (`prefer`, the default, and
/// `require`; unlike libpq's `require`, the certificate is always checked).
#[derive(Clone)]
pub enum DbTls {
    /// `sslmode=disable`.
    Clear,
    /// TLS.
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl DbTls {
    /// The connector `connect`'s `sslmode` asks for.
    pub fn new(
        connect: &tokio_postgres::Config,
        ca_pem: Option<&[u8]>,
    ) -> Result<DbTls, StoreError> {
        if connect.get_ssl_mode() == SslMode::Disable {
            return Ok(DbTls::Clear);
        }
        let tls_err = |e: String| StoreError::Postgres(format!("TLS to the database: {e}"));
        let config = match ca_pem {
            Some(pem) => {
                use rustls_pki_types::pem::PemObject;
                let mut roots = rustls::RootCertStore::empty();
                for cert in rustls_pki_types::CertificateDer::pem_slice_iter(pem) {
                    let cert = cert.map_err(|e| tls_err(format!("store.ca_file: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| tls_err(format!("store.ca_file: {e}")))?;
                }
                rustls::ClientConfig::builder()
                    .with_root_certificates(roots)
                    .with_no_client_auth()
            }
            None => {
                use rustls_platform_verifier::ConfigVerifierExt;
                rustls::ClientConfig::with_platform_verifier()
                    .map_err(|e| tls_err(e.to_string()))?
            }
        };
        Ok(DbTls::Rustls(
            tokio_postgres_rustls::MakeRustlsConnect::new(config),
        ))
    }

    /// A connection pool over this connector.
    fn pool(&self, config: tokio_postgres::Config) -> Result<Pool, StoreError> {
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match self {
            DbTls::Clear => Manager::from_config(config, NoTls, mc),
            DbTls::Rustls(t) => Manager::from_config(config, t.clone(), mc),
        };
        Pool::builder(manager)
            .max_size(16)
            .build()
            .map_err(|e| StoreError::Postgres(e.to_string()))
    }
}

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

    /// Applies the migrations this binary has and the database lacks,
    /// under an advisory lock (several relays may start at once).
    async fn migrate(&self) -> Result<(), StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(db)?;
        tx.batch_execute(
            "CREATE TABLE IF NOT EXISTS relay_schema (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(db)?;
        let row = tx
            .query_one("SELECT coalesce(max(version), 0) FROM relay_schema", &[])
            .await
            .map_err(db)?;
        let have: i32 = row.get(0);
        let know = MIGRATIONS.len() as i32;
        if have > know {
            return Err(StoreError::Postgres(format!(
                "the database's schema is version {have}, newer than this harbor-relay knows ({know}): a newer relay migrated it; upgrade this one"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
            tx.batch_execute(sql).await.map_err(db)?;
            let version = i as i32 + 1;
            tx.execute(
                "INSERT INTO relay_schema (version) VALUES ($1)",
                &[&version],
            )
            .await
            .map_err(db)?;
            tracing::info!(version, "migrated the PostgreSQL job store");
        }
        tx.commit().await.map_err(db)
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
                "SELECT state, count(*) FROM relay_jobs WHERE state IN ('queued','running','retrying') GROUP BY state",
                &[],
            )
            .await
            .map_err(db)?;
        let (mut q, mut r, mut t) = (0, 0, 0);
        for row in rows {
            let n = row.get::<_, i64>(1) as usize;
            match row.get::<_, &str>(0) {
                "queued" => q = n,
                "running" => r = n,
                _ => t = n,
            }
        }
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
    /// columns taken from it.
    async fn save(
        tx: &deadpool_postgres::Transaction<'_>,
        job: &Job,
        lease: Option<(&str, u64)>,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_value(job)?;
        tx.execute(
            "INSERT INTO relay_jobs (id, dedupe_key, state, next_attempt_ms, finished_ms, lease_owner, lease_until_ms, job)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (id) DO UPDATE SET state = $3, next_attempt_ms = $4, finished_ms = $5,
                 lease_owner = $6, lease_until_ms = $7, job = $8",
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

    /// Adds jobs, folding each into an active job with the same dedupe
    /// key, and returns once the transaction is committed.
    pub async fn enqueue(&self, specs: Vec<JobSpec>) -> Result<Vec<Enqueued>, StoreError> {
        for spec in &specs {
            spec.validate().map_err(StoreError::Invalid)?;
        }
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        // The exact count costs a scan of the waiting jobs: only near the
        // cap (the estimate is the fleet's counts, read every second).
        let max = self.max_queued.load(Ordering::Relaxed);
        let estimate = self.queued() + self.retrying() + specs.len();
        if estimate.saturating_mul(10) >= max.saturating_mul(9) {
            let waiting: i64 = tx
                .query_one(
                    "SELECT count(*) FROM relay_jobs WHERE state IN ('queued','retrying')",
                    &[],
                )
                .await
                .map_err(db)?
                .get(0);
            if waiting as usize >= max {
                return Err(StoreError::Full {
                    waiting: waiting as usize,
                    max,
                });
            }
        }
        let now = (self.clock)();
        let window = self.coalesce_window_ms.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(specs.len());
        for spec in specs {
            let key = spec.dedupe_key();
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                &[&key],
            )
            .await
            .map_err(db)?;
            let last = tx
                .query_opt(
                    "SELECT job FROM relay_jobs WHERE dedupe_key = $1 ORDER BY id DESC LIMIT 1 FOR UPDATE",
                    &[&key],
                )
                .await
                .map_err(db)?;
            if let Some(row) = last {
                let mut job = Self::job_of(&row, "job")?;
                if transition::joins(&job, window, now) {
                    job.coalesced += 1;
                    tx.execute(
                        "UPDATE relay_jobs SET job = $2 WHERE id = $1",
                        &[&ms(job.id), &serde_json::to_value(&job)?],
                    )
                    .await
                    .map_err(db)?;
                    out.push(Enqueued {
                        id: job.id,
                        coalesced: true,
                    });
                    continue;
                }
            }
            let id: i64 = tx
                .query_one("SELECT nextval('relay_jobs_id')", &[])
                .await
                .map_err(db)?
                .get(0);
            let job = transition::new_job(id as u64, spec, now);
            Self::save(&tx, &job, None).await?;
            out.push(Enqueued {
                id: job.id,
                coalesced: false,
            });
        }
        tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        let added = out.iter().filter(|e| !e.coalesced).count();
        self.queued.fetch_add(added, Ordering::Relaxed);
        self.wake.notify_waiters();
        Ok(out)
    }

    /// Takes the oldest queued job, or a running one whose lease expired
    /// (its relay is gone), and leases it to this relay.
    pub async fn claim(&self) -> Result<Option<Job>, StoreError> {
        let now = (self.clock)();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .query_opt(
                "SELECT job, state FROM relay_jobs
                 WHERE state = 'queued' OR (state = 'running' AND lease_until_ms < $1)
                 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
                &[&ms(now)],
            )
            .await
            .map_err(db)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut job = Self::job_of(&row, "job")?;
        let taken_over = row.get::<_, &str>("state") == "running";
        transition::start(&mut job, now);
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
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let now = (self.clock)();
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let Some(row) = tx
            .query_opt(
                "SELECT job, lease_owner FROM relay_jobs WHERE id = $1 FOR UPDATE",
                &[&ms(id)],
            )
            .await
            .map_err(db)?
        else {
            return Ok(None);
        };
        let mut job = Self::job_of(&row, "job")?;
        let owner: Option<&str> = row.get("lease_owner");
        if job.state == JobState::Running && owner != Some(self.owner.as_str()) {
            tracing::warn!(
                id,
                "another relay holds this job now; this attempt's result is dropped"
            );
            return Ok(None);
        }
        let after = transition::finish(&mut job, outcome, now);
        Self::save(&tx, &job, None).await?;
        if after == After::Queued {
            tx.batch_execute("NOTIFY relay_jobs").await.map_err(db)?;
        }
        tx.commit().await.map_err(db)?;
        decrement(&self.running);
        match after {
            After::Queued => self.queued.fetch_add(1, Ordering::Relaxed),
            After::Retrying(_) => self.retrying.fetch_add(1, Ordering::Relaxed),
            After::Finished => 0,
        };
        Ok(Some(job))
    }

    /// Moves retrying jobs whose time has come back to the queue.
    pub async fn promote_due(&self, now: u64) -> Result<usize, StoreError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let rows = tx
            .query(
                "SELECT job FROM relay_jobs WHERE state = 'retrying' AND next_attempt_ms <= $1 FOR UPDATE SKIP LOCKED",
                &[&ms(now)],
            )
            .await
            .map_err(db)?;
        for row in &rows {
            let mut job = Self::job_of(row, "job")?;
            transition::promote(&mut job);
            Self::save(&tx, &job, None).await?;
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

    /// When the earliest retry is due, if any.
    pub async fn next_due(&self) -> Result<Option<u64>, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT min(next_attempt_ms) FROM relay_jobs WHERE state = 'retrying'",
                &[],
            )
            .await
            .map_err(db)?;
        Ok(row.get::<_, Option<i64>>(0).map(|v| v.max(0) as u64))
    }

    /// Queues a failed job again, with a fresh count of attempts.
    pub async fn retry(&self, id: u64) -> Result<Job, RetryError> {
        let mut c = self.client().await?;
        let tx = c.transaction().await.map_err(db)?;
        let row = tx
            .query_opt(
                "SELECT job FROM relay_jobs WHERE id = $1 FOR UPDATE",
                &[&ms(id)],
            )
            .await
            .map_err(db)?
            .ok_or(RetryError::NotFound(id))?;
        let mut job = Self::job_of(&row, "job")?;
        if job.state != JobState::Failed {
            return Err(RetryError::NotFailed {
                id,
                state: job.state.as_str(),
            });
        }
        let other = tx
            .query_opt(
                "SELECT id FROM relay_jobs WHERE dedupe_key = $1 AND id <> $2 AND state IN ('queued','running','retrying') LIMIT 1",
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

    /// Deletes jobs that finished before `before_ms`.
    pub async fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        let n = self
            .client()
            .await?
            .execute(
                "DELETE FROM relay_jobs WHERE state IN ('succeeded','failed') AND finished_ms < $1",
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
