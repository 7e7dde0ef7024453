//! Why a registry request failed, in words that say what to do.

use crate::manifest;

/// A registry request that failed, in words that say what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The TLS handshake failed.
    #[error("registry '{registry}': {problem}: {hint} ({detail})")]
    Tls {
        /// Registry name from the config.
        registry: String,
        /// What failed: the certificate is not trusted, or the registry
        /// does not speak TLS on this port at all.
        problem: &'static str,
        /// How to fix it.
        hint: String,
        /// The TLS library's reason.
        detail: String,
    },
    /// No connection at all, or it broke or stalled.
    #[error("registry '{registry}': cannot connect to {url}: {detail}")]
    Connect {
        /// Registry name.
        registry: String,
        /// The registry URL.
        url: String,
        /// Why.
        detail: String,
    },
    /// The registry refused our credentials or lacks a permission.
    #[error(
        "registry '{registry}': access denied for {what}: check its username/password and that the account may pull/push there ({detail})"
    )]
    Unauthorized {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// The registry's words.
        detail: String,
    },
    /// The manifest, blob or repository does not exist.
    #[error("registry '{registry}': {what} not found")]
    NotFound {
        /// Registry name.
        registry: String,
        /// What was asked for.
        what: String,
    },
    /// The content did not hash to its digest.
    #[error("registry '{registry}': {what}: digest mismatch: {detail}")]
    DigestMismatch {
        /// Registry name.
        registry: String,
        /// What was read.
        what: String,
        /// Expected and actual digests.
        detail: String,
    },
    /// A manifest we cannot copy.
    #[error("registry '{registry}': {source}")]
    Manifest {
        /// Registry name.
        registry: String,
        /// The problem.
        source: manifest::ManifestError,
    },
    /// The registry answered with an error status.
    #[error("registry '{registry}': {what}: {detail}")]
    Status {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// The status code.
        status: u16,
        /// The registry's words, and a hint where one helps.
        detail: String,
    },
    /// The registry asked for something a careful client refuses: its
    /// credentials sent to another host, or over plain HTTP, or a name or
    /// digest that is not one. Permanent: it needs a config change or a
    /// fixed registry.
    #[error("registry '{registry}': refused to trust its answer: {detail}")]
    Untrusted {
        /// Registry name.
        registry: String,
        /// What it asked for and why it is refused.
        detail: String,
    },
    /// A Harbor policy of the registry refused the write (an immutable
    /// tag, read-only mode): permanent until an admin changes it.
    #[error("registry '{registry}': {what}: {detail}")]
    Refused {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// Which policy, and how to change it.
        detail: String,
    },
    /// Any other failure (protocol errors, bad answers).
    #[error("registry '{registry}': {what}: {detail}")]
    Other {
        /// Registry name.
        registry: String,
        /// What we tried.
        what: String,
        /// What went wrong.
        detail: String,
    },
}

impl RegistryError {
    /// True when retrying cannot help until someone changes something: an
    /// untrusted certificate, refused credentials, a missing artifact, a
    /// manifest we cannot copy.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            RegistryError::Tls { .. }
                | RegistryError::Unauthorized { .. }
                | RegistryError::NotFound { .. }
                | RegistryError::Manifest { .. }
                | RegistryError::Untrusted { .. }
                | RegistryError::Refused { .. }
                | RegistryError::Status { status: 405, .. }
        )
    }

    /// The registry, when this says it is down (no connection, or a `502`,
    /// `503` or `504` after the request's own retries): one fact about the
    /// registry, which one probe watches for every job that met it.
    pub fn unreachable(&self) -> Option<&str> {
        match self {
            RegistryError::Connect { registry, .. }
            | RegistryError::Status {
                registry,
                status: 502..=504,
                ..
            } => Some(registry),
            _ => None,
        }
    }

    /// True when the registry said the thing asked for does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, RegistryError::NotFound { .. })
    }
}
