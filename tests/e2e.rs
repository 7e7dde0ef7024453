//! End to end: real `docker-registry` processes as source and target, the
//! real `harbor-relay serve` process, Harbor-shaped webhooks, and checks on
//! what the target holds.

mod support;

use std::time::Duration;

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use support::*;

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
            "harbor_relay_jobs_finished_total{outcome=\"succeeded\",rule=\"external-to-integrated\"} 1"
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
        text.contains("harbor_relay_replication_lag_seconds_count 1"),
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
async fn skip_verify_target_works_and_warns_at_start() {
    let w = World::new().await;
    let img = TestImage::random(&[10_000]);
    img.push(&w.src, "library/insecure", &Reference::Tag("1".into()))
        .await;
    let relay = Relay::start(&w.config_with_tls("{ insecure_skip_verify = true }")).await;
    let ids = relay
        .push(push_event("library/insecure", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/insecure", &img, Some("1")).await;
    let log = relay.logs();
    assert!(
        log.contains("TLS certificate verification is OFF") && log.contains("integrated"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_the_job_with_the_tls_reason() {
    let w = World::new().await;
    let img = TestImage::random(&[10_000]);
    img.push(&w.src, "library/untrusted", &Reference::Tag("1".into()))
        .await;
    // Verification on, system roots only: the test CA is not trusted.
    let relay = Relay::start(&w.config_with_tls("")).await;
    let ids = relay
        .push(push_event("library/untrusted", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
    assert!(err.contains("certificate not trusted"), "{err}");
    assert!(
        err.contains("set tls.ca_file for registry 'integrated'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_target_and_basic_auth_source() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(pki_dir.path());
    let issuer = TokenIssuer::start_tls(USER, PASS, &pki).await;
    // The source wants Basic auth over plain HTTP; the target, tokens.
    let source = RegistryProc::start(
        None,
        Auth::Basic {
            user: "reader".into(),
            pass: "source-pw".into(),
        },
    )
    .await;
    let target = RegistryProc::start(Some(&pki), Auth::Token(issuer.clone())).await;
    let src = client(&source.url, Some(("reader", "source-pw")), TlsMode::System);
    let dst = client(&target.url, Some((USER, PASS)), pinned(&pki));

    let img = TestImage::random(&[300_000, 20_000]);
    img.push(&src, "library/tok", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}{}{}{RULE}",
        registry_toml("external", &source.url, Some(("reader", "source-pw")), ""),
        registry_toml(
            "integrated",
            &target.url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", pki.ca_pem.display())
        ),
        issuer.realm_toml(),
    );
    let relay = Relay::start(&config).await;
    let before = issuer.requests.load(std::sync::atomic::Ordering::Relaxed);
    let ids = relay
        .push(push_event("library/tok", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert!(
        issuer.requests.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the relay never asked the token service"
    );
    assert_image_on(&dst, "library/tok", &img, Some("1")).await;

    // Wrong password: the token service refuses, the job says access denied.
    let bad = config.replace(PASS, "wrong");
    let relay2 = Relay::start(&bad).await;
    let ids = relay2
        .push(push_event("library/tok", Some("1"), &img.digest))
        .await;
    let job = relay2.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
    assert!(err.contains("access denied"), "{err}");
    assert!(
        !err.contains("wrong"),
        "password leaked into the error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_webhook_is_one_job() {
    let w = World::new().await;
    // A slow source keeps the first job running while Harbor "retries".
    let proxy = SlowProxy::start(w.source.addr, 1_000_000).await;
    let img = TestImage::random(&[3_000_000]);
    img.push(&w.src, "library/redeliver", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", proxy.addr), None, ""),
        w.target_toml(),
    );
    let relay = Relay::start(&config).await;
    let body = push_event("library/redeliver", Some("1"), &img.digest);
    let first = relay.push(body.clone()).await;
    let (status, v) = relay
        .webhook(body.clone(), "application/json", Some(WEBHOOK_SECRET))
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["jobs"][0]["id"].as_u64(), Some(first[0]), "{v}");
    assert_eq!(v["jobs"][0]["coalesced"], true, "{v}");
    let job = relay.wait_success(first[0]).await;
    assert_eq!(job["coalesced"], 1);
    let (_, all) = relay.get("/api/v1/jobs").await;
    assert_eq!(all["jobs"].as_array().expect("jobs").len(), 1, "{all}");
    assert_image_on(&w.dst, "library/redeliver", &img, Some("1")).await;
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
async fn refused_webhooks_get_precise_answers_and_store_nothing() {
    let w = World::new().await;
    let relay = Relay::start(&w.config()).await;
    let d = format!("sha256:{}", "a".repeat(64));
    let good = push_event("library/nginx", Some("1"), &d);

    let (s, v) = relay.webhook(good.clone(), "application/json", None).await;
    assert_eq!(s, 401, "{v}");
    assert!(
        v["error"]
            .as_str()
            .expect("error")
            .contains("Authorization")
    );
    let (s, _) = relay
        .webhook(good.clone(), "application/json", Some("Bearer wrong"))
        .await;
    assert_eq!(s, 401);

    let (s, v) = relay
        .webhook(good.clone(), "text/plain", Some(WEBHOOK_SECRET))
        .await;
    assert_eq!(s, 415, "{v}");

    let big = vec![b' '; 2 * 1024 * 1024];
    let (s, v) = relay
        .webhook(big, "application/json", Some(WEBHOOK_SECRET))
        .await;
    assert_eq!(s, 413, "{v}");

    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"{not json".to_vec(), "malformed JSON"),
        (
            br#"{"type":"PUSH_ARTIFACT","event_data":{"resources":[{"digest":"sha256:aa"}]}}"#
                .to_vec(),
            "missing field event_data.repository",
        ),
        (
            push_event("library/../etc", Some("1"), &d),
            "invalid repository name",
        ),
        (
            push_event("library/nginx", Some("1"), "sha256:1234"),
            "invalid digest",
        ),
        (
            push_event(
                "library/nginx",
                Some("1"),
                &format!("md5:{}", "a".repeat(32)),
            ),
            "invalid digest",
        ),
    ];
    for (body, expect) in cases {
        let (s, v) = relay
            .webhook(body, "application/json", Some(WEBHOOK_SECRET))
            .await;
        assert_eq!(s, 400, "{v}");
        let msg = v["error"].as_str().expect("error");
        assert!(msg.contains(expect), "expected '{expect}' in '{msg}'");
    }

    // Valid but not acted on: 200 with a reason.
    let pull = std::fs::read("tests/fixtures/harbor/pull-artifact.json").expect("fixture");
    let (s, v) = relay
        .webhook(pull, "application/json", Some(WEBHOOK_SECRET))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["status"], "ignored");
    assert!(v["reason"].as_str().expect("reason").contains("pull"));
    let del = std::fs::read("tests/fixtures/harbor/delete-artifact.json").expect("fixture");
    let (s, v) = relay
        .webhook(del, "application/json", Some(WEBHOOK_SECRET))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["event_type"], "DELETE_ARTIFACT");

    let (_, all) = relay.get("/api/v1/jobs").await;
    assert_eq!(all["jobs"].as_array().expect("jobs").len(), 0, "{all}");
    let (_, metrics) = relay.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains(
            "harbor_relay_webhooks_received_total{format=\"default\",outcome=\"unauthorized\"} 2"
        ),
        "{text}"
    );
    assert!(!relay.logs().contains("webhook-s3cret"), "secret in log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_large_copy_then_restart_completes_the_job() {
    let w = World::new().await;
    // 4 layers of 6 MiB through a 6 MB/s source: the copy takes seconds.
    let proxy = SlowProxy::start(w.source.addr, 6_000_000).await;
    let img = TestImage::random(&[6 << 20, 6 << 20, 6 << 20, 6 << 20]);
    img.push(&w.src, "library/big", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", proxy.addr), None, ""),
        w.target_toml(),
    );
    // One blob at a time, so the crash falls between layers.
    let mut relay = Relay::start_with_jobs("blob_concurrency = 1\n", &config).await;
    let ids = relay
        .push(push_event("library/big", Some("1"), &img.digest))
        .await;

    // Wait until some layer has landed on the target but not all.
    let layers: Vec<String> = img.blob_digests()[1..].to_vec();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut present = 0;
        for d in &layers {
            if w.dst.has_blob("library/big", d).await.expect("HEAD") {
                present += 1;
            }
        }
        if present >= 1 {
            assert!(present < layers.len(), "copy finished before the crash");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no layer arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.kill9();
    assert!(
        w.dst
            .get_manifest("library/big", &Reference::Tag("1".into()))
            .await
            .is_err(),
        "tag written before its blobs"
    );

    relay.restart().await;
    assert!(
        relay.logs().contains("re-queued jobs interrupted"),
        "{}",
        relay.logs()
    );
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["attempts"], 2, "{job}");
    assert!(
        job["blobs_skipped"].as_u64().expect("skipped") >= 1,
        "blobs finished before the crash were sent again: {job}"
    );
    assert_image_on(&w.dst, "library/big", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_and_queued_work_survives() {
    let w = World::new().await;
    let img = TestImage::random(&[10_000]);
    img.push(&w.src, "library/term", &Reference::Tag("1".into()))
        .await;
    let mut relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("library/term", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    let status = relay.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        relay.logs()
    );
    assert!(relay.logs().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_command_copies_one_artifact_and_reports() {
    let w = World::new().await;
    let img = TestImage::random(&[70_000, 5_000]);
    img.push(&w.src, "library/cli", &Reference::Tag("3.1".into()))
        .await;
    let file = ConfigFile::new(&w.config());
    let cfg = file.path.as_str();
    let replicate = |image: &str| {
        relay_cmd(&[
            "replicate",
            "--config",
            cfg,
            "--from",
            "external",
            "--to",
            "integrated",
            image,
        ])
    };
    let out = replicate("library/cli:3.1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&img.digest), "{stdout}");
    assert!(stdout.contains("3 copied, 0 already present"), "{stdout}");
    assert_image_on(&w.dst, "library/cli", &img, Some("3.1")).await;

    // Again: everything is there, nothing is copied.
    let out = replicate("library/cli:3.1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("0 copied"), "{stdout}");

    // A tag that does not exist: non-zero exit and the reason.
    let out = replicate("library/cli:nope");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry 'external': manifest library/cli:nope not found"),
        "{stderr}"
    );
}

#[test]
fn serve_refuses_a_bad_config_with_file_and_key() {
    let out = relay_cmd(&["serve", "--config", "/nonexistent/relay.toml"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("config /nonexistent/relay.toml: cannot read"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        "[store]\npath = \"/tmp/x\"\n[registries.a]\nurl = \"http://127.0.0.1:1\"\n[[rules]]\nfrom = \"a\"\nto = \"b\"\n",
    )
    .expect("config");
    let out = relay_cmd(&["serve", "--config", cfg.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rules[0].to: unknown registry 'b'"),
        "{stderr}"
    );
    assert!(stderr.contains(&cfg.display().to_string()), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_for_a_large_layer() {
    const LAYER: usize = 160 << 20;
    let w = World::new().await;
    let img = TestImage::random(&[LAYER]);
    img.push(&w.src, "library/huge", &Reference::Tag("1".into()))
        .await;
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
    let img = TestImage::random(&[500_000]);
    img.push(&w.src, "library/corrupt", &Reference::Tag("1".into()))
        .await;
    // Flip the stored bytes of the layer behind the source registry's back:
    // it will serve them under the original digest.
    let layer = img.blob_digests()[1].clone();
    let hex = layer.trim_start_matches("sha256:");
    let data = w.source.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    std::fs::write(&data, random_bytes(500_000)).expect("corrupt the blob");

    // A mismatch may be a fault on the wire, so it is retried; here the
    // source itself is corrupt, so every attempt fails the same way.
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
    assert_eq!(job["attempts"], 2, "{job}");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
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
async fn target_down_when_the_webhook_arrives_then_back_later() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(pki_dir.path());
    let source = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let img = TestImage::random(&[100_000]);
    img.push(&src, "library/later", &Reference::Tag("1".into()))
        .await;

    // The target's address is known, but nothing listens there yet.
    let port = free_port();
    let target_url = format!("https://127.0.0.1:{port}");
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml(
            "integrated",
            &target_url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", pki.ca_pem.display())
        ),
    );
    let relay = Relay::start_with_jobs(
        "max_attempts = 50\nretry_initial_delay = \"200ms\"\nretry_max_delay = \"500ms\"\n",
        &config,
    )
    .await;
    let ids = relay
        .push(push_event("library/later", Some("1"), &img.digest))
        .await;
    let j = relay.wait_state(ids[0], "retrying").await;
    let err = j["last_error"].as_str().expect("error");
    assert!(err.contains("cannot connect"), "{err}");
    assert!(j["next_attempt_at"].is_string(), "{j}");

    // Harbor retries its webhook meanwhile: it joins the waiting job.
    let again = relay
        .push(push_event("library/later", Some("1"), &img.digest))
        .await;
    assert_eq!(again, ids);

    let target = RegistryProc::start_on(
        port,
        Some(&pki),
        Auth::Basic {
            user: USER.into(),
            pass: PASS.into(),
        },
    )
    .await;
    let job = relay.wait_success(ids[0]).await;
    assert!(job["attempts"].as_u64().expect("attempts") >= 2, "{job}");
    let dst = client(&target.url, Some((USER, PASS)), pinned(&pki));
    assert_image_on(&dst, "library/later", &img, Some("1")).await;
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .expect("text")
            .contains("harbor_relay_job_retries_total{rule=\"external-to-integrated\"}"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_is_listed_and_retried_from_the_cli() {
    let w = World::new().await;
    let img = TestImage::random(&[20_000]);
    let relay = Relay::start(&w.config()).await;
    // Harbor says it was pushed, but the source does not have it (yet):
    // not found is not worth retrying on a timer, so the job fails at once.
    let ids = relay
        .push(push_event("library/late", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(
        job["last_error"]
            .as_str()
            .expect("error")
            .contains("not found")
    );

    let url = relay.url.clone();
    let out = relay_cmd_env(
        &["jobs", "--url", &url, "list", "--state", "failed"],
        &[("HARBOR_RELAY_API_TOKEN", API_TOKEN)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("external/library/late:1"), "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");

    img.push(&w.src, "library/late", &Reference::Tag("1".into()))
        .await;
    let id = ids[0].to_string();
    // Changing anything needs the API token.
    let out = relay_cmd(&["jobs", "--url", &url, "retry", &id]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("api_token"),
        "{stderr}"
    );
    let with_token = [("HARBOR_RELAY_API_TOKEN", API_TOKEN)];
    let out = relay_cmd_env(&["jobs", "--url", &url, "retry", &id], &with_token);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued again"));
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/late", &img, Some("1")).await;

    // The config file is enough to find the daemon.
    let cfg = relay.config_path.to_str().expect("utf-8").to_string();
    let out = relay_cmd_env(&["jobs", "--config", &cfg, "show", &id], &with_token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("\"state\": \"succeeded\""), "{stdout}");
    // Retrying a job that succeeded is refused with the reason.
    let out = relay_cmd_env(&["jobs", "--url", &url, "retry", &id], &with_token);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only failed jobs can be retried"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_layers_are_mounted_across_repositories_on_a_token_auth_target() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(pki_dir.path());
    let issuer = TokenIssuer::start_tls(USER, PASS, &pki).await;
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(Some(&pki), Auth::Token(issuer.clone())).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&target.url, Some((USER, PASS)), pinned(&pki));

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
        "{}{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml(
            "integrated",
            &target.url,
            Some((USER, PASS)),
            &format!("{{ ca_file = \"{}\" }}", pki.ca_pem.display())
        ),
        issuer.realm_toml(),
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
    assert_image_on(&dst, "team-a/app2", &app2, Some("1")).await;
    let scopes = issuer.scopes.lock().expect("scopes").clone();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains("repository:team-a/app2:pull,push")
                && s.contains("repository:team-a/app1:pull")),
        "no token asked for both repositories: {scopes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_repositories_and_tags_and_map_paths() {
    let w = World::new().await;
    let keep = TestImage::random(&[10_000]);
    let other = TestImage::random(&[10_000]);
    keep.push(&w.src, "team-a/platform/api", &Reference::Tag("2.0".into()))
        .await;
    keep.push(
        &w.src,
        "team-a/platform/api",
        &Reference::Tag("2.1-rc1".into()),
    )
    .await;
    other
        .push(&w.src, "team-a/tools/lint", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}[[rules]]\nname = \"platform\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"team-*\"]\nrepositories = [\"platform/**\"]\nexclude_tags = [\"*-rc*\"]\nflatten = 1\ntarget_project = \"mirror-{{project}}\"\n",
        w.registries(),
    );
    let relay = Relay::start(&config).await;

    // What `rules test` says, before anything is copied.
    let cfg = relay.config_path.to_str().expect("utf-8").to_string();
    let out = relay_cmd(&["rules", "test", "--config", &cfg, "team-a/platform/api:2.0"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(
            "rule 'platform': external/team-a/platform/api:2.0 -> integrated/mirror-team-a/api:2.0"
        ),
        "{stdout}"
    );
    let out = relay_cmd(&[
        "rules",
        "test",
        "--config",
        &cfg,
        "team-a/platform/api:2.1-rc1",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tag in `exclude_tags`"));

    let ids = relay
        .push(push_event("team-a/platform/api", Some("2.0"), &keep.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["target"], "integrated/mirror-team-a/api:2.0");
    assert_image_on(&w.dst, "mirror-team-a/api", &keep, Some("2.0")).await;

    // A tag the rule filters out: acknowledged with the reason.
    let (status, v) = relay
        .deliver(push_event(
            "team-a/platform/api",
            Some("2.1-rc1"),
            &keep.digest,
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ignored", "{v}");
    assert!(v.to_string().contains("exclude_tags"), "{v}");
    // A repository no rule is about: refused, so Harbor's webhook log shows
    // it, with what to change.
    let (status, v) = relay
        .deliver(push_event("team-a/tools/lint", Some("1"), &other.digest))
        .await;
    assert_eq!(status, 422, "{v}");
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains("no rule replicates repository 'team-a/tools/lint'"),
        "{msg}"
    );
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.as_str().expect("text").contains(
            "harbor_relay_webhooks_received_total{format=\"default\",outcome=\"no_rule\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        w.dst
            .get_manifest("mirror-team-a/lint", &Reference::Tag("1".into()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_false_leaves_a_conflicting_target_tag_alone() {
    let w = World::new().await;
    let theirs = TestImage::random(&[10_000]);
    let ours = TestImage::random(&[10_000]);
    // The target already has 1.0, pointing at something else.
    theirs
        .push(&w.dst, "library/pinned", &Reference::Tag("1.0".into()))
        .await;
    ours.push(&w.src, "library/pinned", &Reference::Tag("1.0".into()))
        .await;
    let config = format!("{}{RULE}override = false\n", w.registries());
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/pinned", Some("1.0"), &ours.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    let why = job["skipped"].as_str().expect("a reason");
    assert!(
        why.contains("override = false") && why.contains(&theirs.digest),
        "{why}"
    );
    assert_image_on(&w.dst, "library/pinned", &theirs, Some("1.0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_replicate_only_when_a_rule_asks() {
    let w = World::new().await;
    let img = TestImage::random(&[10_000]);
    img.push(&w.src, "library/gone", &Reference::Tag("1".into()))
        .await;
    img.push(&w.src, "library/kept", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nrepositories = [\"gone\"]\nreplicate_deletes = true\n\n[[rules]]\nname = \"copy\"\nfrom = \"external\"\nto = \"integrated\"\nrepositories = [\"kept\"]\n",
        w.registries(),
    );
    let relay = Relay::start(&config).await;
    for repo in ["library/gone", "library/kept"] {
        let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
        relay.wait_success(ids[0]).await;
        assert_image_on(&w.dst, repo, &img, Some("1")).await;
    }
    let delete = |repo: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&push_event(repo, Some("1"), &img.digest)).expect("json");
        v["type"] = "DELETE_ARTIFACT".into();
        serde_json::to_vec(&v).expect("json")
    };
    let ids = relay.push(delete("library/gone")).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["action"], "delete");
    assert_eq!(job["deleted"], true, "{job}");
    assert!(
        !w.dst
            .has_manifest("library/gone", &img.digest)
            .await
            .expect("HEAD")
    );
    assert!(
        w.dst
            .get_manifest("library/gone", &Reference::Tag("1".into()))
            .await
            .is_err()
    );

    let (status, v) = relay.deliver(delete("library/kept")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ignored");
    assert_image_on(&w.dst, "library/kept", &img, Some("1")).await;
}

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
    let img2 = TestImage::random(&[5_000]);
    img2.push(&w.src, "library/unsigned-copy", &Reference::Tag("1".into()))
        .await;
    let relay2 = Relay::start(&format!("{}referrers = false\n", w.config())).await;
    let ids = relay2
        .push(push_event("library/unsigned-copy", Some("1"), &img2.digest))
        .await;
    let job = relay2.wait_success(ids[0]).await;
    assert_eq!(job["referrers_copied"], 0, "{job}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_registry_drives_the_relay_with_its_notifications() {
    let w = World::new().await;
    let port = free_port();
    // A plain registry (not Harbor) that notifies the relay of every push.
    let plain = RegistryProc::start_notifying(
        &format!("http://127.0.0.1:{port}/webhooks/distribution"),
        WEBHOOK_SECRET,
    )
    .await;
    let config = format!(
        "{}{}[[rules]]\nfrom = \"plain\"\nto = \"integrated\"\n",
        registry_toml("plain", &plain.url, None, ""),
        w.target_toml(),
    );
    let relay = Relay::start_on(port, "", &config).await;
    let src = client(&plain.url, None, TlsMode::System);
    let img = TestImage::random(&[40_000]);
    img.push(&src, "apps/web", &Reference::Tag("3".into()))
        .await;

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = w
            .dst
            .get_manifest("apps/web", &Reference::Tag("3".into()))
            .await
        {
            assert_eq!(m.digest, img.digest);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the notification never made it: {}\n{}",
            relay.logs(),
            plain.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_image_on(&w.dst, "apps/web", &img, Some("3")).await;
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.as_str().expect("text").contains(
            "harbor_relay_webhooks_received_total{format=\"distribution\",outcome=\"accepted\"}"
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_what_no_webhook_announced_and_pulls_on_a_schedule() {
    let w = World::new().await;
    let a = TestImage::random(&[20_000]);
    let b = TestImage::random(&[20_000]);
    // Pushed while the daemon was stopped: no webhook will ever come.
    a.push(&w.src, "library/quiet", &Reference::Tag("1".into()))
        .await;
    b.push(&w.src, "team-b/tool", &Reference::Tag("2".into()))
        .await;
    let rules = "[[rules]]\nname = \"catch-up\"\nfrom = \"external\"\nto = \"integrated\"\nreconcile_interval = \"1s\"\n";
    let base = w.registries();
    let file = ConfigFile::new(&format!("{base}{rules}"));
    let cfg = file.path.as_str();
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        cfg,
        "--rule",
        "catch-up",
        "--dry-run",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("2 tags checked, 2 differ"), "{stdout}");
    assert!(stdout.contains("external/library/quiet:1"), "{stdout}");

    let relay = Relay::start(&format!("{base}{rules}")).await;
    let wait_for = |repo: &'static str, tag: &'static str, img: TestImage| {
        let dst = w.dst.clone();
        async move {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            loop {
                if dst
                    .get_manifest(repo, &Reference::Tag(tag.into()))
                    .await
                    .is_ok_and(|m| m.digest == img.digest)
                {
                    return;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{repo}:{tag} never arrived"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    wait_for("library/quiet", "1", a.clone()).await;
    wait_for("team-b/tool", "2", b.clone()).await;
    assert_image_on(&w.dst, "library/quiet", &a, Some("1")).await;

    // Scheduled pull: a new push on the source arrives with no webhook.
    let c = TestImage::random(&[20_000]);
    c.push(&w.src, "library/quiet", &Reference::Tag("2".into()))
        .await;
    wait_for("library/quiet", "2", c.clone()).await;

    // Everything is in place: the next pass finds nothing.
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        cfg,
        "--rule",
        "catch-up",
        "--dry-run",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 tags checked, 0 differ"), "{stdout}");
    let (_, metrics) = relay.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    // At least the three repairs (a slow job can be found twice).
    let found: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("harbor_relay_reconcile_differences_total{rule=\"catch-up\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("differences metric");
    assert!(found >= 3, "{text}");
    assert!(text.contains("harbor_relay_reconcile_last_pass_timestamp_seconds{rule=\"catch-up\"}"));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_all_learn_the_auth_challenge() {
    // A fresh client's first requests go out without credentials; each
    // 401 must lead to a retry with them, even when another request
    // learned the challenge first (found by the shared-base benchmark).
    let w = World::new().await;
    let dst = client(&w.target.url, Some((USER, PASS)), pinned(&w.pki));
    let checks = (0..20).map(|i| {
        let dst = dst.clone();
        async move {
            dst.has_blob(&format!("race/r{i}"), &format!("sha256:{:064x}", i))
                .await
        }
    });
    for r in futures_util::future::join_all(checks).await {
        assert!(!r.expect("no 401 after the challenge is known"));
    }
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
    // Let the access logs settle; then count.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (src0, dst0) = (w.source.requests_served(), w.target.requests_served());

    let ids = relay.push(event(&one.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["digest"], one.digest.as_str(), "{job}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.source.requests_served() - src0, 0, "the source was asked");
    assert_eq!(w.target.requests_served() - dst0, 1, "target requests");

    // The source's tag moves: its event takes the full path. The target
    // lacks the event's manifest, so where its tag points is not asked:
    // one HEAD, a POST and a PUT for each of the two blobs (layer, config),
    // the manifest's PUT.
    two.push(&w.src, "library/again", &tag).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dst0 = w.target.requests_served();
    let ids = relay.push(event(&two.digest)).await;
    relay.wait_success(ids[0]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(w.target.requests_served() - dst0, 6, "target requests");
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
