//! A fleet of relays (the real binary) on one PostgreSQL: webhooks sent to
//! any relay are each copied once, a relay killed mid-copy loses its job to
//! another, reconcile runs once per interval for the fleet, and a relay's
//! unfinished jobs move from its embedded store to the shared one with
//! `store export` and `store import`.

mod support;

use std::time::Duration;

use harbor_relay::reference::Reference;
use support::*;

/// The tests of this file take turns: each runs several relays and
/// registries on two cores, and the lease timings assume they have them.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `[store]` lines for `pg`, password from the environment as an admin
/// would write it, and a short lease so a takeover is quick.
fn pg_store(pg: &Postgres) -> String {
    format!(
        "url = \"postgres://{PG_USER}@127.0.0.1:{}/{PG_DB}?sslmode=disable\"\npassword = \"${{HARBOR_RELAY_TEST_PG_PASSWORD}}\"\nlease = \"3s\"\n",
        pg.port
    )
}

/// Manifest `PUT`s the target's access log shows under `prefix`.
fn manifest_puts(w: &World, prefix: &str) -> usize {
    w.target
        .log()
        .lines()
        .filter(|l| l.contains(&format!("\"PUT /v2/{prefix}")) && l.contains("/manifests/"))
        .count()
}

async fn relay_on(pg: &Postgres, jobs: &str, rest: &str) -> Relay {
    Relay::start_store(
        Some(&pg_store(pg)),
        free_port(),
        jobs,
        rest,
        &[("HARBOR_RELAY_TEST_PG_PASSWORD", PG_PASS)],
    )
    .await
}

/// Two relays on one database, 200 webhooks sent to each in turn: every image
/// arrives, each by one job (one attempt, one manifest PUT on the target),
/// and either relay's API sees every job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_the_webhooks_work_and_copy_each_image_once() {
    const IMAGES: usize = 200;
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let w = World::with_access_logs(true).await;
    let (a, b) = (
        relay_on(&pg, "", &w.config()).await,
        relay_on(&pg, "", &w.config()).await,
    );
    use futures_util::{StreamExt as _, stream};
    let imgs: Vec<(String, String, TestImage)> = stream::iter(0..IMAGES)
        .map(|i| {
            let src = &w.src;
            async move {
                let img = TestImage::random(&[2_000 + i]);
                let (repo, tag) = (format!("fleet/app-{}", i % 8), format!("v{i}"));
                img.push(src, &repo, &Reference::Tag(tag.clone())).await;
                (repo, tag, img)
            }
        })
        .buffered(8)
        .collect()
        .await;
    let mut ids = Vec::new();
    for (i, (repo, tag, img)) in imgs.iter().enumerate() {
        let relay = if i % 2 == 0 { &a } else { &b };
        ids.extend(relay.push(push_event(repo, Some(tag), &img.digest)).await);
    }
    for id in &ids {
        let job = a.wait_success(*id).await;
        assert_eq!(job["attempts"], 1, "{job}");
    }
    stream::iter(&imgs)
        .for_each_concurrent(8, |(repo, tag, img)| {
            assert_image_on(&w.dst, repo, img, Some(tag))
        })
        .await;
    assert_eq!(
        manifest_puts(&w, "fleet/"),
        IMAGES,
        "one manifest PUT per image"
    );
    let (_, listed) = b.get("/api/v1/jobs?limit=1000").await;
    let seen = listed["jobs"].as_array().map_or(0, Vec::len);
    assert_eq!(seen, IMAGES, "relay b's API lists every job of the fleet");
}

/// `kill -9` of the relay in the middle of a large copy: the other relay
/// takes the job over once the lease runs out (3 s here), finishes it, and
/// the target is whole; it counts the takeover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_copy_loses_its_job_to_another() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let w = World::new().await;
    let proxy = SlowProxy::start(w.source.addr, 4_000_000).await;
    let img = TestImage::pushed(&w.src, "fleet/big", &[6 << 20, 6 << 20, 6 << 20]).await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", proxy.addr), None, ""),
        w.target_toml(),
    );
    let mut a = relay_on(&pg, "blob_concurrency = 1\n", &config).await;
    let ids = a
        .push(push_event("fleet/big", Some("1"), &img.digest))
        .await;
    let wait = Deadline::new(Duration::from_secs(60));
    while a.job(ids[0]).await["state"] != "running" {
        wait.tick(|| "the job never started".into()).await;
    }
    let (_, page) = a.get("/").await;
    let page = page.as_str().unwrap_or_default().to_string();
    assert!(
        page.contains("<th>relay</th>") && page.contains(&format!("/{}</td>", a.pid())),
        "the status page names the relay running the job:\n{page}"
    );
    let b = relay_on(&pg, "", &config).await;
    a.kill9();
    let job = b.wait_success(ids[0]).await;
    assert_eq!(job["attempts"], 2, "{job}");
    let relay = job["relay"].as_str().unwrap_or_default();
    assert!(
        relay.ends_with(&format!("/{}", b.pid())),
        "the job names relay b: {job}"
    );
    assert_image_on(&w.dst, "fleet/big", &img, Some("1")).await;
    let (_, metrics) = b.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.lines()
            .any(|l| l.starts_with("harbor_relay_lease_takeovers_total ") && !l.ends_with(" 0")),
        "{text}"
    );
    let info = text
        .lines()
        .find(|l| l.starts_with("harbor_relay_info{"))
        .expect("harbor_relay_info");
    assert!(
        info.contains("store=\"postgres\"") && info.contains(&format!("/{}\"", b.pid())),
        "{info}"
    );
}

/// Three relays with a 1 s reconcile interval on one database: about one
/// pass per second in all (each lists the source's catalog once), not
/// three.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_runs_once_per_interval_across_the_fleet() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let w = World::with_access_logs(true).await;
    let img = TestImage::pushed(&w.src, "fleet/quiet", &[5_000]).await;
    let rules = "[[rules]]\nname = \"catch-up\"\nfrom = \"external\"\nto = \"integrated\"\nreconcile_interval = \"1s\"\n";
    let config = format!("{}{rules}", w.registries());
    let started = std::time::Instant::now();
    let relays = [
        relay_on(&pg, "", &config).await,
        relay_on(&pg, "", &config).await,
        relay_on(&pg, "", &config).await,
    ];
    // The first pass repairs what no webhook announced.
    let wait = Deadline::new(Duration::from_secs(30));
    while !w
        .dst
        .has_manifest("fleet/quiet", &img.digest)
        .await
        .expect("HEAD")
    {
        wait.tick(|| format!("never reconciled:\n{}", relays[0].logs()))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let seconds = started.elapsed().as_secs_f64();
    let passes = w
        .source
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/_catalog"))
        .count();
    assert!(passes >= 3, "{passes} passes in {seconds:.1} s");
    assert!(
        (passes as f64) <= seconds + 2.0,
        "{passes} passes in {seconds:.1} s: the three relays each ran their own"
    );
}

/// Moving from one relay on the embedded store to a fleet on PostgreSQL:
/// the old relay cannot reach its target, so its jobs wait for a retry.
/// `store export` refuses while that relay runs (it holds the store); once
/// it is stopped, the export holds every job, and `store import` into the
/// fleet's database queues them: the relay already running there is woken
/// and copies each image. Importing again queues nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_jobs_move_from_the_embedded_store_to_the_fleet() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let w = World::new().await;
    let cut_off = format!(
        "{}{}{RULE}",
        registry_toml("external", &w.source.url, None, ""),
        registry_toml(
            "integrated",
            &format!("http://127.0.0.1:{}", free_port()),
            None,
            ""
        ),
    );
    let mut old = Relay::start(&cut_off).await;
    let (mut imgs, mut waiting) = (Vec::new(), Vec::new());
    for i in 0..4 {
        let img = TestImage::pushed(&w.src, &format!("moving/app-{i}"), &[3_000]).await;
        let repo = format!("moving/app-{i}");
        waiting.extend(old.push(push_event(&repo, Some("1"), &img.digest)).await);
        imgs.push((repo, img));
    }
    for id in waiting {
        old.wait_state(id, "retrying").await;
    }
    let old_config = old.config_path.to_str().expect("utf-8").to_string();
    let export = old.dir.path().join("jobs.jsonl");
    let export_arg = export.to_str().expect("utf-8");
    let busy = relay_cmd(&["store", "export", "-c", &old_config, "-o", export_arg]);
    let said = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success());
    assert!(said.contains("another harbor-relay holds it"), "{said}");
    assert!(old.terminate().success());
    let out = relay_cmd(&["store", "export", "-c", &old_config, "-o", export_arg]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("exported 4 jobs") && said.contains("4 retrying"),
        "{said}"
    );

    let fleet = relay_on(&pg, "", &w.config()).await;
    let fleet_config = fleet.config_path.to_str().expect("utf-8").to_string();
    let import = || {
        relay_cmd_env(
            &["store", "import", "-c", &fleet_config, export_arg],
            &[("HARBOR_RELAY_TEST_PG_PASSWORD", PG_PASS)],
        )
    };
    let dry = relay_cmd_env(
        &[
            "store",
            "import",
            "--dry-run",
            "-c",
            &fleet_config,
            export_arg,
        ],
        &[("HARBOR_RELAY_TEST_PG_PASSWORD", PG_PASS)],
    );
    let said = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success(), "{said}");
    assert!(
        said.contains("copy external/moving/app-0:1 -> integrated/moving/app-0:1")
            && said.contains("4 jobs would be queued"),
        "{said}"
    );
    let first = import();
    let said = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(said.starts_with("queued 4 jobs"), "{said}");
    let (_, listed) = fleet.get("/api/v1/jobs").await;
    let ids: Vec<u64> = listed["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_u64())
        .collect();
    assert_eq!(ids.len(), 4, "{listed}");
    for id in ids {
        fleet.wait_success(id).await;
    }
    for (repo, img) in &imgs {
        assert_image_on(&w.dst, repo, img, Some("1")).await;
    }
    let again = import();
    let said = String::from_utf8_lossy(&again.stdout);
    assert!(
        said.starts_with("queued 0 jobs") && said.contains("4 folded"),
        "{said}"
    );
}

/// The database crashes in the middle of a run and is back 3 s later:
/// copies under way go on, their results are recorded once it is back,
/// and no job is lost or run twice (one attempt and one manifest PUT per
/// image).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_crash_mid_run_loses_and_repeats_nothing() {
    let _turn = TURN.lock().await;
    let pg = Postgres::start();
    let w = World::with_access_logs(true).await;
    let proxy = SlowProxy::start(w.source.addr, 2_000_000).await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", proxy.addr), None, ""),
        w.target_toml(),
    );
    // A lease longer than the outage: nothing is taken over here.
    let store = pg_store(&pg).replace("lease = \"3s\"", "lease = \"15s\"");
    let relay = Relay::start_store(
        Some(&store),
        free_port(),
        "",
        &config,
        &[("HARBOR_RELAY_TEST_PG_PASSWORD", PG_PASS)],
    )
    .await;
    let mut ids = Vec::new();
    let mut imgs = Vec::new();
    for i in 0..6 {
        let repo = format!("crash/app-{i}");
        let img = TestImage::pushed(&w.src, &repo, &[3 << 20]).await;
        ids.extend(relay.push(push_event(&repo, Some("1"), &img.digest)).await);
        imgs.push((repo, img));
    }
    relay.wait_state(ids[0], "running").await;
    let down = tokio::task::spawn_blocking(move || {
        pg.down_for(Duration::from_secs(3));
        pg
    });
    let _pg = down.await.expect("restart");
    for id in &ids {
        let job = relay.wait_success(*id).await;
        assert_eq!(job["attempts"], 1, "{job}");
    }
    for (repo, img) in &imgs {
        assert_image_on(&w.dst, repo, img, Some("1")).await;
    }
    assert_eq!(manifest_puts(&w, "crash/"), 6, "one manifest PUT per image");
}
