#!/usr/bin/env bash
# The GPU checks of the CUDA backend, in one command for a machine with a GPU:
# the GPU (nvidia-smi), the gpu-labelled tests, one run of the conformance tests
# in a single process (it ends with the per-op summary table), and
# compute-sanitizer's memcheck over test_gpu (with LOOM_CUDA_NO_CACHING=1). Works from a build folder (CMake,
# `ctest -L gpu`) or from a bundle written by scripts/bundle.sh (run_gpu_tests.sh
# and run.sh).
#
# Usage: scripts/gpu_checks.sh LOG_DIR [BUILD_DIR | BUNDLE_DIR]
#   LOG_DIR   where every log goes (e.g. $OUT); created
#   second    a CMake build folder (has CMakeCache.txt) or a bundle (has run.sh and
#             bin/test_gpu); default: $LOOM_BUILD_DIR, else the first of build-sm90/,
#             build-sm90a/, build/, bundle/ under the repository root that exists
# Environment:
#   GPU_CHECKS_STEPS      steps to run, in order (default "smi tests conformance memcheck")
#   GPU_CHECKS_JOBS       parallel ctest jobs (default 8)
#   GPU_TESTS_TIMEOUT     seconds for the whole gpu-labelled test step (default 420)
#   CONFORMANCE_TIMEOUT   seconds for the single-process conformance run (default 240)
#   MEMCHECK_TIMEOUT      seconds for memcheck (default 480; it runs test_gpu under the sanitizer)
#   MEMCHECK_FILTER       gtest filter for the memcheck run (default: every test of test_gpu)
#   COMPUTE_SANITIZER     the compute-sanitizer binary (default: PATH, $CUDA_HOME/bin,
#                         /usr/local/cuda*/bin, pip's nvidia/cuda_sanitizer_api, BUNDLE/tools)
# Files in LOG_DIR: env.txt, nvidia-smi.txt, gpu_tests.log (+ gpu_test_logs/ for a bundle),
# conformance.log, memcheck.log, summary.txt (one line per step: passed / FAILED / NOT RUN and why).
# The memcheck step alone runs with LOOM_CUDA_NO_CACHING=1: the allocator then gives every tensor its own cudaMalloc
# of exactly its bytes, so memcheck sees an overrun past any tensor's end (in a 2 MiB caching segment shared by many
# tensors it could not); test_gpu's tests of the caching itself skip there.
# A device call allows 600 s: where the steps together may take longer, run them in two calls, e.g.
#   GPU_CHECKS_STEPS="smi tests conformance" scripts/gpu_checks.sh $OUT/a BUILD
#   GPU_CHECKS_STEPS=memcheck scripts/gpu_checks.sh $OUT/b BUILD
# Exit status: 0 when every step ran and passed; 1 when a step failed; 3 when a step could not run
# (no GPU, no compute-sanitizer); 2 on usage errors. A step that did not run never counts as passed.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
[ $# -ge 1 ] && [ "$1" != "-h" ] && [ "$1" != "--help" ] || { usage; exit 2; }
out="$1"
target="${2:-${LOOM_BUILD_DIR:-}}"
if [ -z "$target" ]; then
  for c in "$root/build-sm90" "$root/build-sm90a" "$root/build" "$root/bundle"; do
    if [ -f "$c/CMakeCache.txt" ] || [ -x "$c/run.sh" ]; then target="$c"; break; fi
  done
fi
[ -n "$target" ] && [ -d "$target" ] || { echo "gpu_checks.sh: no build folder or bundle (give one)" >&2; exit 2; }
target="$(cd "$target" && pwd)"
if [ -f "$target/CMakeCache.txt" ]; then
  kind=build
  test_gpu="$(find "$target" -type f -name test_gpu -perm -u+x -not -path '*/CMakeFiles/*' | head -n1)"
elif [ -x "$target/run.sh" ] && [ -x "$target/bin/test_gpu" ]; then
  kind=bundle
  test_gpu="$target/bin/test_gpu"
else
  echo "gpu_checks.sh: $target is neither a CMake build folder nor a bundle with bin/test_gpu" >&2
  exit 2
fi
[ -n "$test_gpu" ] || { echo "gpu_checks.sh: test_gpu is not built in $target" >&2; exit 2; }
mkdir -p "$out" || { echo "gpu_checks.sh: cannot create $out" >&2; exit 2; }
out="$(cd "$out" && pwd)"

# The conformance tests' CPU self-check of their harness must never stand in for the GPU here.
unset LOOM_CONFORMANCE_DEVICE LOOM_CONFORMANCE_PERTURB
steps="${GPU_CHECKS_STEPS:-smi tests conformance memcheck}"
jobs="${GPU_CHECKS_JOBS:-8}"
summary="$out/summary.txt"
: >"$summary"
status=0
# record STEP RESULT DETAIL: RESULT is passed, FAILED or NOT RUN.
record() {
  printf '%-12s %-8s %s\n' "$1" "$2" "$3" | tee -a "$summary"
  case "$2" in
    passed) ;;
    FAILED) status=1 ;;
    *) [ $status -eq 1 ] || status=3 ;;
  esac
}
# test_gpu from the build, or through the bundle's run.sh (which sets up its library paths).
if [ "$kind" = bundle ]; then tg=("$target/run.sh" test_gpu); else tg=("$test_gpu"); fi

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(hostname)"
  echo "target: $target ($kind)"
  echo "test_gpu: $test_gpu"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || head -n3 "$target/MANIFEST" 2>/dev/null)"
} >"$out/env.txt"
cat "$out/env.txt"

for step in $steps; do
  case "$step" in
    smi)
      if command -v nvidia-smi >/dev/null; then
        nvidia-smi 2>&1 | tee "$out/nvidia-smi.txt"
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv >>"$out/nvidia-smi.txt" 2>&1
        if nvidia-smi -L >/dev/null 2>&1; then record smi passed "$(nvidia-smi -L | head -n1)"; else
          record smi "NOT RUN" "nvidia-smi finds no GPU"; fi
      else
        record smi "NOT RUN" "no nvidia-smi on this machine"
      fi
      ;;
    tests)
      log="$out/gpu_tests.log"
      if [ "$kind" = build ]; then
        timeout "${GPU_TESTS_TIMEOUT:-420}" ctest --test-dir "$target" -L gpu --output-on-failure -j "$jobs" \
          >"$log" 2>&1
        rc=$?
        tail -n 40 "$log"
        line="$(grep -E '^[0-9]+% tests passed' "$log" | tail -n1)"
        total="$(printf '%s' "$line" | sed -n 's/.* out of \([0-9]*\).*/\1/p')"
        skipped="$(grep -c '\*\*\*Skipped' "$log")"
      else
        LOOM_GPU_TEST_LOGS="$out/gpu_test_logs" timeout "${GPU_TESTS_TIMEOUT:-420}" "$target/run_gpu_tests.sh" \
          >"$log" 2>&1
        rc=$?
        tail -n 40 "$log"
        # The runner's own summary line: "gpu tests: P passed, S skipped, F failed[: NAMES]".
        line="$(grep -E '^gpu tests: [0-9]+ passed, [0-9]+ skipped, [0-9]+ failed' "$log" | tail -n1)"
        total="" skipped=""
        if [ -n "$line" ]; then
          read -r p s f <<<"$(printf '%s\n' "$line" | sed 's/^gpu tests: \([0-9]*\) passed, \([0-9]*\) skipped, \([0-9]*\) failed.*/\1 \2 \3/')"
          total=$((p + s + f)) skipped=$s
        fi
      fi
      if [ $rc -eq 124 ]; then
        record tests FAILED "timed out after ${GPU_TESTS_TIMEOUT:-420}s (log: gpu_tests.log)"
      elif [ $rc -ne 0 ]; then
        record tests FAILED "${line:-exit $rc} (log: gpu_tests.log)"
      elif [ -z "$total" ]; then
        record tests "NOT RUN" "no summary line in gpu_tests.log (the runner did not finish?)"
      elif [ "$total" -eq 0 ] || [ "$skipped" -ge "$total" ]; then
        record tests "NOT RUN" "every test skipped or none found (no usable GPU?): ${line}"
      else
        record tests passed "$line; $skipped of $total skipped (see gpu_tests.log for why)"
      fi
      ;;
    conformance)
      # One process for every conformance test, so it prints the summary table at its end.
      log="$out/conformance.log"
      timeout "${CONFORMANCE_TIMEOUT:-240}" "${tg[@]}" \
        --gtest_filter='Ops/*:Grads/*:CudaConformance.*' >"$log" 2>&1
      rc=$?
      sed -n '/\[conformance summary\]/,$p' "$log"
      counts="$(grep -E '^\[  (PASSED|FAILED|SKIPPED) +\] [0-9]+ test' "$log" | tr -s ' ' | tr '\n' ' ')"
      if [ $rc -eq 124 ]; then
        record conformance FAILED "timed out after ${CONFORMANCE_TIMEOUT:-240}s (log: conformance.log)"
      elif [ $rc -ne 0 ]; then
        record conformance FAILED "exit $rc: $counts(log: conformance.log)"
      elif grep -q 'no CUDA device' "$log"; then
        record conformance "NOT RUN" "no CUDA device: every test skipped"
      else
        record conformance passed "$counts"
      fi
      ;;
    memcheck)
      san="${COMPUTE_SANITIZER:-}"
      if [ -z "$san" ]; then
        for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
                 /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer \
                 "$target/tools/compute-sanitizer/compute-sanitizer"; do
          if [ -n "$c" ] && [ -x "$c" ]; then san="$c"; break; fi
        done
      fi
      if [ -z "$san" ]; then
        for py in python3 /usr/bin/python3; do
          d="$("$py" -c 'import nvidia.cuda_sanitizer_api as m, os; print(os.path.dirname(m.__file__))' 2>/dev/null)"
          if [ -n "$d" ] && [ -x "$d/compute-sanitizer/compute-sanitizer" ]; then
            san="$d/compute-sanitizer/compute-sanitizer"; break
          fi
        done
      fi
      if [ -z "$san" ]; then
        record memcheck "NOT RUN" "no compute-sanitizer (set COMPUTE_SANITIZER, or pip install nvidia-cuda-sanitizer-api)"
        continue
      fi
      log="$out/memcheck.log"
      filter="${MEMCHECK_FILTER:-*}"
      echo "memcheck: LOOM_CUDA_NO_CACHING=1 (one cudaMalloc per tensor) $san --tool memcheck on test_gpu --gtest_filter=$filter"
      # Errors go to memcheck.log with the program's output; --error-exitcode separates them from test failures.
      if [ "$kind" = bundle ]; then
        LOOM_CUDA_NO_CACHING=1 timeout "${MEMCHECK_TIMEOUT:-480}" "$san" --tool memcheck --target-processes all --error-exitcode 97 \
          --print-limit 200 "${tg[@]}" --gtest_filter="$filter" --gtest_brief=1 >"$log" 2>&1
      else
        LOOM_CUDA_NO_CACHING=1 timeout "${MEMCHECK_TIMEOUT:-480}" "$san" --tool memcheck --error-exitcode 97 \
          --print-limit 200 "${tg[@]}" --gtest_filter="$filter" --gtest_brief=1 >"$log" 2>&1
      fi
      rc=$?
      tail -n 30 "$log"
      errs="$(grep -E '========= ERROR SUMMARY' "$log" | tail -n1)"
      if [ $rc -eq 124 ]; then
        record memcheck FAILED "timed out after ${MEMCHECK_TIMEOUT:-480}s (raise MEMCHECK_TIMEOUT or narrow MEMCHECK_FILTER)"
      elif [ $rc -eq 97 ]; then
        record memcheck FAILED "${errs:-memcheck reported errors} (log: memcheck.log)"
      elif [ $rc -ne 0 ]; then
        record memcheck FAILED "test_gpu failed under the sanitizer, exit $rc; ${errs} (log: memcheck.log)"
      elif [ -z "$errs" ]; then
        record memcheck FAILED "no ERROR SUMMARY line: the sanitizer did not finish (log: memcheck.log)"
      elif grep -q 'no CUDA device' "$log"; then
        record memcheck "NOT RUN" "no CUDA device: test_gpu skipped everything under the sanitizer"
      else
        record memcheck passed "$errs (LOOM_CUDA_NO_CACHING=1: one cudaMalloc per tensor)"
      fi
      ;;
    *)
      echo "gpu_checks.sh: unknown step '$step' (steps: smi tests conformance memcheck)" >&2
      exit 2
      ;;
  esac
done

echo "---- summary ($summary)"
cat "$summary"
exit $status
