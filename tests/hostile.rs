//! Hostile webhook payloads: none of them may steer the daemon to another
//! host, reach a URL unchecked, or store anything. Each is refused with a
//! precise status, or, where it is a well-formed event no rule selects,
//! acknowledged with the reason.

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
