//! `outage`: `many` (200 images from 200 webhooks) with the target
//! stopped for [`OUTAGE`] once a third of the images have landed, then
//! started again on the same storage, against the same 200 without it in
//! the same sitting. What is measured is the time lost beyond the outage
//! itself: the relay's probe of a registry that is down
//! (src/jobs/outage.rs) queues every job waiting for it at its first
//! answer, instead of each job waiting out its own backoff, so the last
//! image lands when it would have had the outage been a pause. (The two
//! thirds of the images still to copy when the target is back take their
//! own copy time: "the last image ≤ 2 s after the target is back" is this
//! loss.) Goal (issue 28): ≤ 2 s. Also printed: how soon after the target
//! is back the first image lands.

use super::*;

/// How long the target is away.
const OUTAGE: Duration = Duration::from_secs(20);

pub(crate) async fn outage(b: &mut Bench, runs: usize) -> Vec<Row> {
    let (imgs, _) = many_images(b).await;
    let (mut plain, mut lost, mut first) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        b.fresh_target().await;
        let relay = b.relay_daemon().await;
        plain.push(replicate_all(&relay, &imgs, WEBHOOK_CLIENTS).await.seconds);
        drop(relay);

        b.fresh_target().await;
        let relay = b.relay_daemon().await;
        let before = succeeded(&relay).await;
        let t0 = unix_now();
        let third = before + imgs.len() as f64 / 3.0;
        let copy = async {
            let ids = webhooks(&relay, &imgs, WEBHOOK_CLIENTS).await;
            all_done(&relay, &ids, before).await;
            ids
        };
        let away = async {
            while succeeded(&relay).await < third {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let target = b.target.as_mut().expect("target");
            target.stop();
            tokio::time::sleep(OUTAGE).await;
            target.restart().await;
            unix_now()
        };
        let (ids, back) = tokio::join!(copy, away);
        let times = finished_times(&relay, &ids).await;
        let last = times.iter().copied().fold(f64::NAN, f64::max);
        let first_back = times
            .iter()
            .copied()
            .filter(|t| *t > back)
            .fold(f64::NAN, f64::min);
        for (repo, _, digest) in &imgs {
            assert!(
                b.dst().has_manifest(repo, digest).await.expect("HEAD"),
                "{repo}@{digest} is missing after the outage"
            );
        }
        lost.push(last - t0 - OUTAGE.as_secs_f64() - plain[plain.len() - 1]);
        first.push(first_back - back);
    }
    let (plain, lost, first) = (median(plain), median(lost), median(first));
    vec![Row {
        scenario: "outage",
        relay: Measure {
            seconds: lost.max(0.0),
            ..Default::default()
        },
        skopeo: None,
        // A time lost, not a copy's: no MB/s.
        bytes: 0,
        floor: None,
        floor_min: None,
        extra: json!({"images": imgs.len(), "runs": runs,
            "measured": "seconds lost beyond the outage: (wall with it) - (wall without it) - outage",
            "outage_seconds": OUTAGE.as_secs(), "goal_seconds": 2,
            "many_without_outage_seconds": plain,
            "first_image_after_back_seconds": first}),
    }]
}
