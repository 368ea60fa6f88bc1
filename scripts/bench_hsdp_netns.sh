#!/usr/bin/env bash
# HSDP against FSDP across 2 simulated nodes: two network namespaces joined by a rate-limited link
# (scripts/netns_cluster.sh, tbf on each node's interface), 2 ranks per node under trainlaunch, one thread per rank.
# Runs tests/bench/bench_hsdp (see its header) and prints its lines: bytes over the inter-node link per step and step
# time for plain FSDP over the 4 ranks and for HSDP (dp 2 x fsdp 2: sharded within a node, replicated across).
# Needs root, iproute2 and tc. The namespaces are torn down on exit.
#
#   scripts/bench_hsdp_netns.sh [--build DIR] [--rate RATE] [-- BENCH_ARGS...]
#       --build DIR   the build directory (default build)
#       --rate RATE   the link's rate limit per direction (default 1gbit)
#       BENCH_ARGS    passed to bench_hsdp (BACKEND LAYERS WIDTH HEADS SEQ BATCH_PER_RANK VOCAB STEPS)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
src=$(dirname "$here")
build=$src/build rate=1gbit
while [ $# -gt 0 ]; do
  case $1 in
    --build) build=$(cd "$2" && pwd); shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "bench_hsdp_netns.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
NC=$here/netns_cluster.sh
TL=$build/launcher/trainlaunch
BENCH=$build/tests/bench/bench_hsdp
for f in "$TL" "$BENCH"; do
  [ -x "$f" ] || { echo "bench_hsdp_netns.sh: $f is missing; build the targets trainlaunch and bench_hsdp" >&2; exit 2; }
done

name=loomhsdp-$$
out=$(mktemp -d)
cleanup() {
  "$NC" down "$name" > /dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$NC" up "$name" 2 --rate "$rate"
A0=$("$NC" addr 0)
# MASTER_PORT and MASTER_PORT+1 (the launchers' store), free in node 0's namespace (asked there, not assumed).
PORT=$("$NC" exec "$name" 0 "$here/../tests/free_port.sh" 2)
SECRET=bench-hsdp-$RANDOM$RANDOM
launch() {  # launch NODE [BENCH_ARGS...]: that node's launcher with 2 ranks
  local node=$1
  shift
  "$NC" exec "$name" "$node" timeout 600 env OMP_NUM_THREADS=1 LOOM_STORE_SECRET="$SECRET" LOOM_BENCH_IFACE=lan0 \
    "$TL" --nnodes 2 --node-rank "$node" --nproc-per-node 2 --master-addr "$A0" --master-port $PORT -- "$BENCH" "$@"
}
echo "# 2 nodes x 2 ranks, link rate $rate per direction (tbf), OMP_NUM_THREADS=1"
launch 1 "$@" > "$out/node1.txt" 2>&1 &
p1=$!
rc=0
launch 0 "$@" > "$out/node0.txt" 2>&1 || rc=$?
wait $p1 || rc=$?
if [ $rc -ne 0 ]; then
  echo "bench_hsdp_netns.sh: the job failed (exit $rc)" >&2
  tail -n 30 "$out/node0.txt" "$out/node1.txt" >&2
  exit 1
fi
# bench_hsdp's own lines (rank 0's), without the launcher's prefix.
sed -n 's/^\[[^]]*rank0\]: //p' "$out/node0.txt" | grep -E '^(#|fsdp|hsdp)'
