//! Harbor-aware replication against a fake of Harbor's REST API in front
//! of a real registry: creating target projects, listing a Harbor source,
//! label filters, refused pushes, pruning, and Harbor's referrers API. The
//! webhook policy is in `harbor_webhooks.rs`.

mod support;

use harbor_relay::config::TlsMode;
use harbor_relay::reference::Reference;
use support::harbor::FakeHarbor;
use support::harbor_auth::Account;
use support::*;

const ADMIN_PASS: &str = "harbor-admin-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_projects_are_created_once() {
    let source = RegistryProc::start(None, Auth::None).await;
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let src = client(&source.url, None, TlsMode::System);
    let dst = client(&registry.url, None, TlsMode::System);
    let a = TestImage::random(&[10_000]);
    let b = TestImage::random(&[10_000]);
    a.push(&src, "newproj/app", &Reference::Tag("1".into()))
        .await;
    b.push(&src, "newproj/app", &Reference::Tag("2".into()))
        .await;

    let target = format!(
        "[registries.integrated]\nurl = \"{}\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\ncreate_projects = true\n\n",
        harbor.url()
    );
    let config = format!(
        "{}{target}{RULE}",
        registry_toml("external", &source.url, None, "")
    );
    let relay = Relay::start(&config).await;
    for (tag, img) in [("1", &a), ("2", &b)] {
        let ids = relay
            .push(push_event("newproj/app", Some(tag), &img.digest))
            .await;
        relay.wait_success(ids[0]).await;
        assert_image_on(&dst, "newproj/app", img, Some(tag)).await;
    }
    let created = harbor.state.created.lock().expect("created").clone();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_eq!(created[0]["project_name"], "newproj");
    assert_eq!(
        created[0]["metadata"]["public"], "false",
        "public must be a string"
    );
    let calls = harbor.state.calls.lock().expect("calls").clone();
    assert_eq!(
        calls.iter().filter(|c| c.1 == "/projects").count(),
        2,
        "one check and one creation, then the answer is cached: {calls:?}"
    );
    // Registry requests went with tokens from Harbor's token service, never
    // with the password on every request (which Harbor would accept).
    let basic = harbor
        .state
        .auth
        .basic_uses
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(basic, 0, "registry requests sent with Basic credentials");
    assert!(!harbor.state.auth.grants.lock().expect("grants").is_empty());

    // A project-level robot may not create projects: the job says why.
    harbor.state.auth.accounts.lock().expect("accounts").insert(
        "robot$newproj+ci".into(),
        Account::project_robot(ADMIN_PASS, "newproj", &["pull", "push"]),
    );
    let robot = target.replace("username = \"admin\"", "username = \"robot$newproj+ci\"");
    let config = format!(
        "{}{robot}{RULE}",
        registry_toml("external", &source.url, None, "")
    );
    let relay2 = Relay::start(&config).await;
    let c = TestImage::pushed(&src, "otherproj/app", &[5_000]).await;
    let ids = relay2
        .push(push_event("otherproj/app", Some("1"), &c.digest))
        .await;
    let job = relay2.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    let err = job["last_error"].as_str().expect("error");
    assert!(err.contains("system-level robot"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_lists_a_harbor_source_through_its_rest_api() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&registry.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let a = TestImage::random(&[10_000]);
    let b = TestImage::random(&[10_000]);
    a.push(&src, "team-a/platform/api", &Reference::Tag("1".into()))
        .await;
    a.push(
        &src,
        "team-a/platform/api",
        &Reference::Tag("stable".into()),
    )
    .await;
    b.push(&src, "other/app", &Reference::Tag("1".into())).await;

    let file = ConfigFile::new(&format!(
        "[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n{}[[rules]]\nname = \"teams\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"team-*\"]\n",
        harbor.url(),
        registry_toml("integrated", &target.url, None, ""),
    ));
    let cfg = file.path.as_str();
    let out = relay_cmd(&["reconcile", "--config", cfg, "--rule", "teams", "--dry-run"]);
    let stdout = expect_success(&out);
    assert!(
        stdout.contains("2 tags checked, 2 differ"),
        "{stdout}\n{:?}",
        harbor.state.calls.lock().expect("calls")
    );
    assert!(!stdout.contains("other/app"), "{stdout}");
    let calls = harbor.state.calls.lock().expect("calls").clone();
    assert!(
        calls
            .iter()
            .any(|c| c.1 == "/projects/team-a/repositories/platform/api/artifacts"),
        "the artifacts API was not used: {calls:?}"
    );
    assert!(
        !calls.iter().any(|c| c.1.contains("/projects/other/")),
        "a project the rule does not take was listed: {calls:?}"
    );

    let out = relay_cmd(&["reconcile", "--config", cfg, "--rule", "teams"]);
    expect_success(&out);
    assert_image_on(&dst, "team-a/platform/api", &a, Some("1")).await;
    assert_image_on(&dst, "team-a/platform/api", &a, Some("stable")).await;
    let out = relay_cmd(&["reconcile", "--config", cfg, "--rule", "teams", "--dry-run"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 tags checked, 0 differ"));
    // Without --rule: every rule with a reconcile_interval; here none has
    // one, so it says which rules exist.
    let out = relay_cmd(&["reconcile", "--config", cfg, "--dry-run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no rule has reconcile_interval") && stderr.contains("teams"),
        "{stderr}"
    );
}

/// `rules[].labels`, Harbor's label filter: an artifact is copied only if
/// it carries every label of the rule (`artifactLabelFilter`,
/// src/pkg/reg/filter/artifact.go), read from the artifact API when the
/// event arrives; a label added later is picked up by reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_artifacts_carrying_the_rules_labels_are_copied() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let src = client(&registry.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let released = TestImage::pushed(&src, "tkgs-demo/app", &[8_000]).await;
    let draft = TestImage::random(&[8_000]);
    draft
        .push(&src, "tkgs-demo/tool", &Reference::Tag("1".into()))
        .await;
    harbor.state.labels.lock().expect("labels").insert(
        released.digest.clone(),
        vec!["release".into(), "approved".into()],
    );
    let config = format!(
        "[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n{}[[rules]]\nname = \"released\"\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"tkgs-demo\"]\nlabels = [\"release\"]\n",
        harbor.url(),
        registry_toml("integrated", &target.url, None, ""),
    );
    let relay = Relay::start(&config).await;
    let ids = relay
        .push(push_event("tkgs-demo/app", Some("1"), &released.digest))
        .await;
    relay.wait_success(ids[0]).await;
    assert_image_on(&dst, "tkgs-demo/app", &released, Some("1")).await;
    let ids = relay
        .push(push_event("tkgs-demo/tool", Some("1"), &draft.digest))
        .await;
    let job = relay.wait_success(ids[0]).await;
    assert!(
        job["skipped"]
            .as_str()
            .is_some_and(|s| s.contains("lacks the Harbor label(s) release")),
        "{job}"
    );
    assert!(
        !dst.has_manifest("tkgs-demo/tool", &draft.digest)
            .await
            .expect("HEAD")
    );

    // Labelled later: reconcile finds it.
    let file = ConfigFile::new(&config);
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        file.path.as_str(),
        "--rule",
        "released",
        "--dry-run",
    ]);
    let stdout = expect_success(&out);
    assert!(!stdout.contains("tkgs-demo/tool"), "unlabelled: {stdout}");
    assert!(stdout.contains("1 tags checked, 0 differ"), "{stdout}");
    harbor
        .state
        .labels
        .lock()
        .expect("labels")
        .insert(draft.digest.clone(), vec!["release".into()]);
    let out = relay_cmd(&[
        "reconcile",
        "--config",
        file.path.as_str(),
        "--rule",
        "released",
    ]);
    expect_success(&out);
    assert_image_on(&dst, "tkgs-demo/tool", &draft, Some("1")).await;
}

/// Harbor's token service never refuses a token for a missing permission
/// or a wrong password: it grants what the account holds (nothing, for
/// credentials it did not accept), and the refusal comes later, as a `401`
/// to the request itself (`src/core/service/token/creator.go`,
/// `src/server/middleware/v2auth/auth.go`). The job's error must say which
/// of the two it was, from the token's grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_push_to_harbor_says_what_the_token_granted() {
    let source = RegistryProc::start(None, Auth::None).await;
    let registry = RegistryProc::start(None, Auth::None).await;
    let robot = "robot$tkgs-demo+relay";
    let harbor = FakeHarbor::start_with(
        &registry.url,
        std::collections::BTreeMap::from([(
            robot.to_string(),
            Account::project_robot(ADMIN_PASS, "tkgs-demo", &["pull"]),
        )]),
    )
    .await;
    harbor
        .state
        .projects
        .lock()
        .expect("projects")
        .insert("tkgs-demo".into(), 1);
    let src = client(&source.url, None, TlsMode::System);
    let img = TestImage::pushed(&src, "tkgs-demo/app", &[5_000]).await;
    let job_error = |password: &'static str| {
        let target = format!(
            "[registries.integrated]\nurl = \"{}\"\nusername = \"{robot}\"\npassword = \"{password}\"\n\n",
            harbor.url()
        );
        let config = format!(
            "{}{target}{RULE}",
            registry_toml("external", &source.url, None, "")
        );
        let digest = img.digest.clone();
        async move {
            let relay = Relay::start(&config).await;
            let ids = relay
                .push(push_event("tkgs-demo/app", Some("1"), &digest))
                .await;
            let job = relay.wait_job(ids[0]).await;
            assert_eq!(job["state"], "failed", "{job}");
            job["last_error"].as_str().expect("error").to_string()
        }
    };

    // The robot holds pull only: Harbor granted pull, the push was refused.
    let err = job_error(ADMIN_PASS).await;
    assert!(
        err.contains("only pull on tkgs-demo/app")
            && err.contains("needs push")
            && err.contains("'tkgs-demo'"),
        "{err}"
    );
    // A wrong password: Harbor answered with an anonymous token.
    let err = job_error("wrong-password").await;
    assert!(
        err.contains("anonymous token") && err.contains("password") && err.contains(robot),
        "{err}"
    );
    // Both went through Harbor's token service, which never said 401.
    let grants = harbor.state.auth.grants.lock().expect("grants").clone();
    assert!(grants.iter().any(|g| g.subject == robot), "{grants:?}");
    assert!(grants.iter().any(|g| g.subject.is_empty()), "{grants:?}");
}

/// `prune = true` with a Harbor target removes the tag alone through
/// Harbor's `deleteTag` (the repository's '/' encoded twice), leaving the
/// artifact and its other tags; `--dry-run` first lists it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_removes_a_tag_alone_on_a_harbor_target() {
    let source = RegistryProc::start(None, Auth::None).await;
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let src = client(&source.url, None, TlsMode::System);
    let behind = client(&registry.url, None, TlsMode::System);
    let img = TestImage::pushed(&src, "tkgs-demo/team/app", &[5_000]).await;
    for t in ["1", "gone"] {
        img.push(&behind, "tkgs-demo/team/app", &Reference::Tag(t.into()))
            .await;
    }
    let config = format!(
        "{}[registries.integrated]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n[[rules]]\nname = \"mirror\"\nfrom = \"external\"\nto = \"integrated\"\nprune = true\n",
        registry_toml("external", &source.url, None, ""),
        harbor.url()
    );
    let file = ConfigFile::new(&config);
    let args = [
        "reconcile",
        "--config",
        file.path.as_str(),
        "--rule",
        "mirror",
    ];
    let out = relay_cmd(&[&args[..], &["--dry-run"]].concat());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "would prune integrated/tkgs-demo/team/app:gone {} (tag only)",
            img.digest
        )),
        "{stdout}"
    );
    assert!(
        harbor
            .state
            .deleted_tags
            .lock()
            .expect("deleted")
            .is_empty()
    );

    let out = relay_cmd(&args);
    expect_success(&out);
    let deleted = harbor.state.deleted_tags.lock().expect("deleted").clone();
    assert_eq!(
        deleted,
        vec![(
            "tkgs-demo/team/app".to_string(),
            img.digest.clone(),
            "gone".to_string()
        )]
    );
}

/// A Harbor source (v2.8 and later) has the OCI referrers API and lists
/// cosign's signatures in it as accessories of their image, though a
/// legacy cosign signature (`sha256-<hex>.sig`) has no `subject`. Once the
/// relay has seen the API answer, each new image costs one referrers `GET`
/// instead of it and four `HEAD`s of fallback tags; the signature still
/// arrives under its `.sig` tag, where cosign looks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_harbor_sources_referrers_api_replaces_the_fallback_tag_lookups() {
    use harbor_relay::manifest::{Manifest, OCI_MANIFEST, sha256_digest};
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let behind = client(&registry.url, None, TlsMode::System);
    let dst = client(&target.url, None, TlsMode::System);
    let repo = "tkgs-demo/signed";
    // A legacy cosign signature: simple-signing layer, no subject, stored
    // under `sha256-<hex>.sig`.
    let sign = |img: &TestImage| {
        let (config, sig) = (
            bytes::Bytes::from_static(b"{}"),
            bytes::Bytes::from(format!("signature of {}", img.digest)),
        );
        let m = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.dev.cosign.simplesigning.v1+json", "digest": sha256_digest(&sig), "size": sig.len()}],
        });
        let m = Manifest::from_bytes(bytes::Bytes::from(m.to_string()), None).expect("manifest");
        let tag = format!("sha256-{}.sig", img.digest.trim_start_matches("sha256:"));
        (vec![config, sig], m, tag)
    };
    let config = format!(
        "[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n{}{RULE}",
        harbor.url(),
        registry_toml("integrated", &target.url, None, "")
    );
    let relay = Relay::start(&config).await;
    for (i, tag) in ["1", "2"].iter().enumerate() {
        let img = TestImage::random(&[5_000]);
        img.push(&behind, repo, &Reference::Tag((*tag).into()))
            .await;
        let (blobs, sig, sig_tag) = sign(&img);
        for b in blobs {
            behind.put_blob_bytes(repo, b).await.expect("blob");
        }
        behind
            .put_manifest(repo, &Reference::Tag(sig_tag.clone()), &sig)
            .await
            .expect("signature");
        let before = harbor.proxy.requests().len();
        let ids = relay.push(push_event(repo, Some(tag), &img.digest)).await;
        let job = relay.wait_success(ids[0]).await;
        assert_eq!(job["referrers_copied"], 1, "{job}");
        let on_target = dst
            .get_manifest(repo, &Reference::Tag(sig_tag))
            .await
            .expect("the signature under its .sig tag");
        assert_eq!(on_target.digest, sig.digest);
        let asked: Vec<(String, String)> = harbor.proxy.requests()[before..]
            .iter()
            .map(|(_, m, p, _)| (m.clone(), p.clone()))
            .collect();
        let fallback_heads = asked
            .iter()
            .filter(|(m, p)| m == "HEAD" && p.contains("/manifests/sha256-"))
            .count();
        let listed = asked
            .iter()
            .filter(|(_, p)| p.contains("/referrers/"))
            .count();
        assert_eq!(listed, 1, "{asked:?}");
        // The first image teaches the relay that the API exists (all five
        // asked at once); from then on the API alone.
        assert_eq!(fallback_heads, if i == 0 { 4 } else { 0 }, "{asked:?}");
    }
}
