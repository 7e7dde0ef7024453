//! Every Prometheus metric the daemon exports, in one registry.
//!
//! Names are `harbor_relay_*`, in base units, counters end in `_total`.
//! Labels are bounded: formats, outcomes, rule names from the config. Never
//! a tag, digest or anything secret.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use crate::registry::Registry as RegistryClient;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// Webhooks received, by `format` and `outcome` (accepted, ignored,
    /// no_rule, unauthorized, bad_request, too_large, unsupported_media_type, rate_limited,
    /// queue_full, invalid, error).
    pub webhooks: IntCounterVec,
    /// Jobs finished, by `rule`, `target` (the site, for a fan-out) and
    /// `outcome` (succeeded, failed, refused).
    pub jobs_finished: IntCounterVec,
    /// Blobs handled, by `outcome` (copied, skipped).
    pub blobs: IntCounterVec,
    /// Blob bytes uploaded to targets.
    pub bytes_copied: IntCounter,
    /// Wall time of finished jobs.
    pub job_duration: Histogram,
    /// Jobs waiting for a worker.
    pub queue_depth: IntGauge,
    /// Jobs being copied.
    pub jobs_running: IntGauge,
    /// Jobs waiting for their next attempt.
    pub jobs_retrying: IntGauge,
    /// Failed attempts that will be retried, by `rule`.
    pub job_retries: IntCounterVec,
    /// 0 while a probe watches a registry found down, else 1.
    pub registry_up: prometheus::IntGaugeVec,
    /// Jobs held at a gate (waiting for a signature or a scan).
    pub jobs_held: IntGauge,
    /// How long the longest-held job has waited at its gate (0: none).
    pub oldest_held: IntGauge,
    /// Each gate's verdicts, by `rule`, `gate` (`signature`, `scan`) and
    /// `verdict` (`pass`, `hold`, `refuse`).
    pub gate_decisions: IntCounterVec,
    /// What reconcile passes checked, found, removed and when.
    pub reconcile: ReconcileMetrics,
    /// Jobs this relay holds leases on (PostgreSQL store).
    pub leases_held: IntGauge,
    /// Jobs this relay took over from a relay whose lease ran out.
    pub lease_takeovers: prometheus::IntCounter,
    /// From the event's time to the tag written on the target, per target
    /// registry (each site's SLO).
    pub replication_lag: prometheus::HistogramVec,
    /// When a rule last replicated something successfully (Unix seconds).
    pub last_success: prometheus::GaugeVec,
    /// Blobs being copied right now.
    pub transfers_in_flight: IntGauge,
    /// A fan-out's shared reads of a blob, by `began` (answered, waited).
    pub fanout_reads: IntCounterVec,
    /// Targets of a fan-out cut loose from a shared read for holding the
    /// others back: each read the rest of that blob from the source alone.
    pub fanout_detached: IntCounter,
    /// Size of the job store on disk.
    pub store_size: IntGauge,
    /// Requests refused for a missing or wrong secret, by `endpoint`
    /// (webhook, api).
    pub auth_failures: IntCounterVec,
}

/// The reconcile passes' metrics, apart because only `reconcile` (and the
/// status page's last-pass column) touch them.
pub struct ReconcileMetrics {
    /// Tags compared by reconcile passes, by `rule`.
    pub checked: IntCounterVec,
    /// Differences reconcile passes found (and queued), by `rule`.
    pub differences: IntCounterVec,
    /// Target tags reconcile passes removed (`prune`), by `rule` and
    /// `result` (`removed`, `failed`).
    pub pruned: IntCounterVec,
    /// When the last reconcile pass of a rule finished (Unix seconds).
    pub last_pass: prometheus::GaugeVec,
}

impl ReconcileMetrics {
    fn new(m: &Maker) -> Result<ReconcileMetrics, MetricsError> {
        Ok(ReconcileMetrics {
            checked: m.counters(
                "harbor_relay_reconcile_checked_total",
                "Tags compared between source and target by reconcile passes, by rule.",
                &["rule"],
            )?,
            differences: m.counters(
                "harbor_relay_reconcile_differences_total",
                "Tags found different on the target by reconcile passes (each queued as a job), by rule.",
                &["rule"],
            )?,
            pruned: m.counters(
                "harbor_relay_reconcile_pruned_total",
                "Target tags the source no longer has, removed by reconcile passes of rules with prune = true, by rule and result (removed, failed).",
                &["rule", "result"],
            )?,
            last_pass: m.timestamps(
                "harbor_relay_reconcile_last_pass_timestamp_seconds",
                "When the last successful reconcile pass of a rule finished, in Unix seconds.",
            )?,
        })
    }
}

/// Counts one blob transfer as in flight while held.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Per-registry counters, read from each client's [`Stats`] at scrape
/// time (so the registry module needs no metrics handle; see
/// [`crate::registry::Stats`]).
type StatsField = fn(&crate::registry::Stats) -> u64;
const REGISTRY_COUNTERS: [(&str, &str, StatsField); 8] = [
    (
        "harbor_relay_registry_requests_total",
        "HTTP requests sent to a registry (each attempt counts), by registry.",
        |s| s.requests.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_registry_retries_total",
        "Requests repeated after a connection error, 408, 429 or 5xx, by registry.",
        |s| s.retries.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_registry_throttled_total",
        "429 Too Many Requests answers from a registry, by registry.",
        |s| s.throttled.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_registry_errors_total",
        "Requests to a registry that failed for good (no connection, TLS refused, timeout, 5xx after the last attempt), by registry.",
        |s| s.errors.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_registry_read_bytes_total",
        "Blob bytes read from a registry (direction: in), by registry.",
        |s| s.bytes_read.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_registry_written_bytes_total",
        "Blob bytes written to a registry (direction: out), by registry.",
        |s| s.bytes_written.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_concurrency_raised_total",
        "Times a registry's adaptive request limit grew, by registry.",
        |s| s.concurrency_raised.load(Ordering::Relaxed),
    ),
    (
        "harbor_relay_concurrency_lowered_total",
        "Times a registry's adaptive request limit was cut (429, 503, or answers far slower than its fastest), by registry.",
        |s| s.concurrency_lowered.load(Ordering::Relaxed),
    ),
];

/// A metric could not be registered (a programming error: duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

/// Registers metrics as they are made, so each is declared in one place.
struct Maker {
    registry: Registry,
}

impl Maker {
    fn add<M: prometheus::core::Collector + Clone + 'static>(
        &self,
        m: Result<M, prometheus::Error>,
    ) -> Result<M, MetricsError> {
        let m = m?;
        self.registry.register(Box::new(m.clone()))?;
        Ok(m)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricsError> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels))
    }

    fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricsError> {
        self.add(IntGauge::new(name, help))
    }

    fn counter(&self, name: &str, help: &str) -> Result<prometheus::IntCounter, MetricsError> {
        self.add(prometheus::IntCounter::new(name, help))
    }

    fn timestamps(&self, name: &str, help: &str) -> Result<prometheus::GaugeVec, MetricsError> {
        self.add(prometheus::GaugeVec::new(Opts::new(name, help), &["rule"]))
    }

    fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: Vec<f64>,
    ) -> Result<Histogram, MetricsError> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets),
        ))
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let m = Maker {
            registry: Registry::new(),
        };
        let metrics = Metrics {
            webhooks: m.counters(
                "harbor_relay_webhooks_received_total",
                "Webhook requests received, by payload format and outcome.",
                &["format", "outcome"],
            )?,
            jobs_finished: m.counters(
                "harbor_relay_jobs_finished_total",
                "Replication jobs finished, by rule, target registry and outcome.",
                &["rule", "target", "outcome"],
            )?,
            blobs: m.counters(
                "harbor_relay_blobs_total",
                "Blobs handled by replication: copied (uploaded), skipped (already on the target), mounted (linked from another repository of the target), resumed (an interrupted upload continued; also counted as copied).",
                &["outcome"],
            )?,
            bytes_copied: m.add(IntCounter::new(
                "harbor_relay_copied_bytes_total",
                "Blob bytes uploaded to target registries.",
            ))?,
            job_duration: m.histogram(
                "harbor_relay_job_duration_seconds",
                "Wall time of finished replication jobs.",
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0],
            )?,
            queue_depth: m.gauge(
                "harbor_relay_queue_depth",
                "Replication jobs waiting for a worker.",
            )?,
            jobs_running: m.gauge(
                "harbor_relay_jobs_running",
                "Replication jobs being copied now.",
            )?,
            jobs_retrying: m.gauge(
                "harbor_relay_jobs_retrying",
                "Replication jobs waiting for their next attempt after a failure.",
            )?,
            job_retries: m.counters(
                "harbor_relay_job_retries_total",
                "Failed replication attempts that will be retried, by rule.",
                &["rule"],
            )?,
            registry_up: m.add(prometheus::IntGaugeVec::new(
                Opts::new(
                    "harbor_relay_registry_up",
                    "0 while the relay finds the registry down (no connection, or 502/503/504) and one probe watches it; 1 otherwise.",
                ),
                &["registry"],
            ))?,
            jobs_held: m.gauge(
                "harbor_relay_jobs_held",
                "Replication jobs held at a gate, waiting for a signature or a scan.",
            )?,
            oldest_held: m.gauge(
                "harbor_relay_jobs_held_oldest_seconds",
                "How long the longest-held job has waited at a gate, in seconds (0 when none is held).",
            )?,
            gate_decisions: m.counters(
                "harbor_relay_gate_decisions_total",
                "Gate verdicts (pass, hold, refuse) by rule and gate (signature, scan).",
                &["rule", "gate", "verdict"],
            )?,
            reconcile: ReconcileMetrics::new(&m)?,
            leases_held: m.gauge(
                "harbor_relay_leases_held",
                "Jobs this relay holds a lease on (PostgreSQL store; 0 on the embedded store).",
            )?,
            lease_takeovers: m.counter(
                "harbor_relay_lease_takeovers_total",
                "Jobs this relay took over from another relay whose lease ran out (it died or lost the database).",
            )?,
            replication_lag: m.add(prometheus::HistogramVec::new(
                HistogramOpts::new(
                    "harbor_relay_replication_lag_seconds",
                    "Time from the event (Harbor's occur_at) to the artifact written on the target, per target registry.",
                )
                .buckets(vec![
                    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
                ]),
                &["target"],
            ))?,
            last_success: m.timestamps(
                "harbor_relay_last_success_timestamp_seconds",
                "When a rule last replicated an artifact successfully, in Unix seconds.",
            )?,
            transfers_in_flight: m.gauge(
                "harbor_relay_transfers_in_flight",
                "Blobs being copied from a source to a target right now.",
            )?,
            fanout_reads: m.counters(
                "harbor_relay_fanout_reads_total",
                "Blobs read once from the source for several targets of a fan-out, by when the read began: answered (every target's copy had said whether it needs the blob) or waited (after 2 s without the word of a slow or silent target's copy, which reads on its own later if it needs the blob).",
                &["began"],
            )?,
            fanout_detached: m.counter(
                "harbor_relay_fanout_detached_total",
                "Targets of a fan-out cut loose from a blob's shared read because they held the other targets back (2 s in all, and a quarter of the read's time): each read the rest of that blob from the source alone, so a slow site does not pace the others.",
            )?,
            store_size: m.gauge(
                "harbor_relay_store_size_bytes",
                "Size of the embedded job store on disk.",
            )?,
            auth_failures: m.counters(
                "harbor_relay_auth_failures_total",
                "Requests refused for a missing or wrong secret, by endpoint (webhook, api).",
                &["endpoint"],
            )?,
            registry: m.registry,
        };
        metrics.show_usual_series();
        Ok(metrics)
    }

    /// Makes the usual series visible at zero before anything happens.
    fn show_usual_series(&self) {
        for e in ["webhook", "api"] {
            self.auth_failures.with_label_values(&[e]);
        }
        for o in ["copied", "skipped", "mounted", "resumed"] {
            self.blobs.with_label_values(&[o]);
        }
        for b in ["answered", "waited"] {
            self.fanout_reads.with_label_values(&[b]);
        }
    }

    /// Adds `harbor_relay_info{version, store, relay}` = 1: which version
    /// runs, on which store (`embedded` or `postgres`), and the relay's
    /// name as written in the leases it holds (host/pid), so a fleet's
    /// series, its leases and its logs can be matched up.
    pub fn describe(&self, store: &str, relay: &str) -> Result<(), MetricsError> {
        let info = prometheus::IntGaugeVec::new(
            Opts::new(
                "harbor_relay_info",
                "Always 1: this relay's version, job store (embedded, postgres) and name in leases.",
            ),
            &["version", "store", "relay"],
        )?;
        self.registry.register(Box::new(info.clone()))?;
        info.with_label_values(&[env!("CARGO_PKG_VERSION"), store, relay])
            .set(1);
        Ok(())
    }

    /// Makes each rule's series visible at zero, so that alerts and rates
    /// work before the first job of a rule finishes.
    /// `rules` are each rule's name and target registries.
    pub fn init_rules<'a>(&self, rules: impl IntoIterator<Item = (&'a str, &'a [String])>) {
        for (rule, targets) in rules {
            for target in targets {
                for outcome in ["succeeded", "failed", "refused"] {
                    self.jobs_finished
                        .with_label_values(&[rule, target, outcome]);
                }
            }
            self.job_retries.with_label_values(&[rule]);
            self.reconcile.differences.with_label_values(&[rule]);
        }
    }

    /// Jobs of `rule` finished with `outcome`, whatever their target (also
    /// one a reload took out of the rule).
    pub fn jobs_finished_of(&self, rule: &str, outcome: &str) -> u64 {
        use prometheus::core::Collector as _;
        let label = |m: &prometheus::proto::Metric, name: &str| {
            m.get_label()
                .iter()
                .find(|l| l.name() == name)
                .map(|l| l.value().to_string())
        };
        self.jobs_finished
            .collect()
            .iter()
            .flat_map(|f| f.get_metric())
            .filter(|m| {
                label(m, "rule").as_deref() == Some(rule)
                    && label(m, "outcome").as_deref() == Some(outcome)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }

    /// Marks a blob transfer in flight until the guard is dropped.
    pub fn transfer_started(&self) -> InFlight {
        self.transfers_in_flight.inc();
        InFlight(self.transfers_in_flight.clone())
    }

    /// The Prometheus text exposition of every metric, with the request,
    /// retry, 429 and byte counters of each of `registries`.
    pub fn render(&self, registries: &HashMap<String, RegistryClient>) -> String {
        let mut families = self.registry.gather();
        let mut names: Vec<&String> = registries.keys().collect();
        names.sort();
        for (name, help, field) in REGISTRY_COUNTERS {
            let Ok(vec) = IntCounterVec::new(Opts::new(name, help), &["registry"]) else {
                continue;
            };
            for r in &names {
                vec.with_label_values(&[r.as_str()])
                    .inc_by(field(registries[*r].stats()));
            }
            families.extend(prometheus::core::Collector::collect(&vec));
        }
        if let Ok(gauge) = prometheus::IntGaugeVec::new(
            Opts::new(
                "harbor_relay_concurrency",
                "Requests a registry gets at once now: its adaptive limit (capped by max_concurrent_requests), by registry.",
            ),
            &["registry"],
        ) {
            for r in &names {
                gauge
                    .with_label_values(&[r.as_str()])
                    .set(registries[*r].concurrency() as i64);
            }
            families.extend(prometheus::core::Collector::collect(&gauge));
        }
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fan_outs_jobs_are_counted_per_site_and_summed_per_rule() {
        let m = Metrics::new().expect("metrics");
        let sites = ["site-a".to_string(), "site-b".to_string()];
        m.init_rules([("tanzu", &sites[..])]);
        let text = m.render(&HashMap::new());
        for site in ["site-a", "site-b"] {
            let zero = format!(
                "harbor_relay_jobs_finished_total{{outcome=\"failed\",rule=\"tanzu\",target=\"{site}\"}} 0"
            );
            assert!(text.contains(&zero), "{zero} before any job:\n{text}");
        }
        let done = |site: &str, outcome: &str| {
            m.jobs_finished
                .with_label_values(&["tanzu", site, outcome])
                .inc()
        };
        done("site-a", "succeeded");
        done("site-b", "succeeded");
        done("site-b", "failed");
        // A site a reload took out of the rule still counts.
        done("site-old", "succeeded");
        assert_eq!(m.jobs_finished_of("tanzu", "succeeded"), 3);
        assert_eq!(m.jobs_finished_of("tanzu", "failed"), 1);
        assert_eq!(m.jobs_finished_of("other", "failed"), 0);
    }
}
