//! Jobs: one artifact to copy under one rule, kept durably until done.
//!
//! [`store`] keeps jobs in the embedded database and hands them to
//! [`workers`], which run them through [`crate::replicate`]. A job holds no
//! credentials: only names of registries, repositories and references.

pub mod outage;
pub mod plan;
pub mod store;
mod view;
pub mod workers;

use serde::{Deserialize, Serialize};

use crate::reference::Reference;
use crate::registry::Registry;
use crate::replicate::CopyRequest;
use crate::rules::Plan;

pub use crate::clock::now_ms;
pub use crate::replicate::Summary;

pub use store::{CancelError, Enqueued, RetryError, Store, StoreError};
pub use view::JobView;
pub use workers::Workers;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a worker.
    Queued,
    /// A worker is copying it (or was, when the daemon died).
    Running,
    /// The last attempt failed; another is due at `next_attempt_ms`.
    Retrying,
    /// Copied; the tag resolves on the target.
    Succeeded,
    /// Gave up; `last_error` says why.
    Failed,
    /// Waiting at a gate (a signature, a scan): `last_error` says for
    /// what; an event of its repository or the `gate_recheck` timer (at
    /// `next_attempt_ms`) looks again.
    Held,
    /// A gate said no for good (a scan above the threshold): `last_error`
    /// says why. Not retried; a fixed image is a new push, a new job.
    Refused,
}

impl JobState {
    /// The name used in the API and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Held => "held",
            JobState::Refused => "refused",
        }
    }

    /// Parses the API's `?state=` value.
    pub fn parse(s: &str) -> Option<JobState> {
        match s {
            "queued" => Some(JobState::Queued),
            "running" => Some(JobState::Running),
            "retrying" => Some(JobState::Retrying),
            "succeeded" => Some(JobState::Succeeded),
            "failed" => Some(JobState::Failed),
            "held" => Some(JobState::Held),
            "refused" => Some(JobState::Refused),
            _ => None,
        }
    }

    /// True while the job still has work to do.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            JobState::Queued | JobState::Running | JobState::Retrying | JobState::Held
        )
    }

    /// True while it waits for a time (`next_attempt_ms`): a retry, or a
    /// held job's next look.
    pub fn is_waiting(self) -> bool {
        matches!(self, JobState::Retrying | JobState::Held)
    }
}

/// What a job does on the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Copy the artifact (a push).
    #[default]
    Copy,
    /// Delete it (a replicated `DELETE_ARTIFACT`).
    Delete,
}

impl Action {
    /// The name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Copy => "copy",
            Action::Delete => "delete",
        }
    }
}

/// What to copy: everything a job needs, decided when it is enqueued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The rule that asked for it.
    pub rule: String,
    /// Source registry name.
    pub from: String,
    /// Target registry name.
    pub to: String,
    /// One of a fan-out: the rule has other targets, whose jobs for the
    /// same artifact ([`JobSpec::fanout_group`]) a worker claims with this
    /// one and runs over one read of the source.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fanout: bool,
    /// Repository on the source.
    pub source_repository: String,
    /// Repository on the target.
    pub target_repository: String,
    /// Tag or digest to copy.
    pub reference: Reference,
    /// The digest the event reported, if any.
    pub digest: Option<String>,
    /// When the event happened (Unix seconds), for lag.
    pub occurred_at: Option<i64>,
    /// Copy or delete.
    #[serde(default)]
    pub action: Action,
    /// Overwrite a target tag that points at another digest.
    #[serde(default = "yes")]
    pub overwrite: bool,
    /// Copy signatures, SBOMs and other referrers too.
    #[serde(default = "yes")]
    pub referrers: bool,
    /// Only these platforms of an index (a new index is written).
    #[serde(default)]
    pub platforms: Option<Vec<String>>,
    /// Copy only if it is a referrer: see [`crate::rules::Plan::referrer_only`].
    #[serde(default)]
    pub referrer_only: bool,
    /// Only artifacts of these Harbor types; see
    /// [`crate::rules::Plan::artifact_types`].
    #[serde(default)]
    pub artifact_types: Option<Vec<String>>,
    /// Only artifacts carrying every one of these Harbor labels; see
    /// [`crate::rules::Plan::labels`].
    #[serde(default)]
    pub labels: Option<Vec<String>>,
    /// The rule's `max_blob_size`; see [`crate::rules::Plan::max_blob_size`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_blob_size: Option<u64>,
    /// The rule had gates when the job was made: should the rule be gone
    /// when it runs, it fails rather than crossing ungated.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub gated: bool,
}

fn yes() -> bool {
    true
}

impl JobSpec {
    /// The job a rule's plan asks for, for one artifact: the one place a
    /// [`Plan`] becomes a job, so a field added to either is carried.
    pub fn from_plan(
        plan: Plan,
        action: Action,
        reference: Reference,
        digest: Option<String>,
        occurred_at: Option<i64>,
    ) -> JobSpec {
        JobSpec {
            rule: plan.rule,
            from: plan.from,
            to: plan.to,
            fanout: plan.fanout,
            source_repository: plan.source_repository,
            target_repository: plan.target_repository,
            reference,
            digest,
            occurred_at,
            action,
            overwrite: plan.overwrite,
            referrers: plan.referrers,
            platforms: plan.platforms,
            referrer_only: plan.referrer_only,
            artifact_types: plan.artifact_types,
            labels: plan.labels,
            max_blob_size: plan.max_blob_size,
            gated: plan.gated,
        }
    }

    /// What the copier needs to run this job between `source` and
    /// `target` (the registries its `from` and `to` name) under its rule's
    /// `gates`: the one place a job becomes a [`CopyRequest`], so no caller
    /// can copy without saying which gates apply.
    pub fn copy_request<'a>(
        &'a self,
        source: &'a Registry,
        target: &'a Registry,
        gates: Option<&'a crate::gate::Gates>,
    ) -> CopyRequest<'a> {
        CopyRequest {
            source,
            source_repository: &self.source_repository,
            reference: &self.reference,
            target,
            target_repository: &self.target_repository,
            overwrite: self.overwrite,
            referrers: self.referrers,
            platforms: self.platforms.as_deref(),
            event_digest: self.digest.as_deref(),
            referrer_only: self.referrer_only,
            artifact_types: self.artifact_types.as_deref(),
            labels: self.labels.as_deref(),
            max_blob_size: self.max_blob_size,
            moved: None,
            cancel: None,
            last_attempt: false,
            rule: &self.rule,
            gates,
            seat: None,
        }
    }

    /// Checks every name the job will put in a URL with the grammar webhook
    /// input passes, so nothing a registry answered (a reconcile listing, a
    /// digest header) reaches another registry's URL unchecked.
    pub fn validate(&self) -> Result<(), String> {
        use crate::reference::{is_valid_digest, is_valid_repository, is_valid_tag};
        let shown = |s: &str| crate::registry::cut(s);
        for (what, repo) in [
            ("source repository", &self.source_repository),
            ("target repository", &self.target_repository),
        ] {
            if !is_valid_repository(repo) {
                return Err(format!("{what} `{}` is not a repository name", shown(repo)));
            }
        }
        match &self.reference {
            Reference::Tag(t) if !is_valid_tag(t) => {
                return Err(format!("`{}` is not a tag", shown(t)));
            }
            Reference::Digest(d) if !is_valid_digest(d) => {
                return Err(format!("`{}` is not a digest", shown(d)));
            }
            _ => {}
        }
        match &self.digest {
            Some(d) if !is_valid_digest(d) => Err(format!("`{}` is not a digest", shown(d))),
            _ => Ok(()),
        }
    }

    /// `registry/repository:tag` (or `@digest`) on the source, as the API,
    /// the CLI and the logs name it.
    pub fn source(&self) -> String {
        format!("{}/{}{}", self.from, self.source_repository, self.reference)
    }

    /// The same on the target.
    pub fn target(&self) -> String {
        format!("{}/{}{}", self.to, self.target_repository, self.reference)
    }

    /// For a deletion, the dedupe key of the copy of the same artifact
    /// under the same rule (its push): the job a delete is weighed against.
    pub fn push_key(&self) -> Option<String> {
        (self.action == Action::Delete).then(|| {
            JobSpec {
                action: Action::Copy,
                ..self.clone()
            }
            .dedupe_key()
        })
    }

    /// Two deliveries of the same event (or the same push seen twice) give
    /// the same key; while a job with this key is active, new ones join it.
    /// A fan-out's jobs differ only in their target, which their keys
    /// then name; a rule with one target needs no more than its name (and
    /// keeps the keys stores already hold).
    pub fn dedupe_key(&self) -> String {
        let group = self.group_key();
        match self.fanout {
            true => format!("{group}\n{}", self.to),
            false => group,
        }
    }

    /// What the jobs of one fan-out (one artifact, one rule, each target)
    /// share: a worker that claims one of them claims the others queued
    /// beside it. `None` for a job with one target.
    pub fn fanout_group(&self) -> Option<String> {
        self.fanout.then(|| self.group_key())
    }

    fn group_key(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.action.as_str(),
            self.rule,
            self.source_repository,
            self.target_repository,
            self.reference,
            self.digest.as_deref().unwrap_or("")
        )
    }
}

/// A job as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Unique, increasing id.
    pub id: u64,
    /// What to copy.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// How many times a worker started it.
    pub attempts: u32,
    /// When it was accepted (Unix milliseconds).
    pub created_ms: u64,
    /// When the last attempt started.
    pub started_ms: Option<u64>,
    /// When it finished.
    pub finished_ms: Option<u64>,
    /// How many more deliveries were folded into this job.
    pub coalesced: u32,
    /// What the copy did, once succeeded.
    pub summary: Option<Summary>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When the next attempt is due, while `retrying`.
    #[serde(default)]
    pub next_attempt_ms: Option<u64>,
    /// The relay that started the last attempt, as its leases name it
    /// (host/pid), on a store several relays share: which one to look at
    /// when a job is slow. `None` on the embedded store (one relay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<String>,
    /// A deletion of the same artifact came after this copy: no later
    /// delivery folds into it, so a push after the delete copies again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub window_closed: bool,
    /// The registry that was down when its last attempt failed: the one
    /// probe watching that registry queues it again when it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub down: Option<String>,
    /// When a gate first held it (`hold_for` counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_since_ms: Option<u64>,
}

/// How an attempt ended, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Copied.
    Succeeded(Summary),
    /// Failed; try again at `at_ms`.
    Retry {
        /// Why it failed.
        error: String,
        /// When to try again (Unix milliseconds).
        at_ms: u64,
    },
    /// Failed for good (attempts used up, or an error retrying cannot fix).
    Failed(String),
    /// Not finished, not failed: stopped for shutdown. Queued again.
    Interrupted,
    /// A gate holds it: look again at `at_ms` (or at the next event).
    Held {
        /// What it waits for.
        reason: String,
        /// When to look again by itself (Unix milliseconds).
        at_ms: u64,
    },
    /// A gate refused it for good.
    Refused(String),
    /// Failed because `registry` is down: try again at `at_ms`, or as
    /// soon as that registry answers again, whichever comes first.
    Down {
        /// Why it failed.
        error: String,
        /// The registry that is down.
        registry: String,
        /// When to try again by itself (Unix milliseconds).
        at_ms: u64,
        /// The job was already waiting for this registry: the outage is
        /// one fact, so its repeats do not use up the job's attempts.
        again: bool,
    },
}
