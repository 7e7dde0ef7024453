//! Copying: tags and digests, indexes, new layers only, bounded memory, corrupt sources, mounts, platform subsets, redeliveries.

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;

use crate::support::*;

/// A plain-HTTP source, a TLS + basic-auth target with a test CA, and
/// clients for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_image_by_tag_reaches_pinned_ca_target() {
    let w = World::new().await;
    let img = TestImage::random(&[200_000, 1_000_000, 30_000]);
    img.push(&w.src, "library/nginx", &Reference::Tag("1.4.2".into()))
        .await;
    let relay = Relay::start(&w.config()).await;

    let ids = relay
        .push(push_event("library/nginx", Some("1.4.2"), &img.digest))
        .await;
    assert_eq!(ids.len(), 1);
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["digest"], img.digest.as_str());
    assert_eq!(job["blobs_copied"], 4);
    assert_eq!(job["blobs_skipped"], 0);
    assert_eq!(job["source"], "external/library/nginx:1.4.2");
    assert_eq!(job["target"], "integrated/library/nginx:1.4.2");
    assert!(job["bytes_copied"].as_u64().expect("bytes") >= 1_230_000);
    assert_image_on(&w.dst, "library/nginx", &img, Some("1.4.2")).await;

    // The daemon reports what it did in its metrics.
    let (status, metrics) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    let text = metrics.as_str().expect("text").to_string();
    assert!(
        text.contains(
            "harbor_relay_jobs_finished_total{outcome=\"succeeded\",rule=\"external-to-integrated\",target=\"integrated\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("harbor_relay_blobs_total{outcome=\"copied\"} 4"),
        "{text}"
    );
    assert!(
        text.contains(
            "harbor_relay_webhooks_received_total{format=\"default\",outcome=\"accepted\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("harbor_relay_queue_depth 0"), "{text}");
    assert!(
        text.contains("harbor_relay_job_duration_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("harbor_relay_replication_lag_seconds_count{target=\"integrated\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "harbor_relay_last_success_timestamp_seconds{rule=\"external-to-integrated\"}"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_by_digest_into_nested_repository() {
    let w = World::new().await;
    let img = TestImage::random(&[100_000]);
    img.push(
        &w.src,
        "team-a/platform/api",
        &Reference::Digest(img.digest.clone()),
    )
    .await;
    let relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("team-a/platform/api", None, &img.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(
        job["target"],
        format!("integrated/team-a/platform/api@{}", img.digest)
    );
    assert_image_on(&w.dst, "team-a/platform/api", &img, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_arch_index_copies_every_platform_and_keeps_its_digest() {
    let w = World::new().await;
    let index = TestIndex::random();
    index.push(&w.src, "library/multi", "2.0").await;
    let relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("library/multi", Some("2.0"), &index.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["manifests_copied"], 3);
    let top = w
        .dst
        .get_manifest("library/multi", &Reference::Tag("2.0".into()))
        .await
        .expect("index on target");
    assert_eq!(top.digest, index.digest);
    assert_eq!(top.bytes, index.manifest);
    assert_eq!(top.media_type, harbor_relay::manifest::OCI_INDEX);
    for img in &index.images {
        assert_image_on(&w.dst, "library/multi", img, None).await;
    }
}

/// An index's platforms are copied together, not one after another: the
/// source is asked for all four child manifests at once, and blobs of
/// different platforms move at once (eight GETs held together, where each
/// platform has three and one image alone moves `blob_concurrency`, 4). Across a WAN each round trip is paid once
/// per index, not once per platform.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_s_platforms_are_copied_together() {
    use crate::support::fault::{FaultProxy, Meeting};
    let w = World::new().await;
    let index = TestIndex::with_platforms(4);
    index.push(&w.src, "library/wide", "1").await;
    let children: Vec<String> = index.images.iter().map(|i| i.digest.clone()).collect();
    let manifests = Meeting::new(4, std::time::Duration::from_secs(5), move |m, path| {
        m == "GET"
            && children
                .iter()
                .any(|d| path.ends_with(&format!("/manifests/{d}")))
    });
    let blobs = Meeting::new(8, std::time::Duration::from_secs(5), |m, path| {
        m == "GET" && path.contains("/blobs/sha256:")
    });
    let proxy = FaultProxy::start_gated(
        &w.source.url,
        axum::Router::new(),
        Some(Meeting::gate(vec![manifests.clone(), blobs.clone()])),
    )
    .await;
    let config = w.config().replacen(&w.source.url, &proxy.url, 1);
    assert_ne!(config, w.config(), "the source goes through the proxy");
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/wide", Some("1"), &index.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["manifests_copied"], 5, "{job}");
    assert_eq!(job["blobs_copied"], 12, "{job}");
    assert_eq!(manifests.arrived(), 4, "each child manifest read once");
    assert_eq!(blobs.arrived(), 12, "each blob read once");
    assert!(
        manifests.met(),
        "the four child manifests were not asked at once ({} asked)",
        manifests.arrived()
    );
    assert!(
        blobs.met(),
        "eight blobs were never read at once ({} read)",
        blobs.arrived()
    );
    let top = w
        .dst
        .get_manifest("library/wide", &Reference::Tag("1".into()))
        .await
        .expect("index on target");
    assert_eq!(top.bytes, index.manifest);
    for img in &index.images {
        assert_image_on(&w.dst, "library/wide", img, None).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_body_is_replicated() {
    let w = World::new().await;
    let img = TestImage::random(&[50_000]);
    img.push(&w.src, "library/ce", &Reference::Tag("v1".into()))
        .await;
    let relay = Relay::start(&w.config()).await;
    let (status, v) = relay
        .webhook(
            push_cloudevent("library/ce", "v1", &img.digest),
            "application/cloudevents+json",
            Some(WEBHOOK_SECRET),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let id = v["jobs"][0]["id"].as_u64().expect("id");
    relay.wait_success(id).await;
    assert_image_on(&w.dst, "library/ce", &img, Some("v1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_push_sends_only_new_layers_and_tag_only_when_present() {
    let w = World::new().await;
    let base = vec![random_bytes(400_000), random_bytes(300_000)];
    let v1 = TestImage::from_layers(
        [base.clone(), vec![random_bytes(100_000)]].concat(),
        "linux",
        "amd64",
    );
    let v2 = TestImage::from_layers(
        [base.clone(), vec![random_bytes(120_000)]].concat(),
        "linux",
        "amd64",
    );
    v1.push(&w.src, "library/app", &Reference::Tag("v1".into()))
        .await;
    v2.push(&w.src, "library/app", &Reference::Tag("v2".into()))
        .await;
    let relay = Relay::start(&w.config()).await;
    let a = relay
        .push(push_event("library/app", Some("v1"), &v1.digest))
        .await;
    let ja = relay.wait_success(a[0]).await;
    assert_eq!(ja["blobs_copied"], 4);
    let b = relay
        .push(push_event("library/app", Some("v2"), &v2.digest))
        .await;
    let jb = relay.wait_success(b[0]).await;
    // The new layer and the new config; the two base layers were there.
    assert_eq!(jb["blobs_copied"], 2, "{jb}");
    assert_eq!(jb["blobs_skipped"], 2, "{jb}");
    assert_eq!(jb["bytes_copied"], 120_000 + v2.config.len() as u64, "{jb}");
    assert_image_on(&w.dst, "library/app", &v2, Some("v2")).await;

    // Same artifact under another tag: the manifest is there, so only the
    // tag is written, with no blob traffic.
    v2.push(&w.src, "library/app", &Reference::Tag("stable".into()))
        .await;
    let c = relay
        .push(push_event("library/app", Some("stable"), &v2.digest))
        .await;
    let jc = relay.wait_success(c[0]).await;
    assert_eq!(jc["blobs_copied"], 0, "{jc}");
    assert_eq!(jc["blobs_skipped"], 0, "{jc}");
    assert_eq!(jc["manifests_copied"], 0, "{jc}");
    assert_image_on(&w.dst, "library/app", &v2, Some("stable")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_for_a_large_layer() {
    const LAYER: usize = 160 << 20;
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/huge", &[LAYER]).await;
    let relay = Relay::start(&w.config()).await;
    let before = relay.peak_rss();
    let ids = relay
        .push(push_event("library/huge", Some("1"), &img.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(
        job["bytes_copied"].as_u64(),
        Some(LAYER as u64 + img.config.len() as u64)
    );
    let peak = relay.peak_rss();
    eprintln!(
        "relay peak RSS: {} MiB before, {} MiB after a {} MiB layer",
        before >> 20,
        peak >> 20,
        LAYER >> 20
    );
    assert!(
        peak < before + (48 << 20),
        "peak RSS grew from {} MiB to {} MiB copying a {} MiB layer: the blob is being buffered",
        before >> 20,
        peak >> 20,
        LAYER >> 20
    );
    assert_image_on(&w.dst, "library/huge", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_source_blob_fails_the_job_and_never_reaches_the_target() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/corrupt", &[500_000]).await;
    // Flip the stored bytes of the layer behind the source registry's back:
    // it will serve them under the original digest.
    let layer = img.blob_digests()[1].clone();
    let hex = layer.trim_start_matches("sha256:");
    let data = w.source.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::write(&data, random_bytes(500_000)).expect("corrupt the blob");

    // Content-addressed: a source that serves other bytes under a digest
    // will every time, so the job fails at its first attempt, naming the
    // source (issue 25; it used to be retried, blamed on the wire).
    let relay = Relay::start_with_jobs(
        "max_attempts = 2\nretry_initial_delay = \"100ms\"\n",
        &w.config(),
    )
    .await;
    let ids = relay
        .push(push_event("library/corrupt", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
    assert!(err.contains("reading from source 'external'"), "{err}");
    assert!(err.contains(&layer), "{err}");
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(
        !w.dst
            .has_blob("library/corrupt", &layer)
            .await
            .expect("HEAD"),
        "corrupted blob reached the target"
    );
    assert!(
        !w.dst
            .has_manifest("library/corrupt", &img.digest)
            .await
            .expect("HEAD"),
        "manifest written without its blobs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_mounted_across_repositories_on_a_token_auth_target() {
    let t = TokenTarget::start().await;
    let dst = &t.dst;
    let source = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);

    let base = vec![random_bytes(600_000), random_bytes(400_000)];
    let app1 = TestImage::from_layers(
        [base.clone(), vec![random_bytes(50_000)]].concat(),
        "linux",
        "amd64",
    );
    let app2 = TestImage::from_layers(
        [base.clone(), vec![random_bytes(60_000)]].concat(),
        "linux",
        "amd64",
    );
    app1.push(&src, "team-a/app1", &Reference::Tag("1".into()))
        .await;
    app2.push(&src, "team-a/app2", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        t.toml(),
    );
    let relay = Relay::start(&config).await;
    let a = relay
        .push(push_event("team-a/app1", Some("1"), &app1.digest))
        .await;
    relay.wait_success(a[0]).await;
    let b = relay
        .push(push_event("team-a/app2", Some("1"), &app2.digest))
        .await;
    let jb = relay.wait_success(b[0]).await;
    assert_eq!(jb["blobs_mounted"], 2, "{jb}");
    assert_eq!(jb["blobs_copied"], 2, "{jb}");
    assert_eq!(
        jb["bytes_copied"],
        60_000 + app2.config.len() as u64,
        "shared layers were uploaded again: {jb}"
    );
    assert_image_on(dst, "team-a/app2", &app2, Some("1")).await;
    let scopes = t.issuer.scopes.lock().expect("scopes").clone();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("repository:team-a/app2:pull,push")
                && s.contains("repository:team-a/app1:pull")),
        "no token asked for both repositories: {scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_subset_writes_a_new_index_with_only_those_platforms() {
    let w = World::new().await;
    let index = TestIndex::random();
    index.push(&w.src, "library/multi", "3.0").await;
    let relay = Relay::start(&format!("{}platforms = [\"linux/amd64\"]\n", w.config())).await;
    let ids = relay
        .push(push_event("library/multi", Some("3.0"), &index.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    let note = job["note"].as_str().expect("a note about the new digest");
    assert!(note.contains(&index.digest), "{note}");
    let top = w
        .dst
        .get_manifest("library/multi", &Reference::Tag("3.0".into()))
        .await
        .expect("index on target");
    assert_ne!(top.digest, index.digest, "the subset must be a new index");
    assert_eq!(job["digest"], top.digest.as_str());
    let doc: serde_json::Value = serde_json::from_slice(&top.bytes).expect("json");
    let listed = doc["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["platform"]["architecture"], "amd64");
    assert_image_on(&w.dst, "library/multi", &index.images[0], None).await;
    assert!(
        !w.dst
            .has_manifest("library/multi", &index.images[1].digest)
            .await
            .expect("HEAD"),
        "the arm64 image was copied"
    );
}

/// An event for what the daemon already left under a tag costs one request
/// to the target and none to the source; a new image costs no request it
/// does not need; anything else (the tag moved on either side, a stale
/// event) takes the full path and ends right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_costs_one_request_and_a_changed_tag_the_full_path() {
    let w = World::with_access_logs(true).await;
    let one = TestImage::random(&[20_000]);
    let two = TestImage::random(&[20_000]);
    let tag = Reference::Tag("1".into());
    one.push(&w.src, "library/again", &tag).await;
    // No coalescing, so that each event is a job of its own (within the
    // window, a repeat joins the finished job and costs nothing at all).
    let relay = Relay::start_with_jobs("coalesce_window = \"0s\"\n", &w.config()).await;
    let event = |d: &str| push_event("library/again", Some("1"), d);
    let ids = relay.push(event(&one.digest)).await;
    relay.wait_success(ids[0]).await;
    // The registries write their access logs after answering: count once
    // a log has stopped growing, not after a guessed sleep.
    let (src0, dst0) = (
        w.source.settled_requests().await,
        w.target.settled_requests().await,
    );

    let ids = relay.push(event(&one.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["digest"], one.digest.as_str(), "{job}");
    assert_eq!(
        w.source.settled_requests().await - src0,
        0,
        "the source was asked"
    );
    assert_eq!(
        w.target.settled_requests().await - dst0,
        1,
        "target requests"
    );

    // The source's tag moves: its event takes the full path. The target
    // lacks the event's manifest, so where its tag points is not asked:
    // one HEAD, a POST and a PUT for each of the two blobs (layer, config),
    // the manifest's PUT.
    two.push(&w.src, "library/again", &tag).await;
    let dst0 = w.target.settled_requests().await;
    let ids = relay.push(event(&two.digest)).await;
    relay.wait_success(ids[0]).await;
    assert_eq!(
        w.target.settled_requests().await - dst0,
        6,
        "target requests"
    );
    assert_image_on(&w.dst, "library/again", &two, Some("1")).await;
    // A stale event for the old digest: the source says `two`, so nothing
    // goes back.
    let ids = relay.push(event(&one.digest)).await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/again", &two, Some("1")).await;
    // Someone moves the target's tag behind the daemon's back: a redelivery
    // notices and puts it right.
    let m =
        harbor_relay::manifest::Manifest::from_bytes(one.manifest.clone(), None).expect("manifest");
    w.dst
        .put_manifest("library/again", &tag, &m)
        .await
        .expect("move the target tag");
    let ids = relay.push(event(&two.digest)).await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/again", &two, Some("1")).await;
}
