#!/usr/bin/env bash
# Starts a private single-node Slurm (slurmctld + slurmd, auth/none, state in a
# temp dir, free ports from tests/free_port.sh), runs one case, and stops the daemons.
#   scripts:  submits trainlaunch.sbatch and srun_ranks.sbatch with sbatch as 2-rank jobs running collectives_mp,
#             checks that both ranks ran and agreed.
#   preempt:  pretrain on a shrunk configs/tiny_cpu.yaml, signalled the way Slurm preempts (scancel --signal=TERM,
#             repeated until the step ends), under pretrain_multinode.sbatch (trainlaunch) and srun_ranks.sbatch (ranks started by
#             srun): each job must end COMPLETED with ExitCode=0:0 and a whole checkpoint of the step it stopped
#             at; a resubmitted pretrain_multinode job resumes from it. proctrack/linuxproc signals every process of
#             the step, launcher and ranks alike, as proctrack/cgroup does on real clusters.
# Usage: slurm_test.sh scripts TRAINLAUNCH COLLECTIVES_MP SOURCE_DIR
#        slurm_test.sh preempt TRAINLAUNCH PRETRAIN SOURCE_DIR [LOOMCKPT]
# Exit 0: passed, 77: skipped (no slurm-wlm or not root). Needs root (SlurmUser=root) and Debian's slurm-wlm.
set -u
MODE=$1; TL=$2; MP=$3; SRC=$4; CKPT=${5:-}
PRETRAIN=$MP
case $MODE in scripts | preempt) ;; *) echo "slurm_test: unknown case $MODE"; exit 2 ;; esac
for t in slurmctld slurmd sbatch scontrol scancel; do
  command -v $t > /dev/null || { echo "slurm_test: $t not found (scripts/setup.sh installs slurm-wlm); skipped"; exit 77; }
done
[ "$(id -u)" = 0 ] || { echo "slurm_test: needs root for SlurmUser=root; skipped"; exit 77; }
d=$(mktemp -d /tmp/loom-slurm.XXXXXX)
host=$(hostname -s)
mkdir -p "$d/state" "$d/spool" "$d/jobs"
write_conf() {  # write_conf CTL_PORT SLURMD_PORT
  local ctl_port=$1 d_port=$2
cat > "$d/slurm.conf" <<CONF
ClusterName=loomtest$RANDOM
FirstJobId=$(( 1 + RANDOM * 30 ))
SlurmctldHost=$host
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
AuthType=auth/none
CredType=cred/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
PlugStackConfig=$d/plugstack.conf
NodeName=$host CPUs=$(nproc) State=UNKNOWN
PartitionName=loom Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF
}
: > "$d/plugstack.conf"
export SLURM_CONF=$d/slurm.conf
cleanup() {
  for p in slurmd slurmctld; do
    [ -s "$d/$p.pid" ] && kill "$(cat "$d/$p.pid")" 2>/dev/null
  done
  [ -n "${ctl_pid:-}" ] && kill "$ctl_pid" 2>/dev/null
  [ -n "${d_pid:-}" ] && kill "$d_pid" 2>/dev/null
  sleep 0.5
  [ -n "${ctl_pid:-}" ] && kill -9 "$ctl_pid" 2>/dev/null
  [ -n "${d_pid:-}" ] && kill -9 "$d_pid" 2>/dev/null
  rm -rf "$d"
}
trap cleanup EXIT
fail() {  # on stderr: it may be called inside $(...)
  {
    echo "FAIL: $*"
    for f in "$d"/jobs/*.out "$d/slurmctld.log" "$d/slurmd.log"; do [ -e "$f" ] && { echo "--- $f"; tail -30 "$f"; }; done
  } >&2
  exit 1
}
# shellcheck source=tests/free_port.sh
. "$SRC/tests/free_port.sh"
free_port() { loom_free_port 2; }  # slurmctld's port and slurmd's next to it
# slurmctld exits when its port is taken (another test, TIME_WAIT): try other ports.
for try in 1 2 3 4 5; do
  p=$(free_port) || fail "no free port"
  write_conf $p $((p + 1))
  slurmctld -D -i -f "$d/slurm.conf" > "$d/ctl.stdout" 2>&1 &
  ctl_pid=$!
  for i in $(seq 50); do
    grep -q "Running as primary controller" "$d/slurmctld.log" 2>/dev/null && break
    kill -0 $ctl_pid 2>/dev/null || break
    sleep 0.1
  done
  sleep 0.3
  kill -0 $ctl_pid 2>/dev/null && break
  echo "slurm_test: slurmctld did not start on port $p (try $try); trying another"
  rm -f "$d/slurmctld.log"
  ctl_pid=
done
[ -n "$ctl_pid" ] || fail "slurmctld did not start"
slurmd -D -f "$d/slurm.conf" -N "$host" > "$d/d.stdout" 2>&1 &
d_pid=$!
deadline=$(( $(date +%s) + 40 ))
up=0
while [ "$(date +%s)" -lt $deadline ]; do
  timeout 5 scontrol show node "$host" 2>/dev/null | grep -q "State=IDLE" && { up=1; break; }
  kill -0 $d_pid 2>/dev/null || break
  sleep 0.2
done
[ $up = 1 ] || fail "the Slurm node did not come up"

wait_job() {  # wait_job ID SECONDS: prints the final state (or the last one seen)
  local id=$1 deadline=$(( $(date +%s) + $2 )) state=
  while [ "$(date +%s)" -lt $deadline ]; do
    state=$(timeout 5 scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY|PREEMPTED) break ;; esac
    sleep 0.2
  done
  echo "$state"
}

if [ "$MODE" = scripts ]; then
# The rank program: says who it is, then runs the gloo collectives check.
cat > "$d/jobs/rank.sh" <<PROG
#!/bin/sh
echo "rank \${RANK:-\$SLURM_PROCID} of \${WORLD_SIZE:-\$SLURM_NTASKS} ran"
exec "$MP" gloo
PROG
chmod +x "$d/jobs/rank.sh"

run_job() {  # run_job NAME SCRIPT [extra sbatch args]: waits, prints the job state
  local name=$1 script=$2; shift 2
  local id port
  # A reserved free port: two such tests at once would both number their first job alike.
  port=$(loom_free_port 2) || fail "no free port"
  id=$(cd "$d/jobs" && MASTER_PORT=$port TRAINLAUNCH=$TL PROGRAM=$d/jobs/rank.sh NPROC_PER_NODE=2 \
       sbatch --parsable --output="$d/jobs/$name.out" "$@" "$script") || fail "sbatch $script"
  wait_job "$id" 60
}

# 1) srun + trainlaunch: one launcher on the one node starting 2 ranks.
st=$(run_job launch "$SRC/scripts/slurm/trainlaunch.sbatch" --cpus-per-task=1)
[ "$st" = COMPLETED ] || fail "trainlaunch.sbatch job ended $st"
out=$d/jobs/launch.out
grep -q '^\[rank0\]: rank 0 of 2 ran' "$out" || fail "launch: rank 0 did not run"
grep -q '^\[rank1\]: rank 1 of 2 ran' "$out" || fail "launch: rank 1 did not run"
grep -q 'all checks passed' "$out" || fail "launch: the ranks did not agree"

# 2) ranks started directly by srun (2 tasks).
st=$(run_job ranks "$SRC/scripts/slurm/srun_ranks.sbatch")
[ "$st" = COMPLETED ] || fail "srun_ranks.sbatch job ended $st"
out=$d/jobs/ranks.out
grep -q 'rank 0 of 2 ran' "$out" || fail "srun: rank 0 did not run"
grep -q 'rank 1 of 2 ran' "$out" || fail "srun: rank 1 did not run"
grep -q 'all checks passed' "$out" || fail "srun: the ranks did not agree"
echo "PASS slurm: both scripts ran 2 ranks that agreed"
exit 0
fi

# ---- preempt: pretrain stopped the way Slurm preempts ----
# The tiny CPU job shrunk (2 ranks x 8 sequences x 64 tokens a step), no periodic checkpoints or evals: the only
# checkpoint is the one of the agreed stop.
small="--set model.n_embd=64 --set model.seq_len=64 --set training.global_batch_tokens=1024 --set training.warmup_steps=10
       --set logging.interval=1 --set logging.eval_interval=0 --set checkpoint.interval=0"
export OMP_NUM_THREADS=1

submit() {  # submit NAME [VAR=VALUE...] -- SBATCH ARGS...: prints the job id
  local name=$1 port; shift
  local envs=()
  while [ "$1" != -- ]; do envs+=("$1"); shift; done
  shift
  port=$(loom_free_port 2) || fail "no free port"
  (cd "$d/jobs" && env MASTER_PORT=$port "${envs[@]}" sbatch --parsable --output="$d/jobs/$name.out" "$@") ||
    fail "sbatch $name"
}
progress() {  # progress METRICS N ID: waits (up to 90 s) until N steps are logged; fails if the job ended first
  for _ in $(seq 900); do
    [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ] && return 0
    case $(timeout 5 scontrol show job "$3" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2) in
      COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL) fail "job $3 ended before it was signalled" ;;
    esac
    sleep 0.1
  done
  fail "job $3 logged fewer than $2 steps in 90 s"
}
preempt() {  # preempt ID: scancel --signal=TERM again and again (up to 20 times) until the steps have ended
  for _ in $(seq 20); do
    scancel --signal=TERM "$1" 2>/dev/null || break
    sleep 0.1
    timeout 5 scontrol show step "$1.0" 2>/dev/null | grep -q "State=RUNNING" || break
  done
}
check_stop() {  # check_stop NAME ID CKDIR: COMPLETED, ExitCode=0:0, a whole checkpoint of the stop step; prints N
  local name=$1 id=$2 ck=$3 st n info
  st=$(wait_job "$id" 120)
  info=$(timeout 5 scontrol show job "$id" 2>/dev/null)
  [ "$st" = COMPLETED ] || fail "$name: the preempted job ended $st ($(echo "$info" | grep -o 'ExitCode=[0-9:]*'))"
  echo "$info" | grep -q 'ExitCode=0:0' || fail "$name: $(echo "$info" | grep -o 'ExitCode=[0-9:]*'), expected 0:0"
  n=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\) of.*/\1/p' "$d/jobs/$name.out" | head -1)
  [ -n "$n" ] || fail "$name: no 'stopped by SIGTERM after step N' line"
  [ -f "$ck/$(printf 'step_%08d' "$n")/COMPLETE" ] || fail "$name: the checkpoint of step $n is not complete"
  grep -q "$(printf 'step_%08d' "$n")" "$ck/latest" || fail "$name: latest does not name step $n"
  if [ -n "$CKPT" ] && [ -x "$CKPT" ]; then
    "$CKPT" verify "$ck/$(printf 'step_%08d' "$n")" > "$d/jobs/$name.verify" 2>&1 || fail "$name: loomckpt verify failed"
  fi
  echo "$n"
}

# 1) pretrain_multinode.sbatch (srun starts one trainlaunch, which starts 2 ranks), preempted, then resubmitted.
ck1=$d/ck_launch
# shellcheck disable=SC2086
id=$(submit launch NPROC_PER_NODE=2 TRAINLAUNCH=$TL PRETRAIN=$PRETRAIN GRACE_PERIOD=60 -- --nodes=1 \
     "$SRC/scripts/slurm/pretrain_multinode.sbatch" "$SRC/configs/tiny_cpu.yaml" $small \
     --set checkpoint.dir=$ck1 --set training.steps=100000) || exit 1
progress "$ck1/metrics.jsonl" 12 "$id"  # past the 10 warmup steps: the resubmission trains 2 more
preempt "$id"
n=$(check_stop launch "$id" "$ck1") || exit 1
# shellcheck disable=SC2086
id=$(submit launch_again NPROC_PER_NODE=2 TRAINLAUNCH=$TL PRETRAIN=$PRETRAIN -- --nodes=1 \
     "$SRC/scripts/slurm/pretrain_multinode.sbatch" "$SRC/configs/tiny_cpu.yaml" $small \
     --set checkpoint.dir=$ck1 --set training.steps=$((n + 2))) || exit 1
st=$(wait_job "$id" 120)
[ "$st" = COMPLETED ] || fail "the resubmitted job ended $st"
grep -q "resumed from step $n " "$d/jobs/launch_again.out" || fail "the resubmitted job did not resume from step $n"

# 2) srun_ranks.sbatch: srun starts both ranks (no launcher); Slurm's SIGTERM reaches each rank directly.
ck2=$d/ck_srun
id=$(submit srun PROGRAM=$PRETRAIN \
     "PROGRAM_ARGS=--config $SRC/configs/tiny_cpu.yaml $(echo $small) --set checkpoint.dir=$ck2 --set training.steps=100000" \
     -- "$SRC/scripts/slurm/srun_ranks.sbatch") || exit 1
progress "$ck2/metrics.jsonl" 5 "$id"
preempt "$id"
n2=$(check_stop srun "$id" "$ck2") || exit 1
echo "PASS slurm preempt: both scripts stopped at one agreed checkpoint (steps $n and $n2), COMPLETED with exit 0"
