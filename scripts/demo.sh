#!/usr/bin/env bash
# See harbor-relay replicate, on this machine, in under a minute.
#
# Starts two real registries (the CNCF distribution registry that Harbor
# embeds): a plain-HTTP "external" source and an "integrated" target with a
# self-signed certificate. Starts harbor-relay with the target's CA pinned,
# pushes a small image to the source, sends the webhook Harbor would send,
# and shows the image on the target with the same digest. Cleans up after
# itself, unless --keep is given: then it leaves the registries and the relay
# running and prints how to send them more webhooks (docs/install.md,
# "Sending a webhook by hand").
#
#   scripts/demo.sh            # builds harbor-relay (the first build takes a few minutes)
#   scripts/demo.sh --keep     # ... and leaves it all running; Ctrl-C stops it
#   HARBOR_RELAY_BIN=/usr/bin/harbor-relay scripts/demo.sh   # use a binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

KEEP=""
case "${1:-}" in
  --keep) KEEP=1 ;;
  "") ;;
  *) echo "usage: scripts/demo.sh [--keep]" >&2; exit 2 ;;
esac

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

REGISTRY_BIN=${REGISTRY_BIN:-/usr/bin/docker-registry}
[ -x "$REGISTRY_BIN" ] || die "the distribution registry is not installed: apt-get install -y docker-registry"
for tool in curl openssl sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing: apt-get install -y $tool"
done

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p=$1
  while ! port_free "$p"; do p=$((p + 1)); done
  echo "$p"
}
SRC_PORT=$(pick_port "${SRC_PORT:-15000}")
DST_PORT=$(pick_port "${DST_PORT:-15443}")
RELAY_PORT=$(pick_port "${RELAY_PORT:-18080}")

WORK=$(mktemp -d /tmp/harbor-relay-demo.XXXXXX)
PIDS=()
cleanup() {
  local status=$?
  # The demo failed while the relay ran: show why before its log goes.
  if [ "$status" != 0 ] && [ "$status" != 130 ] && [ -s "$WORK/relay.log" ]; then
    echo "demo: the last lines of harbor-relay's log ($WORK/relay.log):" >&2
    tail -n 30 "$WORK/relay.log" | sed 's/^/    /' >&2
  fi
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM   # Ctrl-C (or a kill) still cleans up

# HARBOR_RELAY_BIN is used as it is; otherwise cargo builds the binary (a
# debug build, the quicker one; a no-op when it is up to date) and says
# where it put it, which honours CARGO_TARGET_DIR.
if [ -n "${HARBOR_RELAY_BIN:-}" ]; then
  RELAY=$HARBOR_RELAY_BIN
else
  say "building harbor-relay (the first build takes a few minutes)"
  RELAY=$(built_binary --quiet)
fi
echo "harbor-relay: $RELAY"

say "making a CA and a certificate for the 'integrated' registry (127.0.0.1)"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=demo integrated Harbor CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
  -keyout "$WORK/server.key" -out "$WORK/server.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
  -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/server.pem" 2>/dev/null

start_registry() { # name port [tls]
  local name=$1 port=$2 tls=${3:-}
  mkdir -p "$WORK/$name"
  {
    printf 'version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n'
    printf 'storage:\n  filesystem:\n    rootdirectory: %s\n' "$WORK/$name/data"
    printf 'http:\n  addr: 127.0.0.1:%s\n  secret: demo\n' "$port"
    if [ -n "$tls" ]; then
      printf '  tls:\n    certificate: %s\n    key: %s\n' "$WORK/server.pem" "$WORK/server.key"
    fi
  } >"$WORK/$name/config.yml"
  "$REGISTRY_BIN" serve "$WORK/$name/config.yml" >"$WORK/$name/log" 2>&1 &
  PIDS+=($!)
}

say "starting the 'external' source registry on http://127.0.0.1:$SRC_PORT"
start_registry external "$SRC_PORT"
say "starting the 'integrated' target registry on https://127.0.0.1:$DST_PORT (self-signed)"
start_registry integrated "$DST_PORT" tls
SRC="http://127.0.0.1:$SRC_PORT"
DST="https://127.0.0.1:$DST_PORT"
for url in "$SRC/v2/" "$DST/v2/"; do
  for _ in $(seq 100); do
    curl -fsS --cacert "$WORK/ca.pem" -o /dev/null "$url" 2>/dev/null && break
    sleep 0.1
  done
done

say "pushing library/hello:1.0 to the source (a config and two random layers)"
REPO=library/hello
push_blob() { # file -> digest
  local file=$1 digest location
  digest="sha256:$(sha256sum "$file" | cut -d' ' -f1)"
  location=$(curl -fsS -X POST -D - -o /dev/null "$SRC/v2/$REPO/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: //p')
  case "$location" in http*) ;; *) location="$SRC$location" ;; esac
  case "$location" in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -fsS -X PUT -H 'Content-Type: application/octet-stream' \
    --data-binary "@$file" "$location${sep}digest=$digest" -o /dev/null
  echo "$digest"
}
head -c 300000 /dev/urandom >"$WORK/layer1"
head -c 120000 /dev/urandom >"$WORK/layer2"
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}' >"$WORK/config.json"
L1=$(push_blob "$WORK/layer1"); L2=$(push_blob "$WORK/layer2"); CFG=$(push_blob "$WORK/config.json")
size() { wc -c <"$1" | tr -d ' '; }
cat >"$WORK/manifest.json" <<JSON
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$CFG","size":$(size "$WORK/config.json")},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$L1","size":$(size "$WORK/layer1")},{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$L2","size":$(size "$WORK/layer2")}]}
JSON
curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
  --data-binary "@$WORK/manifest.json" "$SRC/v2/$REPO/manifests/1.0" -o /dev/null
DIGEST="sha256:$(sha256sum "$WORK/manifest.json" | cut -d' ' -f1)"
echo "pushed $REPO:1.0 = $DIGEST"

say "starting harbor-relay on http://127.0.0.1:$RELAY_PORT with the target's CA pinned"
export DEMO_WEBHOOK_SECRET="Bearer demo-secret"
cat >"$WORK/relay.toml" <<TOML
[server]
listen = "127.0.0.1:$RELAY_PORT"
webhook_auth = "\${DEMO_WEBHOOK_SECRET}"   # read from the environment

[store]
path = "$WORK/store"

[registries.external]
url = "$SRC"

[registries.integrated]
url = "$DST"
tls = { ca_file = "$WORK/ca.pem" }

[[rules]]
from = "external"
to = "integrated"
projects = ["library"]
TOML
sed 's/^/    /' "$WORK/relay.toml"
"$RELAY" serve --config "$WORK/relay.toml" >"$WORK/relay.log" 2>&1 &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
UP=""
for _ in $(seq 100); do
  curl -fsS -o /dev/null "http://127.0.0.1:$RELAY_PORT/healthz" 2>/dev/null && { UP=1; break; }
  kill -0 "$RELAY_PID" 2>/dev/null || break
  sleep 0.1
done
[ -n "$UP" ] || die "harbor-relay did not come up on 127.0.0.1:$RELAY_PORT"

say "sending the PUSH_ARTIFACT webhook Harbor would send"
cat >"$WORK/webhook.json" <<JSON
{"type":"PUSH_ARTIFACT","occur_at":$(date +%s),"operator":"admin",
 "event_data":{"resources":[{"digest":"$DIGEST","tag":"1.0","resource_url":"127.0.0.1:$SRC_PORT/$REPO:1.0"}],
 "repository":{"name":"hello","namespace":"library","repo_full_name":"$REPO","repo_type":"private"}}}
JSON
ANSWER=$(curl -sS -X POST -H 'Content-Type: application/json' -H "Authorization: $DEMO_WEBHOOK_SECRET" \
  --data-binary "@$WORK/webhook.json" "http://127.0.0.1:$RELAY_PORT/webhooks/harbor")
echo "harbor-relay answered: $ANSWER"
JOB=$(printf '%s' "$ANSWER" | sed -n 's/.*"id":\([0-9]*\).*/\1/p')
[ -n "$JOB" ] || die "no job id in the answer"

say "waiting for job $JOB"
STATE=""
for _ in $(seq 300); do
  JSON=$(curl -fsS "http://127.0.0.1:$RELAY_PORT/api/v1/jobs/$JOB")
  STATE=$(printf '%s' "$JSON" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
  case "$STATE" in succeeded | failed) break ;; esac
  sleep 0.1
done
echo "$JSON"
[ "$STATE" = succeeded ] || { cat "$WORK/relay.log"; die "job $JOB $STATE"; }

say "comparing digests"
digest_of() { # url [curl args]
  local url=$1; shift
  curl -fsS -I "$@" -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: //p'
}
S=$(digest_of "$SRC/v2/$REPO/manifests/1.0")
T=$(digest_of "$DST/v2/$REPO/manifests/1.0" --cacert "$WORK/ca.pem")
echo "source  external   $REPO:1.0  $S"
echo "target  integrated $REPO:1.0  $T"
[ "$S" = "$T" ] || die "digests differ"
for b in "$CFG" "$L1" "$L2"; do
  curl -fsS -I --cacert "$WORK/ca.pem" -o /dev/null "$DST/v2/$REPO/blobs/$b" || die "blob $b missing on target"
done
printf '\n\033[1;32mReplicated: same digest on both sides, every blob present.\033[0m\n'
echo "(harbor-relay's log so far:)"
sed 's/^/    /' "$WORK/relay.log"

if [ -n "$KEEP" ]; then
  cat <<EOF

Left running (Ctrl-C stops it all and removes $WORK):
  source   $SRC   (holds $REPO:1.0)
  target   $DST   (CA: $WORK/ca.pem)
  relay    http://127.0.0.1:$RELAY_PORT   (status page at /; webhook secret: $DEMO_WEBHOOK_SECRET)
Send a webhook by hand as docs/install.md shows ("Sending a webhook by hand"), e.g.:
  curl -sS -H 'Content-Type: application/json' -H 'Authorization: $DEMO_WEBHOOK_SECRET' \\
    --data-binary @$WORK/webhook.json http://127.0.0.1:$RELAY_PORT/webhooks/harbor
EOF
  wait "$RELAY_PID" || true
fi
