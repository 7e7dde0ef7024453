# Shell helpers shared by scripts/test.sh and scripts/bench.sh (sourced).

log() { printf '\n==> %s\n' "$*"; }

# apt_install PACKAGE...: installs Debian packages (through sudo when not
# root); does nothing without arguments.
apt_install() {
  [ $# -gt 0 ] || return 0
  log "installing $*"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# built_binary [CARGO BUILD ARGS...]: builds harbor-relay and prints the
# path cargo wrote it to, wherever that is (CARGO_TARGET_DIR, a profile,
# build.target-dir in a cargo config): cargo says so in its JSON messages.
# Cargo's own progress and errors still go to stderr.
built_binary() {
  local exe
  exe=$(cargo build --bin harbor-relay --message-format=json-render-diagnostics "$@" |
    sed -n 's/.*"executable":"\([^"]*harbor-relay\)".*/\1/p' | tail -1)
  [ -n "$exe" ] && [ -x "$exe" ] || { echo "cargo built no harbor-relay binary" >&2; return 1; }
  printf '%s\n' "$exe"
}

# target_dir: the directory cargo builds into (CARGO_TARGET_DIR, or a
# cargo config's build.target-dir, else target/).
target_dir() {
  cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p'
}
