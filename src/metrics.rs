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
    /// Jobs finished, by `rule` and `outcome` (succeeded, failed).
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
    /// Tags compared by reconcile passes, by `rule`.
    pub reconcile_checked: IntCounterVec,
    /// Differences reconcile passes found (and queued), by `rule`.
    pub reconcile_differences: IntCounterVec,
    /// When the last reconcile pass of a rule finished (Unix seconds).
    pub reconcile_last_pass: prometheus::GaugeVec,
    /// From the event's time to the tag written on the target.
    pub replication_lag: Histogram,
    /// When a rule last replicated something successfully (Unix seconds).
    pub last_success: prometheus::GaugeVec,
    /// Blobs being copied right now.
    pub transfers_in_flight: IntGauge,
    /// Size of the job store on disk.
    pub store_size: IntGauge,
    /// Requests refused for a missing or wrong secret, by `endpoint`
    /// (webhook, api).
    pub auth_failures: IntCounterVec,
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
const REGISTRY_COUNTERS: [(&str, &str, StatsField); 6] = [
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
];

/// A metric could not be registered (a programming error: duplicate name).
#[derive(Debug, thiserror::Error)]
#[error("metrics: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let webhooks = IntCounterVec::new(
            Opts::new(
                "harbor_relay_webhooks_received_total",
                "Webhook requests received, by payload format and outcome.",
            ),
            &["format", "outcome"],
        )?;
        let jobs_finished = IntCounterVec::new(
            Opts::new(
                "harbor_relay_jobs_finished_total",
                "Replication jobs finished, by rule and outcome.",
            ),
            &["rule", "outcome"],
        )?;
        let blobs = IntCounterVec::new(
            Opts::new(
                "harbor_relay_blobs_total",
                "Blobs handled by replication: copied (uploaded), skipped (already on the target), mounted (linked from another repository of the target), resumed (an interrupted upload continued; also counted as copied).",
            ),
            &["outcome"],
        )?;
        let bytes_copied = IntCounter::new(
            "harbor_relay_copied_bytes_total",
            "Blob bytes uploaded to target registries.",
        )?;
        let job_duration = Histogram::with_opts(
            HistogramOpts::new(
                "harbor_relay_job_duration_seconds",
                "Wall time of finished replication jobs.",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ]),
        )?;
        let queue_depth = IntGauge::new(
            "harbor_relay_queue_depth",
            "Replication jobs waiting for a worker.",
        )?;
        let jobs_running = IntGauge::new(
            "harbor_relay_jobs_running",
            "Replication jobs being copied now.",
        )?;
        let jobs_retrying = IntGauge::new(
            "harbor_relay_jobs_retrying",
            "Replication jobs waiting for their next attempt after a failure.",
        )?;
        let job_retries = IntCounterVec::new(
            Opts::new(
                "harbor_relay_job_retries_total",
                "Failed replication attempts that will be retried, by rule.",
            ),
            &["rule"],
        )?;
        let reconcile_checked = IntCounterVec::new(
            Opts::new(
                "harbor_relay_reconcile_checked_total",
                "Tags compared between source and target by reconcile passes, by rule.",
            ),
            &["rule"],
        )?;
        let reconcile_differences = IntCounterVec::new(
            Opts::new(
                "harbor_relay_reconcile_differences_total",
                "Tags found different on the target by reconcile passes (each queued as a job), by rule.",
            ),
            &["rule"],
        )?;
        let reconcile_last_pass = prometheus::GaugeVec::new(
            Opts::new(
                "harbor_relay_reconcile_last_pass_timestamp_seconds",
                "When the last successful reconcile pass of a rule finished, in Unix seconds.",
            ),
            &["rule"],
        )?;
        let replication_lag = Histogram::with_opts(
            HistogramOpts::new(
                "harbor_relay_replication_lag_seconds",
                "Time from the event (Harbor's occur_at) to the artifact written on the target.",
            )
            .buckets(vec![
                0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0,
            ]),
        )?;
        let last_success = prometheus::GaugeVec::new(
            Opts::new(
                "harbor_relay_last_success_timestamp_seconds",
                "When a rule last replicated an artifact successfully, in Unix seconds.",
            ),
            &["rule"],
        )?;
        let transfers_in_flight = IntGauge::new(
            "harbor_relay_transfers_in_flight",
            "Blobs being copied from a source to a target right now.",
        )?;
        let store_size = IntGauge::new(
            "harbor_relay_store_size_bytes",
            "Size of the embedded job store on disk.",
        )?;
        let auth_failures = IntCounterVec::new(
            Opts::new(
                "harbor_relay_auth_failures_total",
                "Requests refused for a missing or wrong secret, by endpoint (webhook, api).",
            ),
            &["endpoint"],
        )?;
        for e in ["webhook", "api"] {
            auth_failures.with_label_values(&[e]);
        }
        registry.register(Box::new(auth_failures.clone()))?;
        registry.register(Box::new(transfers_in_flight.clone()))?;
        registry.register(Box::new(store_size.clone()))?;
        registry.register(Box::new(replication_lag.clone()))?;
        registry.register(Box::new(last_success.clone()))?;
        registry.register(Box::new(reconcile_checked.clone()))?;
        registry.register(Box::new(reconcile_differences.clone()))?;
        registry.register(Box::new(reconcile_last_pass.clone()))?;
        registry.register(Box::new(jobs_retrying.clone()))?;
        registry.register(Box::new(job_retries.clone()))?;
        registry.register(Box::new(webhooks.clone()))?;
        registry.register(Box::new(jobs_finished.clone()))?;
        registry.register(Box::new(blobs.clone()))?;
        registry.register(Box::new(bytes_copied.clone()))?;
        registry.register(Box::new(job_duration.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        registry.register(Box::new(jobs_running.clone()))?;
        // Make the usual series visible at zero before anything happens.
        for o in ["copied", "skipped", "mounted", "resumed"] {
            blobs.with_label_values(&[o]);
        }
        Ok(Metrics {
            registry,
            webhooks,
            jobs_finished,
            blobs,
            bytes_copied,
            job_duration,
            queue_depth,
            jobs_running,
            jobs_retrying,
            job_retries,
            reconcile_checked,
            reconcile_differences,
            reconcile_last_pass,
            replication_lag,
            last_success,
            transfers_in_flight,
            store_size,
            auth_failures,
        })
    }

    /// Makes each rule's series visible at zero, so that alerts and rates
    /// work before the first job of a rule finishes.
    pub fn init_rules<'a>(&self, rules: impl IntoIterator<Item = &'a str>) {
        for rule in rules {
            for outcome in ["succeeded", "failed"] {
                self.jobs_finished.with_label_values(&[rule, outcome]);
            }
            self.job_retries.with_label_values(&[rule]);
            self.reconcile_differences.with_label_values(&[rule]);
        }
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
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
