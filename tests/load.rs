//! Load: 2,000 webhooks from 50 concurrent clients for 200 distinct images,
//! many of them duplicates, against real registries and the real daemon.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use rand::seq::SliceRandom;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_webhooks_fifty_clients_two_hundred_images() {
    const REPOS: usize = 20;
    const TAGS: usize = 10;
    const COPIES: usize = 10;
    const CLIENTS: usize = 50;

    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);

    let base = random_bytes(64 * 1024);
    let mut images = Vec::new();
    for r in 0..REPOS {
        for t in 0..TAGS {
            let img =
                TestImage::from_layers(vec![base.clone(), random_bytes(1024)], "linux", "amd64");
            images.push((format!("load/app{r}"), format!("v{t}"), img));
        }
    }
    // The shared layer goes into each repository first: the registry does
    // not like the same blob uploaded into one repository twice at once.
    for r in 0..REPOS {
        src.put_blob_bytes(&format!("load/app{r}"), base.clone())
            .await
            .expect("base layer");
    }
    futures_util::stream::iter(images.iter())
        .for_each_concurrent(16, |(repo, tag, img)| {
            let src = src.clone();
            async move { img.push(&src, repo, &Reference::Tag(tag.clone())).await }
        })
        .await;

    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &target.url, None, ""),
    );
    let relay = Arc::new(Relay::start(&config).await);
    let rss_before = relay.peak_rss();

    let mut bodies: Vec<Vec<u8>> = Vec::new();
    for (repo, tag, img) in &images {
        for _ in 0..COPIES {
            bodies.push(push_event(repo, Some(tag), &img.digest));
        }
    }
    bodies.shuffle(&mut rand::rng());
    let total = bodies.len();
    let queue = Arc::new(std::sync::Mutex::new(bodies));
    let http = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let queue = queue.clone();
        let http = http.clone();
        let url = format!("{}/webhooks/harbor", relay.url);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let Some(body) = queue.lock().expect("queue").pop() else {
                    return out;
                };
                let started = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("authorization", WEBHOOK_SECRET)
                    .body(body)
                    .send()
                    .await
                    .expect("POST");
                let status = resp.status().as_u16();
                let v: serde_json::Value = resp.json().await.expect("json");
                out.push((status, started.elapsed(), v["jobs"][0]["id"].as_u64()));
            }
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("client task"));
    }
    assert_eq!(answers.len(), total);
    let slowest = answers.iter().map(|a| a.1).max().expect("answers");
    let mut latencies: Vec<Duration> = answers.iter().map(|a| a.1).collect();
    latencies.sort();
    eprintln!(
        "{total} webhooks: p50 {:?}, p99 {:?}, max {slowest:?}",
        latencies[total / 2],
        latencies[total * 99 / 100]
    );
    assert!(
        answers.iter().all(|a| a.0 == 202),
        "not every webhook was accepted"
    );
    assert!(
        slowest < Duration::from_secs(3),
        "a webhook took {slowest:?}, over Harbor's 3 s timeout"
    );
    let ids: HashSet<u64> = answers.iter().filter_map(|a| a.2).collect();
    assert_eq!(ids.len(), REPOS * TAGS, "one job per distinct image");

    for id in &ids {
        relay.wait_success(*id).await;
    }
    let (_, all) = relay.get("/api/v1/jobs?limit=1000").await;
    let jobs = all["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), REPOS * TAGS, "no job lost, none extra");
    let copied: u64 = jobs
        .iter()
        .map(|j| j["blobs_copied"].as_u64().expect("copied"))
        .sum();
    // Per image: its config and its own layer; the shared base once per repository.
    assert!(
        copied <= (REPOS * TAGS * 2 + REPOS) as u64,
        "{copied} blobs copied"
    );
    for (repo, tag, img) in &images {
        let m = dst
            .get_manifest(repo, &Reference::Tag(tag.clone()))
            .await
            .expect("tag on target");
        assert_eq!(m.digest, img.digest);
    }
    let rss_after = relay.peak_rss();
    eprintln!(
        "relay peak RSS {} MiB before, {} MiB after",
        rss_before >> 20,
        rss_after >> 20
    );
    assert!(
        rss_after < rss_before + (100 << 20),
        "memory grew by {} MiB",
        (rss_after - rss_before) >> 20
    );
}
