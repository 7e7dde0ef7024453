//! Unit tests of the parent module.

use super::*;
use crate::clock::now_ms;
use crate::jobs::{JobSpec, JobState, Outcome, Summary};
use crate::reference::Reference;

/// Opens the store again after the test dropped it. sled lets go of
/// its file lock when its background flusher has stopped, which under
/// load can be a moment after the drop (a new process, as after a
/// real crash, has no such wait).
async fn reopen(path: &std::path::Path) -> (SledStore, usize) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match SledStore::open(path) {
            Err(StoreError::InUse(_)) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            other => return other.expect("reopen"),
        }
    }
}

/// A copy job's spec for `library/nginx:<tag>` (the transition tests use
/// it too).
pub(crate) fn spec(tag: &str) -> JobSpec {
    JobSpec {
        rule: "r".into(),
        from: "external".into(),
        to: "integrated".into(),
        fanout: false,
        source_repository: "library/nginx".into(),
        target_repository: "library/nginx".into(),
        reference: Reference::Tag(tag.into()),
        digest: None,
        occurred_at: None,
        action: crate::jobs::Action::Copy,
        overwrite: true,
        referrers: true,
        platforms: None,
        referrer_only: false,
        artifact_types: None,
        labels: None,
        max_blob_size: None,
        gated: false,
    }
}

#[test]
fn a_store_made_here_is_the_relays_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new").join("store");
    let (_store, _) = super::SledStore::open(&path).expect("open");
    let mode = std::fs::metadata(&path).expect("dir").permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{mode:o}");
}

#[tokio::test]
async fn enqueue_claim_finish_and_coalesce() {
    // The store's clock, moved by the test instead of sleeping.
    static NOW: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1_000_000);
    fn now() -> u64 {
        NOW.load(std::sync::atomic::Ordering::SeqCst)
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut store, recovered) = SledStore::open(dir.path()).expect("open");
    store.set_clock(now);
    assert_eq!(recovered, 0);
    let a = store
        .enqueue(vec![spec("1"), spec("2")])
        .await
        .expect("enqueue");
    assert!(a.iter().all(|e| !e.coalesced));
    let again = store.enqueue(vec![spec("1")]).await.expect("enqueue");
    assert_eq!(
        again[0],
        Enqueued {
            id: a[0].id,
            coalesced: true
        }
    );
    assert_eq!(store.queued(), 2);

    let job = store.claim().await.expect("claim").expect("a job");
    assert_eq!(job.id, a[0].id);
    assert_eq!(job.state, JobState::Running);
    assert_eq!(job.coalesced, 1);
    // Still active while running: a redelivery joins it.
    let again = store.enqueue(vec![spec("1")]).await.expect("enqueue");
    assert!(again[0].coalesced);

    let done = store
        .finish(job.id, Outcome::Succeeded(Summary::default()))
        .await
        .expect("finish")
        .expect("exists");
    assert_eq!(done.state, JobState::Succeeded);
    // Just succeeded: a late redelivery joins it.
    let late = store.enqueue(vec![spec("1")]).await.expect("enqueue");
    assert_eq!(
        late[0],
        Enqueued {
            id: job.id,
            coalesced: true
        }
    );
    // Outside the window, the same event makes a new job.
    store.set_coalesce_window(std::time::Duration::ZERO);
    NOW.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let fresh = store.enqueue(vec![spec("1")]).await.expect("enqueue");
    assert!(!fresh[0].coalesced);
    assert_ne!(fresh[0].id, job.id);

    let failed = store.list(Some(JobState::Succeeded), 10).expect("list");
    assert_eq!(failed.len(), 1);
}

#[tokio::test]
async fn running_jobs_are_requeued_after_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let (store, _) = SledStore::open(dir.path()).expect("open");
        store.enqueue(vec![spec("1")]).await.expect("enqueue");
        let job = store.claim().await.expect("claim").expect("job");
        job.id
        // dropped without finishing: as after kill -9
    };
    let (store, recovered) = reopen(dir.path()).await;
    assert_eq!(recovered, 1);
    assert_eq!(store.queued(), 1);
    let job = store.claim().await.expect("claim").expect("job");
    assert_eq!(job.id, id);
    assert_eq!(job.attempts, 2);
}

#[tokio::test]
async fn failed_attempts_wait_then_run_again_and_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = {
        let (store, _) = SledStore::open(dir.path()).expect("open");
        let e = store.enqueue(vec![spec("1")]).await.expect("enqueue");
        let job = store.claim().await.expect("claim").expect("job");
        let at = now_ms() + 60_000;
        let j = store
            .finish(
                job.id,
                Outcome::Retry {
                    error: "503".into(),
                    at_ms: at,
                },
            )
            .await
            .expect("finish")
            .expect("job");
        assert_eq!(j.state, JobState::Retrying);
        assert_eq!(j.next_attempt_ms, Some(at));
        // Still active: a redelivery joins it.
        assert!(store.enqueue(vec![spec("1")]).await.expect("enqueue")[0].coalesced);
        assert_eq!(store.promote_due(now_ms()).await.expect("promote"), 0);
        assert_eq!(store.next_due().expect("due"), Some(at));
        e[0].id
    };
    let (store, _) = reopen(dir.path()).await;
    assert_eq!(store.retrying(), 1);
    assert!(store.claim().await.expect("claim").is_none());
    assert_eq!(
        store
            .promote_due(now_ms() + 120_000)
            .await
            .expect("promote"),
        1
    );
    let job = store.claim().await.expect("claim").expect("job");
    assert_eq!(job.id, id);
    assert_eq!(job.attempts, 2);
    let j = store
        .finish(id, Outcome::Failed("gave up".into()))
        .await
        .expect("finish")
        .expect("job");
    assert_eq!(j.state, JobState::Failed);
    assert_eq!(j.last_error.as_deref(), Some("gave up"));
}

#[tokio::test]
async fn manual_retry_and_pruning() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = SledStore::open(dir.path()).expect("open");
    let e = store.enqueue(vec![spec("1")]).await.expect("enqueue");
    let id = e[0].id;
    assert!(matches!(
        store.retry(id).await,
        Err(RetryError::NotFailed { .. })
    ));
    store.claim().await.expect("claim").expect("job");
    store
        .finish(id, Outcome::Failed("x".into()))
        .await
        .expect("finish");
    // Another job for the same artifact blocks the retry.
    let other = store.enqueue(vec![spec("1")]).await.expect("enqueue")[0].id;
    assert!(
        matches!(store.retry(id).await, Err(RetryError::Duplicate { active }) if active == other)
    );
    store.claim().await.expect("claim").expect("job");
    store
        .finish(other, Outcome::Succeeded(Summary::default()))
        .await
        .expect("finish");
    let j = store.retry(id).await.expect("retry");
    assert_eq!(j.state, JobState::Queued);
    assert_eq!(j.attempts, 0);
    assert!(matches!(
        store.retry(999).await,
        Err(RetryError::NotFound(999))
    ));

    // Pruning removes finished jobs only, by age.
    assert_eq!(store.prune(now_ms() + 1).await.expect("prune"), 1);
    assert!(store.get(other).expect("get").is_none());
    assert!(store.get(id).expect("get").is_some());
}
