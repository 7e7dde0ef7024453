//! The status page, as a person sees it: headless Chromium (Debian's
//! `chromium`) against a live daemon that is empty, busy, then failing; the
//! text a user reads is checked in the rendered DOM, and each state is
//! kept as a screenshot.

use crate::support::*;

/// Headless Chromium, as this machine runs it (no sandbox as root, no
/// background networking: the network is closed).
fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    let bin = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("Chromium is missing: scripts/test.sh installs it (apt-get install chromium)");
    std::process::Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .output()
        .expect("run chromium")
}

/// The page's DOM as Chromium rendered it, and a screenshot kept in `dir`.
fn render(url: &str, shot: &std::path::Path, dir: &std::path::Path) -> String {
    let out = chromium(
        &["--enable-logging=stderr", "--v=0", "--dump-dom", url],
        &dir.join("profile-dom"),
    );
    expect_success(&out);
    // The page's own style is allowed by its Content-Security-Policy (a
    // blocked inline style is reported on the console).
    let console = String::from_utf8_lossy(&out.stderr);
    assert!(
        !console.contains("Content Security Policy"),
        "the page's CSP blocks part of it: {console}"
    );
    let png = chromium(
        &[&format!("--screenshot={}", shot.display()), url],
        &dir.join("profile-shot"),
    );
    assert!(
        png.status.success(),
        "{}",
        String::from_utf8_lossy(&png.stderr)
    );
    let size = std::fs::metadata(shot).map(|m| m.len()).unwrap_or(0);
    assert!(
        size > 10_000,
        "screenshot {} is {size} bytes",
        shot.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_an_empty_a_busy_and_a_failing_daemon() {
    let w = World::new().await;
    let proxy = SlowProxy::start(w.source.addr, 2_000_000).await;
    let img = TestImage::pushed(&w.src, "library/big", &[6 << 20, 6 << 20]).await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", proxy.addr), None, ""),
        w.target_toml(),
    );
    let relay = Relay::start(&config).await;
    let shots = tempfile::tempdir().expect("tempdir");
    let host = relay.url.trim_start_matches("http://");
    let url = format!("http://any:{API_TOKEN}@{host}/");

    // The token is asked for, the way a browser can give it.
    let plain = reqwest::get(format!("{}/", relay.url))
        .await
        .expect("GET /");
    assert_eq!(plain.status(), 401);
    assert!(
        plain.headers()["www-authenticate"]
            .to_str()
            .expect("header")
            .starts_with("Basic")
    );

    // Every page says what a browser may do with it: nothing loads or runs
    // but its own style, no frame may hold it.
    let page = reqwest::Client::new()
        .get(format!("{}/", relay.url))
        .bearer_auth(API_TOKEN)
        .send()
        .await
        .expect("GET /");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .expect("csp");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");

    let empty = render(&url, &shots.path().join("empty.png"), shots.path());
    assert!(empty.contains("nothing is being copied"), "{empty}");
    assert!(empty.contains("external-to-integrated"), "{empty}");
    assert!(
        !empty.contains(API_TOKEN) && !empty.contains(PASS),
        "no secret on the page"
    );

    // Busy: a copy through a slow source.
    let ids = relay
        .push(push_event("library/big", Some("1"), &img.digest))
        .await;
    relay.wait_state(ids[0], "running").await;
    let busy = render(&url, &shots.path().join("busy.png"), shots.path());
    assert!(
        busy.contains("external/library/big:1 → integrated/library/big:1"),
        "{busy}"
    );
    assert!(busy.contains("moved so far"), "{busy}");
    relay.wait_success(ids[0]).await;

    // Failing: an event for a tag the source does not have.
    let ids = [relay.failed_job().await];
    let failing = render(&url, &shots.path().join("failing.png"), shots.path());
    assert!(failing.contains("Last failures"), "{failing}");
    // Counts say what they count (issue 27: "failed 2" for one failed job).
    assert!(failing.contains("failures since start"), "{failing}");
    // And why the ids it lists jump (issue 27: 1–90, then 2000001…).
    assert!(failing.contains("not consecutive"), "{failing}");
    // The retry command names this relay's config, to run as pasted.
    assert!(
        failing.contains(&format!(
            "harbor-relay jobs --config {} retry {}",
            std::fs::canonicalize(&relay.config_path)
                .expect("config")
                .display(),
            ids[0]
        )),
        "{failing}"
    );
    assert!(
        failing.contains("not found"),
        "the error is shown: {failing}"
    );

    // One job's page.
    let one = render(
        &format!("{url}jobs/{}", ids[0]),
        &shots.path().join("job.png"),
        shots.path(),
    );
    assert!(one.contains(&format!("Job {}", ids[0])), "{one}");
    assert!(one.contains("last error"), "{one}");
    // Kept for a person to look at when the test is run by hand.
    if let Ok(dir) = std::env::var("HARBOR_RELAY_SCREENSHOTS") {
        for f in ["empty.png", "busy.png", "failing.png", "job.png"] {
            let _ = std::fs::copy(shots.path().join(f), std::path::Path::new(&dir).join(f));
        }
    }
}
