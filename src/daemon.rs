//! Wiring: config → registries, store, rules, workers and the HTTP server,
//! and an orderly stop.
//!
//! [`run`] takes an already bound listener and a shutdown token, so tests
//! can start a whole daemon in-process on a free port, and `main` only adds
//! signal handling.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::{Config, TlsMode};
use crate::jobs::workers::{Context, RetryPolicy};
use crate::jobs::{Store, Workers};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replicate::Replicator;
use crate::rules::RuleSet;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// A registry client could not be built.
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    /// The store could not be opened.
    #[error("{0} (path {1})")]
    Store(crate::jobs::StoreError, std::path::PathBuf),
    /// A rule's globs did not compile.
    #[error("rules: {0}")]
    Rules(#[from] globset::Error),
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
}

/// Builds one client per configured registry, warning about any that skips
/// certificate verification.
pub fn registries(config: &Config) -> Result<HashMap<String, Registry>, DaemonError> {
    let mut out = HashMap::new();
    for (name, r) in &config.registries {
        if r.tls == TlsMode::InsecureSkipVerify {
            tracing::warn!(
                registry = %name,
                url = %r.url,
                "TLS certificate verification is OFF for this registry (tls.insecure_skip_verify = true): anyone on the path can impersonate it; prefer tls.ca_file"
            );
        }
        out.insert(name.clone(), Registry::new(r)?);
    }
    Ok(out)
}

/// Runs the daemon on `listener` until `shutdown` is cancelled: the HTTP
/// server stops accepting, running jobs get `jobs.shutdown_grace` to finish,
/// and the store is flushed.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let registries = Arc::new(registries(&config)?);
    let (store, recovered) = Store::open(&config.store.path)
        .map_err(|e| DaemonError::Store(e, config.store.path.clone()))?;
    store.set_coalesce_window(config.jobs.coalesce_window);
    let store = Arc::new(store);
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "re-queued jobs interrupted by the last stop"
        );
    }
    if config.server.webhook_auth.is_none() {
        tracing::warn!(
            "server.webhook_auth is not set: anyone who can reach this port can queue replication jobs; set it and Harbor's webhook Auth Header to the same secret"
        );
    }
    let rules = RuleSet::new(&config.rules)?;
    if rules.is_empty() {
        tracing::warn!(
            "no [[rules]] configured: webhooks will be acknowledged but nothing replicates"
        );
    }
    let metrics = Arc::new(Metrics::new()?);
    metrics.queue_depth.set(store.queued() as i64);

    let ctx = Arc::new(Context {
        store: store.clone(),
        registries,
        replicator: Replicator::new(
            config.jobs.blob_concurrency,
            Some(metrics.clone()),
            store.clone(),
        )
        .with_stop(shutdown.clone()),
        metrics: metrics.clone(),
        retry: RetryPolicy {
            max_attempts: config.jobs.max_attempts,
            initial_delay: config.jobs.retry_initial_delay,
            max_delay: config.jobs.retry_max_delay,
        },
        retention: config.jobs.retention,
    });
    let workers = Workers::spawn(config.jobs.workers, ctx.clone(), shutdown.clone());
    let mut reconcilers = tokio::task::JoinSet::new();
    for rule in rules.iter() {
        let Some(interval) = rule.config.reconcile_interval else {
            continue;
        };
        let (Some(source), Some(target)) = (
            ctx.registries.get(&rule.config.from),
            ctx.registries.get(&rule.config.to),
        ) else {
            continue;
        };
        tracing::info!(rule = %rule.config.name, ?interval, "reconcile passes on");
        reconcilers.spawn(crate::reconcile::run(
            rule.clone(),
            interval,
            source.clone(),
            target.clone(),
            store.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
    }
    let state = Arc::new(AppState {
        store: store.clone(),
        rules,
        webhook_auth: config.server.webhook_auth.clone(),
        metrics,
    });
    tracing::info!(
        listen = %listener.local_addr()?,
        workers = config.jobs.workers,
        rules = config.rules.len(),
        queued = store.queued(),
        "harbor-relay ready"
    );
    let served = api::run(listener, state, shutdown.clone()).await;
    shutdown.cancel();
    reconcilers.abort_all();
    tracing::info!("stopping: waiting for running jobs");
    if !workers.join(config.jobs.shutdown_grace).await {
        tracing::warn!(
            grace = ?config.jobs.shutdown_grace,
            "jobs still running after the grace period; they resume at next start"
        );
    }
    if let Err(e) = store.flush().await {
        tracing::error!(error = %e, "flushing the job store");
    }
    served?;
    tracing::info!("stopped");
    Ok(())
}
