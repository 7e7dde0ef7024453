//! # harbor-relay
//!
//! A replication daemon for Harbor: an "external" Harbor sends a webhook for
//! every push, and harbor-relay copies the artifact, byte for byte, into a
//! second registry (typically the "integrated" Harbor of vSphere with Tanzu,
//! whose certificate is self-signed), over the OCI Distribution API.
//!
//! Data flows one way:
//!
//! ```text
//! Harbor ─POST─▶ api ─▶ event ─▶ rules ─▶ jobs::Store (durable) ─▶ 202
//! jobs::Workers ─claim─▶ replicate ─▶ registry (source: read, target: write)
//!                        │     └─▶ jobs::Store, metrics
//!                        └─ gates first (signature, scan): held, refused or on
//! ```
//!
//! Modules, each one concept (see `ARCHITECTURE.md` for why each exists):
//! - [`config`]: the TOML file, validated, secrets from env or files.
//! - [`event`]: webhook bodies (Harbor Default and CloudEvents) to events.
//! - [`gate`]: whether an artifact may cross (cosign signature, Harbor scan):
//!   pure decisions; the copier reads the evidence and holds what waits.
//! - [`reference`](mod@reference): OCI names, tags and digests, checked before any use.
//! - [`rules`]: which events replicate, and to which target repository (or
//!   repositories: a rule with several targets is a fan-out).
//! - [`jobs`]: the job model, the durable store (sled embedded, or
//!   PostgreSQL shared by several relays), the worker pool (as many jobs
//!   at once as the registries take), one probe per registry found down.
//! - [`replicate`]: copying one artifact: manifests, children, blobs, tag;
//!   a fan-out's copies share one read of each blob ([`replicate::Tee`]).
//! - [`manifest`]: manifest media types and children, bytes untouched.
//! - [`registry`]: one OCI Distribution client per registry (auth, TLS,
//!   and its adaptive limit of requests at once).
//! - [`harbor`]: Harbor's REST API: create target projects, register the webhook.
//! - [`api`]: the axum router: webhook, jobs API, health, metrics.
//! - [`reconcile`]: the periodic catch-up pass (and scheduled pulls).
//! - [`clock`]: wall-clock milliseconds, one definition for store and copier.
//! - [`advice`]: the commands printed as advice, spelled to run when pasted.
//! - [`check`]: `harbor-relay check`: DNS, TCP, TLS, auth, push, webhook per registry.
//! - [`metrics`]: every Prometheus metric.
//! - [`live`]: the reloadable settings (registries, rules), swapped on SIGHUP.
//! - [`notify`]: systemd readiness, reload, stop and watchdog messages.
//! - [`daemon`]: wires it all together; `run(config, listener, shutdown)`.

#![warn(missing_docs)]

pub mod advice;
pub mod api;
pub mod check;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod event;
pub mod gate;
pub mod harbor;
pub mod jobs;
pub mod live;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod reconcile;
pub mod reference;
pub mod registry;
pub mod replicate;
pub mod rules;
