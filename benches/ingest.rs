//! Webhook ingest: how many webhooks per second the daemon accepts
//! *durably* (each `202` means the job is on disk), and how long each takes.
//!
//!     cargo bench --bench ingest            # 20,000 webhooks, 50 clients
//!     INGEST_WEBHOOKS=50000 INGEST_CLIENTS=100 cargo bench --bench ingest
//!     INGEST_STORE=postgres cargo bench --bench ingest   # on a real PostgreSQL
//!
//! The HTTP layer and the store are the real ones; no workers run, so the
//! number is for acceptance alone. It prints accepted/s, latency
//! percentiles and how many fsyncs the group commit needed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use harbor_relay::api::{self, AppState};
use harbor_relay::config::Config;
use harbor_relay::jobs::Store;
use harbor_relay::jobs::workers::Readiness;
use harbor_relay::live::{Live, Shared};
use harbor_relay::metrics::Metrics;
use tokio_util::sync::CancellationToken;

#[path = "../tests/support/mod.rs"]
mod support;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn body(i: usize) -> Vec<u8> {
    let digest = format!("sha256:{:064x}", i);
    serde_json::to_vec(&serde_json::json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1724572800, "operator": "bench",
        "event_data": {
            "resources": [{"digest": digest, "tag": format!("v{i}"),
                           "resource_url": format!("harbor.example.com/bench/app:v{i}")}],
            "repository": {"name": "app", "namespace": "bench", "repo_full_name": "bench/app", "repo_type": "private"}
        }
    }))
    .expect("json")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let total = env("INGEST_WEBHOOKS", 20_000);
    let clients = env("INGEST_CLIENTS", 50);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let dir = tempfile::tempdir()?;
        // INGEST_STORE=postgres: the shared store, on a server the bench
        // starts (Debian's postgresql, as the tests do).
        let postgres = std::env::var("INGEST_STORE").is_ok_and(|v| v == "postgres");
        let pg = postgres.then(support::Postgres::start);
        let store = match &pg {
            Some(pg) => {
                Store::open_postgres(pg.url().parse()?, None, "bench", Duration::from_secs(30))
                    .await?
            }
            None => Store::open(dir.path())?.0,
        };
        let store = Arc::new(store);
        let config = Config::parse(
            std::path::Path::new("bench.toml"),
            &format!(
                "[server]\nwebhook_auth = \"Bearer bench\"\n[store]\npath = \"{}\"\n\
                 [registries.external]\nurl = \"http://127.0.0.1:1\"\n\
                 [registries.integrated]\nurl = \"http://127.0.0.1:2\"\n\
                 [[rules]]\nname = \"bench\"\nfrom = \"external\"\nto = \"integrated\"\n",
                dir.path().display()
            ),
            &|_| None,
        )?;
        let readiness = Arc::new(Readiness::default());
        let state = Arc::new(AppState {
            store: store.clone(),
            live: Arc::new(Shared::new(Live::build(config, None)?)),
            metrics: Arc::new(Metrics::new()?),
            readiness,
            // One client sends them all here: no per-client limit.
            limiter: None,
            started: std::time::Instant::now(),
            board: Default::default(),
            outages: Default::default(),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/webhooks/harbor", listener.local_addr()?);
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(api::run(listener, state, None, shutdown.clone()));

        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (next, url) = (next.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let http = reqwest::Client::new();
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return lat;
                    }
                    let t = Instant::now();
                    let resp = http
                        .post(&url)
                        .header("content-type", "application/json")
                        .header("authorization", "Bearer bench")
                        .body(body(i))
                        .send()
                        .await
                        .expect("POST");
                    assert_eq!(resp.status().as_u16(), 202);
                    let _ = resp.bytes().await;
                    lat.push(t.elapsed());
                }
            }));
        }
        let mut lat: Vec<Duration> = Vec::new();
        for t in tasks {
            lat.extend(t.await?);
        }
        let took = started.elapsed();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        let backend = if postgres { "postgres" } else { "sled" };
        println!("webhook ingest, durable, {backend}: {total} webhooks from {clients} clients");
        println!("  accepted/s   {:.0}", total as f64 / took.as_secs_f64());
        println!("  p50          {:?}", pct(0.50));
        println!("  p99          {:?}", pct(0.99));
        println!("  max          {:?}", lat[lat.len() - 1]);
        if postgres {
            println!(
                "  commits      one transaction per webhook (PostgreSQL groups the WAL flushes)"
            );
        } else {
            println!(
                "  fsyncs       {} ({:.1} webhooks per fsync)",
                store.flushes(),
                total as f64 / store.flushes().max(1) as f64
            );
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
        std::fs::create_dir_all(&dir)?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        std::fs::write(
            dir.join(format!("ingest-{at}.json")),
            serde_json::to_vec_pretty(&serde_json::json!({
                "scenario": "webhook ingest",
                "store": backend,
                "webhooks": total,
                "clients": clients,
                "accepted_per_second": total as f64 / took.as_secs_f64(),
                "p50_seconds": pct(0.50).as_secs_f64(),
                "p99_seconds": pct(0.99).as_secs_f64(),
                "fsyncs": store.flushes(),
            }))?,
        )?;
        assert_eq!(
            store.queued(),
            total,
            "every accepted webhook is a queued job"
        );
        shutdown.cancel();
        let _ = server.await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}
