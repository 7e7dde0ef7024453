//! The signature gate's reading against a real registry (Debian's
//! `docker-registry`, which has no referrers API, so cosign 3 writes the
//! `sha256-<hex>` fallback index): signatures made in cosign's formats
//! (`support/cosign.rs`), and what a hostile or careless signer leaves.

mod support;

use harbor_relay::config::TlsMode;
use harbor_relay::gate::keys::{self, TrustedKey};
use harbor_relay::gate::signature::Claim;
use harbor_relay::gate::signature::Signed;
use harbor_relay::replicate::gates::read::signature;
use support::cosign::*;
use support::*;

fn trusted(key: &CosignKey, name: &str) -> TrustedKey {
    keys::parse(std::path::Path::new(name), &key.public_pem()).expect("key")
}

fn claim(digest: &str) -> Claim<'_> {
    Claim {
        digest,
        repository: None,
    }
}

/// What the source's signatures say of `digest` in `repo`.
async fn read(
    reg: &harbor_relay::registry::Registry,
    repo: &str,
    digest: &str,
    keys: &[TrustedKey],
) -> Signed {
    signature(reg, repo, claim(digest), keys)
        .await
        .expect("read")
}

/// Signed by `ci.pub`, in `layout`.
fn by_ci(layout: &'static str) -> Signed {
    Signed::By {
        key: "ci.pub".into(),
        layout,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_cosign_layouts_are_read_and_a_copied_signature_is_not_one() {
    let source = RegistryProc::start(None, Auth::None).await;
    let reg = client(&source.url, None, TlsMode::System);
    let ci = CosignKey::new("ci");
    let keys = [
        trusted(&CosignKey::new("release"), "release.pub"),
        trusted(&ci, "ci.pub"),
    ];
    let a = TestImage::pushed(&reg, "library/app", &[2_000]).await;
    let b = TestImage::pushed(&reg, "library/other", &[2_000]).await;
    let c = TestImage::pushed(&reg, "library/new", &[2_000]).await;

    // Nothing yet.
    let got = read(&reg, "library/app", &a.digest, &keys).await;
    assert_eq!(got, Signed::Not("no signature yet".into()));

    // cosign 2.x: the .sig tag.
    let signed = payload(&a.digest, "harbor.example.com/library/app");
    push_sig_tag(&reg, "library/app", &a.digest, &signed, &ci).await;
    let got = read(&reg, "library/app", &a.digest, &keys).await;
    assert_eq!(got, by_ci(".sig tag"));

    // A's signature replayed under B's .sig tag verifies, and names A.
    push_sig_tag(&reg, "library/other", &b.digest, &signed, &ci).await;
    let got = read(&reg, "library/other", &b.digest, &keys).await;
    match got {
        Signed::Not(why) => assert!(why.contains(&format!("not of {}", b.digest)), "{why}"),
        other => panic!("a replayed signature counted: {other:?}"),
    }

    // An unknown key.
    let intruder = CosignKey::new("intruder");
    push_sig_tag(
        &reg,
        "library/new",
        &c.digest,
        &payload(&c.digest, "h/library/new"),
        &intruder,
    )
    .await;
    let got = read(&reg, "library/new", &c.digest, &keys).await;
    assert!(
        matches!(&got, Signed::Not(w) if w.contains("none of the trusted keys")),
        "{got:?}"
    );

    // cosign 3.x: the bundle referrer, through the fallback index; the
    // .sig tag by the intruder still there does not stop it.
    push_bundle(
        &reg,
        "library/new",
        &c.digest,
        c.manifest.len(),
        &c.digest,
        &ci,
    )
    .await;
    let got = read(&reg, "library/new", &c.digest, &keys).await;
    assert_eq!(got, by_ci("bundle"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_for_another_image_and_match_reference_do_not_count() {
    let source = RegistryProc::start(None, Auth::None).await;
    let reg = client(&source.url, None, TlsMode::System);
    let ci = CosignKey::new("ci");
    let keys = [trusted(&ci, "ci.pub")];
    let a = TestImage::pushed(&reg, "team/app", &[1_000]).await;
    let b = TestImage::pushed(&reg, "team/app", &[1_000]).await;
    // A bundle referring to B whose statement names A.
    push_bundle(
        &reg,
        "team/app",
        &b.digest,
        b.manifest.len(),
        &a.digest,
        &ci,
    )
    .await;
    let got = read(&reg, "team/app", &b.digest, &keys).await;
    assert!(
        matches!(&got, Signed::Not(w) if w.contains("not of")),
        "{got:?}"
    );

    // match_reference: the repository path the signer saw, never its host.
    let signed = payload(&a.digest, "harbor.external.example.com/team/app");
    push_sig_tag(&reg, "team/app", &a.digest, &signed, &ci).await;
    let mut c = claim(&a.digest);
    c.repository = Some("team/app");
    assert!(matches!(
        signature(&reg, "team/app", c, &keys).await.expect("read"),
        Signed::By { .. }
    ));
    c.repository = Some("team/other");
    assert!(matches!(
        signature(&reg, "team/app", c, &keys).await.expect("read"),
        Signed::Not(_)
    ));
}

/// A hostile source cannot stop the reading or make it read without
/// bound: a `.sig` layer that declares more than a payload may be, and a
/// referrer that is not JSON, make "not signed" with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_signature_manifests_are_not_signatures() {
    let source = RegistryProc::start(None, Auth::None).await;
    let reg = client(&source.url, None, TlsMode::System);
    let keys = [trusted(&CosignKey::new("ci"), "ci.pub")];
    let a = TestImage::pushed(&reg, "library/app", &[1_000]).await;
    let big = bytes::Bytes::from(vec![b'x'; 200_000]);
    let big_digest = reg.put_blob_bytes("library/app", big).await.expect("blob");
    let hex = a.digest.trim_start_matches("sha256:");
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": big_digest, "size": 200_000},
        "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json",
                    "digest": big_digest, "size": 200_000,
                    "annotations": {"dev.cosignproject.cosign/signature": "AAAA"}}],
    });
    let m = harbor_relay::manifest::Manifest::from_bytes(
        bytes::Bytes::from(serde_json::to_vec(&manifest).expect("json")),
        None,
    )
    .expect("manifest");
    reg.put_manifest(
        "library/app",
        &harbor_relay::reference::Reference::Tag(format!("sha256-{hex}.sig")),
        &m,
    )
    .await
    .expect("push");
    let got = read(&reg, "library/app", &a.digest, &keys).await;
    assert!(
        matches!(&got, Signed::Not(w) if w.contains("200000 bytes, more than")),
        "{got:?}"
    );
}

/// The scan gate's reading against the Harbor double's scanner (built from
/// Harbor's source, `support/harbor/scans.rs`): not scannable, not yet
/// scanned, running, clean, above the threshold, and above it only by an
/// allowed CVE; the repository's name encoded twice, as Harbor wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_is_read_from_harbors_artifact_api() {
    use harbor_relay::gate::scan::{MaxSeverity, ScanVerdict};
    use harbor_relay::replicate::gates::read::scan;
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = support::harbor::FakeHarbor::start(&registry.url, "admin", "pw").await;
    let plain = client(&registry.url, None, TlsMode::System);
    let img = TestImage::pushed(&plain, "team/platform/api", &[1_000]).await;
    let reg = client(harbor.url(), Some(("admin", "pw")), TlsMode::System);
    let repo = "team/platform/api";
    let read = |max| {
        let reg = reg.clone();
        let d = img.digest.clone();
        async move { scan(&reg, repo, &d, max, &[]).await.expect("read") }
    };
    assert_eq!(read(MaxSeverity::High).await, ScanVerdict::Unscanned);
    harbor.enable_scanner();
    assert!(
        matches!(read(MaxSeverity::High).await, ScanVerdict::Pending(w) if w == "not scanned yet")
    );
    harbor.scanning(&img.digest, 40);
    assert_eq!(
        read(MaxSeverity::High).await,
        ScanVerdict::Pending("scan running, 40 %".into())
    );
    harbor.scanned(
        &img.digest,
        &[("CVE-2026-1", "Critical"), ("CVE-2026-2", "Low")],
    );
    assert!(
        matches!(read(MaxSeverity::High).await, ScanVerdict::Refused(w) if w.contains("1 Critical"))
    );
    let allowed = scan(
        &reg,
        repo,
        &img.digest,
        MaxSeverity::Low,
        &["CVE-2026-1".to_string()],
    )
    .await
    .expect("read");
    assert_eq!(allowed, ScanVerdict::Clean);
    harbor.scanned(&img.digest, &[("CVE-2026-3", "Unknown")]);
    assert!(
        matches!(read(MaxSeverity::None).await, ScanVerdict::Refused(_)),
        "None on top hides Unknown"
    );
}

/// A source that serves a signature layer whose bytes do not match its
/// digest (one byte flipped on the way): "not signed", with the reason,
/// never a verified signature and never an error that stops the job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_layer_whose_bytes_do_not_match_its_digest_is_not_a_signature() {
    let source = RegistryProc::start(None, Auth::None).await;
    let direct = client(&source.url, None, TlsMode::System);
    let proxy = support::fault::FaultProxy::start(&source.url).await;
    let reg = client(&proxy.url, None, TlsMode::System);
    let ci = CosignKey::new("ci");
    let keys = [trusted(&ci, "ci.pub")];
    let a = TestImage::pushed(&direct, "library/app", &[1_000]).await;
    let signed = payload(&a.digest, "h/library/app");
    push_sig_tag(&direct, "library/app", &a.digest, &signed, &ci).await;
    let layer = harbor_relay::manifest::sha256_digest(signed.as_bytes());
    proxy.inject(
        Some("GET"),
        &format!("/blobs/{layer}"),
        1,
        support::fault::Fault::FlipByte(10),
    );
    let got = read(&reg, "library/app", &a.digest, &keys).await;
    assert!(
        matches!(&got, Signed::Not(w) if w.contains(&layer)),
        "a corrupted payload counted: {got:?}"
    );
    assert_eq!(proxy.injected(), 1, "the fault was served");
    // The same layer served intact verifies.
    assert_eq!(
        read(&reg, "library/app", &a.digest, &keys).await,
        by_ci(".sig tag")
    );
}
