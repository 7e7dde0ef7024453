//! Reading an artifact's cosign signatures from the source, within limits,
//! for [`crate::gate::signature`] to judge: the `sha256-<hex>.sig` tag's layers,
//! and the referrers (OCI 1.1 API, or the `sha256-<hex>` fallback index
//! cosign writes where a registry has none) that are v0.3 bundles.
//!
//! What the source serves is untrusted: every manifest and blob read is
//! bounded (the declared sizes are checked before a byte is read, and the
//! bytes against their digest and size as they arrive), and anything
//! hostile or broken makes the artifact "not signed", with the reason,
//! never an error that fails the job. Only a registry that cannot be
//! reached or refuses the account is an error (the job retries).

use futures_util::StreamExt as _;

use crate::gate::keys::TrustedKey;
use crate::gate::signature::{self, Claim, Layer, Signed};
use crate::reference::Reference;
use crate::registry::{Registry, RegistryError};

/// Most referrers of one artifact looked at.
pub const MAX_REFERRERS: usize = 16;

/// Looks for a signature of `claim.digest` in `repository` on `reg` by
/// one of `keys`: the `.sig` tag first, then the bundle referrers.
pub async fn signature(
    reg: &Registry,
    repository: &str,
    claim: Claim<'_>,
    keys: &[TrustedKey],
) -> Result<Signed, RegistryError> {
    let hex = claim.digest.strip_prefix("sha256:").unwrap_or(claim.digest);
    let mut why: Vec<String> = Vec::new();
    let sig_tag = Reference::Tag(format!("sha256-{hex}.sig"));
    if let Some(m) = manifest(reg, repository, &sig_tag).await? {
        match signature::sig_layers(&m.bytes) {
            Err(e) => why.push(e),
            Ok(layers) => {
                for l in layers {
                    let sig = l.signature.clone().unwrap_or_default();
                    match blob(reg, repository, &l).await {
                        Ok(payload) => match signature::simple_signing(&payload, &sig, keys, claim)
                        {
                            Ok(k) => return Ok(by(k, ".sig tag")),
                            Err(e) => why.push(e),
                        },
                        Err(e) => why.push(e),
                    }
                }
            }
        }
    }
    for d in referrers(reg, repository, claim.digest, hex).await? {
        let Some(m) = manifest(reg, repository, &Reference::Digest(d)).await? else {
            continue;
        };
        let layer = match signature::bundle_layer(&m.bytes, claim.digest) {
            Ok(Some(l)) => l,
            Ok(None) => continue,
            Err(e) => {
                why.push(e);
                continue;
            }
        };
        match blob(reg, repository, &layer).await {
            Ok(b) => match signature::bundle(&b, keys, claim) {
                Ok(k) => return Ok(by(k, "bundle")),
                Err(e) => why.push(e),
            },
            Err(e) => why.push(e),
        }
    }
    why.dedup();
    Ok(Signed::Not(if why.is_empty() {
        "no signature yet".into()
    } else {
        why.join("; ")
    }))
}

fn by(key: &TrustedKey, layout: &'static str) -> Signed {
    Signed::By {
        key: key.file.clone(),
        layout,
    }
}

/// A manifest, or `None` when the source does not have it or serves one
/// that cannot be read as a manifest (not a signature, then).
async fn manifest(
    reg: &Registry,
    repository: &str,
    reference: &Reference,
) -> Result<Option<crate::manifest::Manifest>, RegistryError> {
    match reg.get_manifest(repository, reference).await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(RegistryError::Manifest { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The digests of the artifact's referrers: by the OCI 1.1 API, else the
/// `sha256-<hex>` fallback index; at most [`MAX_REFERRERS`].
async fn referrers(
    reg: &Registry,
    repository: &str,
    digest: &str,
    hex: &str,
) -> Result<Vec<String>, RegistryError> {
    let listed: Vec<String> = match reg.referrers(repository, digest).await? {
        Some(list) => list.into_iter().map(|d| d.digest).collect(),
        None => {
            let tag = Reference::Tag(format!("sha256-{hex}"));
            match manifest(reg, repository, &tag).await?.map(|m| m.children()) {
                Some(Ok(crate::manifest::Children::Manifests(list))) => {
                    list.into_iter().map(|d| d.digest).collect()
                }
                _ => Vec::new(),
            }
        }
    };
    Ok(listed
        .into_iter()
        .filter(|d| crate::reference::digest(d).is_ok())
        .take(MAX_REFERRERS)
        .collect())
}

/// A small blob, whole: its declared size already within limits, its
/// bytes checked against digest and size as they arrive.
async fn blob(reg: &Registry, repository: &str, layer: &Layer) -> Result<Vec<u8>, String> {
    let (mut stream, _) = reg
        .get_blob(repository, &layer.digest, layer.size)
        .await
        .map_err(|e| format!("a signature layer cannot be read: {e}"))?;
    let mut out = Vec::with_capacity(layer.size as usize);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("a signature layer {}: {e}", layer.digest))?;
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// What the source Harbor's scan says of `digest` in `repository`: its
/// scan overview judged against `max`, or, with `allow` CVEs, its findings
/// without them (a clean overview needs no findings read).
pub async fn scan(
    reg: &Registry,
    repository: &str,
    digest: &str,
    max: crate::gate::scan::MaxSeverity,
    allow: &[String],
) -> Result<crate::gate::scan::ScanVerdict, RegistryError> {
    use crate::gate::scan::{ScanVerdict, from_artifact, from_findings};
    let artifact = crate::harbor::scan_overview(reg, repository, digest).await?;
    let verdict = from_artifact(&artifact, max);
    if allow.is_empty() || !matches!(verdict, ScanVerdict::Refused(_)) {
        return Ok(verdict);
    }
    let findings = crate::harbor::vulnerabilities(reg, repository, digest).await?;
    Ok(from_findings(&findings, allow, max))
}
