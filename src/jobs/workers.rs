//! The worker pool: takes queued jobs from the store, runs each through the
//! replicator, records the outcome.
//!
//! On shutdown a worker takes no new job and finishes the one it has; the
//! daemon waits for them for a grace period. A job cut off by the end of
//! that period stays `running` on disk and is queued again at next start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Job, Store};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replicate::{CopyRequest, Replicator};

/// What workers share.
pub struct Context {
    /// The job store.
    pub store: Arc<Store>,
    /// Registries by configured name.
    pub registries: Arc<HashMap<String, Registry>>,
    /// The copier.
    pub replicator: Replicator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
}

/// The running pool.
pub struct Workers {
    tasks: JoinSet<()>,
}

impl Workers {
    /// Starts `count` workers that stop when `shutdown` is cancelled.
    pub fn spawn(count: usize, ctx: Arc<Context>, shutdown: CancellationToken) -> Workers {
        let mut tasks = JoinSet::new();
        for n in 0..count {
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { worker(n, ctx, shutdown).await });
        }
        Workers { tasks }
    }

    /// Waits for the workers to finish their current jobs, at most `grace`.
    /// Returns false if some were still running (they resume at next start).
    pub async fn join(mut self, grace: Duration) -> bool {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all).await.is_ok() {
            true
        } else {
            self.tasks.abort_all();
            false
        }
    }
}

async fn worker(n: usize, ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let notified = ctx.store.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        match ctx.store.claim().await {
            Ok(Some(job)) => run_job(&ctx, job).await,
            Ok(None) => {
                ctx.metrics.queue_depth.set(ctx.store.queued() as i64);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                tracing::error!(worker = n, error = %e, "cannot claim a job; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// Runs one claimed job and records its outcome.
async fn run_job(ctx: &Context, job: Job) {
    let spec = &job.spec;
    let span = tracing::info_span!(
        "job",
        id = job.id,
        rule = %spec.rule,
        source = %format!("{}/{}{}", spec.from, spec.source_repository, spec.reference),
        target = %format!("{}/{}", spec.to, spec.target_repository),
    );
    async {
        ctx.metrics.queue_depth.set(ctx.store.queued() as i64);
        ctx.metrics.jobs_running.set(ctx.store.running() as i64);
        let started = Instant::now();
        let outcome = match (ctx.registries.get(&spec.from), ctx.registries.get(&spec.to)) {
            (Some(source), Some(target)) => ctx
                .replicator
                .copy(&CopyRequest {
                    source,
                    source_repository: &spec.source_repository,
                    reference: &spec.reference,
                    target,
                    target_repository: &spec.target_repository,
                })
                .await
                .map_err(|e| e.to_string()),
            _ => Err(format!(
                "registry '{}' or '{}' is no longer in the config",
                spec.from, spec.to
            )),
        };
        let elapsed = started.elapsed();
        ctx.metrics.job_duration.observe(elapsed.as_secs_f64());
        match &outcome {
            Ok(s) => {
                ctx.metrics
                    .jobs_finished
                    .with_label_values(&[spec.rule.as_str(), "succeeded"])
                    .inc();
                tracing::info!(
                    digest = %s.digest,
                    blobs_copied = s.blobs_copied,
                    blobs_skipped = s.blobs_skipped,
                    bytes = s.bytes_copied,
                    seconds = elapsed.as_secs_f64(),
                    "job succeeded"
                );
            }
            Err(e) => {
                ctx.metrics
                    .jobs_finished
                    .with_label_values(&[spec.rule.as_str(), "failed"])
                    .inc();
                tracing::warn!(error = %e, seconds = elapsed.as_secs_f64(), "job failed");
            }
        }
        if let Err(e) = ctx.store.finish(job.id, outcome).await {
            tracing::error!(error = %e, "cannot record the job's outcome; it will run again at next start");
        }
        ctx.metrics.jobs_running.set(ctx.store.running() as i64);
        ctx.metrics.queue_depth.set(ctx.store.queued() as i64);
    }
    .instrument(span)
    .await
}
