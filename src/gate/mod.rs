//! Policy at the border (issue 26): the decisions of the signature gate
//! (`require_signature`: a cosign signature of the artifact's digest by a
//! trusted key, in either layout cosign writes) and of the scan gate
//! (`max_severity`: the source Harbor's scan, settled and clean enough).
//!
//! Each is a pure function of bytes the copier has already read within
//! its limits, unit-tested beside it: `keys` reads the trusted keys,
//! `signature` verifies `.sig` layers and v0.3 bundles, `scan` judges
//! Harbor's scan overview and findings; `read` is the thin effect that
//! fetches an artifact's signatures from the source for `signature`.
//!
//! Not wired yet: the rule keys, reading the signatures and the overview
//! from the source, and the `held` state that waits for them are the rest
//! of issue 26.

pub mod keys;
pub mod read;
pub mod scan;
pub mod signature;
