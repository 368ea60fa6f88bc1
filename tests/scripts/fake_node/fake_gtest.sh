#!/bin/sh
# Stand-in for a GoogleTest program of a bundle (test_gpu, test_collectives) on a fake GPU node: prints what
# GoogleTest prints (format copied from gtest 1.14, including a failed parameterised case's ", where
# GetParam() = ..." and a case whose output ends without a newline) for the cases its --gtest_filter names.
# A pattern (NAME*) stands for three cases NAMECase/0, NAMECase/1, NAMECase/2.
# Behaviour: $FAKE_GTEST_MODE, else $FAKE_<STEP> for the step scripts/gpu_window.sh runs
# ($LOOM_GPU_WINDOW_STEP, upper case), else "byname":
#   pass    every case passes          fail   case .../1 fails (parameterised)
#   skip    every case skips (no GPU)  crash  the second case dies of SIGSEGV
#   hang    hangs in the first case, ignoring SIGTERM (only SIGKILL ends it)
#   orphan  hangs in the first case in a child that ignores SIGTERM while this process dies of it
#   byname  per case: a name with Skip skips, with Crash crashes, ending in /1 fails, the rest pass
# $FAKE_NOISE_<STEP> (bytes): that much incompressible output first. A filter with Ops/ also prints the
# conformance summary table (a FAIL cell when mode is fail).
filter=""
for a in "$@"; do
  case "$a" in --gtest_filter=*) filter="${a#--gtest_filter=}" ;; esac
done
step="$(printf '%s' "${LOOM_GPU_WINDOW_STEP:-}" | tr a-z A-Z)"
mode="${FAKE_GTEST_MODE:-}"
[ -n "$mode" ] || [ -z "$step" ] || eval "mode=\${FAKE_$step:-}"
mode="${mode:-byname}"
noise=0
[ -z "$step" ] || eval "noise=\${FAKE_NOISE_$step:-0}"
[ "$noise" -eq 0 ] || head -c "$noise" /dev/urandom | base64 -w 120

names=""
IFS=:
for f in $filter; do
  case "$f" in
    *'*'*) p="${f%%\**}"; names="$names ${p}Case/0 ${p}Case/1 ${p}Case/2" ;;
    *) names="$names $f" ;;
  esac
done
unset IFS
n=0
for t in $names; do n=$((n + 1)); done
echo "fake: CUDA_LAUNCH_BLOCKING=${CUDA_LAUNCH_BLOCKING:-unset} LOOM_CUDA_NO_CACHING=${LOOM_CUDA_NO_CACHING:-unset}"
echo "Running main() from ./googletest/src/gtest_main.cc"
echo "Note: Google Test filter = $filter"
echo "[==========] Running $n tests from 1 test suite."
echo "[----------] Global test environment set-up."
[ "$n" -gt 0 ] || { echo "[==========] 0 tests from 0 test suites ran. (0 ms total)"; echo "[  PASSED  ] 0 tests."; exit 0; }
ok=0 sk=0 fl=0 i=0 skipped="" failed=""
for t in $names; do
  i=$((i + 1))
  echo "[ RUN      ] $t"
  what=pass
  case "$mode" in
    pass) ;;
    fail) case "$t" in */1) what=fail ;; esac ;;
    skip) what=skip ;;
    crash) [ $i -eq 2 ] && what=crash ;;
    hang) what=hang ;;
    orphan) what=orphan ;;
    byname) case "$t" in *Skip*) what=skip ;; *Crash*) what=crash ;; */1) what=fail ;; esac ;;
  esac
  case "$what" in
    pass)
      if [ $i -eq 1 ]; then printf 'a line without its newline'; fi
      echo "[       OK ] $t (3 ms)"; ok=$((ok + 1)) ;;
    skip)
      echo "tests/gpu/test_cuda_runtime.cc:20: Skipped"
      echo "no CUDA device (cuda_is_available() is false): these tests need a GPU"
      echo
      echo "[  SKIPPED ] $t (0 ms)"; sk=$((sk + 1)); skipped="$skipped $t" ;;
    fail)
      echo "tests/gpu/test_cuda_conformance.cc:1140: Failure"
      echo "Value of: ok"
      echo "  Actual: false"
      echo "[  FAILED  ] $t, where GetParam() = gelu bf16 (12 ms)"; fl=$((fl + 1)); failed="$failed $t" ;;
    crash)
      kill -SEGV $$ ;;
    hang)
      trap '' TERM
      while :; do sleep 1; done ;;
    orphan)
      (trap '' TERM; while :; do sleep 1; done) &
      wait ;;
  esac
done
echo "[----------] Global test environment tear-down"
case "$filter" in
  *Ops/*)
    echo
    echo "[conformance summary] device cuda:0"
    printf '%-44s %-6s %-6s %-6s %-6s %-6s %-6s %-6s\n' op f32 bf16 f16 f64 i64 i32 u8
    printf '%-44s %-6s %-6s %-6s %-6s %-6s %-6s %-6s\n' add ok ok ok ok ok ok .
    if [ "$mode" = fail ]; then cell=FAIL; else cell=ok; fi
    printf '%-44s %-6s %-6s %-6s %-6s %-6s %-6s %-6s\n' "gelu tanh" ok "$cell" "$cell" ok . . . ;;
esac
echo "[==========] $n tests from 1 test suite ran. (20 ms total)"
echo "[  PASSED  ] $ok tests."
if [ $sk -gt 0 ]; then
  echo "[  SKIPPED ] $sk tests, listed below:"
  for t in $skipped; do echo "[  SKIPPED ] $t"; done
fi
if [ $fl -gt 0 ]; then
  echo "[  FAILED  ] $fl tests, listed below:"
  for t in $failed; do echo "[  FAILED  ] $t, where GetParam() = gelu bf16"; done
  echo
  echo " $fl FAILED TESTS"
  exit 1
fi
exit 0
