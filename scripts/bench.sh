#!/usr/bin/env bash
# harbor-relay's benchmark suite, against skopeo in the same run.
#
#   scripts/bench.sh                       # every scenario, 3 runs each
#   BENCH_RUNS=5 scripts/bench.sh          # more runs per median
#   BENCH_SCENARIOS=big,latency scripts/bench.sh
#   BENCH_TARGET_AUTH=token scripts/bench.sh   # target behind token auth, as Harbor
#   BENCH_SOURCE_AUTH=token scripts/bench.sh   # source behind token auth too
#
# Scenarios: big (1 GiB in 4 layers), huge (one 4 GiB layer), many (200
# images from 200 webhooks vs one skopeo sync) and noop (the same again,
# already replicated), gated (the same 200 with the signature and scan gates
# on, against them off, through the Harbor double), outage (the same 200 with
# the target stopped for 20 s: the last image after it is back), shared (20 repositories
# sharing 3 base layers),
# latency (webhook to target, 1 MiB image), ingest (durable webhooks/s), and
# across a WAN link to the source (tests/support/wan.rs): wan-many (20 small
# images, 100 ms RTT), wan-small-layers (8 x 10 x 1 MiB, 40 ms RTT, 200 Mbit/s,
# against a plain parallel fetch of the same blobs), wan-big (8 x 10 MiB and one 256 MiB layer, 40 ms RTT,
# 200 Mbit/s), wan-flows (one 1 GiB layer over a link that caps each
# connection), fan-out (20 images to 3 sites, each blob read once),
# wan-one (webhook to tag, in RTTs), wan-index (the same for an index of 4
# platforms, against skopeo copy --all); and ha (the many images
# with 1, 2 and 3 relays sharing a PostgreSQL queue; not in the default list).
#
# The registries keep their storage on tmpfs (/dev/shm) when it has 12 GiB
# free, unless BENCH_REGISTRY_STORAGE=disk: distribution fsyncs every blob
# it writes, and the loopback floors are the CPU the run took, which counts
# none of those waits. The relay's own store stays under $TMPDIR, on disk,
# as in production.
# Needs about 20 GiB free under $TMPDIR and ~15 minutes for everything.
# Results: a table on stdout and JSON in target/bench/.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib.sh

missing=()
[ -x /usr/bin/docker-registry ] || missing+=(docker-registry)
command -v skopeo >/dev/null || missing+=(skopeo)
apt_install "${missing[@]}"
command -v skopeo >/dev/null || { echo "skopeo is missing: apt-get install -y skopeo" >&2; exit 1; }

shm_free_kib=$(df --output=avail -k /dev/shm 2>/dev/null | tail -1) || shm_free_kib=0
if [ "${BENCH_REGISTRY_STORAGE:-tmpfs}" = tmpfs ] && [ -z "${BENCH_REGISTRY_DIR:-}" ] \
   && [ "${shm_free_kib:-0}" -gt $((12 * 1024 * 1024)) ]; then
  export BENCH_REGISTRY_DIR=/dev/shm
fi
log "registries' storage: ${BENCH_REGISTRY_DIR:-\$TMPDIR (disk)}"

scenarios=${BENCH_SCENARIOS:-big,huge,many,gated,outage,shared,latency,wan-many,wan-small-layers,wan-big,wan-flows,fan-out,wan-one,wan-index,ingest}
mkdir -p target/bench

if [[ ",$scenarios," == *,ingest,* ]]; then
  log "webhook ingest (durable), 50 clients"
  cargo bench --locked --bench ingest 2>&1 | tee target/bench/ingest.txt
fi
rest=$(echo ",$scenarios," | sed 's/,ingest,/,/g; s/^,//; s/,$//')
if [ -n "$rest" ]; then
  log "replication against skopeo $(skopeo --version | awk '{print $3}'): $rest"
  BENCH_SCENARIOS="$rest" cargo bench --locked --bench replication
fi
