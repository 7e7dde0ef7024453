//! Releases seen lately, by source repository: a job that was judging its
//! gates when an event of its repository arrived (the signature pushed
//! while it read "none yet") would otherwise wait for `gate_recheck`; it
//! looks again at once instead. Kept in memory by each relay: on a shared
//! store an event another relay received is caught by the timer.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::jobs::{Job, Outcome};

/// How long a release is remembered: longer than any gate's reading.
const REMEMBERED_MS: u64 = 10 * 60 * 1000;

/// The last release of each repository.
#[derive(Debug, Default)]
pub struct Releases(Mutex<HashMap<String, u64>>);

impl Releases {
    /// An event of `repository` released its held jobs at `now_ms`.
    pub fn note(&self, repository: &str, now_ms: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.retain(|_, at| *at + REMEMBERED_MS >= now_ms);
        m.insert(repository.to_string(), now_ms);
    }

    /// `outcome` for `job`, due at once if it is a hold and its repository
    /// was released since the attempt started.
    pub fn adjust(&self, job: &Job, outcome: Outcome, now_ms: u64) -> Outcome {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        sooner(
            outcome,
            m.get(&job.spec.source_repository).copied(),
            job.started_ms,
            now_ms,
        )
    }
}

/// A hold whose repository was released at or after the attempt started
/// is due now; anything else is left as it is.
pub fn sooner(
    outcome: Outcome,
    released_ms: Option<u64>,
    started_ms: Option<u64>,
    now_ms: u64,
) -> Outcome {
    match (outcome, released_ms, started_ms) {
        (Outcome::Held { reason, .. }, Some(r), Some(s)) if r >= s => Outcome::Held {
            reason,
            at_ms: now_ms,
        },
        (o, _, _) => o,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Outcome {
        Outcome::Held {
            reason: "waiting".into(),
            at_ms: 60_000,
        }
    }

    #[test]
    fn a_hold_is_due_at_once_only_if_released_during_its_attempt() {
        let now = 5_000;
        let due_now = Outcome::Held {
            reason: "waiting".into(),
            at_ms: now,
        };
        assert_eq!(sooner(held(), Some(2_000), Some(1_000), now), due_now);
        assert_eq!(sooner(held(), Some(1_000), Some(1_000), now), due_now);
        assert_eq!(
            sooner(held(), Some(500), Some(1_000), now),
            held(),
            "released before it started"
        );
        assert_eq!(sooner(held(), None, Some(1_000), now), held());
        let failed = Outcome::Failed("x".into());
        assert_eq!(
            sooner(failed.clone(), Some(2_000), Some(1_000), now),
            failed
        );
    }

    #[test]
    fn releases_are_remembered_per_repository_for_a_while() {
        let r = Releases::default();
        r.note("team/app", 1_000);
        let mut job =
            crate::jobs::store::transition::new_job(1, crate::jobs::store::tests::spec("1"), 0);
        job.started_ms = Some(900);
        assert!(
            matches!(
                r.adjust(&job, held(), 1_100),
                Outcome::Held { at_ms: 60_000, .. }
            ),
            "another repository"
        );
        job.spec.source_repository = "team/app".into();
        assert!(matches!(
            r.adjust(&job, held(), 1_100),
            Outcome::Held { at_ms: 1_100, .. }
        ));
        r.note("other/x", 1_000 + REMEMBERED_MS + 1);
        assert!(
            matches!(
                r.adjust(&job, held(), 1_100),
                Outcome::Held { at_ms: 60_000, .. }
            ),
            "forgotten"
        );
    }
}
