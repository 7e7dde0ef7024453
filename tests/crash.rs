//! Store integrity under crashes: `kill -9` the daemon at random points 50
//! times during a busy run of webhooks and copies. After each restart the
//! store opens, every accepted job is there, and no job is in a state it
//! could not be in.

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use rand::Rng;
use serde_json::Value;
use support::*;

fn check_consistent(job: &Value) {
    let state = job["state"].as_str().expect("state");
    let has = |k: &str| !job[k].is_null();
    match state {
        "queued" => assert!(!has("finished_at") && !has("next_attempt_at"), "{job}"),
        "running" => assert!(has("started_at") && !has("finished_at"), "{job}"),
        "retrying" => assert!(has("next_attempt_at") && has("last_error"), "{job}"),
        "succeeded" => assert!(has("finished_at") && has("digest"), "{job}"),
        "failed" => assert!(has("finished_at") && has("last_error"), "{job}"),
        other => panic!("impossible state {other}: {job}"),
    }
    let attempts = job["attempts"].as_u64().expect("attempts");
    if state != "queued" {
        assert!(attempts >= 1, "{job}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_fifty_times_during_a_busy_run_loses_nothing() {
    const IMAGES: usize = 30;
    const KILLS: usize = 50;
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let mut images = Vec::new();
    for i in 0..IMAGES {
        let img = TestImage::random(&[20_000 + i * 1000, 5_000]);
        let repo = format!("crash/app{}", i % 5);
        let tag = format!("t{i}");
        img.push(&src, &repo, &Reference::Tag(tag.clone())).await;
        images.push((repo, tag, img));
    }
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &target.url, None, ""),
    );
    let mut relay = Relay::start_with_jobs(
        "workers = 3\ncoalesce_window = \"0s\"\nretry_initial_delay = \"100ms\"\nretry_max_delay = \"200ms\"\n",
        &config,
    )
    .await;
    let url = format!("{}/webhooks/harbor", relay.url);
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        images
            .iter()
            .map(|(repo, tag, img)| push_event(repo, Some(tag), &img.digest))
            .collect(),
    );
    let accepted: Arc<Mutex<BTreeSet<u64>>> = Arc::default();

    for round in 0..KILLS {
        // Four clients send webhooks as fast as they are answered.
        let stop = tokio_util::sync::CancellationToken::new();
        let mut senders = Vec::new();
        for _ in 0..4 {
            let (bodies, accepted, stop, url) =
                (bodies.clone(), accepted.clone(), stop.clone(), url.clone());
            senders.push(tokio::spawn(async move {
                let http = reqwest::Client::builder()
                    .timeout(Duration::from_secs(2))
                    .build()
                    .expect("client");
                while !stop.is_cancelled() {
                    let i = rand::rng().random_range(0..bodies.len());
                    let sent = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", WEBHOOK_SECRET)
                        .body(bodies[i].clone())
                        .send()
                        .await;
                    let Ok(resp) = sent else { continue };
                    if resp.status().as_u16() != 202 {
                        continue;
                    }
                    let Ok(v) = resp.json::<Value>().await else {
                        continue;
                    };
                    for j in v["jobs"].as_array().into_iter().flatten() {
                        if let Some(id) = j["id"].as_u64() {
                            accepted.lock().expect("ids").insert(id);
                        }
                    }
                }
            }));
        }
        let pause = rand::rng().random_range(20..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        relay.kill9();
        stop.cancel();
        for s in senders {
            tokio::time::timeout(Duration::from_secs(10), s)
                .await
                .unwrap_or_else(|_| panic!("round {round}: a webhook sender hung"))
                .expect("sender");
        }
        if tokio::time::timeout(Duration::from_secs(30), relay.restart())
            .await
            .is_err()
        {
            panic!("round {round}: restart hung; log:\n{}", relay.logs());
        }

        let ids: Vec<u64> = accepted.lock().expect("ids").iter().copied().collect();
        for id in &ids {
            let (status, job) = relay.get(&format!("/api/v1/jobs/{id}")).await;
            assert_eq!(
                status, 200,
                "round {round}: accepted job {id} is gone: {job}"
            );
            check_consistent(&job);
        }
        let (_, all) = relay.get("/api/v1/jobs?limit=1000").await;
        for job in all["jobs"].as_array().expect("jobs") {
            check_consistent(job);
        }
    }

    // Finally everything accepted completes.
    let ids: Vec<u64> = accepted.lock().expect("ids").iter().copied().collect();
    assert!(
        ids.len() >= KILLS,
        "too few webhooks were accepted: {}",
        ids.len()
    );
    for id in &ids {
        relay.wait_success(*id).await;
    }
    let dst = client(&target.url, None, TlsMode::System);
    for (repo, tag, img) in &images {
        if let Ok(m) = dst.get_manifest(repo, &Reference::Tag(tag.clone())).await {
            assert_eq!(m.digest, img.digest);
        }
    }
    eprintln!("{} accepted jobs survived {KILLS} kill -9s", ids.len());
}
