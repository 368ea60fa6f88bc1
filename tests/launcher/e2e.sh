#!/usr/bin/env bash
# End-to-end checks of trainlaunch with tiny shell programs as ranks.
# Usage: e2e.sh CASE TRAINLAUNCH [COLLECTIVES_MP]; exit 0 when the case passed.
set -u
case_name=$1; TL=$2; MP=${3:-}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
work=$(mktemp -d /tmp/trainlaunch-e2e.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL [$case_name]: $*"; echo "--- output:"; cat out.txt 2>/dev/null; exit 1; }
now() { date +%s.%N; }
# A port P with P and P+1 (rank 0's store, the launchers' store) free and reserved, below the ephemeral range.
# shellcheck source=tests/free_port.sh
. "$here/../free_port.sh"
port() { loom_free_port 2 || fail "no free port"; }
export LOOM_STORE_SECRET=e2e-$RANDOM$RANDOM

case $case_name in
exit3)  # rank 1 exits 3 while the others sleep: non-zero within 5 s, report names rank 1 and code 3
  t0=$(now)
  "$TL" --standalone --nproc-per-node 3 -- sh -c 'echo started; [ "$RANK" = 1 ] && exit 3; exec sleep 60' > out.txt 2>&1
  rc=$?; dt=$(echo "$(now) - $t0" | bc)
  [ $rc -ne 0 ] || fail "exit status 0"
  (( $(echo "$dt < 5" | bc) )) || fail "took $dt s"
  sed -n '/first failure/,$p' out.txt > first.txt
  grep -q 'rank:   1 (local rank 1' first.txt || fail "report does not name rank 1"
  grep -q 'exit code 3' first.txt || fail "report does not say exit code 3"
  grep -q '| started' first.txt || fail "report lacks the log tail"
  grep -q 'rank 0 (local rank 0).*stopped by the launcher' out.txt || fail "rank 0 not listed as stopped by us"
  ;;
standalone_port)  # --standalone gives rank 0 a port below the ephemeral range (no outgoing connection can take it
  # before rank 0 binds it), one that was free, and the same to every rank
  low=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range)
  for i in 1 2 3 4 5 6; do
    "$TL" --standalone --nproc-per-node 2 -- sh -c 'echo "port $MASTER_PORT"' > out.txt 2>&1 || fail "exit non-zero"
    p0=$(sed -n 's/^\[rank0\]: port //p' out.txt); p1=$(sed -n 's/^\[rank1\]: port //p' out.txt)
    [ -n "$p0" ] && [ "$p0" = "$p1" ] || fail "ranks got ports '$p0' and '$p1'"
    [ "$p0" -ge 20000 ] && [ "$p0" -lt "$low" ] || fail "port $p0 is not in 20000..$((low - 1))"
    # --free-port (the batch scripts' MASTER_PORT): P and P+1 below the ephemeral range
    p=$("$TL" --free-port) || fail "--free-port exited non-zero"
    [[ $p =~ ^[0-9]+$ ]] && [ "$p" -ge 20000 ] && [ $((p + 1)) -lt "$low" ] || fail "--free-port gave '$p'"
  done
  ;;
sigkill)  # a rank killed by SIGKILL
  "$TL" --standalone --nproc-per-node 2 -- sh -c '[ "$RANK" = 0 ] && kill -9 $$; exec sleep 60' > out.txt 2>&1 && fail "exit 0"
  sed -n '/first failure/,$p' out.txt | grep -q 'signal SIGKILL' || fail "report does not say SIGKILL"
  ;;
restart_ok|restart_short)  # fails on its first two attempts; 2 restarts suffice, 1 does not
  cat > flaky.sh <<'PROG'
#!/bin/sh
# rank 0 keeps a counter of its runs (written atomically) and fails on runs 0 and 1
echo "rank $RANK restart $LOOM_RESTART_COUNT"
[ "$RANK" = 0 ] || exit 0
n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count.tmp && mv count.tmp count
echo "attempt $n restart $LOOM_RESTART_COUNT"
[ "$n" -ge 2 ] || exit 1
PROG
  chmod +x flaky.sh
  r=2; [ $case_name = restart_short ] && r=1
  "$TL" --standalone --nproc-per-node 2 --max-restarts $r -- ./flaky.sh > out.txt 2>&1; rc=$?
  if [ $r = 2 ]; then
    [ $rc = 0 ] || fail "exit $rc with --max-restarts 2"
    grep -q '\[rank0\]: attempt 2 restart 2' out.txt || fail "no third attempt with restart count 2"
  else
    [ $rc != 0 ] || fail "exit 0 with --max-restarts 1"
    [ "$(cat count)" = 2 ] || fail "rank 0 ran $(cat count) times, not 2"
  fi
  ;;
output)  # prefixed whole lines on the console, unprefixed whole lines in the per-rank log
  "$TL" --standalone --nproc-per-node 2 --log-dir logs -- sh -c 'for i in 1 2 3; do printf "part-"; printf "%s-%s\n" $RANK $i; done; echo oops >&2' > out.txt 2>&1 || fail "exit non-zero"
  for r in 0 1; do
    for i in 1 2 3; do grep -qx "\[rank$r\]: part-$r-$i" out.txt || fail "line $i of rank $r"; done
    grep -qx "\[rank$r\]: oops" out.txt || fail "stderr of rank $r"
    [ "$(grep -c "^part-$r-" logs/attempt_0/rank_$r.log)" = 3 ] || fail "log of rank $r"
  done
  ;;
sigint|sigterm)  # SIGINT/SIGTERM reach the ranks, which get the grace period to finish (a checkpoint, say): exit 0
  sig=INT; [ $case_name = sigterm ] && sig=TERM
  "$TL" --standalone --nproc-per-node 2 --grace-period 5 -- sh -c 'trap "sleep 0.3; echo saved > saved.$RANK; exit 0" INT TERM; echo up > up.$RANK; while :; do sleep 0.05; done' > out.txt 2>&1 &
  pid=$!
  for i in $(seq 400); do [ -e up.0 ] && [ -e up.1 ] && break; sleep 0.05; done
  kill -$sig $pid; wait $pid; rc=$?
  [ $rc = 0 ] || fail "exit $rc after a clean stop on SIG$sig, expected 0"
  [ -e saved.0 ] && [ -e saved.1 ] || fail "ranks did not get to run their handler"
  grep -q "every rank of this node stopped cleanly after SIG$sig" out.txt || fail "no clean-stop message"
  ;;
sigterm_failed)  # a rank that exits 1 on SIGTERM, another that ignores it until the grace period ends: 143
  "$TL" --standalone --nproc-per-node 2 --grace-period 3 -- sh -c 'if [ $RANK = 0 ]; then trap "exit 1" TERM; else trap "" TERM; fi; echo up > up.$RANK; while :; do sleep 0.05; done' > out.txt 2>&1 &
  pid=$!
  for i in $(seq 400); do [ -e up.0 ] && [ -e up.1 ] && break; sleep 0.05; done
  kill -TERM $pid; wait $pid; rc=$?
  [ $rc = 143 ] || fail "exit $rc, expected 143 (the ranks did not stop cleanly)"
  grep -q "did not all stop cleanly after SIGTERM (cut short): rank 0: exit code 1, rank 1: signal SIGKILL" out.txt ||
    fail "no message naming the rank that failed and the one killed"
  ;;
sigterm_everyone)  # as Slurm and process managers signal: the launcher's group and every rank, each several times
  setsid "$TL" --standalone --nproc-per-node 2 --grace-period 20 -- sh -c 'trap "echo got >> got.$RANK" TERM; echo $$ > pid.$RANK; while [ ! -s got.$RANK ]; do sleep 0.05; done; sleep 1; echo saved > saved.$RANK; exit 0' > out.txt 2>&1 &
  pid=$!
  for i in $(seq 400); do [ -e pid.0 ] && [ -e pid.1 ] && break; sleep 0.05; done
  for _ in 1 2 3; do kill -TERM -- -$pid; kill -TERM "$(cat pid.0)" "$(cat pid.1)"; sleep 0.2; done
  wait $pid; rc=$?
  [ $rc = 0 ] || fail "exit $rc, expected 0"
  [ -e saved.0 ] && [ -e saved.1 ] || fail "ranks did not get to finish"
  ;;
sigint_twice)  # ranks that ignore SIGINT/SIGTERM: a second SIGINT kills them at once, not after the 60 s grace
  "$TL" --standalone --nproc-per-node 2 --grace-period 60 -- sh -c 'trap "" INT TERM; echo $$ > pid.$RANK; while :; do sleep 0.05; done' > out.txt 2>&1 &
  pid=$!
  for i in $(seq 400); do [ -e pid.0 ] && [ -e pid.1 ] && break; sleep 0.05; done
  kill -INT $pid; sleep 0.5
  kill -0 $pid 2>/dev/null || fail "launcher exited after one SIGINT although the ranks ignore it"
  t0=$(now); kill -INT $pid; wait $pid; rc=$?
  dt=$(echo "$(now) - $t0" | bc)
  (( $(echo "$dt < 5" | bc) )) || fail "took $dt s after the second SIGINT"
  [ $rc = 130 ] || fail "exit $rc, expected 130"
  for r in 0 1; do kill -0 "$(cat pid.$r)" 2>/dev/null && fail "rank $r still alive"; done
  ;;
twonode_env)  # two launchers on 127.0.0.1 form one world of 4 with the right variables
  p=$(port)
  prog='echo "R=$RANK L=$LOCAL_RANK W=$WORLD_SIZE LW=$LOCAL_WORLD_SIZE G=$GROUP_RANK M=$MASTER_ADDR:$MASTER_PORT S=${LOOM_LAUNCHER_STORE:+set}"'
  "$TL" --nnodes 2 --node_rank 1 --master-addr 127.0.0.1 --master-port $p --nproc-per-node 2 -- sh -c "$prog" > out1.txt 2>&1 &
  p1=$!
  timeout 60 "$TL" --nnodes 2 --node-rank 0 --master-addr 127.0.0.1 --master-port $p --nproc-per-node 2 -- sh -c "$prog" > out.txt 2>&1 || fail "node 0 exit non-zero"
  wait $p1 || fail "node 1 exit non-zero"
  cat out1.txt >> out.txt
  for r in 0 1 2 3; do
    grep -q "rank$r\]: R=$r L=$((r % 2)) W=4 LW=2 G=$((r / 2)) M=127.0.0.1:$p S=set" out.txt || fail "env of rank $r"
  done
  ;;
twonode_allreduce)  # collectives_mp over gloo with 4 ranks on 2 launchers
  p=$(port)
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 2 -- "$MP" gloo > out1.txt 2>&1 &
  p1=$!
  timeout 100 "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 2 -- "$MP" gloo > out.txt 2>&1 || fail "node 0 exit non-zero"
  wait $p1 || { cat out1.txt >> out.txt; fail "node 1 exit non-zero"; }
  grep -q "all checks passed" out.txt || fail "no 'all checks passed'"
  ;;
twonode_allreduce_restart)  # rank 3 dies before joining on attempt 0 (the others hang in init): all restart and all-reduce
  p=$(port)
  printf '#!/bin/sh\n[ "$LOOM_RESTART_COUNT" = 0 ] && [ "$RANK" = 3 ] && { sleep 0.5; exit 4; }\nexec "%s" gloo\n' "$MP" > r.sh
  chmod +x r.sh
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 2 --max-restarts 1 -- ./r.sh > out1.txt 2>&1 &
  p1=$!
  timeout 100 "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 2 --max-restarts 1 -- ./r.sh > out.txt 2>&1 || fail "node 0 exit non-zero"
  wait $p1 || { cat out1.txt >> out.txt; fail "node 1 exit non-zero"; }
  grep -q "restarting every rank (restart 1 of 1)" out.txt || fail "node 0 did not restart"
  grep -q "all checks passed" out.txt || fail "no 'all checks passed' after the restart"
  ;;
twonode_fail_restart)  # a rank on node 1 fails once: both nodes restart; the report is on node 1
  p=$(port)
  prog='if [ "$RANK" = 3 ] && [ "$LOOM_RESTART_COUNT" = 0 ]; then exit 5; fi; [ "$LOOM_RESTART_COUNT" = 0 ] && exec sleep 60; echo ok $LOOM_RESTART_COUNT'
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 2 --max-restarts 1 -- sh -c "$prog" > out1.txt 2>&1 &
  p1=$!
  timeout 60 "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 2 --max-restarts 1 -- sh -c "$prog" > out.txt 2>&1 || fail "node 0 exit non-zero"
  wait $p1 || fail "node 1 exit non-zero"
  cat out1.txt >> out.txt
  for r in 0 1 2 3; do grep -q "rank$r\]: ok 1" out.txt || fail "rank $r did not finish restart 1"; done
  sed -n '/first failure/,/=====/p' out1.txt | grep -q 'exit code 5' || fail "node 1 report lacks exit code 5"
  sed -n '/first failure/,/=====/p' out.txt | grep -q 'rank 3 .*exit code 5' || fail "node 0 does not name rank 3"
  ;;
launcher_killed)  # node 1's launcher dies: node 0 notices by heartbeat and stops its ranks
  p=$(port)
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 2 --heartbeat-timeout 2 -- sh -c 'echo $$ > pid.$RANK; exec sleep 60' > out1.txt 2>&1 &
  p1=$!
  "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 2 --heartbeat-timeout 2 -- sleep 60 > out.txt 2>&1 &
  p0=$!
  for i in $(seq 400); do [ -e pid.2 ] && [ -e pid.3 ] && break; sleep 0.05; done
  kill -9 $p1; t0=$(now)
  wait $p0 && fail "node 0 exit 0"
  dt=$(echo "$(now) - $t0" | bc)
  (( $(echo "$dt < 10" | bc) )) || fail "node 0 took $dt s to stop"
  grep -q "node 1's launcher sent no heartbeat" out.txt || fail "no heartbeat message"
  sleep 0.3
  for r in 2 3; do kill -0 "$(cat pid.$r)" 2>/dev/null && fail "rank $r outlived its launcher"; done
  ;;
twonode_sigint)  # SIGINT to node 0's launcher stops node 1 too, with no restart despite --max-restarts
  p=$(port)
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 1 --max-restarts 3 -- sh -c 'echo up > up.$RANK; exec sleep 60' > out1.txt 2>&1 &
  p1=$!
  "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 1 --max-restarts 3 -- sh -c 'echo up > up.$RANK; exec sleep 60' > out.txt 2>&1 &
  p0=$!
  for i in $(seq 400); do [ -e up.0 ] && [ -e up.1 ] && break; sleep 0.05; done
  kill -INT $p0
  wait $p0; rc0=$?
  wait $p1; rc1=$?
  cat out1.txt >> out.txt
  [ $rc0 = 130 ] || fail "node 0 exit $rc0, expected 130"
  [ $rc1 != 0 ] || fail "node 1 exit 0"
  grep -q "node 0 (.*) was stopped by SIGINT" out1.txt || fail "node 1 does not say why it stopped"
  grep -q "restarting every rank" out.txt && fail "a node restarted after a SIGINT"
  ;;
twonode_sigterm)  # SIGTERM to node 0's launcher only: node 1 forwards it too; ranks that stop cleanly make both exit 0
  p=$(port)
  prog='trap "sleep 0.3; echo saved > saved.\$RANK; exit 0" TERM; echo up > up.$RANK; while :; do sleep 0.05; done'
  "$TL" --nnodes 2 --node-rank 1 --master-port $p --nproc-per-node 1 --max-restarts 3 -- sh -c "$prog" > out1.txt 2>&1 &
  p1=$!
  "$TL" --nnodes 2 --node-rank 0 --master-port $p --nproc-per-node 1 --max-restarts 3 -- sh -c "$prog" > out.txt 2>&1 &
  p0=$!
  for i in $(seq 400); do [ -e up.0 ] && [ -e up.1 ] && break; sleep 0.05; done
  kill -TERM $p0
  wait $p0; rc0=$?
  wait $p1; rc1=$?
  cat out1.txt >> out.txt
  [ $rc0 = 0 ] || fail "node 0 exit $rc0, expected 0"
  [ $rc1 = 0 ] || fail "node 1 exit $rc1, expected 0"
  [ -e saved.0 ] && [ -e saved.1 ] || fail "the ranks did not both stop through their handler"
  grep -q "node 0 (.*) was stopped by SIGTERM; forwarding SIGTERM" out1.txt || fail "node 1 does not say why it stopped"
  ;;
*) echo "unknown case $case_name"; exit 2 ;;
esac
echo "PASS [$case_name]"
