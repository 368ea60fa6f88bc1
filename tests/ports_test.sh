#!/usr/bin/env bash
# Port choices of the tests and scripts (item: a flaky test must not block every landing).
#   lint:    no line of tests/ or scripts/ that chooses a port may name one in Linux's ephemeral range (32768-60999)
#            or draw one with $RANDOM: such a port can be held by any outgoing connection ("address already in use").
#   helper:  tests/free_port.sh gives ranges below the ephemeral range that no socket holds, never the same twice;
#            tests/with_port.sh sets MASTER_PORT (or --var names) and reruns a command that failed on EADDRINUSE.
# Usage: ports_test.sh CASE SOURCE_DIR; exit 0 passed, 1 failed.
set -u
case_name=$1 src=$2
tmp=$(mktemp -d /tmp/loom-ports-test.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp" || exit 1
fail() { echo "FAIL [$case_name]: $*"; exit 1; }
case $case_name in
lint)
  # Lines (not comments) that mention a port, in the files that start servers or pick ports.
  bad=$(cd "$src" && grep -rnE --include='*.sh' --include='*.cmake' --include='*.sbatch' --include='*.cc' \
          --include='*.h' --include='CMakeLists.txt' 'PORT|(^|[^a-zA-Z])[Pp]ort|[^x]port\b|port_' tests scripts |
        grep -vE '^[^:]+:[0-9]+:\s*(#|//)' |
        grep -E '(^|[^0-9.])(3(2(7(6[89]|[7-9][0-9])|[89][0-9]{2})|[3-9][0-9]{3})|[45][0-9]{4}|60[0-9]{3})([^0-9.]|$)|\$RANDOM|RANDOM %')
  [[ -z $bad ]] || fail "port choices in the ephemeral range or drawn at random (use tests/free_port.sh or with_port.sh):
$bad"
  ;;
helper)
  eph=$(awk '{ print $1 }' /proc/sys/net/ipv4/ip_local_port_range)
  seen=" "
  for _ in $(seq 20); do
    p=$("$src/tests/free_port.sh" 2) || fail "free_port.sh failed"
    [[ $p =~ ^[0-9]+$ ]] || fail "free_port.sh printed '$p'"
    ((p >= 1024 && p + 1 < eph)) || fail "port $p..$((p + 1)) is not below the ephemeral range ($eph)"
    [[ $seen == *" $p "* || $seen == *" $((p + 1)) "* ]] && fail "port $p or $((p + 1)) given twice"
    seen="$seen$p $((p + 1)) "
    hex=$(printf '%04X' "$p")
    grep -qE "^ *[0-9]+: [0-9A-F]+:$hex " /proc/net/tcp /proc/net/tcp6 && fail "port $p is held by a socket"
  done
  # A port held by a listening socket is never given: hold one and ask until the helper would have hit it by chance.
  if command -v python3 > /dev/null; then
    held=$("$src/tests/free_port.sh" 1)
    rmdir "/tmp/loom-ports/$held"  # free the reservation: only the socket holds it now
    python3 -c "import socket,time,sys; s=socket.socket(); s.bind(('127.0.0.1',$held)); s.listen(); print('up',flush=True); time.sleep(30)" > held.out &
    hp=$!
    for _ in $(seq 100); do [[ -s held.out ]] && break; sleep 0.05; done
    (. "$src/tests/free_port.sh"; loom_port_taken "$held") || { kill $hp; fail "loom_port_taken does not see port $held held by a listener"; }
    kill $hp
  fi
  # with_port.sh: MASTER_PORT and --var names set; a run that failed on EADDRINUSE is rerun with another port.
  out=$("$src/tests/with_port.sh" --var A --var B -- sh -c 'echo "$A $B ${MASTER_PORT:-unset}"') || fail "with_port.sh failed"
  read -r a b m <<< "$out"
  [[ $a == "$b" && $a =~ ^[0-9]+$ && $m == unset ]] || fail "with_port.sh --var A --var B gave '$out'"
  rm -f tries
  out=$("$src/tests/with_port.sh" -- sh -c 'echo $MASTER_PORT >> tries; [ $(wc -l < tries) -ge 2 ] && exit 0; echo "cannot listen: Address already in use"; exit 1' 2>&1) ||
    fail "with_port.sh did not retry after EADDRINUSE: $out"
  [[ $(sort -u tries | wc -l) -eq 2 ]] || fail "the retry did not use another port: $(cat tries)"
  "$src/tests/with_port.sh" -- sh -c 'exit 3' > /dev/null 2>&1
  [[ $? -eq 3 ]] || fail "with_port.sh does not pass on the command's exit status"
  ;;
*) echo "unknown case $case_name"; exit 2 ;;
esac
echo "PASS [$case_name]"
