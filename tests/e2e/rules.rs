//! Rules: repository and tag selection, path mapping, override, deletions, reconcile.

use std::time::Duration;

use harbor_relay::reference::Reference;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_select_repositories_and_tags_and_map_paths() {
    let w = World::new().await;
    let keep = TestImage::random(&[10_000]);
    let other = TestImage::random(&[10_000]);
    keep.push(&w.src, "team-a/platform/api", &Reference::Tag("2.0".into()))
        .await;
    keep.push(
        &w.src,
        "team-a/platform/api",
        &Reference::Tag("2.1-rc1".into()),
    )
    .await;
    other
        .push(&w.src, "team-a/tools/lint", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}[[rules]]\nname = \"platform\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"team-*\"]\nrepositories = [\"platform/**\"]\nexclude_tags = [\"*-rc*\"]\nflatten = 1\ntarget_project = \"mirror-{{project}}\"\n",
        w.registries(),
    );
    let relay = Relay::start(&config).await;

    // What `rules test` says, before anything is copied.
    let cfg = relay.config_path.to_str().expect("utf-8").to_string();
    let out = relay_cmd(&["rules", "test", "--config", &cfg, "team-a/platform/api:2.0"]);
    let stdout = expect_success(&out);
    assert!(
        stdout.contains(
            "rule 'platform': external/team-a/platform/api:2.0 -> integrated/mirror-team-a/api:2.0"
        ),
        "{stdout}"
    );
    let out = relay_cmd(&[
        "rules",
        "test",
        "--config",
        &cfg,
        "team-a/platform/api:2.1-rc1",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("tag in `exclude_tags`"));
    // Nothing would be replicated: exit 1, so scripts can use it.
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("nothing would be replicated"),
        "{out:?}"
    );

    let ids = relay
        .push(push_event("team-a/platform/api", Some("2.0"), &keep.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["target"], "integrated/mirror-team-a/api:2.0");
    assert_image_on(&w.dst, "mirror-team-a/api", &keep, Some("2.0")).await;

    // A tag the rule filters out: acknowledged with the reason.
    let (status, v) = relay
        .deliver(push_event(
            "team-a/platform/api",
            Some("2.1-rc1"),
            &keep.digest,
        ))
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ignored", "{v}");
    assert!(v.to_string().contains("exclude_tags"), "{v}");
    // A repository no rule is about: refused, so Harbor's webhook log shows
    // it, with what to change.
    let (status, v) = relay
        .deliver(push_event("team-a/tools/lint", Some("1"), &other.digest))
        .await;
    assert_eq!(status, 422, "{v}");
    let msg = v["error"].as_str().expect("error");
    assert!(
        msg.contains("no rule replicates repository 'team-a/tools/lint'"),
        "{msg}"
    );
    let (_, metrics) = relay.get("/metrics").await;
    assert!(
        metrics.as_str().expect("text").contains(
            "harbor_relay_webhooks_received_total{format=\"default\",outcome=\"no_rule\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        w.dst
            .get_manifest("mirror-team-a/lint", &Reference::Tag("1".into()))
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn override_false_leaves_a_conflicting_target_tag_alone() {
    let w = World::new().await;
    let theirs = TestImage::random(&[10_000]);
    let ours = TestImage::random(&[10_000]);
    // The target already has 1.0, pointing at something else.
    theirs
        .push(&w.dst, "library/pinned", &Reference::Tag("1.0".into()))
        .await;
    ours.push(&w.src, "library/pinned", &Reference::Tag("1.0".into()))
        .await;
    let config = format!("{}{RULE}override = false\n", w.registries());
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/pinned", Some("1.0"), &ours.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    let why = job["skipped"].as_str().expect("a reason");
    assert!(
        why.contains("override = false") && why.contains(&theirs.digest),
        "{why}"
    );
    assert_image_on(&w.dst, "library/pinned", &theirs, Some("1.0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_replicate_only_when_a_rule_asks() {
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/gone", &[10_000]).await;
    img.push(&w.src, "library/kept", &Reference::Tag("1".into()))
        .await;
    let config = format!(
        "{}[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nrepositories = [\"gone\"]\nreplicate_deletes = true\n\n[[rules]]\nname = \"copy\"\nfrom = \"external\"\nto = \"integrated\"\nrepositories = [\"kept\"]\n",
        w.registries(),
    );
    let relay = Relay::start(&config).await;
    for repo in ["library/gone", "library/kept"] {
        let ids = relay.push(push_event(repo, Some("1"), &img.digest)).await;
        relay.wait_success(ids[0]).await;
        assert_image_on(&w.dst, repo, &img, Some("1")).await;
    }
    let delete = |repo: &str| {
        let mut v: serde_json::Value =
            serde_json::from_slice(&push_event(repo, Some("1"), &img.digest)).expect("json");
        v["type"] = "DELETE_ARTIFACT".into();
        serde_json::to_vec(&v).expect("json")
    };
    // Harbor sends DELETE_ARTIFACT once the artifact is gone from the
    // source; a delete is replicated only once the source confirms it.
    assert!(
        w.src
            .delete_manifest("library/gone", &img.digest)
            .await
            .expect("delete on the source")
    );
    let ids = relay.push(delete("library/gone")).await;
    let job = relay.wait_success(ids[0]).await;
    assert_eq!(job["action"], "delete");
    assert_eq!(job["deleted"], true, "{job}");
    assert!(
        !w.dst
            .has_manifest("library/gone", &img.digest)
            .await
            .expect("HEAD")
    );
    assert!(
        w.dst
            .get_manifest("library/gone", &Reference::Tag("1".into()))
            .await
            .is_err()
    );

    let (status, v) = relay.deliver(delete("library/kept")).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["status"], "ignored");
    assert_image_on(&w.dst, "library/kept", &img, Some("1")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_what_no_webhook_announced_and_pulls_on_a_schedule() {
    let w = World::new().await;
    let a = TestImage::random(&[20_000]);
    let b = TestImage::random(&[20_000]);
    // Pushed while the daemon was stopped: no webhook will ever come.
    a.push(&w.src, "library/quiet", &Reference::Tag("1".into()))
        .await;
    b.push(&w.src, "team-b/tool", &Reference::Tag("2".into()))
        .await;
    let rules = "[[rules]]\nname = \"catch-up\"\nfrom = \"external\"\nto = \"integrated\"\nreconcile_interval = \"1s\"\n";
    let base = w.registries();
    let file = ConfigFile::new(&format!("{base}{rules}"));
    let cfg = file.path.as_str();
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        cfg,
        "--rule",
        "catch-up",
        "--dry-run",
    ]);
    let stdout = expect_success(&out);
    assert!(stdout.contains("2 tags checked, 2 differ"), "{stdout}");
    assert!(stdout.contains("external/library/quiet:1"), "{stdout}");

    let relay = Relay::start(&format!("{base}{rules}")).await;
    let wait_for = |repo: &'static str, tag: &'static str, img: TestImage| {
        let dst = w.dst.clone();
        async move {
            let wait = Deadline::new(Duration::from_secs(30));
            loop {
                if dst
                    .get_manifest(repo, &Reference::Tag(tag.into()))
                    .await
                    .is_ok_and(|m| m.digest == img.digest)
                {
                    return;
                }
                wait.tick(|| format!("{repo}:{tag} never arrived")).await;
            }
        }
    };
    wait_for("library/quiet", "1", a.clone()).await;
    wait_for("team-b/tool", "2", b.clone()).await;
    assert_image_on(&w.dst, "library/quiet", &a, Some("1")).await;

    // Scheduled pull: a new push on the source arrives with no webhook.
    let c = TestImage::random(&[20_000]);
    c.push(&w.src, "library/quiet", &Reference::Tag("2".into()))
        .await;
    wait_for("library/quiet", "2", c.clone()).await;

    // Everything is in place: the next pass finds nothing.
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        cfg,
        "--rule",
        "catch-up",
        "--dry-run",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("3 tags checked, 0 differ"), "{stdout}");
    let (_, metrics) = relay.get("/metrics").await;
    let text = metrics.as_str().expect("text");
    // At least the three repairs (a slow job can be found twice).
    let found: u64 = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("harbor_relay_reconcile_differences_total{rule=\"catch-up\"} ")
        })
        .and_then(|v| v.trim().parse().ok())
        .expect("differences metric");
    assert!(found >= 3, "{text}");
    assert!(text.contains("harbor_relay_reconcile_last_pass_timestamp_seconds{rule=\"catch-up\"}"));
}

/// `artifact_types` (Harbor's resource filter): a rule that takes only
/// images leaves a Helm chart alone, saying why, and copies the image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifact_types_select_images_and_leave_charts_alone() {
    use harbor_relay::manifest::{Manifest, OCI_MANIFEST, sha256_digest};
    let w = World::new().await;
    let img = TestImage::pushed(&w.src, "library/app", &[5_000]).await;
    // A Helm chart as `helm push` stores it: its own config media type.
    let config = bytes::Bytes::from_static(br#"{"name":"app","version":"1.0.0"}"#);
    let chart = random_bytes(3_000);
    for b in [&config, &chart] {
        w.src
            .put_blob_bytes("library/app-chart", b.clone())
            .await
            .expect("blob");
    }
    let manifest = bytes::Bytes::from(
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.cncf.helm.chart.content.v1.tar+gzip", "digest": sha256_digest(&chart), "size": chart.len()}],
        }))
        .expect("json"),
    );
    let m = Manifest::from_bytes(manifest, None).expect("manifest");
    w.src
        .put_manifest("library/app-chart", &Reference::Tag("1.0.0".into()), &m)
        .await
        .expect("chart");

    let config = w.config().replace(
        "[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n",
        "[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nartifact_types = [\"image\"]\n",
    );
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("library/app-chart", Some("1.0.0"), &m.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    let skipped = job["skipped"].as_str().unwrap_or_default();
    assert!(
        skipped.contains("chart") && skipped.contains("artifact_types"),
        "{job}"
    );
    assert!(
        !w.dst
            .has_manifest("library/app-chart", &m.digest)
            .await
            .expect("HEAD")
    );
    let ids = relay
        .push(push_event("library/app", Some("1"), &img.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/app", &img, Some("1")).await;
}

/// `prune = true`: a tag removed on the source (Harbor sends no event for
/// that) is removed from the target by reconcile, after `--dry-run` lists
/// it; tags and repositories outside the rule are never touched; with
/// `replicate_deletes`, a manifest left without tags that the source no
/// longer holds goes too; a registry that cannot delete a tag alone (CNCF
/// distribution 2.x) gets a clear error for that tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_target_tags_the_source_lost_and_nothing_outside_the_rule() {
    let w = World::new().await;
    let (a, b, c) = (
        TestImage::random(&[5_000]),
        TestImage::random(&[5_000]),
        TestImage::random(&[5_000]),
    );
    let tag = |t: &str| Reference::Tag(t.into());
    a.push(&w.src, "library/app", &tag("1")).await;
    b.push(&w.src, "library/app", &tag("2")).await;
    // The target as earlier replication left it, before the source lost
    // tags 3 and old: `3` alone held c; `old` shares a's manifest with `1`.
    for (img, t) in [(&a, "1"), (&b, "2"), (&c, "3"), (&a, "old"), (&b, "keep-3")] {
        img.push(&w.dst, "library/app", &tag(t)).await;
    }
    c.push(&w.dst, "other/app", &tag("3")).await;
    let rules = "[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"library\"]\nexclude_tags = [\"keep-*\"]\nprune = true\nreplicate_deletes = true\n";
    let file = ConfigFile::new(&format!("{}{rules}", w.registries()));
    let args = [
        "reconcile",
        "--config",
        file.path.as_str(),
        "--rule",
        "mirror",
    ];

    let out = relay_cmd(&[&args[..], &["--dry-run"]].concat());
    let stdout = expect_success(&out);
    assert!(
        stdout.contains(&format!(
            "would prune integrated/library/app:3 {} (tag and manifest)",
            c.digest
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "would prune integrated/library/app:old {} (tag only)",
            a.digest
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 tags checked, 0 differ, 2 to prune"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("keep-3") && !stdout.contains("other/app"),
        "{stdout}"
    );
    // A dry run changes nothing.
    assert_eq!(
        w.dst.resolve("library/app", &tag("3")).await.expect("head"),
        Some(c.digest.clone())
    );

    let out = relay_cmd(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // `3`'s manifest is deleted (no other tag, the source lacks it).
    assert!(
        !w.dst
            .has_manifest("library/app", &c.digest)
            .await
            .expect("head")
    );
    assert_eq!(
        w.dst.resolve("library/app", &tag("3")).await.expect("head"),
        None
    );
    // `old` cannot go alone on distribution 2.x, and a's manifest stays
    // for `1`: the run fails for that tag and says what to do.
    assert!(!out.status.success());
    assert!(
        stderr.contains("failed to prune library/app:old")
            && stderr.contains("cannot delete a tag alone"),
        "{stderr}"
    );
    assert_eq!(
        w.dst.resolve("library/app", &tag("1")).await.expect("head"),
        Some(a.digest.clone())
    );
    // Outside the rule: untouched.
    assert_eq!(
        w.dst
            .resolve("library/app", &tag("keep-3"))
            .await
            .expect("head"),
        Some(b.digest.clone())
    );
    assert_eq!(
        w.dst.resolve("other/app", &tag("3")).await.expect("head"),
        Some(c.digest.clone())
    );
}

/// The daemon prunes on its reconcile interval too, and counts it: a tag
/// the source lost goes from the target with its manifest
/// (`replicate_deletes`), and `harbor_relay_reconcile_pruned_total` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_prunes_on_its_interval_and_counts_it() {
    let w = World::new().await;
    let (kept, lost) = (TestImage::random(&[5_000]), TestImage::random(&[5_000]));
    let tag = |t: &str| Reference::Tag(t.into());
    kept.push(&w.src, "library/app", &tag("1")).await;
    kept.push(&w.dst, "library/app", &tag("1")).await;
    lost.push(&w.dst, "library/app", &tag("2")).await;
    let rules = "[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nreconcile_interval = \"1s\"\nprune = true\nreplicate_deletes = true\n";
    let relay = Relay::start(&format!("{}{rules}", w.registries())).await;
    let wait = Deadline::new(Duration::from_secs(30));
    while w
        .dst
        .has_manifest("library/app", &lost.digest)
        .await
        .expect("HEAD")
    {
        wait.tick(|| format!("tag 2 was never pruned:\n{}", relay.logs()))
            .await;
    }
    assert_eq!(
        w.dst.resolve("library/app", &tag("1")).await.expect("HEAD"),
        Some(kept.digest.clone())
    );
    // Counted right after the registry answered the DELETE.
    let series = "harbor_relay_reconcile_pruned_total{result=\"removed\",rule=\"mirror\"} ";
    loop {
        let (_, metrics) = relay.get("/metrics").await;
        let text = metrics.as_str().expect("text").to_string();
        if text
            .lines()
            .any(|l| l.starts_with(series) && !l.ends_with(" 0"))
        {
            break;
        }
        wait.tick(|| format!("no prune counted:\n{text}")).await;
    }
}
