//! The `harbor-relay` command: the daemon and its one-shot helpers.
//! Business logic lives in the library; this file parses arguments, sets up
//! logging and signals, and turns errors into messages and exit codes.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand, ValueEnum};
use tokio_util::sync::CancellationToken;

use harbor_relay::config::Config;
use harbor_relay::daemon;
use harbor_relay::reference;
use harbor_relay::replicate::{CopyRequest, Replicator};

/// Replicates Harbor artifacts to a second registry when Harbor says they were pushed.
#[derive(Parser)]
#[command(name = "harbor-relay", version, about, long_about = None)]
struct Cli {
    /// Log format: human-readable text or one JSON object per line
    /// [default: the config's log.format, else text].
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon: receive webhooks, replicate, serve the API and metrics.
    Serve {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
    },
    /// Copy one artifact now, in the foreground, and report what was done.
    Replicate {
        /// The configuration file (for the registries).
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// Source registry name, as in [registries.NAME].
        #[arg(long)]
        from: String,
        /// Target registry name.
        #[arg(long)]
        to: String,
        /// Repository on the target (default: the same as on the source).
        #[arg(long)]
        target_repository: Option<String>,
        /// What to copy: repository:tag or repository@sha256:…
        image: String,
    },
    /// Look at and retry the jobs of a running daemon, through its API.
    Jobs {
        /// The daemon's base URL (default: from --config's server.listen, else http://127.0.0.1:8080).
        #[arg(long, env = "HARBOR_RELAY_URL", global = true)]
        url: Option<String>,
        /// The daemon's configuration file, to find its address.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG", global = true)]
        config: Option<PathBuf>,
        /// The API token (server.api_token), needed for `retry` and, when
        /// the daemon has one, for everything. Prefer the environment
        /// variable: arguments are visible in `ps`.
        #[arg(
            long,
            env = "HARBOR_RELAY_API_TOKEN",
            hide_env_values = true,
            global = true
        )]
        token: Option<String>,
        #[command(subcommand)]
        action: JobsAction,
    },
    /// Compare a rule's source with its target now; copy what differs.
    Reconcile {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// The rule's name.
        #[arg(long)]
        rule: String,
        /// Only print the differences.
        #[arg(long)]
        dry_run: bool,
    },
    /// Harbor helpers.
    Harbor {
        #[command(subcommand)]
        action: HarborAction,
    },
    /// Check the rules of a config against an image, without copying.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
    /// Check the config, then each registry: DNS, TCP, TLS (certificate
    /// and trust), the /v2/ API with our credentials, push permission on
    /// each rule's target project, and a Harbor source's webhook policy.
    /// Exits non-zero if any check fails.
    Check {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
    },
    /// Exit 0 if the daemon answers at URL (for a container HEALTHCHECK,
    /// where there is no curl).
    Healthcheck {
        /// What to GET.
        #[arg(long, default_value = "http://127.0.0.1:8080/healthz")]
        url: String,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum HarborAction {
    /// Create or update the project's webhook policy that sends pushes and
    /// deletions to harbor-relay (with the config's webhook_auth).
    RegisterWebhook {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// The Harbor registry, as in [registries.NAME].
        #[arg(long)]
        registry: String,
        /// The Harbor project.
        #[arg(long)]
        project: String,
        /// Where Harbor should send webhooks, e.g. https://jumpvm:8080/webhooks/harbor
        #[arg(long)]
        url: String,
        /// Payload format: Default or CloudEvents (Harbor 2.8+).
        #[arg(long, default_value = "Default")]
        format: String,
    },
}

#[derive(Subcommand)]
enum RulesAction {
    /// Print which rules match a pushed image and where each would write.
    Test {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// The image as Harbor names it: project/repository:tag or @sha256:…
        image: String,
    },
}

#[derive(Subcommand)]
enum JobsAction {
    /// List jobs, newest first.
    List {
        /// Only jobs in this state: queued, running, retrying, succeeded, failed.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one job in full (JSON).
    Show {
        /// The job id.
        id: u64,
    },
    /// Queue a failed job again.
    Retry {
        /// The job id.
        id: u64,
    },
}

/// Logs to stderr (journald takes it under systemd). The level comes from
/// `RUST_LOG`, else the config's `log.level`, else `info`.
fn init_logging(format: LogFormat, level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The daemon's config may set the log level and format: read it first.
    // Loaded once, here, and handed to the daemon.
    let loaded = match &cli.command {
        Command::Serve { config } => match Config::load(config) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("harbor-relay: {e}");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let log = loaded.as_ref().map(|c| c.log.clone()).unwrap_or_default();
    let format = cli.log_format.unwrap_or(if log.json {
        LogFormat::Json
    } else {
        LogFormat::Text
    });
    init_logging(format, log.level.as_deref());
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("harbor-relay: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, loaded)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harbor-relay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, loaded: Option<Config>) -> anyhow::Result<()> {
    match command {
        Command::Version => {
            println!("harbor-relay {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Serve { config } => match loaded {
            Some(c) => serve(c).await,
            None => serve(Config::load(&config)?).await,
        },
        Command::Check { config } => check(config).await,
        Command::Healthcheck { url } => {
            let resp = reqwest::Client::builder()
                .timeout(std::time::Duration::from_secs(3))
                .build()?
                .get(&url)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            if !resp.status().is_success() {
                bail!("GET {url}: {}", resp.status());
            }
            Ok(())
        }
        Command::Replicate {
            config,
            from,
            to,
            target_repository,
            image,
        } => replicate(config, from, to, target_repository, image).await,
        Command::Jobs {
            url,
            config,
            token,
            action,
        } => jobs(url, config, token, action).await,
        Command::Reconcile {
            config,
            rule,
            dry_run,
        } => reconcile(config, rule, dry_run).await,
        Command::Harbor {
            action:
                HarborAction::RegisterWebhook {
                    config,
                    registry,
                    project,
                    url,
                    format,
                },
        } => register_webhook(config, registry, project, url, format).await,
        Command::Rules {
            action: RulesAction::Test { config, image },
        } => rules_test(config, image),
    }
}

async fn register_webhook(
    path: PathBuf,
    registry: String,
    project: String,
    url: String,
    format: String,
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
    match harbor_relay::harbor::register_webhook(harbor, &project, &url, auth, format).await? {
        harbor_relay::harbor::Registered::Created(id) => {
            println!("created webhook policy {id} on {registry}/{project} -> {url}")
        }
        harbor_relay::harbor::Registered::Updated(id) => {
            println!("updated webhook policy {id} on {registry}/{project} -> {url}")
        }
    }
    Ok(())
}

async fn reconcile(path: PathBuf, rule: String, dry_run: bool) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let rules = harbor_relay::rules::RuleSet::new(&config.rules)?;
    let Some(rule) = rules.get(&rule) else {
        let names: Vec<&str> = rules.iter().map(|r| r.config.name.as_str()).collect();
        bail!(
            "no rule '{rule}' in {} (rules: {})",
            path.display(),
            names.join(", ")
        );
    };
    let registries = daemon::registries(&config)?;
    let (Some(source), Some(target)) = (
        registries.get(&rule.config.from),
        registries.get(&rule.config.to),
    ) else {
        bail!("the rule's registries are not configured");
    };
    let report = harbor_relay::reconcile::pass(rule, source, target).await?;
    for d in &report.differences {
        println!(
            "{}/{}:{} {} -> {}/{}:{} {}",
            rule.config.from,
            d.source_repository,
            d.tag,
            d.source_digest,
            rule.config.to,
            d.target_repository,
            d.tag,
            d.target_digest.as_deref().unwrap_or("missing")
        );
    }
    println!(
        "{} tags checked, {} differ",
        report.checked,
        report.differences.len()
    );
    if dry_run || report.differences.is_empty() {
        return Ok(());
    }
    let replicator = Replicator::new(
        config.jobs.blob_concurrency,
        None,
        std::sync::Arc::new(harbor_relay::replicate::ledger::MemoryLedger::default()),
    );
    let mut failed = 0;
    for job in harbor_relay::reconcile::jobs_for(rule, &report) {
        let done = replicator.copy(&job.copy_request(source, target)).await;
        match done {
            Ok(s) => println!(
                "copied {}{} ({} blobs, {} bytes)",
                job.source_repository, job.reference, s.blobs_copied, s.bytes_copied
            ),
            Err(e) => {
                failed += 1;
                eprintln!("failed {}{}: {e}", job.source_repository, job.reference);
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} copies failed", report.differences.len());
    }
    Ok(())
}

fn rules_test(path: PathBuf, image: String) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let image = reference::parse_image(&image)?;
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
    for (rule, why) in &skips {
        println!("rule '{rule}': no match ({why})");
    }
    if plans.is_empty() {
        println!("nothing would be replicated");
    }
    Ok(())
}

async fn jobs(
    url: Option<String>,
    config: Option<PathBuf>,
    token: Option<String>,
    action: JobsAction,
) -> anyhow::Result<()> {
    let base = match (url, config) {
        (Some(u), _) => u.trim_end_matches('/').to_string(),
        (None, Some(c)) => harbor_relay::config::api_url(&c)?,
        (None, None) => "http://127.0.0.1:8080".to_string(),
    };
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(30))
        .build()?;
    let base_for_errors = base.clone();
    let call = |req: reqwest::RequestBuilder| {
        let base = base_for_errors.clone();
        let req = match &token {
            Some(t) => req.bearer_auth(t),
            None => req,
        };
        async move {
            let resp = req
                .send()
                .await
                .with_context(|| format!("cannot reach harbor-relay at {base}"))?;
            let status = resp.status();
            let body: serde_json::Value = resp.json().await.context("reading the answer")?;
            if !status.is_success() {
                bail!(
                    "{}: {}",
                    status,
                    body["error"].as_str().unwrap_or("request failed")
                );
            }
            Ok::<_, anyhow::Error>(body)
        }
    };
    match action {
        JobsAction::List { state, limit } => {
            let mut req = http
                .get(format!("{base}/api/v1/jobs"))
                .query(&[("limit", limit.to_string())]);
            if let Some(s) = state {
                req = req.query(&[("state", s)]);
            }
            let body = call(req).await?;
            let jobs = body["jobs"].as_array().cloned().unwrap_or_default();
            println!(
                "{:>6}  {:<9}  {:>3}  {:<20}  {:<50}  LAST ERROR",
                "ID", "STATE", "TRY", "RULE", "SOURCE -> TARGET"
            );
            for j in &jobs {
                let text = |k: &str| j[k].as_str().unwrap_or("").to_string();
                println!(
                    "{:>6}  {:<9}  {:>3}  {:<20}  {:<50}  {}",
                    j["id"],
                    text("state"),
                    j["attempts"],
                    text("rule"),
                    format!("{} -> {}", text("source"), text("target")),
                    text("last_error")
                );
            }
            if jobs.is_empty() {
                println!("(no jobs)");
            }
        }
        JobsAction::Show { id } => {
            let body = call(http.get(format!("{base}/api/v1/jobs/{id}"))).await?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        JobsAction::Retry { id } => {
            let body = call(http.post(format!("{base}/api/v1/jobs/{id}/retry"))).await?;
            println!(
                "job {id} queued again ({})",
                body["source"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

async fn check(path: PathBuf) -> anyhow::Result<()> {
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

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.server.listen))?;
    let shutdown = CancellationToken::new();
    let (reload_tx, reload_rx) = tokio::sync::mpsc::channel(1);
    on_signals(shutdown.clone(), reload_tx)?;
    daemon::run_reloadable(config, listener, shutdown, reload_rx).await?;
    Ok(())
}

/// SIGTERM and SIGINT stop the daemon; SIGHUP asks it to reload its config.
fn on_signals(
    shutdown: CancellationToken,
    reload: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing a SIGHUP handler")?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM received"); break }
                _ = int.recv() => { tracing::info!("SIGINT received"); break }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP received");
                    // A reload already pending covers this one too.
                    let _ = reload.try_send(());
                }
            }
        }
        shutdown.cancel();
    });
    Ok(())
}

async fn replicate(
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
        })
        .await?;
    println!(
        "replicated {from}/{image} -> {to}/{target_repository}{}\n  digest     {}\n  manifests  {} written\n  blobs      {} copied, {} already present, {} mounted\n  bytes      {}\n  time       {:.2}s",
        image.reference,
        s.digest,
        s.manifests_copied,
        s.blobs_copied,
        s.blobs_skipped,
        s.blobs_mounted,
        s.bytes_copied,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
