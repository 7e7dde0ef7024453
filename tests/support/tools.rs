//! Running the tools a test checks its files with (`promtool`,
//! `systemd-analyze`, `hadolint`, …), failing loudly with the install
//! command when one is missing: a missing tool is a failed test, never a
//! skipped one.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file of this repository.
pub fn repo_file(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Runs a tool that the test needs, failing loudly with the install command
/// when it is missing.
pub fn tool(name: &str, package: &str) -> Command {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        found,
        "`{name}` is missing: install it with `{package}` (scripts/test.sh does this)"
    );
    Command::new(name)
}

/// Runs `cmd`: whether it succeeded, its stdout, its stderr.
pub fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tool");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
