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
