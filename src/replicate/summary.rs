//! What a finished copy did: the result the copier returns and the job
//! store keeps with a succeeded job.

use serde::{Deserialize, Serialize};

/// What a finished copy did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Digest of the top manifest copied.
    pub digest: String,
    /// Manifests written to the target (children and top).
    pub manifests_copied: u64,
    /// The tag was written (moved onto a manifest the target already had,
    /// or with the top manifest).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tag_written: bool,
    /// Blobs uploaded.
    pub blobs_copied: u64,
    /// Blobs already on the target.
    pub blobs_skipped: u64,
    /// Blobs linked from another repository of the target (no bytes sent).
    #[serde(default)]
    pub blobs_mounted: u64,
    /// Blobs whose upload continued where an earlier attempt stopped.
    #[serde(default)]
    pub blobs_resumed: u64,
    /// Referrers (signatures, SBOMs, attestations) copied with it.
    #[serde(default)]
    pub referrers_copied: u64,
    /// Bytes uploaded.
    pub bytes_copied: u64,
    /// For a delete job: whether the manifest was deleted on the target.
    #[serde(default)]
    pub deleted: bool,
    /// Why nothing was done, when nothing was (e.g. `override = false`).
    #[serde(default)]
    pub skipped: Option<String>,
    /// Something the admin should know about the result (e.g. a platform
    /// subset gives the index a new digest).
    #[serde(default)]
    pub note: Option<String>,
}
