//! The command line: replicate one artifact, list and retry jobs.

use harbor_relay::reference::Reference;

use crate::support::*;

/// `harbor-relay replicate` of `image` from `external` to `integrated`.
fn replicate(cfg: &str, image: &str) -> std::process::Output {
    relay_cmd(&[
        "replicate",
        "--config",
        cfg,
        "--from",
        "external",
        "--to",
        "integrated",
        image,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicate_command_copies_one_artifact_and_reports() {
    let w = World::new().await;
    let img = TestImage::random(&[70_000, 5_000]);
    img.push(&w.src, "library/cli", &Reference::Tag("3.1".into()))
        .await;
    let file = ConfigFile::new(&w.config());
    let cfg = file.path.as_str();
    let out = replicate(cfg, "library/cli:3.1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&img.digest), "{stdout}");
    assert!(stdout.contains("3 copied, 0 already present"), "{stdout}");
    assert_image_on(&w.dst, "library/cli", &img, Some("3.1")).await;

    // Again: everything is there, nothing is copied.
    let out = replicate(cfg, "library/cli:3.1");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(stdout.contains("0 copied"), "{stdout}");
    assert!(
        stdout.contains("manifests  0 written (already on the target under this reference)"),
        "{stdout}"
    );
    // A new tag on the same manifest: only the tag is written, and said so
    // (issue 27: it said "manifests 0 written").
    img.push(&w.src, "library/cli", &Reference::Tag("3".into()))
        .await;
    let out = replicate(cfg, "library/cli:3");
    let stdout = expect_success(&out);
    assert!(
        stdout.contains(
            "manifests  0 written (the target had the manifest); the tag 3 now points at it"
        ),
        "{stdout}"
    );
    assert_image_on(&w.dst, "library/cli", &img, Some("3")).await;

    // A tag that does not exist: non-zero exit and the reason.
    let out = replicate(cfg, "library/cli:nope");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("registry 'external': manifest library/cli:nope not found"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_job_is_listed_and_retried_from_the_cli() {
    let w = World::new().await;
    let img = TestImage::random(&[20_000]);
    let relay = Relay::start(&w.config()).await;
    // Harbor says it was pushed, but the source does not have it (yet):
    // not found is not worth retrying on a timer, so the job fails at once.
    let ids = relay
        .push(push_event("library/late", Some("1"), &img.digest))
        .await;
    let job = relay.wait_job(ids[0]).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["attempts"], 1, "{job}");
    assert!(
        job["last_error"]
            .as_str()
            .expect("error")
            .contains("not found")
    );

    let url = relay.url.clone();
    let out = relay_cmd_env(
        &["jobs", "--url", &url, "list", "--state", "failed"],
        &[("HARBOR_RELAY_API_TOKEN", API_TOKEN)],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("external/library/late:1"), "{stdout}");
    assert!(stdout.contains("failed"), "{stdout}");

    img.push(&w.src, "library/late", &Reference::Tag("1".into()))
        .await;
    let id = ids[0].to_string();
    // Changing anything needs the API token.
    let out = relay_cmd(&["jobs", "--url", &url, "retry", &id]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("401") && stderr.contains("api_token"),
        "{stderr}"
    );
    let with_token = [("HARBOR_RELAY_API_TOKEN", API_TOKEN)];
    let out = relay_cmd_env(&["jobs", "--url", &url, "retry", &id], &with_token);
    expect_success(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("queued again"));
    relay.wait_success(ids[0]).await;
    assert_image_on(&w.dst, "library/late", &img, Some("1")).await;

    // The config file is enough to find the daemon, and its api_token to
    // be let in: no token exported by hand.
    let cfg = relay.config_path.to_str().expect("utf-8").to_string();
    let out = relay_cmd(&["jobs", "--config", &cfg, "list", "--state", "failed"]);
    assert!(
        out.status.success(),
        "the CLI did not use the config's api_token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relay_cmd_env(
        &["jobs", "--config", &cfg, "show", &id, "--json"],
        &with_token,
    );
    let stdout = expect_success(&out);
    assert!(stdout.contains("\"state\": \"succeeded\""), "{stdout}");
    // Without --json, a record a person reads.
    let out = relay_cmd(&["jobs", "--config", &cfg, "show", &id]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with(&format!("job {id}: succeeded")),
        "{stdout}"
    );
    assert!(
        stdout.contains("blobs") && stdout.contains("bytes"),
        "{stdout}"
    );
    // Retrying a job that succeeded is refused with the reason.
    let out = relay_cmd_env(&["jobs", "--url", &url, "retry", &id], &with_token);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only failed jobs can be retried"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rules test` needs no secrets and no network: it runs in a shell that
/// has none of the daemon's credentials, and takes an image reference as
/// people copy it, registry host included.
#[test]
fn rules_test_needs_no_secrets_and_ignores_a_registry_host() {
    let file = ConfigFile::new(
        "[server]\nwebhook_auth = \"${HARBOR_RELAY_TEST_UNSET_SECRET}\"\n[registries.external]\nurl = \"https://harbor.example.com\"\nkind = \"harbor\"\nusername = \"robot$relay\"\npassword = \"${HARBOR_RELAY_TEST_UNSET_PASSWORD}\"\n[registries.integrated]\nurl = \"https://192.0.2.10\"\nusername = \"admin\"\npassword_file = \"/nonexistent/integrated.password\"\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"tkgs-demo\"]\nprune = true\nlabels = [\"release\"]\n",
    );
    let out = relay_cmd(&[
        "rules",
        "test",
        "--config",
        file.path.as_str(),
        "harbor.example.com/tkgs-demo/app:1.0",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ignoring the registry host 'harbor.example.com'"),
        "{stdout}"
    );
    assert!(
        stdout.contains("external/tkgs-demo/app:1.0 -> integrated/tkgs-demo/app:1.0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("prune = true: reconcile removes target tags in tkgs-demo/app")
            && stdout.contains("only `harbor-relay reconcile --rule external-to-integrated` does"),
        "{stdout}"
    );
    assert!(
        stdout.contains("only artifacts carrying the Harbor labels release (labels)"),
        "{stdout}"
    );
}

/// A config left 0600 root by a `umask 077` cannot be read by the unit's
/// DynamicUser: `check` says so before the service fails to start.
#[test]
fn check_warns_about_a_config_other_users_cannot_read() {
    use std::os::unix::fs::PermissionsExt as _;
    let file = ConfigFile::new(
        "[registries.external]\nurl = \"http://127.0.0.1:9\"\n[registries.integrated]\nurl = \"http://127.0.0.1:9\"\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n",
    );
    std::fs::set_permissions(&file.path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = relay_cmd(&["check", "--config", file.path.as_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let row = stdout
        .lines()
        .find(|l| l.contains("file"))
        .unwrap_or_else(|| panic!("no file row:\n{stdout}"));
    assert!(
        row.contains("WARN") && row.contains("not readable by other users") && row.contains("600"),
        "{row}"
    );
}

/// `replicate` of a name without a project from a Harbor: said at once,
/// with the fix, instead of a "manifest not found" from the registry.
#[test]
fn replicate_of_a_name_without_a_project_says_so() {
    let file = ConfigFile::new(
        "[registries.external]\nurl = \"http://127.0.0.1:9\"\nkind = \"harbor\"\n[registries.integrated]\nurl = \"http://127.0.0.1:9\"\n",
    );
    let out = replicate(file.path.as_str(), "nginx:1");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("has no project") && stderr.contains("library/nginx"),
        "{stderr}"
    );
}

/// Completions and the man page come from the same clap definitions as the
/// command line itself; the bash script is valid bash.
#[test]
fn completions_and_man_page_are_generated_from_the_cli() {
    let out = relay_cmd(&["completions", "bash"]);
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("harbor-relay.bash");
    std::fs::write(&script, &out.stdout).expect("write");
    let syntax = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .expect("bash");
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    for sub in ["serve", "check", "replicate", "reconcile", "completions"] {
        assert!(text.contains(sub), "{sub} missing from the bash completion");
    }
    let zsh = relay_cmd(&["completions", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).starts_with("#compdef harbor-relay"));

    let man = relay_cmd(&["man"]);
    assert!(man.status.success());
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.contains(".TH harbor-relay 1"), "{page}");
    for sub in ["serve", "check", "jobs", "reconcile"] {
        assert!(page.contains(sub), "{sub} missing from the man page");
    }
}

/// A config file that is not there is said once, with the path (issue 27:
/// the OS error was printed twice).
#[test]
fn a_missing_config_file_is_said_once() {
    let out = relay_cmd(&["check", "--config", "/nonexistent/relay.toml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config /nonexistent/relay.toml: cannot read: No such file or directory"),
        "{err}"
    );
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

/// `replicate` to a target whose certificate is not trusted says so once,
/// with the fix, and no stray line from the TLS verifier comes before it
/// (issue 27).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_said_once_by_replicate() {
    let w = World::new().await;
    TestImage::pushed(&w.src, "library/tls", &[1_000]).await;
    let file = ConfigFile::new(&w.config_with_tls("{ }").replace("tls = { }\n", ""));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .args(["replicate", "--config", file.path.as_str()])
        .args(["--from", "external", "--to", "integrated", "library/tls:1"])
        .env_remove("RUST_LOG")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.ca_file"), "{err}");
    assert!(!err.contains("rustls_platform_verifier"), "{err}");
    assert!(!err.contains(" ERROR "), "{err}");
}

/// `https://` written for a plain-HTTP registry is said as such, not as an
/// untrusted certificate (issue 27).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_to_a_plain_http_registry_is_not_called_a_certificate_problem() {
    let w = World::new().await;
    let https_source = w.source.url.replace("http://", "https://");
    let file = ConfigFile::new(&format!(
        "{}{}",
        registry_toml("external", &https_source, None, ""),
        w.target_toml()
    ));
    let out = replicate(file.path.as_str(), "library/x:1");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no TLS on this port") && err.contains("write its url as http://"),
        "{err}"
    );
    assert!(!err.contains("certificate not trusted"), "{err}");
}
