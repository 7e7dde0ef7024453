//! The adaptive request limit against a real registry that turns busy:
//! behind a fault proxy, the target answers `429` and, for a while, holds
//! requests before a `503`. The limit drops, the jobs all succeed on their
//! first attempt (the pushback is ridden out request by request), and the
//! metrics and the status page show the limit the relay settled on.

mod support;

use std::time::Duration;

use harbor_relay::config::TlsMode;
use support::fault::{Fault, FaultProxy};
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_answers_429_and_slowly_gets_fewer_requests_and_nothing_fails() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let proxy = FaultProxy::start(&target.url).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let mut images = Vec::new();
    for i in 0..8 {
        let repo = format!("library/busy{i}");
        let img = TestImage::pushed(&src, &repo, &[30_000, 20_000, 10_000]).await;
        images.push((repo, img));
    }
    // Busy from the first look on: 429s to the tag checks, upload
    // sessions held 300 ms and answered 503.
    proxy.inject(
        Some("HEAD"),
        "/manifests/",
        6,
        Fault::Status {
            status: 429,
            retry_after: None,
        },
    );
    proxy.inject(
        Some("POST"),
        "/blobs/uploads/",
        4,
        Fault::HoldThenFail(Duration::from_millis(300)),
    );
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &proxy.url, None, ""),
    );
    let relay = Relay::start(&config).await;
    let mut ids = Vec::new();
    for (repo, img) in &images {
        ids.extend(relay.push(push_event(repo, Some("1"), &img.digest)).await);
    }
    for id in &ids {
        let job = relay.wait_success(*id).await;
        assert_eq!(job["attempts"], 1, "ridden out, not retried: {job}");
    }
    for (repo, img) in &images {
        assert_image_on(&dst, repo, img, Some("1")).await;
    }
    assert_eq!(proxy.injected(), 10, "every push-back was met");

    let (_, metrics) = relay.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let value = |series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{metrics}"))
    };
    let cut = value("harbor_relay_concurrency_lowered_total{registry=\"integrated\"}");
    let limit = value("harbor_relay_concurrency{registry=\"integrated\"}");
    assert!(cut >= 1.0, "the limit was cut: {cut}");
    assert!(
        limit < 16.0,
        "below where it started (16): {limit}\n{metrics}"
    );
    assert_eq!(
        value("harbor_relay_registry_throttled_total{registry=\"integrated\"}"),
        6.0,
        "the 429s were seen as such"
    );
    let (_, page) = relay.get("/").await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(page.contains("requests at once"), "{page}");
    assert!(
        page.contains(&format!("{} (cut {}×)", limit, cut)),
        "{page}"
    );
}
