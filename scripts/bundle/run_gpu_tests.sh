#!/bin/sh
# Runs this bundle's gpu-labelled tests (gpu_tests.txt, taken from `ctest -L gpu`
# of the build the bundle was made from) through run.sh, each as CTest would: a
# test whose output has "[  SKIPPED ]" counts as skipped, never as passed.
# Usage: ./run_gpu_tests.sh [PATTERN]   (PATTERN: a shell glob on test names, default all)
# Each test's output goes to gpu_test_logs/NAME.log beside the current folder.
set -u
case "$0" in */*) here="${0%/*}" ;; *) here=. ;; esac
here="$(cd "$here" && pwd)"
pattern="${1:-*}"
logs="${LOOM_GPU_TEST_LOGS:-$PWD/gpu_test_logs}"
mkdir -p "$logs"
pass=0 skip=0 fail=0 failed=""
while read -r name env prog args; do
  case "$name" in ""|\#*) continue ;; esac
  # shellcheck disable=SC2254  # PATTERN is a glob on purpose
  case "$name" in $pattern) ;; *) continue ;; esac
  log="$logs/$(printf '%s' "$name" | tr '/' '_').log"
  if [ "$env" = "-" ]; then envs=""; else envs="$(printf '%s' "$env" | tr ',' ' ')"; fi
  start=$(date +%s)
  # shellcheck disable=SC2086
  env $envs "$here/run.sh" "$prog" $args >"$log" 2>&1
  rc=$?
  secs=$(( $(date +%s) - start ))
  if [ $rc -eq 0 ] && grep -q '\[  SKIPPED \]' "$log"; then
    skip=$((skip + 1)); printf 'skipped  %4ss  %s\n' "$secs" "$name"
  elif [ $rc -eq 0 ]; then
    pass=$((pass + 1)); printf 'passed   %4ss  %s\n' "$secs" "$name"
  else
    fail=$((fail + 1)); failed="$failed $name"; printf 'FAILED   %4ss  %s (exit %s, log %s)\n' "$secs" "$name" "$rc" "$log"
  fi
done <"$here/gpu_tests.txt"
echo "gpu tests: $pass passed, $skip skipped, $fail failed${failed:+:$failed}"
[ $fail -eq 0 ]
