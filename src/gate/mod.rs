//! Policy at the border (issue 26): the decisions of the signature gate
//! (`require_signature`: a cosign signature of the artifact's digest by a
//! trusted key, in either layout cosign writes) and of the scan gate
//! (`max_severity`: the source Harbor's scan, settled and clean enough).
//!
//! Each is a pure function of bytes the copier has already read within
//! its limits, unit-tested beside it: `keys` reads the trusted keys,
//! `signature` verifies `.sig` layers and v0.3 bundles, `scan` judges
//! Harbor's scan overview and findings, `policy` holds a rule's gates and
//! combines their verdicts (pass, hold, refuse). `read` and `judge` are
//! the thin effects that fetch what those need from the source.
//!
//! The copier asks [`judge`] before it writes anything to the target
//! ([`crate::replicate`]); a hold becomes the job's `held` state, which the
//! next event of the repository or the `gate_recheck` timer releases
//! ([`crate::jobs`]).

pub mod judge;
pub mod keys;
pub mod policy;
pub mod read;
pub mod scan;
pub mod signature;

pub use judge::judge;
pub use policy::{Decision, Gates, ScanGate, SignatureGate, Unscanned, Verdict};
