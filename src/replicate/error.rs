//! Why a copy failed, and whether another attempt could help.

use super::{CopyRequest, MAX_DEPTH};
use crate::manifest::Descriptor;
use crate::registry::{Mismatch, RegistryError, SourceFault};

/// Why a copy failed. The message is what the job record and the CLI show.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    /// A registry call failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// A manifest could not be understood.
    #[error("source '{registry}': {source}")]
    Manifest {
        /// Source registry name.
        registry: String,
        /// The problem.
        source: crate::manifest::ManifestError,
    },
    /// Reading from the source failed while the target was being written.
    #[error("copying blob {digest}: reading from source '{registry}' failed: {detail}")]
    SourceRead {
        /// Source registry name.
        registry: String,
        /// The blob.
        digest: String,
        /// What the source stream said (e.g. a digest mismatch).
        detail: String,
        /// Set when the content is not what its manifest declares.
        mismatch: Option<Mismatch>,
    },
    /// A manifest declares a blob bigger than the copy may move.
    #[error(
        "blob {digest} is declared {size} bytes, over the {limit} bytes of {key}: not copied (raise {key} if it is genuine)"
    )]
    TooBig {
        /// The blob.
        digest: String,
        /// Its declared size.
        size: u64,
        /// The limit.
        limit: u64,
        /// The key that sets the limit.
        key: String,
    },
    /// One job's graph lists more descriptors than it may visit.
    #[error(
        "the artifact's indexes list more than {0} manifests and blobs in all; not copied (a graph this size is malformed or built to make the relay work)"
    )]
    TooMany(u64),
    /// An index nests deeper than `MAX_DEPTH`.
    #[error("manifest {0}: indexes nested more than {MAX_DEPTH} deep")]
    TooDeep(String),
    /// The daemon is stopping; the upload stopped between two chunks and
    /// continues at the next start.
    #[error("stopped between chunks for shutdown; the upload continues at the next start")]
    Interrupted,
    /// An operator cancelled the job (`jobs cancel`); its uploads were
    /// cancelled on the target.
    #[error("cancelled by an operator (jobs cancel); its uploads were cancelled on the target")]
    Cancelled,
    /// A gate holds the artifact (no signature yet, scan not settled):
    /// nothing was written; the job waits, it has not failed.
    #[error("held: {0}")]
    Held(String),
    /// A gate refused the artifact for good (a scan above the threshold):
    /// nothing was written.
    #[error("refused: {0}")]
    Refused(String),
}

impl ReplicateError {
    /// True when another attempt cannot succeed without someone changing
    /// something (config, credentials, the source): such jobs fail at once.
    pub fn is_permanent(&self) -> bool {
        match self {
            ReplicateError::Registry(e) => e.is_permanent(),
            ReplicateError::Manifest { .. }
            | ReplicateError::TooDeep(_)
            | ReplicateError::TooMany(_)
            | ReplicateError::TooBig { .. } => true,
            // The source served a blob of another size or content than its
            // manifest declares, cleanly (a cut connection is a transport
            // error, not this): content-addressed, so it will every time,
            // and each attempt would write that much into the target's
            // upload area for nothing. The job fails at once, naming the
            // source.
            ReplicateError::SourceRead { mismatch, .. } => mismatch.is_some(),
            ReplicateError::Interrupted | ReplicateError::Held(_) => false,
            ReplicateError::Cancelled | ReplicateError::Refused(_) => true,
        }
    }

    /// The registry that was down, when that is why the copy failed
    /// ([`RegistryError::unreachable`]).
    pub fn unreachable(&self) -> Option<&str> {
        match self {
            ReplicateError::Registry(e) => e.unreachable(),
            _ => None,
        }
    }

    /// A [`ReplicateError::SourceRead`] for `blob` of `req`'s source.
    pub(super) fn source_read(
        req: &CopyRequest<'_>,
        blob: &Descriptor,
        fault: SourceFault,
    ) -> ReplicateError {
        ReplicateError::SourceRead {
            registry: req.source.name().to_string(),
            digest: blob.digest.clone(),
            detail: fault.detail,
            mismatch: fault.mismatch,
        }
    }

    /// True when content did not match its digest: worth another job
    /// attempt later (it may have been the wire), not an immediate retry.
    pub fn is_corrupt(&self) -> bool {
        match self {
            ReplicateError::Registry(RegistryError::DigestMismatch { .. }) => true,
            ReplicateError::SourceRead { mismatch, .. } => mismatch.is_some(),
            _ => false,
        }
    }
}
