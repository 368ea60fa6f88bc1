#!/usr/bin/env bash
# Starts N copies of a program as ranks 0..N-1 on localhost with torchrun-style
# variables; fails (stopping the others) as soon as any rank fails. The store
# port is MASTER_PORT when set (tests/with_port.sh sets it, and retries on
# "Address already in use"), else a free one from tests/free_port.sh.
# Usage: run_tcp.sh N PROGRAM [ARGS...]
set -u
n=$1; shift
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export WORLD_SIZE=$n LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1
if [[ -z ${MASTER_PORT:-} ]]; then
  MASTER_PORT=$("$here/../../free_port.sh") || exit 1
  export MASTER_PORT
fi
export LOOM_STORE_SECRET=${LOOM_STORE_SECRET:-test-secret-$RANDOM$RANDOM}
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r LOCAL_RANK=$r "$@" &
  pids+=($!)
done
rc=0
for ((left = n; left > 0; left--)); do
  wait -n "${pids[@]}"
  s=$?
  if [[ $s -ne 0 && $s -ne 127 ]]; then
    rc=1
    kill "${pids[@]}" 2> /dev/null  # a rank that failed (e.g. rank 0 could not bind): the others would wait for it
  fi
done
exit $rc
