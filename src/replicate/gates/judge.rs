//! The gates' effect: reads what each gate of a rule needs from the source
//! (its signatures, its scan), at once, and returns every verdict for
//! [`crate::gate::Decision::overall`]. A registry that cannot be reached
//! or refuses the account is an error (the job retries as any other); what
//! a reachable source answers, however odd, is a verdict.

use super::read;
use crate::gate::policy::{Decision, Gates, Verdict, scan_verdict, signature_verdict};
use crate::gate::scan::ScanVerdict;
use crate::gate::signature::Claim;
use crate::registry::{Registry, RegistryError};

/// Judges `digest` in `repository` on the source `reg` by `gates`.
pub async fn judge(
    reg: &Registry,
    repository: &str,
    digest: &str,
    gates: &Gates,
) -> Result<Decision, RegistryError> {
    let signature = async {
        let Some(g) = &gates.signature else {
            return Ok(None);
        };
        let claim = Claim {
            digest,
            repository: g.match_reference.then_some(repository),
        };
        let signed = read::signature(reg, repository, claim, &g.keys).await?;
        Ok::<_, RegistryError>(Some(signature_verdict(&signed, g.keys.len())))
    };
    let scan = async {
        let Some(g) = &gates.scan else {
            return Ok(None);
        };
        let v = match read::scan(reg, repository, digest, g.max, &g.allow).await {
            Ok(v) => v,
            Err(e) => unreadable(e, digest)?,
        };
        Ok::<_, RegistryError>(Some(scan_verdict(&v, g)))
    };
    let (signature, scan) = futures_util::future::try_join(signature, scan).await?;
    let mut verdicts: Vec<(&'static str, Verdict)> = Vec::new();
    verdicts.extend(signature.map(|v| ("signature", v)));
    verdicts.extend(scan.map(|v| ("scan", v)));
    Ok(Decision {
        digest: digest.to_string(),
        verdicts,
    })
}

/// A scan read that failed: an artifact Harbor has no record of yet, or an
/// answer that does not parse, is not settled (never clean); a source that
/// cannot be reached is the job's error.
fn unreadable(e: RegistryError, digest: &str) -> Result<ScanVerdict, RegistryError> {
    match e {
        RegistryError::NotFound { .. } => Ok(ScanVerdict::Pending(format!(
            "the source Harbor has no record of {digest} yet"
        ))),
        RegistryError::Other { detail, .. } => Ok(ScanVerdict::Pending(format!(
            "the source's scan overview cannot be read ({detail}): not scanned"
        ))),
        e => Err(e),
    }
}
