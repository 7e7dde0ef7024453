//! The command line: every subcommand and option, in one place (the man
//! page and completions are generated from these definitions too).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Replicates Harbor artifacts to a second registry when Harbor says they were pushed.
#[derive(Parser)]
#[command(name = "harbor-relay", version, about, long_about = None)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line
    /// [default: the config's log.format, else text].
    #[arg(long, value_enum, global = true)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Command {
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
    /// Compare a rule's source with its target now; copy what differs
    /// (and, with prune = true, remove target tags the source lost).
    Reconcile {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// The rule's name [default: every rule with a reconcile_interval].
        #[arg(long)]
        rule: Option<String>,
        /// Only print the differences (and, for a rule with prune = true,
        /// the target tags that would be removed); change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Move jobs between stores: export a store's jobs, import the ones not
    /// yet done into another (the embedded store to PostgreSQL, or back).
    Store {
        #[command(subcommand)]
        action: StoreAction,
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
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell),
    /// e.g. `harbor-relay completions bash > /etc/bash_completion.d/harbor-relay`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), made from these same definitions:
    /// `harbor-relay man > harbor-relay.1`.
    Man,
}

#[derive(Subcommand)]
pub enum HarborAction {
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
        /// Harbor does not verify the relay's certificate: for a relay whose
        /// listener certificate Harbor does not trust (self-signed).
        #[arg(long)]
        skip_cert_verify: bool,
    },
}

#[derive(Subcommand)]
pub enum RulesAction {
    /// Print which rules match a pushed image and where each would write.
    Test {
        /// The configuration file.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// The image as Harbor names it: project/repository:tag or @sha256:…
        image: String,
        /// Also read the image's signatures and scan from the source and
        /// print each gate's verdict (pass, hold, refuse) for each gated
        /// rule, without copying anything.
        #[arg(long)]
        gates: bool,
    },
}

#[derive(Subcommand)]
pub enum JobsAction {
    /// List jobs, newest first. Ids are unique and increasing, not
    /// consecutive: the embedded store's jump by about 2,000,000 at each
    /// start (docs/operations.md, "Jobs: states and retries").
    List {
        /// Only jobs in this state: queued, running, retrying, held,
        /// succeeded, failed, refused.
        #[arg(long)]
        state: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print the API's JSON instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Show one job: its timeline, attempts, blobs, bytes and last error.
    Show {
        /// The job id.
        id: u64,
        /// Print the API's JSON instead, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Queue a failed job again.
    Retry {
        /// The job id.
        id: u64,
    },
    /// Cancel a job: a waiting one fails at once; a running one stops,
    /// cancels its uploads on the target and fails. `retry` queues it again.
    Cancel {
        /// The job id.
        id: u64,
    },
}

#[derive(Subcommand)]
pub enum StoreAction {
    /// Write every job of the config's store as JSON Lines (a header line,
    /// then one job per line, oldest first). Stop the daemon first when the
    /// store is embedded (`store.path`): it holds the store's lock.
    Export {
        /// The configuration file whose [store] to read.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// Write here instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Queue, in the config's store, the jobs of an export that were not
    /// done (queued, running or waiting for a retry) as new jobs; succeeded
    /// jobs stay history. Duplicates fold into active jobs, so running it
    /// twice queues nothing twice.
    Import {
        /// The configuration file whose [store] to fill; it must define
        /// every registry the jobs name.
        #[arg(long, short, env = "HARBOR_RELAY_CONFIG")]
        config: PathBuf,
        /// Queue the export's failed jobs again too.
        #[arg(long)]
        include_failed: bool,
        /// Only print which jobs would be queued.
        #[arg(long)]
        dry_run: bool,
        /// The export (`-` for standard input).
        file: PathBuf,
    },
}
