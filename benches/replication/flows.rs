//! `wan-flows` (issue 29): one 1 GiB layer across a 100 ms RTT link of
//! 400 Mbit/s whose every TCP connection is held to 50 Mbit/s, as WAN
//! optimisers and firewalls hold flows. One `GET` per blob (skopeo, and
//! the relay with `source_streams = 1`) gets one flow's eighth of the
//! link; the relay's ranged reads, with the shipped defaults, should get
//! the link.
//!
//! The anchors copy a 128 MiB layer, not 1 GiB: at one flow's 50 Mbit/s
//! that is already 21 s, and their share of the link does not depend on
//! the size (they are held by the flow, not by start-up).

use super::wan::{Pushed, check_link, images, rtts_beyond, skopeo_in_sequence};
use super::*;

const RTT: Duration = Duration::from_millis(100);
const LINK: u64 = 400_000_000;
const PER_FLOW: u64 = 50_000_000;

/// The scenario: the relay (shipped defaults) on 1 GiB, then the two
/// one-flow anchors on 128 MiB, each against its own link floor.
pub(crate) async fn wan_flows(setup: Setup, runs: usize) -> Vec<Row> {
    let mut b = Bench::new(Setup {
        wan: Some((RTT, Some(LINK))),
        flow_cap: Some(PER_FLOW),
        ..setup
    })
    .await;
    check_link(&b, RTT).await;
    let big = images(&b, "flows", 1, &[(25_000_000, 1024 * MIB)]).await;
    let small = images(&b, "flows-anchor", 1, &[(26_000_000, 128 * MIB)]).await;
    let floor = |bytes| {
        b.link
            .as_ref()
            .and_then(|l| l.floor_seconds(bytes))
            .expect("a capped link")
    };
    let (big_floor, small_floor) = (floor(big.bytes), floor(small.bytes));
    let (mut relay, mut one_flow, mut skopeo) = (Vec::new(), Vec::new(), Vec::new());
    let (mut widths, mut busy) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let before = b.link_busy();
        let (m, w) = daemon_run(&mut b, &big, "").await;
        busy.push((b.link_busy() - before) / m.seconds);
        relay.push(m);
        widths.push(w);
        one_flow.push(daemon_run(&mut b, &small, "source_streams = 1\n").await.0);
        b.fresh_target().await;
        skopeo.push(skopeo_in_sequence(&b, &small.imgs));
    }
    let relay = median_of(&relay);
    let (one_flow, skopeo) = (median_of(&one_flow), median_of(&skopeo));
    let share = |m: &Measure, floor: f64| floor / m.seconds;
    let streams = harbor_relay::config::RegistryLimits::default().source_streams as u64;
    let held = streams * harbor_relay::registry::RANGE_PIECE;
    vec![
        Row {
            scenario: "wan-flows",
            relay,
            skopeo: None,
            bytes: big.bytes,
            floor: Some(("link", big_floor)),
            floor_min: None,
            extra: json!({"rtt_ms": RTT.as_millis() as u64, "link_mbit_per_s": LINK / 1_000_000,
                "flow_mbit_per_s": PER_FLOW / 1_000_000, "runs": runs,
                "share_of_link": share(&relay, big_floor),
                "link_busy_share": median(busy), "rtts_beyond_floor": rtts_beyond(relay.seconds, big_floor, RTT),
                "range_bytes_held_at_most": held, "widths_found": widths}),
        },
        Row {
            scenario: "  one flow",
            relay: one_flow,
            skopeo: None,
            bytes: small.bytes,
            floor: Some(("link", small_floor)),
            floor_min: None,
            extra: json!({"copier": "the relay with source_streams = 1 (one GET per blob), 128 MiB",
                "share_of_link": share(&one_flow, small_floor)}),
        },
        Row {
            scenario: "  skopeo",
            relay: skopeo,
            skopeo: None,
            bytes: small.bytes,
            floor: Some(("link", small_floor)),
            floor_min: None,
            extra: json!({"copier": "skopeo copy, 128 MiB",
                "share_of_link": share(&skopeo, small_floor)}),
        },
    ]
}

/// One daemon run on a fresh target, from one webhook per image of
/// `pushed`, with `source_keys` added to the source's entry.
async fn daemon_run(b: &mut Bench, pushed: &Pushed, source_keys: &str) -> (Measure, Vec<u64>) {
    b.fresh_target().await;
    let daemon = b
        .relay_daemon_with(
            source_keys,
            Some("warn,harbor_relay::registry::ranged=info"),
        )
        .await;
    let m = replicate_all(&daemon, &pushed.imgs, pushed.imgs.len()).await;
    // The widths the relay's search settled at (its log says each).
    let widths = daemon
        .logs()
        .lines()
        .filter(|l| l.contains("range reads:"))
        .filter_map(|l| {
            l.split("width=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    (m, widths)
}
