//! The part of the configuration that can change while the daemon runs:
//! registries, rules and the webhook secret.
//!
//! On `SIGHUP` the daemon loads the file again and, if it is valid, swaps
//! in a new [`Live`]; each job and each webhook reads the current one once,
//! so a reload never changes a job half-way and never drops queued work
//! (the queue lives in the store, which a reload does not touch). A new
//! config that fails to load is refused and the old one stays in force.
//! Registry clients whose settings did not change are kept, with their
//! connections, tokens and rate-limit state.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::config::{Config, Secret, TlsMode};
use crate::registry::{Registry, RegistryError};
use crate::rules::RuleSet;

/// Why a configuration could not be put in force.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// A registry client could not be built.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A rule's globs did not compile.
    #[error("rules: {0}")]
    Rules(#[from] globset::Error),
}

/// One consistent view of the reloadable settings.
pub struct Live {
    /// The configuration it was built from.
    pub config: Config,
    /// A client per configured registry, by name.
    pub registries: HashMap<String, Registry>,
    /// The compiled rules.
    pub rules: RuleSet,
}

impl Live {
    /// Builds clients and rules for `config`, reusing the clients of
    /// `previous` whose registry settings are unchanged.
    pub fn build(config: Config, previous: Option<&Live>) -> Result<Live, LiveError> {
        let mut registries = HashMap::new();
        for (name, r) in &config.registries {
            let unchanged = previous.and_then(|p| {
                (p.config.registries.get(name) == Some(r))
                    .then(|| p.registries.get(name).cloned())
                    .flatten()
            });
            let client = match unchanged {
                Some(client) => client,
                None => {
                    if r.tls == TlsMode::InsecureSkipVerify {
                        tracing::warn!(
                            registry = %name,
                            url = %r.url,
                            "TLS certificate verification is OFF for this registry (tls.insecure_skip_verify = true): anyone on the path can impersonate it; prefer tls.ca_file"
                        );
                    }
                    Registry::new(r)?
                }
            };
            registries.insert(name.clone(), client);
        }
        let rules = RuleSet::new(&config.rules)?;
        Ok(Live {
            config,
            registries,
            rules,
        })
    }

    /// The secret webhooks must present, if any.
    pub fn webhook_auth(&self) -> Option<&Secret> {
        self.config.server.webhook_auth.as_ref()
    }
}

/// The current [`Live`], swapped whole on reload.
pub struct Shared(RwLock<Arc<Live>>);

impl Shared {
    /// Starts with `live` in force.
    pub fn new(live: Live) -> Shared {
        Shared(RwLock::new(Arc::new(live)))
    }

    /// The settings in force now. Hold the `Arc` for the whole of one job
    /// or request so that it sees one consistent configuration.
    pub fn get(&self) -> Arc<Live> {
        match self.0.read() {
            Ok(g) => g.clone(),
            // A writer only swaps an Arc; a poisoned lock still holds a
            // complete value.
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Puts `live` in force.
    pub fn replace(&self, live: Live) {
        let mut g = match self.0.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        *g = Arc::new(live);
    }
}

/// Settings a reload cannot change; each difference is reported so the
/// admin knows a restart is needed for it.
pub fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if old.server.metrics_listen != new.server.metrics_listen {
        out.push("server.metrics_listen");
    }
    if old.server.webhook_rate_limit != new.server.webhook_rate_limit {
        out.push("server.webhook_rate_limit");
    }
    if old.server.max_connections_per_client != new.server.max_connections_per_client {
        out.push("server.max_connections_per_client");
    }
    if old.server.tls.is_some() != new.server.tls.is_some() {
        out.push("server.tls_cert (turning HTTPS on or off)");
    }
    if old.store.path != new.store.path {
        out.push("store.path");
    }
    let shown = |c: &Config| c.store.postgres.as_ref().map(|p| p.shown.clone());
    if shown(old) != shown(new) {
        out.push("store.url");
    }
    if old.jobs.workers != new.jobs.workers {
        out.push("jobs.workers");
    }
    if old.jobs.blob_concurrency != new.jobs.blob_concurrency {
        out.push("jobs.blob_concurrency");
    }
    out
}
