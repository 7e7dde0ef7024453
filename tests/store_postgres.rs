//! The job store's invariants, held by both backends: the same suite runs
//! against the embedded sled store and against a real PostgreSQL (Debian's
//! `postgresql`, made and run by [`Postgres`]); then what only a shared
//! store has: several relays claiming from one queue, leases taken over
//! from a relay that died, one job for an event two relays were given,
//! and a schema newer than the binary refused.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harbor_relay::jobs::store::{RetryError, Store, StoreError};
use harbor_relay::jobs::{Action, JobSpec, JobState, Outcome, Summary};
use support::*;

/// The suite's clock (milliseconds): tests move it instead of sleeping.
static NOW: AtomicU64 = AtomicU64::new(1_000_000);
/// The clock is shared: the tests of this file take turns.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
fn now() -> u64 {
    NOW.load(Ordering::SeqCst)
}
fn advance(ms: u64) {
    NOW.fetch_add(ms, Ordering::SeqCst);
}

fn spec(repo: &str, tag: &str) -> JobSpec {
    job_spec(repo, tag)
}

/// A backend under test: how to open (and open again) its store.
enum Backend {
    Sled(tempfile::TempDir),
    Postgres(Postgres),
}

impl Backend {
    async fn open(&self, owner: &str) -> Store {
        let mut store = match self {
            Backend::Sled(dir) => {
                let mut tries = 0;
                loop {
                    // sled lets go of its lock a moment after a drop.
                    match Store::open(dir.path()) {
                        Ok((s, _)) => break s,
                        Err(e) if tries < 50 => {
                            tries += 1;
                            let _ = e;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(e) => panic!("reopen: {e}"),
                    }
                }
            }
            Backend::Postgres(pg) => Store::open_postgres(
                pg.url().parse().expect("url"),
                None,
                owner,
                Duration::from_secs(30),
            )
            .await
            .expect("open the PostgreSQL store"),
        };
        assert!(store.set_clock(now));
        store
    }

    fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::Postgres(_) => "postgres",
        }
    }
}

async fn both() -> Vec<Backend> {
    vec![
        Backend::Sled(tempfile::tempdir().expect("tempdir")),
        Backend::Postgres(Postgres::start()),
    ]
}

/// 2xx means committed; duplicates fold into the active job, and into a
/// succeeded one within the coalesce window; a failed one takes none.
async fn accepted_jobs_survive_and_duplicates_fold(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    store.set_coalesce_window(Duration::from_secs(60));
    let first = store
        .enqueue(vec![spec("p/app", "1")])
        .await
        .expect("enqueue");
    assert!(!first[0].coalesced, "{n}");
    let again = store
        .enqueue(vec![spec("p/app", "1")])
        .await
        .expect("enqueue");
    assert_eq!(
        (again[0].id, again[0].coalesced),
        (first[0].id, true),
        "{n}"
    );
    drop(store);
    // Committed before the answer: a new process finds it.
    let store = b.open("relay-a").await;
    store.set_coalesce_window(Duration::from_secs(60));
    let job = store.get(first[0].id).await.expect("get").expect("the job");
    assert_eq!((job.state, job.coalesced), (JobState::Queued, 1), "{n}");
    let claimed = store.claim().await.expect("claim").expect("a job");
    assert_eq!((claimed.id, claimed.attempts), (first[0].id, 1), "{n}");
    store
        .finish(claimed.id, Outcome::Succeeded(Summary::default()))
        .await
        .expect("finish");
    advance(1_000);
    let redelivered = store
        .enqueue(vec![spec("p/app", "1")])
        .await
        .expect("enqueue");
    assert_eq!(
        (redelivered[0].id, redelivered[0].coalesced),
        (first[0].id, true),
        "{n}: within the window"
    );
    advance(120_000);
    let later = store
        .enqueue(vec![spec("p/app", "1")])
        .await
        .expect("enqueue");
    assert!(
        !later[0].coalesced && later[0].id != first[0].id,
        "{n}: after the window"
    );
    let c = store.claim().await.expect("claim").expect("job");
    store
        .finish(c.id, Outcome::Failed("gone".into()))
        .await
        .expect("finish");
    let after_failure = store
        .enqueue(vec![spec("p/app", "1")])
        .await
        .expect("enqueue");
    assert!(
        !after_failure[0].coalesced,
        "{n}: a failed job takes no duplicates"
    );
}

/// A failed attempt waits, then runs again; a stop puts the job back
/// without using an attempt; a job left running is taken again.
async fn failed_attempts_wait_and_interrupted_jobs_return(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let id = store
        .enqueue(vec![spec("p/retry", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let j = store.claim().await.expect("claim").expect("job");
    assert_eq!(j.id, id, "{n}");
    let at = now() + 5_000;
    store
        .finish(
            id,
            Outcome::Retry {
                error: "503".into(),
                at_ms: at,
            },
        )
        .await
        .expect("finish");
    assert_eq!(store.next_due().await.expect("due"), Some(at), "{n}");
    assert!(
        store.claim().await.expect("claim").is_none(),
        "{n}: not before its time"
    );
    assert_eq!(store.promote_due(at - 1).await.expect("promote"), 0, "{n}");
    assert_eq!(store.promote_due(at).await.expect("promote"), 1, "{n}");
    let j = store.claim().await.expect("claim").expect("job");
    assert_eq!(j.attempts, 2, "{n}");
    store
        .finish(id, Outcome::Interrupted)
        .await
        .expect("finish");
    let j = store.get(id).await.expect("get").expect("job");
    assert_eq!((j.state, j.attempts), (JobState::Queued, 1), "{n}");
    // Left running by a crash: it runs again (sled re-queues at open; on
    // PostgreSQL the lease runs out and any relay takes it).
    let _ = store.claim().await.expect("claim").expect("job");
    drop(store);
    advance(31_000);
    let store = b.open("relay-b").await;
    let again = store
        .claim()
        .await
        .expect("claim")
        .expect("the interrupted job");
    assert_eq!(again.id, id, "{n}");
}

/// A job a gate holds waits (not claimable, folding duplicates) until an
/// event of its repository or its time; its hold gives back the attempt;
/// it survives a restart held; a refused job is over, folds a redelivery
/// of its digest, and may be retried by hand.
async fn held_jobs_wait_for_a_release_or_their_time(b: &Backend) {
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

/// Manual retry of a failed job, refused for others and while another job
/// does the same; retention deletes only old finished jobs; a full queue
/// refuses more.
async fn retry_prune_and_a_full_queue(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let id = store
        .enqueue(vec![spec("p/manual", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    assert!(
        matches!(store.retry(id).await, Err(RetryError::NotFailed { .. })),
        "{n}"
    );
    let _ = store.claim().await.expect("claim").expect("job");
    store
        .finish(id, Outcome::Failed("denied".into()))
        .await
        .expect("finish");
    let other = store
        .enqueue(vec![spec("p/manual", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    assert!(
        matches!(store.retry(id).await, Err(RetryError::Duplicate { active }) if active == other),
        "{n}"
    );
    let o = store.claim().await.expect("claim").expect("job");
    store
        .finish(o.id, Outcome::Failed("denied".into()))
        .await
        .expect("finish");
    let j = store.retry(id).await.expect("retry");
    assert_eq!((j.state, j.attempts), (JobState::Queued, 0), "{n}");
    assert!(
        matches!(store.retry(404_404).await, Err(RetryError::NotFound(_))),
        "{n}"
    );
    advance(10_000);
    assert_eq!(
        store.prune(now()).await.expect("prune"),
        1,
        "{n}: the other failed job"
    );
    assert!(store.get(other).await.expect("get").is_none(), "{n}");
    assert!(
        store.get(id).await.expect("get").is_some(),
        "{n}: queued again, kept"
    );
    store.set_max_queued(2);
    store
        .enqueue(vec![spec("p/full", "1")])
        .await
        .expect("enqueue");
    let full = store.enqueue(vec![spec("p/full", "2")]).await;
    assert!(
        matches!(full, Err(StoreError::Full { waiting: 2, max: 2 })),
        "{n}: {full:?}"
    );
}

/// `jobs cancel`: a queued or retrying job fails at once and leaves the
/// queue (on disk: a new process sees it failed), a running one is left to
/// its worker, a finished one is refused; a cancelled job can be retried.
/// A delete older than the push of its digest is kept, finished, ignored.
async fn cancels_and_stale_deletes(b: &Backend) {
    let n = b.name();
    let store = b.open("relay-a").await;
    let queued = store
        .enqueue(vec![spec("p/c", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let retrying = store
        .enqueue(vec![spec("p/c", "2")])
        .await
        .expect("enqueue")[0]
        .id;
    let running = store
        .enqueue(vec![spec("p/c", "3")])
        .await
        .expect("enqueue")[0]
        .id;
    let mut claimed = Vec::new();
    for _ in 0..3 {
        claimed.push(store.claim().await.expect("claim").expect("job").id);
    }
    assert_eq!(claimed, [queued, retrying, running], "{n}");
    let later = Outcome::Retry {
        error: "503".into(),
        at_ms: now() + 60_000,
    };
    store.finish(retrying, later).await.expect("finish");
    store
        .finish(queued, Outcome::Interrupted)
        .await
        .expect("finish");
    assert_eq!((store.queued(), store.retrying()), (1, 1), "{n}");
    for id in [queued, retrying] {
        let j = store.cancel(id, "cancelled by test").await.expect("cancel");
        assert_eq!(j.state, JobState::Failed, "{n}");
        assert_eq!(j.last_error.as_deref(), Some("cancelled by test"), "{n}");
    }
    assert_eq!((store.queued(), store.retrying()), (0, 0), "{n}");
    assert!(
        matches!(store.cancel(running, "x").await, Err(harbor_relay::jobs::CancelError::Running { id, .. }) if id == running),
        "{n}"
    );
    assert!(
        matches!(
            store.cancel(queued, "x").await,
            Err(harbor_relay::jobs::CancelError::Finished { .. })
        ),
        "{n}"
    );
    assert!(
        matches!(
            store.cancel(404_404, "x").await,
            Err(harbor_relay::jobs::CancelError::NotFound(_))
        ),
        "{n}"
    );
    advance(120_000);
    store.promote_due(now()).await.expect("promote");
    // (On PostgreSQL the running job's lease has run out by now, so it may
    // be taken over: that one is not cancelled.)
    while let Some(j) = store.claim().await.expect("claim") {
        assert_eq!(j.id, running, "{n}: a cancelled job never runs");
    }
    drop(store);
    let store = b.open("relay-a").await;
    let j = store.get(queued).await.expect("get").expect("job");
    assert_eq!(j.state, JobState::Failed, "{n}: on disk");
    let j = store.retry(queued).await.expect("retry");
    assert_eq!(j.state, JobState::Queued, "{n}");

    // A push at 2000, then a delete event dated 1000: ignored at once.
    store.set_coalesce_window(Duration::from_secs(60));
    let mut push = spec("p/d", "1");
    push.digest = Some(format!("sha256:{}", "d".repeat(64)));
    push.occurred_at = Some(2_000);
    let p = store.enqueue(vec![push.clone()]).await.expect("enqueue")[0].id;
    let mut delete = push.clone();
    delete.action = Action::Delete;
    delete.occurred_at = Some(1_000);
    let d = store.enqueue(vec![delete.clone()]).await.expect("enqueue")[0].id;
    let dj = store.get(d).await.expect("get").expect("job");
    assert_eq!(dj.state, JobState::Succeeded, "{n}");
    assert!(
        dj.summary
            .and_then(|s| s.skipped)
            .is_some_and(|w| w.contains("older than the push")),
        "{n}"
    );
    // A newer delete is queued and closes the push's window: the same
    // push again is a new job.
    delete.occurred_at = Some(3_000);
    let d2 = store
        .enqueue(vec![delete])
        .await
        .expect("enqueue")
        .remove(0);
    assert!(!d2.coalesced && d2.id != d, "{n}");
    let again = store.enqueue(vec![push]).await.expect("enqueue").remove(0);
    assert!(
        matches!(
            store.get(p).await.expect("get").map(|j| j.state),
            Some(JobState::Queued)
        ),
        "{n}"
    );
    assert!(
        !again.coalesced && again.id != p,
        "{n}: folded into the push from before the delete"
    );
}

/// The replicator's ledger: what one relay records (an upload's progress,
/// where a blob went, what it left under a tag) the next reads, after a
/// restart on sled, from another relay on PostgreSQL, so a job taken
/// over resumes its chunked uploads and mounts instead of sending again.
async fn the_ledger_outlives_the_relay_that_wrote_it(b: &Backend) {
    use harbor_relay::replicate::ledger::{TagRecord, UploadRecord};
    let n = b.name();
    let a = b.open("relay-a").await;
    let rec = UploadRecord {
        location: "https://target/v2/p/app/blobs/uploads/s1".into(),
        offset: 42,
        hash_state: "00ff".into(),
        updated_ms: 7,
    };
    let tag = TagRecord {
        source: "sha256:5".into(),
        target: "sha256:7".into(),
    };
    let la = a.ledger();
    la.save_upload("integrated\np/app\nsha256:aa", &rec).await;
    la.blob_seen("integrated", "sha256:aa", "p/one").await;
    la.blob_seen("integrated", "sha256:aa", "p/two").await;
    la.record_tag("integrated", "p/app", "1", &tag).await;
    la.persist().await;
    drop((la, a));
    let c = b.open("relay-b").await.ledger();
    assert_eq!(
        c.upload("integrated\np/app\nsha256:aa").await,
        Some(rec),
        "{n}"
    );
    assert_eq!(
        c.blob_locations("integrated", "sha256:aa").await,
        ["p/two", "p/one"],
        "{n}: most recent first"
    );
    assert_eq!(
        c.tag_synced("integrated", "p/app", "1").await,
        Some(tag),
        "{n}"
    );
    c.clear_upload("integrated\np/app\nsha256:aa").await;
    assert_eq!(c.upload("integrated\np/app\nsha256:aa").await, None, "{n}");
}

/// A job that failed on a registry that is down waits for its time or for
/// that registry's first answer (`Store::release_down`, what the probe
/// calls); a job that failed otherwise is not released by it; the same
/// outage again gives the attempt back.
async fn jobs_waiting_for_a_registry_go_when_it_answers(b: &Backend) {
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
async fn a_fan_outs_jobs_are_claimed_together(b: &Backend) {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_hold_the_stores_invariants() {
    let _turn = TURN.lock().await;
    for b in both().await {
        accepted_jobs_survive_and_duplicates_fold(&b).await;
    }
    for b in both().await {
        failed_attempts_wait_and_interrupted_jobs_return(&b).await;
    }
    for b in both().await {
        retry_prune_and_a_full_queue(&b).await;
    }
    for b in both().await {
        the_ledger_outlives_the_relay_that_wrote_it(&b).await;
    }
    for b in both().await {
        cancels_and_stale_deletes(&b).await;
    }
    for b in both().await {
        held_jobs_wait_for_a_release_or_their_time(&b).await;
    }
    for b in both().await {
        jobs_waiting_for_a_registry_go_when_it_answers(&b).await;
    }
    for b in both().await {
        a_fan_outs_jobs_are_claimed_together(&b).await;
    }
}

/// Several relays on one database: every job is claimed exactly once, an
/// event given to two relays at once is one job, a relay that stopped
/// renewing loses its job to another and its late result is dropped.
/// Claims until the queue is empty; the ids taken.
async fn drain(s: &Store) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(j) = s.claim().await.expect("claim") {
        got.push(j.id);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_sharing_one_database_split_the_queue_and_take_over() {
    let _turn = TURN.lock().await;
    let b = Backend::Postgres(Postgres::start());
    let (a, c) = (b.open("relay-a").await, b.open("relay-b").await);
    let specs: Vec<JobSpec> = (0..60).map(|i| spec("p/many", &format!("t{i}"))).collect();
    let (x, y) = specs.split_at(30);
    let (ra, rc) = tokio::join!(a.enqueue(x.to_vec()), c.enqueue(y.to_vec()));
    assert_eq!(ra.expect("a").len() + rc.expect("c").len(), 60);
    let (ga, gc) = tokio::join!(drain(&a), drain(&c));
    let mut all: Vec<u64> = ga.iter().chain(gc.iter()).copied().collect();
    all.sort();
    all.dedup();
    assert_eq!(
        all.len(),
        60,
        "every job once: a {} + b {}",
        ga.len(),
        gc.len()
    );
    assert_eq!(ga.len() + gc.len(), 60, "no job twice");
    for (store, ids) in [(&a, &ga), (&c, &gc)] {
        for &id in ids {
            store
                .finish(id, Outcome::Succeeded(Summary::default()))
                .await
                .expect("finish")
                .expect("its own job");
        }
    }

    // The same event to both relays at once: one job.
    let (e1, e2) = tokio::join!(
        a.enqueue(vec![spec("p/same", "1")]),
        c.enqueue(vec![spec("p/same", "1")])
    );
    let (e1, e2) = (e1.expect("a")[0].clone(), e2.expect("c")[0].clone());
    assert_eq!(e1.id, e2.id);
    assert!(e1.coalesced ^ e2.coalesced);

    // Relay a claims it and stops renewing (its VM is gone).
    let job = a.claim().await.expect("claim").expect("job");
    assert!(c.claim().await.expect("claim").is_none(), "leased to a");
    advance(31_000);
    let taken = c.claim().await.expect("claim").expect("taken over");
    assert_eq!(taken.id, job.id);
    assert_eq!(c.postgres().expect("pg").takeovers(), 1);
    // a comes back with a result: dropped, the job stays b's.
    let late = a
        .finish(job.id, Outcome::Failed("late".into()))
        .await
        .expect("finish");
    assert!(late.is_none());
    let done = c
        .finish(job.id, Outcome::Succeeded(Summary::default()))
        .await
        .expect("finish")
        .expect("b's result");
    assert_eq!(done.state, JobState::Succeeded);
}

/// A relay meeting a schema newer than it knows refuses to start, saying
/// so; the database restarting under a relay costs requests, not jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_schema_is_refused_and_a_database_restart_loses_nothing() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let b = Backend::Postgres(pg);
    let store = b.open("relay-a").await;
    let id = store
        .enqueue(vec![spec("p/kept", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    let Backend::Postgres(pg) = &b else {
        unreachable!()
    };
    pg.restart();
    // The pool's connections died with the server; the next calls get new
    // ones (the first may fail: the caller retries, as workers do).
    let mut claimed = None;
    for _ in 0..20 {
        match store.claim().await {
            Ok(Some(j)) => {
                claimed = Some(j);
                break;
            }
            Ok(None) => panic!("the job was lost in the restart"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    assert_eq!(claimed.expect("claimed after the restart").id, id);
    pg.sql("INSERT INTO relay_schema (version) VALUES (99)");
    let err = Store::open_postgres(
        pg.url().parse().expect("url"),
        None,
        "relay-new",
        Duration::from_secs(30),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        err.to_string()
            .contains("newer than this harbor-relay knows"),
        "{err}"
    );
}

/// A database that takes only TLS: the relay connects with the URL's
/// `sslmode=require` and `store.ca_file`, checks the certificate, and
/// works; without the CA (the system's trust store does not know this
/// one) it refuses to start and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_database_is_checked_against_the_configured_ca() {
    let _turn = TURN.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let pg = Postgres::start_tls(&pki);
    let ca = std::fs::read(&pki.ca_pem).expect("ca");
    let store = Store::open_postgres(
        pg.url().parse().expect("url"),
        Some(&ca),
        "relay-tls",
        Duration::from_secs(30),
    )
    .await
    .expect("open over TLS");
    let id = store
        .enqueue(vec![spec("p/tls", "1")])
        .await
        .expect("enqueue")[0]
        .id;
    assert!(store.get(id).await.expect("get").is_some());
    let clear = pg.url().replace("sslmode=require", "sslmode=disable");
    let refused = Store::open_postgres(
        clear.parse().expect("url"),
        None,
        "relay-clear",
        Duration::from_secs(30),
    )
    .await
    .err()
    .expect("a clear connection refused by the server");
    assert!(refused.to_string().contains("pg_hba.conf"), "{refused}");
    let unknown = Store::open_postgres(
        pg.url().parse().expect("url"),
        None,
        "relay-system-roots",
        Duration::from_secs(30),
    )
    .await
    .err()
    .expect("a certificate the system does not trust");
    assert!(
        unknown.to_string().to_lowercase().contains("certificate"),
        "{unknown}"
    );
}

/// A server (or whoever answers in its place) that declines TLS and asks
/// for the password in cleartext or as MD5 gets nothing: the relay refuses
/// before sending it, with `sslmode=disable` and with `prefer` (which falls
/// back to the clear). libpq's psql, given the same password, is let in,
/// so the server did ask. SCRAM in the clear still works (the other tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_is_sent_in_cleartext_or_as_md5_without_tls() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    // An MD5 verifier, so that `md5` in pg_hba.conf means MD5 (with a
    // SCRAM verifier PostgreSQL would use SCRAM anyway).
    pg.sql(&format!(
        "SET password_encryption = 'md5'; ALTER ROLE {PG_USER} PASSWORD '{PG_PASS}'"
    ));
    for (method, mode, said) in [
        ("password", "disable", "in cleartext"),
        ("password", "prefer", "in cleartext"),
        ("md5", "disable", "as MD5"),
        ("md5", "prefer", "as MD5"),
    ] {
        pg.host_auth(method);
        let url = pg
            .url()
            .replace("sslmode=disable", &format!("sslmode={mode}"));
        let err = Store::open_postgres(
            url.parse().expect("url"),
            None,
            "relay-clear",
            Duration::from_secs(30),
        )
        .await
        .err()
        .unwrap_or_else(|| panic!("{method} with sslmode={mode} was let through"));
        let err = err.to_string();
        assert!(
            err.contains(&format!(
                "asked for the password {said} over a connection without TLS"
            )),
            "{method}/{mode}: {err}"
        );
        assert!(err.contains("pg_hba.conf"), "{err}");
        let psql = pg
            .psql(PG_PASS)
            .args(["-At", "-c", "SELECT 1"])
            .output()
            .expect("psql");
        assert!(
            psql.status.success(),
            "the server does accept the password by {method}: {}",
            String::from_utf8_lossy(&psql.stderr)
        );
    }
    // TLS required (the config's default without sslmode): a server
    // without TLS is refused.
    pg.sql(&format!(
        "SET password_encryption = 'scram-sha-256'; ALTER ROLE {PG_USER} PASSWORD '{PG_PASS}'"
    ));
    pg.host_auth("scram-sha-256");
    let mut required: tokio_postgres::Config = pg.url().parse().expect("url");
    required.ssl_mode(tokio_postgres::config::SslMode::Require);
    let err = Store::open_postgres(required, None, "relay-tls", Duration::from_secs(30))
        .await
        .err()
        .expect("no TLS, no connection");
    assert!(err.to_string().to_lowercase().contains("tls"), "{err}");
}

/// One upload of a blob to a target at a time across the fleet: a second
/// relay waits while the first holds the turn (other blobs do not), goes
/// when it ends, and takes it from a relay that died holding it once the
/// lease has run out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_relay_at_a_time_uploads_a_blob_to_a_target() {
    let _turn = TURN.lock().await;
    let b = Backend::Postgres(Postgres::start());
    let (a, c) = (
        b.open("relay-a").await.ledger(),
        b.open("relay-b").await.ledger(),
    );
    let held = a.upload_turn("integrated", "sha256:aa").await;
    let waiting = c.upload_turn("integrated", "sha256:aa");
    tokio::pin!(waiting);
    assert!(
        tokio::time::timeout(Duration::from_millis(800), &mut waiting)
            .await
            .is_err(),
        "b uploaded the blob a is uploading"
    );
    let other = tokio::time::timeout(
        Duration::from_secs(2),
        c.upload_turn("integrated", "sha256:bb"),
    )
    .await
    .expect("another blob is not held up");
    drop(other);
    drop(held);
    let _got = tokio::time::timeout(Duration::from_secs(3), &mut waiting)
        .await
        .expect("b's turn once a's ended");
    // a dies holding a turn (never released): b gets it after the lease.
    std::mem::forget(a.upload_turn("integrated", "sha256:cc").await);
    let stuck = c.upload_turn("integrated", "sha256:cc");
    tokio::pin!(stuck);
    assert!(
        tokio::time::timeout(Duration::from_millis(600), &mut stuck)
            .await
            .is_err()
    );
    advance(31_000);
    let _taken = tokio::time::timeout(Duration::from_secs(3), &mut stuck)
        .await
        .expect("taken from the dead relay after its lease");
}
