//! The one-shot commands: register a webhook, reconcile, test rules,
//! check registries, replicate one image now.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::bail;

use harbor_relay::config::Config;
use harbor_relay::daemon;
use harbor_relay::reference;
use harbor_relay::replicate::{CopyRequest, Replicator};

pub async fn register_webhook(
    path: PathBuf,
    registry: String,
    project: String,
    url: String,
    format: String,
    skip_cert_verify: bool,
) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let project = reference::repository(&project)?.to_string();
    if project.contains('/') {
        bail!("'{project}' is not a project name");
    }
    let format = match format.to_ascii_lowercase().as_str() {
        "default" => "Default",
        "cloudevents" => "CloudEvents",
        _ => bail!("--format must be Default or CloudEvents"),
    };
    let registries = daemon::registries(&config)?;
    let Some(harbor) = registries.get(&registry) else {
        bail!("no registry '{registry}' in {}", path.display());
    };
    if config.server.webhook_auth.is_none() {
        eprintln!("warning: server.webhook_auth is not set, so the policy carries no auth header");
    }
    let auth = config.server.webhook_auth.as_ref().map(|s| s.expose());
    let target = harbor_relay::harbor::WebhookTarget {
        url: &url,
        auth_header: auth,
        payload_format: format,
        skip_cert_verify,
    };
    match harbor_relay::harbor::register_webhook(harbor, &project, &target).await? {
        harbor_relay::harbor::Registered::Created(id) => {
            println!("created webhook policy {id} on {registry}/{project} -> {url}")
        }
        harbor_relay::harbor::Registered::Updated(id) => {
            println!("updated webhook policy {id} on {registry}/{project} -> {url}")
        }
    }
    Ok(())
}

pub async fn reconcile(path: PathBuf, rule: Option<String>, dry_run: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let rules = harbor_relay::rules::RuleSet::new(&config.rules)?;
    let mut names: Vec<&str> = rules.iter().map(|r| r.config.name.as_str()).collect();
    names.dedup();
    let chosen: Vec<&harbor_relay::rules::Rule> = match &rule {
        // Each of a fan-out rule's targets is a pass of its own.
        Some(name) => match rules
            .iter()
            .filter(|r| r.config.name == *name)
            .collect::<Vec<_>>()
        {
            found if found.is_empty() => bail!(
                "no rule '{name}' in {} (rules: {})",
                path.display(),
                names.join(", ")
            ),
            found => found,
        },
        // Without --rule: every rule that reconciles on its own.
        None => rules
            .iter()
            .filter(|r| r.config.reconcile_interval.is_some())
            .collect(),
    };
    if chosen.is_empty() {
        bail!(
            "no rule has reconcile_interval; name one with --rule (rules: {})",
            names.join(", ")
        );
    }
    let registries = daemon::registries(&config)?;
    let mut failed = 0;
    for rule in chosen {
        if let Err(e) = reconcile_rule(&config, &registries, rule, dry_run).await {
            failed += 1;
            eprintln!("rule '{}': {e:#}", rule.config.name);
        }
    }
    if failed > 0 {
        bail!("{failed} rule(s) failed");
    }
    Ok(())
}

async fn reconcile_rule(
    config: &Config,
    registries: &std::collections::HashMap<String, harbor_relay::registry::Registry>,
    rule: &harbor_relay::rules::Rule,
    dry_run: bool,
) -> anyhow::Result<()> {
    match rule.fans_out() {
        true => println!("rule '{}', target {}:", rule.config.name, rule.to),
        false => println!("rule '{}':", rule.config.name),
    }
    let (Some(source), Some(target)) =
        (registries.get(&rule.config.from), registries.get(&rule.to))
    else {
        bail!("the rule's registries are not configured");
    };
    let report = harbor_relay::reconcile::pass(rule, source, target).await?;
    print_report(rule, &report, dry_run);
    if dry_run {
        return Ok(());
    }
    let failed = prune_stale(rule, target, &report).await
        + copy_differences(config, rule, source, target, &report).await;
    if failed > 0 {
        bail!(
            "{failed} of {} copies and prunes failed",
            report.differences.len() + report.stale.len()
        );
    }
    Ok(())
}

/// What a pass found: each difference, each tag to prune, the totals.
fn print_report(
    rule: &harbor_relay::rules::Rule,
    report: &harbor_relay::reconcile::Report,
    dry_run: bool,
) {
    for d in &report.differences {
        println!(
            "{}/{}:{} {} -> {}/{}:{} {}",
            rule.config.from,
            d.source_repository,
            d.tag,
            d.source_digest,
            rule.to,
            d.target_repository,
            d.tag,
            d.target_digest.as_deref().unwrap_or("missing")
        );
    }
    for s in &report.stale {
        println!(
            "{}prune {}/{}",
            if dry_run { "would " } else { "" },
            rule.to,
            s.describe()
        );
    }
    println!(
        "{} tags checked, {} differ{}",
        report.checked,
        report.differences.len(),
        if rule.config.prune {
            format!(", {} to prune", report.stale.len())
        } else {
            String::new()
        }
    );
}

/// Removes the stale tags a pass found; returns how many failed.
async fn prune_stale(
    rule: &harbor_relay::rules::Rule,
    target: &harbor_relay::registry::Registry,
    report: &harbor_relay::reconcile::Report,
) -> usize {
    let mut failed = 0;
    for s in &report.stale {
        match harbor_relay::reconcile::prune::remove(target, s).await {
            Ok(()) => println!("pruned {}/{}", rule.to, s.describe()),
            Err(e) => {
                failed += 1;
                eprintln!("failed to prune {}: {e}", s.describe());
            }
        }
    }
    failed
}

/// Copies what differs, here and now; returns how many copies failed.
async fn copy_differences(
    config: &Config,
    rule: &harbor_relay::rules::Rule,
    source: &harbor_relay::registry::Registry,
    target: &harbor_relay::registry::Registry,
    report: &harbor_relay::reconcile::Report,
) -> usize {
    let replicator = Replicator::new(
        config.jobs.blob_concurrency,
        None,
        std::sync::Arc::new(harbor_relay::replicate::ledger::MemoryLedger::default()),
    );
    let mut failed = 0;
    // Through the rule's gates, as the daemon's jobs are.
    let gates = rule.config.gates.as_ref();
    for job in harbor_relay::reconcile::jobs_for(rule, report) {
        match replicator
            .copy(&job.copy_request(source, target, gates))
            .await
        {
            Ok(s) => println!(
                "copied {}{} ({} blobs, {} bytes)",
                job.source_repository, job.reference, s.blobs_copied, s.bytes_copied
            ),
            Err(e @ harbor_relay::replicate::ReplicateError::Held(_)) => {
                println!("not copied {}{}: {e}", job.source_repository, job.reference);
            }
            Err(e) => {
                failed += 1;
                eprintln!("failed {}{}: {e}", job.source_repository, job.reference);
            }
        }
    }
    failed
}

pub fn rules_test(path: PathBuf, image: String) -> anyhow::Result<()> {
    // Rules need no credentials and no network.
    let config = Config::load_without_secrets(&path)?;
    let image = match registry_host(&image) {
        Some((host, rest)) => {
            println!("(ignoring the registry host '{host}': rules match the repository)");
            reference::parse_image(rest)?
        }
        None => reference::parse_image(&image)?,
    };
    let Some((project, _)) = image.repository.split_once('/') else {
        bail!(
            "'{}' has no project: Harbor repositories are <project>/<name>",
            image.repository
        );
    };
    let rules = harbor_relay::rules::RuleSet::new(&config.rules)?;
    let (plans, skips) = rules.plans(project, &image.repository, &image.reference);
    for p in &plans {
        println!(
            "rule '{}': {}/{image} -> {}/{}{}{}",
            p.rule,
            p.from,
            p.to,
            p.target_repository,
            image.reference,
            match (p.overwrite, p.referrer_only) {
                (_, true) =>
                    " (only if it is a referrer: a signature, SBOM or attestation with a subject)",
                (true, false) => "",
                (false, false) => " (override = false)",
            }
        );
    }
    let mut told: Vec<&str> = Vec::new();
    for p in &plans {
        // What a rule says of the artifact is the same for each target.
        if !told.contains(&p.rule.as_str()) {
            told.push(&p.rule);
            rule_notes(&rules, p);
        }
        let harbor = config
            .registries
            .get(&p.to)
            .is_some_and(|r| r.is_harbor || r.create_projects);
        if harbor && let Some(problem) = harbor_relay::harbor::target_problem(&p.target_repository)
        {
            println!(
                "rule '{}': WILL FAIL on the Harbor target: {problem}",
                p.rule
            );
        }
    }
    for (rule, why) in &skips {
        println!("rule '{rule}': no match ({why})");
    }
    if plans.is_empty() {
        // Exit 1, so a script can ask whether an image would replicate.
        bail!("nothing would be replicated: no rule takes {image}");
    }
    Ok(())
}

/// What `rules test` says of a rule once, whatever its targets.
fn rule_notes(rules: &harbor_relay::rules::RuleSet, p: &harbor_relay::rules::Plan) {
    if let Some(types) = &p.artifact_types {
        println!(
            "rule '{}': only {} artifacts (artifact_types); decided from the manifest when the job runs",
            p.rule,
            types.join(", ")
        );
    }
    if let Some(labels) = &p.labels {
        println!(
            "rule '{}': only artifacts carrying the Harbor labels {} (labels); read from the source's artifact API when the job runs",
            p.rule,
            labels.join(", ")
        );
    }
    if let Some(g) = rules.get(&p.rule).and_then(|r| r.config.gates.as_ref()) {
        let mut what = Vec::new();
        if let Some(sig) = &g.signature {
            what.push(format!("require_signature: {} key(s)", sig.keys.len()));
        }
        if let Some(scan) = &g.scan {
            what.push(format!("max_severity: {}", scan.max.word()));
        }
        println!(
            "rule '{}': gated ({}): nothing is copied before they pass; `--gates` reads them now",
            p.rule,
            what.join(", ")
        );
    }
    if let Some(note) = rules.get(&p.rule).and_then(|r| prune_note(r, p)) {
        println!("{note}");
    }
}

/// What `prune = true` does for a rule's target repository, in words.
fn prune_note(
    rule: &harbor_relay::rules::Rule,
    plan: &harbor_relay::rules::Plan,
) -> Option<String> {
    let c = &rule.config;
    c.prune.then(|| {
        format!(
            "rule '{}': prune = true: reconcile removes target tags in {} that the rule selects and the source no longer has{}{}",
            c.name,
            plan.target_repository,
            if c.replicate_deletes {
                ", and a manifest left without tags that the source no longer holds"
            } else {
                ""
            },
            if c.reconcile_interval.is_none() {
                format!(
                    "; the rule has no reconcile_interval, so only `harbor-relay reconcile --rule {}` does",
                    c.name
                )
            } else {
                String::new()
            }
        )
    })
}

/// A leading registry host in an image reference (`harbor.example.com/…`,
/// `10.0.0.5:5000/…`, `localhost/…`), as docker tells hosts from paths.
fn registry_host(image: &str) -> Option<(&str, &str)> {
    let (first, rest) = image.split_once('/')?;
    (first.contains('.') || first.contains(':') || first == "localhost").then_some((first, rest))
}

pub async fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    println!(
        "config {}: ok ({} registries, {} rules)\n",
        path.display(),
        config.registries.len(),
        config.rules.len()
    );
    let rows = harbor_relay::check::run(&config).await;
    let width = |f: &dyn Fn(&harbor_relay::check::Row) -> usize, min: usize| {
        rows.iter().map(f).max().unwrap_or(0).max(min)
    };
    let (wr, wc) = (
        width(&|r| r.registry.len(), 8),
        width(&|r| r.check.len(), 5),
    );
    println!(
        "{:wr$}  {:wc$}  {:7}  DETAIL",
        "REGISTRY", "CHECK", "RESULT"
    );
    for r in &rows {
        println!(
            "{:wr$}  {:wc$}  {:7}  {}",
            r.registry,
            r.check,
            r.status.as_str(),
            r.detail
        );
    }
    let failed = rows
        .iter()
        .filter(|r| r.status == harbor_relay::check::Status::Fail)
        .count();
    let warned = rows
        .iter()
        .filter(|r| r.status == harbor_relay::check::Status::Warn)
        .count();
    println!();
    if failed > 0 {
        bail!("{failed} check(s) failed, {warned} warning(s)");
    }
    println!("all checks passed, {warned} warning(s)");
    Ok(())
}

pub async fn replicate(
    path: PathBuf,
    from: String,
    to: String,
    target_repository: Option<String>,
    image: String,
) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let image = reference::parse_image(&image)?;
    let target_repository = match target_repository {
        Some(r) => reference::repository(&r)?.to_string(),
        None => image.repository.clone(),
    };
    let registries = daemon::registries(&config)?;
    let Some(source) = registries.get(&from) else {
        bail!("no registry '{from}' in {}", path.display());
    };
    let Some(target) = registries.get(&to) else {
        bail!("no registry '{to}' in {}", path.display());
    };
    if source.is_harbor() && !image.repository.contains('/') {
        bail!(
            "'{}' has no project: on a Harbor every repository is <project>/<name> (e.g. library/{})",
            image.repository,
            image.repository
        );
    }
    let started = Instant::now();
    let replicator = Replicator::new(
        config.jobs.blob_concurrency,
        None,
        std::sync::Arc::new(harbor_relay::replicate::ledger::MemoryLedger::default()),
    );
    let s = replicator
        .copy(&CopyRequest {
            source,
            source_repository: &image.repository,
            reference: &image.reference,
            target,
            target_repository: &target_repository,
            overwrite: true,
            referrers: true,
            platforms: None,
            event_digest: None,
            referrer_only: false,
            artifact_types: None,
            labels: None,
            max_blob_size: None,
            moved: None,
            cancel: None,
            last_attempt: true,
            rule: "replicate",
            gates: None,
            seat: None,
        })
        .await?;
    let manifests = match (s.manifests_copied, s.tag_written) {
        (0, true) => format!(
            "0 written (the target had the manifest); the tag {} now points at it",
            image.reference.as_str()
        ),
        (0, false) => "0 written (already on the target under this reference)".to_string(),
        (n, _) => format!("{n} written"),
    };
    println!(
        "replicated {from}/{image} -> {to}/{target_repository}{}\n  digest     {}\n  manifests  {manifests}\n  blobs      {} copied, {} already present, {} mounted\n  bytes      {}\n  time       {:.2}s",
        image.reference,
        s.digest,
        s.blobs_copied,
        s.blobs_skipped,
        s.blobs_mounted,
        s.bytes_copied,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
