//! Referrers: signatures and attestations follow their image.

use harbor_relay::reference::Reference;

use crate::support::*;

/// A signature-shaped artifact: an OCI manifest with `artifactType` and a
/// `subject` pointing at `subject`.
fn signature_for(subject: &TestImage) -> (Vec<bytes::Bytes>, bytes::Bytes, String) {
    use harbor_relay::manifest::{OCI_MANIFEST, sha256_digest};
    let empty = bytes::Bytes::from_static(b"{}");
    let sig = random_bytes(300);
    let manifest = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256_digest(&empty), "size": 2},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": sha256_digest(&sig), "size": sig.len()}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest, "size": subject.manifest.len()},
        }))
        .expect("json"),
    );
    let digest = sha256_digest(&manifest);
    (vec![empty, sig], manifest, digest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_follow_their_image_through_the_referrers_fallback_tag() {
    use harbor_relay::manifest::{Manifest, OCI_INDEX, OCI_MANIFEST, sha256_digest};
    let w = World::new().await;
    let img = TestImage::random(&[20_000]);
    let repo = "library/signed";
    img.push(&w.src, repo, &Reference::Tag("1".into())).await;

    // What a client does on a registry without the referrers API
    // (distribution 2.8): push the signature by digest, then the
    // sha256-<hex> index that lists it.
    let (blobs, sig_manifest, sig_digest) = signature_for(&img);
    for b in &blobs {
        w.src.put_blob_bytes(repo, b.clone()).await.expect("blob");
    }
    let sig = Manifest::from_bytes(sig_manifest.clone(), None).expect("manifest");
    w.src
        .put_manifest(repo, &Reference::Digest(sig_digest.clone()), &sig)
        .await
        .expect("signature");
    let index = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": sig_digest, "size": sig_manifest.len(),
                           "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json"}],
        }))
        .expect("json"),
    );
    let fallback_tag = format!("sha256-{}", img.digest.trim_start_matches("sha256:"));
    let idx = Manifest::from_bytes(index.clone(), None).expect("index");
    w.src
        .put_manifest(repo, &Reference::Tag(fallback_tag.clone()), &idx)
        .await
        .expect("fallback tag");
    // And cosign's own tag scheme.
    let cosign_tag = format!("{fallback_tag}.sig");
    w.src
        .put_manifest(repo, &Reference::Tag(cosign_tag.clone()), &sig)
        .await
        .expect("cosign tag");

    let relay = Relay::start(&w.config()).await;
    let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["referrers_copied"], 2, "{job}");
    assert_image_on(&w.dst, repo, &img, Some("1")).await;
    let on_target = w
        .dst
        .get_manifest(repo, &Reference::Tag(fallback_tag))
        .await
        .expect("fallback tag on target");
    assert_eq!(on_target.digest, sha256_digest(&index));
    let s = w
        .dst
        .get_manifest(repo, &Reference::Digest(sig_digest.clone()))
        .await
        .expect("signature on target");
    assert_eq!(s.bytes, sig_manifest);
    for b in &blobs {
        assert!(w.dst.has_blob(repo, &sha256_digest(b)).await.expect("HEAD"));
    }
    let c = w
        .dst
        .get_manifest(repo, &Reference::Tag(cosign_tag))
        .await
        .expect("cosign tag on target");
    assert_eq!(c.digest, sig_digest);

    // A rule can leave them out.
    let img2 = TestImage::pushed(&w.src, "library/unsigned-copy", &[5_000]).await;
    let relay2 = Relay::start(&format!("{}referrers = false\n", w.config())).await;
    let ids = relay2
        .push(push_event("library/unsigned-copy", Some("1"), &img2.digest))
        .await;
    let job = relay2.wait_success(ids[0]).await;
    assert_eq!(job["referrers_copied"], 0, "{job}");
}

/// A world whose relay replicates only tags `v*`, with an image already
/// replicated as `repo:v1` (and nothing signed yet).
async fn replicated_under_v_star(repo: &str) -> (World, Relay, TestImage) {
    let w = World::new().await;
    let img = TestImage::random(&[20_000]);
    img.push(&w.src, repo, &Reference::Tag("v1".into())).await;
    let relay = Relay::start(&format!("{}tags = [\"v*\"]\n", w.config())).await;
    let ids = relay.push(push_event(repo, Some("v1"), &img.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["referrers_copied"], 0, "nothing signed yet: {job}");
    (w, relay, img)
}

/// Puts the blobs of a signature of `img` on the source; returns them and
/// the signature's manifest and digest, for the caller to push.
async fn signature_blobs_on_source(
    w: &World,
    repo: &str,
    img: &TestImage,
) -> (Vec<bytes::Bytes>, harbor_relay::manifest::Manifest, String) {
    let (blobs, manifest, digest) = signature_for(img);
    for b in &blobs {
        w.src.put_blob_bytes(repo, b.clone()).await.expect("blob");
    }
    let m = harbor_relay::manifest::Manifest::from_bytes(manifest, None).expect("manifest");
    (blobs, m, digest)
}

/// notation, and cosign in OCI 1.1 mode, push a signature *by digest* with
/// a `subject`, after the image: under a rule that takes only `v*` its
/// event (no tag) is still copied; an ordinary manifest pushed by digest is
/// left to its tagged push, and the job says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_referrer_pushed_by_digest_follows_its_image_under_a_tag_filter() {
    use harbor_relay::manifest::sha256_digest;
    let repo = "library/notarized";
    let (w, relay, img) = replicated_under_v_star(repo).await;
    let (blobs, sig, sig_digest) = signature_blobs_on_source(&w, repo, &img).await;
    w.src
        .put_manifest(repo, &Reference::Digest(sig_digest.clone()), &sig)
        .await
        .expect("push the signature by digest");
    let ids = relay.push(push_event(repo, None, &sig_digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert!(job["skipped"].is_null(), "{job}");
    assert!(
        w.dst
            .has_manifest(repo, &sig_digest)
            .await
            .expect("HEAD signature"),
        "the signature is on the target"
    );
    for b in &blobs {
        assert!(w.dst.has_blob(repo, &sha256_digest(b)).await.expect("HEAD"));
    }

    let plain = TestImage::random(&[1_000]);
    plain
        .push(&w.src, repo, &Reference::Digest(plain.digest.clone()))
        .await;
    let ids = relay.push(push_event(repo, None, &plain.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    let why = job["skipped"].as_str().expect("a reason");
    assert!(why.contains("not a referrer"), "{why}");
    assert!(
        !w.dst
            .has_manifest(repo, &plain.digest)
            .await
            .expect("HEAD plain"),
        "an untagged image is not copied under a tag filter"
    );
}

/// cosign signs after the push: the signature's own event (tag
/// `sha256-<hex>.sig`) is copied even under a rule whose tag filter only
/// takes `v*`, because referrer tags follow the rule's `referrers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signature_pushed_after_its_image_follows_it_under_a_tag_filter() {
    let repo = "library/signed-later";
    let (w, relay, img) = replicated_under_v_star(repo).await;
    let (_, sig, sig_digest) = signature_blobs_on_source(&w, repo, &img).await;
    let cosign_tag = format!("sha256-{}.sig", img.digest.trim_start_matches("sha256:"));
    w.src
        .put_manifest(repo, &Reference::Tag(cosign_tag.clone()), &sig)
        .await
        .expect("cosign tag");
    let ids = relay
        .push(push_event(repo, Some(&cosign_tag), &sig_digest))
        .await;
    relay.wait_success(ids[0]).await;
    let on_target = w
        .dst
        .get_manifest(repo, &Reference::Tag(cosign_tag))
        .await
        .expect("signature on the target");
    assert_eq!(on_target.digest, sig_digest);
    // An ordinary tag outside the filter is still left alone.
    let (status, v) = relay
        .deliver(push_event(repo, Some("latest"), &img.digest))
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("ignored")),
        "{v}"
    );
}

/// `cosign sign --recursive` signs each platform manifest of an index: the
/// signatures of the children come along with the index, not only those of
/// the index itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_of_each_platform_of_an_index_come_along() {
    use harbor_relay::manifest::Manifest;
    let w = World::new().await;
    let repo = "library/multi-signed";
    let index = TestIndex::random();
    index.push(&w.src, repo, "1").await;
    let child = &index.images[1];
    let (blobs, sig_manifest, sig_digest) = signature_for(child);
    for b in &blobs {
        w.src.put_blob_bytes(repo, b.clone()).await.expect("blob");
    }
    let sig = Manifest::from_bytes(sig_manifest, None).expect("manifest");
    let cosign_tag = format!("sha256-{}.sig", child.digest.trim_start_matches("sha256:"));
    w.src
        .put_manifest(repo, &Reference::Tag(cosign_tag.clone()), &sig)
        .await
        .expect("cosign tag of a child");

    let relay = Relay::start(&w.config()).await;
    let ids = relay.push(push_event(repo, Some("1"), &index.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["referrers_copied"], 1, "{job}");
    let on_target = w
        .dst
        .get_manifest(repo, &Reference::Tag(cosign_tag))
        .await
        .expect("the child's signature tag on the target");
    assert_eq!(on_target.digest, sig_digest);
}
