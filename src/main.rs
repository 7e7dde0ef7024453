//! The `harbor-relay` command: the daemon and its one-shot helpers.
//! Business logic lives in the library; this file parses arguments, sets up
//! logging and signals, and turns errors into messages and exit codes.

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio_util::sync::CancellationToken;

use harbor_relay::config::Config;
use harbor_relay::daemon;

mod cli;

use cli::args::{Cli, Command, HarborAction, LogFormat, RulesAction};
use cli::commands::{check, reconcile, register_webhook, replicate, rules_test};

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

/// Big buffers go back to the system when freed. glibc raises its mmap
/// threshold to the size of each mmapped block freed, so after the first
/// 4 MiB range piece every later one came from the heap arenas, which keep
/// what they had: a 1 GiB ranged read held ~30 MB more than its pieces
/// (docs/performance.md, `wan-flows`). A fixed threshold turns that off.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn return_big_buffers() {
    // SAFETY: mallopt only sets an allocator parameter; called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn return_big_buffers() {}

fn main() -> std::process::ExitCode {
    return_big_buffers();
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
    // `check` prints a table on stdout; its verdicts already say why a
    // certificate is not trusted, so the TLS verifier's own error lines
    // would only break the table up on a terminal.
    // `replicate` says it too, with the fix, in its own error.
    let level = match (&cli.command, log.level.as_deref()) {
        (Command::Check { .. }, None) => Some("warn,rustls_platform_verifier=off,rustls=off"),
        (Command::Replicate { .. }, None) => Some("info,rustls_platform_verifier=off,rustls=off"),
        (_, level) => level,
    };
    init_logging(format, level);
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
        Command::Store { action } => cli::store::run(action).await,
        Command::Completions { shell } => {
            use clap::CommandFactory as _;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "harbor-relay",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory as _;
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
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
        } => cli::jobs::run(url, config, token, action).await,
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
                    skip_cert_verify,
                },
        } => register_webhook(config, registry, project, url, format, skip_cert_verify).await,
        Command::Rules {
            action:
                RulesAction::Test {
                    config,
                    image,
                    gates,
                },
        } => {
            rules_test(config.clone(), image.clone())?;
            if gates {
                cli::gates::run(config, image).await?;
            }
            Ok(())
        }
    }
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
