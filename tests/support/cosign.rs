//! Signatures in cosign's exact formats, made here with a fixed key
//! (`shared/research/gates.md` §4): the `sha256-<hex>.sig` image of
//! simple-signing layers (cosign 2.x), and the Sigstore bundle v0.3
//! referrer with its `sha256-<hex>` fallback index (cosign 3.x's default,
//! on a registry without the referrers API).

use base64::Engine as _;
use bytes::Bytes;
use harbor_relay::manifest::{Manifest, sha256_digest};
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use serde_json::json;
use sha2::Digest as _;

/// A signing key fixed by its label, as cosign's `generate-key-pair`
/// would make (ECDSA P-256).
pub struct CosignKey(p256::ecdsa::SigningKey);

impl CosignKey {
    pub fn new(label: &str) -> CosignKey {
        let scalar = sha2::Sha256::digest(label.as_bytes());
        CosignKey(p256::ecdsa::SigningKey::from_slice(&scalar).expect("scalar"))
    }

    /// `cosign.pub`.
    pub fn public_pem(&self) -> String {
        self.0
            .verifying_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .expect("pem")
    }

    fn sign_b64(&self, msg: &[u8]) -> String {
        let sig: p256::ecdsa::Signature = self.0.sign(msg);
        b64(sig.to_der().as_bytes())
    }

    fn hint(&self) -> String {
        let der = self.0.verifying_key().to_public_key_der().expect("der");
        b64(&sha2::Sha256::digest(der.as_bytes()))
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn push_blob(reg: &Registry, repo: &str, data: Bytes) -> String {
    reg.put_blob_bytes(repo, data).await.expect("push blob")
}

async fn push_manifest(reg: &Registry, repo: &str, reference: Reference, v: serde_json::Value) {
    let bytes = Bytes::from(serde_json::to_vec(&v).expect("json"));
    let m = Manifest::from_bytes(bytes, None).expect("manifest");
    reg.put_manifest(repo, &reference, &m)
        .await
        .expect("push manifest");
}

/// The simple-signing payload cosign signs, as Go's encoding/json writes it.
pub fn payload(digest: &str, docker_reference: &str) -> String {
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{docker_reference}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
    )
}

/// `cosign sign --key` (2.x layout): the `.sig` image for `tag_digest`
/// whose one layer is the payload `signed`, signed by `key`.
pub async fn push_sig_tag(
    reg: &Registry,
    repo: &str,
    tag_digest: &str,
    signed: &str,
    key: &CosignKey,
) {
    let layer = Bytes::from(signed.as_bytes().to_vec());
    let size = layer.len();
    let layer_digest = push_blob(reg, repo, layer.clone()).await;
    let config = Bytes::from_static(b"{\"architecture\":\"\",\"os\":\"\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}");
    let config_size = config.len();
    let config_digest = push_blob(reg, repo, config).await;
    let hex = tag_digest.trim_start_matches("sha256:");
    push_manifest(
        reg,
        repo,
        Reference::Tag(format!("sha256-{hex}.sig")),
        json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                        "digest": layer_digest, "size": size,
                        "annotations": {"dev.cosignproject.cosign/signature": key.sign_b64(signed.as_bytes())}}],
        }),
    )
    .await;
}

/// `cosign sign --key` (3.x default): a v0.3 bundle whose statement names
/// `signed_digest`, pushed as a referrer of `subject`, listed in the
/// `sha256-<hex>` fallback index.
pub async fn push_bundle(
    reg: &Registry,
    repo: &str,
    subject: &str,
    subject_size: usize,
    signed_digest: &str,
    key: &CosignKey,
) {
    let statement = format!(
        "{{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{{\"digest\":{{\"sha256\":\"{}\"}},\"annotations\":{{}}}}],\"predicateType\":\"https://sigstore.dev/cosign/sign/v1\"}}",
        signed_digest.trim_start_matches("sha256:")
    );
    let pt = "application/vnd.in-toto+json";
    let pae = harbor_relay::gate::signature::pae(pt, statement.as_bytes());
    let bundle = json!({
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": key.hint()}, "tlogEntries": []},
        "dsseEnvelope": {"payload": b64(statement.as_bytes()), "payloadType": pt,
                         "signatures": [{"sig": key.sign_b64(&pae)}]},
    });
    let bundle = Bytes::from(serde_json::to_vec(&bundle).expect("json"));
    let bundle_size = bundle.len();
    let bundle_digest = push_blob(reg, repo, bundle).await;
    let empty = push_blob(reg, repo, Bytes::from_static(b"{}")).await;
    let bt = "application/vnd.dev.sigstore.bundle.v0.3+json";
    let referrer = json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": bt,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2, "artifactType": bt},
        "layers": [{"mediaType": bt, "digest": bundle_digest, "size": bundle_size}],
        "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": subject_size},
        "annotations": {"dev.sigstore.bundle.content": "dsse-envelope",
                        "dev.sigstore.bundle.predicateType": "https://sigstore.dev/cosign/sign/v1"},
    });
    let bytes = serde_json::to_vec(&referrer).expect("json");
    let referrer_digest = sha256_digest(&bytes);
    let referrer_size = bytes.len();
    push_manifest(
        reg,
        repo,
        Reference::Digest(referrer_digest.clone()),
        referrer,
    )
    .await;
    let hex = subject.trim_start_matches("sha256:");
    push_manifest(
        reg,
        repo,
        Reference::Tag(format!("sha256-{hex}")),
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
               "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "digest": referrer_digest, "size": referrer_size, "artifactType": bt}]}),
    )
    .await;
}
