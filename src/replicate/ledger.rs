//! What the replicator remembers between attempts and restarts: uploads in
//! progress (so a half-copied layer resumes where it stopped) and where on
//! each target registry a blob is known to live (so it can be mounted
//! instead of sent again).
//!
//! The daemon's ledger is the job store ([`crate::jobs::Store`]: sled, or
//! PostgreSQL shared by several relays, hence async); the one-shot CLI
//! uses [`MemoryLedger`]. Failing to record is logged, never fatal: at
//! worst, bytes are sent again.

use std::collections::HashMap;
use std::sync::Mutex;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

/// An upload in progress on a target, as of the last chunk it accepted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The upload session URL for the next request.
    pub location: String,
    /// Bytes the target has accepted.
    pub offset: u64,
    /// The SHA-256 state after those bytes (hex of the serialised state),
    /// so hashing continues where it stopped without reading them again.
    pub hash_state: String,
    /// When this was recorded (Unix milliseconds).
    pub updated_ms: u64,
}

/// Durable memory for the replicator. Async, as a shared database answers
/// over the network; a ledger kept in this process implements
/// [`LocalLedger`] instead and gets this for free.
pub trait Ledger: Send + Sync {
    /// The upload recorded under `key`, if any.
    fn upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<UploadRecord>>;
    /// Records progress; durable once [`Ledger::persist`] has finished.
    fn save_upload<'a>(&'a self, key: &'a str, record: &'a UploadRecord) -> BoxFuture<'a, ()>;
    /// Waits until everything recorded so far is durable, without blocking
    /// the caller's thread (a blocking fsync per chunk stalled a runtime
    /// worker).
    fn persist(&self) -> BoxFuture<'_, ()>;
    /// Forgets an upload (done, or not resumable).
    fn clear_upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()>;
    /// Repositories on `registry` known to hold `digest`, most recent first.
    fn blob_locations<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Vec<String>>;
    /// Records that `repository` on `registry` holds `digest`.
    fn blob_seen<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
        repository: &'a str,
    ) -> BoxFuture<'a, ()>;
    /// What this daemon last left under `tag` in `repository` on
    /// `registry`: the source manifest's digest and the digest written
    /// (they differ for a platform subset).
    fn tag_synced<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Option<TagRecord>>;
    /// Records that `tag` on `registry` now holds what the source had.
    fn record_tag<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
        record: &'a TagRecord,
    ) -> BoxFuture<'a, ()>;
    /// Waits until this relay may upload `digest` to `registry` with no
    /// other relay sharing the ledger doing the same; the next one then
    /// finds the blob there, or mounts it. A ledger of one process has no
    /// one else to wait for.
    fn upload_turn<'a>(&'a self, _registry: &'a str, _digest: &'a str) -> BoxFuture<'a, FleetTurn> {
        Box::pin(std::future::ready(FleetTurn::default()))
    }
}

/// A relay's turn to upload one blob to one target, across every relay
/// sharing the ledger; the turn ends when this is dropped.
#[derive(Default)]
pub struct FleetTurn(Option<Box<dyn FnOnce() + Send>>);

impl FleetTurn {
    /// A turn that `release` ends.
    pub fn new(release: impl FnOnce() + Send + 'static) -> FleetTurn {
        FleetTurn(Some(Box::new(release)))
    }
}

impl Drop for FleetTurn {
    fn drop(&mut self) {
        if let Some(release) = self.0.take() {
            release();
        }
    }
}

/// A [`Ledger`] kept in this process (memory, or the embedded store): the
/// same operations, answered at once.
pub trait LocalLedger: Send + Sync {
    /// See [`Ledger::upload`].
    fn upload(&self, key: &str) -> Option<UploadRecord>;
    /// See [`Ledger::save_upload`].
    fn save_upload(&self, key: &str, record: &UploadRecord);
    /// See [`Ledger::persist`]; nothing to wait for by default.
    fn persist(&self) -> BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    /// See [`Ledger::clear_upload`].
    fn clear_upload(&self, key: &str);
    /// See [`Ledger::blob_locations`].
    fn blob_locations(&self, registry: &str, digest: &str) -> Vec<String>;
    /// See [`Ledger::blob_seen`].
    fn blob_seen(&self, registry: &str, digest: &str, repository: &str);
    /// See [`Ledger::tag_synced`].
    fn tag_synced(&self, registry: &str, repository: &str, tag: &str) -> Option<TagRecord>;
    /// See [`Ledger::record_tag`].
    fn record_tag(&self, registry: &str, repository: &str, tag: &str, record: &TagRecord);
}

impl<T: LocalLedger> Ledger for T {
    fn upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Option<UploadRecord>> {
        Box::pin(std::future::ready(LocalLedger::upload(self, key)))
    }
    fn save_upload<'a>(&'a self, key: &'a str, record: &'a UploadRecord) -> BoxFuture<'a, ()> {
        LocalLedger::save_upload(self, key, record);
        Box::pin(std::future::ready(()))
    }
    fn persist(&self) -> BoxFuture<'_, ()> {
        LocalLedger::persist(self)
    }
    fn clear_upload<'a>(&'a self, key: &'a str) -> BoxFuture<'a, ()> {
        LocalLedger::clear_upload(self, key);
        Box::pin(std::future::ready(()))
    }
    fn blob_locations<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
    ) -> BoxFuture<'a, Vec<String>> {
        Box::pin(std::future::ready(LocalLedger::blob_locations(
            self, registry, digest,
        )))
    }
    fn blob_seen<'a>(
        &'a self,
        registry: &'a str,
        digest: &'a str,
        repository: &'a str,
    ) -> BoxFuture<'a, ()> {
        LocalLedger::blob_seen(self, registry, digest, repository);
        Box::pin(std::future::ready(()))
    }
    fn tag_synced<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
    ) -> BoxFuture<'a, Option<TagRecord>> {
        Box::pin(std::future::ready(LocalLedger::tag_synced(
            self, registry, repository, tag,
        )))
    }
    fn record_tag<'a>(
        &'a self,
        registry: &'a str,
        repository: &'a str,
        tag: &'a str,
        record: &'a TagRecord,
    ) -> BoxFuture<'a, ()> {
        LocalLedger::record_tag(self, registry, repository, tag, record);
        Box::pin(std::future::ready(()))
    }
}

/// A tag this daemon replicated: see [`Ledger::tag_synced`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TagRecord {
    /// The source manifest's digest.
    pub source: String,
    /// The digest written under the tag on the target.
    pub target: String,
}

/// The key of a tag record.
pub fn tag_key(registry: &str, repository: &str, tag: &str) -> String {
    format!("{registry}\n{repository}\n{tag}")
}

/// How many repositories are remembered per blob.
pub const MAX_LOCATIONS: usize = 8;

/// Adds `repository` to the front of a location list, without duplicates,
/// keeping at most [`MAX_LOCATIONS`].
pub fn remember(list: &mut Vec<String>, repository: &str) {
    list.retain(|r| r != repository);
    list.insert(0, repository.to_string());
    list.truncate(MAX_LOCATIONS);
}

/// A ledger that lives as long as the process (for `harbor-relay replicate`).
#[derive(Default)]
pub struct MemoryLedger {
    uploads: Mutex<HashMap<String, UploadRecord>>,
    blobs: Mutex<HashMap<String, Vec<String>>>,
    tags: Mutex<HashMap<String, TagRecord>>,
}

impl LocalLedger for MemoryLedger {
    fn upload(&self, key: &str) -> Option<UploadRecord> {
        self.uploads.lock().ok()?.get(key).cloned()
    }

    fn save_upload(&self, key: &str, record: &UploadRecord) {
        if let Ok(mut m) = self.uploads.lock() {
            m.insert(key.to_string(), record.clone());
        }
    }

    fn clear_upload(&self, key: &str) {
        if let Ok(mut m) = self.uploads.lock() {
            m.remove(key);
        }
    }

    fn blob_locations(&self, registry: &str, digest: &str) -> Vec<String> {
        self.blobs
            .lock()
            .ok()
            .and_then(|m| m.get(&format!("{registry}\n{digest}")).cloned())
            .unwrap_or_default()
    }

    fn blob_seen(&self, registry: &str, digest: &str, repository: &str) {
        if let Ok(mut m) = self.blobs.lock() {
            remember(
                m.entry(format!("{registry}\n{digest}")).or_default(),
                repository,
            );
        }
    }

    fn tag_synced(&self, registry: &str, repository: &str, tag: &str) -> Option<TagRecord> {
        self.tags
            .lock()
            .ok()?
            .get(&tag_key(registry, repository, tag))
            .cloned()
    }

    fn record_tag(&self, registry: &str, repository: &str, tag: &str, record: &TagRecord) {
        if let Ok(mut m) = self.tags.lock() {
            m.insert(tag_key(registry, repository, tag), record.clone());
        }
    }
}
