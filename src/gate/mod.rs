//! Policy at the border (issue 26): the decisions of the signature gate
//! (`require_signature`: a cosign signature of the artifact's digest by a
//! trusted key, in either layout cosign writes) and of the scan gate
//! (`max_severity`: the source Harbor's scan, settled and clean enough).
//!
//! Each is a pure function of bytes the copier has already read within
//! its limits, unit-tested beside it: `keys` reads the trusted keys,
//! `signature` verifies `.sig` layers and v0.3 bundles, `scan` judges
//! Harbor's scan overview and findings, `policy` holds a rule's gates and
//! combines their verdicts (pass, hold, refuse). No I/O here: the reads
//! that fetch what these judge from the source are the copier's
//! ([`crate::replicate::gates`]), so `config` can hold a rule's gates
//! without reaching the registry client.
//!
//! The copier judges before it writes anything to the target; a hold becomes the job's `held` state, which the
//! next event of the repository or the `gate_recheck` timer releases
//! ([`crate::jobs`]).

pub mod keys;
pub mod policy;
pub mod scan;
pub mod signature;
pub use policy::{Decision, Gates, ScanGate, SignatureGate, Unscanned, Verdict};
