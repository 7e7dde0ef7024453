//! A job's state changes, decided apart from where the job is kept: every
//! backend applies these and only stores the result, so the state machine
//! is the same on sled and on PostgreSQL.

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
    }
}

/// Whether a new event with the same dedupe key folds into `job`: while it
/// is active, or within `window_ms` after it succeeded (a redelivery).
pub fn joins(job: &Job, window_ms: u64, now_ms: u64) -> bool {
    job.state.is_active()
        || (job.state == JobState::Succeeded
            && job.finished_ms.is_some_and(|f| f + window_ms >= now_ms))
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
    /// Waiting for its next attempt at this time.
    Retrying(u64),
}

/// Applies how an attempt ended.
pub fn finish(job: &mut Job, outcome: Outcome, now_ms: u64) -> After {
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
        Outcome::Retry { error, at_ms } => {
            job.state = JobState::Retrying;
            job.last_error = Some(error);
            job.next_attempt_ms = Some(at_ms);
            After::Retrying(at_ms)
        }
    };
    if after == After::Finished {
        job.finished_ms = Some(now_ms);
        job.next_attempt_ms = None;
    }
    after
}

/// A retrying job whose time has come goes back to the queue.
pub fn promote(job: &mut Job) {
    job.state = JobState::Queued;
    job.next_attempt_ms = None;
}

/// A failed job queued again by hand, with a fresh count of attempts.
pub fn rearm(job: &mut Job) {
    job.state = JobState::Queued;
    job.attempts = 0;
    job.finished_ms = None;
    job.next_attempt_ms = None;
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
    fn a_succeeded_job_takes_redeliveries_within_the_window() {
        let mut j = job();
        start(&mut j, 2_000);
        finish(&mut j, Outcome::Succeeded(Default::default()), 3_000);
        assert!(joins(&j, 1_000, 4_000));
        assert!(!joins(&j, 1_000, 4_001));
    }
}
