//! Gated rules end to end (issue 26): the daemon, real registries, and for
//! the scan gate the Harbor double's scanner (`support/harbor/scans.rs`,
//! from Harbor's source). Signatures are made here in cosign's formats
//! (`support/cosign.rs`). Each rule looks again by itself only once an
//! hour (`gate_recheck = "1h"`), so a job that crosses after an event was
//! released by that event.

mod support;

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use harbor_relay::registry::Registry;
use serde_json::json;
use support::cosign::*;
use support::*;

const ADMIN_PASS: &str = "harbor-admin-pw";

/// Writes each key's public half as `<name>.pub` in `dir`; their paths.
fn key_files(dir: &std::path::Path, keys: &[(&str, &CosignKey)]) -> Vec<String> {
    keys.iter()
        .map(|(name, k)| {
            let p = dir.join(format!("{name}.pub"));
            std::fs::write(&p, k.public_pem()).expect("key file");
            p.display().to_string()
        })
        .collect()
}

/// What `tag` resolves to in `repo` on `reg`.
async fn digest_of(reg: &Registry, repo: &str, tag: &str) -> String {
    reg.resolve(repo, &Reference::Tag(tag.into()))
        .await
        .expect("resolve")
        .expect("tag there")
}

async fn absent(reg: &Registry, repo: &str, digest: &str) -> bool {
    !reg.has_manifest(repo, digest).await.expect("HEAD")
}

fn sig_tag(digest: &str) -> String {
    format!("sha256-{}.sig", digest.trim_start_matches("sha256:"))
}

/// A Harbor Default-format `SCANNING_*` body for `digest` in `repo`, as
/// Harbor sends it for an index's child: no tag, a digest-only
/// `resource_url` (`gates.md` §7).
fn scan_event(kind: &str, repo: &str, digest: &str) -> Vec<u8> {
    let (ns, name) = repo.split_once('/').expect("project/name");
    serde_json::to_vec(&json!({
        "type": kind, "occur_at": 1767225661, "operator": "ci-pusher",
        "event_data": {
            "resources": [{"digest": digest, "resource_url": format!("src.example.com/{repo}@{digest}")}],
            "repository": {"name": name, "namespace": ns, "repo_full_name": repo, "repo_type": "private"},
            "scan": {"scan_type": "vulnerability"}
        }
    }))
    .expect("json")
}

/// What `rules test --gates` prints for `image`.
fn gates_verdicts(file: &ConfigFile, image: &str) -> String {
    let args = [
        "rules",
        "test",
        "--config",
        file.path.as_str(),
        "--gates",
        image,
    ];
    expect_success(&relay_cmd(&args))
}

/// One job's id from a push webhook.
async fn one_job(relay: &Relay, body: Vec<u8>) -> u64 {
    let ids = relay.push(body).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0]
}

fn reason(job: &serde_json::Value) -> &str {
    job["reason"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_signature_gate_holds_until_signed_and_refuses_what_is_not_a_signature_of_it() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let (ci, release) = (CosignKey::new("ci"), CosignKey::new("release"));
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = key_files(dir.path(), &[("ci", &ci), ("release", &release)]);
    let config = format!(
        "{}{}[[rules]]\nname = \"signed\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"team\"]\nrequire_signature = {{ keys = [\"{}\", \"{}\"] }}\ngate_recheck = \"1h\"\nhold_for = \"2h\"\n\n[[rules]]\nname = \"short\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"short\"]\nrequire_signature = {{ keys = [\"{}\"] }}\ngate_recheck = \"1s\"\nhold_for = \"3s\"\n",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &target.url, None, ""),
        keys[0],
        keys[1],
        keys[0],
    );
    let relay = Relay::start(&config).await;

    // Unsigned: held, nothing written.
    let a = TestImage::pushed(&src, "team/app", &[20_000]).await;
    let id = one_job(&relay, push_event("team/app", Some("1"), &a.digest)).await;
    let job = relay.wait_state(id, "held").await;
    assert_eq!(
        reason(&job),
        "signature: waiting for a signature by one of 2 keys: no signature yet",
        "{job}"
    );
    assert!(job["held_since"].is_string(), "{job}");
    assert!(absent(&dst, "team/app", &a.digest).await);
    let (_, listed) = relay.get("/api/v1/jobs?state=held").await;
    assert!(
        listed.to_string().contains(&format!("\"id\":{id}")),
        "{listed}"
    );

    // cosign signs: the .sig tag's push webhook releases it, and the
    // signature crosses with it.
    let signed = payload(&a.digest, "harbor.example.com/team/app");
    push_sig_tag(&src, "team/app", &a.digest, &signed, &ci).await;
    let sig = digest_of(&src, "team/app", &sig_tag(&a.digest)).await;
    let sig_job = one_job(
        &relay,
        push_event("team/app", Some(&sig_tag(&a.digest)), &sig),
    )
    .await;
    relay.wait_success(id).await;
    assert_image_on(&dst, "team/app", &a, Some("1")).await;
    relay.wait_success(sig_job).await;
    assert_eq!(digest_of(&dst, "team/app", &sig_tag(&a.digest)).await, sig);

    // A's signature replayed under B's .sig tag verifies, but names A.
    let b = TestImage::pushed(&src, "team/other", &[20_000]).await;
    push_sig_tag(&src, "team/other", &b.digest, &signed, &ci).await;
    let id_b = one_job(&relay, push_event("team/other", Some("1"), &b.digest)).await;
    let job = relay.wait_state(id_b, "held").await;
    assert!(
        reason(&job).contains(&format!("not of {}", b.digest)),
        "{job}"
    );
    let sig_b = digest_of(&src, "team/other", &sig_tag(&b.digest)).await;
    let sig_job = one_job(
        &relay,
        push_event("team/other", Some(&sig_tag(&b.digest)), &sig_b),
    )
    .await;
    let job = relay.wait_state(sig_job, "held").await;
    assert!(
        reason(&job).contains("not of"),
        "the signature is gated on its subject: {job}"
    );
    assert_eq!(relay.job(id_b).await["state"], "held");
    assert!(absent(&dst, "team/other", &b.digest).await);
    assert!(
        absent(&dst, "team/other", &sig_b).await,
        "nor its signature"
    );
    // Reconcile passes the same gates: the difference stays uncopied.
    let file = ConfigFile::new(&config);
    // `rules test --gates` says what a job would: read, nothing written.
    let stdout = gates_verdicts(&file, "team/app:1");
    assert!(
        stdout.contains(&format!("rule 'signed': gates on {}", a.digest)),
        "{stdout}"
    );
    assert!(stdout.contains("signature: pass — signed by"), "{stdout}");
    assert!(stdout.contains("=> a job would copy it now"), "{stdout}");
    let stdout = gates_verdicts(&file, "team/other:1");
    assert!(
        stdout.contains("signature: hold — waiting for a signature"),
        "{stdout}"
    );
    assert!(
        stdout.contains("=> a job would be held, looking again every 1h and failing after 2h"),
        "{stdout}"
    );
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        file.path.as_str(),
        "--rule",
        "signed",
    ]);
    let stdout = expect_success(&out);
    assert!(
        stdout.contains("not copied team/other:1: held: signature: waiting for a signature"),
        "{stdout}"
    );
    assert!(absent(&dst, "team/other", &b.digest).await);

    // Signed by a key the rule does not trust: held, then failed after
    // hold_for, saying why.
    let c = TestImage::pushed(&src, "short/app", &[5_000]).await;
    let intruder = CosignKey::new("intruder");
    push_sig_tag(
        &src,
        "short/app",
        &c.digest,
        &payload(&c.digest, "h/short/app"),
        &intruder,
    )
    .await;
    let id_c = one_job(&relay, push_event("short/app", Some("1"), &c.digest)).await;
    let job = relay.wait_job(id_c).await;
    assert_eq!(job["state"], "failed", "{job}");
    let error = job["last_error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("held for 3s (hold_for) and not released"),
        "{error}"
    );
    assert!(
        error.contains("signed by none of the trusted keys"),
        "{error}"
    );
    assert!(absent(&dst, "short/app", &c.digest).await);

    let (_, metrics) = relay.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    for verdict in ["hold", "pass"] {
        let series = format!(
            "harbor_relay_gate_decisions_total{{gate=\"signature\",rule=\"signed\",verdict=\"{verdict}\"}}"
        );
        assert!(metrics.contains(&series), "{series} in\n{metrics}");
    }
    assert!(metrics.contains("harbor_relay_jobs_held 2"), "{metrics}");
}

/// cosign 3 signs an index with a bundle referrer (listed in the
/// `sha256-<hex>` fallback index on a registry without the referrers
/// API): the index is gated on its own digest, its children (pushed by
/// digest, unsigned) cross with it and are never judged alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_is_gated_on_its_own_digest_and_released_by_its_bundle() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let ci = CosignKey::new("ci");
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = key_files(dir.path(), &[("ci", &ci)]);
    let config = format!(
        "{}{}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nrequire_signature = {{ keys = [\"{}\"], match_reference = true }}\ngate_recheck = \"1h\"\n",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &target.url, None, ""),
        keys[0],
    );
    let relay = Relay::start(&config).await;
    let idx = TestIndex::random();
    idx.push(&src, "team/multi", "v1").await;
    let child = &idx.images[0].digest;
    let id = one_job(&relay, push_event("team/multi", None, child)).await;
    let job = relay.wait_success(id).await;
    assert!(
        job["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("not a referrer")),
        "a child by digest is not judged alone: {job}"
    );
    let id = one_job(&relay, push_event("team/multi", Some("v1"), &idx.digest)).await;
    relay.wait_state(id, "held").await;
    push_bundle(
        &src,
        "team/multi",
        &idx.digest,
        idx.manifest.len(),
        &idx.digest,
        &ci,
    )
    .await;
    let fallback = format!("sha256-{}", idx.digest.trim_start_matches("sha256:"));
    let listing = digest_of(&src, "team/multi", &fallback).await;
    let _ = relay
        .push(push_event("team/multi", Some(&fallback), &listing))
        .await;
    relay.wait_success(id).await;
    assert_eq!(digest_of(&dst, "team/multi", "v1").await, idx.digest);
    for i in &idx.images {
        assert!(
            !absent(&dst, "team/multi", &i.digest).await,
            "child {}",
            i.digest
        );
    }
}

/// The scan gate against the Harbor double's scanner: a running scan
/// holds, `SCANNING_COMPLETED` releases (the API is read again: the event
/// is a hint), a critical finding refuses for good, and an index waits for
/// every child, released by a child's digest-only event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scan_gate_holds_until_scanned_and_refuses_what_is_above_the_threshold() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = support::harbor::FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let plain = client(&registry.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    harbor.enable_scanner();
    let config = format!(
        "[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n{}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"team\"]\nmax_severity = \"high\"\ngate_recheck = \"1h\"\n",
        harbor.url(),
        registry_toml("integrated", &target.url, None, ""),
    );
    let relay = Relay::start(&config).await;

    let img = TestImage::pushed(&plain, "team/app", &[10_000]).await;
    harbor.scanning(&img.digest, 40);
    let id = one_job(&relay, push_event("team/app", Some("1"), &img.digest)).await;
    let job = relay.wait_state(id, "held").await;
    assert_eq!(reason(&job), "scan: scan running, 40 %", "{job}");
    // The event says completed before the API does: still held.
    let (status, v) = relay
        .deliver(scan_event("SCANNING_COMPLETED", "team/app", &img.digest))
        .await;
    assert_eq!((status, v["released"].as_u64()), (200, Some(1)), "{v}");
    let wait = Deadline::new(std::time::Duration::from_secs(30));
    while relay.job(id).await["state"] != "held" || relay.job(id).await["attempts"] != 0 {
        wait.tick(|| "the released job looks again".to_string())
            .await;
    }
    assert!(absent(&dst, "team/app", &img.digest).await);
    harbor.scanned(
        &img.digest,
        &[("CVE-2026-1", "High"), ("CVE-2026-2", "Low")],
    );
    let (status, v) = relay
        .deliver(scan_event("SCANNING_COMPLETED", "team/app", &img.digest))
        .await;
    assert_eq!(
        (status, v["status"].as_str()),
        (200, Some("released")),
        "{v}"
    );
    relay.wait_success(id).await;
    assert_image_on(&dst, "team/app", &img, Some("1")).await;

    // Critical: refused, not retried; a redelivery folds into it.
    let bad = TestImage::pushed(&plain, "team/bad", &[10_000]).await;
    harbor.scanned(&bad.digest, &[("CVE-2026-9", "Critical")]);
    let body = push_event("team/bad", Some("1"), &bad.digest);
    let id = one_job(&relay, body.clone()).await;
    let job = relay.wait_job(id).await;
    assert_eq!(job["state"], "refused", "{job}");
    assert!(reason(&job).contains("Critical"), "{job}");
    assert!(absent(&dst, "team/bad", &bad.digest).await);
    let (status, v) = relay.deliver(body).await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(
        (
            v["jobs"][0]["id"].as_u64(),
            v["jobs"][0]["coalesced"].as_bool()
        ),
        (Some(id), Some(true)),
        "{v}"
    );

    // An index: no overview until every child has a report.
    let idx = TestIndex::random();
    idx.push(&plain, "team/multi", "v1").await;
    let (first, second) = (&idx.images[0].digest, &idx.images[1].digest);
    harbor.scanned(first, &[]);
    let id = one_job(&relay, push_event("team/multi", Some("v1"), &idx.digest)).await;
    let job = relay.wait_state(id, "held").await;
    assert_eq!(reason(&job), "scan: not scanned yet", "{job}");
    harbor.scanned(second, &[("CVE-2026-3", "Medium")]);
    let (status, v) = relay
        .deliver(scan_event("SCANNING_COMPLETED", "team/multi", second))
        .await;
    assert_eq!((status, v["released"].as_u64()), (200, Some(1)), "{v}");
    relay.wait_success(id).await;
    assert_eq!(digest_of(&dst, "team/multi", "v1").await, idx.digest);
}
