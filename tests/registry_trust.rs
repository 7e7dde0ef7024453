//! Registries that lie (issue 13): no credential leaves for another host,
//! no answer stalls, panics or fills the daemon, and it stays ready.
//!
//! Each attack is played by `support::hostile::HostileRegistry`; the other
//! host it points at is a `Recorder` that keeps every request reaching it,
//! and each test asserts that no credential did.

mod support;

use std::time::Duration;

use harbor_relay::config::{RegistryConfig, RegistryLimits, Secret, TlsMode};
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use support::hostile::{Attack, HarborAuth, HostileRegistry, PASS, Recorder, USER, hostile_toml};
use support::*;

fn hostile_client(url: &str, limits: RegistryLimits) -> Registry {
    Registry::new(&RegistryConfig {
        name: "external".into(),
        url: url.parse().expect("url"),
        username: Some(USER.into()),
        password: Some(Secret::new(PASS)),
        tls: TlsMode::System,
        limits,
        create_projects: false,
        is_harbor: false,
        token_realm_hosts: vec![],
        password_note: None,
    })
    .expect("client")
}

/// A relay replicating `library/app` from `source_toml` to `target_toml`
/// (both `[registries.*]` text), and the job of one push of `digest`.
async fn run_one(
    source_toml: &str,
    target_toml: &str,
    rule_extra: &str,
    digest: &str,
) -> (Relay, serde_json::Value) {
    let config = format!(
        "{source_toml}{target_toml}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n{rule_extra}\n"
    );
    let relay = Relay::start_with_jobs(
        "max_attempts = 2\nretry_initial_delay = \"100ms\"\n",
        &config,
    )
    .await;
    let ids = relay
        .push(push_event("library/app", Some("1"), digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    (relay, job)
}

/// [`run_one`] from the hostile `source` (with `extra` config lines) to a
/// plain registry, which is returned so it lives as long as the test.
async fn copy_from(
    source: &HostileRegistry,
    extra: &str,
) -> (Relay, serde_json::Value, RegistryProc) {
    let target = RegistryProc::start(None, Auth::None).await;
    let (relay, job) = run_one(
        &hostile_toml(&source.url, extra),
        &registry_toml("integrated", &target.url, None, ""),
        "",
        &source.digest,
    )
    .await;
    (relay, job, target)
}

/// The config line that lets `foreign` issue tokens.
fn allow_realm(foreign: &Recorder) -> String {
    format!("token_realm_hosts = [\"{}\"]", foreign.host())
}

/// A TCP connection to the relay on `port` from loopback address `from`
/// (e.g. "127.0.0.2"): another client, as far as the relay can tell.
async fn connect_from(from: &str, port: u16) -> tokio::net::TcpStream {
    let s = tokio::net::TcpSocket::new_v4().expect("socket");
    s.bind(format!("{from}:0").parse().expect("addr"))
        .expect("bind");
    s.connect(format!("127.0.0.1:{port}").parse().expect("addr"))
        .await
        .expect("connect")
}

/// Harbor's webhook, with the right secret, for an image no rule of these
/// configs is about (answered 422).
async fn authenticated_webhook(
    http: &reqwest::Client,
    base: &str,
) -> reqwest::Result<reqwest::Response> {
    http.post(format!("{base}/webhooks/harbor"))
        .header("authorization", WEBHOOK_SECRET)
        .header("content-type", "application/json")
        .body(push_event(
            "library/app",
            Some("1"),
            &format!("sha256:{}", "a".repeat(64)),
        ))
        .timeout(Duration::from_secs(5))
        .send()
        .await
}

async fn assert_ready(relay: &Relay) {
    let (status, body) = relay.get("/readyz").await;
    assert_eq!(status, 200, "the daemon is not ready: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_realm_on_another_host_gets_no_credentials_and_fails_the_job_naming_it() {
    let foreign = Recorder::start().await;
    let source = HostileRegistry::start(Attack::Realm(format!("{}/steal", foreign.url))).await;
    let (relay, job, _target) = copy_from(&source, "").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "a refused realm is permanent: {job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(
        err.contains(&foreign.host()) && err.contains("token_realm_hosts"),
        "{err}"
    );
    assert!(foreign.seen().is_empty(), "{:?}", foreign.seen());
    foreign.assert_no_credentials(&[PASS]);
    assert_ready(&relay).await;

    // Listed in token_realm_hosts, a plain-HTTP realm of a plain-HTTP
    // registry is used (and the recorder, which grants nothing, refuses).
    let (_relay, job, _target) = copy_from(&source, &allow_realm(&foreign)).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert!(
        foreign.seen().iter().any(|s| s.path.starts_with("/steal")),
        "an allowed realm is asked: {:?}",
        foreign.seen()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_store_that_answers_401_with_its_own_realm_learns_nothing() {
    let foreign = Recorder::start().await;
    // The registry's own host on another port: followed (issue 25 lets a
    // plain-HTTP redirect go only there).
    let source = HostileRegistry::start(Attack::BlobRedirect(foreign.url.clone())).await;
    // Even with the store's host allowed as a realm host, a challenge from
    // it is not learned: only the registry's own answers teach auth.
    let (relay, job, _target) = copy_from(&source, &allow_realm(&foreign)).await;
    assert_eq!(job["state"], "failed", "{job}");
    let seen = foreign.seen();
    assert!(
        seen.iter().any(|s| s.path.starts_with("/store/")),
        "the redirect was followed: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.path.starts_with("/steal")),
        "the store's realm was learned: {seen:?}"
    );
    foreign.assert_no_credentials(&[PASS]);
    assert_ready(&relay).await;
}

/// A blob redirect to plain HTTP on another host (`localhost`, not the
/// registry's `127.0.0.1`: a blind SSRF to whatever the jump VM reaches) is
/// not followed, the job fails at once, and the error names where it
/// pointed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_redirect_to_plain_http_elsewhere_is_not_followed() {
    let foreign = Recorder::start().await;
    let elsewhere = foreign.url.replace("127.0.0.1", "localhost");
    let source = HostileRegistry::start(Attack::BlobRedirect(elsewhere)).await;
    let (relay, job, _target) = copy_from(&source, "").await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "a refused redirect is permanent: {job}");
    let err = job["last_error"].as_str().expect("error");
    let host = foreign.host().replace("127.0.0.1", "localhost");
    assert!(err.contains(&host) && err.contains("not followed"), "{err}");
    assert!(foreign.seen().is_empty(), "{:?}", foreign.seen());
    assert_ready(&relay).await;
}

/// A blob redirect to HTTPS elsewhere is followed (a blob store behind
/// Harbor), but what that host answers is not the registry's: its body
/// never reaches the job's error (which the jobs API shows), its host is
/// named instead, and its 401 teaches no auth. The other host is a real
/// distribution registry over TLS, whose 401 body says
/// "authentication required".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_redirect_echoes_no_body_from_the_other_host() {
    let w = World::new().await;
    // To a blob path of the other registry (the rest of the redirect in
    // the query), which it answers 401 with its JSON error body.
    let to = format!(
        "{}/v2/library/app/blobs/sha256:{}?",
        w.target.url,
        "0".repeat(64)
    );
    let source = HostileRegistry::start_tls(Attack::BlobRedirect(to), &w.pki).await;
    let tls = format!("tls = {{ ca_file = \"{}\" }}", w.pki.ca_pem.display());
    let (relay, job, _target) = copy_from(&source, &tls).await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = job["last_error"].as_str().expect("error");
    let host = w.target.url.trim_start_matches("https://");
    assert!(err.contains(&format!("redirected to {host}")), "{err}");
    assert!(
        !err.contains("authentication required") && !err.contains("UNAUTHORIZED"),
        "the other host's body was echoed: {err}"
    );
    assert_ready(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_location_on_another_host_is_not_followed() {
    let foreign = Recorder::start().await;
    let source = HostileRegistry::start(Attack::None).await;
    let target = HostileRegistry::start(Attack::UploadLocation(foreign.url.clone())).await;
    let target_toml =
        hostile_toml(&target.url, "").replace("registries.external", "registries.integrated");
    let (relay, job) = run_one(
        &hostile_toml(&source.url, ""),
        &target_toml,
        "target_project = \"mirror\"",
        &source.digest,
    )
    .await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(
        err.contains("Location") && err.contains(&foreign.host()),
        "the error names the foreign host: {err}"
    );
    assert!(foreign.seen().is_empty(), "{:?}", foreign.seen());
    assert_ready(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paging_link_to_another_host_is_refused() {
    let foreign = Recorder::start().await;
    let source = HostileRegistry::start(Attack::TagsLink(foreign.url.clone())).await;
    let client = hostile_client(&source.url, RegistryLimits::default());
    let err = client.tags("library/app").await.expect_err("refused");
    let text = err.to_string();
    assert!(err.is_permanent(), "{text}");
    assert!(
        text.contains("Link") && text.contains(&foreign.host()),
        "{text}"
    );
    assert!(foreign.seen().is_empty(), "{:?}", foreign.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_pages_stop_at_max_list_bytes() {
    let source = HostileRegistry::start(Attack::EndlessPages(100_000)).await;
    let limits = RegistryLimits {
        max_list_bytes: 450_000,
        ..RegistryLimits::default()
    };
    let client = hostile_client(&source.url, limits);
    let err = client.tags("library/app").await.expect_err("too much");
    assert!(err.to_string().contains("max_list_bytes"), "{err}");
    assert!(source.pages() <= 5, "read {} pages", source.pages());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_header_that_is_a_path_is_refused() {
    let evil = "../../../../../api/v2.0/users?evil=1";
    let source = HostileRegistry::start(Attack::DigestHeader(evil.into())).await;
    let client = hostile_client(&source.url, RegistryLimits::default());
    let err = client
        .resolve("library/app", &Reference::Tag("1".into()))
        .await
        .expect_err("refused");
    assert!(err.is_permanent(), "{err}");
    assert!(err.to_string().contains("not a digest"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_retry_after_neither_panics_nor_freezes_the_registry() {
    let source = HostileRegistry::start(Attack::RetryAfter("18446744073709551615".into())).await;
    let (relay, job, target) = copy_from(&source, "max_retry_after = \"1s\"").await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(source.throttled(), 2, "one 429, then the manifest");
    assert_ready(&relay).await;
    let dst = client(&target.url, None, TlsMode::System);
    assert!(
        dst.has_manifest("library/app", &source.digest)
            .await
            .expect("HEAD")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harbors_basic_challenge_to_a_refused_token_keeps_the_client_on_tokens() {
    let harbor = HarborAuth::start().await;
    let client = hostile_client(&harbor.url, RegistryLimits::default());
    let (location, _) = client
        .begin_upload("library/app", "opening an upload")
        .await
        .expect("upload session");
    // Harbor maps DELETE to the `delete` action: the pull,push token is
    // refused with `Basic realm="harbor"`.
    client.cancel_upload("library/app", location.as_str()).await;
    let digest = format!("sha256:{}", "0".repeat(64));
    assert!(!client.has_blob("library/app", &digest).await.expect("HEAD"));
    assert_eq!(
        harbor.basic_uses(),
        0,
        "the client switched to Basic auth: {:?}",
        harbor.seen.lock().expect("seen")
    );
    let seen = harbor.seen.lock().expect("seen").clone();
    let deletes: Vec<_> = seen.iter().filter(|(m, _, _)| m == "DELETE").collect();
    assert_eq!(deletes.len(), 2, "{seen:?}");
    assert!(deletes[1].2.starts_with("Bearer "), "{seen:?}");
    let head = seen.iter().rfind(|(m, _, _)| m == "HEAD").expect("a HEAD");
    assert!(head.2.starts_with("Bearer "), "{seen:?}");
}

/// Every place taken by idle keep-alive connections from several addresses
/// (each under its own cap): Harbor's webhook still gets in, because the
/// idlest connection that never authenticated is closed to make room; the
/// flood's unauthenticated webhooks are not charged to Harbor's rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_house_of_idle_connections_makes_room_for_harbor() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let port = free_port();
    let _relay = RawRelay::spawn(
        port,
        &format!(
            "webhook_auth = \"{WEBHOOK_SECRET}\"\nmax_connections_per_client = 16\nmax_connections = 64\nwebhook_rate_limit = 2\n"
        ),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_answers(&http, &format!("{base}/healthz"), "the relay did not start").await;
    // 4 addresses x 16 keep-alive connections, each having made a request
    // (unauthenticated webhooks: charged to no one) and now idle.
    let mut idle = Vec::new();
    for a in 2..6u8 {
        for _ in 0..16 {
            let mut c = connect_from(&format!("127.0.0.{a}"), port).await;
            c.write_all(b"POST /webhooks/harbor HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 0\r\n\r\n")
                .await
                .expect("write");
            let mut buf = [0u8; 512];
            let n = c.read(&mut buf).await.expect("read");
            assert!(
                String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 401"),
                "{}",
                String::from_utf8_lossy(&buf[..n])
            );
            idle.push(c);
        }
    }
    // Harbor's own address first sends unauthenticated webhooks (another
    // process on its host, or behind its NAT), more than its burst.
    let harbor = reqwest::Client::builder()
        .local_address(Some("127.0.0.9".parse().expect("ip")))
        .build()
        .expect("client");
    for _ in 0..10 {
        let r = harbor
            .post(format!("{base}/webhooks/harbor"))
            .header("content-type", "application/json")
            .body("{}")
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("unauthenticated webhook");
        assert_eq!(r.status(), 401);
    }
    // Then Harbor's genuine webhooks, as many as its burst (twice the rate
    // of 2): none was used up by the refused ones.
    for i in 0..4 {
        let r = authenticated_webhook(&harbor, &base)
            .await
            .unwrap_or_else(|e| panic!("webhook {i} with every place taken: {e}"));
        assert_eq!(r.status(), 422, "answered (no rule in this config)");
    }
    // The closed ones were the flood's: some of its sockets see their end.
    let mut closed = 0;
    for c in idle.iter_mut() {
        let mut buf = [0u8; 16];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), c.read(&mut buf)).await {
            closed += 1;
        }
    }
    assert!(closed >= 1, "no idle connection was closed to make room");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_from_one_address_do_not_lock_out_another() {
    let port = free_port();
    let _relay = RawRelay::spawn(
        port,
        &format!("webhook_auth = \"{WEBHOOK_SECRET}\"\nmax_connections_per_client = 8\n"),
    );
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until_answers(&http, &format!("{base}/healthz"), "the relay did not start").await;

    // 40 idle connections from 127.0.0.2: more than its cap, sending nothing.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(connect_from("127.0.0.2", port).await);
    }
    // Another address still gets answers at once.
    let fresh = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    for _ in 0..5 {
        let r = fresh
            .get(format!("{base}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("healthz while flooded");
        assert_eq!(r.status(), 200);
    }
    let r = authenticated_webhook(&fresh, &base)
        .await
        .expect("webhook while flooded");
    assert_eq!(r.status(), 422, "answered (no rule in this config)");

    // One more from the flooded address is told why, not reset: 503 with
    // Retry-After (once the refusals of the flood have been answered).
    let wait = Deadline::new(Duration::from_secs(10));
    loop {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let mut c = connect_from("127.0.0.2", port).await;
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), c.read_to_end(&mut answer)).await;
        let text = String::from_utf8_lossy(&answer).to_string();
        if text.starts_with("HTTP/1.1 503") {
            assert!(text.contains("Retry-After: 1"), "{text}");
            assert!(text.contains("server.max_connections_per_client"), "{text}");
            break;
        }
        wait.tick(|| format!("never told why: {text:?}")).await;
    }

    // A connection that sends nothing is closed after the first-request
    // deadline (10 s).
    use tokio::io::AsyncReadExt as _;
    let mut first = idle.swap_remove(0);
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(20), first.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "an idle connection stayed open: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503_with_retry_after() {
    // Registries that do not answer: every job waits for a retry.
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", "http://127.0.0.1:9", None, ""),
        registry_toml("integrated", "http://127.0.0.1:9", None, ""),
    )
    .replace(
        "url = \"http://127.0.0.1:9\"\n",
        "url = \"http://127.0.0.1:9\"\nrequest_attempts = 1\n",
    );
    let relay = Relay::start_with_jobs(
        "workers = 1\nmax_queued = 3\nretry_initial_delay = \"1h\"\nretry_max_delay = \"1h\"\n",
        &config,
    )
    .await;
    let mut accepted = 0;
    let mut refused = None;
    for i in 0..12 {
        let digest = format!("sha256:{:064x}", i + 1);
        let (status, body) = relay
            .webhook(
                push_event("library/app", Some(&format!("t{i}")), &digest),
                "application/json",
                Some(WEBHOOK_SECRET),
            )
            .await;
        match status {
            202 => accepted += 1,
            503 => {
                refused = Some(body);
                break;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = refused.expect("the queue never filled");
    assert!(body.to_string().contains("jobs.max_queued"), "{body}");
    assert!(accepted <= 3 + 1, "accepted {accepted} with max_queued = 3");
    let metrics = relay.get("/metrics").await.1.to_string();
    assert!(
        metrics.contains("outcome=\\\"queue_full\\\"} 1"),
        "{metrics}"
    );
}
