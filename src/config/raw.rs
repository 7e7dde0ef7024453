//! The file as written: serde structs that refuse unknown keys, turned
//! into [`super::types`] by the loader.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    pub(super) store: Option<RawStore>,
    #[serde(default)]
    pub(super) jobs: RawJobs,
    #[serde(default)]
    pub(super) registries: BTreeMap<String, RawRegistry>,
    #[serde(default)]
    pub(super) rules: Vec<RawRule>,
    #[serde(default)]
    pub(super) log: RawLog,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) level: Option<String>,
    pub(super) format: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) webhook_auth: Option<String>,
    pub(super) webhook_auth_file: Option<String>,
    pub(super) api_token: Option<String>,
    pub(super) api_token_file: Option<String>,
    pub(super) metrics_listen: Option<String>,
    pub(super) webhook_rate_limit: Option<u32>,
    pub(super) max_connections_per_client: Option<usize>,
    pub(super) max_connections: Option<usize>,
    pub(super) ipv6_client_prefix: Option<u8>,
    pub(super) tls_cert: Option<String>,
    pub(super) tls_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStore {
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) lease: Option<String>,
    pub(super) ca_file: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJobs {
    pub(super) workers: Option<usize>,
    pub(super) blob_concurrency: Option<usize>,
    pub(super) shutdown_grace: Option<String>,
    pub(super) max_attempts: Option<u32>,
    pub(super) retry_initial_delay: Option<String>,
    pub(super) retry_max_delay: Option<String>,
    pub(super) retention: Option<String>,
    pub(super) coalesce_window: Option<String>,
    pub(super) max_queued: Option<usize>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRegistry {
    pub(super) url: String,
    pub(super) username: Option<String>,
    pub(super) password: Option<String>,
    pub(super) password_file: Option<String>,
    pub(super) tls: Option<RawTls>,
    pub(super) max_concurrent_requests: Option<usize>,
    pub(super) max_bytes_per_second: Option<RawSize>,
    pub(super) request_attempts: Option<u32>,
    pub(super) stall_timeout: Option<String>,
    pub(super) chunk_size_threshold: Option<RawSize>,
    pub(super) chunk_size: Option<RawSize>,
    pub(super) range_threshold: Option<RawSize>,
    pub(super) source_streams: Option<usize>,
    pub(super) create_projects: Option<bool>,
    pub(super) kind: Option<String>,
    pub(super) token_realm_hosts: Option<Vec<String>>,
    pub(super) max_retry_after: Option<String>,
    pub(super) max_list_bytes: Option<RawSize>,
    pub(super) max_list_entries: Option<usize>,
    pub(super) max_blob_size: Option<RawSize>,
}

/// A size: a number of bytes, or text like "64MiB".
#[derive(Deserialize, Clone)]
#[serde(untagged)]
pub(super) enum RawSize {
    Bytes(u64),
    Text(String),
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) ca_file: Option<String>,
    #[serde(default)]
    pub(super) insecure_skip_verify: bool,
}

/// A rule's `to`: one registry name, or a list of them (a fan-out).
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawTargets {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    pub(super) name: Option<String>,
    pub(super) from: String,
    pub(super) to: RawTargets,
    pub(super) projects: Option<Vec<String>>,
    pub(super) repositories: Option<Vec<String>>,
    pub(super) target_project: Option<String>,
    pub(super) flatten: Option<usize>,
    pub(super) tags: Option<Vec<String>>,
    pub(super) exclude_tags: Option<Vec<String>>,
    #[serde(rename = "override")]
    pub(super) overwrite: Option<bool>,
    pub(super) replicate_deletes: Option<bool>,
    pub(super) referrers: Option<bool>,
    pub(super) platforms: Option<Vec<String>>,
    pub(super) reconcile_interval: Option<String>,
    pub(super) artifact_types: Option<Vec<String>>,
    pub(super) labels: Option<Vec<String>>,
    pub(super) prune: Option<bool>,
    pub(super) max_blob_size: Option<RawSize>,
    pub(super) require_signature: Option<RawSignature>,
    pub(super) max_severity: Option<String>,
    pub(super) allow_cves: Option<Vec<String>>,
    pub(super) unscanned: Option<String>,
    pub(super) hold_for: Option<String>,
    pub(super) gate_recheck: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignature {
    pub(super) keys: Vec<String>,
    pub(super) match_reference: Option<bool>,
}
