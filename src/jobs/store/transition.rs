//! A job's state changes, decided apart from where the job is kept: every
//! backend applies these and only stores the result, so the state machine
//! is the same on sled and on PostgreSQL.

use crate::jobs::store::CancelError;
use crate::jobs::{Job, JobSpec, JobState, Outcome};

/// A new job for `spec`, queued.
pub fn new_job(id: u64, spec: JobSpec, now_ms: u64) -> Job {
    Job {
        id,
        spec,
        state: JobState::Queued,
        attempts: 0,
        created_ms: now_ms,
        started_ms: None,
        finished_ms: None,
        coalesced: 0,
        summary: None,
        last_error: None,
        next_attempt_ms: None,
        relay: None,
        window_closed: false,
        held_since_ms: None,
        down: None,
    }
}

/// Whether a new event with the same dedupe key folds into `job`: while it
/// is active (held included: the push it waits with is the same), within
/// `window_ms` after it succeeded (a redelivery), or, refused for the
/// digest the key names, at any time (the same digest is refused again;
/// a fixed image has another digest, so another key).
/// A deletion folds only into an active one: a finished delete may have
/// been skipped because the source still had the artifact, and a later
/// delete event must be weighed again.
pub fn joins(job: &Job, window_ms: u64, now_ms: u64) -> bool {
    let copy = job.spec.action == crate::jobs::Action::Copy;
    !job.window_closed
        && (job.state.is_active()
            || (copy
                && job.state == JobState::Succeeded
                && job.finished_ms.is_some_and(|f| f + window_ms >= now_ms))
            || (job.state == JobState::Refused && job.spec.digest.is_some()))
}

/// What the enqueue of a deletion does, weighed against the newest copy
/// job of the same artifact under the same rule (`push`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleting {
    /// The push happened after the event's `occur_at` (a replayed or
    /// reordered delete, or a forged one back-dated): the delete is kept
    /// as a job, finished at once as ignored, saying why.
    Stale(String),
    /// Queue the delete and close the push's window, so that a push of
    /// the same digest after it copies again instead of folding into the
    /// copy from before the delete.
    Queue {
        /// Whether there is a push job whose window to close.
        close: bool,
    },
}

/// Decides [`Deleting`]: only a delete whose event is older than the last
/// push of that digest is stale (both times known); any other is queued
/// (and it deletes only if the source no longer has the manifest, checked
/// when it runs).
pub fn deleting(push: Option<&Job>, delete: &JobSpec) -> Deleting {
    let Some(push) = push else {
        return Deleting::Queue { close: false };
    };
    match (push.spec.occurred_at, delete.occurred_at) {
        (Some(pushed), Some(deleted)) if pushed > deleted => Deleting::Stale(format!(
            "ignored: this delete event's occur_at ({deleted}) is older than the push of the same digest that job {} copied (occur_at {pushed}); a replayed, reordered or forged delete",
            push.id
        )),
        _ => Deleting::Queue {
            close: !push.window_closed,
        },
    }
}

/// A push job whose window a deletion closed.
pub fn close_window(job: &mut Job) {
    job.window_closed = true;
}

/// A new deletion job that [`Deleting::Stale`] ends at once, succeeded and
/// skipped with `why` (kept so the webhook's answer and the API name it).
pub fn ignored(job: &mut Job, why: String, now_ms: u64) {
    let summary = crate::jobs::Summary {
        digest: job.spec.digest.clone().unwrap_or_default(),
        skipped: Some(why),
        ..Default::default()
    };
    job.state = JobState::Succeeded;
    job.summary = Some(summary);
    job.finished_ms = Some(now_ms);
}

/// A worker takes the job.
pub fn start(job: &mut Job, now_ms: u64) {
    job.state = JobState::Running;
    job.attempts += 1;
    job.started_ms = Some(now_ms);
}

/// Where an attempt's outcome leaves the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Done (succeeded or failed for good).
    Finished,
    /// Back in the queue (stopped for shutdown).
    Queued,
    /// Waiting until this time: for its next attempt, or held for its
    /// next look at the gates.
    Retrying(u64),
}

/// Applies how an attempt ended.
pub fn finish(job: &mut Job, outcome: Outcome, now_ms: u64) -> After {
    job.down = None;
    let after = match outcome {
        Outcome::Succeeded(summary) => {
            job.state = JobState::Succeeded;
            job.summary = Some(summary);
            job.last_error = None;
            After::Finished
        }
        Outcome::Failed(e) => {
            job.state = JobState::Failed;
            job.last_error = Some(e);
            After::Finished
        }
        Outcome::Interrupted => {
            job.state = JobState::Queued;
            job.attempts = job.attempts.saturating_sub(1);
            After::Queued
        }
        Outcome::Retry { error, at_ms } => retry_at(job, error, at_ms),
        Outcome::Held { reason, at_ms } => {
            // A look at the gates is not an attempt: attempts count copies.
            job.state = JobState::Held;
            job.attempts = job.attempts.saturating_sub(1);
            job.last_error = Some(reason);
            job.next_attempt_ms = Some(at_ms);
            job.held_since_ms.get_or_insert(now_ms);
            After::Retrying(at_ms)
        }
        Outcome::Down {
            error,
            registry,
            at_ms,
            again,
        } => {
            if again {
                job.attempts = job.attempts.saturating_sub(1);
            }
            job.down = Some(registry);
            retry_at(job, error, at_ms)
        }
        Outcome::Refused(reason) => {
            job.state = JobState::Refused;
            job.last_error = Some(reason);
            After::Finished
        }
    };
    if after == After::Finished {
        job.finished_ms = Some(now_ms);
        job.next_attempt_ms = None;
    }
    after
}

/// The job waits for its next attempt at `at_ms`, after `error`.
fn retry_at(job: &mut Job, error: String, at_ms: u64) -> After {
    job.state = JobState::Retrying;
    job.last_error = Some(error);
    job.next_attempt_ms = Some(at_ms);
    After::Retrying(at_ms)
}

/// A retrying or held job whose time has come (or an event of its
/// repository, for a held one) goes back to the queue.
pub fn promote(job: &mut Job) {
    job.state = JobState::Queued;
    job.next_attempt_ms = None;
}

/// A failed (or refused) job queued again by hand, with a fresh count of
/// attempts and a fresh `hold_for`.
pub fn rearm(job: &mut Job) {
    job.state = JobState::Queued;
    job.attempts = 0;
    job.held_since_ms = None;
    job.finished_ms = None;
    job.next_attempt_ms = None;
}

/// Whether the store may cancel `job` itself: a waiting one (queued, or
/// waiting for its next attempt) yes, and [`cancel`] fails it at once; a
/// running one is [`CancelError::Running`] (its worker is told, stops,
/// cancels its uploads and records the failure); a finished one is over.
pub fn cancellable(job: &Job) -> Result<(), CancelError> {
    match job.state {
        JobState::Queued | JobState::Retrying | JobState::Held => Ok(()),
        JobState::Running => Err(CancelError::Running {
            id: job.id,
            relay: job.relay.clone(),
        }),
        JobState::Succeeded | JobState::Failed | JobState::Refused => Err(CancelError::Finished {
            id: job.id,
            state: job.state.as_str(),
        }),
    }
}

/// A waiting job cancelled: failed with `why`, so `retry` can queue it
/// again.
pub fn cancel(job: &mut Job, why: String, now_ms: u64) {
    job.state = JobState::Failed;
    job.last_error = Some(why);
    job.finished_ms = Some(now_ms);
    job.next_attempt_ms = None;
}

/// Whether a held job is released by an event of `repository` (its
/// source repository: a signature, a referrer, a scan of it or of one of
/// its children all arrive there). Events are hints: the job looks at
/// the gates again, it is not let through.
pub fn released_by(job: &Job, repository: &str) -> bool {
    job.state == JobState::Held && job.spec.source_repository == repository
}

/// Whether a retrying job waits for `registry` to answer again.
pub fn waits_for(job: &Job, registry: &str) -> bool {
    job.state == JobState::Retrying && job.down.as_deref() == Some(registry)
}

/// Whether `job` may be queued again by hand: a failed or refused one.
pub fn retryable(job: &Job) -> bool {
    matches!(job.state, JobState::Failed | JobState::Refused)
}

/// Whether a finished job is old enough for retention to delete.
pub fn expired(job: &Job, before_ms: u64) -> bool {
    !job.state.is_active() && job.finished_ms.is_some_and(|f| f < before_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job() -> Job {
        new_job(7, crate::jobs::store::tests::spec("1"), 1_000)
    }

    #[test]
    fn an_attempt_moves_the_job_through_its_states() {
        let mut j = job();
        assert!(joins(&j, 0, 5_000), "a queued job takes duplicates");
        start(&mut j, 2_000);
        assert_eq!(
            (j.state, j.attempts, j.started_ms),
            (JobState::Running, 1, Some(2_000))
        );
        let after = finish(
            &mut j,
            Outcome::Retry {
                error: "503".into(),
                at_ms: 9_000,
            },
            3_000,
        );
        assert_eq!(after, After::Retrying(9_000));
        assert_eq!(
            (j.state, j.next_attempt_ms, j.finished_ms),
            (JobState::Retrying, Some(9_000), None)
        );
        promote(&mut j);
        start(&mut j, 9_001);
        assert_eq!(finish(&mut j, Outcome::Interrupted, 9_500), After::Queued);
        assert_eq!(
            (j.state, j.attempts),
            (JobState::Queued, 1),
            "a stop does not use an attempt"
        );
        start(&mut j, 10_000);
        assert_eq!(
            finish(&mut j, Outcome::Failed("gone".into()), 11_000),
            After::Finished
        );
        assert_eq!((j.state, j.finished_ms), (JobState::Failed, Some(11_000)));
        assert!(
            !joins(&j, 60_000, 12_000),
            "a failed job takes no duplicates"
        );
        assert!(expired(&j, 11_001) && !expired(&j, 11_000));
        rearm(&mut j);
        assert_eq!(
            (j.state, j.attempts, j.finished_ms),
            (JobState::Queued, 0, None)
        );
    }

    #[test]
    fn a_delete_older_than_the_push_is_stale_and_a_newer_one_closes_its_window() {
        let mut push = job();
        push.spec.occurred_at = Some(2_000);
        start(&mut push, 2_000);
        finish(&mut push, Outcome::Succeeded(Default::default()), 3_000);
        let mut delete = push.spec.clone();
        delete.action = crate::jobs::Action::Delete;
        assert_eq!(delete.push_key(), Some(push.spec.dedupe_key()));
        assert_eq!(push.spec.push_key(), None);
        delete.occurred_at = Some(1_500);
        assert!(
            matches!(deleting(Some(&push), &delete), Deleting::Stale(why) if why.contains("job 7")),
            "a delete from before the push is ignored"
        );
        delete.occurred_at = Some(2_500);
        assert_eq!(
            deleting(Some(&push), &delete),
            Deleting::Queue { close: true }
        );
        delete.occurred_at = None;
        assert_eq!(
            deleting(Some(&push), &delete),
            Deleting::Queue { close: true },
            "without a time the source decides, when the delete runs"
        );
        assert_eq!(deleting(None, &delete), Deleting::Queue { close: false });
        assert!(joins(&push, 60_000, 4_000));
        close_window(&mut push);
        assert!(!joins(&push, 60_000, 4_000), "the next push copies again");
        assert_eq!(
            deleting(Some(&push), &delete),
            Deleting::Queue { close: false }
        );
        let mut d = new_job(8, delete, 5_000);
        assert!(joins(&d, 0, 6_000), "a queued delete takes duplicates");
        ignored(&mut d, "why".into(), 5_000);
        assert_eq!(d.state, JobState::Succeeded);
        assert!(
            !joins(&d, 60_000, 6_000),
            "a finished delete takes none: the next one is weighed again"
        );
    }

    #[test]
    fn a_waiting_job_is_cancelled_at_once_and_a_running_one_is_told() {
        let mut j = job();
        assert!(cancellable(&j).is_ok());
        start(&mut j, 2_000);
        assert!(matches!(
            cancellable(&j),
            Err(CancelError::Running { id: 7, .. })
        ));
        finish(
            &mut j,
            Outcome::Retry {
                error: "503".into(),
                at_ms: 9_000,
            },
            3_000,
        );
        assert!(cancellable(&j).is_ok());
        cancel(&mut j, "cancelled".into(), 4_000);
        assert_eq!(
            (j.state, j.next_attempt_ms, j.finished_ms),
            (JobState::Failed, None, Some(4_000))
        );
        assert!(matches!(
            cancellable(&j),
            Err(CancelError::Finished {
                id: 7,
                state: "failed"
            })
        ));
    }

    #[test]
    fn a_succeeded_job_takes_redeliveries_within_the_window() {
        let mut j = job();
        start(&mut j, 2_000);
        finish(&mut j, Outcome::Succeeded(Default::default()), 3_000);
        assert!(joins(&j, 1_000, 4_000));
        assert!(!joins(&j, 1_000, 4_001));
    }
}
