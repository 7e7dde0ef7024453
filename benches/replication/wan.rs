//! The WAN scenarios: the source across a [`WanLink`] (round trips and a
//! shared bandwidth cap), the target on loopback, as an integrated Harbor
//! sees an external one. Each reports against the link's floor.

use super::*;

const KIB: u64 = 1024;

/// What [`images`] pushed: (repository, tag, digest) per image, their
/// bytes, and (repository, digest) of every layer.
pub(crate) struct Pushed {
    pub(crate) imgs: Vec<(String, String, String)>,
    pub(crate) bytes: u64,
    pub(crate) blobs: Vec<(String, String)>,
}

/// `count` images of `layers` (seed, size each), one per repository
/// `wan/<name>-NN`, pushed to the source directly.
pub(crate) async fn images(b: &Bench, name: &str, count: u64, layers: &[(u64, u64)]) -> Pushed {
    let mut out = Pushed {
        imgs: Vec::new(),
        bytes: 0,
        blobs: Vec::new(),
    };
    for i in 0..count {
        let mine: Vec<(u64, u64)> = layers.iter().map(|&(s, n)| (s + i * 1000, n)).collect();
        let img = GenImage::new(&mine);
        let repo = format!("wan/{name}-{i:02}");
        img.push(&b.src, &repo, "1").await;
        out.bytes += img.bytes();
        out.blobs
            .extend(img.layers.iter().map(|(_, _, d)| (repo.clone(), d.clone())));
        out.imgs.push((repo, "1".to_string(), img.digest.clone()));
    }
    out
}

/// A bench world whose source is across a link of this RTT and
/// bandwidth, checked before use.
async fn wan_bench(setup: Setup, rtt: Duration, bits_per_second: Option<u64>) -> Bench {
    let b = Bench::new(Setup {
        wan: Some((rtt, bits_per_second)),
        ..setup
    })
    .await;
    check_link(&b, rtt).await;
    b
}

/// A new connection's first request across the link takes the TCP
/// handshake's round trip and the request's: at least two RTTs, or the
/// link is not what the numbers claim.
pub(crate) async fn check_link(b: &Bench, rtt: Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let t = Instant::now();
    let _ = http
        .get(format!("{}/v2/", b.source_url()))
        .send()
        .await
        .expect("GET /v2/ across the link");
    let took = t.elapsed();
    assert!(
        took >= rtt * 2,
        "the WAN link answered in {took:?}, under two RTTs of {rtt:?}"
    );
    println!(
        "link check: a fresh connection's GET /v2/ took {:.0} ms at {} ms RTT",
        took.as_secs_f64() * 1000.0,
        rtt.as_millis()
    );
}

/// What a run took beyond its link's floor, in round trips: the round
/// trips on its critical path that carried no bytes (or an idle link).
pub(crate) fn rtts_beyond(seconds: f64, floor: f64, rtt: Duration) -> f64 {
    (seconds - floor).max(0.0) / rtt.as_secs_f64()
}

/// `skopeo copy` of each image in turn (what a cron job does).
pub(crate) fn skopeo_in_sequence(b: &Bench, imgs: &[(String, String, String)]) -> Measure {
    let mut total = Measure::default();
    for (repo, tag, _) in imgs {
        let m = b.skopeo_copy(repo, tag);
        total.seconds += m.seconds;
        total.cpu_seconds += m.cpu_seconds;
        total.peak_rss = total.peak_rss.max(m.peak_rss);
    }
    total
}

/// One daemon run of [`relay_from_webhooks`].
struct RelayRun {
    measure: Measure,
    used: Usage,
    /// The registries' adaptive limits at the end ([`limits`]).
    limits: Value,
    /// Of the run's wall time, the share the link towards the relay was
    /// carrying bytes (0 on an uncapped link).
    busy_share: f64,
}

/// The relay daemon on a fresh target, from one webhook per image.
async fn relay_from_webhooks(b: &mut Bench, imgs: &[(String, String, String)]) -> RelayRun {
    b.fresh_target().await;
    let daemon = b.relay_daemon().await;
    let before = b.usage();
    let busy0 = b.link_busy();
    let measure = replicate_all(&daemon, imgs, imgs.len()).await;
    let busy_share = (b.link_busy() - busy0) / measure.seconds;
    RelayRun {
        measure,
        used: b.settled_usage().await.since(before),
        limits: limits(&daemon).await,
        busy_share,
    }
}

/// The anchor of `wan-small-layers`: every blob of `imgs` fetched through
/// the same link by a plain HTTP client, `parallel` at a time (what
/// `curl --parallel --parallel-max 8` does), bodies read and dropped. No
/// manifests, no target, no checks: what the link allows.
async fn plain_parallel_fetch(b: &Bench, blobs: &[(String, String)], parallel: usize) -> f64 {
    let http = reqwest::Client::new();
    let base = b.source_url();
    let t = Instant::now();
    let got: Vec<u64> = futures_util::stream::iter(blobs)
        .map(|(repo, digest)| {
            let (http, url) = (&http, format!("{base}/v2/{repo}/blobs/{digest}"));
            async move {
                let resp = http.get(url).send().await.expect("GET blob");
                assert!(resp.status().is_success(), "{}", resp.status());
                let mut body = resp.bytes_stream();
                let mut n = 0u64;
                while let Some(chunk) = body.next().await {
                    n += chunk.expect("blob body").len() as u64;
                }
                n
            }
        })
        .buffer_unordered(parallel)
        .collect()
        .await;
    assert!(got.iter().all(|n| *n > 0));
    t.elapsed().as_secs_f64()
}

/// `wan-small-layers`: 8 images of 10 layers of 1 MiB across a 40 ms RTT,
/// 200 Mbit/s link, against the link's floor and, in the same run, a plain
/// parallel fetch of the same blobs through the same link (issue 28).
pub(crate) async fn wan_small_layers(setup: Setup, runs: usize) -> Vec<Row> {
    let bw = 200_000_000u64;
    let rtt = Duration::from_millis(40);
    let mut b = wan_bench(setup, rtt, Some(bw)).await;
    let tens: Vec<(u64, u64)> = (0..10).map(|j| (24_000_000 + j, MIB)).collect();
    let Pushed { imgs, bytes, blobs } = images(&b, "small", 8, &tens).await;
    let floor = b
        .link
        .as_ref()
        .and_then(|l| l.floor_seconds(bytes))
        .expect("a capped link");
    let plain_ok = b.source_issuer.is_none();
    let (mut relay, mut plain, mut used, mut seen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut busy_share = Vec::new();
    for _ in 0..runs {
        if plain_ok {
            plain.push(plain_parallel_fetch(&b, &blobs, 8).await);
        }
        let run = relay_from_webhooks(&mut b, &imgs).await;
        busy_share.push(run.busy_share);
        relay.push(run.measure);
        used.push(run.used);
        seen.push(run.limits);
    }
    let relay = median_of(&relay);
    let plain = (!plain.is_empty()).then(|| median(plain));
    let busy_share = median(busy_share);
    let u = Usage::median(&used);
    let mut rows = vec![Row {
        scenario: "wan-small",
        relay,
        skopeo: None,
        bytes,
        floor: Some(("link", floor)),
        floor_min: None,
        extra: json!({"images": 8, "layers": 10, "rtt_ms": 40, "mbit_per_s": bw / 1_000_000,
            "runs": runs, "source_requests": u.source_requests, "limits": seen,
            "link_busy_share": busy_share,
            "rtts_beyond_floor": rtts_beyond(relay.seconds, floor, Duration::from_millis(40)),
            "ratio_to_plain_fetch": plain.map(|p| relay.seconds / p)}),
    }];
    if let Some(p) = plain {
        rows.push(Row {
            scenario: "  plain get",
            relay: Measure {
                seconds: p,
                ..Default::default()
            },
            skopeo: None,
            bytes,
            floor: Some(("link", floor)),
            floor_min: None,
            extra: json!({"copier": "reqwest, 8 blob GETs at a time, bodies dropped: the link's anchor"}),
        });
    } else {
        eprintln!("wan-small-layers: no plain fetch anchor with BENCH_SOURCE_AUTH=token");
    }
    rows
}

/// `wan-many`: 20 images of 3 layers of 100 KiB across a 100 ms RTT, no
/// bandwidth cap: the relay from 20 webhooks against `skopeo sync` and
/// against `skopeo copy` of each in sequence.
pub(crate) async fn wan_many(setup: Setup, runs: usize) -> Vec<Row> {
    let rtt = Duration::from_millis(100);
    let mut b = wan_bench(setup, rtt, None).await;
    let layer = 100 * KIB;
    let Pushed { imgs, bytes, .. } = images(
        &b,
        "many",
        20,
        &[
            (20_000_001, layer),
            (20_000_002, layer),
            (20_000_003, layer),
        ],
    )
    .await;
    let pairs: Vec<(String, String)> = imgs
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let (mut relay, mut sync, mut seq, mut used) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut seen = Vec::new();
    for _ in 0..runs {
        b.fresh_target().await;
        seq.push(skopeo_in_sequence(&b, &imgs));
        b.fresh_target().await;
        sync.push(b.skopeo_sync(&pairs));
        let run = relay_from_webhooks(&mut b, &imgs).await;
        relay.push(run.measure);
        used.push(run.used);
        seen.push(run.limits);
    }
    let (relay, u) = (median_of(&relay), Usage::median(&used));
    let rtts = relay.seconds / rtt.as_secs_f64();
    let extra = json!({"images": 20, "rtt_ms": 100, "runs": runs, "relay_rtts": rtts, "limits": seen,
        "source_requests": u.source_requests, "source_requests_per_image": u.source_requests / 20.0,
        "source_tokens": u.source_token_requests, "target_tokens": u.token_requests});
    vec![
        Row {
            scenario: "wan-many",
            relay,
            skopeo: Some(median_of(&sync)),
            bytes,
            floor: None,
            floor_min: None,
            extra: extra.clone(),
        },
        Row {
            scenario: "  vs copies",
            relay,
            skopeo: Some(median_of(&seq)),
            bytes,
            floor: None,
            floor_min: None,
            extra: json!({"skopeo": "copy, one image after another"}),
        },
    ]
}

/// `wan-big`: 8 images of 10 layers of 1 MiB and one of a 256 MiB layer
/// across a 40 ms RTT, 200 Mbit/s link: the relay against `skopeo sync`
/// and against the link's floor (bytes ÷ bandwidth).
pub(crate) async fn wan_big(setup: Setup, runs: usize) -> Vec<Row> {
    let bw = 200_000_000u64;
    let rtt = Duration::from_millis(40);
    let mut b = wan_bench(setup, rtt, Some(bw)).await;
    let tens: Vec<(u64, u64)> = (0..10).map(|j| (21_000_000 + j, MIB)).collect();
    let Pushed {
        mut imgs,
        mut bytes,
        ..
    } = images(&b, "big", 8, &tens).await;
    let one = images(&b, "huge", 1, &[(22_000_000, 256 * MIB)]).await;
    imgs.extend(one.imgs);
    bytes += one.bytes;
    let pairs: Vec<(String, String)> = imgs
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let floor = b
        .link
        .as_ref()
        .and_then(|l| l.floor_seconds(bytes))
        .expect("a capped link");
    let (mut relay, mut sync, mut used, mut seen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut busy_share = Vec::new();
    for _ in 0..runs {
        b.fresh_target().await;
        sync.push(b.skopeo_sync(&pairs));
        let run = relay_from_webhooks(&mut b, &imgs).await;
        busy_share.push(run.busy_share);
        relay.push(run.measure);
        used.push(run.used);
        seen.push(run.limits);
    }
    let u = Usage::median(&used);
    let busy_share = median(busy_share);
    let relay = median_of(&relay);
    vec![Row {
        scenario: "wan-big",
        relay,
        skopeo: Some(median_of(&sync)),
        bytes,
        floor: Some(("link", floor)),
        floor_min: None,
        extra: json!({"images": 9, "rtt_ms": 40, "mbit_per_s": bw / 1_000_000, "runs": runs, "limits": seen, "link_busy_share": busy_share,
            "rtts_beyond_floor": rtts_beyond(relay.seconds, floor, Duration::from_millis(40)),
            "source_requests": u.source_requests, "source_tokens": u.source_token_requests}),
    }]
}

/// `wan-one`: one new 3-layer image at a time across a 100 ms RTT: the
/// time from the webhook to the job done (tag written), in RTTs, on a
/// daemon whose connections are warm (the first image's cold number is
/// kept apart).
pub(crate) async fn wan_one(setup: Setup, pushes: u64) -> Row {
    let rtt = Duration::from_millis(100);
    let mut b = wan_bench(setup, rtt, None).await;
    b.fresh_target().await;
    let daemon = b.relay_daemon().await;
    let http = reqwest::Client::new();
    let (mut took, mut first, mut requests) = (Vec::new(), None, 0.0);
    for i in 0..pushes {
        let layers: Vec<(u64, u64)> = (0..3)
            .map(|j| (23_000_000 + i * 10 + j, 100 * KIB))
            .collect();
        let img = GenImage::new(&layers);
        img.push(&b.src, "wan/one", &format!("t{i}")).await;
        // The push's own requests are not the relay's.
        let before = b.settled_usage().await;
        let ids = daemon
            .push(push_event("wan/one", Some(&format!("t{i}")), &img.digest))
            .await;
        let j = done(&http, &daemon, ids[0]).await;
        let at = |k: &str| job_time(&j, k);
        requests += b.settled_usage().await.since(before).source_requests;
        let s = at("finished_at") - at("created_at");
        if i == 0 {
            first = Some(s);
        } else {
            took.push(s);
        }
    }
    let warm = median(took.clone());
    Row {
        scenario: "wan-one",
        relay: Measure {
            seconds: warm,
            cpu_seconds: 0.0,
            peak_rss: daemon.peak_rss(),
            ..Measure::default()
        },
        skopeo: None,
        bytes: 3 * 100 * KIB,
        floor: Some(("rtt", rtt.as_secs_f64())),
        floor_min: None,
        extra: json!({"rtts_warm_p50": warm / rtt.as_secs_f64(), "rtts_warm_max": took.iter().cloned().fold(0.0, f64::max) / rtt.as_secs_f64(),
            "rtts_first": first.unwrap_or(f64::NAN) / rtt.as_secs_f64(), "pushes": pushes,
            "source_requests_per_image": requests / pushes as f64}),
    }
}
