//! A job as the API shows it and the CLI reads it: one type, so a field
//! added is seen by both (the JSON is its serde form).

use serde::{Deserialize, Serialize};

use super::Job;

/// A job as `/api/v1/jobs` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The job's id.
    pub id: u64,
    /// `queued`, `running`, `retrying`, `succeeded` or `failed`.
    pub state: String,
    /// `copy` or `delete`.
    pub action: String,
    /// The rule that asked for it.
    pub rule: String,
    /// `registry/repository<reference>` on the source.
    pub source: String,
    /// `registry/repository<reference>` on the target.
    pub target: String,
    /// Source registry name.
    pub source_registry: String,
    /// Source repository.
    pub source_repository: String,
    /// Target registry name.
    pub target_registry: String,
    /// Target repository.
    pub target_repository: String,
    /// Tag or digest.
    pub reference: String,
    /// The digest the event reported.
    pub event_digest: Option<String>,
    /// Attempts started.
    pub attempts: u32,
    /// Deliveries folded into this job.
    pub coalesced: u32,
    /// When it was accepted (RFC 3339).
    pub created_at: Option<String>,
    /// When the last attempt started.
    pub started_at: Option<String>,
    /// When it finished.
    pub finished_at: Option<String>,
    /// When the next attempt is due, while retrying; while held, when the
    /// gates are looked at again by themselves.
    pub next_attempt_at: Option<String>,
    /// Since when a gate holds it (`hold_for` counts from here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_since: Option<String>,
    /// Why it is held or refused, in words (a gate's reason); `None` in
    /// other states.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// From the last start to the finish.
    pub duration_seconds: Option<f64>,
    /// The digest written.
    pub digest: Option<String>,
    /// Bytes uploaded.
    pub bytes_copied: u64,
    /// Blobs uploaded.
    pub blobs_copied: u64,
    /// Blobs already on the target.
    pub blobs_skipped: u64,
    /// Blobs linked from another repository.
    pub blobs_mounted: u64,
    /// Blobs whose upload resumed.
    pub blobs_resumed: u64,
    /// Manifests written.
    pub manifests_copied: u64,
    /// Referrers copied.
    pub referrers_copied: u64,
    /// A delete job deleted the manifest.
    pub deleted: bool,
    /// Why nothing was done, when nothing was.
    pub skipped: Option<String>,
    /// Something to know about the result.
    pub note: Option<String>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// The relay that started the last attempt (a shared store only).
    #[serde(default)]
    pub relay: Option<String>,
}

fn rfc3339(ms: Option<u64>) -> Option<String> {
    ms.map(|ms| {
        humantime::format_rfc3339_millis(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    })
}

impl From<&Job> for JobView {
    fn from(j: &Job) -> JobView {
        let s = &j.spec;
        let summary = j.summary.clone().unwrap_or_default();
        JobView {
            id: j.id,
            state: j.state.as_str().to_string(),
            action: s.action.as_str().to_string(),
            rule: s.rule.clone(),
            source: s.source(),
            target: s.target(),
            source_registry: s.from.clone(),
            source_repository: s.source_repository.clone(),
            target_registry: s.to.clone(),
            target_repository: s.target_repository.clone(),
            reference: s.reference.as_str().to_string(),
            event_digest: s.digest.clone(),
            attempts: j.attempts,
            coalesced: j.coalesced,
            created_at: rfc3339(Some(j.created_ms)),
            started_at: rfc3339(j.started_ms),
            finished_at: rfc3339(j.finished_ms),
            next_attempt_at: rfc3339(j.next_attempt_ms),
            held_since: rfc3339(j.held_since_ms),
            reason: matches!(j.state, super::JobState::Held | super::JobState::Refused)
                .then(|| j.last_error.clone())
                .flatten(),
            relay: j.relay.clone(),
            duration_seconds: match (j.started_ms, j.finished_ms) {
                (Some(a), Some(b)) if b >= a => Some((b - a) as f64 / 1000.0),
                _ => None,
            },
            digest: j.summary.as_ref().map(|x| x.digest.clone()),
            bytes_copied: summary.bytes_copied,
            blobs_copied: summary.blobs_copied,
            blobs_skipped: summary.blobs_skipped,
            blobs_mounted: summary.blobs_mounted,
            blobs_resumed: summary.blobs_resumed,
            manifests_copied: summary.manifests_copied,
            referrers_copied: summary.referrers_copied,
            deleted: summary.deleted,
            skipped: summary.skipped,
            note: summary.note,
            last_error: j.last_error.clone(),
        }
    }
}
