#!/usr/bin/env bash
# Starts a private single-node Slurm (slurmctld + slurmd, auth/none, state in a
# temp dir, random ports), submits both scripts of scripts/slurm/ with sbatch as
# 2-rank jobs running collectives_mp, checks that both ranks ran and agreed, and
# stops the daemons. Usage: slurm_test.sh TRAINLAUNCH COLLECTIVES_MP SOURCE_DIR
# Exit 0: passed, 77: skipped (no slurm-wlm or not root). Needs root (SlurmUser=root) and Debian's slurm-wlm.
set -u
TL=$1; MP=$2; SRC=$3
for t in slurmctld slurmd sbatch scontrol; do
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
ProctrackType=proctrack/pgid
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
fail() {
  echo "FAIL: $*"
  for f in "$d"/jobs/*.out "$d/slurmctld.log" "$d/slurmd.log"; do [ -e "$f" ] && { echo "--- $f"; tail -30 "$f"; }; done
  exit 1
}
free_port() {  # a port in 30000..39998 whose pair is not accepting connections
  local p
  for _ in $(seq 50); do
    p=$(( 30000 + RANDOM % 9999 ))
    (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && continue
    (exec 3<>/dev/tcp/127.0.0.1/$((p + 1))) 2>/dev/null && continue
    break
  done
  echo $p
}
# slurmctld exits when its port is taken (another test, TIME_WAIT): try other ports.
for try in 1 2 3 4 5; do
  p=$(free_port)
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

# The rank program: says who it is, then runs the gloo collectives check.
cat > "$d/jobs/rank.sh" <<PROG
#!/bin/sh
echo "rank \${RANK:-\$SLURM_PROCID} of \${WORLD_SIZE:-\$SLURM_NTASKS} ran"
exec "$MP" gloo
PROG
chmod +x "$d/jobs/rank.sh"

run_job() {  # run_job NAME SCRIPT [extra sbatch args]: waits, prints the job state
  local name=$1 script=$2; shift 2
  local id
  # A random MASTER_PORT: two such tests at once would both number their first job 1.
  id=$(cd "$d/jobs" && MASTER_PORT=$(( 20000 + RANDOM % 20000 )) TRAINLAUNCH=$TL PROGRAM=$d/jobs/rank.sh NPROC_PER_NODE=2 \
       sbatch --parsable --output="$d/jobs/$name.out" "$@" "$script") || fail "sbatch $script"
  local deadline=$(( $(date +%s) + 60 ))
  while [ "$(date +%s)" -lt $deadline ]; do
    state=$(timeout 5 scontrol show job "$id" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | cut -d= -f2)
    case $state in COMPLETED|FAILED|CANCELLED|TIMEOUT|NODE_FAIL|OUT_OF_MEMORY) break ;; esac
    sleep 0.2
  done
  echo "$state"
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
