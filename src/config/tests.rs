//! The loader against good and bad files.

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/relay.toml"), text, &|name| match name {
        "PW" => Some("s3cret".to_string()),
        "HOOK" => Some("Bearer hook".to_string()),
        _ => None,
    })
}

const GOOD: &str = r#"
        [server]
        listen = "127.0.0.1:9000"
        webhook_auth = "${HOOK}"
        [store]
        path = "/var/lib/relay"
        [registries.external]
        url = "http://127.0.0.1:5000"
        [registries.integrated]
        url = "https://harbor.local:8443"
        username = "admin"
        password = "${PW}"
        tls = { insecure_skip_verify = true }
        [[rules]]
        from = "external"
        to = "integrated"
        projects = ["library", "team-*"]
    "#;

#[test]
fn parses_a_good_file_with_defaults() {
    let c = parse(GOOD).expect("valid config");
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:9000");
    assert_eq!(
        c.server.webhook_auth.as_ref().map(Secret::expose),
        Some("Bearer hook")
    );
    let integrated = &c.registries["integrated"];
    assert_eq!(integrated.host(), "harbor.local:8443");
    assert_eq!(
        integrated.password.as_ref().map(Secret::expose),
        Some("s3cret")
    );
    assert_eq!(integrated.tls, TlsMode::InsecureSkipVerify);
    assert!(c.registries["external"].is_plain_http());
    assert_eq!(integrated.limits, RegistryLimits::default());
    let rule = &c.rules[0];
    assert_eq!(rule.name, "external-to-integrated");
    assert_eq!(rule.target_project, "{project}");
    assert_eq!(rule.tags, vec!["**"]);
    assert!(rule.exclude_tags.is_empty());
    assert_eq!(c.jobs.workers, 32, "a cap: the registries decide below it");
    assert_eq!(c.jobs.blob_concurrency, 4);
    assert_eq!(c.jobs.max_attempts, 8);
    assert_eq!(c.jobs.retention, Duration::from_secs(7 * 24 * 3600));
}

#[test]
fn secrets_do_not_show_in_debug_output() {
    let c = parse(GOOD).expect("valid config");
    let dump = format!("{c:?}");
    assert!(!dump.contains("s3cret"), "{dump}");
    assert!(!dump.contains("Bearer hook"), "{dump}");
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("should be refused").to_string()
}

#[test]
fn unknown_key_is_refused_with_file_and_key() {
    let e = error_of(&GOOD.replace("listen =", "lisen ="));
    assert!(
        e.starts_with("config /etc/relay.toml: line 3, column 9: "),
        "{e}"
    );
    assert!(e.contains("unknown field `lisen`"), "{e}");
    let e = error_of(&GOOD.replace("username = \"admin\"", "username = 7"));
    assert!(
        e.contains("registries.integrated.username: invalid type"),
        "{e}"
    );
}

#[test]
fn missing_env_var_names_key_and_variable() {
    let e = error_of(&GOOD.replace("${PW}", "${NOPE}"));
    assert!(e.contains("registries.integrated.password"), "{e}");
    assert!(e.contains("NOPE is not set"), "{e}");
}

#[test]
fn bad_url_is_refused() {
    let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "ftp://x"));
    assert!(e.contains("registries.external.url"), "{e}");
    let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "not a url"));
    assert!(e.contains("registries.external.url"), "{e}");
    let e = error_of(&GOOD.replace("http://127.0.0.1:5000", "http://h/v2/"));
    assert!(e.contains("path"), "{e}");
}

#[test]
fn rule_with_unknown_registry_is_refused() {
    let e = error_of(&GOOD.replace("to = \"integrated\"", "to = \"nowhere\""));
    assert!(e.contains("rules[0].to"), "{e}");
    assert!(e.contains("unknown registry 'nowhere'"), "{e}");
}

#[test]
fn unreadable_ca_file_is_refused() {
    let e = error_of(&GOOD.replace(
        "insecure_skip_verify = true",
        "ca_file = \"/nonexistent/ca.pem\"",
    ));
    assert!(e.contains("registries.integrated.tls.ca_file"), "{e}");
    assert!(e.contains("cannot read /nonexistent/ca.pem"), "{e}");
}

#[test]
fn ca_file_that_is_not_pem_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("ca.pem");
    std::fs::write(&f, "hello").expect("write");
    let e = error_of(&GOOD.replace(
        "insecure_skip_verify = true",
        &format!("ca_file = \"{}\"", f.display()),
    ));
    assert!(e.contains("tls.ca_file"), "{e}");
}

#[test]
fn both_tls_modes_are_refused() {
    let e = error_of(&GOOD.replace(
        "insecure_skip_verify = true",
        "insecure_skip_verify = true, ca_file = \"/x\"",
    ));
    assert!(e.contains("registries.integrated.tls"), "{e}");
}

#[test]
fn secrets_come_from_systemd_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("webhook-auth"), "Bearer from-cred\n").expect("write");
    std::fs::write(dir.path().join("pw"), "pw-from-cred").expect("write");
    let text = GOOD
        .replace(
            "webhook_auth = \"${HOOK}\"",
            "webhook_auth_file = \"${CREDENTIALS_DIRECTORY}/webhook-auth\"",
        )
        .replace(
            "password = \"${PW}\"",
            "password_file = \"${CREDENTIALS_DIRECTORY}/pw\"",
        );
    let creds = dir.path().display().to_string();
    let c = Config::parse(Path::new("/etc/relay.toml"), &text, &|name| {
        (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone())
    })
    .expect("valid");
    assert_eq!(
        c.server.webhook_auth.as_ref().map(Secret::expose),
        Some("Bearer from-cred")
    );
    assert_eq!(
        c.registries["integrated"]
            .password
            .as_ref()
            .map(Secret::expose),
        Some("pw-from-cred")
    );
    // Outside systemd the variable is missing: said plainly.
    let e = parse(&text).expect_err("no CREDENTIALS_DIRECTORY");
    assert!(
        e.to_string().contains(
            "server.webhook_auth_file: environment variable CREDENTIALS_DIRECTORY is not set"
        ) && e
            .to_string()
            .contains("export CREDENTIALS_DIRECTORY=/etc/harbor-relay/credentials"),
        "{e}"
    );
    let both = GOOD.replace(
        "webhook_auth = \"${HOOK}\"",
        "webhook_auth = \"x\"\nwebhook_auth_file = \"/x\"",
    );
    let e = parse(&both).expect_err("both");
    assert!(e.to_string().contains("not both"), "{e}");
}

#[test]
fn log_level_and_format_are_checked() {
    let c = parse(&format!(
        "{GOOD}\n[log]\nlevel = \"info,harbor_relay=debug\"\nformat = \"json\"\n"
    ))
    .expect("valid");
    assert!(c.log.json);
    assert_eq!(c.log.level.as_deref(), Some("info,harbor_relay=debug"));
    let e = parse(&format!("{GOOD}\n[log]\nformat = \"xml\"\n")).expect_err("bad format");
    assert!(e.to_string().contains("log.format"), "{e}");
    let e = parse(&format!("{GOOD}\n[log]\nlevel = \"info,=[\"\n")).expect_err("bad level");
    assert!(e.to_string().contains("log.level"), "{e}");
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("pw");
    std::fs::write(&f, "from-file\n").expect("write");
    let c = parse(&GOOD.replace(
        "password = \"${PW}\"",
        &format!("password_file = \"{}\"", f.display()),
    ))
    .expect("valid");
    assert_eq!(
        c.registries["integrated"]
            .password
            .as_ref()
            .map(Secret::expose),
        Some("from-file")
    );
}

#[test]
fn a_rule_takes_one_target_or_a_list_of_them() {
    let one = parse(GOOD).expect("parses");
    assert_eq!(one.rules[0].to, vec!["integrated".to_string()]);
    assert_eq!(one.rules[0].name, "external-to-integrated");
    let sites = GOOD.replace(
        "[[rules]]",
        "[registries.site-b]\nurl = \"https://b.local\"\n[[rules]]",
    );
    let many = parse(&sites.replace("to = \"integrated\"", "to = [\"integrated\", \"site-b\"]"))
        .expect("parses");
    assert_eq!(many.rules[0].to, vec!["integrated", "site-b"]);
    assert_eq!(many.rules[0].name, "external-to-integrated+site-b");
    for (to, key, says) in [
        ("[]", "rules[0].to", "names no registry"),
        (
            "[\"integrated\", \"nowhere\"]",
            "rules[0].to[1]",
            "unknown registry 'nowhere'",
        ),
        ("[\"site-b\", \"site-b\"]", "rules[0].to[1]", "twice"),
        (
            "[\"site-b\", \"external\"]",
            "rules[0].to[1]",
            "the rule's source",
        ),
    ] {
        let e = error_of(&sites.replace("to = \"integrated\"", &format!("to = {to}")));
        assert!(e.contains(key) && e.contains(says), "{to}: {e}");
    }
}

#[test]
fn duplicate_default_rule_names_are_refused() {
    let text = format!("{GOOD}\n[[rules]]\nfrom = \"external\"\nto = \"integrated\"\n");
    let e = error_of(&text);
    assert!(e.contains("rules[1].name"), "{e}");
}

#[test]
fn missing_store_is_refused() {
    let e = error_of(&GOOD.replace("[store]\n        path = \"/var/lib/relay\"", ""));
    assert!(e.contains("store.path"), "{e}");
}

#[test]
fn registry_limits_take_sizes_and_durations() {
    let c = parse(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            "tls = { insecure_skip_verify = true }\nmax_bytes_per_second = \"10MiB\"\nchunk_size = 1048576\nchunk_size_threshold = \"1 GiB\"\nstall_timeout = \"2m\"\nmax_concurrent_requests = 8",
        ))
        .expect("valid");
    let l = &c.registries["integrated"].limits;
    assert_eq!(l.max_bytes_per_second, Some(10 * 1024 * 1024));
    assert_eq!(l.chunk_size, 1024 * 1024);
    assert_eq!(l.chunk_size_threshold, 1024 * 1024 * 1024);
    assert_eq!(l.stall_timeout, Duration::from_secs(120));
    assert_eq!(l.max_concurrent_requests, Some(8));
    let e = error_of(&GOOD.replace(
        "tls = { insecure_skip_verify = true }",
        "chunk_size = \"lots\"",
    ));
    assert!(e.contains("registries.integrated.chunk_size"), "{e}");
}

#[test]
fn range_reads_have_defaults_and_are_checked() {
    let c = parse(GOOD).expect("valid");
    let l = &c.registries["integrated"].limits;
    assert_eq!((l.range_threshold, l.source_streams), (64 * 1024 * 1024, 8));
    let c = parse(&GOOD.replace(
        "tls = { insecure_skip_verify = true }",
        "range_threshold = \"256MiB\"\nsource_streams = 1",
    ))
    .expect("valid");
    let l = &c.registries["integrated"].limits;
    assert_eq!(
        (l.range_threshold, l.source_streams),
        (256 * 1024 * 1024, 1)
    );
    let e = error_of(&GOOD.replace(
        "tls = { insecure_skip_verify = true }",
        "source_streams = 0",
    ));
    assert!(
        e.contains("registries.integrated.source_streams") && e.contains("between 1 and 64"),
        "{e}"
    );
}

#[test]
fn trust_limits_have_defaults_and_are_checked() {
    let c = parse(GOOD).expect("valid");
    let r = &c.registries["integrated"];
    assert!(r.token_realm_hosts.is_empty());
    assert_eq!(r.limits.max_retry_after, Duration::from_secs(600));
    assert_eq!(r.limits.max_list_bytes, 64 * 1024 * 1024);
    assert_eq!(c.jobs.max_queued, 100_000);
    assert_eq!(c.server.max_connections_per_client, 128);
    let c = parse(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            "tls = { insecure_skip_verify = true }\ntoken_realm_hosts = [\"auth.docker.io\", \"10.0.0.1:5001\"]\nmax_retry_after = \"30s\"\nmax_list_bytes = \"8MiB\"\nmax_list_entries = 5000",
        ))
        .expect("valid");
    let r = &c.registries["integrated"];
    assert_eq!(r.token_realm_hosts, ["auth.docker.io", "10.0.0.1:5001"]);
    assert_eq!(r.limits.max_retry_after, Duration::from_secs(30));
    assert_eq!(r.limits.max_list_bytes, 8 * 1024 * 1024);
    assert_eq!(r.limits.max_list_entries, 5000);
    for bad in ["https://auth.docker.io", "auth.docker.io/token", ""] {
        let e = error_of(&GOOD.replace(
            "tls = { insecure_skip_verify = true }",
            &format!("token_realm_hosts = [\"{bad}\"]"),
        ));
        assert!(
            e.contains("registries.integrated.token_realm_hosts") && e.contains("host:port"),
            "{e}"
        );
    }
}

/// The credential ids the shipped unit loads (`LoadCredential=ID:PATH`).
fn unit_credentials() -> Vec<String> {
    include_str!("../../deploy/systemd/harbor-relay.service")
        .lines()
        .filter_map(|l| l.strip_prefix("LoadCredential="))
        .filter_map(|l| l.split_once(':').map(|(id, _)| id.to_string()))
        .collect()
}

/// The example config is what the package installs as its conffile: it
/// loads with the shipped unit as it is, every secret a file the unit's
/// `LoadCredential=` lines put in `CREDENTIALS_DIRECTORY`, and nothing
/// else from the environment.
#[test]
fn the_example_config_loads_with_the_units_credentials() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ids = unit_credentials();
    assert!(ids.contains(&"api-token".to_string()), "{ids:?}");
    for id in &ids {
        std::fs::write(dir.path().join(id), format!("value-of-{id}\n")).expect("write");
    }
    let ca = dir.path().join("ca.pem");
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    std::fs::write(&ca, cert.cert.pem()).expect("write");
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/harbor-relay.example.toml"),
    )
    .expect("example config")
    .replace(
        "/etc/harbor-relay/integrated-ca.pem",
        &ca.display().to_string(),
    );
    let creds = dir.path().display().to_string();
    let env = |name: &str| (name == "CREDENTIALS_DIRECTORY").then(|| creds.clone());
    let c = Config::parse(Path::new("example.toml"), &text, &env).expect("example parses");
    assert_eq!(c.rules[0].name, "tanzu");
    assert_eq!(c.rules[0].exclude_tags, vec!["*-rc*"]);
    assert!(matches!(
        c.registries["integrated"].tls,
        TlsMode::Pinned { .. }
    ));
    let secret = |s: &Option<Secret>| s.as_ref().map(|s| s.expose().to_string());
    assert_eq!(
        secret(&c.registries["external"].password).as_deref(),
        Some("value-of-external-password")
    );
    assert_eq!(
        secret(&c.registries["integrated"].password).as_deref(),
        Some("value-of-integrated-password")
    );
    assert_eq!(
        secret(&c.server.api_token).as_deref(),
        Some("value-of-api-token")
    );
    assert!(c.server.webhook_auth.is_some());
    // Every file it reads is one the unit loads: none is left out.
    let read: Vec<String> = c
        .secret_files
        .iter()
        .filter_map(|(_, p)| p.file_name().map(|f| f.to_string_lossy().to_string()))
        .collect();
    assert!(read.iter().all(|f| ids.contains(f)), "{read:?} vs {ids:?}");
    assert_eq!(read.len(), 4, "{read:?}");
}

/// Every key of docs/configuration.md's reference table is in the example
/// config, in its section (set, or commented out with its default).
#[test]
fn every_documented_key_is_in_the_example() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).expect("doc");
    let example =
        std::fs::read_to_string(root.join("config/harbor-relay.example.toml")).expect("example");
    let keys = documented_keys(&doc);
    assert!(keys.len() > 50, "{keys:?}");
    let missing: Vec<String> = keys
        .iter()
        .filter(|(section, key)| !example_has(&example, section, key))
        .map(|(s, k)| format!("{s}.{k}"))
        .collect();
    assert!(missing.is_empty(), "not in the example config: {missing:?}");
    assert!(!example_has(&example, "store", "no_such_key"));
}

/// (section, key) of each row of the reference table: `server.webhook_auth`
/// / `webhook_auth_file` gives both keys; `registries.NAME.` and `rules[].`
/// name the section `registries` and `rules`.
fn documented_keys(doc: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let cell = line.split('|').nth(1).unwrap_or_default();
        let names: Vec<&str> = cell.split('`').skip(1).step_by(2).collect();
        let Some(first) = names.first() else { continue };
        let (section, key) = match first.rsplit_once('.') {
            Some((s, k)) => (s, k),
            None => continue,
        };
        let section = section
            .trim_end_matches(".NAME")
            .trim_end_matches("[]")
            .to_string();
        out.push((section.clone(), key.to_string()));
        for other in &names[1..] {
            out.push((section.clone(), other.to_string()));
        }
    }
    out
}

/// Whether `key = …` (or `# key = …`) is in one of the example's
/// `[section]`, `[section.NAME]` or `[[section]]` tables.
fn example_has(example: &str, section: &str, key: &str) -> bool {
    let mut current = String::new();
    for line in example.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            current = t.trim_matches(|c| c == '[' || c == ']').to_string();
            continue;
        }
        let in_section = current == section || current.starts_with(&format!("{section}."));
        let body = t.trim_start_matches('#').trim_start();
        if in_section
            && body
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        {
            return true;
        }
    }
    false
}

#[test]
fn bad_target_project_is_refused() {
    let text = GOOD.replace(
        "projects = [\"library\", \"team-*\"]",
        "target_project = \"{repo}\"",
    );
    let e = error_of(&text);
    assert!(e.contains("rules[0].target_project"), "{e}");
}

#[test]
fn a_secret_file_others_may_read_or_change_is_named() {
    assert_eq!(loose_mode(0o600), None);
    assert_eq!(loose_mode(0o400), None);
    assert_eq!(loose_mode(0o640), Some("readable by its group"));
    assert_eq!(loose_mode(0o644), Some("readable by every user"));
    assert_eq!(loose_mode(0o602), Some("writable by other users"));
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "s3cret\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let text = GOOD.replace(
        "password = \"${PW}\"",
        &format!("password_file = \"{}\"", pw.display()),
    );
    let c = parse(&text).expect("valid");
    let loose = c.loose_secret_files();
    assert_eq!(loose.len(), 1, "{loose:?}");
    assert_eq!(loose[0].0, "registries.integrated.password_file");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(c.loose_secret_files().is_empty());
}

#[test]
fn a_target_project_a_source_repository_could_choose_is_refused() {
    for template in [
        "{repository}",
        "x{repository}",
        "/{repository}",
        "{project}{repository}",
    ] {
        let text = GOOD.replace(
            "projects = [\"library\", \"team-*\"]",
            &format!("target_project = \"{template}\""),
        );
        let e = error_of(&text);
        assert!(e.contains("rules[0].target_project"), "{template}: {e}");
        assert!(
            e.contains("would let a source repository choose which target project"),
            "{template}: {e}"
        );
    }
    for fine in [
        "{project}/{repository}",
        "mirror/{repository}",
        "{project}-dr/{repository}",
    ] {
        let text = GOOD.replace(
            "projects = [\"library\", \"team-*\"]",
            &format!("target_project = \"{fine}\""),
        );
        parse(&text).expect(fine);
    }
}

#[test]
fn a_wrong_type_is_said_in_words_not_rust_types() {
    let e = error_of(&GOOD.replace(
        "[store]",
        "[jobs]\n        workers = \"four\"\n        [store]",
    ));
    assert!(e.contains("jobs.workers"), "{e}");
    assert!(e.contains("expected a whole number"), "{e}");
    assert!(!e.contains("usize"), "{e}");
}

#[test]
fn the_usual_slips_get_the_fix_in_their_message() {
    let e = error_of(&GOOD.replace("[[rules]]", "[rules]"));
    assert!(e.contains("[[rules]]"), "{e}");
    let e = error_of(&GOOD.replace(
        "tls = { insecure_skip_verify = true }",
        "tls = { insecure_skip_verify = true }\nstall_timeout = 60s",
    ));
    assert!(e.contains("stall_timeout = \"60s\""), "{e}");
    let e = error_of(&GOOD.replace("https://harbor.local:8443", "harbor.local:8443"));
    assert!(e.contains("https://harbor.local:8443"), "{e}");
    let e = error_of(&GOOD.replace(
        "projects = [\"library\", \"team-*\"]",
        "projects = [\"library/\"]",
    ));
    assert!(
        e.contains("rules[0].projects") && e.contains("repositories"),
        "{e}"
    );
}

#[test]
fn a_password_file_with_trailing_whitespace_is_noted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let clean = dir.path().join("clean");
    let spaced = dir.path().join("spaced");
    std::fs::write(&clean, "s3cret\n").expect("write");
    std::fs::write(&spaced, "s3cret \n").expect("write");
    let with_file = |f: &std::path::Path| {
        parse(&GOOD.replace(
            "password = \"${PW}\"",
            &format!("password_file = \"{}\"", f.display()),
        ))
        .expect("valid")
    };
    let c = with_file(&clean);
    assert_eq!(c.registries["integrated"].password_note, None);
    let c = with_file(&spaced);
    let note = c.registries["integrated"]
        .password_note
        .clone()
        .expect("note");
    assert!(note.contains("ends in whitespace"), "{note}");
    assert!(!note.contains("s3cret"), "the secret is not in the note");
}

#[test]
fn labels_need_a_harbor_source() {
    let e = error_of(&GOOD.replace(
        "projects = [\"library\", \"team-*\"]",
        "projects = [\"library\"]\nlabels = [\"release\"]",
    ));
    assert!(
        e.contains("rules[0].labels") && e.contains("kind = \"harbor\""),
        "{e}"
    );
}

#[test]
fn a_postgres_store_takes_its_password_apart_and_refuses_what_it_cannot_do() {
    let with = |store: &str| GOOD.replace("path = \"/var/lib/relay\"", store);
    let c = parse(&with(
        "url = \"postgres://relay@db.example:5433/harbor_relay?sslmode=disable\"\n        password = \"${PW}\"\n        lease = \"45s\"",
    ))
    .expect("valid");
    let pg = c.store.postgres.as_ref().expect("postgres");
    assert_eq!(pg.connect.get_password(), Some(&b"s3cret"[..]));
    assert_eq!(pg.lease, Duration::from_secs(45));
    assert_eq!(pg.shown, "db.example/harbor_relay");
    assert!(
        !format!("{c:?}").contains("s3cret"),
        "the password in Debug output"
    );
    assert!(c.inline_secrets.iter().all(|k| k != "store.url"));
    assert!(
        pg.clear_text_warning()
            .is_some_and(|w| w.contains("sslmode=disable")),
        "disable is warned about"
    );
    // A password inline in the URL is an inline secret, as elsewhere.
    let c = parse(&with("url = \"postgres://relay:pw@db/harbor_relay\"")).expect("valid");
    assert!(c.inline_secrets.iter().any(|k| k == "store.url"));
    // No sslmode: TLS required (libpq's `prefer` would fall back to the
    // clear), and nothing to warn about.
    let pg = c.store.postgres.as_ref().expect("postgres");
    assert_eq!(
        pg.connect.get_ssl_mode(),
        tokio_postgres::config::SslMode::Require
    );
    assert_eq!(pg.clear_text_warning(), None);
    let c = parse(&with("url = \"postgres://relay@db/x?sslmode=prefer\"")).expect("prefer");
    let pg = c.store.postgres.as_ref().expect("postgres");
    assert_eq!(
        pg.connect.get_ssl_mode(),
        tokio_postgres::config::SslMode::Prefer
    );
    assert!(
        pg.clear_text_warning()
            .is_some_and(|w| w.contains("sslmode=prefer"))
    );
    let both = error_of(&with(
        "path = \"/x\"\n        url = \"postgres://relay@db/x\"",
    ));
    assert!(both.contains("not both"), "{both}");
    let c = parse(&with("url = \"postgres://relay@db/x?sslmode=require\"")).expect("TLS");
    assert!(
        c.store.postgres.expect("pg").ca_pem.is_none(),
        "the system's trust store"
    );
    let ca = error_of(&with(
        "url = \"postgres://relay@db/x?sslmode=require\"\n        ca_file = \"/nonexistent/ca.pem\"",
    ));
    assert!(
        ca.contains("store.ca_file") && ca.contains("cannot read"),
        "{ca}"
    );
    let user = error_of(&with("url = \"postgres://db/x\""));
    assert!(user.contains("names no user"), "{user}");
    let twice = error_of(&with(
        "url = \"postgres://relay:a@db/x\"\n        password = \"${PW}\"",
    ));
    assert!(twice.contains("password already"), "{twice}");
    let short = error_of(&with(
        "url = \"postgres://relay@db/x\"\n        lease = \"1s\"",
    ));
    assert!(short.contains("at least 3s"), "{short}");
}

#[test]
fn every_duration_key_refuses_the_same_way_naming_its_key() {
    let cases = [
        (
            GOOD.replace(
                "[store]",
                "[jobs]\n        retention = \"soon\"\n        [store]",
            ),
            "jobs.retention",
        ),
        (
            format!("{GOOD}        reconcile_interval = \"soon\"\n"),
            "rules[0].reconcile_interval",
        ),
        (
            GOOD.replace(
                "path = \"/var/lib/relay\"",
                "url = \"postgres://relay@db/x\"\n        lease = \"soon\"",
            ),
            "store.lease",
        ),
        (
            GOOD.replace(
                "tls = { insecure_skip_verify = true }",
                "tls = { insecure_skip_verify = true }\n        stall_timeout = \"soon\"",
            ),
            "registries.integrated.stall_timeout",
        ),
    ];
    for (text, key) in cases {
        let e = error_of(&text);
        assert!(
            e.contains(key)
                && e.contains("`soon` is not a duration like \"30s\", \"10m\" or \"7d\""),
            "{key}: {e}"
        );
    }
}
