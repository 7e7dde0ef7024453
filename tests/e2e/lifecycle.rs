//! The daemon's life: kill -9, SIGTERM, a target that is down, a bad config.

use std::time::Duration;

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_large_copy_then_restart_completes_the_job() {
    let w = World::new().await;
    // 4 layers of 6 MiB through a 6 MB/s source: the copy takes seconds.
    let proxy = SlowProxy::start(w.source.addr, 6_000_000).await;
    let img = TestImage::pushed(&w.src, "library/big", &[6 << 20, 6 << 20, 6 << 20, 6 << 20]).await;
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
    let wait = Deadline::new(Duration::from_secs(60));
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
        wait.tick(|| "no layer arrived".into()).await;
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
    let img = TestImage::pushed(&w.src, "library/term", &[10_000]).await;
    let mut relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("library/term", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    // A client connected that has sent nothing yet must not hold up the
    // stop (its first-byte deadline is 10 s).
    let _idle = tokio::net::TcpStream::connect(relay.url.trim_start_matches("http://"))
        .await
        .expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopping = std::time::Instant::now();
    let status = relay.terminate();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        relay.logs()
    );
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
    assert!(relay.logs().contains("stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_when_the_webhook_arrives_then_back_later() {
    let pki_dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(pki_dir.path());
    let source = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let img = TestImage::pushed(&src, "library/later", &[100_000]).await;

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
