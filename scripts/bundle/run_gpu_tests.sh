#!/bin/sh
# Runs this bundle's gpu-labelled tests (gpu_tests.txt, taken from `ctest -L gpu`
# of the build the bundle was made from) through run.sh. GoogleTest cases of one
# program run together, up to 200 per process (one CUDA start-up, not one per
# case); each case is counted from GoogleTest's own result line: OK, FAILED, or
# SKIPPED (a skip never counts as a pass), and a case that started but left no
# result line (the process crashed) counts as failed, and so does each case of
# the process that never started; each case counts once (gtest_results.awk,
# beside this script).
# Usage: ./run_gpu_tests.sh [REGEX]   (an awk regular expression on test names; default all)
# Logs: gpu_test_logs/ in the current folder (LOOM_GPU_TEST_LOGS to change).
set -u
case "$0" in */*) here="${0%/*}" ;; *) here=. ;; esac
here="$(cd "$here" && pwd)"
regex="${1:-.}"
logs="${LOOM_GPU_TEST_LOGS:-$PWD/gpu_test_logs}"
mkdir -p "$logs" || exit 1
groups="$logs/groups.txt"
# One line per process to start: ENV PROGRAM FILTER ARGS... (FILTER: names joined by ':', or '-' for none).
awk -v re="$regex" '
  /^#/ || NF < 3 || $1 !~ re { next }
  {
    filter = "-"; rest = ""
    for (i = 4; i <= NF; i++) {
      if ($i ~ /^--gtest_filter=/) filter = substr($i, 16); else rest = rest " " $i
    }
    key = $2 " " $3 rest
    if (filter == "-" || filter ~ /[*?]/) { print $2, $3, filter rest; next }   # a pattern: runs alone
    if (!(key in n) || n[key] == 200) { g++; order[g] = key; n[key] = 0; f[g] = ""; gk[key] = g }
    k = gk[key]; f[k] = f[k] (f[k] == "" ? "" : ":") filter; n[key]++
  }
  END { for (i = 1; i <= g; i++) { split(order[i], w, " "); r = ""; for (j = 3; j in w; j++) r = r " " w[j]; print w[1], w[2], f[i] r } }
' "$here/gpu_tests.txt" >"$groups"

[ -s "$groups" ] || { echo "run_gpu_tests.sh: no test in $here/gpu_tests.txt matches '$regex'" >&2; exit 1; }
pass=0 skip=0 fail=0 failed="" i=0
while read -r env prog filter args; do
  i=$((i + 1))
  log="$logs/${prog}_$i.log"
  if [ "$env" = "-" ]; then envs=""; else envs="$(printf '%s' "$env" | tr ',' ' ')"; fi
  if [ "$filter" = "-" ]; then farg=""; else farg="--gtest_filter=$filter"; fi
  start=$(date +%s)
  # shellcheck disable=SC2086
  env $envs "$here/run.sh" "$prog" ${farg:+"$farg"} $args </dev/null >"$log" 2>&1
  rc=$?
  secs=$(($(date +%s) - start))
  # Counts from gtest's own result lines (gtest_results.awk: a failed parameterised case once, by its name).
  { read -r ok sk fl nr; read -r fnames; read -r nrnames; } <<EOF
$(awk -f "$here/gtest_results.awk" "$log")
EOF
  # shellcheck disable=SC2086
  set -- $fnames
  for t in $nrnames; do set -- "$@" "$t(no result: crashed?)"; done
  fl=$((fl + nr))
  if [ $((ok + sk + fl)) -eq 0 ]; then
    # Not a GoogleTest run, or it died before the first case, or no case matched: none is a pass.
    if grep -q '^\[==========\] Running 0 tests' "$log"; then fl=1; set -- "$prog(no case matched $filter)"
    elif [ $rc -eq 0 ]; then ok=1; else fl=1; set -- "$prog(exit $rc)"; fi
  else
    # Cases named in the filter that never started: the process ended (crashed) before them.
    case "$filter" in
      -|*[*?]*) expect=0 ;;
      *) expect="$(printf '%s\n' "$filter" | tr ':' '\n' | grep -c .)" ;;
    esac
    if [ "$expect" -gt $((ok + sk + fl)) ]; then
      miss=$((expect - ok - sk - fl))
      fl=$((fl + miss))
      set -- "$@" "$prog($miss more cases never started: the process ended first)"
    elif [ $rc -ne 0 ] && [ "$fl" -eq 0 ]; then
      fl=1; set -- "$prog(exit $rc after its cases)"
    fi
  fi
  pass=$((pass + ok)) skip=$((skip + sk)) fail=$((fail + fl))
  [ "$fl" -eq 0 ] || failed="$failed $*"
  printf '%-18s %4ss  %4d passed %4d skipped %4d failed  (log %s)\n' "$prog" "$secs" "$ok" "$sk" "$fl" "$log"
done <"$groups"
echo "gpu tests: $pass passed, $skip skipped, $fail failed${failed:+:$failed}"
[ $fail -eq 0 ]
