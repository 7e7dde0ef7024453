//! `gated`: `many` (200 images in 20 repositories) with both gates on
//! (every image signed with cosign's `.sig` layout, scanned clean by the
//! Harbor double's scanner), against the same 200 with the gates off, in
//! the same sitting and through the same source: the Harbor double in
//! front of the bench's source registry (the scan is Harbor's API), so the
//! ratio is what the gates cost and nothing else. Goal (issue 26): ≤ 1.10×.

use super::*;
use support::cosign::{CosignKey, payload, push_sig_tag};
use support::harbor::FakeHarbor;

/// The rule's gate lines, with the key file `key`.
fn gate_lines(key: &std::path::Path) -> String {
    format!(
        "require_signature = {{ keys = [\"{}\"] }}\nmax_severity = \"high\"\n",
        key.display()
    )
}

/// The relay daemon with the shipped `[jobs]` (or `BENCH_JOBS`), reading
/// from `harbor` and writing to the bench's target, under one rule.
async fn daemon(b: &Bench, harbor: &FakeHarbor, rule_extra: &str) -> Relay {
    let config = format!(
        "[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"{USER}\"\npassword = \"{PASS}\"\n\n{}{RULE}{rule_extra}",
        harbor.url(),
        b.target_toml(),
    );
    Relay::start_env(
        free_port(),
        &std::env::var("BENCH_JOBS").unwrap_or_else(|_| DAEMON_JOBS.into()),
        &config,
        &[("RUST_LOG", "warn")],
    )
    .await
}

pub(crate) async fn gated(b: &mut Bench, runs: usize) -> Vec<Row> {
    if b.source_issuer.is_some() {
        eprintln!(
            "gated: skipped (the Harbor double fronts a source without auth; unset BENCH_SOURCE_AUTH)"
        );
        return Vec::new();
    }
    let (imgs, bytes) = many_images(b).await;
    let harbor = FakeHarbor::start(&b.source.url, USER, PASS).await;
    harbor.enable_scanner();
    let ci = CosignKey::new("ci");
    let key = b.work.path().join("ci.pub");
    std::fs::write(&key, ci.public_pem()).expect("key file");
    for (repo, _, digest) in &imgs {
        push_sig_tag(
            &b.src,
            repo,
            digest,
            &payload(digest, &format!("h/{repo}")),
            &ci,
        )
        .await;
        harbor.scanned(digest, &[("CVE-2026-1", "Low")]);
    }
    let (mut open, mut gated, mut used_open, mut used_gated) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        for (extra, times, used) in [
            (String::new(), &mut open, &mut used_open),
            (gate_lines(&key), &mut gated, &mut used_gated),
        ] {
            b.fresh_target().await;
            let relay = daemon(b, &harbor, &extra).await;
            let before = b.usage();
            times.push(replicate_all(&relay, &imgs, WEBHOOK_CLIENTS).await);
            used.push(b.settled_usage().await.since(before));
        }
    }
    let (open, gated) = (median_of(&open), median_of(&gated));
    let (uo, ug) = (Usage::median(&used_open), Usage::median(&used_gated));
    vec![
        Row {
            scenario: "many open",
            relay: open,
            skopeo: None,
            bytes,
            floor: None,
            floor_min: None,
            extra: json!({"images": 200, "runs": runs, "source": "the Harbor double in front of the source",
                "source_requests_per_image": uo.source_requests / 200.0}),
        },
        Row {
            scenario: "gated",
            relay: gated,
            skopeo: None,
            bytes,
            floor: Some(("open", open.seconds)),
            floor_min: None,
            extra: json!({"images": 200, "runs": runs, "gates": "require_signature + max_severity",
                "ratio_to_open": gated.seconds / open.seconds.max(f64::MIN_POSITIVE),
                "source_requests_per_image": ug.source_requests / 200.0}),
        },
    ]
}
