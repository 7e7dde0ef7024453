//! What a new user runs, exactly as printed (issue 27: an admin who copies a
//! command from the docs and sees it fail stops trusting the rest):
//! docs/install.md from the package to a replicated image, the package's
//! config with the shipped unit, the docs' webhook bodies against the demo,
//! the demo itself, and each command harbor-relay prints as advice.
//!
//! The install walk-through runs as root in a private mount namespace whose
//! /etc, /usr, /var and /run are overlays on the host's (every write kept
//! apart and dropped at the end), so `apt install ./harbor-relay_*.deb` and
//! the `/etc/harbor-relay` paths run as printed without touching this
//! machine. systemd is played by `support/play_systemd.sh`.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use support::harbor::FakeHarbor;
use support::*;

const ROBOT_PASS: &str = "robot-s3cret";
const ADMIN_PASS: &str = "admin-s3cret";

/// One fenced block of a Markdown file.
struct Block {
    lang: String,
    body: String,
    /// Not marked `<!-- not run by tests/newcomer.rs: … -->`.
    run: bool,
}

/// The fenced blocks of `md` from the heading `from` to the next heading
/// (of any level), in order.
fn blocks(md: &str, from: &str) -> Vec<Block> {
    let level = 6;
    let start = md.find(from).unwrap_or_else(|| panic!("no heading {from}"));
    let mut out = Vec::new();
    let mut lines = md[start..].lines().skip(1);
    let mut skip_next = false;
    while let Some(line) = lines.next() {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line.chars().nth(hashes) == Some(' ') {
            break;
        }
        if line.starts_with("<!-- not run by tests/newcomer.rs") {
            skip_next = true;
        } else if let Some(lang) = line.strip_prefix("```") {
            let mut body = String::new();
            for l in lines.by_ref() {
                if l == "```" {
                    break;
                }
                body.push_str(l);
                body.push('\n');
            }
            out.push(Block {
                lang: lang.trim().to_string(),
                body,
                run: !skip_next,
            });
            skip_next = false;
        }
    }
    out
}

/// `text` with each (from, to) replaced; each `from` must occur, so that
/// the docs cannot drift away from what the test replaces.
fn substitute(text: &str, subs: &[(&str, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in subs {
        assert!(out.contains(from), "`{from}` is no longer in the docs");
        out = out.replace(from, to);
    }
    out
}

/// The shell script of a run of install.md's blocks: `sh` blocks as they
/// are, the `toml` block written to `harbor-relay.toml` (step 4 says to
/// write it under that name), `text` blocks (sample output) left out.
fn script_of(blocks: &[Block]) -> String {
    let mut script = String::new();
    for b in blocks.iter().filter(|b| b.run) {
        match b.lang.as_str() {
            "sh" => script.push_str(&b.body),
            "toml" => script.push_str(&format!(
                "cat > harbor-relay.toml <<'HARBOR_RELAY_TOML'\n{}HARBOR_RELAY_TOML\n",
                b.body
            )),
            "text" => {}
            other => panic!("a ```{other} block in install.md: run it or mark it"),
        }
    }
    script
}

/// This test's steps need root: they mount overlays in a namespace.
fn need_root() {
    let (_, uid, _) = run(Command::new("id").arg("-u"));
    assert_eq!(
        uid.trim(),
        "0",
        "this test runs install.md as root, in a private mount namespace with overlays on /etc, /usr, /var and /run (CI runs as root)"
    );
}

/// Builds the Debian package from the binary under test into `dir`.
fn build_deb(dir: &Path) -> PathBuf {
    let (ok, out, err) = run(Command::new("bash")
        .arg(repo_file("scripts/package.sh"))
        .env("HARBOR_RELAY_BIN", env!("CARGO_BIN_EXE_harbor-relay"))
        .env("HARBOR_RELAY_DEB_OUT", dir));
    assert!(ok, "package.sh failed:\n{out}{err}");
    PathBuf::from(out.trim().lines().last().expect("the .deb path"))
}

/// Runs `script` as root in a private mount namespace (and, with `net`, a
/// network namespace of its own with its loopback up) whose /etc, /usr,
/// /var and /run are overlays, with systemd played; `play` holds the
/// daemon's log, pid and notify socket.
fn in_namespace(work: &Path, play: &Path, net: bool, script: &str) -> (bool, String, String) {
    let overlays = work.join("overlays");
    std::fs::create_dir_all(&overlays).expect("overlays");
    std::fs::create_dir_all(play).expect("play");
    // The daemon runs as `nobody`; its notify socket is in here.
    std::fs::set_permissions(play, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let prelude = include_str!("support/play_systemd.sh");
    let full = format!(
        "set -euo pipefail\n\
         for d in etc usr var run; do\n\
           mkdir -p \"$OVERLAYS/$d/up\" \"$OVERLAYS/$d/work\"\n\
           mount -t overlay overlay -o \"lowerdir=/$d,upperdir=$OVERLAYS/$d/up,workdir=$OVERLAYS/$d/work\" \"/$d\"\n\
         done\n\
         {}\
         {prelude}\n\
         set -x\n\
         {script}",
        if net { "ip link set lo up\n" } else { "" }
    );
    let path = work.join("walkthrough.sh");
    std::fs::write(&path, full).expect("script");
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private"]);
    if net {
        cmd.arg("--net");
    }
    let result = run(cmd
        .arg("bash")
        .arg(&path)
        .current_dir(work)
        .env("OVERLAYS", &overlays)
        .env("PLAY_DIR", play)
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("HARBOR_RELAY_CONFIG"));
    // Whatever happened, no daemon outlives the test.
    if let Ok(pid) = std::fs::read_to_string(play.join("pid")) {
        let _ = Command::new("kill").args(["-9", pid.trim()]).status();
    }
    result
}

/// install.md's "Install on a jump VM" from the first command to the last,
/// in order and as printed, with only the hosts, the relay's port and the
/// two passwords replaced: a Harbor double over a real registry as the
/// external Harbor, another over HTTPS (its CA served at getcert) as the
/// integrated one. `docker push` is played by copying a prepared image into
/// the external Harbor, which then sends its webhook to the policy that
/// step 5 registered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_md_runs_as_printed_from_the_package_to_a_replicated_image() {
    need_root();
    let work = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&work.path().join("pki"));
    let staging = RegistryProc::start(None, Auth::None).await;
    let src = RegistryProc::start(None, Auth::None).await;
    let dst = RegistryProc::start(None, Auth::None).await;
    let external = FakeHarbor::start(&src.url, "robot$relay", ROBOT_PASS).await;
    external
        .state
        .projects
        .lock()
        .expect("projects")
        .insert("tkgs-demo".into(), 1);
    let integrated = FakeHarbor::start_tls(&dst.url, "admin", ADMIN_PASS, &pki).await;
    let image = TestImage::random(&[300_000, 40_000]);
    image
        .push(
            &client(&staging.url, None, TlsMode::System),
            "tkgs-demo/nginx",
            &Reference::Tag("1.27".into()),
        )
        .await;

    let admin = work.path().join("admin");
    std::fs::create_dir_all(&admin).expect("admin dir");
    let deb = build_deb(&work.path().join("deb"));
    std::fs::copy(&deb, admin.join(deb.file_name().expect("name"))).expect("copy deb");
    let push_config = work.path().join("push.toml");
    std::fs::write(
        &push_config,
        format!(
            "[store]\npath = \"{}\"\n[registries.staging]\nurl = \"{}\"\n[registries.external]\nurl = \"{}\"\nusername = \"robot$relay\"\npassword = \"{ROBOT_PASS}\"\n",
            work.path().join("push-store").display(),
            staging.url,
            external.url()
        ),
    )
    .expect("push config");

    let port = free_port();
    let host = |url: &str| url.split("://").nth(1).expect("host").to_string();
    let doc = std::fs::read_to_string(repo_file("docs/install.md")).expect("install.md");
    let steps = blocks(&doc, "## Install on a jump VM, step by step");
    let subs = [
        ("https://harbor.example.com", external.url().to_string()),
        ("harbor.example.com", host(external.url())),
        ("https://192.0.2.10", integrated.url().to_string()),
        ("<integrated-harbor>", host(integrated.url())),
        ("jumpvm.example.com:8080", format!("127.0.0.1:{port}")),
        (":8080", format!(":{port}")),
        ("<robot account secret>", ROBOT_PASS.to_string()),
        ("<integrated Harbor password>", ADMIN_PASS.to_string()),
    ];
    let script = substitute(&script_of(&steps), &subs);
    let docker = format!(
        "# `docker push` is played: the image copied from a staging registry\n\
         # into the external Harbor, which fires its webhook; a person reads\n\
         # the output before the next line, so this waits for the job.\n\
         docker() {{\n\
           [ \"$1\" = push ] || return 1\n\
           harbor-relay replicate --config {push} --from staging --to external \"${{2#*/}}\"\n\
           for _ in $(seq 300); do\n\
             harbor-relay jobs list --state succeeded | grep -q nginx && return 0\n\
             sleep 0.2\n\
           done\n\
           echo 'the push was not replicated in 60 s' >&2; harbor-relay jobs list >&2; return 1\n\
         }}\n\
         cd {admin}\n",
        push = push_config.display(),
        admin = admin.display(),
    );
    let play = work.path().join("play");
    let etc_before = Path::new("/etc/harbor-relay").exists();
    let (ok, out, err) = in_namespace(work.path(), &play, false, &format!("{docker}{script}"));
    let log = std::fs::read_to_string(play.join("log")).unwrap_or_default();
    assert!(
        ok,
        "install.md failed as printed:\n--- stdout\n{out}\n--- stderr\n{err}\n--- daemon\n{log}"
    );

    // What each step said it would.
    assert!(
        out.contains("Status: \"listening on 0.0.0.0:")
            && out.contains(&format!("listening on 0.0.0.0:{port}, 1 rules")),
        "systemctl status as step 7 says:\n{out}"
    );
    // `check` printed the rows step 6 shows, in its order, with its results.
    let rows = |text: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with("external ") || l.starts_with("integrated "))
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect()
    };
    let sample = steps
        .iter()
        .find(|b| b.lang == "text" && b.body.contains("REGISTRY"))
        .expect("step 6's sample output");
    // This machine's external Harbor is plain HTTP (no tls row).
    let shown: Vec<String> = rows(&sample.body)
        .into_iter()
        .filter(|r| r != "external tls ok")
        .collect();
    assert_eq!(rows(&out), shown, "check's rows against step 6's:\n{out}");
    assert!(
        out.lines()
            .any(|l| l.contains("succeeded") && l.contains("tkgs-demo/nginx")),
        "jobs list shows the copy:\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("harbor_relay_jobs_finished_total") && l.contains("succeeded")),
        "the metric of step 8:\n{out}"
    );
    // The integrated Harbor has the image, whole, under its tag.
    assert_image_on(
        &client(&dst.url, None, TlsMode::System),
        "tkgs-demo/nginx",
        &image,
        Some("1.27"),
    )
    .await;
    // The host was not touched.
    assert_eq!(Path::new("/etc/harbor-relay").exists(), etc_before);
}

/// The config the package installs starts with the unit the package
/// installs, neither edited: only the files install.md's steps 2 and 3
/// make are added (the credentials and the integrated Harbor's CA). The
/// daemon runs in a network namespace of its own, so its 0.0.0.0:8080 is
/// free whatever this machine runs.
#[test]
fn the_packages_conffile_starts_with_the_packages_unit() {
    need_root();
    let work = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(&work.path().join("pki"));
    let deb = build_deb(&work.path().join("deb"));
    let doc = std::fs::read_to_string(repo_file("docs/install.md")).expect("install.md");
    let credentials = blocks(&doc, "## Install on a jump VM, step by step")
        .into_iter()
        .find(|b| {
            b.body
                .contains("/etc/harbor-relay/credentials/webhook-auth")
        })
        .expect("step 3");
    let script = format!(
        "apt install -y {deb}\n\
         {credentials}\
         install -m 0644 {ca} /etc/harbor-relay/integrated-ca.pem\n\
         systemctl enable --now harbor-relay\n\
         systemctl status harbor-relay\n\
         harbor-relay healthcheck\n",
        deb = deb.display(),
        credentials = credentials.body,
        ca = pki.ca_pem.display(),
    );
    let play = work.path().join("play");
    let (ok, out, err) = in_namespace(work.path(), &play, true, &script);
    let log = std::fs::read_to_string(play.join("log")).unwrap_or_default();
    assert!(
        ok,
        "the conffile did not start with the unit:\n{out}\n{err}\n--- daemon\n{log}"
    );
    assert!(
        out.contains("listening on 0.0.0.0:8080, 1 rules"),
        "{out}\n{log}"
    );
}

/// A `bash` that finds `harbor-relay` on its PATH (the binary under test),
/// as an admin's shell finds the installed one.
fn shell(command: &str) -> Command {
    let bin = Path::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", command])
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .env_remove("HARBOR_RELAY_CONFIG")
        .env_remove("CREDENTIALS_DIRECTORY");
    cmd
}

/// The retry command that `jobs show` and the status page print for a
/// failed job runs as pasted: it names the config, which holds the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retry_command_printed_for_a_failed_job_runs_as_pasted() {
    let world = World::new().await;
    let relay = Relay::start(&world.config()).await;
    let ids = [relay.failed_job().await];
    let config = relay.config_path.display().to_string();

    // `jobs show`, run from another directory: its "retry with" line.
    let (ok, shown, err) = run(&mut shell(&format!(
        "cd / && harbor-relay jobs --config {config} show {}",
        ids[0]
    )));
    assert!(ok, "{shown}{err}");
    let advice = shown
        .lines()
        .find_map(|l| l.trim().strip_prefix("retry with"))
        .expect("a retry line")
        .trim()
        .to_string();
    let (ok, said, err) = run(&mut shell(&format!("cd / && {advice}")));
    assert!(ok, "`{advice}` failed as pasted: {said}{err}");
    assert!(said.contains("queued again"), "{said}");
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "ran and failed again: {job}");

    // The status page's, for the same job.
    let page = reqwest::Client::new()
        .get(format!("{}/jobs/{}", relay.url, ids[0]))
        .basic_auth("admin", Some(API_TOKEN))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    let code = page
        .split("<code>")
        .skip(1)
        .filter_map(|c| c.split("</code>").next())
        .find(|c| c.contains(" retry "))
        .expect("a retry command on the page");
    let (ok, said, err) = run(&mut shell(&format!("cd / && {}", unescape(code))));
    assert!(ok, "`{code}` failed as pasted: {said}{err}");
    assert!(said.contains("queued again"), "{said}");
}

/// HTML text back to the characters maud escaped.
fn unescape(html: &str) -> String {
    html.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&#39;", "'")
        .replace("&amp;", "&")
}

/// install.md's "Sending a webhook by hand" against `scripts/demo.sh
/// --keep`: each `curl` as printed (the demo's ports are this test's free
/// ones), each answered `202` with a job that succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_bodies_in_the_docs_work_against_the_demo() {
    let (src_port, dst_port, relay_port) = (free_port(), free_port(), free_port());
    let mut demo = Command::new("bash")
        .arg(repo_file("scripts/demo.sh"))
        .arg("--keep")
        .env("HARBOR_RELAY_BIN", env!("CARGO_BIN_EXE_harbor-relay"))
        .env("SRC_PORT", src_port.to_string())
        .env("DST_PORT", dst_port.to_string())
        .env("RELAY_PORT", relay_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("demo");
    let stdout = demo.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !seen.contains("Left running") {
        match rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now())) {
            Ok(line) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            Err(_) => panic!("the demo did not come up:\n{seen}"),
        }
    }
    let stop = |demo: &mut std::process::Child| {
        // As Ctrl-C would: the demo's trap stops what it started.
        let _ = Command::new("kill")
            .args(["-TERM", &demo.id().to_string()])
            .status();
        let _ = demo.wait();
    };

    let doc = std::fs::read_to_string(repo_file("docs/install.md")).expect("install.md");
    let sends: Vec<Block> = blocks(&doc, "### Sending a webhook by hand")
        .into_iter()
        .filter(|b| b.lang == "sh")
        .collect();
    assert_eq!(sends.len(), 2, "a Default and a CloudEvents example");
    let http = reqwest::Client::new();
    for send in &sends {
        let command = substitute(
            &send.body,
            &[
                ("127.0.0.1:18080", format!("127.0.0.1:{relay_port}")),
                ("127.0.0.1:15000", format!("127.0.0.1:{src_port}")),
            ],
        );
        let (ok, answer, err) = run(&mut shell(&command));
        if !ok {
            stop(&mut demo);
        }
        assert!(ok, "{command}\n{answer}{err}");
        let v: serde_json::Value = serde_json::from_str(&answer)
            .unwrap_or_else(|e| panic!("{e}: the answer to\n{command}\nwas {answer}"));
        let id = v["jobs"][0]["id"].as_u64().expect("a job id");
        let mut state = String::new();
        for _ in 0..300 {
            let job: serde_json::Value = http
                .get(format!("http://127.0.0.1:{relay_port}/api/v1/jobs/{id}"))
                .send()
                .await
                .expect("job")
                .json()
                .await
                .expect("json");
            state = job["state"].as_str().unwrap_or_default().to_string();
            if state == "succeeded" || state == "failed" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        if state != "succeeded" {
            stop(&mut demo);
        }
        assert_eq!(state, "succeeded", "job {id} of\n{command}");
    }
    stop(&mut demo);
}

/// The demo runs the binary where cargo says it built it (here under a
/// CARGO_TARGET_DIR, not ./target), and when the relay does not come up
/// it prints the relay's last log lines before it cleans up.
///
/// `cargo` is played by a script that answers `cargo build
/// --message-format=json…` with cargo's own `compiler-artifact` message
/// (https://doc.rust-lang.org/cargo/reference/external-tools.html), the
/// line copied from a real build: a real build here would relink the
/// binary the other tests are running, with the features of a plain
/// build, and take minutes on a fresh machine.
#[test]
fn the_demo_uses_what_cargo_built_and_shows_why_the_relay_failed() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let elsewhere = tmp.path().join("build");
    std::fs::create_dir_all(elsewhere.join("debug")).expect("dir");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_harbor-relay"),
        elsewhere.join("debug/harbor-relay"),
    )
    .expect("symlink");
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let calls = tmp.path().join("cargo-calls");
    std::fs::write(
        bin.join("cargo"),
        format!(
            "#!/bin/sh
echo \"$*\" >> {calls}
[ \"$1\" = build ] || exit 1
printf '%s\\n' '{{\"reason\":\"compiler-artifact\",\"package_id\":\"path+file:///src#harbor-relay@0.1.0\",\"target\":{{\"kind\":[\"bin\"],\"crate_types\":[\"bin\"],\"name\":\"harbor-relay\"}},\"profile\":{{\"opt_level\":\"0\"}},\"features\":[],\"filenames\":[\"'\"$CARGO_TARGET_DIR\"'/debug/harbor-relay\"],\"executable\":\"'\"$CARGO_TARGET_DIR\"'/debug/harbor-relay\",\"fresh\":true}}' '{{\"reason\":\"build-finished\",\"success\":true}}'
",
            calls = calls.display()
        ),
    )
    .expect("write");
    std::fs::set_permissions(
        bin.join("cargo"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    let ports = |cmd: &mut Command| {
        cmd.env("SRC_PORT", free_port().to_string())
            .env("DST_PORT", free_port().to_string())
            .env("RELAY_PORT", free_port().to_string())
            .env_remove("HARBOR_RELAY_BIN");
    };
    let mut cmd = Command::new("bash");
    cmd.arg(repo_file("scripts/demo.sh"))
        .env("CARGO_TARGET_DIR", &elsewhere)
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        );
    ports(&mut cmd);
    let (ok, out, err) = run(&mut cmd);
    assert!(ok, "{out}{err}");
    let asked = std::fs::read_to_string(&calls).expect("cargo was asked");
    assert!(
        asked.contains("build --bin harbor-relay --message-format=json-render-diagnostics"),
        "{asked}"
    );
    assert!(
        out.contains(&format!(
            "harbor-relay: {}/debug/harbor-relay",
            elsewhere.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("Replicated: same digest on both sides"),
        "{out}"
    );

    // A relay that exits at once: its last words are printed.
    let broken = tmp.path().join("broken-relay");
    std::fs::write(
        &broken,
        "#!/bin/sh\necho 'harbor-relay: cannot bind 127.0.0.1:18080: address in use' >&2\nexit 1\n",
    )
    .expect("write");
    std::fs::set_permissions(&broken, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_file("scripts/demo.sh"));
    ports(&mut cmd);
    cmd.env("HARBOR_RELAY_BIN", &broken);
    let (ok, out, err) = run(&mut cmd);
    assert!(!ok, "{out}");
    assert!(
        err.contains("did not come up") && err.contains("cannot bind 127.0.0.1:18080"),
        "{err}"
    );
}

/// scripts/test.sh installs from PyPI only into the project's virtual
/// environment, and builds cargo-deny only into it: nothing into the
/// system's Python or ~/.cargo.
#[test]
fn test_sh_installs_nothing_outside_the_project() {
    let text = std::fs::read_to_string(repo_file("scripts/test.sh")).expect("test.sh");
    let code: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    let pip: Vec<&&str> = code.iter().filter(|l| l.contains("pip install")).collect();
    assert!(!pip.is_empty());
    for line in &pip {
        assert!(
            line.contains("\"$tools/bin/python3\" -m pip install"),
            "a pip install outside target/tools: {line}"
        );
    }
    assert!(!text.contains("--break-system-packages"));
    for line in code.iter().filter(|l| l.contains("cargo install")) {
        assert!(line.contains("--root \"$tools\""), "{line}");
    }
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("README");
    assert!(readme.contains("target/tools/"), "the README says where");
}
