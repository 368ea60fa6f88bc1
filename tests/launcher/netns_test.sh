#!/usr/bin/env bash
# Multi-node on real addresses: two trainlaunch nodes, each in its own network
# namespace made by scripts/netns_cluster.sh (its own address, and a host name
# that resolves to 127.0.1.1 as in Debian's /etc/hosts), 2 ranks each.
# Usage: netns_test.sh CASE TRAINLAUNCH COLLECTIVES_MP NETNS_RANK REPO
#   form      collectives_mp over gloo forms and passes; each rank listens on its
#             node's own address on lan0 and says so in its log
#   iface     the same with LOOM_GLOO_IFNAME=lan1: the ranks use the second network
#   bind      while a job runs, node 0's stores (rank 0's at MASTER_PORT, the
#             launchers' at MASTER_PORT+1) answer from node 1 on the address they
#             were given and refuse on node 0's address on another interface
#   linkdown  node 1's cable is pulled mid-run: node 0 stops the job within the
#             heartbeat timeout (bounded here) with a report naming node 1, its
#             host and address; node 1 stops too (no store timeout needed)
#   secret    nodes given different LOOM_STORE_SECRETs never form; both exit
#             non-zero within a bounded time, saying the secret does not match
# Exit 0: passed; 77: skipped (not root, or no working `ip netns`); else failed.
set -u
case_name=$1 TL=$(realpath "$2") MP=$(realpath "$3") NR=$(realpath "$4") REPO=$(realpath "$5")
NC=$REPO/scripts/netns_cluster.sh

skip() {
  echo "SKIP [$case_name]: $*"
  exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root to create network namespaces (ip netns)"
command -v ip > /dev/null || skip "no 'ip' command (iproute2)"
name=loomt-$$
ip netns add "$name-probe" 2> /dev/null || skip "'ip netns add' does not work here (no CAP_SYS_ADMIN/CAP_NET_ADMIN?)"
ip netns del "$name-probe"
command -v unshare > /dev/null || skip "no 'unshare' (util-linux), needed for per-node host names"

# Clusters left by a run that was killed outright (a CTest timeout sends SIGKILL,
# so its trap never ran): loomt-PID-* whose PID is gone.
for stale in $(ip netns list | awk '{print $1}' | sed -n 's/^\(loomt-[0-9]*\)-\(sw\|n[0-9]*\)$/\1/p' | sort -u); do
  kill -0 "${stale#loomt-}" 2> /dev/null || "$NC" down "$stale"
done
work=$(mktemp -d /tmp/loom-netns.XXXXXX)
cleanup() {
  "$NC" down "$name"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
cd "$work"
fail() {
  echo "FAIL [$case_name]: $*"
  for f in out0.txt out1.txt; do
    [ -e $f ] && { echo "--- $f:"; cat $f; }
  done
  exit 1
}
now() { date +%s.%N; }

"$NC" up "$name" 2 --nets 2 || fail "could not build the namespaces"
A0=$("$NC" addr 0) A1=$("$NC" addr 1) B0=$("$NC" addr 0 1)  # node 0 on lan0, node 1 on lan0, node 0 on lan1
# MASTER_PORT and MASTER_PORT+1 (the launchers' store), free in node 0's namespace (asked there, not assumed).
PORT=$("$NC" exec "$name" 0 "$REPO/tests/free_port.sh" 2) || fail "no free port in node 0's namespace"
SECRET=netns-test-$RANDOM$RANDOM
# launch I LIMIT_S [trainlaunch options] -- PROGRAM...: node I's launcher, 2 ranks.
launch() {
  local i=$1 limit=$2
  shift 2
  "$NC" exec "$name" "$i" timeout "$limit" env OMP_NUM_THREADS=1 LOOM_STORE_SECRET="$SECRET" \
    LOOM_STORE_TIMEOUT_S="${STORE_TIMEOUT_S:-30}" \
    "$TL" --nnodes 2 --node-rank "$i" --nproc-per-node 2 --master-addr "$A0" --master-port $PORT "$@"
}
# probe ADDR PORT: does a TCP connection from node 1 to ADDR:PORT succeed?
probe() { "$NC" exec "$name" 1 timeout 5 bash -c "exec 3<>/dev/tcp/$1/$2" 2> /dev/null; }
# wait_ready: every rank of a "hold" job is past its first all-reduce (60 s at most).
wait_ready() {
  for _ in $(seq 600); do
    [ -e ready.0 ] && [ -e ready.1 ] && [ -e ready.2 ] && [ -e ready.3 ] && return 0
    kill -0 "$p0" 2> /dev/null && kill -0 "$p1" 2> /dev/null || fail "a launcher exited before the job formed"
    sleep 0.1
  done
  fail "the job did not form within 60 s"
}
# wait_exit PID LIMIT_S: waits for PID at most LIMIT_S seconds; its exit status, or 124.
wait_exit() {
  local t0
  t0=$(now)
  while kill -0 "$1" 2> /dev/null; do
    (($(echo "$(now) - $t0 < $2" | bc))) || return 124
    sleep 0.1
  done
  wait "$1"
}

case $case_name in
  form)
    launch 1 90 -- "$MP" gloo > out1.txt 2>&1 &
    p1=$!
    launch 0 90 -- "$MP" gloo > out0.txt 2>&1
    rc0=$?
    wait $p1
    rc1=$?
    [ $rc0 -eq 0 ] || fail "node 0 exited $rc0"
    [ $rc1 -eq 0 ] || fail "node 1 exited $rc1"
    grep -q "all checks passed" out0.txt || fail "no 'all checks passed' from rank 0"
    # Each rank says where it listens: its own node's address, on lan0 (the route to MASTER_ADDR).
    for r in 0 1; do
      grep -q "rank$r\]: .*gloo: listening on $A0 (interface lan0, the route to MASTER_ADDR $A0" out0.txt ||
        fail "rank $r does not say it listens on $A0 (lan0)"
    done
    for r in 2 3; do
      grep -q "rank$r\]: .*gloo: listening on $A1 (interface lan0, the route to MASTER_ADDR $A0" out1.txt ||
        fail "rank $r does not say it listens on $A1 (lan0)"
    done
    ;;
  iface)
    # LOOM_GLOO_IFNAME=lan1: the ranks talk over the second network instead.
    B1=$("$NC" addr 1 1)
    LOOM_GLOO_IFNAME=lan1 launch 1 90 -- "$MP" gloo > out1.txt 2>&1 &
    p1=$!
    LOOM_GLOO_IFNAME=lan1 launch 0 90 -- "$MP" gloo > out0.txt 2>&1
    rc0=$?
    wait $p1
    rc1=$?
    [ $rc0 -eq 0 ] || fail "node 0 exited $rc0"
    [ $rc1 -eq 0 ] || fail "node 1 exited $rc1"
    grep -q "all checks passed" out0.txt || fail "no 'all checks passed' from rank 0"
    grep -q "rank0\]: .*gloo: listening on $B0 (interface lan1, the interface named by LOOM_GLOO_IFNAME" out0.txt ||
      fail "rank 0 does not say it listens on $B0 (lan1, named by LOOM_GLOO_IFNAME)"
    grep -q "rank3\]: .*gloo: listening on $B1 (interface lan1, the interface named by LOOM_GLOO_IFNAME" out1.txt ||
      fail "rank 3 does not say it listens on $B1 (lan1, named by LOOM_GLOO_IFNAME)"
    ;;
  bind)
    launch 1 90 -- "$NR" hold "$work" > out1.txt 2>&1 &
    p1=$!
    launch 0 90 -- "$NR" hold "$work" > out0.txt 2>&1 &
    p0=$!
    wait_ready
    # From node 1: the given address answers; node 0's address on its other
    # interface (reachable from node 1 over lan1) must not, as with a bind to 0.0.0.0 it would.
    probe "$A0" $PORT || fail "rank 0's store does not answer at $A0:$PORT"
    probe "$A0" $((PORT + 1)) || fail "the launchers' store does not answer at $A0:$((PORT + 1))"
    probe "$B0" $PORT && fail "rank 0's store answers at $B0:$PORT (node 0's lan1): it must listen on MASTER_ADDR only"
    probe "$B0" $((PORT + 1)) &&
      fail "the launchers' store answers at $B0:$((PORT + 1)) (node 0's lan1): it must listen on --master-addr only"
    touch release
    wait_exit $p0 60
    rc0=$?
    wait_exit $p1 60
    rc1=$?
    [ $rc0 -eq 0 ] || fail "node 0 exited $rc0 after the release"
    [ $rc1 -eq 0 ] || fail "node 1 exited $rc1 after the release"
    [ "$(cat out0.txt out1.txt | grep -c 'released')" -eq 4 ] || fail "not every rank was released"
    ;;
  linkdown)
    # A long store timeout: neither node may need it to notice the cut.
    STORE_TIMEOUT_S=120 launch 1 90 --heartbeat-timeout 3 -- "$NR" hold "$work" > out1.txt 2>&1 &
    p1=$!
    STORE_TIMEOUT_S=120 launch 0 90 --heartbeat-timeout 3 -- "$NR" hold "$work" > out0.txt 2>&1 &
    p0=$!
    wait_ready
    "$NC" link "$name" 1 down
    t0=$(now)
    # 3 s of heartbeat timeout, then SIGTERM to the ranks; 40 s only bounds a hang.
    wait_exit $p0 40
    rc0=$?
    dt=$(echo "$(now) - $t0" | bc)
    [ $rc0 -ne 124 ] || fail "node 0 still runs 40 s after node 1's link went down"
    [ $rc0 -ne 0 ] || fail "node 0 exited 0"
    grep -q "node 1's launcher sent no heartbeat for .*(host $name-n1, address $A1" out0.txt ||
      fail "node 0's report does not name node 1 with its host $name-n1 and address $A1"
    sed -n '/first failure/,/=====/p' out0.txt | grep -q "node 1's launcher sent no heartbeat" ||
      fail "the failure report of node 0 does not name node 1"
    # Node 1 cannot reach the store any more: it stops its ranks too, after its
    # requests go unanswered for the heartbeat timeout (not LOOM_STORE_TIMEOUT_S).
    wait_exit $p1 40
    rc1=$?
    [ $rc1 -ne 124 ] || fail "node 1 still runs 40 s after its link went down"
    [ $rc1 -ne 0 ] || fail "node 1 exited 0"
    grep -q "lost the launchers' store at $A0:$((PORT + 1))" out1.txt || fail "node 1 does not say it lost the store"
    echo "node 0 stopped ${dt} s after node 1's link went down (heartbeat timeout 3 s)"
    ;;
  secret)
    STORE_TIMEOUT_S=8 SECRET=alpha launch 0 60 -- "$NR" > out0.txt 2>&1 &
    p0=$!
    t0=$(now)
    SECRET=beta launch 1 60 -- "$NR" > out1.txt 2>&1
    rc1=$?
    [ $rc1 -ne 124 ] || fail "node 1 still ran after 60 s"
    [ $rc1 -ne 0 ] || fail "node 1 exited 0"
    grep -q "rejected the handshake; the secret differs from the server's" out1.txt ||
      fail "node 1 does not say its secret differs"
    wait_exit $p0 60
    rc0=$?
    dt=$(echo "$(now) - $t0" | bc)
    [ $rc0 -ne 124 ] || fail "node 0 still ran after 60 s"
    [ $rc0 -ne 0 ] || fail "node 0 exited 0"
    grep -q "node(s) 1 did not join .*failed the secret handshake, the last from $A1:.*same LOOM_STORE_SECRET" out0.txt ||
      fail "node 0 does not say node 1 did not join because a connection from $A1 failed the secret handshake"
    ! grep -q "joined: world" out0.txt out1.txt || fail "the job formed"
    ! grep -q "allreduce ok" out0.txt out1.txt || fail "ranks ran"
    echo "node 0 gave up ${dt} s after node 1 started (LOOM_STORE_TIMEOUT_S=8)"
    ;;
  *)
    echo "unknown case $case_name"
    exit 2
    ;;
esac
[ -n "${LOOM_NETNS_VERBOSE:-}" ] && cat out0.txt out1.txt
echo "PASS [$case_name]"
