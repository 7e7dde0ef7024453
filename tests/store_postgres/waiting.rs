//! The store suite, continued: jobs that wait for something other than a
//! worker (a gate's release, a registry's first answer) and a fan-out's
//! jobs claimed together.

use harbor_relay::jobs::{JobSpec, JobState, Outcome, Summary};

use super::{Backend, advance, now, spec};

/// A job a gate holds waits (not claimable, folding duplicates) until an
/// event of its repository or its time; its hold gives back the attempt;
/// it survives a restart held; a refused job is over, folds a redelivery
/// of its digest, and may be retried by hand.
pub(super) async fn held_jobs_wait_for_a_release_or_their_time(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let mut gated = spec("p/held", "1");
    gated.digest = Some(format!("sha256:{}", "a".repeat(64)));
    let ids: Vec<u64> = store
        .enqueue(vec![gated.clone(), spec("p/later", "1")])
        .await
        .expect("enqueue")
        .iter()
        .map(|e| e.id)
        .collect();
    let at = now() + 60_000;
    for _ in 0..2 {
        let j = store.claim().await.expect("claim").expect("job");
        let reason = format!("waiting for a signature ({})", j.id);
        store
            .finish(j.id, Outcome::Held { reason, at_ms: at })
            .await
            .expect("finish");
    }
    let j = store.get(ids[0]).await.expect("get").expect("job");
    assert_eq!(
        (j.state, j.attempts),
        (JobState::Held, 0),
        "{n}: a hold is no attempt"
    );
    assert_eq!(j.held_since_ms, Some(now()), "{n}");
    assert_eq!(
        j.last_error.as_deref(),
        Some(format!("waiting for a signature ({})", ids[0]).as_str())
    );
    assert_eq!(store.held(), 2, "{n}");
    assert!(
        store.claim().await.expect("claim").is_none(),
        "{n}: held, not claimable"
    );
    let again = store.enqueue(vec![gated.clone()]).await.expect("enqueue");
    assert_eq!(
        (again[0].id, again[0].coalesced),
        (ids[0], true),
        "{n}: the push folds into its held job"
    );
    assert_eq!(store.next_due().await.expect("due"), Some(at), "{n}");
    // Across a restart it is still held, and still due at its time.
    drop(store);
    let store = b.open("relay-a").await;
    assert_eq!(store.held(), 2, "{n}: held jobs survive a restart");
    assert_eq!(
        store.release("p/elsewhere").await.expect("release"),
        0,
        "{n}"
    );
    assert_eq!(
        store.release("p/held").await.expect("release"),
        1,
        "{n}: released by an event of its repository"
    );
    // (A release during an attempt makes its hold due at once:
    // `jobs::store::released`. This one came before the attempt.)
    advance(1_000);
    let j = store
        .claim()
        .await
        .expect("claim")
        .expect("the released job");
    assert_eq!((j.id, j.attempts), (ids[0], 1), "{n}");
    store
        .finish(
            j.id,
            Outcome::Held {
                reason: "still".into(),
                at_ms: at,
            },
        )
        .await
        .expect("finish");
    let j = store.get(ids[0]).await.expect("get").expect("job");
    assert_eq!(
        j.held_since_ms,
        Some(now() - 1_000),
        "{n}: hold_for counts from the first hold"
    );
    assert_eq!(store.promote_due(at - 1).await.expect("promote"), 0, "{n}");
    assert_eq!(
        store.promote_due(at).await.expect("promote"),
        2,
        "{n}: gate_recheck's time"
    );
    assert_eq!(store.held(), 0, "{n}");
    let first = store.claim().await.expect("claim").expect("job");
    let second = store.claim().await.expect("claim").expect("job");
    let gated_id = [first.id, second.id]
        .into_iter()
        .find(|i| *i == ids[0])
        .expect("held job back");
    store
        .finish(
            gated_id,
            Outcome::Refused("critical above high: 3 vulnerabilities".into()),
        )
        .await
        .expect("finish");
    let j = store.get(gated_id).await.expect("get").expect("job");
    assert_eq!(j.state, JobState::Refused, "{n}");
    assert!(j.finished_ms.is_some(), "{n}");
    let again = store.enqueue(vec![gated]).await.expect("enqueue");
    assert_eq!(
        (again[0].id, again[0].coalesced),
        (gated_id, true),
        "{n}: the same digest is refused once"
    );
    let j = store
        .retry(gated_id)
        .await
        .expect("a refused job may be retried by hand");
    assert_eq!((j.state, j.held_since_ms), (JobState::Queued, None), "{n}");
    let _ = store
        .claim()
        .await
        .expect("claim")
        .expect("the retried job");
    // A signature pushed while the job was reading its gates: its hold
    // is due at once, not at gate_recheck.
    let id = store
        .enqueue(vec![spec("p/race", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let j = store.claim().await.expect("claim").expect("job");
    assert_eq!(j.id, id, "{n}");
    advance(10);
    assert_eq!(
        store.release("p/race").await.expect("release"),
        0,
        "{n}: running, not held"
    );
    let far = now() + 3_600_000;
    store
        .finish(
            id,
            Outcome::Held {
                reason: "none yet".into(),
                at_ms: far,
            },
        )
        .await
        .expect("finish");
    assert_eq!(
        store.next_due().await.expect("due"),
        Some(now()),
        "{n}: due at once"
    );
}

/// A job that failed on a registry that is down waits for its time or for
/// that registry's first answer (`Store::release_down`, what the probe
/// calls); a job that failed otherwise is not released by it; the same
/// outage again gives the attempt back.
pub(super) async fn jobs_waiting_for_a_registry_go_when_it_answers(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let at = now() + 3_600_000;
    let down = |again| Outcome::Down {
        error: "cannot connect".into(),
        registry: "integrated".into(),
        at_ms: at,
        again,
    };
    let id = store
        .enqueue(vec![spec("p/down", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let j = store.claim().await.expect("claim").expect("job");
    store.finish(j.id, down(false)).await.expect("finish");
    let other = store
        .enqueue(vec![spec("p/other", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let j = store.claim().await.expect("claim").expect("job");
    store
        .finish(
            j.id,
            Outcome::Retry {
                error: "500".into(),
                at_ms: at,
            },
        )
        .await
        .expect("finish");
    assert_eq!(
        store.release_down("external").await.expect("release"),
        0,
        "{n}"
    );
    assert_eq!(
        store.release_down("integrated").await.expect("release"),
        1,
        "{n}: only the job that waits for it"
    );
    let j = store
        .claim()
        .await
        .expect("claim")
        .expect("the released job");
    assert_eq!((j.id, j.attempts), (id, 2), "{n}");
    store.finish(j.id, down(true)).await.expect("finish");
    let j = store.get(id).await.expect("get").expect("job");
    assert_eq!(
        (j.state, j.attempts),
        (JobState::Retrying, 1),
        "{n}: the same outage again uses no attempt"
    );
    assert_eq!(
        store.release_down("integrated").await.expect("release"),
        1,
        "{n}"
    );
    let j = store
        .claim()
        .await
        .expect("claim")
        .expect("the released job");
    store
        .finish(j.id, Outcome::Succeeded(Summary::default()))
        .await
        .expect("finish");
    let j = store.get(id).await.expect("get").expect("job");
    assert_eq!((j.state, j.down), (JobState::Succeeded, None), "{n}");
    assert!(store.claim().await.expect("claim").is_none(), "{n}");
    let o = store.get(other).await.expect("get").expect("job");
    assert_eq!(o.state, JobState::Retrying, "{n}: still waits for its time");
}

/// A fan-out's jobs: one per target, none folded into another; claiming
/// one claims the others queued beside it, and not another artifact's.
pub(super) async fn a_fan_outs_jobs_are_claimed_together(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let fan = |repo: &str, to: &str| JobSpec {
        to: to.into(),
        fanout: true,
        ..spec(repo, "1")
    };
    let ids: Vec<u64> = store
        .enqueue(vec![
            fan("p/app", "site-a"),
            fan("p/app", "site-b"),
            fan("p/app", "site-c"),
            fan("p/other", "site-a"),
            spec("p/app", "1"),
        ])
        .await
        .expect("enqueue")
        .iter()
        .map(|e| {
            assert!(!e.coalesced, "{n}");
            e.id
        })
        .collect();
    // Each site's backlog, for the status page.
    let waiting = store.waiting_by_target(100).await.expect("backlog");
    let want: std::collections::BTreeMap<String, usize> = [
        ("integrated", 1),
        ("site-a", 2),
        ("site-b", 1),
        ("site-c", 1),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_string(), n))
    .collect();
    assert_eq!(waiting, want, "{n}");
    let first = store.claim().await.expect("claim").expect("a job");
    assert_eq!(first.id, ids[0], "{n}");
    let siblings = store.claim_siblings(&first).await.expect("siblings");
    let got: Vec<(u64, &str, JobState)> = siblings
        .iter()
        .map(|j| (j.id, j.spec.to.as_str(), j.state))
        .collect();
    assert_eq!(
        got,
        vec![
            (ids[1], "site-b", JobState::Running),
            (ids[2], "site-c", JobState::Running)
        ],
        "{n}"
    );
    assert_eq!((store.running(), store.queued()), (3, 2), "{n}");
    let waiting = store.waiting_by_target(100).await.expect("backlog");
    assert_eq!(waiting.get("site-b"), None, "{n}: running is not waiting");
    assert_eq!(waiting.get("site-a"), Some(&1), "{n}");
    // Each is its own job: the store has them running, and they finish apart.
    for id in &ids[1..3] {
        let j = store.get(*id).await.expect("get").expect("job");
        assert_eq!((j.state, j.attempts), (JobState::Running, 1), "{n}");
    }
    let next = store.claim().await.expect("claim").expect("a job");
    assert_eq!(next.id, ids[3], "{n}");
    assert!(
        store
            .claim_siblings(&next)
            .await
            .expect("siblings")
            .is_empty(),
        "{n}"
    );
    let last = store.claim().await.expect("claim").expect("a job");
    assert_eq!(last.id, ids[4], "{n}");
    assert!(
        store
            .claim_siblings(&last)
            .await
            .expect("siblings")
            .is_empty(),
        "{n}: one target, no siblings"
    );
}
