//! What the replicator remembers between attempts and restarts: uploads in
//! progress (so a half-copied layer resumes where it stopped) and where on
//! each target registry a blob is known to live (so it can be mounted
//! instead of sent again).
//!
//! The daemon's ledger is the job store ([`crate::jobs::Store`]); the
//! one-shot CLI uses [`MemoryLedger`]. Failing to record is logged, never
//! fatal: at worst, bytes are sent again.

use std::collections::HashMap;
use std::sync::Mutex;

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

/// Durable memory for the replicator.
pub trait Ledger: Send + Sync {
    /// The upload recorded under `key`, if any.
    fn upload(&self, key: &str) -> Option<UploadRecord>;
    /// Records progress; durable once [`Ledger::persist`] has finished.
    fn save_upload(&self, key: &str, record: &UploadRecord);
    /// Waits until everything recorded so far is on disk, without blocking
    /// the caller's thread (a blocking fsync per chunk stalled a runtime
    /// worker). The in-memory ledger has nothing to wait for.
    fn persist(&self) -> futures_util::future::BoxFuture<'_, ()> {
        Box::pin(std::future::ready(()))
    }
    /// Forgets an upload (done, or not resumable).
    fn clear_upload(&self, key: &str);
    /// Repositories on `registry` known to hold `digest`, most recent first.
    fn blob_locations(&self, registry: &str, digest: &str) -> Vec<String>;
    /// Records that `repository` on `registry` holds `digest`.
    fn blob_seen(&self, registry: &str, digest: &str, repository: &str);
    /// What this daemon last left under `tag` in `repository` on
    /// `registry`: the source manifest's digest and the digest written
    /// (they differ for a platform subset).
    fn tag_synced(&self, registry: &str, repository: &str, tag: &str) -> Option<TagRecord>;
    /// Records that `tag` on `registry` now holds what the source had.
    fn record_tag(&self, registry: &str, repository: &str, tag: &str, record: &TagRecord);
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

impl Ledger for MemoryLedger {
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
