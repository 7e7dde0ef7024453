//! A registry that is down is one fact, not one per job (issue 28): the
//! first job that finds it down starts one probe of it; every job that
//! fails on it waits (its backoff still runs, as a fallback); the probe's
//! first answer from the registry queues them all at once. The status
//! page and `harbor_relay_registry_up{registry}` show it while it lasts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::Store;
use crate::metrics::Metrics;
use crate::registry::Registry;

/// The probe's first wait; it doubles up to [`PROBE_MAX`].
const PROBE_FIRST: Duration = Duration::from_millis(100);
/// The probe's longest wait between two looks.
const PROBE_MAX: Duration = Duration::from_secs(1);
/// How long one look may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// The registries known to be down, and since when.
#[derive(Debug, Default)]
pub struct Outages(Mutex<HashMap<String, SystemTime>>);

impl Outages {
    /// Marks `registry` down; true if it was not already (start a probe).
    pub fn mark_down(&self, registry: &str) -> bool {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if m.contains_key(registry) {
            return false;
        }
        m.insert(registry.to_string(), SystemTime::now());
        true
    }

    /// `registry` answers again.
    pub fn mark_up(&self, registry: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(registry);
    }

    /// Since when `registry` is down, if it is.
    pub fn down_since(&self, registry: &str) -> Option<SystemTime> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(registry)
            .copied()
    }
}

/// Whether a probe's look says the registry is back: any answer of its
/// own, even a refusal; only another "cannot reach it" says no.
pub fn answers(look: &Result<&'static str, crate::registry::RegistryError>) -> bool {
    match look {
        Ok(_) => true,
        Err(e) => e.unreachable().is_none(),
    }
}

/// The probe's wait after `n` failed looks: doubling from `PROBE_FIRST`
/// up to `PROBE_MAX`, so a registry back is seen within a second.
pub fn probe_wait(n: u32) -> Duration {
    PROBE_FIRST
        .saturating_mul(2u32.saturating_pow(n.min(16)))
        .min(PROBE_MAX)
}

/// Looks at `registry` until it answers, then queues every job waiting
/// for it and marks it up. One per registry at a time ([`Outages`]).
pub async fn probe(
    name: String,
    registry: Registry,
    store: Arc<Store>,
    outages: Arc<Outages>,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    metrics.registry_up.with_label_values(&[&name]).set(0);
    tracing::warn!(registry = %name, "registry is down: one probe watches it; jobs that need it wait for its first answer");
    let mut n = 0;
    loop {
        let look = tokio::time::timeout(PROBE_TIMEOUT, registry.ping()).await;
        if look.as_ref().is_ok_and(answers) {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(probe_wait(n)) => {}
            _ = shutdown.cancelled() => return,
        }
        n += 1;
    }
    outages.mark_up(&name);
    metrics.registry_up.with_label_values(&[&name]).set(1);
    let mut wait = Duration::from_millis(100);
    loop {
        match store.release_down(&name).await {
            Ok(released) => {
                tracing::info!(registry = %name, released, "registry answers again; its waiting jobs are queued");
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot queue the jobs waiting for the registry yet");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_probe_per_registry_and_its_waits_stay_under_a_second() {
        let o = Outages::default();
        assert!(o.mark_down("integrated"));
        assert!(!o.mark_down("integrated"), "one probe at a time");
        assert!(o.down_since("integrated").is_some());
        assert!(o.mark_down("external"));
        o.mark_up("integrated");
        assert!(o.down_since("integrated").is_none());
        assert!(o.mark_down("integrated"), "down again: a new probe");
        assert_eq!(probe_wait(0), Duration::from_millis(100));
        assert_eq!(probe_wait(2), Duration::from_millis(400));
        assert_eq!(probe_wait(4), PROBE_MAX);
        assert_eq!(probe_wait(u32::MAX), PROBE_MAX);
    }

    #[test]
    fn any_answer_of_its_own_means_the_registry_is_back() {
        use crate::registry::RegistryError;
        assert!(answers(&Ok("basic")));
        let denied = RegistryError::Unauthorized {
            registry: "r".into(),
            what: "ping".into(),
            detail: "no".into(),
        };
        assert!(answers(&Err(denied)));
        let down = RegistryError::Connect {
            registry: "r".into(),
            url: "http://r".into(),
            detail: "refused".into(),
        };
        assert!(!answers(&Err(down)));
        let unavailable = RegistryError::Status {
            registry: "r".into(),
            what: "ping".into(),
            status: 503,
            detail: "down".into(),
        };
        assert!(!answers(&Err(unavailable)));
    }
}
