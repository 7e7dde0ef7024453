//! What one copy has done so far, shared by the blobs and manifests it
//! moves at once: the counts its [`Summary`] reports, and the per-job sets
//! that keep a graph from costing more than one request per node.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{ReplicateError, Summary};

/// How many descriptors (child manifests and blobs) one job may visit: an
/// index of 100 platforms with 50 layers each is 5,100; a graph built to
/// make the relay work (a diamond of indexes listing each other) stops
/// here with a clear failure instead of costing quadratic requests.
pub(super) const MAX_DESCRIPTORS: u64 = 20_000;

/// One copy's progress.
#[derive(Default)]
pub(super) struct Progress {
    pub(super) manifests_copied: AtomicU64,
    pub(super) blobs_copied: AtomicU64,
    pub(super) blobs_skipped: AtomicU64,
    pub(super) blobs_mounted: AtomicU64,
    pub(super) blobs_resumed: AtomicU64,
    pub(super) bytes_copied: AtomicU64,
    pub(super) referrers_copied: AtomicU64,
    /// The job's tag was written.
    pub(super) tag_written: std::sync::atomic::AtomicBool,
    /// Digests the source said it holds in the job's source repository
    /// (the proof a skip or a mount needs), asked once per job.
    proven: std::sync::Mutex<HashSet<String>>,
    /// Manifests this job found on the target or wrote there: each is
    /// asked or written once per job, however many indexes list it.
    present: std::sync::Mutex<HashSet<String>>,
    /// Descriptors visited so far (see [`MAX_DESCRIPTORS`]).
    visited: AtomicU64,
}

impl Progress {
    pub(super) fn proven(&self, digest: &str) -> bool {
        self.proven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest)
    }

    pub(super) fn is_present(&self, digest: &str) -> bool {
        self.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(digest)
    }

    pub(super) fn now_present(&self, digest: &str) {
        self.present
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string());
    }

    /// Counts `n` more descriptors visited; an error past the cap.
    pub(super) fn visit(&self, n: usize) -> Result<(), ReplicateError> {
        let total = self.visited.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        match total > MAX_DESCRIPTORS {
            true => Err(ReplicateError::TooMany(MAX_DESCRIPTORS)),
            false => Ok(()),
        }
    }

    pub(super) fn prove(&self, digest: &str) {
        self.proven
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest.to_string());
    }

    /// The summary of a copy that wrote `digest`.
    pub(super) fn summary(self, digest: String, note: Option<String>) -> Summary {
        Summary {
            digest,
            manifests_copied: self.manifests_copied.into_inner(),
            tag_written: self.tag_written.into_inner(),
            blobs_copied: self.blobs_copied.into_inner(),
            blobs_skipped: self.blobs_skipped.into_inner(),
            blobs_mounted: self.blobs_mounted.into_inner(),
            blobs_resumed: self.blobs_resumed.into_inner(),
            bytes_copied: self.bytes_copied.into_inner(),
            deleted: false,
            skipped: None,
            referrers_copied: self.referrers_copied.into_inner(),
            note,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_visits_at_most_max_descriptors() {
        let p = Progress::default();
        assert!(p.visit(MAX_DESCRIPTORS as usize - 1).is_ok());
        assert!(p.visit(1).is_ok(), "the cap itself is allowed");
        let e = p.visit(1).expect_err("one past the cap");
        assert!(e.is_permanent());
        assert!(e.to_string().contains("more than 20000"), "{e}");
    }

    #[test]
    fn a_manifest_found_or_written_is_not_asked_again() {
        let p = Progress::default();
        assert!(!p.is_present("sha256:a"));
        p.now_present("sha256:a");
        assert!(p.is_present("sha256:a"));
    }
}
