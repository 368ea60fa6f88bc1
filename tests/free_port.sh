#!/usr/bin/env bash
# Free TCP ports for tests that must know a port before the server binds it (MASTER_PORT for mpirun or for ranks
# started by hand, Slurm's daemons). Asks the kernel which ports are taken (/proc/net/tcp and tcp6: every bound
# socket, listening or connected) and picks among 20000..32767, below Linux's ephemeral range
# (/proc/sys/net/ipv4/ip_local_port_range, 32768-60999 by default), so no outgoing connection is given the port
# between the pick and the bind. A pick is reserved for 15 minutes in /tmp/loom-ports (mkdir is atomic), so tests
# running at the same time, from any build tree, never pick the same port. tests/with_port.sh adds a retry when a
# bind still fails (another program bound the port in between).
# As a command:  free_port.sh [COUNT]       prints P, with P..P+COUNT-1 all free (COUNT default 1)
# Sourced:       . tests/free_port.sh; p=$(loom_free_port 2)

loom_port_taken() {  # loom_port_taken PORT: 0 when some socket is bound to PORT
  local hex
  hex=$(printf '%04X' "$1")
  grep -qE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6 2> /dev/null
}

loom_free_port() {  # loom_free_port [COUNT]
  local count=${1:-1} lo=20000 hi=32767 eph p i ok dir=/tmp/loom-ports
  eph=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range 2> /dev/null)
  [[ $eph =~ ^[0-9]+$ ]] && ((eph - 1 < hi)) && hi=$((eph - 1))
  ((hi - lo < 1000)) && lo=$((hi - 9000))  # an unusually wide ephemeral range: go lower
  mkdir -p "$dir" 2> /dev/null && chmod 1777 "$dir" 2> /dev/null
  find "$dir" -mindepth 1 -maxdepth 1 -mmin +15 -exec rm -rf {} + 2> /dev/null
  for _ in $(seq 200); do
    p=$((lo + (RANDOM * 32768 + RANDOM) % (hi - lo - count + 2)))
    ok=1
    for ((i = 0; i < count; i++)); do
      if [[ -e $dir/$((p + i)) ]] || loom_port_taken $((p + i)); then
        ok=0
        break
      fi
    done
    ((ok)) || continue
    # Reserve every port of the range; give up the ones taken if another test won the race for one of them.
    for ((i = 0; i < count; i++)); do
      if ! mkdir "$dir/$((p + i))" 2> /dev/null; then
        while ((i-- > 0)); do rmdir "$dir/$((p + i))" 2> /dev/null; done
        ok=0
        break
      fi
    done
    ((ok)) && { echo "$p"; return 0; }
  done
  echo "free_port.sh: no free port range of $count in $lo..$hi after 200 tries" >&2
  return 1
}

if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
  loom_free_port "${1:-1}"
fi
