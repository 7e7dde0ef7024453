//! The job store's invariants, held by both backends: the same suite runs
//! against the embedded sled store and against a real PostgreSQL (Debian's
//! `postgresql`, made and run by [`Postgres`]); then what only a shared
//! store has: several relays claiming from one queue, leases taken over
//! from a relay that died, one job for an event two relays were given,
//! and a schema newer than the binary refused.

#[path = "../support/mod.rs"]
mod support;

mod invariants;
mod waiting;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harbor_relay::jobs::store::Store;
use harbor_relay::jobs::{JobSpec, JobState, Outcome, Summary};
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
