//! `fan-out` (issue 29): 20 images from the source to three targets, the
//! source and each target behind a WAN link of their own (100 ms RTT,
//! 200 Mbit/s), as an external Harbor and three sites' integrated ones.
//!
//! The relay runs one rule with `to = [three sites]` (shipped defaults).
//! Its goals: the source's link carries each byte once (read ÷ unique ≤
//! 1.01), and three sites take ≤ 1.10× the time of one. In the same run,
//! the anchors: the same relay with one rule per site (today's way, each
//! job reading its own copy), and `skopeo sync` to each site in turn (in
//! the first run only: it takes minutes).

use super::wan::{Pushed, check_link, images, rtts_beyond};
use super::*;

const RTT: Duration = Duration::from_millis(100);
const LINK: u64 = 200_000_000;
const SITES: [&str; 3] = ["site-a", "site-b", "site-c"];
const IMAGES: u64 = 20;

/// Three empty target registries, each behind its own link.
struct Sites {
    _registries: Vec<RegistryProc>,
    links: Vec<WanLink>,
}

impl Sites {
    async fn start() -> Sites {
        let (mut registries, mut links) = (Vec::new(), Vec::new());
        for _ in SITES {
            let r = RegistryProc::start(None, Auth::None).await;
            links.push(WanLink::start(r.addr, RTT, Some(LINK)).await);
            registries.push(r);
        }
        Sites {
            _registries: registries,
            links,
        }
    }

    fn toml(&self) -> String {
        SITES
            .iter()
            .zip(&self.links)
            .map(|(name, link)| registry_toml(name, &link.url(), None, ""))
            .collect()
    }
}

/// The rules of each way to run it.
fn rules(how: How) -> String {
    match how {
        How::FanOut => {
            "[[rules]]\nfrom = \"external\"\nto = [\"site-a\", \"site-b\", \"site-c\"]\n".into()
        }
        How::OneSite => "[[rules]]\nfrom = \"external\"\nto = \"site-a\"\n".into(),
        How::RulePerSite => SITES
            .iter()
            .map(|s| format!("[[rules]]\nfrom = \"external\"\nto = \"{s}\"\n"))
            .collect(),
    }
}

#[derive(Clone, Copy)]
enum How {
    FanOut,
    OneSite,
    RulePerSite,
}

/// One daemon run to fresh sites: its measure, the bytes the source's
/// link carried towards the relay, and the share of the run it was busy.
async fn run(b: &Bench, pushed: &Pushed, how: How) -> (Measure, u64, f64) {
    let sites = Sites::start().await;
    let rest = format!("{}{}{}", b.source_toml(), sites.toml(), rules(how));
    let daemon = Bench::daemon(&rest, None).await;
    let before = b.link_busy();
    let m = replicate_all(&daemon, &pushed.imgs, pushed.imgs.len()).await;
    let busy = b.link_busy() - before;
    let read = (busy * LINK as f64 / 8.0) as u64;
    (m, read, busy / m.seconds)
}

/// `skopeo sync` of every image to each site in turn.
async fn skopeo_each_site(b: &Bench, pushed: &Pushed) -> Measure {
    let sites = Sites::start().await;
    let images: Vec<(String, String)> = pushed
        .imgs
        .iter()
        .map(|(r, t, _)| (r.clone(), t.clone()))
        .collect();
    let mut total = Measure::default();
    for link in &sites.links {
        let dest = ["--dest-tls-verify=false".to_string()];
        let m = b.skopeo_sync_to(&images, &link.addr.to_string(), &dest);
        total.seconds += m.seconds;
        total.cpu_seconds += m.cpu_seconds;
        total.peak_rss = total.peak_rss.max(m.peak_rss);
    }
    total
}

pub(crate) async fn fan_out(setup: Setup, runs: usize) -> Vec<Row> {
    let b = Bench::new(Setup {
        wan: Some((RTT, Some(LINK))),
        ..setup
    })
    .await;
    check_link(&b, RTT).await;
    let pushed = images(
        &b,
        "fanout",
        IMAGES,
        &[
            (31_000_000, MIB),
            (32_000_000, MIB),
            (33_000_000, 256 * 1024),
        ],
    )
    .await;
    let floor = b
        .link
        .as_ref()
        .and_then(|l| l.floor_seconds(pushed.bytes))
        .expect("a capped link");
    let (mut fan, mut one, mut per_site, mut skopeo) = (vec![], vec![], vec![], vec![]);
    let (mut fan_read, mut per_site_read, mut fan_busy) = (vec![], vec![], vec![]);
    for run_no in 0..runs {
        let (m, read, busy) = run(&b, &pushed, How::FanOut).await;
        fan.push(m);
        fan_read.push(read as f64);
        fan_busy.push(busy);
        one.push(run(&b, &pushed, How::OneSite).await.0);
        let (m, read, _) = run(&b, &pushed, How::RulePerSite).await;
        per_site.push(m);
        per_site_read.push(read as f64);
        // Once: three `skopeo sync`s across the links take minutes.
        if run_no == 0 {
            skopeo.push(skopeo_each_site(&b, &pushed).await);
        }
    }
    let (fan, one) = (median_of(&fan), median_of(&one));
    let (per_site, skopeo) = (median_of(&per_site), median_of(&skopeo));
    let unique = pushed.bytes as f64;
    let read_share = |v: Vec<f64>| median(v) / unique;
    vec![
        Row {
            scenario: "fan-out",
            relay: fan,
            skopeo: Some(skopeo),
            bytes: pushed.bytes,
            floor: Some(("link", floor)),
            floor_min: None,
            extra: json!({"images": IMAGES, "targets": SITES.len(), "rtt_ms": RTT.as_millis() as u64,
                "link_mbit_per_s": LINK / 1_000_000, "runs": runs,
                "source_read_over_unique": read_share(fan_read),
                "time_over_one_target": fan.seconds / one.seconds,
                "source_link_busy_share": median(fan_busy), "rtts_beyond_floor": rtts_beyond(fan.seconds, floor, RTT),
                "skopeo": "skopeo sync to each site in turn, first run only"}),
        },
        Row {
            scenario: "  one target",
            relay: one,
            skopeo: None,
            bytes: pushed.bytes,
            floor: Some(("link", floor)),
            floor_min: None,
            extra: json!({"copier": "the relay, one rule to site-a only"}),
        },
        Row {
            scenario: "  rule per site",
            relay: per_site,
            skopeo: None,
            bytes: pushed.bytes,
            floor: Some(("link", floor)),
            floor_min: None,
            extra: json!({"copier": "the relay, three rules (one per site)",
                "source_read_over_unique": read_share(per_site_read),
                "time_over_fan_out": per_site.seconds / fan.seconds}),
        },
    ]
}
