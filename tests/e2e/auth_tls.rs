//! Auth and TLS to the registries: pinned CA, skip-verify, untrusted certificates, Basic and token auth.

use harbor_relay::config::TlsMode;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_verify_target_works_and_warns_at_start() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/insecure", &[10_000]).await;
    let relay = Relay::start(&w.config_with_tls("{ insecure_skip_verify = true }")).await;
    let ids = relay
        .push(push_event("library/insecure", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/insecure", &img, Some("1")).await;
    let log = relay.logs();
    assert!(
        log.contains("TLS certificate verification is OFF") && log.contains("integrated"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificate_fails_the_job_with_the_tls_reason() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/untrusted", &[10_000]).await;
    // Verification on, system roots only: the test CA is not trusted.
    let relay = Relay::start(&w.config_with_tls("")).await;
    let ids = relay
        .push(push_event("library/untrusted", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
    assert!(err.contains("certificate not trusted"), "{err}");
    assert!(
        err.contains("set tls.ca_file for registry 'integrated'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_auth_target_and_basic_auth_source() {
    let t = TokenTarget::start().await;
    let (issuer, dst) = (&t.issuer, &t.dst);
    // The source wants Basic auth over plain HTTP; the target, tokens.
    let source = RegistryProc::start(
        None,
        Auth::Basic {
            user: "reader".into(),
            pass: "source-pw".into(),
        },
    )
    .await;
    let src = client(&source.url, Some(("reader", "source-pw")), TlsMode::System);

    let img = TestImage::pushed(&src, "library/tok", &[300_000, 20_000]).await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, Some(("reader", "source-pw")), ""),
        t.toml(),
    );
    let relay = Relay::start(&config).await;
    let before = issuer.requests.load(std::sync::atomic::Ordering::Relaxed);
    let ids = relay
        .push(push_event("library/tok", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert!(
        issuer.requests.load(std::sync::atomic::Ordering::Relaxed) > before,
        "the relay never asked the token service"
    );
    assert_image_on(dst, "library/tok", &img, Some("1")).await;

    // Wrong password: the token service answers, as Harbor's does, with an
    // anonymous token; the registry refuses it, and the job says why.
    let bad = config.replace(PASS, "wrong");
    let relay2 = Relay::start(&bad).await;
    let ids = relay2
        .push(push_event("library/tok", Some("1"), &img.digest))
        .await;
    let job = relay2.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed");
    let err = job["last_error"].as_str().expect("error");
    eprintln!("last_error: {err}");
    assert!(err.contains("access denied"), "{err}");
    assert!(err.contains("anonymous token"), "{err}");
    assert!(
        err.contains(&format!("sent as user '{USER}'")),
        "the user name sent is named: {err}"
    );
    assert!(
        !err.contains("wrong"),
        "password leaked into the error: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_all_learn_the_auth_challenge() {
    // A fresh client's first requests go out without credentials; each
    // 401 must lead to a retry with them, even when another request
    // learned the challenge first (found by the shared-base benchmark).
    let w = World::new().await;
    let dst = client(&w.target.url, Some((USER, PASS)), pinned(&w.pki));
    let checks = (0..20).map(|i| {
        let dst = dst.clone();
        async move {
            dst.has_blob(&format!("race/r{i}"), &format!("sha256:{:064x}", i))
                .await
        }
    });
    for r in futures_util::future::join_all(checks).await {
        assert!(!r.expect("no 401 after the challenge is known"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_renewed_in_the_background_before_it_expires() {
    use std::sync::atomic::Ordering;
    use std::time::{Duration, Instant};
    let t = TokenTarget::start().await;
    // 12 s tokens: used for 7 s (a 5 s margin), renewed after 5.25 s.
    t.issuer.expires_in.store(12, Ordering::Relaxed);
    let digest = format!("sha256:{:064x}", 7);
    let asked = || t.issuer.requests.load(Ordering::Relaxed);
    assert!(!t.dst.has_blob("renew/app", &digest).await.expect("HEAD"));
    let first = asked();
    let got = Instant::now();
    // Past three quarters of its life: the request goes out with the token
    // in hand, and the renewal happens beside it.
    tokio::time::sleep(Duration::from_millis(5_600)).await;
    assert!(!t.dst.has_blob("renew/app", &digest).await.expect("HEAD"));
    let wait = Deadline::new(Duration::from_secs(1));
    while asked() == first {
        wait.tick(|| "no token was asked for in the background".to_string())
            .await;
    }
    assert_eq!(asked(), first + 1, "one renewal, not one per request");
    // After the old token's time: the renewed one serves, nothing is asked.
    tokio::time::sleep(Duration::from_secs(8).saturating_sub(got.elapsed())).await;
    assert!(!t.dst.has_blob("renew/app", &digest).await.expect("HEAD"));
    assert_eq!(
        asked(),
        first + 1,
        "the request at expiry waited for no token"
    );
}
