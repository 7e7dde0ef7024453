//! `wan-index`: one multi-platform image at a time across a 100 ms RTT:
//! the round trips on the critical path of an index of 4 platforms, from
//! the webhook to the tag written, against `skopeo copy --all` of the
//! same index and against one platform alone (`wan-one`'s shape).

use super::wan::check_link;
use super::*;

const KIB: u64 = 1024;
const PLATFORMS: u64 = 4;

/// The index pushed `i`-th: 4 platforms of 3 layers of 100 KiB.
fn index(i: u64) -> GenIndex {
    GenIndex::new(
        (0..PLATFORMS)
            .map(|p| {
                let layers: Vec<(u64, u64)> = (0..3)
                    .map(|j| (25_000_000 + i * 100 + p * 10 + j, 100 * KIB))
                    .collect();
                GenImage::new(&layers)
            })
            .collect(),
    )
}

pub(crate) async fn wan_index(setup: Setup, pushes: u64) -> Vec<Row> {
    let rtt = Duration::from_millis(100);
    let mut b = Bench::new(Setup {
        wan: Some((rtt, None)),
        ..setup
    })
    .await;
    check_link(&b, rtt).await;
    b.fresh_target().await;
    let daemon = b.relay_daemon().await;
    let http = reqwest::Client::new();
    let (mut took, mut requests, mut bytes) = (Vec::new(), 0.0, 0);
    // The first push warms the connections and tokens: not counted.
    for i in 0..=pushes {
        let idx = index(i);
        let tag = format!("t{i}");
        idx.push(&b.src, "wan/index", &tag).await;
        let before = b.settled_usage().await;
        let ids = daemon
            .push(push_event("wan/index", Some(&tag), &idx.digest))
            .await;
        let j = done(&http, &daemon, ids[0]).await;
        assert_eq!(j["manifests_copied"], PLATFORMS + 1, "{j}");
        if i > 0 {
            took.push(job_time(&j, "finished_at") - job_time(&j, "created_at"));
            requests += b.settled_usage().await.since(before).source_requests;
            bytes = idx.bytes();
        }
    }
    let warm = median(took.clone());
    // skopeo, every platform, a new index each time (a fresh process
    // pays its own connections and tokens: as a cron job does).
    let mut skopeo = Vec::new();
    for i in 0..3 {
        let tag = format!("s{i}");
        index(1000 + i).push(&b.src, "wan/index", &tag).await;
        skopeo.push(b.skopeo_copy_with("wan/index", &tag, &["--all"]));
    }
    let skopeo = median_of(&skopeo);
    vec![Row {
        scenario: "wan-index",
        relay: Measure {
            seconds: warm,
            peak_rss: daemon.peak_rss(),
            ..Measure::default()
        },
        skopeo: Some(skopeo),
        bytes,
        floor: Some(("rtt", rtt.as_secs_f64())),
        floor_min: None,
        extra: json!({"platforms": PLATFORMS, "rtts_warm_p50": warm / rtt.as_secs_f64(),
            "rtts_warm_max": took.iter().cloned().fold(0.0, f64::max) / rtt.as_secs_f64(),
            "pushes": pushes, "source_requests_per_index": requests / pushes as f64}),
    }]
}
