use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt as _;

use super::*;
use crate::registry::verify::{Mismatch, mismatch, mismatch_of};

fn chunks(n: usize) -> Vec<Bytes> {
    (0..n).map(|i| Bytes::from(vec![i as u8; 1000])).collect()
}

fn stream_of(items: Vec<std::io::Result<Bytes>>) -> ByteStream {
    Box::pin(futures_util::stream::iter(items))
}

/// Reads a whole stream: its bytes, or its first error.
async fn drain(mut s: ByteStream) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(item) = s.next().await {
        out.extend_from_slice(&item?);
    }
    Ok(out)
}

/// An `open` that counts its calls and serves `data`.
fn opener(
    opens: &AtomicUsize,
    data: Vec<Bytes>,
) -> impl FnOnce() -> std::future::Ready<Result<ByteStream, RegistryError>> + '_ {
    move || {
        opens.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(stream_of(data.into_iter().map(Ok).collect())))
    }
}

/// Each of `seats` reads blob `sha256:a` (`data`, from one counting
/// `open` each) through the tee, at once; the bytes each got.
async fn read_together(seats: &[Seat], opens: &AtomicUsize, data: &[Bytes]) -> Vec<Vec<u8>> {
    let size = data.iter().map(|b| b.len() as u64).sum();
    let reads = seats.iter().map(|s| async move {
        let body = s
            .answer("sha256:a", &[])
            .read(size, opener(opens, data.to_vec()))
            .await
            .expect("opens");
        drain(body).await.expect("reads")
    });
    futures_util::future::join_all(reads).await
}

fn all(data: &[Bytes]) -> Vec<u8> {
    data.iter().flat_map(|b| b.to_vec()).collect()
}

/// A blob's gathering: answered by `answered`, read for `owners`.
fn gathering(answered: &[usize], owners: &[&str]) -> Gathering {
    Gathering {
        answered: answered.iter().copied().collect(),
        owners: owners.iter().map(|o| o.to_string()).collect(),
        ..Gathering::default()
    }
}

#[test]
fn the_read_begins_when_every_seat_still_copying_has_answered_or_after_gather() {
    let live: BTreeSet<usize> = [0, 1, 2].into();
    let none = HashMap::new();
    let some = gathering(&[0, 2], &[]);
    assert_eq!(due(&live, &none, &some, Duration::ZERO), Due::No);
    let almost = GATHER - Duration::from_millis(1);
    assert_eq!(due(&live, &none, &some, almost), Due::No);
    assert_eq!(due(&live, &none, &some, GATHER), Due::Waited);
    let every = gathering(&[0, 1, 2], &[]);
    assert_eq!(due(&live, &none, &every, Duration::ZERO), Due::Answered);
    // A seat whose copy ended is not waited for.
    let left: BTreeSet<usize> = [0, 2].into();
    assert_eq!(due(&left, &none, &some, Duration::ZERO), Due::Answered);
}

#[test]
fn a_seat_whose_target_holds_a_manifest_the_blob_is_read_for_has_answered() {
    let live: BTreeSet<usize> = [0, 1].into();
    let g = gathering(&[0], &["sha256:index", "sha256:image"]);
    let holds = |m: &str| HashMap::from([(1, HashSet::from([m.to_string()]))]);
    let now = Duration::ZERO;
    assert_eq!(due(&live, &holds("sha256:image"), &g, now), Due::Answered);
    assert_eq!(due(&live, &holds("sha256:index"), &g, now), Due::Answered);
    // Another image's manifest says nothing of this blob.
    assert_eq!(due(&live, &holds("sha256:other"), &g, now), Due::No);
}

#[tokio::test(start_paused = true)]
async fn a_seat_that_holds_the_manifest_releases_the_readers_at_once() {
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(2);
    let owners = ["sha256:image".to_string()];
    let started = tokio::time::Instant::now();
    let read = async {
        let body = seats[0]
            .answer("sha256:a", &owners)
            .read(3000, opener(&opens, data.clone()))
            .await
            .expect("opens");
        drain(body).await.expect("reads")
    };
    let found = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Seat 1's target has the image: it never asks for its blobs, and
        // its copy goes on (its seat stays).
        seats[1].holds("sha256:image");
    };
    let (got, ()) = tokio::join!(read, found);
    assert_eq!(got, all(&data));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < GATHER,
        "{waited:?}"
    );
    assert_eq!(opens.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn three_readers_share_one_read_and_get_the_same_bytes() {
    let data = chunks(50);
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(3);
    let got = read_together(&seats, &opens, &data).await;
    assert_eq!(opens.load(Ordering::SeqCst), 1, "one read of the source");
    for g in got {
        assert_eq!(g, all(&data));
    }
}

#[tokio::test(start_paused = true)]
async fn a_seat_that_needs_no_read_is_not_waited_for() {
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(3);
    let started = tokio::time::Instant::now();
    // Seat 2 has the blob: its answer is dropped unused.
    drop(seats[2].answer("sha256:a", &[]));
    let got = read_together(&seats[..2], &opens, &data).await;
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    assert!(got.iter().all(|g| *g == all(&data)));
    assert!(started.elapsed() < GATHER, "nobody waited out GATHER");
}

#[tokio::test(start_paused = true)]
async fn a_silent_seat_is_waited_for_gather_then_reads_alone() {
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(3);
    let started = tokio::time::Instant::now();
    let got = read_together(&seats[..2], &opens, &data).await;
    assert!(started.elapsed() >= GATHER, "{:?}", started.elapsed());
    assert_eq!(opens.load(Ordering::SeqCst), 1);
    assert!(got.iter().all(|g| *g == all(&data)));
    // The third asks after the read began: it reads on its own.
    let late = seats[2]
        .answer("sha256:a", &[])
        .read(3000, opener(&opens, data.clone()))
        .await
        .expect("opens");
    assert_eq!(drain(late).await.expect("reads"), all(&data));
    assert_eq!(opens.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_seat_that_leaves_releases_the_others_at_once() {
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    let mut seats = Tee::seats(2);
    let gone = seats.pop().expect("two seats");
    let started = tokio::time::Instant::now();
    let read = async {
        let body = seats[0]
            .answer("sha256:a", &[])
            .read(3000, opener(&opens, data.clone()))
            .await
            .expect("opens");
        drain(body).await.expect("reads")
    };
    let leave = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(gone);
    };
    let (got, ()) = tokio::join!(read, leave);
    assert_eq!(got, all(&data));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < GATHER,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_takes_nothing_is_cut_off_and_the_others_finish() {
    let data = chunks(40);
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(2);
    let (fast, slow) = tokio::join!(
        async {
            let body = seats[0]
                .answer("sha256:a", &[])
                .read(40_000, opener(&opens, data.clone()))
                .await
                .expect("opens");
            drain(body).await
        },
        async {
            let mut body = seats[1]
                .answer("sha256:a", &[])
                .read(40_000, opener(&opens, data.clone()))
                .await
                .expect("opens");
            // One chunk, then a target that stops taking.
            let first = body.next().await;
            tokio::time::sleep(STALL * 3).await;
            let mut rest = Vec::new();
            while let Some(item) = body.next().await {
                rest.push(item);
            }
            (first, rest)
        }
    );
    assert_eq!(fast.expect("the fast target gets it all"), all(&data));
    let (first, rest) = slow;
    assert!(first.is_some_and(|f| f.is_ok()));
    let err = rest
        .into_iter()
        .find_map(Result::err)
        .expect("the stalled target's stream ends in an error, not short");
    assert!(err.to_string().contains("took nothing"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn a_source_error_reaches_every_reader_with_its_kind() {
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(2);
    let open = || {
        opens.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Ok(stream_of(vec![
            Ok(Bytes::from_static(b"abc")),
            Err(mismatch(Mismatch::Digest, "the digest differs".into())),
        ])))
    };
    let reads = seats.iter().map(|s| async {
        let body = s
            .answer("sha256:a", &[])
            .read(3, open)
            .await
            .expect("opens");
        drain(body).await
    });
    for got in futures_util::future::join_all(reads).await {
        let e = got.expect_err("the mismatch is passed on");
        assert_eq!(mismatch_of(&e), Some(Mismatch::Digest), "{e}");
    }
    assert_eq!(opens.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn when_the_shared_open_fails_each_reader_opens_alone_and_says_why() {
    let opens = AtomicUsize::new(0);
    let seats = Tee::seats(2);
    let open = || {
        opens.fetch_add(1, Ordering::SeqCst);
        std::future::ready(Err::<ByteStream, _>(RegistryError::NotFound {
            registry: "external".into(),
            what: "blob sha256:a".into(),
        }))
    };
    let reads = seats
        .iter()
        .map(|s| async { s.answer("sha256:a", &[]).read(3, open).await.map(|_| ()) });
    for got in futures_util::future::join_all(reads).await {
        let e = got.expect_err("not found");
        assert!(e.to_string().contains("not found"), "{e}");
    }
    assert_eq!(opens.load(Ordering::SeqCst), 2, "the follower asked itself");
}

#[tokio::test(start_paused = true)]
async fn copies_of_one_group_meet_at_one_tee_however_they_were_claimed() {
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    let tees = Tees::default();
    // Two siblings that started apart (two workers), and another fan-out.
    let siblings = [tees.seat("group-1"), tees.seat("group-1")];
    let other = tees.seat("group-2");
    let started = tokio::time::Instant::now();
    let got = read_together(&siblings, &opens, &data).await;
    assert_eq!(
        opens.load(Ordering::SeqCst),
        1,
        "the siblings share one read"
    );
    assert!(got.iter().all(|g| *g == all(&data)));
    assert!(
        started.elapsed() < GATHER,
        "nobody waited for the other group"
    );
    drop(siblings);
    // A later retry of the group, alone: its own tee, no wait.
    let alone = [tees.seat("group-1")];
    let started = tokio::time::Instant::now();
    read_together(&alone, &opens, &data).await;
    assert_eq!(opens.load(Ordering::SeqCst), 2);
    assert!(started.elapsed() < GATHER);
    drop(other);
}

#[tokio::test(start_paused = true)]
async fn shared_reads_are_counted_by_whether_they_waited() {
    let reads = prometheus::IntCounterVec::new(prometheus::Opts::new("reads", "test"), &["began"])
        .expect("counter");
    let tees = Tees::counted(Some(reads.clone()));
    let seats = [tees.seat("g"), tees.seat("g"), tees.seat("g")];
    let data = chunks(3);
    let opens = AtomicUsize::new(0);
    // All three answer: one read, at once.
    read_together(&seats, &opens, &data).await;
    // Blob b: the third is silent, and the first two wait it out.
    let reads_b = seats[..2].iter().map(|s| async {
        let body = s
            .answer("sha256:b", &[])
            .read(3000, opener(&opens, data.clone()))
            .await
            .expect("opens");
        drain(body).await.expect("reads")
    });
    futures_util::future::join_all(reads_b).await;
    assert_eq!(reads.with_label_values(&["answered"]).get(), 1);
    assert_eq!(reads.with_label_values(&["waited"]).get(), 1);
    assert_eq!(opens.load(Ordering::SeqCst), 2);
}
