//! Signatures made here in cosign's exact formats (gates.md §4): a fixed
//! P-256 key, the simple-signing payload written by hand as Go writes it,
//! DER signatures in standard base64; a DSSE envelope over PAE in a v0.3
//! bundle.

use super::*;
use crate::gate::keys::{self, TrustedKey};
use p256::ecdsa::SigningKey;
use p256::ecdsa::signature::Signer as _;
use p256::pkcs8::EncodePublicKey as _;
use sha2::Digest as _;

const DIGEST: &str = "sha256:947f187506f7629c81c81879a2cb2256455038e4ac770091d897fa0a8b945e3b";
const OTHER: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

fn signing_key(label: &str) -> SigningKey {
    SigningKey::from_slice(&sha2::Sha256::digest(label.as_bytes())).expect("scalar")
}

fn trusted(label: &str) -> TrustedKey {
    let pem = signing_key(label)
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .expect("pem");
    keys::parse(std::path::Path::new(&format!("{label}.pub")), &pem).expect("key")
}

fn payload(digest: &str, reference: &str) -> String {
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"{reference}\"}},\"image\":{{\"docker-manifest-digest\":\"{digest}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
    )
}

fn sign(label: &str, msg: &[u8]) -> Signature {
    signing_key(label).sign(msg)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn claim() -> Claim<'static> {
    Claim {
        digest: DIGEST,
        repository: None,
    }
}

#[test]
fn a_simple_signing_layer_by_a_trusted_key_verifies() {
    let keys = [trusted("other"), trusted("ci")];
    let p = payload(DIGEST, "harbor.example.com/library/nginx");
    let sig = b64(sign("ci", p.as_bytes()).to_der().as_bytes());
    let k = simple_signing(p.as_bytes(), &sig, &keys, claim()).expect("signed");
    assert_eq!(k.file, std::path::Path::new("ci.pub"));
}

#[test]
fn a_signature_of_another_digest_or_key_or_bytes_does_not_count() {
    let keys = [trusted("ci")];
    // Copied from another image: it verifies, and names another digest.
    let p = payload(OTHER, "harbor.example.com/library/nginx");
    let sig = b64(sign("ci", p.as_bytes()).to_der().as_bytes());
    let e = simple_signing(p.as_bytes(), &sig, &keys, claim()).expect_err("other digest");
    assert!(e.contains("not of sha256:947f"), "{e}");
    // Signed by an unknown key.
    let p = payload(DIGEST, "h/library/nginx");
    let sig = b64(sign("intruder", p.as_bytes()).to_der().as_bytes());
    let e = simple_signing(p.as_bytes(), &sig, &keys, claim()).expect_err("unknown key");
    assert!(e.contains("none of the trusted keys"), "{e}");
    // A flipped byte of the signature, or of the payload.
    let mut der = sign("ci", p.as_bytes()).to_der().as_bytes().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    assert!(simple_signing(p.as_bytes(), &b64(&der), &keys, claim()).is_err());
    let good = b64(sign("ci", p.as_bytes()).to_der().as_bytes());
    let tampered = p.replace("nginx", "nginy");
    assert!(simple_signing(tampered.as_bytes(), &good, &keys, claim()).is_err());
    // Garbage.
    let e = simple_signing(p.as_bytes(), "%%%", &keys, claim()).expect_err("garbage");
    assert!(e.contains("base64"), "{e}");
    let sig = b64(sign("ci", b"not json").to_der().as_bytes());
    let e = simple_signing(b"not json", &sig, &keys, claim()).expect_err("not json");
    assert!(e.contains("not JSON"), "{e}");
}

#[test]
fn high_s_and_raw_signatures_verify_as_cosign_accepts_them() {
    let keys = [trusted("ci")];
    let p = payload(DIGEST, "h/library/nginx");
    let sig = sign("ci", p.as_bytes());
    let raw = b64(&sig.to_bytes());
    assert!(simple_signing(p.as_bytes(), &raw, &keys, claim()).is_ok());
    let (r, s) = sig.split_scalars();
    let high = Signature::from_scalars(r.to_bytes(), (-*s).to_bytes()).expect("twin");
    let high = b64(high.to_der().as_bytes());
    assert!(simple_signing(p.as_bytes(), &high, &keys, claim()).is_ok());
}

#[test]
fn match_reference_checks_the_repository_path_never_the_host() {
    let keys = [trusted("ci")];
    let p = payload(DIGEST, "harbor.external.example.com/library/nginx");
    let sig = b64(sign("ci", p.as_bytes()).to_der().as_bytes());
    let mut c = claim();
    c.repository = Some("library/nginx");
    assert!(simple_signing(p.as_bytes(), &sig, &keys, c).is_ok());
    c.repository = Some("library/redis");
    let e = simple_signing(p.as_bytes(), &sig, &keys, c).expect_err("other repository");
    assert!(e.contains("'library/nginx', not 'library/redis'"), "{e}");
}

/// A bundle as cosign 3 writes it for `--key`: in-toto statement, DSSE
/// envelope over PAE, the key's hint.
fn bundle_of(label: &str, subject_hex: &str) -> Vec<u8> {
    let statement = format!(
        "{{\"_type\":\"https://in-toto.io/Statement/v1\",\"subject\":[{{\"digest\":{{\"sha256\":\"{subject_hex}\"}},\"annotations\":{{}}}}],\"predicateType\":\"https://sigstore.dev/cosign/sign/v1\"}}"
    );
    let pt = "application/vnd.in-toto+json";
    let sig = sign(label, &pae(pt, statement.as_bytes()));
    serde_json::to_vec(&serde_json::json!({
        "mediaType": BUNDLE_V03,
        "verificationMaterial": {"publicKey": {"hint": trusted(label).hint}, "tlogEntries": []},
        "dsseEnvelope": {"payload": b64(statement.as_bytes()), "payloadType": pt,
                         "signatures": [{"sig": b64(sig.to_der().as_bytes())}]}
    }))
    .expect("json")
}

#[test]
fn a_cosign_3_bundle_verifies_and_binds_its_subject() {
    let keys = [trusted("other"), trusted("ci")];
    let hex = DIGEST.trim_start_matches("sha256:");
    let k = bundle(&bundle_of("ci", hex), &keys, claim()).expect("signed");
    assert_eq!(k.file, std::path::Path::new("ci.pub"));
    let e = bundle(&bundle_of("ci", &OTHER[7..]), &keys, claim()).expect_err("other");
    assert!(e.contains("not of sha256:947f"), "{e}");
    let e = bundle(&bundle_of("intruder", hex), &keys, claim()).expect_err("unknown key");
    assert!(e.contains("none of the trusted keys"), "{e}");
    let e = bundle(b"{}", &keys, claim()).expect_err("empty");
    assert!(
        e.contains("not application/vnd.dev.sigstore.bundle.v0.3"),
        "{e}"
    );
}

#[test]
fn pae_is_dsse_v1() {
    assert_eq!(
        pae("application/vnd.in-toto+json", b"{}"),
        b"DSSEv1 28 application/vnd.in-toto+json 2 {}".to_vec()
    );
}

#[test]
fn manifests_are_read_within_limits_and_only_as_signatures() {
    let layer = |size: u64, sig: Option<&str>| {
        let mut l =
            serde_json::json!({"mediaType": SIMPLE_SIGNING, "digest": DIGEST, "size": size});
        if let Some(s) = sig {
            l["annotations"] = serde_json::json!({SIGNATURE_ANNOTATION: s});
        }
        l
    };
    let manifest = |layers: Vec<serde_json::Value>| {
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers}))
            .expect("json")
    };
    let got = sig_layers(&manifest(vec![layer(248, Some("c2ln")), layer(10, None)])).expect("ok");
    assert_eq!(got.len(), 1, "the layer without a signature is not one");
    assert_eq!(got[0].signature.as_deref(), Some("c2ln"));
    let e = sig_layers(&manifest(vec![layer(MAX_PAYLOAD + 1, Some("c2ln"))])).expect_err("big");
    assert!(e.contains("more than"), "{e}");
    let many = (0..MAX_LAYERS + 1)
        .map(|_| layer(1, Some("c2ln")))
        .collect();
    assert!(sig_layers(&manifest(many)).is_err());
    assert!(sig_layers(b"\x00garbage").is_err());

    let referrer = |subject: &str, artifact: &str, size: u64| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": artifact,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": OTHER, "size": 2},
            "layers": [{"mediaType": BUNDLE_V03, "digest": OTHER, "size": size}],
            "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": subject, "size": 500},
        }))
        .expect("json")
    };
    let l = bundle_layer(&referrer(DIGEST, BUNDLE_V03, 3000), DIGEST).expect("ok");
    assert_eq!(l.map(|l| l.size), Some(3000));
    assert_eq!(
        bundle_layer(&referrer(DIGEST, "application/spdx+json", 3000), DIGEST).expect("ok"),
        None,
        "an SBOM is not a signature"
    );
    assert!(bundle_layer(&referrer(OTHER, BUNDLE_V03, 3000), DIGEST).is_err());
    assert!(bundle_layer(&referrer(DIGEST, BUNDLE_V03, MAX_BUNDLE + 1), DIGEST).is_err());
}
