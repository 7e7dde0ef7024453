//! Installing: the Debian package, the container image, the Kubernetes
//! manifests (single relay and HA), and `harbor-relay check`, which an
//! admin runs first. Each file is checked by the tool that owns its format
//! (`lintian`, `systemd-analyze`, `hadolint`, `kubernetes-validate`).

mod support;

use std::path::Path;
use std::process::Command;

use harbor_relay::config::Config;
use support::*;

/// `python3 -m kubernetes_validate` (PyPI `kubernetes-validate`, which
/// ships the Kubernetes JSON schemas, so it works offline).
fn kubernetes_validate() -> Command {
    let install = "scripts/test.sh (it puts kubernetes-validate in target/tools; then PATH=target/tools/bin:$PATH)";
    let (ok, _, err) =
        run(tool("python3", "apt-get install python3-pip")
            .args(["-c", "import kubernetes_validate"]));
    assert!(ok, "kubernetes-validate is missing: run {install}\n{err}");
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "kubernetes_validate"]);
    cmd
}

/// Every one of `files` in `dir` passes `kubernetes-validate --strict`.
fn validate_strictly(dir: &Path, files: &[&str]) {
    let (ok, out, err) = run(kubernetes_validate()
        .current_dir(dir)
        .arg("--strict")
        .args(files));
    assert!(ok, "kubernetes-validate:\n{out}{err}");
    assert_eq!(
        out.matches(" passed for resource ").count(),
        files.len(),
        "{out}{err}"
    );
}

#[test]
fn kubernetes_manifests_validate_and_embed_a_valid_config() {
    let dir = repo_file("deploy/kubernetes");
    let files = [
        "configmap.yaml",
        "secret.example.yaml",
        "pvc.yaml",
        "deployment.yaml",
        "service.yaml",
    ];
    validate_strictly(&dir, &files);

    // The validator does reject a wrong field.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bad = std::fs::read_to_string(dir.join("deployment.yaml"))
        .expect("read")
        .replace("type: Recreate", "type: Recreate\n    maxSurge: 1");
    std::fs::write(tmp.path().join("bad.yaml"), bad).expect("write");
    let (ok, _, _) = run(kubernetes_validate()
        .current_dir(tmp.path())
        .args(["--strict", "bad.yaml"]));
    assert!(!ok, "kubernetes-validate accepted an unknown field");

    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("read");
    assert!(deployment.contains("replicas: 1") && deployment.contains("type: Recreate"));

    // The config in the ConfigMap loads, with the Secret's files in place.
    let config = configmap_config(&dir.join("configmap.yaml"), tmp.path());
    assert_eq!(config.rules.len(), 1);
    assert!(config.log.json);
}

/// The config a ConfigMap carries, loaded with the Secret's files (and its
/// `store-url`, as the Deployment passes it) in place under `tmp`.
fn configmap_config(path: &Path, tmp: &Path) -> Config {
    let cm = std::fs::read_to_string(path).expect("read");
    let body: String = cm
        .split("harbor-relay.toml: |\n")
        .nth(1)
        .expect("config in the ConfigMap")
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let pki = Pki::new(tmp);
    let secrets = tmp.join("secrets");
    let _ = std::fs::create_dir(&secrets);
    for f in ["webhook-auth", "external-password", "integrated-password"] {
        std::fs::write(secrets.join(f), "s3cret\n").expect("write");
    }
    std::fs::copy(&pki.ca_pem, secrets.join("integrated-ca.pem")).expect("ca");
    let body = body.replace("/run/secrets/harbor-relay", secrets.to_str().expect("path"));
    Config::parse(path, &body, &|name| {
        (name == "HARBOR_RELAY_STORE_URL").then(|| {
            "postgres://harbor_relay:pw@postgres.example:5432/harbor_relay?sslmode=require".into()
        })
    })
    .unwrap_or_else(|e| panic!("the ConfigMap's config does not load: {e}"))
}

/// The HA variant: two replicas on PostgreSQL, rolling updates, a
/// PodDisruptionBudget, the database URL from the Secret; valid manifests
/// and a config that selects the PostgreSQL store.
#[test]
fn kubernetes_ha_manifests_validate_and_select_the_postgres_store() {
    let dir = repo_file("deploy/kubernetes/ha");
    let files = [
        "configmap.yaml",
        "deployment.yaml",
        "pdb.yaml",
        "service.yaml",
    ];
    validate_strictly(&dir, &files);
    let deployment = std::fs::read_to_string(dir.join("deployment.yaml")).expect("read");
    assert!(deployment.contains("replicas: 2") && deployment.contains("type: RollingUpdate"));
    assert!(deployment.contains("key: store-url") && !deployment.contains("persistentVolumeClaim"));
    let kustomization = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("read");
    for f in files {
        assert!(kustomization.contains(f), "{f} not in kustomization.yaml");
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let config = configmap_config(&dir.join("configmap.yaml"), tmp.path());
    let pg = config.store.postgres.expect("the PostgreSQL store");
    assert_eq!(pg.shown, "postgres.example/harbor_relay");
}

fn check(config: &str) -> (bool, String) {
    let file = ConfigFile::new(config);
    let out = relay_cmd(&["check", "--config", &file.path]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains(PASS), "check printed the password:\n{text}");
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_walks_each_step_and_names_the_one_that_fails() {
    let w = World::new().await;
    let rule = "[[rules]]\nfrom = \"external\"\nto = \"integrated\"\nprojects = [\"library\"]\n";
    let (ok, text) = check(&format!("{}{rule}", w.registries()));
    eprintln!("{text}");
    assert!(ok, "{text}");
    for c in ["dns", "tcp", "api"] {
        assert!(check_row(&text, "external", c).contains(" ok "), "{text}");
    }
    let tls = check_row(&text, "integrated", "tls");
    assert!(tls.contains(" ok "), "{tls}");
    assert!(tls.contains("subject") && tls.contains("issuer") && tls.contains("expires"));
    assert!(tls.contains("trusted by the pinned CA"), "{tls}");
    assert!(
        check_row(&text, "integrated", "api").contains("basic auth, as relay"),
        "{text}"
    );
    let push = check_row(&text, "integrated", "push");
    assert!(
        push.contains(" ok ") && push.contains("'library'"),
        "{push}"
    );
    // The probe left nothing behind.
    let catalog = w.dst.catalog().await.expect("catalog");
    assert!(
        catalog.iter().all(|r| !r.contains("harbor-relay-check")),
        "{catalog:?}"
    );

    // Wrong password: the API step fails, push is not tried.
    let (ok, text) = check(&format!("{}{rule}", w.registries()).replace(PASS, "wrong-pw"));
    assert!(!ok);
    let api = check_row(&text, "integrated", "api");
    assert!(api.contains("FAIL"), "{api}");
    assert!(
        check_row(&text, "integrated", "push").contains("skipped"),
        "{text}"
    );
    assert!(!text.contains("wrong-pw"), "{text}");

    // The CA not pinned: the certificate is shown and called untrusted.
    let unpinned = format!(
        "{}{}{rule}",
        registry_toml("external", &w.source.url, None, ""),
        registry_toml("integrated", &w.target.url, Some((USER, PASS)), "")
    );
    let (ok, text) = check(&unpinned);
    assert!(!ok);
    let tls = check_row(&text, "integrated", "tls");
    assert!(
        tls.contains("FAIL") && tls.contains("not trusted by the system"),
        "{tls}"
    );

    // Nothing listening.
    let port = free_port();
    let (ok, text) = check(&format!(
        "{}{}{rule}",
        registry_toml("external", &format!("http://127.0.0.1:{port}"), None, ""),
        w.registries()
            .split("[registries.integrated]")
            .nth(1)
            .map(|r| format!("[registries.integrated]{r}"))
            .expect("integrated")
    ));
    assert!(!ok);
    assert!(
        check_row(&text, "external", "tcp").contains("FAIL"),
        "{text}"
    );
    assert!(
        check_row(&text, "external", "api").contains("skipped"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dockerfile_passes_hadolint_and_its_healthcheck_works() {
    let file = repo_file("Dockerfile");
    let (ok, out, err) = run(tool(
        "hadolint",
        "scripts/test.sh (it puts hadolint in target/tools; then PATH=target/tools/bin:$PATH)",
    )
    .arg(&file));
    assert!(ok, "hadolint:\n{out}{err}");
    let text = std::fs::read_to_string(&file).expect("Dockerfile");
    for needed in [
        "--locked",
        "USER 65532:65532",
        "EXPOSE 8080",
        "VOLUME [\"/var/lib/harbor-relay\"]",
        "HEALTHCHECK",
    ] {
        assert!(text.contains(needed), "Dockerfile lacks {needed}");
    }
    // Everything it copies from the build context exists.
    for line in text
        .lines()
        .filter(|l| l.starts_with("COPY ") && !l.contains("--from"))
    {
        let words: Vec<&str> = line.split_whitespace().collect();
        for src in &words[1..words.len() - 1] {
            assert!(repo_file(src).exists(), "COPY {src}: no such file");
        }
    }

    // The HEALTHCHECK command: 0 against a live daemon, non-zero otherwise.
    let relay = Relay::start("").await;
    let health = format!("{}/healthz", relay.url);
    assert!(
        relay_cmd(&["healthcheck", "--url", &health])
            .status
            .success()
    );
    let dead = format!("http://127.0.0.1:{}/healthz", free_port());
    assert!(!relay_cmd(&["healthcheck", "--url", &dead]).status.success());
}

/// The Debian package (scripts/package.sh): its control fields, its files
/// where an admin expects them, the config a conffile, no lintian error, and
/// the unit as installed passing `systemd-analyze verify`.
#[test]
fn the_debian_package_installs_what_an_admin_expects() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let (ok, out, err) = run(std::process::Command::new("bash")
        .arg(repo_file("scripts/package.sh"))
        .env("HARBOR_RELAY_BIN", env!("CARGO_BIN_EXE_harbor-relay"))
        .env("HARBOR_RELAY_DEB_OUT", out_dir.path()));
    assert!(ok, "package.sh failed:\n{out}{err}");
    let deb = std::path::PathBuf::from(out.trim().lines().last().expect("the .deb path"));
    let field = |f: &str| {
        let (_, v, _) = run(std::process::Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg(f));
        v.trim().to_string()
    };
    assert_eq!(field("Package"), "harbor-relay");
    assert_eq!(field("Architecture"), "amd64");
    assert!(field("Version").starts_with(env!("CARGO_PKG_VERSION")));
    assert!(field("Depends").contains("libc6"));

    let (_, listing, _) = run(std::process::Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/harbor-relay",
        "./lib/systemd/system/harbor-relay.service",
        "./etc/harbor-relay/harbor-relay.toml",
        "./etc/harbor-relay/credentials/",
        "./usr/share/harbor-relay/alerts.yml",
        "./usr/share/harbor-relay/harbor-relay.json",
        "./usr/share/man/man1/harbor-relay.1.gz",
        "./usr/share/bash-completion/completions/harbor-relay",
        "./usr/share/zsh/vendor-completions/_harbor-relay",
        "./usr/share/doc/harbor-relay/copyright",
    ] {
        assert!(listing.contains(path), "{path} missing:\n{listing}");
    }
    assert!(
        listing.contains("drwx------ root/root"),
        "credentials/ is 0700:\n{listing}"
    );

    let meta = tempfile::tempdir().expect("tempdir");
    run(std::process::Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb)
        .arg(meta.path()));
    let conffiles = std::fs::read_to_string(meta.path().join("conffiles")).expect("conffiles");
    assert_eq!(conffiles.trim(), "/etc/harbor-relay/harbor-relay.toml");
    let postinst = std::fs::read_to_string(meta.path().join("postinst")).expect("postinst");
    assert!(postinst.contains("daemon-reload") && !postinst.contains("enable"));
    let postrm = std::fs::read_to_string(meta.path().join("postrm")).expect("postrm");
    assert!(
        postrm.contains("\"$1\" = \"purge\""),
        "the store goes only on purge"
    );

    let (_, lint, lint_err) = run(tool("lintian", "apt-get install lintian")
        .args(["--fail-on", "error"])
        .arg(&deb));
    assert!(
        !lint.lines().any(|l| l.starts_with("E:")),
        "lintian errors:\n{lint}{lint_err}"
    );

    // Unpacked as dpkg would install it: the unit verifies against the
    // binary it ships.
    let scratch = tempfile::tempdir().expect("tempdir");
    run(std::process::Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(scratch.path()));
    let bin = scratch.path().join("usr/bin/harbor-relay");
    let (ok, version, _) = run(std::process::Command::new(&bin).arg("version"));
    assert!(
        ok && version.contains(env!("CARGO_PKG_VERSION")),
        "{version}"
    );
    let unit = std::fs::read_to_string(
        scratch
            .path()
            .join("lib/systemd/system/harbor-relay.service"),
    )
    .expect("unit")
    .replace("/usr/bin/harbor-relay", bin.to_str().expect("utf-8"));
    let unit_path = scratch.path().join("harbor-relay.service");
    std::fs::write(&unit_path, unit).expect("write unit");
    let (ok, out, err) = run(tool("systemd-analyze", "apt-get install systemd")
        .arg("verify")
        .arg(&unit_path));
    assert!(
        ok && out.trim().is_empty() && err.trim().is_empty(),
        "verify:\n{out}{err}"
    );
}
