//! Wiring: config → registries, store, rules, workers and the HTTP server,
//! reloads on request, and an orderly stop.
//!
//! [`run`] takes an already bound listener and a shutdown token, so tests
//! can start a whole daemon in-process on a free port; [`run_reloadable`]
//! also takes a channel of reload requests, which `main` feeds from
//! `SIGHUP`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Config;
use crate::jobs::workers::{Context, Readiness};
use crate::jobs::{Store, Workers};
use crate::live::{Live, LiveError, Shared};
use crate::metrics::Metrics;
use crate::registry::Registry;
use crate::replicate::Replicator;

/// Why the daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Registries or rules could not be set up.
    #[error(transparent)]
    Live(#[from] LiveError),
    /// The store could not be opened.
    #[error("{0} ({1})")]
    Store(crate::jobs::StoreError, String),
    /// Metrics could not be registered.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The HTTP server failed.
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    /// The embedded store could not write for [`STORE_FAILING_EXIT`]: the
    /// daemon stopped so that it is opened again (systemd restarts it).
    #[error("the job store could not write for {0:?} ({1}); stopped so that it is opened again")]
    StoreWedged(Duration, String),
}

/// How long the embedded store may fail to write before the daemon stops
/// (and systemd, `Restart=on-failure`, starts it again): sled refuses
/// every write after one failed, even once space is freed, and only a
/// reopen clears that.
pub const STORE_FAILING_EXIT: Duration = Duration::from_secs(10);

/// Builds one client per configured registry, warning about any that skips
/// certificate verification. For the one-shot commands.
pub fn registries(config: &Config) -> Result<HashMap<String, Registry>, DaemonError> {
    Ok(Live::build(config.clone(), None)?.registries)
}

/// Runs the daemon on `listener` until `shutdown` is cancelled: the HTTP
/// server stops accepting, running jobs get `jobs.shutdown_grace` to finish,
/// and the store is flushed.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), DaemonError> {
    let (_keep, reload) = mpsc::channel(1);
    run_reloadable(config, listener, shutdown, reload).await
}

/// [`run`], and each message on `reload` loads the config file again and
/// puts it in force (see [`crate::live`]); a file that fails to load is
/// logged and the running config kept.
pub async fn run_reloadable(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
    reload: mpsc::Receiver<()>,
) -> Result<(), DaemonError> {
    let metrics_listener = metrics_listener(&config).await?;
    let me = instance();
    let store = open_store(&config, &me, shutdown.child_token()).await?;
    warn_about(&config);
    let live = Arc::new(Shared::new(Live::build(config.clone(), None)?));
    let metrics = daemon_metrics(&config, &store, &me)?;

    let board = Arc::new(crate::jobs::workers::Board::default());
    let outages = Arc::new(crate::jobs::outage::Outages::default());
    let ctx = Arc::new(Context {
        store: store.clone(),
        live: live.clone(),
        replicator: Replicator::new(
            config.jobs.blob_concurrency,
            Some(metrics.clone()),
            store.ledger(),
        )
        .with_stop(shutdown.clone()),
        metrics: metrics.clone(),
        board: board.clone(),
        outages: outages.clone(),
        admission: Default::default(),
    });
    let readiness = Arc::new(Readiness::default());
    let workers = Workers::spawn(
        config.jobs.workers,
        ctx.clone(),
        readiness.clone(),
        shutdown.clone(),
    );
    let mut reconcilers = CancellationToken::new();
    start_reconcilers(&live.get(), &ctx, shutdown.child_token(), &mut reconcilers);
    let state = Arc::new(AppState {
        store: store.clone(),
        live: live.clone(),
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        limiter: api::webhook_limiter(config.server.webhook_rate_limit),
        started: std::time::Instant::now(),
        board,
        outages,
    });
    let metrics_server = metrics_listener.map(|l| {
        tokio::spawn(api::serve(
            l,
            api::metrics_router(state.clone()),
            None,
            api::ConnLimits::from_config(&config.server),
            shutdown.clone(),
        ))
    });
    announce(&config, &listener, store.queued())?;
    let tls = listener_tls(&config)?;
    let server = tokio::spawn(api::run(listener, state, tls.clone(), shutdown.clone()));
    let mut running = Running {
        live,
        ctx,
        metrics,
        readiness,
        tls,
        reconcilers,
        shutdown,
    };
    let wedged = tokio::spawn(watch_store(store.clone(), running.shutdown.clone()));
    let (served, server) = running.until_stopped(server, reload).await;
    crate::notify::stopping();
    running.reconcilers.cancel();
    let stopped = wind_down(&config, workers, &store, (served, server), metrics_server).await;
    match wedged.await {
        Ok(Some((since, why))) => Err(DaemonError::StoreWedged(since, why)),
        _ => stopped,
    }
}

/// Watches whether the embedded store can write: a flush every two
/// seconds while it cannot (which clears the problem if it works again);
/// past [`STORE_FAILING_EXIT`] the daemon stops, and this says why.
async fn watch_store(store: Arc<Store>, shutdown: CancellationToken) -> Option<(Duration, String)> {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = shutdown.cancelled() => return None,
        }
        let Some((why, since)) = store.write_failing() else {
            continue;
        };
        if store.flush().await.is_ok() {
            tracing::info!("the job store writes again");
            continue;
        }
        if since >= STORE_FAILING_EXIT {
            tracing::error!(error = %why, ?since, "the job store cannot write; stopping so that it is opened again (systemd restarts the service)");
            shutdown.cancel();
            return Some((since, why));
        }
    }
}

/// The stop, in order: the running jobs finish (for `jobs.shutdown_grace`
/// at most; the rest resume at the next start), the store is flushed,
/// then the servers' own results are collected.
async fn wind_down(
    config: &Config,
    workers: Workers,
    store: &Store,
    (served, server): (Option<Served>, tokio::task::JoinHandle<std::io::Result<()>>),
    metrics_server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
) -> Result<(), DaemonError> {
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
    let served = match served {
        Some(r) => r,
        None => server.await,
    };
    served.map_err(std::io::Error::other)??;
    if let Some(m) = metrics_server {
        m.await.map_err(std::io::Error::other)??;
    }
    tracing::info!("stopped");
    Ok(())
}

/// The daemon's metrics, with what is known at start: which relay this
/// is and on which store, the queue, each rule's series at zero.
fn daemon_metrics(config: &Config, store: &Store, me: &str) -> Result<Arc<Metrics>, DaemonError> {
    let metrics = Metrics::new()?;
    let backend = match store.postgres() {
        Some(_) => "postgres",
        None => "embedded",
    };
    metrics.describe(backend, me)?;
    metrics.queue_depth.set(store.queued() as i64);
    metrics.init_rules(config.rules.iter().map(|r| (r.name.as_str(), &r.to[..])));
    for name in config.registries.keys() {
        metrics.registry_up.with_label_values(&[name]).set(1);
    }
    Ok(Arc::new(metrics))
}

/// What the running daemon holds while it serves, reloads and pings the
/// watchdog.
struct Running {
    live: Arc<Shared>,
    ctx: Arc<Context>,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    tls: Option<Arc<api::TlsSlot>>,
    reconcilers: CancellationToken,
    shutdown: CancellationToken,
}

type Served = Result<std::io::Result<()>, tokio::task::JoinError>;

impl Running {
    /// Serves until `shutdown` is cancelled or the server ends; reloads on
    /// request; pings the systemd watchdog while every worker runs.
    /// Returns the server's result if it ended, else its handle.
    async fn until_stopped(
        &mut self,
        mut server: tokio::task::JoinHandle<std::io::Result<()>>,
        mut reload: mpsc::Receiver<()>,
    ) -> (Option<Served>, tokio::task::JoinHandle<std::io::Result<()>>) {
        let mut served = None;
        let mut watchdog = crate::notify::watchdog_interval().map(tokio::time::interval);
        let shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                r = &mut server => {
                    served = Some(r);
                    shutdown.cancel();
                    break;
                }
                Some(()) = reload.recv() => self.reload(),
                _ = tick(&mut watchdog) => {
                    // A wedged runtime never gets here; dead workers are reported
                    // instead of pinged over, so systemd restarts the daemon.
                    match self.readiness.problem() {
                        None => crate::notify::watchdog(),
                        Some(why) => tracing::error!(problem = %why, "not pinging the systemd watchdog"),
                    }
                }
            }
        }
        (served, server)
    }

    /// Loads the config file again and puts it in force: registries,
    /// rules, secrets, the listener's certificate, job settings, reconcile
    /// passes. A bad file changes nothing.
    fn reload(&mut self) {
        crate::notify::reloading();
        if apply_reload(&self.live) {
            let live = self.live.get();
            if let (Some(slot), Some(t)) = (&self.tls, &live.config.server.tls) {
                match t.server_config() {
                    Ok(c) => {
                        slot.replace(c);
                        tracing::info!(cert = %t.cert_file.display(), "listener certificate reloaded");
                    }
                    Err(e) => tracing::error!(error = %e, "listener certificate NOT reloaded"),
                }
            }
            let jobs = &live.config.jobs;
            self.ctx.store.set_max_queued(jobs.max_queued);
            self.ctx.store.set_coalesce_window(jobs.coalesce_window);
            let rules = live.config.rules.iter();
            self.metrics
                .init_rules(rules.map(|r| (r.name.as_str(), &r.to[..])));
            start_reconcilers(
                &live,
                &self.ctx,
                self.shutdown.child_token(),
                &mut self.reconcilers,
            );
        }
        crate::notify::ready("configuration reloaded");
    }
}

/// Says that the daemon is ready: in the log and to systemd.
fn announce(
    config: &Config,
    listener: &tokio::net::TcpListener,
    queued: usize,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    tracing::info!(
        listen = %local,
        workers = config.jobs.workers,
        rules = config.rules.len(),
        queued,
        "harbor-relay ready"
    );
    crate::notify::ready(&format!(
        "listening on {local}, {} rules",
        config.rules.len()
    ));
    Ok(())
}

/// The main listener's TLS settings, if `server.tls_cert` is set.
fn listener_tls(config: &Config) -> std::io::Result<Option<Arc<api::TlsSlot>>> {
    let Some(t) = &config.server.tls else {
        return Ok(None);
    };
    let c = t.server_config().map_err(std::io::Error::other)?;
    tracing::info!(cert = %t.cert_file.display(), "HTTPS on the main listener");
    Ok(Some(Arc::new(api::TlsSlot::new(c))))
}

/// The listener of `server.metrics_listen`, if set.
async fn metrics_listener(config: &Config) -> Result<Option<tokio::net::TcpListener>, DaemonError> {
    let Some(addr) = config.server.metrics_listen else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot listen on server.metrics_listen {addr}: {e}"),
        )
    })?;
    tracing::info!(listen = %addr, "metrics, health and readiness on their own listener");
    Ok(Some(l))
}

/// This relay's name in the leases it takes on a shared store: the host
/// (a pod's name in Kubernetes) and the process.
pub fn instance() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    format!("{host}/{}", std::process::id())
}

/// Opens the job store the config names, with its queue limits: on the
/// embedded store, re-queuing what the last stop interrupted (returned as
/// the count); on PostgreSQL, migrating the schema. `instance` names this
/// process in the leases it takes. The `store` commands open it so too.
pub async fn connect_store(config: &Config, instance: &str) -> Result<(Store, usize), DaemonError> {
    let (store, recovered) = match &config.store.postgres {
        Some(pg) => {
            if let Some(warning) = pg.clear_text_warning() {
                tracing::warn!("{warning}");
            }
            let store =
                Store::open_postgres(pg.connect.clone(), pg.ca_pem.as_deref(), instance, pg.lease)
                    .await
                    .map_err(|e| {
                        DaemonError::Store(e, format!("store.url, database {}", pg.shown))
                    })?;
            (store, 0)
        }
        None => Store::open(&config.store.path).map_err(|e| {
            DaemonError::Store(e, format!("store.path {}", config.store.path.display()))
        })?,
    };
    store.set_coalesce_window(config.jobs.coalesce_window);
    store.set_max_queued(config.jobs.max_queued);
    Ok((store, recovered))
}

/// Opens the job store (see [`connect_store`]); on PostgreSQL, starts
/// tending its leases and wake-ups until `stop`.
async fn open_store(
    config: &Config,
    me: &str,
    stop: CancellationToken,
) -> Result<Arc<Store>, DaemonError> {
    let (store, recovered) = connect_store(config, me).await?;
    if let (Some(shared), Some(pg)) = (store.postgres(), &config.store.postgres) {
        tokio::spawn(crate::jobs::store::tend(
            shared.clone(),
            pg.connect.clone(),
            stop,
        ));
        tracing::info!(database = %pg.shown, instance = %me, "job store on PostgreSQL, shared with other relays");
    }
    if recovered > 0 {
        tracing::info!(
            jobs = recovered,
            "re-queued jobs interrupted by the last stop"
        );
    }
    Ok(Arc::new(store))
}

/// Waits for the next watchdog tick, or forever without a watchdog.
async fn tick(watchdog: &mut Option<tokio::time::Interval>) {
    match watchdog {
        Some(i) => {
            i.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Start-up and reload warnings about a config that works but is risky.
fn warn_about(config: &Config) {
    if !config.inline_secrets.is_empty()
        && let Ok(meta) = std::fs::metadata(&config.file)
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o004 != 0 {
            tracing::warn!(
                file = %config.file.display(),
                keys = %config.inline_secrets.join(", "),
                "the config file is readable by every user and holds secrets inline: run `chmod 600 {}` (owner: the service's user), or move them to ${{VAR}} or *_file / systemd credentials",
                config.file.display()
            );
        }
    }
    for (key, path, mode, why) in config.loose_secret_files() {
        tracing::warn!(
            key = %key,
            file = %path.display(),
            "{} holds a secret and is {why} (mode {mode:o}): run `chmod 600 {}` (owner: the service's user), or give it as a systemd credential",
            path.display(),
            path.display()
        );
    }
    if config.server.api_token.is_none() {
        tracing::warn!(
            "server.api_token is not set: the jobs API and the status page are open to anyone who can reach this port (they show every job, its repositories and errors); set it, or bind server.listen where only admins reach"
        );
    }
    if config.server.webhook_auth.is_none() {
        tracing::warn!(
            "server.webhook_auth is not set: anyone who can reach this port can queue replication jobs; set it and Harbor's webhook Auth Header to the same secret"
        );
    }
    if config.rules.is_empty() {
        tracing::warn!(
            "no [[rules]] configured: webhooks will be acknowledged but nothing replicates"
        );
    }
}

/// Loads the config file again and puts it in force. Returns whether it
/// did; on any error the old config stays and the error is logged.
fn apply_reload(live: &Shared) -> bool {
    let old = live.get();
    let file = old.config.file.clone();
    tracing::info!(file = %file.display(), "reloading the configuration");
    let config = match Config::load(&file) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "configuration NOT reloaded; the previous one stays in force");
            return false;
        }
    };
    for key in crate::live::needs_restart(&old.config, &config) {
        tracing::warn!(
            key,
            "changed in the file, but takes effect only after a restart"
        );
    }
    match Live::build(config, Some(&old)) {
        Ok(new) => {
            warn_about(&new.config);
            tracing::info!(
                registries = new.registries.len(),
                rules = new.config.rules.len(),
                "configuration reloaded"
            );
            live.replace(new);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration NOT reloaded; the previous one stays in force");
            false
        }
    }
}

/// (Re)starts one reconcile loop per rule with a `reconcile_interval`,
/// stopping the previous set first.
fn start_reconcilers(
    live: &Live,
    ctx: &Arc<Context>,
    token: CancellationToken,
    current: &mut CancellationToken,
) {
    current.cancel();
    *current = token.clone();
    for rule in live.rules.iter() {
        let Some(interval) = rule.config.reconcile_interval else {
            continue;
        };
        let (Some(source), Some(target)) = (
            live.registries.get(&rule.config.from),
            live.registries.get(&rule.to),
        ) else {
            continue;
        };
        tracing::info!(rule = %rule.config.name, ?interval, "reconcile passes on");
        tokio::spawn(crate::reconcile::run(
            rule.clone(),
            interval,
            source.clone(),
            target.clone(),
            ctx.store.clone(),
            ctx.metrics.clone(),
            token.clone(),
        ));
    }
}
