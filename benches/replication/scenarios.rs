//! The loopback scenarios: big, huge, many and no-op, shared, latency.

use super::*;

/// Webhooks in flight at once in `many`: under the listener's default
/// `server.max_connections_per_client` (128), which closes connections past
/// it. Harbor's job service delivers with far fewer workers.
pub(crate) const WEBHOOK_CLIENTS: usize = 100;

/// One big image, cold target: `skopeo copy` against `harbor-relay replicate`.
pub(crate) async fn one_image(
    b: &mut Bench,
    scenario: &'static str,
    layers: &[(u64, u64)],
    runs: usize,
    with_minimal: bool,
) -> Vec<Row> {
    let img = GenImage::new(layers);
    let repo = format!("bench/{scenario}");
    img.push(&b.src, &repo, "1").await;
    let (mut relay, mut skopeo, mut minimal) = (Vec::new(), Vec::new(), Vec::new());
    let (mut used_relay, mut used_skopeo, mut used_minimal) = (Vec::new(), Vec::new(), Vec::new());
    // One copy by `tool` onto a fresh target, checked, with what it used.
    async fn copy_by(
        b: &mut Bench,
        tool: fn(&Bench, &str, &str) -> Measure,
        repo: &str,
        digest: &str,
    ) -> (Measure, Usage) {
        b.fresh_target().await;
        let before = b.usage();
        let m = tool(b, repo, "1");
        let used = b.usage().since(before);
        assert!(b.dst().has_manifest(repo, digest).await.expect("HEAD"));
        (m, used)
    }
    for _ in 0..runs {
        let (m, u) = copy_by(b, Bench::skopeo_copy, &repo, &img.digest).await;
        skopeo.push(m);
        used_skopeo.push(u);
        let (m, u) = copy_by(b, Bench::relay_replicate, &repo, &img.digest).await;
        relay.push(m);
        used_relay.push(u);
        if with_minimal {
            let (m, u) = copy_by(b, Bench::minimal_replicate, &repo, &img.digest).await;
            minimal.push(m);
            used_minimal.push(u);
        }
    }
    let skopeo = median_of(&skopeo);
    let relay = median_of(&relay);
    let mut rows = vec![Row {
        scenario,
        relay,
        skopeo: Some(skopeo),
        bytes: img.bytes(),
        floor: cpu_floor(Usage::median(&used_relay).registries_cpu, relay.cpu_seconds),
        floor_min: min_floor(Usage::median(&used_relay).registries_cpu, img.bytes()),
        extra: json!({"runs": runs, "registries_cpu_seconds": Usage::median(&used_relay).registries_cpu, "registries_cpu_seconds_skopeo": Usage::median(&used_skopeo).registries_cpu}),
    }];
    if with_minimal {
        let minimal = median_of(&minimal);
        rows.push(Row {
            scenario: "  minimal",
            relay: minimal,
            skopeo: Some(skopeo),
            bytes: img.bytes(),
            floor: cpu_floor(Usage::median(&used_minimal).registries_cpu, minimal.cpu_seconds),
            floor_min: min_floor(Usage::median(&used_minimal).registries_cpu, img.bytes()),
            extra: json!({"runs": runs, "copier": "minimal: reqwest, rustls, sha2, 4 blobs at a time, no checks", "registries_cpu_seconds": Usage::median(&used_minimal).registries_cpu}),
        });
    }
    rows
}

/// 200 images of 5 layers (1–4 MiB) in 20 repositories, sharing a base
/// layer: 200 webhooks at once against one `skopeo sync`; then the same
/// again with everything present (no-op).
/// The `many` images: 200 of 5 layers (1–4 MiB) in 20 repositories,
/// sharing a base layer, pushed to the source; and their bytes.
pub(crate) async fn many_images(b: &Bench) -> (Vec<(String, String, String)>, u64) {
    let base = (7_000_000u64, 2 * MIB);
    let mut imgs = Vec::new();
    let mut bytes = base.1;
    for i in 0..200u64 {
        let mut layers = vec![base];
        for j in 0..4u64 {
            let size = MIB + ((i * 7 + j * 13) % 4) * MIB - (i % 3) * 4096;
            layers.push((8_000_000 + i * 10 + j, size));
            bytes += size;
        }
        let img = GenImage::new(&layers);
        let repo = format!("many/app-{:02}", i % 20);
        let tag = format!("v{i}");
        img.push(&b.src, &repo, &tag).await;
        bytes += img.config.len() as u64;
        imgs.push((repo, tag, img.digest.clone()));
    }
    (imgs, bytes)
}

pub(crate) async fn many(b: &mut Bench, runs: usize) -> (Row, Row) {
    let (imgs, bytes) = many_images(b).await;
    let pairs: Vec<(String, String)> = imgs
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let (mut relay, mut skopeo, mut noop_relay, mut noop_skopeo) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut used_relay, mut used_skopeo, mut used_noop) = (Vec::new(), Vec::new(), Vec::new());
    let mut mounted = Vec::new();
    let mut limits_seen = Vec::new();
    for _ in 0..runs {
        b.fresh_target().await;
        let before = b.usage();
        skopeo.push(b.skopeo_sync(&pairs));
        used_skopeo.push(b.settled_usage().await.since(before));
        noop_skopeo.push(b.skopeo_sync(&pairs));

        b.fresh_target().await;
        let daemon = b.relay_daemon().await;
        let src_log0 = b.source.log().len();
        let before = b.usage();
        relay.push(replicate_all(&daemon, &imgs, WEBHOOK_CLIENTS).await);
        used_relay.push(b.settled_usage().await.since(before));
        // Mounts are kept where they are safe (same target project, the
        // source's word for the blob): how many the run made.
        mounted.push(metric(
            &metrics_text(&daemon).await,
            "harbor_relay_blobs_total{outcome=\"mounted\"}",
        ));
        limits_seen.push(limits(&daemon).await);
        // No-op: the same 200 again, everything already there, on a
        // relay with an empty store (the same daemon would join each event
        // to its job, which succeeded within `coalesce_window`).
        let daemon = b.relay_daemon().await;
        let before = b.usage();
        noop_relay.push(replicate_all(&daemon, &imgs, WEBHOOK_CLIENTS).await);
        used_noop.push(b.settled_usage().await.since(before));
        if std::env::var("BENCH_RELAY_LOG").is_ok() {
            let _ = std::fs::write("target/bench/relay-many.log", daemon.logs());
            let _ = std::fs::write("target/bench/source-many.log", &b.source.log()[src_log0..]);
            let _ = std::fs::write("target/bench/target-many.log", b.target().log());
        }
    }
    let (r, s, n) = (
        Usage::median(&used_relay),
        Usage::median(&used_skopeo),
        Usage::median(&used_noop),
    );
    let (relay, noop_relay) = (median_of(&relay), median_of(&noop_relay));
    let many = Row {
        scenario: "many small",
        relay,
        skopeo: Some(median_of(&skopeo)),
        bytes,
        floor: cpu_floor(r.registries_cpu, relay.cpu_seconds + relay.sender_cpu),
        floor_min: min_floor(r.registries_cpu, bytes),
        extra: json!({"images": 200, "repositories": 20, "runs": runs, "limits": limits_seen, "blobs_mounted": median(mounted), "idle_share": relay.idle_share, "iowait_share": relay.iowait_share, "sender_cpu_seconds": relay.sender_cpu, "registries_cpu_seconds": r.registries_cpu, "target_cpu_seconds": r.target_cpu, "registries_cpu_seconds_skopeo": s.registries_cpu, "requests": r.requests, "requests_skopeo": s.requests, "token_requests": r.token_requests, "token_requests_skopeo": s.token_requests, "source_token_requests": r.source_token_requests, "source_token_requests_skopeo": s.source_token_requests, "source_requests_per_image": r.source_requests / 200.0, "target_requests_per_image": (r.requests - r.source_requests) / 200.0, "source_requests_per_image_skopeo": s.source_requests / 200.0, "target_requests_per_image_skopeo": (s.requests - s.source_requests) / 200.0, "tcp_connections": r.tcp_connections, "tcp_connections_skopeo": s.tcp_connections}),
    };
    let noop = Row {
        scenario: "no-op",
        relay: noop_relay,
        skopeo: Some(median_of(&noop_skopeo)),
        bytes: 0,
        floor: cpu_floor(
            n.registries_cpu,
            noop_relay.cpu_seconds + noop_relay.sender_cpu,
        ),
        floor_min: None,
        extra: json!({"requests_per_tag": n.requests / imgs.len() as f64, "runs": runs, "idle_share": noop_relay.idle_share, "iowait_share": noop_relay.iowait_share, "sender_cpu_seconds": noop_relay.sender_cpu, "registries_cpu_seconds": n.registries_cpu, "target_cpu_seconds": n.target_cpu}),
    };
    (many, noop)
}

/// 20 repositories whose images share 3 base layers: bytes uploaded to the
/// target against the unique bytes.
pub(crate) async fn shared(b: &mut Bench, runs: usize) -> Row {
    let bases = [
        (9_000_001u64, 8 * MIB),
        (9_000_002, 4 * MIB),
        (9_000_003, 2 * MIB),
    ];
    let mut imgs = Vec::new();
    let mut unique: u64 = bases.iter().map(|b| b.1).sum();
    for i in 0..20u64 {
        let mut layers = bases.to_vec();
        layers.push((9_100_000 + i, MIB));
        unique += MIB;
        let img = GenImage::new(&layers);
        unique += img.config.len() as u64;
        let repo = format!("shared/svc-{i:02}");
        img.push(&b.src, &repo, "1").await;
        imgs.push((repo, "1".to_string(), img.digest.clone()));
    }
    let (mut relay, mut uploaded) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        b.fresh_target().await;
        let daemon = b.relay_daemon().await;
        relay.push(replicate_all(&daemon, &imgs, 20).await);
        let text = metrics_text(&daemon).await;
        uploaded.push(metric(
            &text,
            "harbor_relay_registry_written_bytes_total{registry=\"integrated\"}",
        ));
    }
    let up = median(uploaded);
    Row {
        scenario: "shared base",
        relay: median_of(&relay),
        skopeo: None,
        bytes: unique,
        floor: None,
        floor_min: None,
        extra: json!({"uploaded_bytes": up, "unique_bytes": unique, "overhead": up / unique as f64 - 1.0, "runs": runs}),
    }
}

/// From the webhook's arrival to the tag on the target, for a 1 MiB image.
pub(crate) async fn latency(b: &mut Bench) -> Row {
    b.fresh_target().await;
    let daemon = b.relay_daemon().await;
    let http = reqwest::Client::new();
    let mut lat = Vec::new();
    let (mut queued, mut running) = (Vec::new(), Vec::new());
    let pid = daemon.pid();
    let cpu0 = cpu_of(pid);
    for i in 0..100u64 {
        let img = GenImage::new(&[(10_000_000 + i, MIB)]);
        img.push(&b.src, "latency/app", &format!("t{i}")).await;
        let t = Instant::now();
        let ids = daemon
            .push(push_event(
                "latency/app",
                Some(&format!("t{i}")),
                &img.digest,
            ))
            .await;
        let j = done(&http, &daemon, ids[0]).await;
        lat.push(t.elapsed().as_secs_f64());
        let at = |k: &str| job_time(&j, k);
        queued.push(at("started_at") - at("created_at"));
        running.push(at("finished_at") - at("started_at"));
    }
    if std::env::var("BENCH_RELAY_LOG").is_ok() {
        let _ = std::fs::write("target/bench/relay-latency.log", daemon.logs());
    }
    Row {
        scenario: "latency",
        relay: Measure {
            seconds: median(lat.clone()),
            cpu_seconds: cpu_of(pid) - cpu0,
            peak_rss: daemon.peak_rss(),
            ..Measure::default()
        },
        skopeo: None,
        bytes: MIB,
        floor: None,
        floor_min: None,
        extra: json!({"p50_seconds": percentile(lat.clone(), 0.5), "p99_seconds": percentile(lat, 0.99), "pushes": 100, "queued_p50_seconds": median(queued), "copy_p50_seconds": median(running)}),
    }
}

/// `ha`: the `many` images copied by 1, 2 and 3 relays sharing one
/// PostgreSQL queue (a server the bench starts), webhooks sent to each in
/// turn, onto a fresh target each run: how the work spreads, on a machine
/// whose two cores the registries already fill.
pub(crate) async fn ha(b: &mut Bench, runs: usize) -> Vec<Row> {
    let pg = Postgres::start();
    let (imgs, bytes) = many_images(b).await;
    let store = format!(
        "url = \"postgres://{PG_USER}@127.0.0.1:{}/{PG_DB}?sslmode=disable\"\npassword = \"{PG_PASS}\"\n",
        pg.port
    );
    let mut rows = Vec::new();
    for relays in 1..=3usize {
        let mut took = Vec::new();
        for _ in 0..runs {
            b.fresh_target().await;
            let mut fleet = Vec::new();
            for _ in 0..relays {
                fleet.push(
                    Relay::start_store(
                        Some(&store),
                        free_port(),
                        DAEMON_JOBS,
                        &format!("{}{RULE}", b.registries_toml()),
                        &[("RUST_LOG", "warn")],
                    )
                    .await,
                );
            }
            // The relays made the schema; the last run's rows go.
            pg.sql(
                "TRUNCATE relay_jobs, relay_uploads, relay_blobs, relay_tags, relay_upload_turns",
            );
            let t = Instant::now();
            for (i, (r, tag, d)) in imgs.iter().enumerate() {
                fleet[i % relays].push(push_event(r, Some(tag), d)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(900);
            loop {
                let mut done = 0.0;
                for relay in &fleet {
                    done += succeeded(relay).await;
                }
                if done >= imgs.len() as f64 {
                    break;
                }
                assert!(Instant::now() < deadline, "the fleet did not finish");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            took.push(t.elapsed().as_secs_f64());
        }
        rows.push(Row {
            scenario: ["ha 1 relay", "ha 2 relays", "ha 3 relays"][relays - 1],
            relay: Measure {
                seconds: median(took),
                cpu_seconds: 0.0,
                peak_rss: 0,
                ..Measure::default()
            },
            skopeo: None,
            bytes,
            floor: None,
            floor_min: None,
            extra: json!({"relays": relays, "images": imgs.len(), "runs": runs, "store": "postgres"}),
        });
    }
    rows
}
