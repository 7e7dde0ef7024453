//! The suite both backends run: each invariant of the job store, against
//! the embedded sled store and a real PostgreSQL in turn.

use std::time::Duration;

use harbor_relay::jobs::store::{RetryError, StoreError};
use harbor_relay::jobs::{Action, JobState, Outcome, Summary};

use super::{Backend, TURN, advance, both, now, spec};

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
        super::waiting::held_jobs_wait_for_a_release_or_their_time(&b).await;
    }
    for b in both().await {
        super::waiting::jobs_waiting_for_a_registry_go_when_it_answers(&b).await;
    }
    for b in both().await {
        super::waiting::a_fan_outs_jobs_are_claimed_together(&b).await;
    }
}
