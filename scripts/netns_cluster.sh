#!/usr/bin/env bash
# A simulated cluster on one machine, for multi-node tests on real addresses:
# each node is a network namespace NAME-nI with its own address, host name
# (NAME-nI, in its own UTS namespace) and Debian's default /etc/hosts, which maps
# the host name to 127.0.1.1 (the case where a node that listens on the address
# of gethostname() tells the others to connect to a loopback address). The nodes
# hang off a bridge in a switch namespace NAME-sw, one bridge per network.
# Nothing leaves these namespaces: the host's interfaces and routes are not
# touched, so the fixed subnets 10.231.NET.0/24 cannot clash with the host's or
# with another cluster's (each cluster has its own switch). Needs root and
# iproute2 (tc as well for --rate).
#
#   netns_cluster.sh up NAME NODES [--nets N] [--rate RATE]
#       create NAME-sw and NAME-n0 .. NAME-n<NODES-1>; node I gets interface lanK
#       with address 10.231.K.(I+1)/24 on each network K < N (default 1); --rate
#       (e.g. 1gbit) puts a tbf rate limit on every node's links
#   netns_cluster.sh down NAME              kill what runs in NAME-*, delete them
#   netns_cluster.sh exec NAME I CMD...     run CMD on node I (host name NAME-nI)
#   netns_cluster.sh addr I [K]             node I's address on network K (0)
#   netns_cluster.sh link NAME I up|down [K]  plug node I's cable on network K in or out
#
# A test calls up, then down from a trap, e.g.
#   name=loomt-$$; trap 'scripts/netns_cluster.sh down $name' EXIT
#   scripts/netns_cluster.sh up $name 2 --nets 2
#   scripts/netns_cluster.sh exec $name 1 trainlaunch --master-addr "$(scripts/netns_cluster.sh addr 0)" ...
set -euo pipefail

die() {
  echo "netns_cluster.sh: $*" >&2
  exit 1
}

addr() { echo "10.231.${2:-0}.$(($1 + 1))"; }

namespaces() { ip netns list | awk '{print $1}' | grep -E "^$1-(sw|n[0-9]+)\$" || true; }

up() {
  local name=$1 nodes=$2 nets=1 rate=""
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --nets) nets=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      *) die "up: unknown option $1" ;;
    esac
  done
  [ "$nodes" -ge 1 ] && [ "$nodes" -le 250 ] || die "up: NODES must be 1..250, not $nodes"
  [ "$nets" -ge 1 ] && [ "$nets" -le 4 ] || die "up: --nets must be 1..4, not $nets"
  [ -z "$(namespaces "$name")" ] || die "up: namespaces $name-* exist already (netns_cluster.sh down $name)"
  local sw=$name-sw
  ip netns add "$sw"
  ip -n "$sw" link set lo up
  for k in $(seq 0 $((nets - 1))); do
    ip -n "$sw" link add "br$k" type bridge
    ip -n "$sw" link set "br$k" up
  done
  for i in $(seq 0 $((nodes - 1))); do
    local ns=$name-n$i
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    # Debian's default /etc/hosts (ip netns exec mounts /etc/netns/NS/* over /etc).
    mkdir -p "/etc/netns/$ns"
    printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n' "$ns" > "/etc/netns/$ns/hosts"
    for k in $(seq 0 $((nets - 1))); do
      ip link add name "lan$k" netns "$ns" type veth peer name "n${i}k$k" netns "$sw"
      ip -n "$sw" link set "n${i}k$k" master "br$k" up
      ip -n "$ns" addr add "$(addr "$i" "$k")/24" dev "lan$k"
      ip -n "$ns" link set "lan$k" up
      if [ -n "$rate" ]; then
        tc -n "$ns" qdisc add dev "lan$k" root tbf rate "$rate" burst 256kb latency 100ms
      fi
    done
  done
}

down() {
  local name=$1 ns pids
  for ns in $(namespaces "$name"); do
    # Only processes started inside this cluster's namespaces.
    pids=$(ip netns pids "$ns" 2> /dev/null || true)
    [ -z "$pids" ] || kill -9 $pids 2> /dev/null || true
    ip netns del "$ns" 2> /dev/null || true
  done
  rm -rf "/etc/netns/$name"-sw "/etc/netns/$name"-n*
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  up)
    [ $# -ge 2 ] || die "usage: up NAME NODES [--nets N] [--rate RATE]"
    up "$@"
    ;;
  down)
    [ $# -eq 1 ] || die "usage: down NAME"
    down "$1"
    ;;
  exec)
    [ $# -ge 3 ] || die "usage: exec NAME I CMD..."
    ns=$1-n$2
    shift 2
    exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$ns" "$@"
    ;;
  addr)
    [ $# -ge 1 ] || die "usage: addr I [K]"
    addr "$@"
    ;;
  link)
    [ $# -ge 3 ] || die "usage: link NAME I up|down [K]"
    ip -n "$1-n$2" link set "lan${4:-0}" "$3"
    ;;
  *)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    [ "$cmd" = help ] || [ "$cmd" = --help ] || exit 2
    ;;
esac
