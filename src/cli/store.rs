//! `harbor-relay store export|import`: move the jobs a relay has not done
//! yet from one store to another (the embedded store to PostgreSQL, or
//! back). The format and the decisions live in
//! `harbor_relay::jobs::store::transfer`; this file opens the stores and
//! the files and says what was done.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

use super::args::StoreAction;
use harbor_relay::config::Config;
use harbor_relay::daemon;
use harbor_relay::jobs::store::transfer;
use harbor_relay::jobs::{Job, Store, StoreError, now_ms};

/// How many specs one enqueue commits: the store's queue cap is checked
/// per batch, and a batch is one commit on either backend.
const BATCH: usize = 200;

/// Runs `harbor-relay store …`.
pub async fn run(action: StoreAction) -> anyhow::Result<()> {
    match action {
        StoreAction::Export { config, output } => export(config, output).await,
        StoreAction::Import {
            config,
            include_failed,
            dry_run,
            file,
        } => import(config, file, include_failed, dry_run).await,
    }
}

/// Where the config keeps its jobs, for messages.
fn which_store(config: &Config) -> String {
    match &config.store.postgres {
        Some(pg) => format!("PostgreSQL {}", pg.shown),
        None => format!("{}", config.store.path.display()),
    }
}

async fn open(config: &Config, what: &str) -> anyhow::Result<Store> {
    let me = format!("{what}/{}", daemon::instance());
    let (store, _) = daemon::connect_store(config, &me).await?;
    Ok(store)
}

/// Writes every job of the config's store to `output` (standard output
/// without one) and a count by state to standard error.
async fn export(path: PathBuf, output: Option<PathBuf>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let store = open(&config, "export").await?;
    let jobs = store.list(None, usize::MAX).await?;
    match &output {
        Some(file) => {
            let f = std::fs::File::create(file)
                .with_context(|| format!("cannot create {}", file.display()))?;
            transfer::write(&mut std::io::BufWriter::new(f), &jobs, now_ms())
                .with_context(|| format!("writing {}", file.display()))?;
        }
        None => transfer::write(&mut std::io::stdout().lock(), &jobs, now_ms())?,
    }
    eprintln!(
        "exported {} jobs from {} ({})",
        jobs.len(),
        which_store(&config),
        by_state(&jobs)
    );
    Ok(())
}

/// "2 queued, 1 failed, …": what an export holds.
fn by_state(jobs: &[Job]) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for j in jobs {
        *counts.entry(j.state.as_str()).or_default() += 1;
    }
    if counts.is_empty() {
        return "none".into();
    }
    let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    parts.join(", ")
}

/// Queues the jobs of the export at `file` (`-`: standard input) that
/// were not done, in the config's store; `dry_run` only says which.
async fn import(
    path: PathBuf,
    file: PathBuf,
    include_failed: bool,
    dry_run: bool,
) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let (header, jobs) = read_export(&file)?;
    let plan = transfer::plan(jobs, include_failed);
    let unknown = transfer::unknown_registries(&plan.specs, |n| config.registries.contains_key(n));
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.into_iter().collect();
        bail!(
            "the export's jobs name registries {} does not define: {}; add them (same names) before importing",
            path.display(),
            names.join(", ")
        );
    }
    let left = match (plan.succeeded, plan.failed_left) {
        (s, 0) => format!("left out {s} succeeded"),
        (s, f) => format!("left out {s} succeeded and {f} failed (--include-failed queues those)"),
    };
    if dry_run {
        for (id, spec) in plan.from_ids.iter().zip(&plan.specs) {
            println!(
                "would queue job {id}: {} {} -> {}",
                spec.action.as_str(),
                spec.source(),
                spec.target()
            );
        }
        println!("{} jobs would be queued; {left}", plan.specs.len());
        return Ok(());
    }
    let store = open(&config, "import").await?;
    let (queued, folded) = enqueue_all(&store, plan.specs, &plan.from_ids).await?;
    store.flush().await?;
    println!(
        "queued {queued} jobs in {} (exported {} by {}); {folded} folded into jobs already active there; {left}",
        which_store(&config),
        header.jobs,
        header.by
    );
    Ok(())
}

fn read_export(file: &Path) -> anyhow::Result<(transfer::Header, Vec<Job>)> {
    let read = if file == Path::new("-") {
        transfer::read(std::io::stdin().lock())
    } else {
        let f =
            std::fs::File::open(file).with_context(|| format!("cannot open {}", file.display()))?;
        transfer::read(BufReader::new(f))
    };
    read.with_context(|| format!("{} was not imported", file.display()))
}

/// Enqueues `specs` in batches; returns how many became new jobs and how
/// many folded into active ones. A full queue stops it, saying how far it
/// got: running it again later folds what is already in.
async fn enqueue_all(
    store: &Store,
    specs: Vec<harbor_relay::jobs::JobSpec>,
    from_ids: &[u64],
) -> anyhow::Result<(usize, usize)> {
    let (mut queued, mut folded) = (0, 0);
    let total = specs.len();
    let mut done = 0;
    for batch in specs.chunks(BATCH) {
        match store.enqueue(batch.to_vec()).await {
            Ok(out) => {
                let f = out.iter().filter(|e| e.coalesced).count();
                folded += f;
                queued += out.len() - f;
            }
            Err(e @ StoreError::Full { .. }) => {
                let next = from_ids.get(done).copied().unwrap_or_default();
                bail!(
                    "{e}. Imported {done} of {total} jobs (up to before the export's job {next}); run the same import again once the queue has room: the jobs already imported fold into themselves while active or just done (copying one again is harmless)"
                );
            }
            Err(e) => return Err(e.into()),
        }
        done += batch.len();
    }
    Ok((queued, folded))
}
