//! Harbor's webhook policy against a fake of Harbor's REST API (built from
//! Harbor's source, `tests/support/harbor`): `register-webhook` creating and
//! updating the policy as Harbor's `PUT` really behaves, a robot account told
//! why it may not, and `check` finding the policy and exercising the project
//! API a job depends on.

mod support;

use support::harbor::FakeHarbor;
use support::*;

const ADMIN_PASS: &str = "harbor-admin-pw";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_webhook_creates_then_updates_the_policy() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let file = ConfigFile::new(&format!(
        "[server]\nwebhook_auth = \"{WEBHOOK_SECRET}\"\n[registries.external]\nurl = \"{}\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n",
        harbor.url()
    ));
    let cfg = file.path.as_str();
    let register = |url: &str, format: &str| register_webhook(cfg, url, &["--format", format]);
    let out = register("https://jumpvm:8080/webhooks/harbor", "Default");
    let stdout = expect_success(&out);
    assert!(stdout.contains("created webhook policy"), "{stdout}");

    let out = register("https://jumpvm2:8080/webhooks/harbor", "CloudEvents");
    let stdout = expect_success(&out);
    assert!(stdout.contains("updated webhook policy"), "{stdout}");

    let policies = harbor.state.policies.lock().expect("policies").clone();
    let list = &policies["tkgs-demo"];
    assert_eq!(list.len(), 1, "{list:?}");
    let p = &list[0];
    assert_eq!(p["name"], "harbor-relay");
    assert_eq!(p["enabled"], true);
    assert_eq!(
        p["event_types"],
        serde_json::json!([
            "PUSH_ARTIFACT",
            "DELETE_ARTIFACT",
            "SCANNING_COMPLETED",
            "SCANNING_FAILED",
            "SCANNING_STOPPED"
        ])
    );
    // Harbor's PUT replaces the whole policy, so registering merges: the
    // first relay's target (another relay, for another target Harbor, may
    // share the policy) stays, the second is added.
    let targets = p["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "{p}");
    assert_eq!(targets[0]["address"], "https://jumpvm:8080/webhooks/harbor");
    let t = &targets[1];
    assert_eq!(t["address"], "https://jumpvm2:8080/webhooks/harbor");
    assert_eq!(t["auth_header"], WEBHOOK_SECRET);
    assert_eq!(t["payload_format"], "CloudEvents");
    assert_eq!(t["skip_cert_verify"], false);

    // Wrong credentials: a clear failure, no secret in it.
    std::fs::write(
        cfg,
        std::fs::read_to_string(cfg)
            .expect("read")
            .replace(ADMIN_PASS, "nope"),
    )
    .expect("write");
    let out = register("https://jumpvm:8080/webhooks/harbor", "Default");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("access denied"), "{stderr}");
    assert!(
        !stderr.contains("nope") && !stderr.contains(WEBHOOK_SECRET),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_the_webhook_policy_or_says_how_to_add_it() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let target = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let file = ConfigFile::new(&format!(
        "[server]\nwebhook_auth = \"{WEBHOOK_SECRET}\"\n[registries.external]\nurl = \"{}\"\nkind = \"harbor\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n\n{}[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"tkgs-demo\"]\n",
        harbor.url(),
        registry_toml("integrated", &target.url, None, ""),
    ));
    let cfg = file.path.as_str();
    let out = relay_cmd(&["check", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let row = check_row(&stdout, "external", "webhook");
    assert!(row.contains("FAIL"), "{row}");
    // The command it prints runs as pasted, from anywhere: it names this
    // config and this source, and where this relay listens (0.0.0.0:8080
    // by default: this machine's name).
    let hint = row
        .split('`')
        .nth(1)
        .unwrap_or_else(|| panic!("no command in {row}"));
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let url = format!("http://{}:8080/webhooks/harbor", host.trim());
    assert!(
        hint.contains("--registry external") && hint.ends_with(&format!("--url {url}")),
        "{hint}"
    );
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_harbor-relay"))
        .parent()
        .expect("bin dir")
        .display()
        .to_string();
    let pasted = std::process::Command::new("sh")
        .args(["-c", &format!("cd / && {hint}")])
        .env(
            "PATH",
            format!("{bin}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .output()
        .expect("sh");
    expect_success(&pasted);
    let out = relay_cmd(&["check", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("webhook") && l.contains("ok") && l.contains(&url)),
        "{stdout}"
    );
    assert!(!stdout.contains(ADMIN_PASS) && !stdout.contains("webhook-s3cret"));
    assert!(stdout.contains("no delivery yet"), "{stdout}");

    // Harbor tried and failed to deliver (the relay unreachable, or its
    // certificate not trusted): check says so, not only that a policy exists.
    let id = harbor.state.policies.lock().expect("policies")["tkgs-demo"][0]["id"]
        .as_u64()
        .expect("id");
    harbor.state.executions.lock().expect("executions").insert(
        id,
        vec![serde_json::json!({
            "id": 9, "vendor_type": "WEBHOOK", "vendor_id": id, "status": "Error",
            "status_message": "", "trigger": "EVENT",
            "extra_attrs": {"event_type": "PUSH_ARTIFACT"},
            "start_time": "2026-11-30T10:00:00Z", "end_time": "2026-11-30T10:00:03Z"
        })],
    );
    let out = relay_cmd(&["check", "--config", cfg]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let row = check_row(&stdout, "external", "webhook");
    assert!(
        row.contains("FAIL") && row.contains("last delivery") && row.contains("PUSH_ARTIFACT"),
        "{row}"
    );
}

/// Harbor's `PUT` on a webhook policy replaces every column
/// (`UpdateWebhookPolicyOfProject`, `src/server/v2.0/handler/webhook.go`),
/// and the double does the same: registering again must send back what the
/// admin added to the policy (another target, more event types, its
/// description and creator), not wipe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registering_again_keeps_what_the_admin_added_to_the_policy() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    harbor.state.policies.lock().expect("policies").insert(
        "tkgs-demo".into(),
        vec![serde_json::json!({
            "id": 100, "name": "harbor-relay", "description": "relay + audit",
            "creator": "alice", "enabled": true,
            "event_types": ["PUSH_ARTIFACT", "QUOTA_EXCEED"],
            "targets": [{"type": "http", "address": "https://audit.example/hook",
                         "skip_cert_verify": true, "payload_format": "Default"}]
        })],
    );
    let file = ConfigFile::new(&format!(
        "[server]\nwebhook_auth = \"{WEBHOOK_SECRET}\"\n[registries.external]\nurl = \"{}\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\n",
        harbor.url()
    ));
    let out = register_webhook(
        file.path.as_str(),
        "https://jumpvm:8443/webhooks/harbor",
        &["--skip-cert-verify"],
    );
    expect_success(&out);
    let p = harbor.state.policies.lock().expect("policies")["tkgs-demo"][0].clone();
    assert_eq!(p["creator"], "alice", "{p}");
    assert_eq!(p["description"], "relay + audit", "{p}");
    assert_eq!(
        p["event_types"],
        serde_json::json!([
            "PUSH_ARTIFACT",
            "QUOTA_EXCEED",
            "DELETE_ARTIFACT",
            "SCANNING_COMPLETED",
            "SCANNING_FAILED",
            "SCANNING_STOPPED"
        ])
    );
    let targets = p["targets"].as_array().expect("targets");
    assert_eq!(targets.len(), 2, "{p}");
    assert_eq!(targets[0]["address"], "https://audit.example/hook");
    assert_eq!(targets[1]["address"], "https://jumpvm:8443/webhooks/harbor");
    assert_eq!(targets[1]["skip_cert_verify"], true, "--skip-cert-verify");
}

/// A robot account may manage webhook policies only from Harbor 2.10 (the
/// double plays the version): on 2.8 the error says so instead of blaming
/// the password; on 2.14 the same robot registers the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_robot_on_harbor_2_8_is_told_why_it_may_not_register_the_webhook() {
    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "robot$relay", ADMIN_PASS).await;
    *harbor.state.version.lock().expect("version") = (2, 8);
    let file = ConfigFile::new(&format!(
        "[registries.external]\nurl = \"{}\"\nusername = \"robot$relay\"\npassword = \"{ADMIN_PASS}\"\n",
        harbor.url()
    ));
    let register = || {
        register_webhook(
            file.path.as_str(),
            "https://jumpvm:8080/webhooks/harbor",
            &[],
        )
    };
    let out = register();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("v2.10") && stderr.contains("robot"),
        "{stderr}"
    );
    assert!(!stderr.contains("username/password"), "{stderr}");

    *harbor.state.version.lock().expect("version") = (2, 14);
    let out = register();
    expect_success(&out);
}

/// `create_projects = true` on a registry that is not a Harbor: `check`
/// fails where the job would (the project API), instead of saying `push`
/// is fine; on a Harbor it reports its version and each target project.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_exercises_the_project_api_a_job_depends_on() {
    let source = RegistryProc::start(None, Auth::None).await;
    let plain = RegistryProc::start(None, Auth::None).await;
    let config = |target_url: &str| {
        ConfigFile::new(&format!(
            "{}[registries.integrated]\nurl = \"{target_url}\"\nusername = \"admin\"\npassword = \"{ADMIN_PASS}\"\ncreate_projects = true\n\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"tkgs-demo\"]\n",
            registry_toml("external", &source.url, None, ""),
        ))
    };
    let file = config(&plain.url);
    let out = relay_cmd(&["check", "--config", file.path.as_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    let row = check_row(&stdout, "integrated", "harbor");
    assert!(
        row.contains("FAIL") && row.contains("not a Harbor"),
        "{row}"
    );

    let registry = RegistryProc::start(None, Auth::None).await;
    let harbor = FakeHarbor::start(&registry.url, "admin", ADMIN_PASS).await;
    let file = config(harbor.url());
    let out = relay_cmd(&["check", "--config", file.path.as_str()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("Harbor v2.14.0"), "{stdout}");
    assert!(
        stdout.contains("project 'tkgs-demo' will be created at the first push"),
        "{stdout}"
    );
    // Nothing can be pushed into a project that does not exist yet: the
    // push check says so instead of failing a config that will work.
    let row = check_row(&stdout, "integrated", "push");
    assert!(
        row.contains("WARN") && row.contains("does not exist yet"),
        "{row}"
    );
    assert!(out.status.success(), "{stdout}");
}

/// `harbor-relay harbor register-webhook` for project `tkgs-demo` of the
/// `external` registry of config `cfg`, pointing Harbor at `url`.
fn register_webhook(cfg: &str, url: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "harbor",
        "register-webhook",
        "--config",
        cfg,
        "--registry",
        "external",
        "--project",
        "tkgs-demo",
        "--url",
        url,
    ];
    args.extend_from_slice(extra);
    relay_cmd(&args)
}
