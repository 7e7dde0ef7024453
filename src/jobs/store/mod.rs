//! The durable job store: one interface ([`Store`]) over two backends.
//!
//! - [`SledStore`] (`embedded.rs`), embedded: the default, for one relay on a
//!   jump VM; `store.path`.
//! - [`PgStore`] (`postgres/`), PostgreSQL: several relays share one
//!   queue; `store.url`. Tested with the same suite as sled against a real
//!   server (`tests/store_postgres/`).
//!
//! Either way a job is accepted (and a webhook answered `2xx`) only once
//! it is committed, duplicates fold into the active job with the same
//! dedupe key, failed attempts wait and run again, and jobs left running
//! by a crash run again.

use crate::replicate::ledger::Ledger;

mod embedded;
mod postgres;

pub use embedded::SledStore;
pub use postgres::{DEFAULT_LEASE, DbTls, PgStore, tend};

pub mod released;
pub mod transfer;
pub mod transition;

/// How far past a fan-out job's id its siblings are looked for: they are
/// enqueued together (one webhook, one transaction), so they sit within a
/// few ids of it unless many other enqueues interleave; one missed runs
/// alone, reading what its target lacks again.
pub const SIBLINGS_SCAN: u64 = 64;

/// Default for [`SledStore::set_coalesce_window`]: ten minutes.
pub const DEFAULT_COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The store the daemon runs on: one of the backends, behind one set of
/// methods (enum dispatch: no trait objects, no boxed futures).
pub enum Store {
    /// Embedded, on this host (`store.path`).
    Sled(std::sync::Arc<SledStore>),
    /// Shared by several relays (`store.url`), the replicator's ledger
    /// included.
    Postgres {
        /// The queue and the ledger.
        store: std::sync::Arc<PgStore>,
    },
}

/// Calls `$m` on whichever backend runs.
macro_rules! each {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Sled($s) => $e,
            Store::Postgres { store: $s } => $e,
        }
    };
}

impl Store {
    /// Opens the embedded store in `path`; returns it and how many jobs a
    /// crash left running, queued again.
    pub fn open(path: &std::path::Path) -> Result<(Store, usize), StoreError> {
        let (s, recovered) = SledStore::open(path)?;
        Ok((Store::Sled(std::sync::Arc::new(s)), recovered))
    }

    /// Opens the shared store at `url` (see [`PgStore::open`]).
    pub async fn open_postgres(
        connect: tokio_postgres::Config,
        ca_pem: Option<&[u8]>,
        owner: &str,
        lease: std::time::Duration,
    ) -> Result<Store, StoreError> {
        let tls = DbTls::new(&connect, ca_pem)?;
        let store = PgStore::open(connect, tls, owner, lease).await?;
        Ok(Store::Postgres {
            store: std::sync::Arc::new(store),
        })
    }

    /// The PostgreSQL backend, if that is the one running.
    pub fn postgres(&self) -> Option<&std::sync::Arc<PgStore>> {
        match self {
            Store::Postgres { store, .. } => Some(store),
            Store::Sled(_) => None,
        }
    }

    /// Replaces the clock (tests move time instead of sleeping). Only
    /// before the store is shared (its ledger handed out): a store already
    /// shared keeps its clock, and this says so by returning false.
    pub fn set_clock(&mut self, clock: fn() -> u64) -> bool {
        match self {
            Store::Sled(s) => match std::sync::Arc::get_mut(s) {
                Some(s) => {
                    s.set_clock(clock);
                    true
                }
                None => false,
            },
            Store::Postgres { store, .. } => match std::sync::Arc::get_mut(store) {
                Some(s) => {
                    s.set_clock(clock);
                    true
                }
                None => false,
            },
        }
    }

    /// See [`SledStore::set_max_queued`].
    pub fn set_max_queued(&self, max: usize) {
        each!(self, s => s.set_max_queued(max))
    }

    /// See [`SledStore::set_coalesce_window`].
    pub fn set_coalesce_window(&self, window: std::time::Duration) {
        each!(self, s => s.set_coalesce_window(window))
    }

    /// Adds jobs (folding duplicates); returns once they are committed.
    pub async fn enqueue(
        &self,
        specs: Vec<crate::jobs::JobSpec>,
    ) -> Result<Vec<Enqueued>, StoreError> {
        each!(self, s => s.enqueue(specs).await)
    }

    /// Takes the next job for a worker.
    pub async fn claim(&self) -> Result<Option<crate::jobs::Job>, StoreError> {
        each!(self, s => s.claim().await)
    }

    /// The other queued jobs of a fan-out `job` belongs to, claimed with
    /// it (none for a job with one target): a worker runs them together
    /// over one read of the source.
    pub async fn claim_siblings(
        &self,
        job: &crate::jobs::Job,
    ) -> Result<Vec<crate::jobs::Job>, StoreError> {
        each!(self, s => s.claim_siblings(job).await)
    }

    /// Jobs waiting (queued, retrying, held) by target registry, looking
    /// at `cap` of them at most on the embedded store: each site's backlog.
    pub async fn waiting_by_target(
        &self,
        cap: usize,
    ) -> Result<std::collections::BTreeMap<String, usize>, StoreError> {
        match self {
            Store::Sled(s) => s.waiting_by_target(cap),
            Store::Postgres { store, .. } => store.waiting_by_target(cap).await,
        }
    }

    /// Records how an attempt ended.
    pub async fn finish(
        &self,
        id: u64,
        outcome: crate::jobs::Outcome,
    ) -> Result<Option<crate::jobs::Job>, StoreError> {
        each!(self, s => s.finish(id, outcome).await)
    }

    /// Queues retrying jobs whose time has come.
    pub async fn promote_due(&self, now: u64) -> Result<usize, StoreError> {
        each!(self, s => s.promote_due(now).await)
    }

    /// Queues at once the held jobs of source `repository`: an event there
    /// (a signature, a referrer, a scan) may settle their gates. Returns
    /// how many.
    pub async fn release(&self, repository: &str) -> Result<usize, StoreError> {
        each!(self, s => s.release(repository).await)
    }

    /// Queues at once the jobs waiting for `registry`, which answers again.
    pub async fn release_down(&self, registry: &str) -> Result<usize, StoreError> {
        each!(self, s => s.release_down(registry).await)
    }

    /// When the longest-held job was first held (Unix ms), if any is.
    pub async fn oldest_held(&self) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.oldest_held().await)
    }

    /// When the earliest retry is due.
    pub async fn next_due(&self) -> Result<Option<u64>, StoreError> {
        match self {
            Store::Sled(s) => s.next_due(),
            Store::Postgres { store, .. } => store.next_due().await,
        }
    }

    /// Queues a failed job again.
    pub async fn retry(&self, id: u64) -> Result<crate::jobs::Job, RetryError> {
        each!(self, s => s.retry(id).await)
    }

    /// Cancels a job: a waiting one fails at once with `why`; a running
    /// one is [`CancelError::Running`] (its worker must be told); a
    /// finished one is refused.
    pub async fn cancel(&self, id: u64, why: &str) -> Result<crate::jobs::Job, CancelError> {
        each!(self, s => s.cancel(id, why).await)
    }

    /// Deletes jobs finished before `before_ms`.
    pub async fn prune(&self, before_ms: u64) -> Result<usize, StoreError> {
        each!(self, s => s.prune(before_ms).await)
    }

    /// One job by id.
    pub async fn get(&self, id: u64) -> Result<Option<crate::jobs::Job>, StoreError> {
        match self {
            Store::Sled(s) => s.get(id),
            Store::Postgres { store, .. } => store.get(id).await,
        }
    }

    /// Jobs newest first.
    pub async fn list(
        &self,
        state: Option<crate::jobs::JobState>,
        limit: usize,
    ) -> Result<Vec<crate::jobs::Job>, StoreError> {
        match self {
            Store::Sled(s) => s.list(state, limit),
            Store::Postgres { store, .. } => store.list(state, limit).await,
        }
    }

    /// Bytes the store takes.
    pub fn size_on_disk(&self) -> u64 {
        each!(self, s => s.size_on_disk())
    }

    /// Jobs waiting for a worker.
    pub fn queued(&self) -> usize {
        each!(self, s => s.queued())
    }

    /// Jobs being copied.
    pub fn running(&self) -> usize {
        each!(self, s => s.running())
    }

    /// Jobs waiting for their next attempt.
    pub fn retrying(&self) -> usize {
        each!(self, s => s.retrying())
    }

    /// Jobs held at a gate.
    pub fn held(&self) -> usize {
        each!(self, s => s.held())
    }

    /// Group-commit flushes so far (sled; each an fsync). PostgreSQL
    /// commits each transaction itself: 0.
    pub fn flushes(&self) -> u64 {
        match self {
            Store::Sled(s) => s.flushes(),
            Store::Postgres { .. } => 0,
        }
    }

    /// Waits until new work may be there.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        each!(self, s => s.notified())
    }

    /// Writes everything out (on shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        match self {
            Store::Sled(s) => s.flush().await,
            Store::Postgres { .. } => Ok(()),
        }
    }

    /// Whether this relay runs the next reconcile pass of `rule`: always
    /// on the embedded store; on a shared one, one relay per `interval`.
    pub async fn reconcile_turn(
        &self,
        rule: &str,
        interval: std::time::Duration,
    ) -> Result<bool, StoreError> {
        match self {
            Store::Sled(_) => Ok(true),
            Store::Postgres { store, .. } => store.reconcile_turn(rule, interval).await,
        }
    }

    /// The replicator's ledger, kept by whichever backend runs: on sled
    /// beside the jobs, on PostgreSQL in tables every relay reads.
    pub fn ledger(&self) -> std::sync::Arc<dyn Ledger> {
        match self {
            Store::Sled(s) => s.clone(),
            Store::Postgres { store } => store.clone(),
        }
    }

    /// Why the store cannot serve now (PostgreSQL unreachable, the
    /// embedded store unable to write), for `/readyz`; `None` when it can.
    pub fn problem(&self) -> Option<String> {
        match self {
            Store::Sled(s) => s
                .write_problem()
                .map(|(e, since)| format!("it cannot write (for {}s): {e}", since.as_secs())),
            Store::Postgres { store, .. } => store.problem(),
        }
    }

    /// How long the embedded store has been unable to write, and why:
    /// sled refuses every write after one failed, so the daemon restarts
    /// to open it again ([`crate::daemon`]). `None` on PostgreSQL, whose
    /// connections come back by themselves.
    pub fn write_failing(&self) -> Option<(String, std::time::Duration)> {
        match self {
            Store::Sled(s) => s.write_problem(),
            Store::Postgres { .. } => None,
        }
    }
}

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself failed (disk full, corruption, locked).
    #[error("job store: {0}")]
    Db(#[from] sled::Error),
    /// The embedded store opened behind its high-water mark: jobs it had
    /// accepted are gone.
    #[error(
        "job store {}: it holds jobs up to id {high}, but jobs up to id {mark} were accepted (its high-water mark, {}/{}): part of the store was lost (a truncated or restored file). Restore it from a backup, or remove that file to start with what is left",
        .path.display(), .path.display(), embedded::MARK_FILE
    )]
    Behind {
        /// The store's directory.
        path: std::path::PathBuf,
        /// The highest job id it holds.
        high: u64,
        /// The highest it had accepted.
        mark: u64,
    },
    /// Another process (a running daemon) holds the embedded store.
    #[error(
        "job store {}: another harbor-relay holds it (is the daemon running? stop it first)",
        .0.display()
    )]
    InUse(std::path::PathBuf),
    /// PostgreSQL refused or could not be reached.
    #[error("job store (PostgreSQL): {0}")]
    Postgres(String),
    /// A record could not be (de)serialised.
    #[error("job store: bad record: {0}")]
    Record(#[from] serde_json::Error),
    /// A job that names something no registry could hold (a bad repository,
    /// tag or digest): refused before it is stored.
    #[error("job refused: {0}")]
    Invalid(String),
    /// `jobs.max_queued` jobs are already waiting.
    #[error(
        "the queue is full: {waiting} jobs are waiting (jobs.max_queued = {max}); try again later"
    )]
    Full {
        /// Jobs queued or due for a retry.
        waiting: usize,
        /// The cap.
        max: usize,
    },
}

/// Why a cancel was refused, or that it must reach a worker.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// No job with that id.
    #[error("no job {0}")]
    NotFound(u64),
    /// Over already.
    #[error("job {id} is {state} already; nothing to cancel")]
    Finished {
        /// The job.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// A worker is running it: the worker must be told.
    #[error("job {id} is running{}", .relay.as_ref().map(|r| format!(" on relay {r}")).unwrap_or_default())]
    Running {
        /// The job.
        id: u64,
        /// The relay running it, on a shared store.
        relay: Option<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a manual retry was refused.
#[derive(Debug, thiserror::Error)]
pub enum RetryError {
    /// No job with that id.
    #[error("no job {0}")]
    NotFound(u64),
    /// Only failed jobs can be retried.
    #[error("job {id} is {state}; only failed jobs can be retried")]
    NotFailed {
        /// The job.
        id: u64,
        /// Its state.
        state: &'static str,
    },
    /// Another job for the same artifact is already active.
    #[error("job {active} is already replicating the same artifact")]
    Duplicate {
        /// The active job.
        active: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sled::Error> for RetryError {
    fn from(e: sled::Error) -> Self {
        RetryError::Store(StoreError::Db(e))
    }
}

impl From<sled::Error> for CancelError {
    fn from(e: sled::Error) -> Self {
        CancelError::Store(StoreError::Db(e))
    }
}

/// The outcome of enqueueing one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: u64,
    /// True when an active job for the same thing already existed.
    pub coalesced: bool,
}

#[cfg(test)]
pub(crate) mod tests;
