#!/usr/bin/env bash
# The GPU test runners count what GoogleTest printed, on canned output: a fake bundle (the real run.sh,
# run_gpu_tests.sh and gtest_results.awk; bin/test_gpu is tests/scripts/fake_node/fake_gtest.sh) runs
#   1. run_gpu_tests.sh over cases that pass (one whose output ends without a newline), skip, and fail as a
#      parameterised case (gtest's FAILED line ends its name with a comma): each counted once;
#   2. a case that crashes: counted as failed, with the cases after it that never started;
#   3. scripts/gpu_checks.sh (step tests) on that bundle: all passing -> "passed", exit 0; a failure -> FAILED,
#      exit 1; every case skipped -> NOT RUN, exit 3 (it reads the runner's own summary line).
# Usage: gpu_runner_test.sh SOURCE_DIR WORK_DIR
set -euo pipefail
src="$(cd "$1" && pwd)"
tmp="$2/gpu_runner_test_tmp"
fail() { echo "FAIL: $*" >&2; exit 1; }
rm -rf "$tmp"
mkdir -p "$tmp"

b="$tmp/bundle"
mkdir -p "$b/bin"
cp "$src/scripts/bundle/run.sh" "$src/scripts/bundle/run_gpu_tests.sh" "$b/"
[ ! -f "$src/scripts/bundle/gtest_results.awk" ] || cp "$src/scripts/bundle/gtest_results.awk" "$b/"
cp "$src/tests/scripts/fake_node/fake_gtest.sh" "$b/bin/test_gpu"
printf 'LOOM_REQ_GLIBC=2.2.5\nLOOM_REQ_GLIBCXX=\nLOOM_REQ_CXXABI=\nLOOM_REQ_CUDA_LIBS=""\n' >"$b/bundle.env"
cases() { for c in "$@"; do echo "$c - test_gpu --gtest_filter=$c"; done >"$b/gpu_tests.txt"; }
runner() {  # NAME: runs run_gpu_tests.sh, output in $tmp/NAME.log, exit status in rc
  set +e
  (cd "$tmp" && LOOM_GPU_TEST_LOGS="$tmp/logs_$1" "$b/run_gpu_tests.sh") >"$tmp/$1.log" 2>&1
  rc=$?
  set -e
  line="$(grep '^gpu tests:' "$tmp/$1.log" || true)"
  echo "$1: exit $rc; $line"
}

# 1. pass (the first case's output has no newline before its OK), skip, a failed parameterised case.
cases CudaRuntime.Works CudaRuntime.SkipsWithoutDevice Ops/Conformance.MatchesCpu/0 Ops/Conformance.MatchesCpu/1 \
  Ops/Conformance.MatchesCpu/2
runner mixed
grep -q 'FAILED  \] Ops/Conformance.MatchesCpu/1, where GetParam() = ' "$tmp/logs_mixed/test_gpu_1.log" ||
  fail "the stand-in did not print a failed parameterised case as gtest does"
[ "$line" = "gpu tests: 3 passed, 1 skipped, 1 failed: Ops/Conformance.MatchesCpu/1" ] ||
  { cat "$tmp/mixed.log"; fail "run_gpu_tests.sh miscounted pass/skip/parameterised failure: '$line'"; }
[ $rc -eq 1 ] || fail "run_gpu_tests.sh exited $rc with a failed case (want 1)"
echo "ok: a failed parameterised case counts once, as failed; a result after text on its line counts"

# 2. a crash in the second case: it and the two cases after it are failures, not silence.
cases CudaRuntime.Works CudaRuntime.Crash CudaRuntime.Later Ops/Conformance.MatchesCpu/0
runner crash
[ "$line" = "gpu tests: 1 passed, 0 skipped, 3 failed: CudaRuntime.Crash(no result: crashed?) test_gpu(2 more cases never started: the process ended first)" ] ||
  { cat "$tmp/crash.log"; fail "run_gpu_tests.sh miscounted a crash: '$line'"; }
[ $rc -eq 1 ] || fail "run_gpu_tests.sh exited $rc after a crash (want 1)"
echo "ok: a crashed case and the cases that never started count as failed"

# 3. gpu_checks.sh reads the runner's summary line.
checks() {  # NAME: runs gpu_checks.sh's tests step on the bundle; rc, and its summary line in line
  set +e
  GPU_CHECKS_STEPS=tests "$src/scripts/gpu_checks.sh" "$tmp/checks_$1" "$b" >"$tmp/checks_$1.log" 2>&1
  rc=$?
  set -e
  line="$(cat "$tmp/checks_$1/summary.txt" 2>/dev/null || true)"
  echo "gpu_checks $1: exit $rc; $line"
}
cases CudaRuntime.Works CudaRuntime.AlsoWorks CudaRuntime.SkipsWithoutDevice
checks pass
[ $rc -eq 0 ] && [[ "$line" == "tests        passed   gpu tests: 2 passed, 1 skipped, 0 failed; 1 of 3 skipped"* ]] ||
  { cat "$tmp/checks_pass.log"; fail "gpu_checks.sh did not report a passing bundle run as passed (exit $rc)"; }
cases CudaRuntime.Works Ops/Conformance.MatchesCpu/1
checks fail
[ $rc -eq 1 ] && [[ "$line" == "tests        FAILED   gpu tests: 1 passed, 0 skipped, 1 failed: Ops/Conformance.MatchesCpu/1"* ]] ||
  { cat "$tmp/checks_fail.log"; fail "gpu_checks.sh did not report the failure (exit $rc)"; }
cases CudaRuntime.SkipsWithoutDevice CudaRuntime.SkipsToo
checks skip
[ $rc -eq 3 ] && [[ "$line" == "tests        NOT RUN  every test skipped"* ]] ||
  { cat "$tmp/checks_skip.log"; fail "gpu_checks.sh did not report an all-skipped run as NOT RUN (exit $rc)"; }
echo "ok: gpu_checks.sh: passed (exit 0), FAILED (exit 1), NOT RUN when every case skipped (exit 3)"

rm -rf "$tmp"
echo "gpu runner test passed"
