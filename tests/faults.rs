//! Fault tests: real registries behind a fault-injecting proxy. Each ends
//! with the target whole and correct, or the job failed with the right
//! reason, and no job lost.

mod support;

use std::time::{Duration, Instant};

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use support::fault::{Fault, FaultProxy};
use support::*;

/// Plain-HTTP source and target, each behind its own fault proxy.
struct Faulty {
    _source: RegistryProc,
    _target: RegistryProc,
    src_proxy: FaultProxy,
    dst_proxy: FaultProxy,
    src: Registry,
    dst: Registry,
}

impl Faulty {
    async fn new() -> Faulty {
        let source = RegistryProc::start(None, Auth::None).await;
        let target = RegistryProc::start(None, Auth::None).await;
        let src_proxy = FaultProxy::start(&source.url).await;
        let dst_proxy = FaultProxy::start(&target.url).await;
        let src = client(&source.url, None, TlsMode::System);
        let dst = client(&target.url, None, TlsMode::System);
        Faulty {
            _source: source,
            _target: target,
            src_proxy,
            dst_proxy,
            src,
            dst,
        }
    }

    /// Registries (through the proxies) and a rule; `target_extra` adds
    /// keys to the target's registry entry.
    fn config(&self, target_extra: &str) -> String {
        format!(
            "[registries.external]\nurl = \"{}\"\n\n[registries.integrated]\nurl = \"{}\"\n{target_extra}\n\n{RULE}",
            self.src_proxy.url, self.dst_proxy.url
        )
    }
}

const FAST_RETRIES: &str =
    "max_attempts = 5\nretry_initial_delay = \"200ms\"\nretry_max_delay = \"1s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limited_source_is_paced_by_retry_after() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/paced", &[200_000, 100_000]).await;
    f.src_proxy.inject(
        Some("GET"),
        "/blobs/",
        3,
        Fault::Status {
            status: 429,
            retry_after: Some("2".into()),
        },
    );
    let relay = Relay::start(&f.config("")).await;
    let ids = relay
        .push(push_event("library/paced", Some("1"), &img.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(
        job["attempts"], 1,
        "the requests were retried, not the job: {job}"
    );
    assert_eq!(f.src_proxy.injected(), 3);
    assert_image_on(&f.dst, "library/paced", &img, Some("1")).await;

    // After the first 429, no request reached the source for two seconds:
    // the whole host was paced, not just the request that got it. (Requests
    // already on their way when the 429 was sent are allowed 50 ms.)
    let mut log = f.src_proxy.requests();
    log.sort_by_key(|r| r.0);
    let first_429 = log.iter().position(|r| r.3 == 429).expect("a 429");
    let t0 = log[first_429].0;
    for r in &log[first_429 + 1..] {
        let gap = r.0.duration_since(t0);
        if gap < Duration::from_millis(50) {
            continue;
        }
        assert!(
            gap >= Duration::from_millis(1950),
            "{} {} went out {gap:?} after a 429 with Retry-After: 2",
            r.1,
            r.2
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_502_and_503_from_the_target_are_ridden_out() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/bursty", &[100_000]).await;
    f.dst_proxy.inject(
        None,
        "/v2/library/bursty/",
        2,
        Fault::Status {
            status: 502,
            retry_after: None,
        },
    );
    f.dst_proxy.inject(
        Some("PUT"),
        "/manifests/",
        2,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let relay = Relay::start(&f.config("")).await;
    let ids = relay
        .push(push_event("library/bursty", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_eq!(f.dst_proxy.injected(), 4);
    assert_image_on(&f.dst, "library/bursty", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_reset_in_the_middle_of_a_large_blob() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/reset", &[200 << 20]).await;
    let layer = img.blob_digests()[1].clone();
    f.src_proxy
        .inject(Some("GET"), &layer, 1, Fault::ResetAfter(50 << 20));
    // One GET for the whole layer (tests/ranged.rs resets a range).
    let config = f.config("").replacen(
        "\n\n[registries.integrated]",
        "\nsource_streams = 1\n\n[registries.integrated]",
        1,
    );
    let relay = Relay::start_with_jobs(FAST_RETRIES, &config).await;
    let ids = relay
        .push(push_event("library/reset", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_eq!(f.src_proxy.injected(), 1);
    assert_image_on(&f.dst, "library/reset", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_detected_and_retried() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/stall", &[2 << 20]).await;
    let layer = img.blob_digests()[1].clone();
    f.src_proxy.inject(
        Some("GET"),
        &layer,
        1,
        Fault::StallAfter(100_000, Duration::from_secs(30)),
    );
    let config = format!(
        "[registries.external]\nurl = \"{}\"\nstall_timeout = \"1s\"\n\n[registries.integrated]\nurl = \"{}\"\n\n{RULE}",
        f.src_proxy.url, f.dst_proxy.url
    );
    let relay = Relay::start_with_jobs(FAST_RETRIES, &config).await;
    let started = Instant::now();
    let ids = relay
        .push(push_event("library/stall", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the stall was waited out instead of detected"
    );
    assert_image_on(&f.dst, "library/stall", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_byte_flipped_in_transit_fails_the_job_with_no_manifest_pushed() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/flip", &[300_000]).await;
    let layer = img.blob_digests()[1].clone();
    f.src_proxy
        .inject(Some("GET"), &layer, 1000, Fault::FlipByte(12_345));
    let relay = Relay::start_with_jobs(
        "max_attempts = 2\nretry_initial_delay = \"100ms\"\n",
        &f.config(""),
    )
    .await;
    let ids = relay
        .push(push_event("library/flip", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(
        err.contains("digest mismatch") && err.contains(&layer),
        "{err}"
    );
    assert!(!f.dst.has_blob("library/flip", &layer).await.expect("HEAD"));
    assert!(
        !f.dst
            .has_manifest("library/flip", &img.digest)
            .await
            .expect("HEAD")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_upload_resumes_after_kill_9_without_resending_the_blob() {
    const SIZE: u64 = 12 << 20;
    const CHUNK: u64 = 1 << 20;
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/chunky", &[SIZE as usize]).await;
    // The fifth chunk gets stuck before it reaches the registry, and the
    // daemon dies then: four chunks are on the target and in the ledger.
    f.dst_proxy.inject_after(
        Some("PATCH"),
        "/blobs/uploads/",
        4,
        1,
        Fault::HoldThenFail(Duration::from_secs(120)),
    );
    let config = f.config("chunk_size_threshold = \"2MiB\"\nchunk_size = \"1MiB\"");
    let mut relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/chunky", Some("1"), &img.digest))
        .await;
    let wait = Deadline::new(Duration::from_secs(60));
    while f.dst_proxy.injected() < 1 {
        wait.tick(|| "the fifth chunk never came".to_string()).await;
    }
    relay.kill9();
    let before = f.dst_proxy.uploaded();
    assert_eq!(before, 4 * CHUNK + img.config.len() as u64);

    relay.restart().await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["blobs_resumed"], 1, "{job}\n{}", relay.logs());
    // Everything uploaded, less the config and the manifest (written once,
    // under its tag): the layer's bytes.
    let total = f.dst_proxy.uploaded() - img.config.len() as u64 - img.manifest.len() as u64;
    eprintln!("uploaded {before} bytes before the kill, {total} in all, for a {SIZE}-byte layer");
    assert_eq!(total, SIZE, "bytes the target already held were sent again");
    assert_eq!(
        job["bytes_copied"].as_u64(),
        Some(SIZE - 4 * CHUNK),
        "{job}"
    );
    assert_image_on(&f.dst, "library/chunky", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_the_middle_of_a_chunk_starts_that_blob_over_and_completes() {
    const SIZE: u64 = 6 << 20;
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/midchunk", &[SIZE as usize]).await;
    // 4 MiB chunks at 2 MiB/s: the kill lands inside the first chunk.
    let config = f.config(
        "chunk_size_threshold = \"1MiB\"\nchunk_size = \"4MiB\"\nmax_bytes_per_second = \"2MiB\"",
    );
    let mut relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/midchunk", Some("1"), &img.digest))
        .await;
    let wait = Deadline::new(Duration::from_secs(60));
    while f.dst_proxy.uploaded() < (1 << 20) {
        wait.tick(|| "the upload did not start".to_string()).await;
    }
    relay.kill9();
    relay.restart().await;
    let job = relay.wait_success(ids[0]).await;
    // The registry holds part of a chunk the ledger does not know of, so
    // the session cannot go on; the blob starts over and arrives whole.
    assert_eq!(job["blobs_resumed"], 0, "{job}");
    assert_image_on(&f.dst, "library/midchunk", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bandwidth_cap_holds_uploads_to_the_configured_rate() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/capped", &[3 << 20]).await;
    let relay = Relay::start(&f.config("max_bytes_per_second = \"1MiB\"")).await;
    let started = Instant::now();
    let ids = relay
        .push(push_event("library/capped", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1900),
        "3 MiB at 1 MiB/s took only {took:?}"
    );
    assert_image_on(&f.dst, "library/capped", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_down_for_a_while_then_back() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/outage", &[50_000]).await;
    // Every request fails for a while, more than the request retries cover.
    f.dst_proxy.inject(
        None,
        "/v2/",
        40,
        Fault::Status {
            status: 503,
            retry_after: None,
        },
    );
    let relay = Relay::start_with_jobs(
        "max_attempts = 30\nretry_initial_delay = \"100ms\"\nretry_max_delay = \"300ms\"\n",
        &f.config("request_attempts = 2"),
    )
    .await;
    let ids = relay
        .push(push_event("library/outage", Some("1"), &img.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert!(job["attempts"].as_u64().expect("attempts") > 1, "{job}");
    assert_image_on(&f.dst, "library/outage", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_transfer_saves_progress_and_exits_within_the_grace_period() {
    const SIZE: u64 = 8 << 20;
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/term", &[SIZE as usize]).await;
    let config = f.config(
        "chunk_size_threshold = \"2MiB\"\nchunk_size = \"1MiB\"\nmax_bytes_per_second = \"2MiB\"",
    );
    let mut relay = Relay::start_with_jobs("shutdown_grace = \"1s\"\n", &config).await;
    let ids = relay
        .push(push_event("library/term", Some("1"), &img.digest))
        .await;
    let wait = Deadline::new(Duration::from_secs(60));
    while f.dst_proxy.uploaded() < 2 << 20 {
        wait.tick(|| "the upload did not start".to_string()).await;
    }
    let stopping = Instant::now();
    let status = relay.terminate();
    let took = stopping.elapsed();
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        relay.logs()
    );
    assert!(
        took < Duration::from_secs(4),
        "took {took:?} to stop with a 1s grace period"
    );
    assert!(
        relay.logs().contains("queued for the next start"),
        "{}",
        relay.logs()
    );

    relay.restart().await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["blobs_resumed"], 1, "{job}");
    assert!(f.dst_proxy.uploaded() - (img.config.len() as u64) < SIZE + (2 << 20));
    assert_image_on(&f.dst, "library/term", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_taking_an_upload_is_detected() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/hang", &[24 << 20]).await;
    let layer = img.blob_digests()[1].clone();
    f.dst_proxy.inject(
        Some("PUT"),
        &format!("digest={}", layer.replace(':', "%3A")),
        1,
        Fault::StallUpload(1 << 20, Duration::from_secs(60)),
    );
    let relay = Relay::start_with_jobs(FAST_RETRIES, &f.config("stall_timeout = \"1s\"")).await;
    let started = Instant::now();
    let ids = relay
        .push(push_event("library/hang", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_eq!(f.dst_proxy.injected(), 1, "the stall was never injected");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hung upload was waited out instead of detected"
    );
    assert_image_on(&f.dst, "library/hang", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_limiting_body_size_gets_chunks_instead() {
    let f = Faulty::new().await;
    let img = TestImage::pushed(&f.src, "library/big-body", &[3 << 20]).await;
    let layer = img.blob_digests()[1].clone();
    // Like nginx's client_max_body_size: the one-request upload is refused.
    f.dst_proxy.inject(
        Some("PUT"),
        &format!("digest={}", layer.replace(':', "%3A")),
        1,
        Fault::Status {
            status: 413,
            retry_after: None,
        },
    );
    let relay = Relay::start(&f.config("chunk_size = \"1MiB\"")).await;
    let ids = relay
        .push(push_event("library/big-body", Some("1"), &img.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(
        f.dst_proxy
            .requests()
            .iter()
            .filter(|r| r.1 == "PATCH")
            .count()
            >= 3,
        "no chunks were sent"
    );
    assert!(relay.logs().contains("uploading in chunks"));
    assert_image_on(&f.dst, "library/big-body", &img, Some("1")).await;

    // When chunks are refused too, the job says what to change.
    let img2 = TestImage::random(&[1 << 20]);
    img2.push(&f.src, "library/big-body", &Reference::Tag("2".into()))
        .await;
    f.dst_proxy.inject(
        None,
        "/blobs/uploads/",
        1000,
        Fault::Status {
            status: 413,
            retry_after: None,
        },
    );
    let relay2 = Relay::start_with_jobs("max_attempts = 1\n", &f.config("")).await;
    let ids = relay2
        .push(push_event("library/big-body", Some("2"), &img2.digest))
        .await;
    let job = relay2.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(
        err.contains("413") && err.contains("chunk_size_threshold"),
        "{err}"
    );
}

/// A target that stops is one fact: the jobs that find it down wait (their
/// own backoff is an hour here), one probe watches it, and its first
/// answer after it is back queues them all; the status page and
/// `harbor_relay_registry_up` say it is down meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_for_a_target_that_was_down_go_when_it_answers_again() {
    let source = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let port = free_port();
    let target = RegistryProc::start_on(port, None, Auth::None).await;
    let target_url = target.url.clone();
    drop(target);
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &target_url, None, "")
            .trim_end()
            .to_string()
            + "\nrequest_attempts = 1\n\n",
    );
    let relay = Relay::start_with_jobs(
        "retry_initial_delay = \"1h\"\nretry_max_delay = \"1h\"\n",
        &config,
    )
    .await;
    let mut images = Vec::new();
    for i in 0..3 {
        let img = TestImage::pushed(&src, &format!("library/app{i}"), &[20_000]).await;
        let ids = relay
            .push(push_event(
                &format!("library/app{i}"),
                Some("1"),
                &img.digest,
            ))
            .await;
        images.push((i, img, ids[0]));
    }
    for (_, _, id) in &images {
        let j = relay.wait_state(*id, "retrying").await;
        assert!(
            j["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("cannot connect"),
            "{j}"
        );
    }
    let (_, metrics) = relay.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    assert!(
        metrics.contains("harbor_relay_registry_up{registry=\"integrated\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("harbor_relay_registry_up{registry=\"external\"} 1"),
        "{metrics}"
    );
    let (_, page) = relay.get("/").await;
    assert!(
        page.as_str().unwrap_or_default().contains("down since"),
        "{page}"
    );

    let _target = RegistryProc::start_on(port, None, Auth::None).await;
    let dst = client(&target_url, None, TlsMode::System);
    for (i, img, id) in &images {
        relay.wait_success(*id).await;
        assert_image_on(&dst, &format!("library/app{i}"), img, Some("1")).await;
    }
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics
            .as_str()
            .unwrap_or_default()
            .contains("harbor_relay_registry_up{registry=\"integrated\"} 1"),
        "{metrics}"
    );
}
