#!/usr/bin/env bash
# Runs a one-rank-per-process bench across two simulated nodes: network namespaces made by scripts/netns_cluster.sh,
# joined by a link rate-limited with tbf, one rank (and one thread) per node, started by trainlaunch on each node.
# Needs root (ip netns, tc). Prints rank 0's output.
#   tests/bench/overlap_netns.sh BUILD_DIR RATE BENCH [ARGS...]
#   e.g. tests/bench/overlap_netns.sh build 4gbit bench_overlap
#        LOOM_BENCH_BACKEND=mpi tests/bench/overlap_netns.sh build 4gbit bench_parallel
# BENCH is a program under BUILD_DIR/tests/bench (bench_overlap, bench_parallel).
set -euo pipefail
[ $# -ge 3 ] || {
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
}
build=$(realpath "$1") rate=$2 bench=$3
shift 3
repo=$(cd "$(dirname "$0")/../.." && pwd)
NC=$repo/scripts/netns_cluster.sh
TL=$build/launcher/trainlaunch
BIN=$build/tests/bench/$bench
[ -x "$TL" ] || { echo "overlap_netns.sh: no $TL (build trainlaunch)" >&2; exit 1; }
[ -x "$BIN" ] || { echo "overlap_netns.sh: no $BIN (build $bench)" >&2; exit 1; }
name=loomb-$$
work=$(mktemp -d /tmp/loom-overlap.XXXXXX)
trap '"$NC" down "$name"; rm -rf "$work"' EXIT
trap 'exit 130' INT TERM
"$NC" up "$name" 2 --rate "$rate"
# MASTER_PORT and MASTER_PORT+1 (the launchers' store), free in node 0's namespace (asked there, not assumed).
port=$("$NC" exec "$name" 0 "$repo/tests/free_port.sh" 2)
secret=overlap-$RANDOM$RANDOM
for i in 0 1; do
  "$NC" exec "$name" $i env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 LOOM_STORE_SECRET="$secret" \
    LOOM_BENCH_BACKEND="${LOOM_BENCH_BACKEND:-gloo}" LOOM_BENCH_NO_TABLE_HEADER=1 \
    "$TL" --nnodes 2 --node-rank $i --nproc-per-node 1 --master-addr "$("$NC" addr 0)" --master-port $port \
    --log-dir "$work/logs$i" -- "$BIN" "$@" > "$work/out$i.txt" 2>&1 &
  pids[i]=$!
done
rc=0
for i in 0 1; do wait "${pids[i]}" || rc=$?; done
# rank 0's lines without the launcher's prefix
cat "$work/out0.txt"
if [ $rc -ne 0 ]; then
  echo "overlap_netns.sh: a node failed (rc $rc)" >&2
  tail -n 30 "$work/out0.txt" "$work/out1.txt" >&2
fi
exit $rc
