//! How many jobs run at once: as many as the registries take, within
//! `jobs.workers` (issue 28). Each registry's request limit adapts to its
//! answers (`registry::limit`); the job limit follows the lowest of them,
//! so a registry that pushes back slows the jobs that would queue on it,
//! and a backlog that the registries absorb runs as wide as `workers`
//! allows. A job between its requests holds no permit of a registry; this
//! keeps the number of jobs started (and the memory their blobs in flight
//! take) near what the registries can serve.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How often a waiting worker looks again when no job ends (a limit that
/// grew frees no slot by itself).
const LOOK_EVERY: Duration = Duration::from_millis(50);

/// Jobs allowed at once: the lowest registry limit, within `1..=cap`.
pub(super) fn job_limit(cap: usize, registry_limits: impl IntoIterator<Item = usize>) -> usize {
    registry_limits
        .into_iter()
        .min()
        .unwrap_or(cap)
        .clamp(1, cap.max(1))
}

/// The jobs running now, against the limit.
#[derive(Debug, Default)]
pub struct Admission {
    running: AtomicUsize,
    freed: Notify,
}

/// One running job's place; given back on drop.
pub(super) struct Slot<'a>(&'a Admission);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.freed.notify_one();
    }
}

impl Admission {
    /// Jobs running now.
    pub fn running(&self) -> usize {
        self.running.load(Ordering::Acquire)
    }

    /// Waits until fewer than `limit()` jobs run, then takes a place;
    /// `None` on shutdown.
    pub(super) async fn enter(
        &self,
        limit: impl Fn() -> usize,
        shutdown: &CancellationToken,
    ) -> Option<Slot<'_>> {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let now = self.running.load(Ordering::Acquire);
            if now < limit() {
                if self
                    .running
                    .compare_exchange(now, now + 1, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Some(Slot(self));
                }
                continue;
            }
            tokio::select! {
                _ = &mut freed => {}
                _ = tokio::time::sleep(LOOK_EVERY) => {}
                _ = shutdown.cancelled() => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_follow_the_lowest_registry_limit_within_workers() {
        assert_eq!(job_limit(32, [16, 40]), 16);
        assert_eq!(job_limit(8, [16, 40]), 8, "a set workers is a cap");
        assert_eq!(job_limit(32, [2, 64]), 2, "a registry pushing back");
        assert_eq!(job_limit(32, []), 32);
        assert_eq!(job_limit(32, [0]), 1, "never none");
    }

    #[tokio::test]
    async fn a_place_frees_when_a_job_ends_and_shutdown_ends_the_wait() {
        let a = Admission::default();
        let stop = CancellationToken::new();
        let one = a.enter(|| 1, &stop).await.expect("a place");
        assert_eq!(a.running(), 1);
        let waiting = tokio::time::timeout(Duration::from_millis(20), a.enter(|| 1, &stop)).await;
        assert!(waiting.is_err(), "the second waits");
        drop(one);
        let two = a.enter(|| 1, &stop).await;
        assert!(two.is_some());
        stop.cancel();
        assert!(a.enter(|| 1, &stop).await.is_none());
    }
}
