//! The durable job store: one interface ([`Store`]) over two backends.
//!
//! - [`SledStore`] (`embedded.rs`), embedded: the default, for one relay on a
//!   jump VM; `store.path`.
//! - PostgreSQL, for several relays sharing one queue: not selectable yet
//!   (issue 19 is in progress; `tests/store_postgres.rs` holds its test
//!   server).
//!
//! Either way a job is accepted (and a webhook answered `2xx`) only once
//! it is committed, duplicates fold into the active job with the same
//! dedupe key, failed attempts wait and run again, and jobs left running
//! by a crash run again.

mod embedded;

pub use embedded::SledStore;

pub mod transition;

/// Default for [`SledStore::set_coalesce_window`]: ten minutes.
pub const DEFAULT_COALESCE_WINDOW: std::time::Duration = std::time::Duration::from_secs(600);

/// The store the daemon runs on.
pub type Store = SledStore;

/// A store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database itself failed (disk full, corruption, locked).
    #[error("job store: {0}")]
    Db(#[from] sled::Error),
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

/// The outcome of enqueueing one spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The job's id.
    pub id: u64,
    /// True when an active job for the same thing already existed.
    pub coalesced: bool,
}

#[cfg(test)]
mod tests;
