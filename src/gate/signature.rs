//! Whether a cosign signature binds an artifact's digest to a trusted key,
//! decided from bytes already read (bounded, digest-checked) by the caller:
//! pure, no I/O. Both layouts cosign writes (`shared/research/gates.md`
//! §1–2):
//!
//! - the `sha256-<hex>.sig` tag: an image whose layers are simple-signing
//!   payloads, each signature in the layer's
//!   `dev.cosignproject.cosign/signature` annotation (cosign 2.x; 3.x with
//!   `--new-bundle-format=false`);
//! - an OCI 1.1 referrer holding a Sigstore bundle v0.3 whose DSSE
//!   envelope carries an in-toto statement (cosign 3.x's default).
//!
//! A signature counts only when its signed claim names the artifact's own
//! digest (a signature copied from another image verifies, and is
//! refused), and, with `match_reference`, the repository path of the
//! simple-signing `docker-reference` (never the host: the signer saw the
//! external Harbor's name). Keyed verification only: no certificate, no
//! transparency log.

use base64::Engine as _;
use p256::ecdsa::Signature;
use p256::ecdsa::signature::Verifier as _;
use serde_json::Value;

use super::keys::TrustedKey;

/// The simple-signing payload's media type, on the `.sig` image's layers.
pub const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding a layer's signature (standard base64).
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// The Sigstore bundle v0.3 media type (a referrer's `artifactType` and
/// its one layer).
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The in-toto predicate type `cosign sign` writes.
pub const COSIGN_SIGN_PREDICATE: &str = "https://sigstore.dev/cosign/sign/v1";
/// Most signature layers read from one `.sig` image (cosign stops at 1000;
/// a real one has one per signing).
pub const MAX_LAYERS: usize = 32;
/// Largest simple-signing payload read.
pub const MAX_PAYLOAD: u64 = 64 << 10;
/// Largest bundle read.
pub const MAX_BUNDLE: u64 = 1 << 20;

/// What the signature must say: the artifact's digest and, with
/// `match_reference`, its repository path on the source.
#[derive(Clone, Copy, Debug)]
pub struct Claim<'a> {
    /// `sha256:<hex>` of the artifact (for an index, the index itself:
    /// cosign signs the index, not its children).
    pub digest: &'a str,
    /// The source repository (`project/path`), when `match_reference`.
    pub repository: Option<&'a str>,
}

/// What the source's signatures say about an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Signed {
    /// Signed by this key, in this layout (`.sig tag` or `bundle`).
    By {
        /// The key file.
        key: std::path::PathBuf,
        /// Which layout held the signature.
        layout: &'static str,
    },
    /// No signature that counts; why, in words ("no signature yet", or
    /// what was wrong with each one found).
    Not(String),
}

/// A blob to read, as its descriptor declares it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    /// Its digest.
    pub digest: String,
    /// Its declared size, within the limit for its kind.
    pub size: u64,
    /// The signature annotation (simple signing only).
    pub signature: Option<String>,
}

/// The signature layers of a `.sig` image manifest: media type checked,
/// at most [`MAX_LAYERS`], each payload at most [`MAX_PAYLOAD`] and
/// carrying its signature annotation; layers of other types are skipped.
pub fn sig_layers(manifest: &[u8]) -> Result<Vec<Layer>, String> {
    let m: Value = serde_json::from_slice(manifest)
        .map_err(|e| format!("the signature manifest is not JSON: {e}"))?;
    let layers = m["layers"]
        .as_array()
        .ok_or("the signature manifest has no layers")?;
    if layers.len() > MAX_LAYERS {
        return Err(format!(
            "the signature manifest has {} layers, more than the {MAX_LAYERS} read",
            layers.len()
        ));
    }
    let mut out = Vec::new();
    for l in layers.iter().filter(|l| l["mediaType"] == SIMPLE_SIGNING) {
        let layer = descriptor(l, MAX_PAYLOAD)?;
        let Some(sig) = l["annotations"][SIGNATURE_ANNOTATION].as_str() else {
            continue;
        };
        out.push(Layer {
            signature: Some(sig.to_string()),
            ..layer
        });
    }
    Ok(out)
}

/// The bundle layer of a referrer manifest, if it is a cosign signature
/// of `digest`: artifact type a v0.3 bundle, `subject` the artifact, one
/// bundle layer of at most [`MAX_BUNDLE`]. `Ok(None)` for a referrer of
/// another kind (an SBOM, an attestation).
pub fn bundle_layer(manifest: &[u8], digest: &str) -> Result<Option<Layer>, String> {
    let m: Value = serde_json::from_slice(manifest)
        .map_err(|e| format!("the referrer manifest is not JSON: {e}"))?;
    let artifact_type = m["artifactType"]
        .as_str()
        .or_else(|| m["config"]["mediaType"].as_str());
    if artifact_type != Some(BUNDLE_V03) {
        return Ok(None);
    }
    let predicate = m["annotations"]["dev.sigstore.bundle.predicateType"].as_str();
    if predicate.is_some_and(|p| p != COSIGN_SIGN_PREDICATE) {
        return Ok(None);
    }
    if m["subject"]["digest"].as_str() != Some(digest) {
        return Err(format!(
            "a signature bundle whose subject is {}, not {digest}",
            m["subject"]["digest"].as_str().unwrap_or("missing")
        ));
    }
    let layers = m["layers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    match layers {
        [l] if l["mediaType"] == BUNDLE_V03 => descriptor(l, MAX_BUNDLE).map(Some),
        _ => Err("a signature bundle referrer without exactly one bundle layer".into()),
    }
}

/// A descriptor's digest and size, the size within `max`.
fn descriptor(d: &Value, max: u64) -> Result<Layer, String> {
    let digest = d["digest"].as_str().ok_or("a layer without a digest")?;
    crate::reference::digest(digest).map_err(|e| format!("a layer digest: {e}"))?;
    let size = d["size"].as_u64().ok_or("a layer without a size")?;
    if size > max {
        return Err(format!(
            "a signature layer of {size} bytes, more than the {max} read"
        ));
    }
    Ok(Layer {
        digest: digest.to_string(),
        size,
        signature: None,
    })
}

/// Verifies one simple-signing layer: `payload` is the layer's bytes (its
/// digest already checked), `signature` its annotation. The key that
/// verifies it, or why it does not count.
pub fn simple_signing<'k>(
    payload: &[u8],
    signature: &str,
    keys: &'k [TrustedKey],
    claim: Claim,
) -> Result<&'k TrustedKey, String> {
    let sig = decode_signature(signature)?;
    let key = keys
        .iter()
        .find(|k| k.key.verify(payload, &sig).is_ok())
        .ok_or("signed by none of the trusted keys")?;
    let p: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed payload is not JSON: {e}"))?;
    let critical = &p["critical"];
    if critical["type"] != "cosign container image signature" {
        return Err("the signed payload is not a cosign image signature".into());
    }
    let signed = critical["image"]["docker-manifest-digest"]
        .as_str()
        .unwrap_or_default();
    if signed != claim.digest {
        return Err(format!("a signature of {signed}, not of {}", claim.digest));
    }
    if let Some(repo) = claim.repository {
        let reference = critical["identity"]["docker-reference"]
            .as_str()
            .unwrap_or_default();
        let path = reference.split_once('/').map_or("", |(_, p)| p);
        if path != repo {
            return Err(format!(
                "signed for repository '{path}', not '{repo}' (match_reference)"
            ));
        }
    }
    Ok(key)
}

/// Verifies a Sigstore bundle v0.3 (the referrer's layer, digest checked):
/// its DSSE envelope's signature over the PAE of its payload, by a trusted
/// key, and the in-toto statement's subject naming the artifact.
pub fn bundle<'k>(
    bundle: &[u8],
    keys: &'k [TrustedKey],
    claim: Claim,
) -> Result<&'k TrustedKey, String> {
    let b: Value =
        serde_json::from_slice(bundle).map_err(|e| format!("the bundle is not JSON: {e}"))?;
    if b["mediaType"] != BUNDLE_V03 {
        return Err(format!(
            "a bundle of type {}, not {BUNDLE_V03}",
            b["mediaType"].as_str().unwrap_or("missing")
        ));
    }
    let env = &b["dsseEnvelope"];
    let payload_type = env["payloadType"].as_str().unwrap_or_default();
    if payload_type != "application/vnd.in-toto+json" {
        return Err("the bundle holds no in-toto DSSE envelope".into());
    }
    let payload = b64(env["payload"].as_str().unwrap_or_default())
        .map_err(|e| format!("the envelope's payload: {e}"))?;
    let pae = pae(payload_type, &payload);
    // The hint is unauthenticated: it only orders the keys tried.
    let hint = b["verificationMaterial"]["publicKey"]["hint"]
        .as_str()
        .unwrap_or_default();
    let mut ordered: Vec<&TrustedKey> = keys.iter().filter(|k| k.hint == hint).collect();
    ordered.extend(keys.iter().filter(|k| k.hint != hint));
    let sigs = env["signatures"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let key = sigs
        .iter()
        .filter_map(|s| decode_signature(s["sig"].as_str().unwrap_or_default()).ok())
        .find_map(|sig| ordered.iter().find(|k| k.key.verify(&pae, &sig).is_ok()))
        .ok_or("signed by none of the trusted keys")?;
    statement_names(&payload, claim.digest)?;
    Ok(key)
}

/// The in-toto statement is cosign's signing statement and one of its
/// subjects is `digest`.
fn statement_names(payload: &[u8], digest: &str) -> Result<(), String> {
    let st: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("the signed statement is not JSON: {e}"))?;
    if st["_type"] != "https://in-toto.io/Statement/v1"
        || st["predicateType"] != COSIGN_SIGN_PREDICATE
    {
        return Err("the signed statement is not a cosign signing statement".into());
    }
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let subjects = st["subject"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    if subjects.iter().any(|s| s["digest"]["sha256"] == hex) {
        Ok(())
    } else {
        let named: Vec<&str> = subjects
            .iter()
            .filter_map(|s| s["digest"]["sha256"].as_str())
            .collect();
        Err(format!(
            "a signature of sha256:{}, not of {digest}",
            named.first().copied().unwrap_or("nothing")
        ))
    }
}

/// DSSE's pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

fn b64(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64: {e}"))
}

/// A signature as cosign writes it: ASN.1 DER, or the raw `r‖s` that Go's
/// verifier takes too.
fn decode_signature(text: &str) -> Result<Signature, String> {
    let bytes = b64(text).map_err(|e| format!("the signature is {e}"))?;
    Signature::from_der(&bytes)
        .or_else(|_| Signature::from_slice(&bytes))
        .map_err(|_| "the signature is neither DER nor r‖s".to_string())
}

#[cfg(test)]
#[path = "signature_tests.rs"]
mod tests;
