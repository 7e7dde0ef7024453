//! One push, several targets (issue 29): a rule with `to = [..]` reads each
//! blob from the source once for all of them. Real registries: the source
//! behind the fault proxy, which counts what the relay reads; the targets
//! behind proxies of their own where what reaches them is counted.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use support::fault::{Fault, FaultProxy};
use support::*;

const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];

/// The rule: the source to three sites; `site_c_extra` adds keys to
/// site-c's entry.
fn config(source: &str, sites: &[String], source_extra: &str, site_c_extra: &str) -> String {
    let mut text = format!("[registries.external]\nurl = \"{source}\"\n{source_extra}\n");
    for (name, url) in SITES.iter().zip(sites) {
        text.push_str(&registry_toml(name, url, None, ""));
        if *name == "site-c" {
            text.push_str(site_c_extra);
        }
    }
    text.push_str("[[rules]]\nfrom = \"external\"\nto = [\"site-a\", \"site-b\", \"site-c\"]\n");
    text
}

/// A source behind a proxy that counts what the relay reads (and a client
/// of it), and one registry per site.
async fn world() -> (RegistryProc, FaultProxy, Registry, Vec<RegistryProc>) {
    let source = RegistryProc::start(None, Auth::None).await;
    let proxy = FaultProxy::start(&source.url).await;
    let src = client(&source.url, None, TlsMode::System);
    let mut targets = Vec::new();
    for _ in SITES {
        targets.push(RegistryProc::start(None, Auth::None).await);
    }
    (source, proxy, src, targets)
}

/// Every byte of `img` the source serves once: blobs and manifest.
fn unique_bytes(img: &TestImage) -> u64 {
    (img.config.len() + img.manifest.len() + img.layers.iter().map(|l| l.len()).sum::<usize>())
        as u64
}

/// GETs of `repo`'s manifest `reference` at the source so far.
fn manifest_reads(proxy: &FaultProxy, repo: &str, reference: &str) -> usize {
    let path = format!("/v2/{repo}/manifests/{reference}");
    proxy
        .requests()
        .iter()
        .filter(|(_, m, p, _)| m == "GET" && *p == path)
        .count()
}

/// GETs of `digest` at the source so far.
fn reads_of(proxy: &FaultProxy, digest: &str) -> usize {
    proxy
        .requests()
        .iter()
        .filter(|(_, m, p, _)| m == "GET" && p.ends_with(digest))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_push_to_three_targets_reads_each_blob_from_the_source_once() {
    let (_source, proxy, src, targets) = world().await;
    let mut urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
    // site-c takes the 1.5 MiB layer in resumable chunks: its share of the
    // read feeds a chunked upload, the others' one PUT each.
    let c_proxy = FaultProxy::start(&urls[2]).await;
    urls[2] = c_proxy.url.clone();
    let chunked = "chunk_size_threshold = \"1MiB\"\nchunk_size = \"256KiB\"\n";
    let relay = Relay::start(&config(&proxy.url, &urls, "", chunked)).await;
    urls[2] = targets[2].url.clone();
    let mut images = Vec::new();
    for repo in ["library/app", "library/api"] {
        let img = TestImage::pushed(&src, repo, &[3 << 19, 1 << 20, 512 << 10]).await;
        let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
        assert_eq!(ids.len(), 3, "one job per target: {ids:?}");
        images.push((repo, img, ids));
    }
    for (repo, img, ids) in &images {
        let mut to = BTreeSet::new();
        for id in ids {
            let job = relay.wait_job(*id).await;
            assert_eq!(job["state"], "succeeded", "{job}");
            assert_eq!(job["attempts"], 1, "{job}");
            to.insert(job["target_registry"].as_str().expect("target").to_string());
        }
        assert_eq!(
            to,
            SITES.iter().map(|s| s.to_string()).collect(),
            "each target has its own job"
        );
        for url in &urls {
            let dst = client(url, None, TlsMode::System);
            assert_image_on(&dst, repo, img, Some("1")).await;
        }
    }
    let unique: u64 = images.iter().map(|(_, img, _)| unique_bytes(img)).sum();
    let read = proxy.downloaded();
    assert!(
        read as f64 / unique as f64 <= 1.01,
        "the source served {read} bytes for {unique} unique bytes"
    );
    for (repo, img, _) in &images {
        for d in img.blob_digests() {
            assert_eq!(reads_of(&proxy, &d), 1, "{d} read once");
        }
        // The manifest too: a Harbor counts each GET as a pull.
        assert_eq!(manifest_reads(&proxy, repo, "1"), 1, "{repo}:1 read once");
    }
    assert!(relay.logs().contains("fan-out: one read of the source"));
    let patches = c_proxy
        .requests()
        .iter()
        .filter(|(_, m, _, _)| m == "PATCH")
        .count();
    assert!(
        patches >= 2 * 6,
        "site-c got the big layers in chunks: {patches} PATCHes"
    );
    // The status page: each site, nothing waiting, two images replicated.
    let (status, page) = relay.get("/").await;
    assert_eq!(status, 200);
    let page = page.as_str().expect("html").to_string();
    for site in SITES {
        let row = format!("<tr><td>{site}</td><td>0</td><td>0</td><td>2</td><td>");
        assert!(page.contains(&row), "{row} in the Sites table:\n{page}");
    }
    // The lag histogram has one series per site.
    let (_, metrics) = relay.get("/metrics").await;
    for site in SITES {
        let series = format!("harbor_relay_replication_lag_seconds_count{{target=\"{site}\"}} 2");
        assert!(
            metrics.as_str().is_some_and(|m| m.contains(&series)),
            "{series}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_down_for_ten_seconds_does_not_hold_the_others_and_catches_up() {
    let source = RegistryProc::start(None, Auth::None).await;
    let proxy = FaultProxy::start(&source.url).await;
    let src = client(&source.url, None, TlsMode::System);
    let a = RegistryProc::start(None, Auth::None).await;
    let b = RegistryProc::start(None, Auth::None).await;
    // site-c refuses connections: nothing listens on its port yet.
    let c_port = free_port();
    let c_url = format!("http://127.0.0.1:{c_port}");
    let urls = vec![a.url.clone(), b.url.clone(), c_url.clone()];
    let relay = Relay::start(&config(&proxy.url, &urls, "", "")).await;
    let img = TestImage::pushed(&src, "library/app", &[1 << 20, 1 << 20, 1 << 20]).await;
    let pushed = Instant::now();
    let ids = relay
        .push(push_event("library/app", Some("1"), &img.digest))
        .await;
    assert_eq!(ids.len(), 3);
    for id in &ids[..2] {
        let job = relay.wait_job(*id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let others_done = pushed.elapsed();
    assert!(
        others_done < Duration::from_secs(10),
        "the two up finished while the third was down: {others_done:?}"
    );
    let c_job = relay.job(ids[2]).await;
    assert!(
        ["running", "retrying"].contains(&c_job["state"].as_str().unwrap_or_default()),
        "still trying the target that is down: {c_job}"
    );
    for url in &urls[..2] {
        assert_image_on(
            &client(url, None, TlsMode::System),
            "library/app",
            &img,
            Some("1"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(pushed.elapsed())).await;
    let c = RegistryProc::start_on(c_port, None, Auth::None).await;
    let job = relay.wait_job(ids[2]).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["target_registry"], "site-c", "{job}");
    assert_image_on(
        &client(&c.url, None, TlsMode::System),
        "library/app",
        &img,
        Some("1"),
    )
    .await;
    // Once for the two, once more for the late one: what it lacked.
    for d in img.blob_digests() {
        let reads = reads_of(&proxy, &d);
        assert!((1..=2).contains(&reads), "{d} read {reads} times");
    }
}

/// Targets behind proxies of their own: what reaches each is counted.
struct Site {
    registry: RegistryProc,
    proxy: FaultProxy,
    direct: Registry,
}

impl Site {
    async fn start() -> Site {
        let registry = RegistryProc::start(None, Auth::None).await;
        let proxy = FaultProxy::start(&registry.url).await;
        let direct = client(&registry.url, None, TlsMode::System);
        Site {
            registry,
            proxy,
            direct,
        }
    }

    /// The blobs of `digests` the target holds in `repo`.
    async fn holds(&self, repo: &str, digests: &[String]) -> BTreeSet<String> {
        let mut held = BTreeSet::new();
        for d in digests {
            if self.direct.has_blob(repo, d).await.expect("HEAD") {
                held.insert(d.clone());
            }
        }
        held
    }

    /// Blob uploads (`PUT ?digest=`) that reached the target after `since`.
    fn uploads_since(&self, since: Instant) -> Vec<String> {
        self.proxy
            .requests()
            .into_iter()
            .filter(|(at, m, p, _)| *at >= since && m == "PUT" && p.contains("digest="))
            .map(|(_, _, p, _)| p)
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_fan_out_loses_nothing_and_sends_no_target_a_blob_it_has() {
    let source = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let mut sites = Vec::new();
    for _ in SITES {
        sites.push(Site::start().await);
    }
    let urls: Vec<String> = sites.iter().map(|s| s.proxy.url.clone()).collect();
    // Paced, so that the kill lands mid-copy: 48 MiB at 16 MiB/s.
    let text = config(&source.url, &urls, "max_bytes_per_second = \"16MiB\"\n", "");
    let mut relay = Relay::start(&text).await;
    let repo = "library/app";
    let img = TestImage::pushed(&src, repo, &[12 << 20; 4]).await;
    let digests = img.blob_digests();
    let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
    assert_eq!(ids.len(), 3);
    let wait = Deadline::new(Duration::from_secs(60));
    while sites.iter().all(|s| {
        s.uploads_since(Instant::now() - Duration::from_secs(600))
            .len()
            < 2
    }) {
        wait.tick(|| format!("no blob reached a target; log:\n{}", relay.logs()))
            .await;
    }
    relay.kill9();
    let killed = Instant::now();
    let mut had = Vec::new();
    for s in &sites {
        had.push(s.holds(repo, &digests).await);
    }
    let missing: usize = had.iter().map(|h| digests.len() - h.len()).sum();
    assert!(missing > 0, "killed mid fan-out: {had:?}");
    relay.start_again().await;
    for id in &ids {
        let job = relay.wait_job(*id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    for (s, held) in sites.iter().zip(&had) {
        assert_image_on(&s.direct, repo, &img, Some("1")).await;
        for put in s.uploads_since(killed) {
            assert!(
                !held.iter().any(|d| put.contains(d.as_str())),
                "{} was sent {put} after the restart, which it held: {held:?}",
                s.registry.url
            );
        }
    }
}

/// The value of the series `name` (with its labels) in the relay's metrics.
async fn metric(relay: &Relay, series: &str) -> Option<f64> {
    let (_, text) = relay.get("/metrics").await;
    let text = text.as_str().expect("metrics text").to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_holds_one_platform_does_not_hold_the_others_reads() {
    let (_source, proxy, src, targets) = world().await;
    let urls: Vec<String> = targets.iter().map(|t| t.url.clone()).collect();
    let repo = "library/multi";
    let index = TestIndex::with_platforms(2);
    index.push(&src, repo, "1").await;
    // site-a holds the first platform, site-b the second (pushed there by
    // digest, as an older index sharing it would have); site-c nothing.
    // Each lacks something, so every copy stays to the end.
    for (site, image) in urls.iter().zip(&index.images) {
        let dst = client(site, None, TlsMode::System);
        image
            .push(&dst, repo, &Reference::Digest(image.digest.clone()))
            .await;
    }
    let relay = Relay::start(&config(&proxy.url, &urls, "", "")).await;
    let ids = relay.push(push_event(repo, Some("1"), &index.digest)).await;
    assert_eq!(ids.len(), 3, "one job per target: {ids:?}");
    for id in &ids {
        let job = relay.wait_job(*id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    for url in &urls {
        let dst = client(url, None, TlsMode::System);
        let tag = Reference::Tag("1".into());
        let there = dst.resolve(repo, &tag).await.expect("resolve");
        assert_eq!(there.as_deref(), Some(index.digest.as_str()), "{url}");
        for image in &index.images {
            assert_image_on(&dst, repo, image, None).await;
        }
    }
    assert_eq!(manifest_reads(&proxy, repo, "1"), 1, "the index read once");
    for image in &index.images {
        for d in image.blob_digests() {
            assert_eq!(reads_of(&proxy, &d), 1, "{d} read once");
        }
        // Two sites lack each platform: one read of its manifest for both.
        let reads = manifest_reads(&proxy, repo, &image.digest);
        assert_eq!(reads, 1, "{} read once", image.digest);
    }
    // And what refers to each: one lookup of the referrers API, and of
    // each cosign tag, for the three sites.
    let subjects = std::iter::once(&index.digest).chain(index.images.iter().map(|i| &i.digest));
    for subject in subjects {
        let api = format!("/v2/{repo}/referrers/{subject}");
        let sig = format!("/v2/{repo}/manifests/sha256-{}.sig", &subject[7..]);
        for (method, path) in [("GET", api), ("HEAD", sig)] {
            let asked = proxy
                .requests()
                .iter()
                .filter(|(_, m, p, _)| m == method && *p == path)
                .count();
            assert_eq!(asked, 1, "{method} {path}");
        }
    }
    // The copy whose target held a platform said so once, for all of that
    // platform's blobs: no shared read waited out GATHER for its word
    // (before, each of those blobs waited 2 s for it).
    let waited = r#"harbor_relay_fanout_reads_total{began="waited"}"#;
    let answered = r#"harbor_relay_fanout_reads_total{began="answered"}"#;
    assert_eq!(metric(&relay, waited).await, Some(0.0), "{}", relay.logs());
    let shared = metric(&relay, answered).await.expect("the series");
    assert!(
        shared >= 6.0,
        "each platform's 3 blobs read once for two sites: {shared}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_that_falls_behind_reads_the_rest_alone_and_the_others_go_on() {
    let (_source, proxy, src, targets) = world().await;
    // site-c stops taking the layer for 8 s, 1 MiB in (a site across a
    // slow link, or a registry busy elsewhere): more than the socket
    // buffers between it and the relay hold, so it holds the read back.
    let c_proxy = FaultProxy::start(&targets[2].url).await;
    let urls = [&targets[0].url, &targets[1].url, &c_proxy.url].map(|u| u.to_string());
    let img = TestImage::pushed(&src, "library/far", &[32 << 20]).await;
    let layer = img.blob_digests()[1].clone();
    c_proxy.inject(
        Some("PUT"),
        &format!("digest={}", layer.replace(':', "%3A")),
        1,
        Fault::StallUpload(1 << 20, Duration::from_secs(8)),
    );
    let relay = Relay::start(&config(&proxy.url, &urls, "", "")).await;
    let ids = relay
        .push(push_event("library/far", Some("1"), &img.digest))
        .await;
    let mut by_site = std::collections::BTreeMap::new();
    for id in &ids {
        let job = relay.job(*id).await;
        let site = job["target_registry"].as_str().expect("target").to_string();
        by_site.insert(site, *id);
    }
    // site-a and site-b finish while site-c is still stalled.
    for site in ["site-a", "site-b"] {
        let job = relay.wait_job(by_site[site]).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let c = relay.job(by_site["site-c"]).await;
    assert_ne!(c["state"], "succeeded", "site-c paced nobody: {c}");
    let c = relay.wait_job(by_site["site-c"]).await;
    assert_eq!(c["state"], "succeeded", "{c}");
    assert_eq!(c["attempts"], 1, "cut loose is not a failure: {c}");
    assert_eq!(c_proxy.injected(), 1, "the stall was never injected");
    for target in &targets {
        let dst = client(&target.url, None, TlsMode::System);
        assert_image_on(&dst, "library/far", &img, Some("1")).await;
    }
    // The layer: once for all three, then the rest of it for site-c.
    assert_eq!(reads_of(&proxy, &layer), 2, "{}", relay.logs());
    let detached = metric(&relay, "harbor_relay_fanout_detached_total").await;
    assert_eq!(detached, Some(1.0));
    assert!(relay.logs().contains("reads the rest of this blob alone"));
}
