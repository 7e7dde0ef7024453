//! Hostile webhook payloads: none of them may steer the daemon to another
//! host, reach a URL unchecked, or store anything. Each is refused with a
//! precise status (a well-formed event about a repository no rule is about
//! gets 422 with the reason).

mod support;

use serde_json::{Value, json};
use support::*;

fn event(repo_full: &str, tag: Value, digest: Value, resource_url: &str) -> Vec<u8> {
    let (namespace, name) = repo_full.split_once('/').unwrap_or(("", repo_full));
    serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1724572800, "operator": "admin",
        "event_data": {
            "resources": [{"digest": digest, "tag": tag, "resource_url": resource_url}],
            "repository": {"name": name, "namespace": namespace, "repo_full_name": repo_full, "repo_type": "private"}
        }
    }))
    .expect("json")
}

const DIGEST: &str = "sha256:947f187506f7629c81c81879a2cb2256455038e4ac770091d897fa0a8b945e3b";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_refused_and_store_nothing() {
    let w = World::new().await;
    let relay = Relay::start(&w.config()).await;
    let send = |body: Vec<u8>| relay.webhook(body, "application/json", Some(WEBHOOK_SECRET));

    let bad: Vec<(&str, Vec<u8>)> = vec![
        (
            "../ in the repository",
            event("library/../../etc", json!("1"), json!(DIGEST), "h/x:1"),
        ),
        (
            "a path trick in the tag",
            event(
                "library/app",
                json!("../../v2/_catalog"),
                json!(DIGEST),
                "h/x:1",
            ),
        ),
        (
            "an overlong repository",
            event(
                &format!("library/{}", "a".repeat(300)),
                json!("1"),
                json!(DIGEST),
                "h/x:1",
            ),
        ),
        (
            "an overlong tag",
            event(
                "library/app",
                json!("t".repeat(129)),
                json!(DIGEST),
                "h/x:1",
            ),
        ),
        (
            "unicode look-alikes",
            event("library/аpp", json!("1"), json!(DIGEST), "h/x:1"),
        ),
        (
            "upper case in the repository",
            event("Library/App", json!("1"), json!(DIGEST), "h/x:1"),
        ),
        (
            "a short digest",
            event("library/app", json!("1"), json!("sha256:abcd"), "h/x:1"),
        ),
        (
            "an unknown digest algorithm",
            event(
                "library/app",
                json!("1"),
                json!(format!("md5:{}", "a".repeat(32))),
                "h/x:1",
            ),
        ),
        (
            "a digest with a path",
            event(
                "library/app",
                Value::Null,
                json!(format!("sha256:{}/../x", "a".repeat(64))),
                "h/x:1",
            ),
        ),
        (
            "a number as the tag",
            event("library/app", json!(17), json!(DIGEST), "h/x:1"),
        ),
        (
            "nested too deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
        ("not JSON", b"\xff\xfe{".to_vec()),
    ];
    for (what, body) in bad {
        let (status, v) = send(body).await;
        assert_eq!(status, 400, "{what}: {v}");
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {v}"
        );
    }

    // Thousands of resources in one event: refused as too large or too many,
    // never turned into thousands of jobs.
    let many: Vec<Value> = (0..20_000)
        .map(|i| json!({"digest": DIGEST, "tag": format!("t{i}"), "resource_url": "h/x"}))
        .collect();
    let body = serde_json::to_vec(&json!({
        "type": "PUSH_ARTIFACT", "occur_at": 1, "operator": "x",
        "event_data": {"resources": many, "repository": {"name": "app", "namespace": "library", "repo_full_name": "library/app", "repo_type": "private"}}
    }))
    .expect("json");
    let (status, v) = send(body).await;
    assert!(status == 413 || status == 400, "{status} {v}");

    // Nothing of the above was stored.
    let (_, all) = relay.get("/api/v1/jobs").await;
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(0), "{all}");

    // A foreign host in resource_url changes nothing: the job reads from
    // the configured source registry.
    let img = TestImage::random(&[10_000]);
    img.push(
        &w.src,
        "library/app",
        &harbor_relay::reference::Reference::Tag("1".into()),
    )
    .await;
    let ids = relay
        .push(event(
            "library/app",
            json!("1"),
            json!(img.digest),
            "evil.example.com:443/library/app:1",
        ))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["source"], "external/library/app:1", "{job}");
    assert!(
        !relay.logs().contains("evil.example.com"),
        "the foreign host was used"
    );
}

/// The Authorization headers the store was sent (None: none).
type Seen = std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>;
/// What the store's handler needs: what it saw, the registry, its
/// credentials, a client.
type StoreState = (Seen, String, (String, String), reqwest::Client);

/// Blob storage on another host, as registries with S3 or a CDN behind
/// them redirect to: records the Authorization headers it is sent and
/// serves the blob from the registry with its own credentials.
async fn blob_store(
    registry: String,
    user: &str,
    pass: &str,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<Option<String>>>>,
) {
    use axum::extract::{Path, State};
    let seen: Seen = Default::default();
    let creds = (user.to_string(), pass.to_string());
    let http = reqwest::Client::new();
    let app = axum::Router::new()
        .route(
            "/store/{*path}",
            axum::routing::get(
                |State((seen, registry, creds, http)): State<StoreState>,
                 Path(path): Path<String>,
                 headers: axum::http::HeaderMap| async move {
                    seen.lock().expect("lock").push(
                        headers
                            .get("authorization")
                            .map(|v| v.to_str().unwrap_or("?").to_string()),
                    );
                    let body = http
                        .get(format!("{registry}/{path}"))
                        .basic_auth(&creds.0, Some(&creds.1))
                        .send()
                        .await
                        .expect("registry")
                        .bytes()
                        .await
                        .expect("body");
                    body.to_vec()
                },
            ),
        )
        .with_state((seen.clone(), registry, creds, http));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    // The registry's host on another port: a plain-HTTP redirect is
    // followed only there (issue 25), and the port alone makes it another
    // origin, to which no credential may go.
    (format!("http://127.0.0.1:{port}/store"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_another_host_never_carries_the_registrys_credentials() {
    const SRC_PASS: &str = "source-pa55-Kq2";
    let source = RegistryProc::start(
        None,
        Auth::Basic {
            user: "reader".into(),
            pass: SRC_PASS.into(),
        },
    )
    .await;
    let w = World::new().await;
    let src = client(
        &source.url,
        Some(("reader", SRC_PASS)),
        harbor_relay::config::TlsMode::System,
    );
    let img = TestImage::random(&[70_000, 30_000]);
    img.push(
        &src,
        "library/app",
        &harbor_relay::reference::Reference::Tag("1".into()),
    )
    .await;
    let (store, seen) = blob_store(source.url.clone(), "reader", SRC_PASS).await;
    // Blob GETs are answered with a redirect to the store; the rest goes
    // to the registry.
    let redirect = axum::Router::new().route(
        "/v2/library/app/blobs/{digest}",
        axum::routing::get(
            move |axum::extract::Path(digest): axum::extract::Path<String>| {
                let to = format!("{store}/v2/library/app/blobs/{digest}");
                async move { axum::response::Redirect::temporary(&to) }
            },
        ),
    );
    let proxy = support::fault::FaultProxy::start_with_routes(&source.url, redirect).await;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &proxy.url, Some(("reader", SRC_PASS)), ""),
        w.target_toml(),
    );
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/app", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/app", &img, Some("1")).await;
    let seen = seen.lock().expect("lock").clone();
    assert!(
        seen.len() >= 3,
        "the blobs came through the store: {seen:?}"
    );
    assert!(
        seen.iter().all(Option::is_none),
        "credentials followed the redirect to another host: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_over_the_rate_limit_gets_429_and_slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let _relay = RawRelay::spawn(
        port,
        &format!("webhook_auth = \"{WEBHOOK_SECRET}\"\nwebhook_rate_limit = 2"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_until_answers(&http, &format!("{url}/healthz"), "daemon did not start").await;

    // A burst of twice the rate passes, then 429 with Retry-After.
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..10 {
        let resp = http
            .post(format!("{url}/webhooks/harbor"))
            .header("content-type", "application/json")
            .header("authorization", WEBHOOK_SECRET)
            .body(push_event("library/app", Some("1"), DIGEST))
            .send()
            .await
            .expect("POST");
        if resp.status() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(resp.status().as_u16());
    }
    assert!(statuses[..4].iter().all(|s| *s != 429), "{statuses:?}");
    assert!(statuses[4..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "no Retry-After");
    let metrics = http
        .get(format!("{url}/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("outcome=\"rate_limited\""), "{metrics}");

    // Headers that never end: the connection is closed, not held open.
    let started = std::time::Instant::now();
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    sock.write_all(b"POST /webhooks/harbor HTTP/1.1\r\nHost: relay\r\n")
        .await
        .expect("write");
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a connection with unfinished headers stayed open"
    );
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_speaks_tls_and_takes_a_new_certificate_on_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (old_dir, new_dir) = (dir.path().join("old"), dir.path().join("new"));
    std::fs::create_dir_all(&old_dir).expect("mkdir");
    std::fs::create_dir_all(&new_dir).expect("mkdir");
    let (old, new) = (Pki::new(&old_dir), Pki::new(&new_dir));
    let (cert, key) = (dir.path().join("relay.crt"), dir.path().join("relay.key"));
    std::fs::copy(&old.cert_pem, &cert).expect("cert");
    std::fs::copy(&old.key_pem, &key).expect("key");
    let port = free_port();
    let relay = RawRelay::spawn(
        port,
        &format!(
            "webhook_auth = \"{WEBHOOK_SECRET}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let trusting = |pki: &Pki| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_pem).expect("ca"))
            .expect("ca pem");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .build()
            .expect("client")
    };
    let url = format!("https://127.0.0.1:{port}");
    let old_client = trusting(&old);
    wait_until_answers(
        &old_client,
        &format!("{url}/healthz"),
        "no HTTPS on the listener",
    )
    .await;
    // Harbor's webhook, over TLS, to a client that trusts the relay's CA.
    let resp = old_client
        .post(format!("{url}/webhooks/harbor"))
        .header("content-type", "application/json")
        .header("authorization", WEBHOOK_SECRET)
        .body(push_event("library/app", Some("1"), DIGEST))
        .send()
        .await
        .expect("webhook over TLS");
    assert_eq!(resp.status(), 422, "no rules: refused with the reason");
    // Plain HTTP to the TLS port gets nowhere.
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true));

    // A new certificate, then SIGHUP: new connections get it.
    std::fs::copy(&new.cert_pem, &cert).expect("cert");
    std::fs::copy(&new.key_pem, &key).expect("key");
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &relay.pid().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let new_client = trusting(&new);
    wait_until_answers(
        &new_client,
        &format!("{url}/healthz"),
        "the new certificate was not taken",
    )
    .await;
    assert!(
        trusting(&old)
            .get(format!("{url}/healthz"))
            .send()
            .await
            .is_err(),
        "the old certificate is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_trickles_in_is_cut_off_with_408_after_30_seconds() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port = free_port();
    let _relay = RawRelay::spawn(port, &format!("webhook_auth = \"{WEBHOOK_SECRET}\""));
    let http = reqwest::Client::new();
    wait_until_answers(
        &http,
        &format!("http://127.0.0.1:{port}/healthz"),
        "daemon did not start",
    )
    .await;
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    sock.write_all(
        format!(
            "POST /webhooks/harbor HTTP/1.1\r\nHost: relay\r\nContent-Type: application/json\r\nAuthorization: {WEBHOOK_SECRET}\r\nContent-Length: 1000\r\n\r\n{{"
        )
        .as_bytes(),
    )
    .await
    .expect("write");
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = sock.into_split();
    // One byte a second: never more than the header timeout apart, so only
    // the whole-request limit can end it.
    let trickle = tokio::spawn(async move {
        for _ in 0..120 {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    trickle.abort();
    assert!(read.is_ok(), "no answer within 60 s to a trickling body");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(29) && took < std::time::Duration::from_secs(40),
        "cut off after {took:?}"
    );
}

/// A compromised source serves manifests whose layer sizes lie: 1 TiB (over
/// `max_blob_size`) and less than the blob (the one-request path). Each
/// job fails at once on the size, blaming the source; the daemon reserves
/// nothing for the claim; the target gets no manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifests_lying_about_layer_sizes_fail_without_reserving_memory() {
    use harbor_relay::reference::Reference;
    let w = World::new().await;
    let relay = Relay::start(&w.config()).await;
    for (tag, claim) in [("tib", 1u64 << 40), ("short", 100_000)] {
        let honest = TestImage::random(&[200_000]);
        let mut m: Value = serde_json::from_slice(&honest.manifest).expect("manifest");
        m["layers"][0]["size"] = json!(claim);
        let manifest = bytes::Bytes::from(serde_json::to_vec(&m).expect("json"));
        let liar = TestImage {
            digest: harbor_relay::manifest::sha256_digest(&manifest),
            manifest,
            ..honest
        };
        liar.push(&w.src, "library/liar", &Reference::Tag(tag.into()))
            .await;
        let ids = relay
            .push(push_event("library/liar", Some(tag), &liar.digest))
            .await;
        let job = relay.wait_job(ids[0]).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert_eq!(
            job["attempts"], 1,
            "a lying manifest is not worth a retry: {job}"
        );
        let err = job["last_error"].as_str().expect("error");
        // 1 TiB is over the source's max_blob_size (20 GiB by default):
        // refused before anything is read (issue 25).
        let expected = match tag {
            "tib" => {
                "declared 1099511627776 bytes, over the 21474836480 bytes of registries.external.max_blob_size"
            }
            _ => "reading from source 'external' failed: size mismatch",
        };
        assert!(err.contains(expected), "{err}");
        assert!(
            !w.dst
                .has_manifest("library/liar", &liar.digest)
                .await
                .expect("HEAD")
        );
    }
    assert!(
        relay.peak_rss() < 100 << 20,
        "peak RSS {} bytes after a 1 TiB claim",
        relay.peak_rss()
    );
}

/// A client that opened a TCP connection to the HTTPS listener and never
/// sent its TLS handshake does not hold up a stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_does_not_hold_up_a_stop() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    let port = free_port();
    let mut relay = RawRelay::spawn(
        port,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            pki.cert_pem.display(),
            pki.key_pem.display()
        ),
    );
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_pem).expect("ca")).expect("ca");
    let client = reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("client");
    wait_until_answers(
        &client,
        &format!("https://127.0.0.1:{port}/healthz"),
        "no HTTPS on the listener",
    )
    .await;
    let _stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stopping = std::time::Instant::now();
    let status = relay.terminate();
    assert!(status.success(), "exit status {status}");
    assert!(
        stopping.elapsed() < std::time::Duration::from_secs(5),
        "took {:?} to stop",
        stopping.elapsed()
    );
}
