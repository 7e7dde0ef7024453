//! What follows an attempt, decided apart from running it: the retry
//! policy (exponential backoff with jitter, attempts), a hold's timing
//! (`gate_recheck`, `hold_for`), a registry that was down named for its
//! probe. Pure, unit-tested in milliseconds.

use std::time::Duration;

use backon::BackoffBuilder;

use crate::jobs::{Outcome, Summary};

/// Attempts and backoff for failed jobs.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a job counts as failed.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_delay: Duration,
    /// Longest wait.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The policy `[jobs]` asks for.
    pub fn from_config(jobs: &crate::config::JobsConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: jobs.max_attempts,
            initial_delay: jobs.retry_initial_delay,
            max_delay: jobs.retry_max_delay,
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): doubling
    /// from the initial delay up to the maximum, plus up to 100% jitter so
    /// that jobs failed together do not retry together.
    pub fn delay(&self, attempt: u32) -> Duration {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times()
            .build()
            .nth(attempt.saturating_sub(1) as usize)
            .unwrap_or(self.max_delay)
    }
}

/// How one attempt of a job ended, before policy decides what follows.
#[derive(Debug)]
pub(super) enum Attempt {
    /// Copied (or deleted).
    Done(Summary),
    /// Stopped between chunks for shutdown: not a failure.
    Interrupted,
    /// Failed; `permanent` when retrying cannot help; `down` names the
    /// registry when it could not be reached.
    Failed {
        error: String,
        permanent: bool,
        down: Option<String>,
    },
    /// A gate holds it (nothing written): not a failure.
    Held(String),
    /// A gate refused it for good (nothing written).
    Refused(String),
}

/// The longest a held job waits between two looks at its gates by itself
/// (unless its rule's `gate_recheck` is longer).
pub(super) const MAX_RECHECK: Duration = Duration::from_secs(30 * 60);

/// How long a job held for `held` waits before it looks at its gates again
/// by itself: `recheck` at first, then a quarter of the time it has been
/// held, at most [`MAX_RECHECK`]. Each look reads the source (a Harbor
/// counts the manifest read as a pull, and answers the signature and scan
/// lookups), and what a hold waits for sends an event that releases it at
/// once (the `.sig` push, `SCANNING_COMPLETED`): the timer is for an
/// event that was lost. So an artifact never signed costs about 80 looks
/// in a day, not the 1,440 of one a minute, and a lost event is made up for
/// within a quarter of the wait so far.
pub(super) fn next_look(held: Duration, recheck: Duration) -> Duration {
    (held / 4).clamp(recheck, MAX_RECHECK.max(recheck))
}

/// A gated job's timing: when a gate first held it, and its rule's
/// `hold_for` and `gate_recheck`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Holding {
    pub(super) since_ms: Option<u64>,
    pub(super) hold_for: Duration,
    pub(super) recheck: Duration,
}

/// What to record after an attempt: a pure decision (tested below), so the
/// retry policy is read in one place.
pub(super) fn decide(
    attempt: Attempt,
    attempts: u32,
    retry: &RetryPolicy,
    holding: Option<Holding>,
    waiting_for: Option<&str>,
    now_ms: u64,
) -> Outcome {
    match attempt {
        Attempt::Done(s) => Outcome::Succeeded(s),
        Attempt::Interrupted => Outcome::Interrupted,
        Attempt::Refused(why) => Outcome::Refused(why),
        Attempt::Held(reason) => {
            let Some(h) = holding else {
                return Outcome::Failed(format!("held, and its rule has no gates now: {reason}"));
            };
            let since = h.since_ms.unwrap_or(now_ms);
            if now_ms.saturating_sub(since) >= h.hold_for.as_millis() as u64 {
                return Outcome::Failed(format!(
                    "held for {} (hold_for) and not released: {reason}",
                    humantime::format_duration(h.hold_for)
                ));
            }
            let held = Duration::from_millis(now_ms.saturating_sub(since));
            let look = now_ms + next_look(held, h.recheck).as_millis() as u64;
            // The last look is when `hold_for` runs out, so it fails on time.
            let end = since + h.hold_for.as_millis() as u64;
            Outcome::Held {
                reason,
                at_ms: look.min(end),
            }
        }
        Attempt::Failed {
            error,
            permanent: false,
            down: Some(registry),
        } if waiting_for == Some(registry.as_str()) => Outcome::Down {
            error,
            registry,
            at_ms: now_ms + retry.delay(attempts.saturating_sub(1)).as_millis() as u64,
            again: true,
        },
        Attempt::Failed {
            error, permanent, ..
        } if permanent || attempts >= retry.max_attempts => Outcome::Failed(error),
        Attempt::Failed {
            error,
            down: Some(registry),
            ..
        } => Outcome::Down {
            error,
            registry,
            at_ms: now_ms + retry.delay(attempts).as_millis() as u64,
            again: false,
        },
        Attempt::Failed { error, .. } => Outcome::Retry {
            error,
            at_ms: now_ms + retry.delay(attempts).as_millis() as u64,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 3,
            initial_delay: Duration::from_secs(10),
            max_delay: Duration::from_secs(60),
        }
    }

    fn failed(permanent: bool) -> Attempt {
        Attempt::Failed {
            error: "e".into(),
            permanent,
            down: None,
        }
    }

    /// An attempt that could not reach `registry`.
    fn unreachable(registry: &str) -> Attempt {
        Attempt::Failed {
            error: "cannot connect".into(),
            permanent: false,
            down: Some(registry.into()),
        }
    }

    #[test]
    fn a_failed_attempt_is_retried_until_attempts_run_out_unless_permanent() {
        let p = policy();
        match decide(failed(false), 1, &p, None, None, 1_000) {
            Outcome::Retry { error, at_ms } => {
                assert_eq!(error, "e");
                assert!((11_000..=21_000).contains(&at_ms), "{at_ms}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decide(failed(false), 3, &p, None, None, 0),
            Outcome::Failed("e".into())
        );
        assert_eq!(
            decide(failed(true), 1, &p, None, None, 0),
            Outcome::Failed("e".into())
        );
        assert_eq!(
            decide(Attempt::Interrupted, 3, &p, None, None, 0),
            Outcome::Interrupted
        );
        assert_eq!(
            decide(Attempt::Done(Summary::default()), 1, &p, None, None, 0),
            Outcome::Succeeded(Summary::default())
        );
    }

    #[test]
    fn a_registry_that_is_down_is_named_so_its_probe_can_release_the_job() {
        let p = policy();
        match decide(unreachable("integrated"), 1, &p, None, None, 1_000) {
            Outcome::Down {
                registry, at_ms, ..
            } => {
                assert_eq!(registry, "integrated");
                assert!(
                    (11_000..=21_000).contains(&at_ms),
                    "its backoff still runs: {at_ms}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(
                decide(unreachable("integrated"), 3, &p, None, None, 0),
                Outcome::Failed(_)
            ),
            "attempts still end"
        );
        assert!(
            matches!(
                decide(
                    unreachable("integrated"),
                    3,
                    &p,
                    None,
                    Some("integrated"),
                    0
                ),
                Outcome::Down { again: true, .. }
            ),
            "the same outage again does not use up the job's attempts"
        );
        assert!(
            matches!(
                decide(unreachable("external"), 3, &p, None, Some("integrated"), 0),
                Outcome::Failed(_)
            ),
            "another registry's outage is a new failure"
        );
    }

    #[test]
    fn a_held_job_looks_less_often_the_longer_it_is_held() {
        let (min, s) = (Duration::from_secs(60), Duration::from_secs);
        assert_eq!(next_look(s(0), min), min, "gate_recheck at first");
        assert_eq!(next_look(s(3 * 60), min), min);
        assert_eq!(next_look(s(3600), min), s(15 * 60), "a quarter of the wait");
        assert_eq!(next_look(s(24 * 3600), min), MAX_RECHECK, "at most");
        let long = s(3 * 3600);
        assert_eq!(
            next_look(s(24 * 3600), long),
            long,
            "a longer gate_recheck wins"
        );
        // A day held, looking each time it is told to: about 80 looks, not
        // the 1,440 of one a minute.
        let (mut at, mut looks) = (s(0), 0);
        while at < s(24 * 3600) {
            at += next_look(at, min);
            looks += 1;
        }
        assert!((60..=100).contains(&looks), "{looks} looks in a day");
        // The last look is when hold_for runs out, not after it.
        let h = Holding {
            since_ms: Some(0),
            hold_for: s(3600),
            recheck: min,
        };
        let held = Attempt::Held("no signature yet".into());
        let now = 3_500_000;
        assert!(matches!(
            decide(held, 1, &policy(), Some(h), None, now),
            Outcome::Held {
                at_ms: 3_600_000,
                ..
            }
        ));
    }

    #[test]
    fn a_held_job_looks_again_after_gate_recheck_and_fails_after_hold_for() {
        let p = policy();
        let h = Holding {
            since_ms: Some(1_000),
            hold_for: Duration::from_secs(60),
            recheck: Duration::from_secs(5),
        };
        let held = || Attempt::Held("waiting for a signature".into());
        assert_eq!(
            decide(held(), 9, &p, Some(h), None, 10_000),
            Outcome::Held {
                reason: "waiting for a signature".into(),
                at_ms: 15_000
            },
            "a hold is not an attempt: max_attempts does not end it"
        );
        match decide(held(), 1, &p, Some(h), None, 61_000) {
            Outcome::Failed(e) => {
                assert!(e.starts_with("held for 1m (hold_for)"), "{e}");
                assert!(e.ends_with("waiting for a signature"), "{e}");
            }
            other => panic!("{other:?}"),
        }
        let first = Holding {
            since_ms: None,
            ..h
        };
        assert!(matches!(
            decide(held(), 1, &p, Some(first), None, 500_000),
            Outcome::Held { at_ms: 505_000, .. }
        ));
        assert!(matches!(
            decide(held(), 1, &p, None, None, 0),
            Outcome::Failed(_)
        ));
        assert_eq!(
            decide(Attempt::Refused("critical".into()), 1, &p, Some(h), None, 0),
            Outcome::Refused("critical".into())
        );
    }
}
