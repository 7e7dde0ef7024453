# Sourced by tests/newcomer.rs before the commands of docs/install.md, in a
# private mount namespace where /etc, /usr, /var and /run are overlays (the
# host's files as they are, every write kept apart and thrown away).
#
# systemd cannot run here, so `systemctl` and `journalctl` are played, as
# far as those commands need them, from the unit file that is installed:
# - `enable --now` / `start` does what systemd does before ExecStart=: the
#   unit's Environment= lines, each LoadCredential= file copied into a fresh
#   $CREDENTIALS_DIRECTORY (a missing file fails the start, as it does under
#   systemd: "Failed to set up credentials"), StateDirectory= made and given
#   to the service's user, UMask=; then ExecStart= runs as an unprivileged
#   user (DynamicUser= gives a fresh one; `nobody` here) with NOTIFY_SOCKET
#   set, and the start returns once the daemon says READY=1 (Type=notify),
#   or fails if it exits first;
# - `status` prints whether it runs and the last STATUS= it sent;
# - `journalctl -u UNIT` prints its output (`-f` does not follow).
# Not played: the sandboxing (ProtectSystem= and the rest, which
# `systemd-analyze security` checks in tests/operate.rs), the watchdog.
#
# Needs: $PLAY_DIR, a directory outside the overlays, for the log, the pid
# and the notify socket.

unit_file() {
  local f
  for f in "/etc/systemd/system/$1.service" "/lib/systemd/system/$1.service"; do
    [ -f "$f" ] && { printf '%s\n' "$f"; return 0; }
  done
  echo "Unit $1.service could not be found." >&2
  return 1
}

unit_start() {
  local name=${1%.service} unit line id src creds exec="" umask_value=0022
  local -a envs=()
  unit=$(unit_file "$name") || return 1
  creds=/run/credentials/$name.service
  rm -rf "$creds"
  mkdir -p "$creds"
  while IFS= read -r line; do
    case "$line" in
      Environment=*) envs+=("${line#Environment=}") ;;
      LoadCredential=*)
        id=${line#LoadCredential=}; src=${id#*:}; id=${id%%:*}
        if ! cp "$src" "$creds/$id" 2>/dev/null; then
          echo "$name.service: Failed to set up credentials: $src: No such file or directory" >&2
          return 1
        fi ;;
      StateDirectory=*) mkdir -p "/var/lib/${line#StateDirectory=}"
        chown -R nobody:nogroup "/var/lib/${line#StateDirectory=}"
        chmod 0700 "/var/lib/${line#StateDirectory=}" ;;
      UMask=*) umask_value=${line#UMask=} ;;
      ExecStart=*) exec=${line#ExecStart=} ;;
    esac
  done <"$unit"
  chown -R nobody:nogroup "$creds"
  chmod 0500 "$creds"
  chmod 0400 "$creds"/* 2>/dev/null || true
  [ -n "$exec" ] || { echo "$unit has no ExecStart=" >&2; return 1; }
  # shellcheck disable=SC2086 # ExecStart= is split on spaces, as systemd does here
  (cd / && umask "$umask_value" && exec python3 "$PLAY_DIR/notify.py" "$PLAY_DIR" \
    setpriv --reuid=nobody --regid=nogroup --clear-groups \
    env "${envs[@]}" CREDENTIALS_DIRECTORY="$creds" $exec)
}

systemctl() {
  local verb=$1
  shift
  case "$verb" in
    daemon-reload) ;;
    enable) [ "${1:-}" = --now ] && unit_start "$2" ;;
    start | restart) unit_start "$1" ;;
    stop) [ -f "$PLAY_DIR/pid" ] && kill "$(cat "$PLAY_DIR/pid")" 2>/dev/null; rm -f "$PLAY_DIR/pid" ;;
    status)
      if [ -f "$PLAY_DIR/pid" ] && kill -0 "$(cat "$PLAY_DIR/pid")" 2>/dev/null; then
        echo "● $1.service"
        echo "     Active: active (running)"
        echo "     Status: \"$(cat "$PLAY_DIR/status" 2>/dev/null)\""
      else
        echo "● $1.service"
        echo "     Active: inactive (dead)"
        return 3
      fi ;;
    *) echo "systemctl $verb: not played by tests/support/play_systemd.sh" >&2; return 1 ;;
  esac
}

journalctl() { cat "$PLAY_DIR/log"; }

# The daemon runs until the script ends.
trap 'systemctl stop harbor-relay' EXIT

cat >"$PLAY_DIR/notify.py" <<'PY'
# systemd's side of Type=notify: a datagram socket in NOTIFY_SOCKET, the
# service started with it, and the start done once it sends READY=1.
import os, socket, subprocess, sys, time
play, argv = sys.argv[1], sys.argv[2:]
path = os.path.join(play, "notify")
if os.path.exists(path):
    os.unlink(path)
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
os.chmod(path, 0o777)
sock.settimeout(0.2)
log = open(os.path.join(play, "log"), "ab")
proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                        env=dict(os.environ, NOTIFY_SOCKET=path), start_new_session=True)
open(os.path.join(play, "pid"), "w").write(str(proc.pid))
deadline = time.time() + 60
while time.time() < deadline:
    if proc.poll() is not None:
        sys.stderr.write("harbor-relay.service: Main process exited, status=%d\n" % proc.returncode)
        sys.stderr.write(open(os.path.join(play, "log")).read())
        sys.exit(1)
    try:
        msg = sock.recv(4096).decode()
    except socket.timeout:
        continue
    for line in msg.split("\n"):
        if line.startswith("STATUS="):
            open(os.path.join(play, "status"), "w").write(line[len("STATUS="):])
    if "READY=1" in msg.split("\n"):
        sys.exit(0)
sys.stderr.write("harbor-relay.service: start operation timed out\n")
sys.exit(1)
PY
