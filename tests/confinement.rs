//! Confinement (invariant 10): the relay's account can write every project
//! of the integrated Harbor, so it writes only what the matching rule maps
//! to. Each test plays what a hostile source, a source project or a forged
//! event asks beyond that, against real registries, and checks the target
//! afterwards: nothing reached what was not the asker's own.

mod support;

use harbor_relay::reference::Reference;
use support::fault::{Fault, FaultProxy};
use support::*;

fn not_found() -> Fault {
    Fault::Status {
        status: 404,
        retry_after: None,
    }
}

/// A DELETE_ARTIFACT event for `repo:tag` at `digest`, dated `occur_at`.
fn delete_event(repo: &str, tag: &str, digest: &str, occur_at: i64) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&push_event(repo, Some(tag), digest)).expect("json");
    v["type"] = "DELETE_ARTIFACT".into();
    v["occur_at"] = occur_at.into();
    serde_json::to_vec(&v).expect("json")
}

/// Finding 1: a source that names another project's layer in its manifest
/// and does not serve it gets nothing mounted or skipped for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_source_cannot_mount_another_projects_layer() {
    let w = World::new().await;
    let secret = TestImage::random(&[300_000, 200_000]);
    secret
        .push(&w.src, "secret/app", &Reference::Tag("1.0".into()))
        .await;
    // The same manifest under `evil/steal`: its blobs are the secret ones,
    // and the source (through the proxy) says it does not hold them there.
    secret
        .push(&w.src, "evil/steal", &Reference::Tag("1.0".into()))
        .await;
    let proxy = FaultProxy::start(&w.source.url).await;
    proxy.inject(None, "/v2/evil/steal/blobs/", usize::MAX, not_found());
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &proxy.url, None, ""),
        w.target_toml()
    );
    let relay = Relay::start_with_jobs("max_attempts = 1\n", &config).await;
    let ids = relay
        .push(push_event("secret/app", Some("1.0"), &secret.digest))
        .await;
    relay.wait_success(ids[0]).await;

    let ids = relay
        .push(push_event("evil/steal", Some("1.0"), &secret.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["blobs_mounted"].as_u64().unwrap_or(0), 0, "{job}");
    for digest in secret.blob_digests() {
        assert!(
            !w.dst.has_blob("evil/steal", &digest).await.expect("HEAD"),
            "{digest} reached evil/steal on the target: {job}"
        );
    }
    assert!(
        !w.dst
            .has_manifest("evil/steal", &secret.digest)
            .await
            .expect("HEAD"),
        "a manifest was written without its blobs"
    );
    // The source was asked for the blobs in evil/steal (and said no).
    let asked = proxy
        .requests()
        .iter()
        .filter(|(_, _, path, status)| path.contains("/v2/evil/steal/blobs/") && *status == 404)
        .count();
    assert!(asked >= 1, "the source was never asked for the blobs");
}

/// Finding 1, second half: a blob the source does hold is still mounted
/// only from the same target project; another project's copy is not used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mounts_stay_inside_one_target_project() {
    let w = World::new().await;
    let base = vec![random_bytes(300_000), random_bytes(200_000)];
    let image = |extra: usize| {
        TestImage::from_layers(
            [base.clone(), vec![random_bytes(extra)]].concat(),
            "linux",
            "amd64",
        )
    };
    let (a, b, a2) = (image(10_000), image(11_000), image(12_000));
    a.push(&w.src, "team-a/app", &Reference::Tag("1".into()))
        .await;
    b.push(&w.src, "team-b/app", &Reference::Tag("1".into()))
        .await;
    a2.push(&w.src, "team-a/other", &Reference::Tag("1".into()))
        .await;
    let relay = Relay::start(&w.config()).await;
    let ids = relay
        .push(push_event("team-a/app", Some("1"), &a.digest))
        .await;
    relay.wait_success(ids[0]).await;

    let ids = relay
        .push(push_event("team-b/app", Some("1"), &b.digest))
        .await;
    let jb = relay.wait_success(ids[0]).await;
    assert_eq!(jb["blobs_mounted"], 0, "mounted across projects: {jb}");
    assert_eq!(jb["blobs_copied"], 4, "{jb}");
    assert_image_on(&w.dst, "team-b/app", &b, Some("1")).await;

    // Inside team-a the shared layers are mounted, not sent again.
    let ids = relay
        .push(push_event("team-a/other", Some("1"), &a2.digest))
        .await;
    let j = relay.wait_success(ids[0]).await;
    assert_eq!(j["blobs_mounted"], 2, "{j}");
    assert_image_on(&w.dst, "team-a/other", &a2, Some("1")).await;
}

/// Finding 2: a delete event for what the source still holds deletes
/// nothing, a back-dated one is ignored when it is read, and after a
/// genuine delete the next push of the same digest copies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_or_replayed_delete_deletes_nothing_the_source_still_has() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/app", &[20_000]).await;
    let config = format!(
        "{}[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nreplicate_deletes = true\n",
        w.registries(),
    );
    let relay = Relay::start(&config).await;
    // push_event says occur_at 1724572800 (2024-08-25).
    let ids = relay
        .push(push_event("library/app", Some("1"), &img.digest))
        .await;
    let pushed = relay.wait_success(ids[0]).await;

    // Back-dated to 2017: older than the push, ignored at once.
    let ids = relay
        .push(delete_event("library/app", "1", &img.digest, 1_500_000_000))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["deleted"], false, "{job}");
    let why = job["skipped"].as_str().expect("a reason");
    assert!(why.contains("older than the push"), "{why}");
    assert!(why.contains(&format!("job {}", pushed["id"])), "{why}");
    assert_image_on(&w.dst, "library/app", &img, Some("1")).await;

    // Dated now, but the source still has the manifest: not deleted.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let ids = relay
        .push(delete_event("library/app", "1", &img.digest, now))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["deleted"], false, "{job}");
    let why = job["skipped"].as_str().expect("a reason");
    assert!(why.contains("the source still has"), "{why}");
    assert_image_on(&w.dst, "library/app", &img, Some("1")).await;

    // The genuine delete: the source deleted it first.
    assert!(
        w.src
            .delete_manifest("library/app", &img.digest)
            .await
            .expect("delete on the source")
    );
    let ids = relay
        .push(delete_event("library/app", "1", &img.digest, now + 1))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["deleted"], true, "{job}");
    assert!(
        !w.dst
            .has_manifest("library/app", &img.digest)
            .await
            .expect("HEAD")
    );

    // Pushed again (same digest, same event): a new copy, not the old job.
    img.push(&w.src, "library/app", &Reference::Tag("1".into()))
        .await;
    let (status, v) = relay
        .deliver(push_event("library/app", Some("1"), &img.digest))
        .await;
    assert_eq!(status, 202, "{v}");
    assert_eq!(v["jobs"][0]["coalesced"], false, "{v}");
    let id = v["jobs"][0]["id"].as_u64().expect("id");
    assert_ne!(Some(id), pushed["id"].as_u64());
    relay.wait_success(id).await;
    assert_image_on(&w.dst, "library/app", &img, Some("1")).await;
}

/// Finding 3: a template that lets the source repository choose the target
/// project is refused at load, with the reason.
#[test]
fn a_target_project_the_source_chooses_is_refused_at_load() {
    let cfg = ConfigFile::new(&format!(
        "{}{}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\ntarget_project = \"{{repository}}\"\n",
        registry_toml("external", "http://127.0.0.1:1", None, ""),
        registry_toml("integrated", "http://127.0.0.1:2", None, ""),
    ));
    let out = relay_cmd(&[
        "rules",
        "test",
        "--config",
        cfg.path.as_str(),
        "team-a/secret/app:1.0",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rules[0].target_project"), "{err}");
    assert!(
        err.contains("would let a source repository choose which target project"),
        "{err}"
    );
}

/// Pushes to `reg` a manifest whose one layer is `layer` but declared
/// `declared` bytes long (distribution checks that the blob exists, not
/// its size): what a hostile source serves.
async fn push_declaring(
    reg: &harbor_relay::registry::Registry,
    repo: &str,
    layer: &bytes::Bytes,
    declared: u64,
) -> String {
    use harbor_relay::manifest::{Manifest, OCI_MANIFEST, sha256_digest};
    let config = bytes::Bytes::from_static(b"{\"architecture\":\"amd64\",\"os\":\"linux\"}");
    for b in [&config, layer] {
        reg.put_blob_bytes(repo, b.clone()).await.expect("blob");
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(layer), "size": declared}],
    }))
    .expect("json");
    let m = Manifest::from_bytes(manifest.into(), None).expect("manifest");
    reg.put_manifest(repo, &Reference::Tag("1".into()), &m)
        .await
        .expect("manifest");
    m.digest
}

/// Finding 5: a blob declared bigger than `max_blob_size` (the registry's
/// 20 GiB default, or a rule's own) fails the job before any byte of it
/// is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_over_max_blob_size_is_refused_before_a_byte_moves() {
    let w = World::new().await;
    let layer = random_bytes(2 << 20);
    let huge = push_declaring(&w.src, "evil/fill", &layer, 1 << 40).await;
    let img = TestImage::pushed(&w.src, "library/big", &[2 << 20]).await;
    let proxy = FaultProxy::start(&w.source.url).await;
    let config = format!(
        "{}{}{RULE}max_blob_size = \"1MiB\"\nrepositories = [\"big\"]\n{RULE}name = \"all\"\nprojects = [\"evil\"]\n",
        registry_toml("external", &proxy.url, None, ""),
        w.target_toml()
    );
    let relay = Relay::start(&config).await;
    for (repo, digest, key) in [
        ("evil/fill", &huge, "registries.external.max_blob_size"),
        ("library/big", &img.digest, "the rule's max_blob_size"),
    ] {
        let ids = relay.push(push_event(repo, Some("1"), digest)).await;
        let job = relay.wait_job(ids[0]).await;
        assert_eq!(job["state"], "failed", "{job}");
        assert_eq!(job["attempts"], 1, "a size limit is not retried: {job}");
        let err = job["last_error"].as_str().expect("error");
        assert!(err.contains(key) && err.contains("declared"), "{err}");
    }
    let blob_reads = proxy
        .requests()
        .iter()
        .filter(|(_, _, path, _)| path.contains("/blobs/sha256:"))
        .count();
    assert_eq!(blob_reads, 0, "a blob was read: {:?}", proxy.requests());
    assert!(
        !w.dst
            .has_blob("evil/fill", &harbor_relay::manifest::sha256_digest(&layer))
            .await
            .expect("HEAD")
    );
}

/// Finding 10: a blob whose bytes do not match its digest fails the job at
/// once, naming the source; the target never gets the last byte (so it
/// cannot close the upload with its own verdict) and the session is
/// cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_blob_fails_at_once_naming_the_source_and_its_upload_is_cancelled() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src_proxy = FaultProxy::start(&source.url).await;
    let dst_proxy = FaultProxy::start(&target.url).await;
    let src = client(&source.url, None, harbor_relay::config::TlsMode::System);
    let dst = client(&target.url, None, harbor_relay::config::TlsMode::System);
    let img = TestImage::pushed(&src, "library/flip", &[300_000]).await;
    let layer = img.blob_digests()[1].clone();
    src_proxy.inject(Some("GET"), &layer, usize::MAX, Fault::FlipByte(299_999));
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &src_proxy.url, None, ""),
        registry_toml("integrated", &dst_proxy.url, None, ""),
    );
    let relay = Relay::start_with_jobs("max_attempts = 5\n", &config).await;
    let ids = relay
        .push(push_event("library/flip", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(
        job["attempts"], 1,
        "content-addressed: retrying cannot help: {job}"
    );
    let err = job["last_error"].as_str().expect("error");
    assert!(
        err.contains("reading from source 'external'") && err.contains("digest mismatch"),
        "{err}"
    );
    assert!(
        !err.contains("DIGEST_INVALID"),
        "the target's verdict: {err}"
    );
    let cancelled = dst_proxy
        .requests()
        .iter()
        .filter(|(_, method, path, _)| method == "DELETE" && path.contains("/blobs/uploads/"))
        .count();
    assert!(cancelled >= 1, "{:?}", dst_proxy.requests());
    assert!(!dst.has_blob("library/flip", &layer).await.expect("HEAD"));
}

/// Finding 8: a diamond of indexes (each of 40 indexes per level lists
/// all 40 of the level below, four levels deep) costs each manifest one
/// `HEAD` on the target, not one per path to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_diamond_of_indexes_asks_each_manifest_once() {
    use harbor_relay::manifest::{Manifest, OCI_INDEX, OCI_MANIFEST};
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let dst_proxy = FaultProxy::start(&target.url).await;
    let src = client(&source.url, None, harbor_relay::config::TlsMode::System);
    let repo = "library/diamond";
    let images = [TestImage::random(&[1_000]), TestImage::random(&[1_000])];
    let mut below: Vec<(String, usize, &str)> = Vec::new();
    for i in &images {
        i.push(&src, repo, &Reference::Digest(i.digest.clone()))
            .await;
        below.push((i.digest.clone(), i.manifest.len(), OCI_MANIFEST));
    }
    let mut count = images.len();
    let index = |children: &[(String, usize, &str)], n: usize| {
        let body = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "annotations": {"n": n.to_string()},
            "manifests": children.iter().map(|(d, size, mt)| serde_json::json!({
                "mediaType": mt, "digest": d, "size": size
            })).collect::<Vec<_>>(),
        }))
        .expect("json");
        Manifest::from_bytes(body.into(), None).expect("index")
    };
    for level in 0..3 {
        let mut this = Vec::new();
        for n in 0..40 {
            let m = index(&below, level * 100 + n);
            src.put_manifest(repo, &Reference::Digest(m.digest.clone()), &m)
                .await
                .expect("push index");
            this.push((m.digest.clone(), m.bytes.len(), OCI_INDEX));
        }
        count += this.len();
        below = this;
    }
    let top = index(&below, 999);
    src.put_manifest(repo, &Reference::Tag("1".into()), &top)
        .await
        .expect("push top");
    count += 1;
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &dst_proxy.url, None, ""),
    );
    let relay = Relay::start(&config).await;
    let ids = relay.push(push_event(repo, Some("1"), &top.digest)).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["manifests_copied"], count, "{job}");
    let heads = dst_proxy
        .requests()
        .iter()
        .filter(|(_, m, p, _)| m == "HEAD" && p.contains("/manifests/"))
        .count();
    assert!(
        heads <= count + 2,
        "{heads} manifest HEADs on the target for {count} manifests"
    );
}

/// Finding 5: `jobs cancel` stops a running job, cancels its upload on the
/// target and fails it, saying so; a waiting job is cancelled at once;
/// `retry` runs it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_cancel_stops_a_running_copy_and_cancels_its_upload() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, harbor_relay::config::TlsMode::System);
    let img = TestImage::pushed(&src, "library/slow", &[8 << 20]).await;
    let slow = SlowProxy::start(source.addr, 1_000_000).await;
    let dst_proxy = FaultProxy::start(&target.url).await;
    let dst = client(&target.url, None, harbor_relay::config::TlsMode::System);
    let config = format!(
        "{}{}{RULE}",
        registry_toml("external", &format!("http://{}", slow.addr), None, ""),
        registry_toml("integrated", &dst_proxy.url, None, ""),
    );
    let relay = Relay::start_with_jobs("workers = 1\n", &config).await;
    let ids = relay
        .push(push_event("library/slow", Some("1"), &img.digest))
        .await;
    // A second job waits behind it (one worker).
    let other = TestImage::pushed(&src, "library/next", &[1_000]).await;
    let waiting = relay
        .push(push_event("library/next", Some("1"), &other.digest))
        .await;
    relay.wait_state(ids[0], "running").await;
    let wait = Deadline::new(std::time::Duration::from_secs(20));
    while !dst_proxy
        .requests()
        .iter()
        .any(|(_, m, p, _)| m == "PUT" && p.contains("/blobs/uploads/"))
    {
        wait.tick(|| format!("no upload started: {:?}", dst_proxy.requests()))
            .await;
    }
    let cfg = relay.config_path.to_str().expect("utf-8").to_string();
    let out = relay_cmd(&["jobs", "--config", &cfg, "cancel", &waiting[0].to_string()]);
    assert!(expect_success(&out).contains("cancelled"), "{out:?}");
    assert_eq!(relay.job(waiting[0]).await["state"], "failed");
    let out = relay_cmd(&["jobs", "--config", &cfg, "cancel", &ids[0].to_string()]);
    assert!(expect_success(&out).contains("is stopping"), "{out:?}");
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(err.contains("cancelled by an operator"), "{err}");
    assert!(
        dst_proxy
            .requests()
            .iter()
            .any(|(_, m, p, _)| m == "DELETE" && p.contains("/blobs/uploads/")),
        "the upload session was not cancelled: {:?}",
        dst_proxy.requests()
    );
    assert!(
        !dst.has_manifest("library/slow", &img.digest)
            .await
            .expect("HEAD")
    );
    // A finished job cannot be cancelled; a cancelled one can be retried.
    let out = relay_cmd(&["jobs", "--config", &cfg, "cancel", &ids[0].to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("failed already"),
        "{out:?}"
    );
    let out = relay_cmd(&["jobs", "--config", &cfg, "retry", &waiting[0].to_string()]);
    expect_success(&out);
    relay.wait_success(waiting[0]).await;
}

/// Finding 5: a chunked upload whose job fails for good (its last attempt)
/// is cancelled on the target, not left in its upload area for a resume
/// that will never come.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_of_a_job_that_fails_for_good_is_cancelled() {
    let source = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&source.url, None, harbor_relay::config::TlsMode::System);
    let img = TestImage::pushed(&src, "library/chunky", &[3 << 20]).await;
    let dst_proxy = FaultProxy::start(&target.url).await;
    // Two chunks go through, then the target fails every one.
    dst_proxy.inject_after(
        Some("PATCH"),
        "/blobs/uploads/",
        2,
        usize::MAX,
        Fault::Status {
            status: 500,
            retry_after: None,
        },
    );
    let config = format!(
        "{}{}\nchunk_size_threshold = \"1MiB\"\nchunk_size = \"256KiB\"\nrequest_attempts = 1\n\n{RULE}",
        registry_toml("external", &source.url, None, ""),
        registry_toml("integrated", &dst_proxy.url, None, "").trim_end(),
    );
    let relay = Relay::start_with_jobs("max_attempts = 1\n", &config).await;
    let ids = relay
        .push(push_event("library/chunky", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    let requests = dst_proxy.requests();
    assert!(
        requests
            .iter()
            .any(|(_, m, p, _)| m == "PATCH" && p.contains("/blobs/uploads/")),
        "no chunk was sent: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(_, m, p, _)| m == "DELETE" && p.contains("/blobs/uploads/")),
        "the session was left on the target: {requests:?}"
    );
}
