use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::StreamExt as _;

use super::*;
use crate::registry::verify::{Mismatch, mismatch_of};
use prometheus::IntCounter;

fn chunks(n: usize) -> Vec<Bytes> {
    chunks_of(n, 0)
}

/// `n` chunks of 1000 bytes, told apart from other blobs by `seed`.
fn chunks_of(n: usize, seed: u8) -> Vec<Bytes> {
    (0..n)
        .map(|i| Bytes::from(vec![(i as u8).wrapping_add(seed); 1000]))
        .collect()
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

/// One blob at the source: serves `data` from any offset (or `rest` after
/// the first open, when set), and records each open's offset.
struct Source {
    data: Vec<Bytes>,
    rest: Option<Vec<Bytes>>,
    offsets: Mutex<Vec<u64>>,
}

impl Source {
    fn new(data: &[Bytes]) -> Arc<Source> {
        Arc::new(Source {
            data: data.to_vec(),
            rest: None,
            offsets: Mutex::default(),
        })
    }

    /// The blob's digest, which the tee verifies the bytes against.
    fn digest(&self) -> String {
        crate::manifest::sha256_digest(&all(&self.data))
    }

    fn size(&self) -> u64 {
        self.data.iter().map(|b| b.len() as u64).sum()
    }

    fn opens(&self) -> usize {
        self.offsets.lock().expect("offsets").len()
    }

    fn from(self: &Arc<Self>) -> OpenFrom {
        let me = self.clone();
        Arc::new(move |offset| {
            let mut offsets = me.offsets.lock().expect("offsets");
            let data = match (&me.rest, offsets.len()) {
                (Some(rest), 1..) => rest.clone(),
                _ => me.data.clone(),
            };
            offsets.push(offset);
            let bytes = Bytes::from(all(&data)).slice(offset as usize..);
            let items = bytes.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c)));
            Box::pin(std::future::ready(Ok(stream_of(items.collect()))))
        })
    }
}

/// `seat`'s stream of `source`'s blob, through the tee.
async fn body(seat: &Seat, source: &Arc<Source>) -> ByteStream {
    seat.answer(&source.digest(), &[])
        .read(source.size(), source.from())
        .await
        .expect("opens")
}

/// Each of `seats` reads `source`'s blob through the tee, at once; the
/// bytes each got.
async fn read_together(seats: &[Seat], source: &Arc<Source>) -> Vec<Vec<u8>> {
    let reads = seats.iter().map(|s| async {
        let body = body(s, source).await;
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
    let source = Source::new(&chunks(3));
    let seats = Tee::seats(2);
    let owners = ["sha256:image".to_string()];
    let started = tokio::time::Instant::now();
    let read = async {
        let body = seats[0]
            .answer(&source.digest(), &owners)
            .read(source.size(), source.from())
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
    assert_eq!(got, all(&source.data));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < GATHER,
        "{waited:?}"
    );
    assert_eq!(source.opens(), 1);
}

#[tokio::test(start_paused = true)]
async fn three_readers_share_one_read_and_get_the_same_bytes() {
    let source = Source::new(&chunks(50));
    let seats = Tee::seats(3);
    let got = read_together(&seats, &source).await;
    assert_eq!(source.opens(), 1, "one read of the source");
    for g in got {
        assert_eq!(g, all(&source.data));
    }
}

#[tokio::test(start_paused = true)]
async fn a_seat_that_needs_no_read_is_not_waited_for() {
    let source = Source::new(&chunks(3));
    let seats = Tee::seats(3);
    let started = tokio::time::Instant::now();
    // Seat 2 has the blob: its answer is dropped unused.
    drop(seats[2].answer(&source.digest(), &[]));
    let got = read_together(&seats[..2], &source).await;
    assert_eq!(source.opens(), 1);
    assert!(got.iter().all(|g| *g == all(&source.data)));
    assert!(started.elapsed() < GATHER, "nobody waited out GATHER");
}

#[tokio::test(start_paused = true)]
async fn a_silent_seat_is_waited_for_gather_then_reads_alone() {
    let source = Source::new(&chunks(3));
    let seats = Tee::seats(3);
    let started = tokio::time::Instant::now();
    let got = read_together(&seats[..2], &source).await;
    assert!(started.elapsed() >= GATHER, "{:?}", started.elapsed());
    assert_eq!(source.opens(), 1);
    assert!(got.iter().all(|g| *g == all(&source.data)));
    // The third asks after the read began: it reads on its own.
    let late = body(&seats[2], &source).await;
    assert_eq!(drain(late).await.expect("reads"), all(&source.data));
    assert_eq!(source.opens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_seat_that_leaves_releases_the_others_at_once() {
    let source = Source::new(&chunks(3));
    let mut seats = Tee::seats(2);
    let gone = seats.pop().expect("two seats");
    let started = tokio::time::Instant::now();
    let read = async {
        let body = body(&seats[0], &source).await;
        drain(body).await.expect("reads")
    };
    let leave = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(gone);
    };
    let (got, ()) = tokio::join!(read, leave);
    assert_eq!(got, all(&source.data));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < GATHER,
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_takes_nothing_while_the_others_take_is_cut_loose_and_reads_alone() {
    let source = Source::new(&chunks(40));
    let seats = Tee::seats(2);
    let started = tokio::time::Instant::now();
    let (fast, slow) = tokio::join!(
        async {
            let body = body(&seats[0], &source).await;
            (drain(body).await, started.elapsed())
        },
        async {
            let mut body = body(&seats[1], &source).await;
            // One chunk, then a target that stops taking, then comes back.
            let mut got = body.next().await.expect("a chunk")?.to_vec();
            tokio::time::sleep(STALL * 3).await;
            got.extend(drain(body).await?);
            std::io::Result::Ok(got)
        }
    );
    let (fast, fast_done) = fast;
    assert_eq!(
        fast.expect("the fast target gets it all"),
        all(&source.data)
    );
    assert!(
        fast_done <= LAG + Duration::from_millis(10),
        "{fast_done:?}"
    );
    assert_eq!(slow.expect("the rest, read alone"), all(&source.data));
    assert_eq!(source.opens(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_reader_that_takes_nothing_with_nobody_else_taking_is_cut_off() {
    let source = Source::new(&chunks(40));
    let seats = Tee::seats(1);
    let mut body = body(&seats[0], &source).await;
    assert!(body.next().await.is_some_and(|f| f.is_ok()));
    tokio::time::sleep(STALL * 3).await;
    let err = drain(body)
        .await
        .expect_err("the stalled reader's stream ends in an error, not short");
    assert!(err.to_string().contains("took nothing"), "{err}");
    assert_eq!(source.opens(), 1);
}

#[test]
fn a_reader_is_cut_loose_once_it_held_the_read_back_lag_and_a_quarter_of_the_time() {
    let s = Duration::from_secs;
    // Not yet LAG, however large a share.
    assert!(!lags(LAG - Duration::from_millis(1), LAG));
    assert!(lags(LAG, s(8)));
    // A little slower than the others over a long read: it stays.
    assert!(!lags(s(5), s(60)));
    assert!(lags(s(15), s(60)));
}

/// Two readers of `source`: one takes each chunk at once, the other takes
/// one every 100 ms. Their results, and when the fast one had all.
async fn fast_and_slow(
    source: &Arc<Source>,
    tees: &Tees,
) -> (Vec<u8>, std::io::Result<Vec<u8>>, Duration) {
    let seats = [tees.seat("g"), tees.seat("g")];
    let started = tokio::time::Instant::now();
    let (fast, slow) = tokio::join!(
        async {
            let body = body(&seats[0], source).await;
            let got = drain(body).await.expect("the fast target gets it all");
            (got, started.elapsed())
        },
        async {
            let mut body = body(&seats[1], source).await;
            let mut got = Vec::new();
            while let Some(item) = body.next().await {
                got.extend_from_slice(&item?);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(got)
        }
    );
    (fast.0, slow, fast.1)
}

fn counts() -> Counts {
    Counts {
        reads: prometheus::IntCounterVec::new(prometheus::Opts::new("reads", "test"), &["began"])
            .expect("counter"),
        detached: IntCounter::new("detached", "test").expect("counter"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_cut_loose_and_reads_the_rest_alone_verified() {
    let source = Source::new(&chunks(200));
    let counted = counts();
    let tees = Tees::counted(Some(counted.clone()));
    let (fast, slow, fast_done) = fast_and_slow(&source, &tees).await;
    assert_eq!(fast, all(&source.data));
    // Paced by the slow one, the fast one would take 200 × 100 ms.
    assert!(fast_done < LAG * 2, "the fast target waited {fast_done:?}");
    // The slow one got every byte, hashed across the seam as one blob.
    assert_eq!(
        slow.expect("the slow target gets it all"),
        all(&source.data)
    );
    let offsets = source.offsets.lock().expect("offsets").clone();
    assert_eq!(offsets.len(), 2, "{offsets:?}");
    assert_eq!(offsets[0], 0);
    assert!(
        offsets[1] > 0 && offsets[1] < source.size() / 2,
        "{offsets:?}"
    );
    assert_eq!(offsets[1] % 1000, 0, "the rest begins at a chunk's end");
    assert_eq!(counted.detached.get(), 1);
}

#[tokio::test(start_paused = true)]
async fn the_rest_read_alone_is_verified_with_the_part_before_it() {
    let data = chunks(200);
    let mut wrong = data.clone();
    wrong[150] = Bytes::from(vec![0xff; 1000]);
    let source = Arc::new(Source {
        data,
        rest: Some(wrong),
        offsets: Mutex::default(),
    });
    let (fast, slow, _) = fast_and_slow(&source, &Tees::default()).await;
    assert_eq!(fast, all(&source.data));
    let Err(e) = slow else {
        panic!("the rest hashes wrong with what came before");
    };
    assert_eq!(mismatch_of(&e), Some(Mismatch::Digest), "{e}");
}

#[tokio::test(start_paused = true)]
async fn a_source_error_reaches_every_reader_with_its_kind() {
    // Bytes that do not hash to the digest the readers ask for.
    let source = Source::new(&[Bytes::from_static(b"abc")]);
    let digest = crate::manifest::sha256_digest(b"abd");
    let seats = Tee::seats(2);
    let reads = seats.iter().map(|s| async {
        let body = s
            .answer(&digest, &[])
            .read(3, source.from())
            .await
            .expect("opens");
        drain(body).await
    });
    for got in futures_util::future::join_all(reads).await {
        let e = got.expect_err("the mismatch is passed on");
        assert_eq!(mismatch_of(&e), Some(Mismatch::Digest), "{e}");
    }
    assert_eq!(source.opens(), 1);
}

#[tokio::test(start_paused = true)]
async fn when_the_shared_open_fails_each_reader_opens_alone_and_says_why() {
    let opens = Arc::new(AtomicUsize::new(0));
    let seats = Tee::seats(2);
    let counted = opens.clone();
    let from: OpenFrom = Arc::new(move |_| {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(std::future::ready(Err(RegistryError::NotFound {
            registry: "external".into(),
            what: "blob sha256:a".into(),
        })))
    });
    let reads = seats.iter().map(|s| {
        let from = from.clone();
        async move { s.answer("sha256:a", &[]).read(3, from).await.map(|_| ()) }
    });
    for got in futures_util::future::join_all(reads).await {
        let e = got.expect_err("not found");
        assert!(e.to_string().contains("not found"), "{e}");
    }
    assert_eq!(opens.load(Ordering::SeqCst), 2, "the follower asked itself");
}

#[tokio::test(start_paused = true)]
async fn copies_of_one_group_meet_at_one_tee_however_they_were_claimed() {
    let source = Source::new(&chunks(3));
    let tees = Tees::default();
    // Two siblings that started apart (two workers), and another fan-out.
    let siblings = [tees.seat("group-1"), tees.seat("group-1")];
    let other = tees.seat("group-2");
    let started = tokio::time::Instant::now();
    let got = read_together(&siblings, &source).await;
    assert_eq!(source.opens(), 1, "the siblings share one read");
    assert!(got.iter().all(|g| *g == all(&source.data)));
    assert!(
        started.elapsed() < GATHER,
        "nobody waited for the other group"
    );
    drop(siblings);
    // A later retry of the group, alone: its own tee, no wait.
    let alone = [tees.seat("group-1")];
    let started = tokio::time::Instant::now();
    read_together(&alone, &source).await;
    assert_eq!(source.opens(), 2);
    assert!(started.elapsed() < GATHER);
    drop(other);
}

#[tokio::test(start_paused = true)]
async fn shared_reads_are_counted_by_whether_they_waited() {
    let counted = counts();
    let tees = Tees::counted(Some(counted.clone()));
    let seats = [tees.seat("g"), tees.seat("g"), tees.seat("g")];
    // All three answer: one read, at once.
    let a = Source::new(&chunks(3));
    read_together(&seats, &a).await;
    // Blob b: the third is silent, and the first two wait it out.
    let b = Source::new(&chunks_of(3, 7));
    read_together(&seats[..2], &b).await;
    assert_eq!(counted.reads.with_label_values(&["answered"]).get(), 1);
    assert_eq!(counted.reads.with_label_values(&["waited"]).get(), 1);
    assert_eq!(a.opens() + b.opens(), 2);
    assert_eq!(counted.detached.get(), 0);
}

#[tokio::test(start_paused = true)]
async fn readers_at_one_pace_are_not_cut_loose_however_out_of_step() {
    let source = Source::new(&chunks(200));
    let counted = counts();
    let tees = Tees::counted(Some(counted.clone()));
    let seats = [tees.seat("g"), tees.seat("g")];
    // Both take a chunk every 100 ms, the second 50 ms after the first:
    // always later, never slower.
    let reads = seats.iter().enumerate().map(|(i, seat)| {
        let source = source.clone();
        async move {
            let mut body = body(seat, &source).await;
            tokio::time::sleep(Duration::from_millis(50 * i as u64)).await;
            let mut got = Vec::new();
            while let Some(item) = body.next().await {
                got.extend_from_slice(&item.expect("bytes"));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            got
        }
    });
    for got in futures_util::future::join_all(reads).await {
        assert_eq!(got, all(&source.data));
    }
    assert_eq!(source.opens(), 1, "one read for both");
    assert_eq!(counted.detached.get(), 0);
}
