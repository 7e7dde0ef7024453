//! Catch-up: webhooks get lost (Harbor gives up after three attempts, tags
//! added in its UI send none, nothing arrives while the daemon is down), so
//! a rule may set `reconcile_interval` and have the source compared with
//! the target now and then. A pass lists the source (a Harbor, with
//! `kind = "harbor"`, through its REST API; any other registry with
//! `/v2/_catalog` and `tags/list`), keeps what the rule selects, and compares each tag's
//! digest on both sides with manifest `HEAD`s (cheap; on Docker Hub they do
//! not count as pulls). Only the differences become jobs. A rule whose
//! source is any registry and that sets an interval is "scheduled pull
//! replication". With `prune = true`, a pass also removes target tags
//! the source no longer has ([`prune`]).

pub mod prune;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::jobs::{Action, JobSpec, Store};
use crate::metrics::Metrics;
use crate::reference::Reference;
use crate::registry::{Registry, RegistryError};
use crate::rules::Rule;

/// A tag whose target differs from its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// Repository on the source.
    pub source_repository: String,
    /// The tag.
    pub tag: String,
    /// What the tag points at on the source.
    pub source_digest: String,
    /// Repository on the target.
    pub target_repository: String,
    /// What it points at on the target, if it exists there.
    pub target_digest: Option<String>,
}

/// What a pass found.
#[derive(Debug, Default)]
pub struct Report {
    /// Tags compared.
    pub checked: u64,
    /// Tags that differ.
    pub differences: Vec<Difference>,
    /// The source repositories the pass listed, with all their tags.
    pub seen: Vec<prune::Seen>,
    /// Target tags to remove (rules with `prune = true`).
    pub stale: Vec<prune::Stale>,
}

/// Compares the source with the target under one rule (and, with
/// `prune`, finds the target tags the source no longer has).
pub async fn pass(
    rule: &Rule,
    source: &Registry,
    target: &Registry,
) -> Result<Report, RegistryError> {
    let mut report = if source.is_harbor() {
        harbor_pass(rule, source, target).await?
    } else {
        registry_pass(rule, source, target).await?
    };
    if rule.config.prune {
        report.stale = prune::find(rule, source, target, &report.seen).await?;
    }
    Ok(report)
}

/// A pass over any registry: `/v2/_catalog`, `tags/list`, `HEAD`s.
async fn registry_pass(
    rule: &Rule,
    source: &Registry,
    target: &Registry,
) -> Result<Report, RegistryError> {
    let mut report = Report::default();
    for repository in source.catalog().await? {
        let project = repository
            .split_once('/')
            .map(|(p, _)| p)
            .unwrap_or_default();
        // A cheap first filter on the repository, before listing tags.
        if rule
            .plan(project, &repository, &Reference::Digest(String::new()))
            .is_err_and(|s| {
                matches!(
                    s,
                    crate::rules::Skip::Project | crate::rules::Skip::Repository
                )
            })
        {
            continue;
        }
        let tags = source.tags(&repository).await?;
        report.seen.push(prune::Seen {
            project: project.to_string(),
            source_repository: repository.clone(),
            target_repository: rule.target_of(project, &repository),
            tags: tags.iter().cloned().collect(),
        });
        for tag in tags {
            let reference = Reference::Tag(tag.clone());
            let Ok(plan) = rule.plan(project, &repository, &reference) else {
                continue;
            };
            let Some(source_digest) = source.resolve(&repository, &reference).await? else {
                continue;
            };
            report.checked += 1;
            let target_digest = target.resolve(&plan.target_repository, &reference).await?;
            if target_digest.as_deref() == Some(source_digest.as_str()) {
                continue;
            }
            if target_digest.is_some() && !plan.overwrite {
                continue;
            }
            report.differences.push(Difference {
                source_repository: repository.clone(),
                tag,
                source_digest,
                target_repository: plan.target_repository,
                target_digest,
            });
        }
    }
    Ok(report)
}

/// A pass over a Harbor source, listed through its REST API (which gives
/// each tag's digest, so the source needs no `HEAD` per tag).
async fn harbor_pass(
    rule: &Rule,
    source: &Registry,
    target: &Registry,
) -> Result<Report, RegistryError> {
    let mut report = Report::default();
    let listed = crate::harbor::list_tagged(source, &|p| rule.takes_project(p)).await?;
    report.seen = seen_in(rule, &listed);
    for crate::harbor::Tagged {
        repository,
        tag,
        digest: source_digest,
        labels,
    } in listed
    {
        let project = repository
            .split_once('/')
            .map(|(p, _)| p)
            .unwrap_or_default();
        let reference = Reference::Tag(tag.clone());
        let Ok(plan) = rule.plan(project, &repository, &reference) else {
            continue;
        };
        // Harbor's label filter: only artifacts carrying every label.
        if !crate::harbor::missing_labels(plan.labels.as_deref(), &labels).is_empty() {
            continue;
        }
        report.checked += 1;
        let target_digest = target.resolve(&plan.target_repository, &reference).await?;
        if target_digest.as_deref() == Some(source_digest.as_str())
            || (target_digest.is_some() && !plan.overwrite)
        {
            continue;
        }
        report.differences.push(Difference {
            source_repository: repository,
            tag,
            source_digest,
            target_repository: plan.target_repository,
            target_digest,
        });
    }
    Ok(report)
}

/// The repositories of a Harbor listing the rule covers, with their tags.
fn seen_in(rule: &Rule, listed: &[crate::harbor::Tagged]) -> Vec<prune::Seen> {
    let mut by_repo: std::collections::BTreeMap<&str, prune::Seen> = Default::default();
    for t in listed {
        let project = t
            .repository
            .split_once('/')
            .map(|(p, _)| p)
            .unwrap_or_default();
        if !rule.covers(project, &t.repository) {
            continue;
        }
        by_repo
            .entry(&t.repository)
            .or_insert_with(|| prune::Seen {
                project: project.to_string(),
                source_repository: t.repository.clone(),
                target_repository: rule.target_of(project, &t.repository),
                tags: Default::default(),
            })
            .tags
            .insert(t.tag.clone());
    }
    by_repo.into_values().collect()
}

/// The jobs that repair what a pass found.
pub fn jobs_for(rule: &Rule, report: &Report) -> Vec<JobSpec> {
    report
        .differences
        .iter()
        .map(|d| {
            JobSpec::from_plan(
                rule.plan_for(&d.source_repository, d.target_repository.clone()),
                Action::Copy,
                Reference::Tag(d.tag.clone()),
                Some(d.source_digest.clone()),
                None,
            )
        })
        .collect()
}

/// Removes what a pass found stale, counting and logging each; a failure
/// is tried again at the next pass.
async fn prune_all(rule: &str, target: &Registry, stale: &[prune::Stale], metrics: &Metrics) {
    for s in stale {
        let result = match prune::remove(target, s).await {
            Ok(()) => {
                tracing::info!(rule, removed = %s.describe(), "pruned a tag the source no longer has");
                "removed"
            }
            Err(e) => {
                tracing::warn!(rule, tag = %s.describe(), error = %e, "cannot prune");
                "failed"
            }
        };
        metrics
            .reconcile
            .pruned
            .with_label_values(&[rule, result])
            .inc();
    }
}

/// One pass: compare, queue the differences, prune, count.
async fn one_pass(
    rule: &Rule,
    source: &Registry,
    target: &Registry,
    store: &Store,
    metrics: &Metrics,
) {
    let name = rule.config.name.as_str();
    let started = Instant::now();
    let report = match pass(rule, source, target).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(rule = %name, error = %e, "reconcile pass failed");
            return;
        }
    };
    metrics
        .reconcile
        .checked
        .with_label_values(&[name])
        .inc_by(report.checked);
    metrics
        .reconcile
        .differences
        .with_label_values(&[name])
        .inc_by(report.differences.len() as u64);
    metrics
        .reconcile
        .last_pass
        .with_label_values(&[name])
        .set(crate::clock::now_ms() as f64 / 1000.0);
    let jobs = jobs_for(rule, &report);
    if !jobs.is_empty()
        && let Err(e) = store.enqueue(jobs).await
    {
        tracing::error!(rule = %name, error = %e, "cannot enqueue reconcile jobs");
    }
    prune_all(name, target, &report.stale, metrics).await;
    tracing::info!(
        rule = %name,
        checked = report.checked,
        differences = report.differences.len(),
        seconds = started.elapsed().as_secs_f64(),
        "reconcile pass done"
    );
}

/// Runs a pass for `rule` every `interval` (the first right away) and
/// enqueues the differences, until `shutdown`.
pub async fn run(
    rule: Rule,
    interval: Duration,
    source: Registry,
    target: Registry,
    store: Arc<Store>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let name = rule.turn_name();
    loop {
        // Relays sharing a store take turns: one pass per interval in all.
        match store.reconcile_turn(&name, interval).await {
            Ok(true) => one_pass(&rule, &source, &target, &store, &metrics).await,
            Ok(false) => tracing::debug!(rule = %name, "another relay runs this reconcile pass"),
            Err(e) => {
                tracing::warn!(rule = %name, error = %e, "cannot tell whose turn the reconcile pass is; skipping it")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
