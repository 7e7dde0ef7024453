//! Every Prometheus metric the daemon exports, in one registry.
//!
//! Names are `harbor_relay_*`, in base units, counters end in `_total`.
//! Labels are bounded: formats, outcomes, rule names from the config. Never
//! a tag, digest or anything secret.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    /// Webhooks received, by `format` and `outcome` (accepted, ignored,
    /// unauthorized, bad_request, too_large, unsupported_media_type, error).
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
}

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
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}
