//! Operating the daemon: the systemd unit (checked by systemd itself),
//! readiness and watchdog notifications, SIGHUP reloads, metrics checked
//! by the real `promtool`, the alert rules and dashboard, logs that never
//! show a secret, and the API's token. Installing it is `install.rs`.

mod support;

use std::os::unix::net::UnixDatagram;
use std::process::Stdio;
use std::time::{Duration, Instant};

use harbor_relay::reference::Reference;
use support::*;

#[test]
fn systemd_unit_verifies_and_exposure_is_at_most_2() {
    let dir = tempfile::tempdir().expect("tempdir");
    // `verify` checks that ExecStart exists: point it at the binary under test.
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/harbor-relay.service"))
        .expect("unit")
        .replace(
            "/usr/local/bin/harbor-relay",
            env!("CARGO_BIN_EXE_harbor-relay"),
        );
    let path = dir.path().join("harbor-relay.service");
    std::fs::write(&path, &unit).expect("write unit");
    assert!(unit.contains("Type=notify") && unit.contains("WatchdogSec="));
    assert!(unit.contains("LoadCredential=") && unit.contains("ExecReload="));

    let (ok, out, err) = run(tool("systemd-analyze", "apt-get install systemd")
        .arg("verify")
        .arg(&path));
    assert!(ok, "systemd-analyze verify failed:\n{out}{err}");
    // verify exits 0 on unknown keys and bad values, but says so.
    assert!(
        err.trim().is_empty() && out.trim().is_empty(),
        "systemd-analyze verify complained:\n{out}{err}"
    );

    let (_, out, err) = run(tool("systemd-analyze", "apt-get install systemd")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path));
    let score: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for harbor-relay.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}{err}"));
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{out}");
}

#[test]
fn alert_rules_pass_promtool_checks_and_unit_tests() {
    let rules = repo_file("deploy/prometheus/alerts.yml");
    let (ok, out, err) = run(tool("promtool", "apt-get install prometheus")
        .args(["check", "rules"])
        .arg(&rules));
    assert!(ok, "promtool check rules:\n{out}{err}");
    assert!(out.contains("SUCCESS: 10 rules found"), "{out}");
    let (ok, out, err) = run(tool("promtool", "apt-get install prometheus")
        .current_dir(repo_file("deploy/prometheus"))
        .args(["test", "rules", "alerts_test.yml"]));
    assert!(ok, "promtool test rules:\n{out}{err}");
}

/// Metric names an expression uses, without histogram suffixes.
fn metric_names(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"harbor_relay_[a-z_]+").expect("regex");
    let mut names: Vec<String> = re
        .find_iter(text)
        .map(|m| {
            let n = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_string()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_metrics_pass_promtool_and_feed_alerts_and_dashboard() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/app", &[300_000, 40_000]).await;
    let relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("library/app", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    let (status, body) = relay.get("/metrics").await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("text").to_string();

    let mut child = tool("promtool", "apt-get install prometheus")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = child.wait_with_output().expect("promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );

    // The values say what happened: bytes by registry and direction,
    // requests, the store's size.
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no series {series} in\n{text}"))
    };
    let blob_bytes = 340_000.0;
    assert!(value("harbor_relay_registry_read_bytes_total{registry=\"external\"}") >= blob_bytes);
    assert!(
        value("harbor_relay_registry_written_bytes_total{registry=\"integrated\"}") >= blob_bytes
    );
    assert_eq!(
        value("harbor_relay_registry_written_bytes_total{registry=\"external\"}"),
        0.0
    );
    assert!(value("harbor_relay_registry_requests_total{registry=\"integrated\"}") >= 4.0);
    assert_eq!(
        value("harbor_relay_registry_errors_total{registry=\"integrated\"}"),
        0.0
    );
    assert_eq!(value("harbor_relay_transfers_in_flight"), 0.0);
    assert!(value("harbor_relay_store_size_bytes") > 0.0);
    assert!(value("harbor_relay_replication_lag_seconds_count{target=\"integrated\"}") >= 1.0);
    // No tag or digest as a label value.
    assert!(!text.contains(&img.digest) && !text.contains("library/app"));

    // Every metric the alerts and the dashboard use is one the daemon exports.
    let exported = metric_names(&text);
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/harbor-relay.json",
    ] {
        let body = std::fs::read_to_string(repo_file(file)).expect("read");
        for name in metric_names(&body) {
            assert!(
                exported.contains(&name),
                "{file} uses {name}, which /metrics does not export"
            );
        }
    }
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_file("deploy/grafana/harbor-relay.json")).expect("read"),
    )
    .expect("dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    for p in panels {
        assert!(
            !p["targets"].as_array().expect("targets").is_empty(),
            "panel {} has no query",
            p["title"]
        );
    }
}

/// Reads notifications sent to a fake `NOTIFY_SOCKET` until one contains
/// `want`; returns everything read.
fn wait_notification(sock: &UnixDatagram, want: &str, seen: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let hit = msg.lines().any(|l| l == want);
            seen.push(msg);
            if hit {
                return;
            }
        }
    }
    panic!("no {want} from the daemon; got {seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tells_systemd_ready_watchdog_reloading_stopping() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let mut relay = Relay::start_env(
        free_port(),
        "",
        "",
        &[
            ("NOTIFY_SOCKET", sock_path.to_str().expect("path")),
            ("WATCHDOG_USEC", "400000"),
        ],
    )
    .await;
    let mut seen = Vec::new();
    wait_notification(&sock, "READY=1", &mut seen);
    let (status, _) = relay.get("/readyz").await;
    assert_eq!(status, 200);
    // Pings every 200 ms: several within a second.
    let started = Instant::now();
    for _ in 0..3 {
        wait_notification(&sock, "WATCHDOG=1", &mut seen);
    }
    assert!(started.elapsed() < Duration::from_secs(3));

    relay.signal("HUP");
    wait_notification(&sock, "RELOADING=1", &mut seen);
    wait_notification(&sock, "READY=1", &mut seen);

    let stopping = std::thread::spawn(move || {
        let mut seen = Vec::new();
        wait_notification(&sock, "STOPPING=1", &mut seen);
    });
    assert!(relay.terminate().success());
    stopping.join().expect("STOPPING=1 sent");
}

fn wait_log(relay: &Relay, needle: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while relay.logs().matches(needle).count() < count {
        assert!(
            Instant::now() < deadline,
            "no `{needle}` in the log:\n{}",
            relay.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_refuses_a_bad_file_keeping_the_old() {
    let w = World::new().await;
    let only_library = format!(
        "{}[[rules]]\nname = \"main\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"library\"]\n",
        w.registries()
    );
    let relay = Relay::start(&only_library).await;
    let a = TestImage::pushed(&w.src, "team/app", &[50_000]).await;

    // Not under the rule: refused, nothing queued.
    let (status, body) = relay
        .deliver(push_event("team/app", Some("1"), &a.digest))
        .await;
    assert_eq!(status, 422, "{body}");

    // A job accepted just before the reload still runs after it.
    let b = TestImage::pushed(&w.src, "library/base", &[60_000]).await;
    let queued = relay
        .push(push_event("library/base", Some("1"), &b.digest))
        .await;

    let config = std::fs::read_to_string(&relay.config_path).expect("config");
    std::fs::write(
        &relay.config_path,
        config.replace("[\"library\"]", "[\"library\", \"team\"]"),
    )
    .expect("rewrite");
    relay.signal("HUP");
    wait_log(&relay, "configuration reloaded", 1);
    relay.wait_success(queued[0]).await;

    let ids = relay
        .push(push_event("team/app", Some("1"), &a.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "team/app", &a, Some("1")).await;

    // A broken file is refused; the daemon keeps the config it had.
    let good = std::fs::read_to_string(&relay.config_path).expect("config");
    std::fs::write(
        &relay.config_path,
        good.replace("to = \"integrated\"", "to = \"nowhere\""),
    )
    .expect("break");
    relay.signal("HUP");
    wait_log(&relay, "configuration NOT reloaded", 1);
    assert!(
        relay.logs().contains("nowhere"),
        "the error names the problem"
    );
    let c = TestImage::random(&[70_000]);
    c.push(&w.src, "team/app", &Reference::Tag("2".into()))
        .await;
    let ids = relay
        .push(push_event("team/app", Some("2"), &c.digest))
        .await;
    relay.wait_success(ids[0]).await;
    let (status, _) = relay.get("/readyz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_job_and_never_a_secret() {
    let w = World::new().await;
    let img = TestImage::random(&[80_000]);
    img.push(&w.src, "library/app", &Reference::Tag("7".into()))
        .await;
    let relay = Relay::start(&format!("[log]\nformat = \"json\"\n\n{}", w.config())).await;
    let ids = relay
        .push(push_event("library/app", Some("7"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    // A wrong guess at the webhook secret, and a job that fails on auth.
    let (status, _) = relay
        .webhook(
            push_event("library/app", Some("7"), &img.digest),
            "application/json",
            Some("Bearer guess-Zq81"),
        )
        .await;
    assert_eq!(status, 401);

    let logs = relay.logs();
    let mut finished = None;
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        if v["fields"]["message"] == "job succeeded" {
            finished = Some(v);
        }
    }
    let done = finished.unwrap_or_else(|| panic!("no `job succeeded` line:\n{logs}"));
    assert_eq!(done["span"]["id"], ids[0]);
    assert_eq!(done["span"]["rule"], "external-to-integrated");
    assert_eq!(done["span"]["source"], "external/library/app:7");
    assert!(done["fields"]["bytes"].as_u64().expect("bytes") >= 80_000);
    assert!(done["fields"]["seconds"].as_f64().is_some());
    assert_eq!(done["fields"]["digest"], img.digest.as_str());

    // The test's config file is world-readable and holds passwords inline.
    assert!(
        logs.contains("readable by every user") && logs.contains("registries.integrated.password"),
        "no warning about the world-readable config:\n{logs}"
    );
    let secret = WEBHOOK_SECRET.trim_start_matches("Bearer ");
    for s in [PASS, secret, "guess-Zq81"] {
        assert!(!logs.contains(s), "the log shows a secret ({s}):\n{logs}");
    }

    // Nor the API, the metrics, the job store on disk, or --help (with
    // the API token in the environment).
    let secrets = [PASS, secret, API_TOKEN];
    for path in [
        "/api/v1/jobs".to_string(),
        format!("/api/v1/jobs/{}", ids[0]),
        "/metrics".to_string(),
    ] {
        let (_, body) = relay.get(&path).await;
        let text = body.to_string();
        for s in secrets {
            assert!(!text.contains(s), "{path} shows a secret ({s}): {text}");
        }
    }
    let mut files = vec![relay.dir.path().join("store")];
    let mut scanned = 0;
    // The store is not compressed: the job's repository is there in clear,
    // so a secret would be too.
    let mut saw_job = false;
    while let Some(p) = files.pop() {
        if p.is_dir() {
            files.extend(
                std::fs::read_dir(&p)
                    .expect("store dir")
                    .map(|e| e.expect("entry").path()),
            );
            continue;
        }
        let bytes = std::fs::read(&p).expect("store file");
        scanned += bytes.len();
        saw_job |= bytes.windows(11).any(|w| w == b"library/app");
        for s in secrets {
            assert!(
                !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                "the job store holds a secret ({s}) in {}",
                p.display()
            );
        }
    }
    assert!(
        scanned > 0 && saw_job,
        "the store files hold no job in clear"
    );
    for args in [
        vec!["--help"],
        vec!["jobs", "list", "--help"],
        vec!["jobs", "retry", "--help"],
    ] {
        let out = relay_cmd_env(&args, &[("HARBOR_RELAY_API_TOKEN", API_TOKEN)]);
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            !text.contains(API_TOKEN),
            "{args:?} shows the token:\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_needs_the_token_and_metrics_can_live_on_their_own_port() {
    let metrics_port = free_port();
    let relay = Relay::start("").await;
    let http = reqwest::Client::new();
    // With a token configured: nothing without it, not even reading.
    for (method, path) in [("GET", "/api/v1/jobs"), ("POST", "/api/v1/jobs/1/retry")] {
        let resp = http
            .request(
                method.parse().expect("method"),
                format!("{}{path}", relay.url),
            )
            .header("authorization", "Bearer guess-77Qx")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 401, "{method} {path}");
        assert!(resp.headers().contains_key("www-authenticate"));
    }
    let (status, _) = relay.get("/api/v1/jobs").await;
    assert_eq!(status, 200, "the right token works");
    let (_, metrics) = relay.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    assert!(
        text.contains("harbor_relay_auth_failures_total{endpoint=\"api\"} 2"),
        "{text}"
    );
    assert!(
        !relay.logs().contains("guess-77Qx"),
        "the presented token was logged"
    );

    // Without a token the API is read-only; /metrics moved to its own port.
    let port = free_port();
    let daemon = RawRelay::spawn(
        port,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let main = format!("http://127.0.0.1:{port}");
    let side = format!("http://127.0.0.1:{metrics_port}");
    wait_until_answers(&http, &format!("{side}/readyz"), "daemon did not start").await;
    // Said at start, before the daemon serves: the API and page are open.
    assert!(
        daemon
            .logs()
            .contains("server.api_token is not set: the jobs API and the status page are open"),
        "{}",
        daemon.logs()
    );
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |u: String| http.get(u).send();
    assert_eq!(
        status(get(format!("{main}/api/v1/jobs")).await.expect("GET")),
        200
    );
    let retry = http
        .post(format!("{main}/api/v1/jobs/1/retry"))
        .send()
        .await
        .expect("POST");
    assert_eq!(retry.status(), 403);
    assert!(retry.text().await.expect("body").contains("read-only"));
    assert_eq!(
        status(get(format!("{main}/metrics")).await.expect("GET")),
        404
    );
    assert_eq!(
        status(get(format!("{side}/metrics")).await.expect("GET")),
        200
    );
    assert_eq!(
        status(get(format!("{side}/healthz")).await.expect("GET")),
        200
    );
    assert_eq!(
        status(get(format!("{side}/api/v1/jobs")).await.expect("GET")),
        404
    );
    let hook = http
        .post(format!("{side}/webhooks/harbor"))
        .body("{}")
        .send()
        .await
        .expect("POST");
    assert_eq!(hook.status(), 404);
}

/// The shipped unit's environment leaves `[log] level` in charge (issue
/// 27: its `RUST_LOG=info` silently overrode `level = "debug"`): the
/// daemon started with exactly the unit's `Environment=` lines logs at
/// the config's level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_units_environment_lets_the_configs_log_level_win() {
    let unit =
        std::fs::read_to_string(repo_file("deploy/systemd/harbor-relay.service")).expect("unit");
    let env: Vec<(String, String)> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("Environment="))
        .flat_map(|v| v.split_whitespace())
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n[store]\npath = \"{}\"\n[log]\nlevel = \"debug\"\n",
            dir.path().join("store").display()
        ),
    )
    .expect("config");
    let log = dir.path().join("relay.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .env_remove("RUST_LOG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start");
    let http = reqwest::Client::new();
    wait_until_answers(
        &http,
        &format!("http://127.0.0.1:{port}/healthz"),
        "no start",
    )
    .await;
    // A request the daemon logs at debug level.
    let _ = http
        .get(format!("http://127.0.0.1:{port}/api/v1/jobs/1"))
        .send()
        .await;
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("DEBUG"),
        "no debug line with level = \"debug\" under the unit's environment {env:?}:\n{text}"
    );
}
