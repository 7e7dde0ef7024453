//! The worker pool: takes queued jobs from the store, runs each through the
//! replicator, records the outcome.
//!
//! As many jobs run at once as the registries take, within `workers`
//! (`admit`). A failed attempt is retried with exponential backoff and
//! jitter, unless retrying cannot help (an untrusted certificate, refused
//! credentials, an artifact that does not exist) or the attempts are used
//! up. A scheduler
//! task moves due retries back to the queue and prunes old finished jobs.
//!
//! On shutdown a worker takes no new job and finishes the one it has; the
//! daemon waits for them for a grace period. A job cut off by the end of
//! that period stays `running` on disk and is queued again at next start.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

mod admit;
mod decide;

use super::{Action, Job, Outcome, Store, now_ms};
use crate::live::Shared;
use crate::metrics::Metrics;
use crate::replicate::Replicator;

pub use admit::Admission;
pub use decide::RetryPolicy;
use decide::{Attempt, Holding, decide};

/// What workers share.
pub struct Context {
    /// The job store.
    pub store: Arc<Store>,
    /// Registries, rules and job settings in force (reloadable).
    pub live: Arc<Shared>,
    /// The copier.
    pub replicator: Replicator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Bytes moved so far by each running job.
    pub board: Arc<Board>,
    /// The registries found down, each watched by one probe.
    pub outages: Arc<super::outage::Outages>,
    /// The jobs running now, within the registries' limits.
    pub admission: Admission,
}

/// The jobs running here: bytes moved so far by each (what the status
/// page shows), and how to tell one to stop (`jobs cancel`).
#[derive(Debug, Default)]
pub struct Board(
    std::sync::Mutex<
        std::collections::HashMap<u64, (Arc<std::sync::atomic::AtomicU64>, CancellationToken)>,
    >,
);

impl Board {
    /// Bytes moved so far by job `id`, if it is running here.
    pub fn moved(&self, id: u64) -> Option<u64> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).map(|(c, _)| c.load(Ordering::Relaxed))
    }

    /// Tells job `id` to stop, if it is running here: it cancels its
    /// uploads and fails, saying it was cancelled. False if it is not.
    pub fn cancel(&self, id: u64) -> bool {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).map(|(_, stop)| stop.cancel()).is_some()
    }

    fn start(&self, id: u64) -> (Arc<std::sync::atomic::AtomicU64>, CancellationToken) {
        let c = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = CancellationToken::new();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (c.clone(), stop.clone()));
        (c, stop)
    }

    fn end(&self, id: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// How long a cancelled job may take to stop by itself (cancelling its
/// uploads) before it is dropped where it is.
const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// How often the scheduler looks for due retries at most.
const SCHEDULER_TICK: Duration = Duration::from_millis(250);
/// How often the longest hold is measured for its gauge.
const HELD_EVERY: Duration = Duration::from_secs(10);
/// How often finished jobs past their retention are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// How many workers run against how many should: what `/readyz` reports.
#[derive(Debug, Default)]
pub struct Readiness {
    expected: AtomicUsize,
    alive: AtomicUsize,
}

impl Readiness {
    /// Why the daemon is not ready, or `None` when it is.
    pub fn problem(&self) -> Option<String> {
        let expected = self.expected.load(Ordering::Relaxed);
        let alive = self.alive.load(Ordering::Relaxed);
        if expected == 0 {
            Some("workers are not started".into())
        } else if alive < expected {
            Some(format!("{alive} of {expected} workers running"))
        } else {
            None
        }
    }
}

/// Counts a worker as alive for as long as it is held.
struct Alive(Arc<Readiness>);

impl Alive {
    fn new(r: Arc<Readiness>) -> Alive {
        r.alive.fetch_add(1, Ordering::Relaxed);
        Alive(r)
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.alive.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The running pool.
pub struct Workers {
    tasks: JoinSet<()>,
}

impl Workers {
    /// Starts `count` workers that stop when `shutdown` is cancelled.
    pub fn spawn(
        count: usize,
        ctx: Arc<Context>,
        readiness: Arc<Readiness>,
        shutdown: CancellationToken,
    ) -> Workers {
        readiness.expected.store(count, Ordering::Relaxed);
        let mut tasks = JoinSet::new();
        {
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { scheduler(ctx, shutdown).await });
        }
        for n in 0..count {
            let ctx = ctx.clone();
            let shutdown = shutdown.clone();
            let alive = Alive::new(readiness.clone());
            tasks.spawn(async move {
                let _alive = alive;
                worker(n, ctx, shutdown).await
            });
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

/// Moves due retries to the queue and prunes old finished jobs.
async fn scheduler(ctx: Arc<Context>, shutdown: CancellationToken) {
    let mut last_prune: Option<Instant> = None;
    let mut last_held: Option<Instant> = None;
    loop {
        if last_held.is_none_or(|t| t.elapsed() >= HELD_EVERY) {
            let age = match ctx.store.oldest_held().await {
                Ok(Some(since)) => now_ms().saturating_sub(since) / 1000,
                _ => 0,
            };
            ctx.metrics.oldest_held.set(age as i64);
            ctx.metrics.jobs_held.set(ctx.store.held() as i64);
            last_held = Some(Instant::now());
        }
        if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
            let retention = ctx.live.get().config.jobs.retention;
            let cutoff = now_ms().saturating_sub(retention.as_millis() as u64);
            match ctx.store.prune(cutoff).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "pruned finished jobs past their retention"),
                Err(e) => tracing::error!(error = %e, "pruning finished jobs"),
            }
            last_prune = Some(Instant::now());
        }
        if let Err(e) = ctx.store.promote_due(now_ms()).await {
            tracing::error!(error = %e, "moving due retries to the queue");
        }
        let wait = match ctx.store.next_due().await {
            Ok(Some(due)) => {
                Duration::from_millis(due.saturating_sub(now_ms())).min(SCHEDULER_TICK)
            }
            _ => SCHEDULER_TICK,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn worker(n: usize, ctx: Arc<Context>, shutdown: CancellationToken) {
    loop {
        if shutdown.is_cancelled() {
            return;
        }
        let limit = || {
            let live = ctx.live.get();
            // The registries the rules use: one configured for later,
            // idle, never earns a limit and must not hold the others back.
            let used = live
                .config
                .rules
                .iter()
                .flat_map(|r| std::iter::once(&r.from).chain(&r.to));
            admit::job_limit(
                live.config.jobs.workers,
                used.filter_map(|name| live.registries.get(name))
                    .map(|r| r.concurrency()),
            )
        };
        let notified = ctx.store.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let Some(slot) = ctx.admission.enter(limit, &shutdown).await else {
            return;
        };
        match ctx.store.claim().await {
            Ok(Some(job)) => {
                let siblings = siblings(&ctx, &job).await;
                if siblings.is_empty() {
                    run_job(&ctx, job, &shutdown).await;
                } else {
                    run_fanout(&ctx, job, siblings, &shutdown).await;
                }
                drop(slot);
            }
            Ok(None) => {
                // An idle worker holds no place: the others must not
                // wait for it, nor look again every LOOK_EVERY.
                drop(slot);
                ctx.metrics.queue_depth.set(ctx.store.queued() as i64);
                tokio::select! {
                    _ = &mut notified => {}
                    _ = shutdown.cancelled() => return,
                }
            }
            Err(e) => {
                drop(slot);
                tracing::error!(worker = n, error = %e, "cannot claim a job; retrying in 5s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The queued jobs of `job`'s fan-out, claimed with it; none when it has
/// none or the store cannot say (each then runs alone).
async fn siblings(ctx: &Context, job: &Job) -> Vec<Job> {
    if !job.spec.fanout {
        return Vec::new();
    }
    match ctx.store.claim_siblings(job).await {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(id = job.id, error = %e, "cannot claim the other targets' jobs of this fan-out; it runs alone");
            Vec::new()
        }
    }
}

/// Runs a fan-out's jobs at once, so that their copies meet at their
/// group's tee ([`Replicator::seat`]) and each blob the targets lack is
/// read from the source once. Each job keeps its own outcome, retries and
/// record.
async fn run_fanout(
    ctx: &Arc<Context>,
    job: Job,
    siblings: Vec<Job>,
    shutdown: &CancellationToken,
) {
    let mut jobs = vec![job];
    jobs.extend(siblings);
    tracing::info!(
        jobs = ?jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        targets = ?jobs.iter().map(|j| j.spec.to.as_str()).collect::<Vec<_>>(),
        "fan-out: one read of the source for these targets"
    );
    let runs = jobs.into_iter().map(|job| run_job(ctx, job, shutdown));
    futures_util::future::join_all(runs).await;
}

/// Runs the copy (or delete) a job asks for, once. A panic in it (a bug an
/// odd answer reached) fails this job with the panic's message; the worker
/// goes on.
async fn attempt(
    ctx: &Context,
    live: &crate::live::Live,
    spec: &super::JobSpec,
    moved: Arc<std::sync::atomic::AtomicU64>,
    cancel: CancellationToken,
    last_attempt: bool,
) -> Attempt {
    let rule = live.config.rules.iter().find(|r| r.name == spec.rule);
    let gates = rule.and_then(|r| r.gates.as_ref());
    if spec.gated && spec.action == Action::Copy && gates.is_none() {
        return Attempt::Failed {
            error: format!(
                "rule '{}' had gates when this job was made and has none now (renamed or removed?): not copied ungated; retry it once the rule is back",
                spec.rule
            ),
            permanent: true,
            down: None,
        };
    }
    let (Some(source), Some(target)) = (
        live.registries.get(&spec.from),
        live.registries.get(&spec.to),
    ) else {
        return Attempt::Failed {
            error: format!(
                "registry '{}' or '{}' is no longer in the config",
                spec.from, spec.to
            ),
            permanent: true,
            down: None,
        };
    };
    let work = async {
        match (spec.action, &spec.digest) {
            (Action::Delete, Some(digest)) => {
                let req = spec.copy_request(source, target, None);
                ctx.replicator.delete(&req, digest).await
            }
            _ => {
                let mut req = spec.copy_request(source, target, gates);
                req.moved = Some(moved);
                req.cancel = Some(cancel.clone());
                req.last_attempt = last_attempt;
                // A fan-out's copy reads through its group's tee, where
                // its siblings running now meet it.
                let seat = spec.fanout_group().map(|g| ctx.replicator.seat(&g));
                req.seat = seat.as_ref();
                ctx.replicator.copy(&req).await
            }
        }
    };
    // A cancelled copy stops at its next step and cancels the upload in
    // flight; what does not end by itself within CANCEL_GRACE is dropped.
    let work = async {
        tokio::pin!(work);
        tokio::select! {
            r = &mut work => r,
            () = async {
                cancel.cancelled().await;
                tokio::time::sleep(CANCEL_GRACE).await;
            } => Err(crate::replicate::ReplicateError::Cancelled),
        }
    };
    match supervised(work).await {
        Ok(Ok(s)) => Attempt::Done(s),
        Ok(Err(crate::replicate::ReplicateError::Interrupted)) => Attempt::Interrupted,
        Ok(Err(crate::replicate::ReplicateError::Held(why))) => Attempt::Held(why),
        Ok(Err(crate::replicate::ReplicateError::Refused(why))) => Attempt::Refused(why),
        Ok(Err(e)) => Attempt::Failed {
            permanent: e.is_permanent(),
            down: e.unreachable().map(str::to_string),
            error: e.to_string(),
        },
        Err(error) => {
            tracing::error!(%error, "the job panicked; it fails, the worker goes on");
            Attempt::Failed {
                error,
                permanent: true,
                down: None,
            }
        }
    }
}

/// Runs one claimed job and records its outcome.
async fn run_job(ctx: &Arc<Context>, job: Job, shutdown: &CancellationToken) {
    let spec = &job.spec;
    let span = tracing::info_span!(
        "job",
        id = job.id,
        rule = %spec.rule,
        source = %spec.source(),
        target = %format!("{}/{}", spec.to, spec.target_repository),
        digest = tracing::field::Empty,
    );
    if let Some(d) = &spec.digest {
        span.record("digest", d.as_str());
    }
    async {
        update_gauges(ctx);
        let live = ctx.live.get();
        let retry = RetryPolicy::from_config(&live.config.jobs);
        let started = Instant::now();
        let (moved, cancel) = ctx.board.start(job.id);
        let last = job.attempts >= retry.max_attempts;
        let tried = attempt(ctx, &live, spec, moved, cancel, last).await;
        ctx.board.end(job.id);
        let holding = live
            .config
            .rules
            .iter()
            .find(|r| r.name == spec.rule)
            .and_then(|r| r.gates.as_ref())
            .map(|g| Holding {
                since_ms: job.held_since_ms,
                hold_for: g.hold_for,
                recheck: g.recheck,
            });
        let outcome = decide(
            tried,
            job.attempts,
            &retry,
            holding,
            job.down.as_deref(),
            now_ms(),
        );
        report(ctx, &job, &outcome, started.elapsed(), &retry);
        let down = match &outcome {
            Outcome::Down { registry, .. } => Some(registry.clone()),
            _ => None,
        };
        record(ctx, job.id, outcome).await;
        // After the record: a probe that queues the registry's waiting
        // jobs before this one is recorded would miss it, but then it has
        // marked the registry up, and this starts a new probe.
        if let Some(registry) = down {
            watch(ctx, &live, &registry, shutdown);
        }
        update_gauges(ctx);
    }
    .instrument(span)
    .await
}

/// Starts the one probe of a registry found down, unless one runs.
fn watch(ctx: &Arc<Context>, live: &crate::live::Live, name: &str, shutdown: &CancellationToken) {
    let Some(registry) = live.registries.get(name) else {
        return;
    };
    if ctx.outages.mark_down(name) {
        tokio::spawn(super::outage::probe(
            name.to_string(),
            registry.clone(),
            ctx.store.clone(),
            ctx.outages.clone(),
            ctx.metrics.clone(),
            shutdown.clone(),
        ));
    }
}

/// Records an attempt's outcome, trying again while the store fails (a
/// database restarting, a disk briefly full): the copy is done, and a
/// result left unrecorded would run the job again (after its lease on
/// PostgreSQL, at the next start on sled). Shutdown's grace period bounds
/// the wait.
async fn record(ctx: &Context, id: u64, outcome: crate::jobs::Outcome) {
    let mut wait = Duration::from_millis(100);
    while let Err(e) = ctx.store.finish(id, outcome.clone()).await {
        tracing::warn!(error = %e, retry_in = ?wait, "cannot record the job's outcome yet; trying again");
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    }
}

fn update_gauges(ctx: &Context) {
    ctx.metrics.queue_depth.set(ctx.store.queued() as i64);
    ctx.metrics.jobs_retrying.set(ctx.store.retrying() as i64);
    ctx.metrics.jobs_running.set(ctx.store.running() as i64);
    ctx.metrics.jobs_held.set(ctx.store.held() as i64);
}

/// Logs an attempt's outcome and counts it in the metrics.
fn report(ctx: &Context, job: &Job, outcome: &Outcome, elapsed: Duration, retry: &RetryPolicy) {
    let spec = &job.spec;
    let rule = spec.rule.as_str();
    match outcome {
        Outcome::Succeeded(s) => {
            ctx.metrics.job_duration.observe(elapsed.as_secs_f64());
            let now = now_ms() as f64 / 1000.0;
            if let Some(at) = spec.occurred_at {
                ctx.metrics
                    .replication_lag
                    .with_label_values(&[spec.to.as_str()])
                    .observe((now - at as f64).max(0.0));
            }
            ctx.metrics.last_success.with_label_values(&[rule]).set(now);
            ctx.metrics
                .jobs_finished
                .with_label_values(&[rule, spec.to.as_str(), "succeeded"])
                .inc();
            tracing::info!(
                digest = %s.digest,
                blobs_copied = s.blobs_copied,
                blobs_skipped = s.blobs_skipped,
                bytes = s.bytes_copied,
                attempt = job.attempts,
                seconds = elapsed.as_secs_f64(),
                "job succeeded"
            );
        }
        Outcome::Interrupted => {
            tracing::info!("stopped between chunks for shutdown; queued for the next start");
        }
        Outcome::Failed(error) => {
            ctx.metrics.job_duration.observe(elapsed.as_secs_f64());
            ctx.metrics
                .jobs_finished
                .with_label_values(&[rule, spec.to.as_str(), "failed"])
                .inc();
            let why = if job.attempts < retry.max_attempts {
                "retrying cannot fix this".to_string()
            } else {
                format!("attempt {} of {}", job.attempts, retry.max_attempts)
            };
            tracing::warn!(error = %error, attempt = job.attempts, "job failed ({why})");
        }
        Outcome::Held { reason, at_ms } => {
            tracing::info!(
                reason = %reason,
                look_again_in = ?Duration::from_millis(at_ms.saturating_sub(now_ms())),
                "held at a gate: nothing written; an event of the repository or the timer looks again"
            );
        }
        Outcome::Refused(reason) => {
            ctx.metrics
                .jobs_finished
                .with_label_values(&[rule, spec.to.as_str(), "refused"])
                .inc();
            tracing::warn!(reason = %reason, "refused at a gate: nothing written, not retried");
        }
        Outcome::Retry { error, at_ms } | Outcome::Down { error, at_ms, .. } => {
            ctx.metrics.job_retries.with_label_values(&[rule]).inc();
            tracing::warn!(
                error = %error,
                attempt = job.attempts,
                max_attempts = retry.max_attempts,
                retry_in = ?Duration::from_millis(at_ms.saturating_sub(now_ms())),
                "attempt failed; will retry"
            );
        }
    }
}

/// Runs `work`, turning a panic into an error that carries its message, so
/// that a job that panics fails and its worker goes on.
async fn supervised<T>(work: impl std::future::Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(panic.as_ref()))
}

/// A job's error for a panic: its message, and that it is a bug to report.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!(
        "internal error: the job panicked ({}); this is a bug in harbor-relay, please report it with the job's source",
        crate::registry::cut(&text)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_becomes_the_jobs_error_and_the_caller_goes_on() {
        let index = 3;
        let msg = supervised(async move {
            let v: Vec<u8> = Vec::new();
            v[index]
        })
        .await
        .expect_err("panics");
        assert!(msg.contains("index out of bounds"), "{msg}");
        assert!(msg.starts_with("internal error: the job panicked"), "{msg}");
        let huge = "x".repeat(100_000);
        let msg = supervised(async move { panic!("{huge}") })
            .await
            .expect_err("panics");
        assert!(msg.len() < 400, "the message is cut: {} bytes", msg.len());
        assert_eq!(supervised(async { 7 }).await, Ok(7));
    }
}
