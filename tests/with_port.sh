#!/usr/bin/env bash
# Runs a command with a free port in MASTER_PORT (or in the variables named with --var), and again with
# another port when the command failed because a server could not bind it ("Address already in use": another
# program took the port between the pick and the bind). The store secret gets a random suffix, so ranks that reach
# another job's store on a recycled port are refused instead of joining it.
# Usage: with_port.sh [--count N] [--var NAME]... [--tries N] -- COMMAND [ARGS...]
#   --count N  ports P..P+N-1 must be free (default 2: rank 0's store and the launchers' store at MASTER_PORT+1)
#   --var NAME export the port as NAME (repeatable; default MASTER_PORT)
set -u
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tests/free_port.sh
. "$here/free_port.sh"
count=2 tries=4 vars=()
while [[ $# -gt 0 ]]; do
  case $1 in
  --count) count=$2; shift 2 ;;
  --var) vars+=("$2"); shift 2 ;;
  --tries) tries=$2; shift 2 ;;
  --) shift; break ;;
  *) break ;;
  esac
done
[[ ${#vars[@]} -gt 0 ]] || vars=(MASTER_PORT)
[[ $# -gt 0 ]] || { echo "usage: with_port.sh [--count N] [--var NAME]... [--tries N] -- COMMAND [ARGS...]" >&2; exit 2; }
export LOOM_STORE_SECRET="${LOOM_STORE_SECRET:-loom-test}-$RANDOM$RANDOM"
out=$(mktemp /tmp/loom-with-port.XXXXXX)
trap 'rm -f "$out"' EXIT
for ((t = 1; t <= tries; t++)); do
  p=$(loom_free_port "$count") || exit 1
  for v in "${vars[@]}"; do export "$v=$p"; done
  "$@" 2>&1 | tee "$out"
  rc=${PIPESTATUS[0]}
  if [[ $rc -ne 0 ]] && grep -q "Address already in use" "$out" && [[ $t -lt $tries ]]; then
    echo "with_port.sh: port $p was taken before the server bound it; again with another port" >&2
    continue
  fi
  exit $rc
done
