//! The architecture's import rules (ARCHITECTURE.md, "Invariants"), checked
//! on the source: data flows one way, and no module reaches up to one that
//! uses it. A `use crate::x` or a `crate::x::` path in code (not in a
//! comment) counts as an import of `x`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each module and the modules it may use. Anything else is a violation.
const ALLOWED: &[(&str, &[&str])] = &[
    ("reference", &[]),
    ("clock", &[]),
    ("advice", &[]),
    ("gate", &["manifest", "reference"]),
    ("notify", &[]),
    ("manifest", &["reference"]),
    ("event", &["manifest", "reference"]),
    ("config", &["gate", "reference"]),
    ("rules", &["config", "reference"]),
    ("registry", &["config", "manifest", "reference"]),
    ("harbor", &["registry", "reference"]),
    ("metrics", &["registry"]),
    (
        "replicate",
        &[
            "clock",
            "gate",
            "harbor",
            "manifest",
            "metrics",
            "reference",
            "registry",
        ],
    ),
    ("live", &["config", "registry", "rules"]),
    (
        "jobs",
        &[
            "clock",
            "config",
            "event",
            "gate",
            "live",
            "metrics",
            "reference",
            "registry",
            "replicate",
            "rules",
        ],
    ),
    (
        "reconcile",
        &[
            "clock",
            "config",
            "harbor",
            "jobs",
            "metrics",
            "reference",
            "registry",
            "rules",
        ],
    ),
    (
        "check",
        &["advice", "config", "harbor", "reference", "registry"],
    ),
    (
        "api",
        &[
            "advice",
            "config",
            "event",
            "jobs",
            "live",
            "metrics",
            "reference",
            "registry",
            "rules",
        ],
    ),
    (
        "daemon",
        &[
            "api",
            "config",
            "jobs",
            "live",
            "metrics",
            "notify",
            "reconcile",
            "registry",
            "replicate",
        ],
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top module a file under `src/` belongs to (`src/registry/mod.rs`
/// and `src/registry/auth.rs` are `registry`); `None` for the crate roots
/// and the binary's own `cli` modules.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let first = rel.components().next()?.as_os_str().to_str()?.to_string();
    let name = first.trim_end_matches(".rs").to_string();
    (!matches!(name.as_str(), "lib" | "main" | "cli")).then_some(name)
}

/// The crate modules a file's code names.
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

#[test]
fn modules_import_only_what_is_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut violations = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        seen.insert(module.clone());
        let Some(may) = allowed.get(module.as_str()) else {
            violations.push(format!(
                "{}: module `{module}` is not in ALLOWED; add it with what it may use",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        for used in imports(&text) {
            if used != module && !may.contains(&used.as_str()) {
                violations.push(format!(
                    "{}: `{module}` uses `{used}`, which is not below it",
                    file.display()
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
    for (module, _) in ALLOWED {
        assert!(
            seen.contains(*module),
            "ALLOWED names `{module}`, which is gone"
        );
    }
}

#[test]
fn the_copier_and_the_registry_client_know_nothing_of_jobs_or_http_servers() {
    for (module, may) in ALLOWED {
        if matches!(*module, "registry" | "replicate") {
            for above in ["jobs", "api", "daemon", "reconcile", "live"] {
                assert!(!may.contains(&above), "`{module}` may not use `{above}`");
            }
        }
    }
}

#[test]
fn the_import_scanner_ignores_comments() {
    let found = imports("use crate::registry::Registry; // see crate::jobs\n/// [`crate::api`]\n");
    assert_eq!(found.into_iter().collect::<Vec<_>>(), ["registry"]);
}
