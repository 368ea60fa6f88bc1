#!/usr/bin/env bash
# Starts N copies of a program as ranks 0..N-1 on localhost with torchrun-style
# variables and a random store port; fails if any rank fails.
# Usage: run_tcp.sh N PROGRAM [ARGS...]
set -u
n=$1; shift
export WORLD_SIZE=$n LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1
export MASTER_PORT=$(( 20000 + (RANDOM % 20000) ))
export LOOM_STORE_SECRET=${LOOM_STORE_SECRET:-test-secret-$RANDOM$RANDOM}
pids=()
for ((r = 0; r < n; r++)); do
  RANK=$r LOCAL_RANK=$r "$@" &
  pids+=($!)
done
rc=0
for p in "${pids[@]}"; do
  wait "$p" || rc=1
done
exit $rc
