#!/usr/bin/env bash
# Dry run of scripts/gpu_window.sh on a fake GPU node. A bundle of this build (scripts/bundle.sh, trainlaunch
# only, for speed) gets stand-ins for its GPU programs (tests/scripts/fake_node: test_gpu and test_collectives
# print GoogleTest output, bench_gpt2_gpu the benchmark's figure lines) and travels as one .tar.xz. The driver
# then runs inside a user + mount namespace where /usr/lib holds glibc, libstdc++, libgcc_s and the libraries of
# the node's own shell tools (bash, tar, xz, awk, coreutils) but none of the bundle's, with stand-ins for
# nvidia-smi, compute-sanitizer and PyTorch's python3 first on PATH; each step's stand-in passes, fails, crashes
# or hangs on demand. Checked:
#   run 1: smoke passes, conformance fails (a parameterised case, a FAIL cell in the table), models crash
#          (SIGSEGV), nccl hangs (in a child that ignores SIGTERM while its parent dies of it) and is cut by its
#          timeout, child too, while every later step still runs, bench passes (its figures reach the summary),
#          memcheck reports errors, bench_compile runs on what is left: each is reported so, with the failing
#          names; smoke runs with CUDA_LAUNCH_BLOCKING=1, memcheck with LOOM_CUDA_NO_CACHING=1; five logs
#          carry 2.7 MB of incompressible noise each, which must not push the archive over 4 MiB;
#   run 2: every step hangs, ignoring SIGTERM (smoke skips, as without a GPU): each is killed, the global
#          deadline holds, the steps it leaves no time for are not_run and say so, the run ends in time;
#   run 3: SIGTERM to the driver while a step hangs: the step is stopped, the summary still written;
#   run 4: three steps asked for; loom fails in bench: reported, torch.compile not tried; the sanitizer refuses
#          the device (as under gVisor): memcheck not_run, saying so;
#   all:   no process of the run is left behind; $OUT holds at most 4 files, each under 4 MiB, the logs archive opens and holds every step's log.
# Without user namespaces the same runs happen with Debian's libraries visible (printed).
# Usage: gpu_window_test.sh SOURCE_DIR BUILD_DIR      exit 77: skipped (no patchelf)
set -euo pipefail
src="$(cd "$1" && pwd)"
build="$(cd "$2" && pwd)"
tmp="$build/gpu_window_test_tmp"
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v patchelf >/dev/null || { echo "SKIPPED: patchelf is not installed (scripts/setup.sh installs it)"; exit 77; }
rm -rf "$tmp"
mkdir -p "$tmp"
start=$SECONDS

# ---- the bundle, with stand-ins for the GPU programs, as one .tar.xz
"$src/scripts/bundle.sh" "$build" "$tmp/loom-fake" --programs trainlaunch >"$tmp/bundle.log" 2>&1 ||
  { cat "$tmp/bundle.log"; fail "bundle.sh failed"; }
fake="$src/tests/scripts/fake_node"
cp "$fake/fake_gtest.sh" "$tmp/loom-fake/bin/test_gpu"
cp "$fake/fake_gtest.sh" "$tmp/loom-fake/bin/test_collectives"
cp "$fake/fake_bench.sh" "$tmp/loom-fake/bin/bench_gpt2_gpu"
(cd "$tmp" && tar -cf - loom-fake | xz -T0 -1 >loom-fake.tar.xz)
rm -rf "$tmp/loom-fake"
echo "bundle: $(stat -c %s "$tmp/loom-fake.tar.xz") bytes in $((SECONDS - start)) s"

# ---- the fake node: stand-ins first on PATH, /usr/lib without the bundle's libraries
mkdir -p "$tmp/node_bin"
cp "$fake/nvidia-smi" "$fake/compute-sanitizer" "$fake/python3" "$tmp/node_bin/"
stage="$tmp/usr_lib"
mkdir -p "$stage/x86_64-linux-gnu"
bundled="$(tar -tJf "$tmp/loom-fake.tar.xz" | sed -n 's|^loom-fake/lib/||p' | grep . || true)"
tools="bash sh tar xz awk sed grep find timeout stat date hostname mktemp du head tail cut tr nproc sleep base64 env
       dirname basename cat mkdir rm mv cp ls getconf kill od wc sort uname readlink"
{
  for n in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 \
           libresolv.so.2 libutil.so.1 libstdc++.so.6 libgcc_s.so.1 libnss_files.so.2 libnss_dns.so.2; do
    echo "/usr/lib/x86_64-linux-gnu/$n"
  done
  for t in $tools; do
    p="$(command -v "$t" 2>/dev/null || true)"
    [ -n "$p" ] && [ -f "$p" ] && ldd "$p" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
  done
} | sort -u | while read -r lib; do
  n="${lib##*/}"
  if printf '%s\n' "$bundled" | grep -qxF "$n"; then continue; fi  # the bundle must bring its own
  [ -e "$lib" ] && cp -L "$lib" "$stage/x86_64-linux-gnu/$n"
done
if [ -z "${LOOM_BUNDLE_TEST_FALLBACK:-}" ] && unshare -rm true 2>/dev/null && [ "$(readlink -f /lib)" = /usr/lib ] &&
   [ "$(readlink -f /lib64)" = /usr/lib64 ]; then
  mode=namespace
  hidden() { unshare -rm sh -c 'mount --bind "$0" /usr/lib && exec "$@"' "$stage" "$@"; }
  # The namespace hides Debian's libraries: the build's own trainlaunch cannot load there.
  orig="$(find "$build" -type f -name trainlaunch -perm -u+x -not -path '*/CMakeFiles/*' -not -path "$tmp/*" | head -n1)"
  o="$(hidden /lib64/ld-linux-x86-64.so.2 --list "$orig" 2>&1 || true)"
  echo "$o" | grep -Eq 'not found|cannot open shared object' || { echo "$o"; fail "the namespace does not hide /usr/lib"; }
  echo "ok: in the namespace the build's own trainlaunch cannot load: $(echo "$o" | grep -E 'not found|cannot open' | head -n1)"
else
  mode=fallback
  hidden() { "$@"; }
  echo "NOTE: no user+mount namespace (or no merged /usr) here: the driver runs with Debian's libraries visible."
fi
echo "mode: $mode"

# window NAME VAR=VALUE...: runs the driver on the fake node; its exit status in rc, $OUT in $tmp/NAME/out.
window() {
  local name="$1"
  shift
  mkdir -p "$tmp/$name/out" "$tmp/$name/scratch"
  local s=$SECONDS
  set +e
  hidden env -u LD_LIBRARY_PATH -u COMPUTE_SANITIZER -u CUDA_HOME PATH="$tmp/node_bin:/usr/bin:/bin" \
    TMPDIR="$tmp/$name/scratch" LOOM_PYTHON="$tmp/node_bin/python3" OUT="$tmp/$name/out" "$@" \
    bash "$src/scripts/gpu_window.sh" "$tmp/loom-fake.tar.xz" >"$tmp/$name.log" 2>&1
  rc=$?
  set -e
  wall=$((SECONDS - s))
  summary="$tmp/$name/out/gpu_window_summary.txt"
  # Nothing of the run may outlive it (a hung step's children included).
  local left
  left="$(pgrep -f "$tmp/$name/scratch" || true)"
  if [ -n "$left" ]; then
    ps -o pid,ppid,pgid,cmd -p "$(echo $left | tr ' ' ',')" || true
    kill -KILL $left 2>/dev/null || true
    fail "$name: processes of the run outlived it"
  fi
  [ -f "$summary" ] || { cat "$tmp/$name.log"; fail "$name: no gpu_window_summary.txt in \$OUT"; }
  echo "---- $name: exit $rc in $wall s"
  cat "$summary"
}
# status STEP: the step's status from the machine-readable line.
status() { sed -n 's/^STATUS //p' "$summary" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
line() { grep -E "^$1 " "$summary" | head -n1; }
expect() {  # STEP STATUS [TEXT...]: the step has that status and its line holds each TEXT
  local step="$1" want="$2" l
  shift 2
  [ "$(status "$step")" = "$want" ] || { cat "$tmp/$name.log"; fail "$name: $step is '$(status "$step")', want '$want'"; }
  l="$(line "$step")"
  for t in "$@"; do
    [[ "$l" == *"$t"* ]] || fail "$name: the $step line does not say '$t': $l"
  done
}
check_out() {  # at most 4 files in $OUT, each under 4 MiB; the archive holds every step's log
  local n big
  n="$(find "$tmp/$name/out" -type f | wc -l)"
  [ "$n" -le 4 ] || fail "$name: $n files in \$OUT (at most 4)"
  big="$(find "$tmp/$name/out" -type f -size +4095k)"
  [ -z "$big" ] || fail "$name: over 4 MiB in \$OUT: $(ls -l $big)"
  [ -z "$(find "$tmp/$name/out" -mindepth 1 -type d)" ] || fail "$name: folders in \$OUT"
  tar -tJf "$tmp/$name/out/gpu_window_logs.tar.xz" >"$tmp/$name.list" || fail "$name: the logs archive does not open"
  for f in "$@"; do grep -qx "logs/$f" "$tmp/$name.list" || fail "$name: no logs/$f in the archive: $(tr '\n' ' ' <"$tmp/$name.list")"; done
  [ -z "$(ls -A "$tmp/$name/scratch")" ] || fail "$name: the scratch folder was not removed: $(ls "$tmp/$name/scratch")"
  echo "ok: $name: $n files in \$OUT: $(cd "$tmp/$name/out" && find . -type f -printf '%P %s bytes, ' )"
}

# ---- run 1: every outcome once; nccl hangs and is cut; the steps after it still run.
name=run1
window run1 GPU_WINDOW_DEADLINE=300 GPU_WINDOW_T_SMOKE=20 GPU_WINDOW_T_CONFORMANCE=20 GPU_WINDOW_T_MODELS=20 \
  GPU_WINDOW_T_NCCL=4 GPU_WINDOW_T_BENCH=20 GPU_WINDOW_T_MEMCHECK=20 GPU_WINDOW_T_COMPILE=20 GPU_WINDOW_KILL_AFTER=2 \
  GPU_WINDOW_COMPILE_MIN=10 FAKE_SMOKE=pass FAKE_CONFORMANCE=fail FAKE_MODELS=crash FAKE_NCCL=orphan \
  FAKE_NOISE_SMOKE=2000000 FAKE_NOISE_CONFORMANCE=2000000 FAKE_NOISE_MODELS=2000000 FAKE_NOISE_NCCL=2000000 \
  FAKE_NOISE_MEMCHECK=2000000 FAKE_BENCH=pass FAKE_MEMCHECK=pass FAKE_SANITIZER=errors FAKE_BENCH_COMPILE=pass
[ $rc -eq 1 ] || fail "run1: exit $rc with failures (want 1)"
expect unpack passed
expect node passed "NVIDIA H200 (fake)" "torch 2.5.1+cu124 (fake)"
expect smoke passed "15 passed, 0 skipped, 0 failed"
expect conformance failed "6 passed, 0 skipped, 3 failed: Ops/Case/1 Grads/Case/1 CudaConformance.Case/1" "table: 2 ops, 1 with FAIL: gelu tanh(bf16,f16)"
expect models crashed "SIGSEGV in CudaModels.Case/1" "1 passed"
expect nccl timed_out "cut after 4s in Nccl.Case/0"
expect bench passed "loom 120000.0 tokens/s, MFU 0.3200" "torch eager 150000.0 tokens/s" "ratio loom/eager 0.800"
expect memcheck failed "2 memcheck errors" "Invalid __global__ read of size 4 bytes" "at add_kernel"
expect bench_compile passed "torch compile 200000.0 tokens/s" "ratio loom/compile 0.600"
grep -qx 'BENCH loom_tokens_per_s=120000.0 loom_mfu=0.3200 torch_eager_tokens_per_s=150000.0 ratio_eager=0.800 torch_compile_tokens_per_s=200000.0 ratio_compile=0.600' "$summary" ||
  fail "run1: the BENCH line: $(grep '^BENCH' "$summary")"
nccl_secs="$(line nccl | awk '{ print $3 }' | sed 's|s/.*||')"
[ "$nccl_secs" -ge 4 ] && [ "$nccl_secs" -le 30 ] || fail "run1: the hung nccl step took ${nccl_secs}s (limit 4 + 2)"
check_out node.txt smoke.log conformance.log models.log nccl.log bench.log memcheck.log bench_compile.log summary.txt
tar -C "$tmp/run1" -xJf "$tmp/run1/out/gpu_window_logs.tar.xz"
grep -qx 'fake: CUDA_LAUNCH_BLOCKING=1 LOOM_CUDA_NO_CACHING=unset' "$tmp/run1/logs/smoke.log" ||
  fail "run1: smoke did not run with CUDA_LAUNCH_BLOCKING=1 alone: $(grep '^fake:' "$tmp/run1/logs/smoke.log")"
grep -qx 'fake: CUDA_LAUNCH_BLOCKING=unset LOOM_CUDA_NO_CACHING=1' "$tmp/run1/logs/memcheck.log" ||
  fail "run1: memcheck did not run with LOOM_CUDA_NO_CACHING=1 alone: $(grep '^fake:' "$tmp/run1/logs/memcheck.log")"
grep -qx 'fake: CUDA_LAUNCH_BLOCKING=unset LOOM_CUDA_NO_CACHING=unset' "$tmp/run1/logs/conformance.log" ||
  fail "run1: conformance ran with a debugging switch: $(grep '^fake:' "$tmp/run1/logs/conformance.log")"
grep -q 'bytes cut here' "$tmp/run1/logs/conformance.log" || fail "run1: the 2.7 MB conformance log was not cut"
grep -q '^\[conformance summary\]' "$tmp/run1/logs/conformance.log" ||
  fail "run1: the cut conformance log lost its summary table"
echo "ok: run1: passed, failed (parameterised, table), crashed, timed out (later steps ran), bench figures, memcheck errors"

# ---- run 2: everything hangs; the deadline holds and says what it skipped.
name=run2
window run2 GPU_WINDOW_DEADLINE=24 GPU_WINDOW_RESERVE=2 GPU_WINDOW_KILL_AFTER=1 GPU_WINDOW_T_SMOKE=4 \
  GPU_WINDOW_T_CONFORMANCE=4 GPU_WINDOW_T_MODELS=4 GPU_WINDOW_T_NCCL=4 GPU_WINDOW_T_BENCH=4 GPU_WINDOW_T_MEMCHECK=4 \
  FAKE_SMOKE=skip FAKE_CONFORMANCE=hang FAKE_MODELS=hang FAKE_NCCL=hang FAKE_BENCH=hang FAKE_MEMCHECK=hang
[ $rc -eq 1 ] || fail "run2: exit $rc (want 1: steps timed out)"
[ "$wall" -le 34 ] || fail "run2: took $wall s with a 24 s deadline"
expect smoke not_run "every case skipped (15): no CUDA device"
expect conformance timed_out "cut after 4s"
expect models timed_out
expect bench_compile not_run
# Five steps of 4 + 1 s cannot all fit in 24 s less 3 s kept back: memcheck, after them, never gets to start.
expect memcheck not_run "no time left before the 24s deadline"
n_late="$(grep -c 'no time left before the 24s deadline' "$summary" || true)"
grep -q '^BENCH loom_tokens_per_s=n/a ' "$summary" || fail "run2: a bench figure without a bench run"
check_out node.txt conformance.log summary.txt
echo "ok: run2: every step hung; the run ended in $wall s (deadline 24 s), $n_late steps skipped for time"

# ---- run 3: SIGTERM to the driver while a step hangs: the step is stopped and the files are still written.
name=run3
mkdir -p "$tmp/run3/out" "$tmp/run3/scratch"
hidden env -u LD_LIBRARY_PATH -u COMPUTE_SANITIZER -u CUDA_HOME PATH="$tmp/node_bin:/usr/bin:/bin" \
  TMPDIR="$tmp/run3/scratch" LOOM_PYTHON="$tmp/node_bin/python3" OUT="$tmp/run3/out" GPU_WINDOW_KILL_AFTER=1 \
  FAKE_SMOKE=pass FAKE_CONFORMANCE=hang bash "$src/scripts/gpu_window.sh" "$tmp/loom-fake.tar.xz" >"$tmp/run3.log" 2>&1 &
bg=$!
for _ in $(seq 300); do grep -q '^\[gpu_window.*conformance: test_gpu' "$tmp/run3.log" && break; sleep 0.2; done
driver="$(pgrep -f "scripts/gpu_window.sh $tmp/loom-fake.tar.xz" | head -n1)"
[ -n "$driver" ] || { cat "$tmp/run3.log"; fail "run3: the driver is not running"; }
kill -TERM "$driver"
set +e
wait "$bg"
rc=$?
set -e
summary="$tmp/run3/out/gpu_window_summary.txt"
[ -f "$summary" ] || { cat "$tmp/run3.log"; fail "run3: no summary after SIGTERM"; }
cat "$summary"
[ $rc -eq 130 ] || fail "run3: exit $rc after SIGTERM (want 130)"
grep -q '(INTERRUPTED: SIGTERM)' "$summary" || fail "run3: the summary does not say it was interrupted"
expect smoke passed
expect conformance timed_out "cut by SIGTERM"
expect bench not_run "not reached (SIGTERM)"
left="$(pgrep -f "$tmp/run3/scratch" || true)"
[ -z "$left" ] || { kill -KILL $left 2>/dev/null || true; fail "run3: processes of the run outlived it"; }
check_out node.txt smoke.log conformance.log summary.txt
echo "ok: run3: SIGTERM stopped the hung step and the files were written"

# ---- run 4: two steps asked for; loom fails in the eager benchmark, so torch.compile is not tried.
name=run4
window run4 GPU_WINDOW_STEPS="bench memcheck bench_compile" GPU_WINDOW_COMPILE_MIN=1 FAKE_BENCH=fail \
  FAKE_BENCH_COMPILE=pass FAKE_MEMCHECK=pass FAKE_SANITIZER=unsupported
[ $rc -eq 1 ] || fail "run4: exit $rc with a failed benchmark (want 1)"
expect bench failed "loom failed: CUDA error: an illegal memory access was encountered (fake)" "torch eager 150000.0 tokens/s"
expect bench_compile not_run "the eager run did not pass (failed)"
expect smoke not_run "not asked for (GPU_WINDOW_STEPS)"
expect memcheck not_run "compute-sanitizer refused the device: Error: Device not supported (fake)"
grep -q '^BENCH loom_tokens_per_s=n/a loom_mfu=n/a torch_eager_tokens_per_s=150000.0 ratio_eager=n/a ' "$summary" ||
  fail "run4: the BENCH line: $(grep '^BENCH' "$summary")"
check_out bench.log memcheck.log summary.txt
echo "ok: run4: GPU_WINDOW_STEPS; a failed loom benchmark is reported with PyTorch's figure, torch.compile skipped;" \
  "a sanitizer that refuses the device is not a verdict"

cd /
rm -rf "$tmp"
echo "gpu window dry run passed ($mode) in $((SECONDS - start)) s"
