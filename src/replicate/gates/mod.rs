//! The gates' step of a copy (issue 26), and the reads it needs from the
//! source ([`read`]: signatures, the scan; [`judge()`]: every gate of a rule
//! at once; the decisions themselves are [`crate::gate`]'s, pure): before anything is written to
//! the target, the rule's gates judge the artifact. What is judged is the
//! artifact's digest; for a cosign tag (`sha256-<hex>.sig`, `.att`, the
//! referrers fallback tag) or an OCI 1.1 referrer, its subject's, so a
//! signature crosses with its image and never ahead of it.
//!
//! With the digest known from the event, the signature and the scan are
//! asked in the same round as the source manifest: a signed, scanned
//! artifact pays no round trip for its gates.

pub mod judge;
pub mod read;

pub use judge::judge;

use super::{CopyRequest, ReplicateError, Replicator};
use crate::gate::{Decision, Gates, Verdict};
use crate::manifest::Manifest;
use crate::reference::Reference;

impl Replicator {
    /// Judges the artifact by `gates`; the source manifest it read, when
    /// they let it through. A hold or a refusal is the error the worker
    /// turns into the job's `held` or `refused` state.
    pub(super) async fn gate(
        &self,
        req: &CopyRequest<'_>,
        gates: &Gates,
    ) -> Result<Manifest, ReplicateError> {
        let early = early_digest(req);
        let (top, first) = futures_util::future::try_join(
            async {
                req.source_manifest(req.reference)
                    .await
                    .map_err(ReplicateError::from)
            },
            async {
                match &early {
                    Some(d) => self.judge(req, d, gates).await.map(Some),
                    None => Ok(None),
                }
            },
        )
        .await?;
        if req.referrer_only && top.subject().is_none() {
            // Not a referrer: the copy ends skipped, writing nothing.
            return Ok(top);
        }
        let digest = crate::gate::policy::gated_digest(req.reference, &top);
        let decision = match first {
            Some(d) if d.digest == digest => d,
            _ => self.judge(req, &digest, gates).await?,
        };
        self.count_verdicts(req.rule, &decision);
        match decision.overall() {
            Verdict::Pass(why) => {
                tracing::info!(gated = %digest, "the gates let it through: {why}");
                Ok(top)
            }
            Verdict::Hold(why) => Err(ReplicateError::Held(why)),
            Verdict::Refuse(why) => Err(ReplicateError::Refused(why)),
        }
    }

    async fn judge(
        &self,
        req: &CopyRequest<'_>,
        digest: &str,
        gates: &Gates,
    ) -> Result<Decision, ReplicateError> {
        Ok(judge(req.source, req.source_repository, digest, gates).await?)
    }

    fn count_verdicts(&self, rule: &str, decision: &Decision) {
        if let Some(m) = &self.metrics {
            for (gate, v) in &decision.verdicts {
                m.gate_decisions
                    .with_label_values(&[rule, gate, v.word()])
                    .inc();
            }
        }
    }
}

/// The digest the gates judge, known before the manifest is read: a cosign
/// tag's subject, the event's digest of a tag, or the digest a job names
/// (unless it may be a referrer, whose subject only its manifest says).
fn early_digest(req: &CopyRequest<'_>) -> Option<String> {
    match req.reference {
        Reference::Tag(t) => {
            crate::gate::policy::cosign_subject(t).or(req.event_digest.map(str::to_string))
        }
        Reference::Digest(d) if !req.referrer_only => Some(d.clone()),
        Reference::Digest(_) => None,
    }
}
