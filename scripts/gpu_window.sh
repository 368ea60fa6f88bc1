#!/usr/bin/env bash
# One GPU window, one command: unpacks a loom bundle (scripts/bundle.sh --tar) on a bare GPU node and, inside a
# fixed wall-time budget, answers whether the CUDA backend works and how fast it is. Every step runs under its own
# timeout (the whole process group is cut, sanitizer and PyTorch children included) and none can stop the rest:
#   unpack         the bundle .tar.xz into a scratch folder (or a bundle folder, used as it is)
#   node           nvidia-smi, `run.sh --check test_gpu` (the bundle's libraries resolve), which PyTorch
#   smoke          test_gpu: the runtime and the fused/attention/AdamW kernels, CUDA_LAUNCH_BLOCKING=1
#   conformance    test_gpu: every op and gradient against the CPU, in one process (its per-op summary table)
#   models         test_gpu: GPT-2/Llama on CUDA vs the CPU, DDP/FSDP over NCCL at world size 1, checkpoints
#   nccl           test_collectives: NCCL at world size 1
#   bench          bench_gpt2_gpu: GPT-2 124M (B=16, T=1024, bf16 autocast) next to PyTorch eager
#   memcheck       compute-sanitizer --tool memcheck over a chosen set of test_gpu (LOOM_CUDA_NO_CACHING=1)
#   bench_compile  bench_gpt2_gpu again next to torch.compile, only with the time that is left and when
#                  bench did not fail
# A step that cannot start before the deadline is reported as not run, with why.
#
# Usage: scripts/gpu_window.sh BUNDLE.tar.xz|BUNDLE_DIR [OUT_DIR]
#   OUT_DIR   default $OUT (the device tool's folder), else ./gpu_window_out. It receives two files:
#             gpu_window_summary.txt (one line per step, the benchmark's figures, a STATUS line) and
#             gpu_window_logs.tar.xz (every log, each cut to at most GPU_WINDOW_LOG_CAP bytes; under 4 MiB).
# Environment (seconds unless said):
#   GPU_WINDOW_DEADLINE     the whole run, start to last file written (default 540)
#   GPU_WINDOW_RESERVE      kept back at the end to write the files (default 10)
#   GPU_WINDOW_KILL_AFTER   a step that ignores SIGTERM gets SIGKILL this much later (default 3)
#   GPU_WINDOW_T_UNPACK 30, _T_NODE 50, _T_SMOKE 60, _T_CONFORMANCE 95, _T_MODELS 70, _T_NCCL 30,
#   _T_BENCH 115, _T_MEMCHECK 55 (each + KILL_AFTER, + RESERVE: 539 <= 540), _T_COMPILE 300 (at most; only
#   what the deadline leaves, and only when that is >= GPU_WINDOW_COMPILE_MIN, default 90)
#   GPU_WINDOW_STEPS        the steps to run (default all, in the order above; unpack always runs)
#   GPU_WINDOW_MEMCHECK_FILTER  gtest filter for memcheck (default: the smoke set)
#   GPU_WINDOW_BENCH_ARGS   extra bench_gpt2_gpu arguments (e.g. "--precision bf16")
#   LOOM_PYTHON             the python whose PyTorch is the peer (default python3)
#   COMPUTE_SANITIZER       the compute-sanitizer binary (default: PATH, $CUDA_HOME/bin, /usr/local/cuda*/bin,
#                           pip's nvidia/cuda_sanitizer_api)
#   GPU_WINDOW_KEEP=1       keep the scratch folder (its path is printed)
# Step status: passed | failed | crashed (a signal, or a case left without a result) | timed_out | not_run.
# Exit status: 0 when every step passed (bench_compile may be not_run), 1 when one failed, crashed or timed
# out, 3 when one did not run, 2 on usage errors.
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
t0=$SECONDS

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
[ $# -ge 1 ] && [ $# -le 2 ] && [ "$1" != "-h" ] && [ "$1" != "--help" ] || { usage; exit 2; }
src="$1"
out="${2:-${OUT:-$PWD/gpu_window_out}}"
[ -e "$src" ] || { echo "gpu_window.sh: no bundle '$src' (give the .tar.xz from scripts/bundle.sh --tar)" >&2; exit 2; }
src="$(cd "$(dirname "$src")" && pwd)/$(basename "$src")"
num() {  # num NAME DEFAULT: the variable's value, a whole number of seconds
  local v="${!1:-$2}"
  case "$v" in ''|*[!0-9]*) echo "gpu_window.sh: $1='$v' is not a whole number of seconds" >&2; exit 2 ;; esac
  echo "$v"
}
deadline="$(num GPU_WINDOW_DEADLINE 540)" || exit 2
reserve="$(num GPU_WINDOW_RESERVE 10)" || exit 2
kill_after="$(num GPU_WINDOW_KILL_AFTER 3)" || exit 2
compile_min="$(num GPU_WINDOW_COMPILE_MIN 90)" || exit 2
[ "$kill_after" -ge 1 ] || kill_after=1  # timeout -k 0 would never send SIGKILL
declare -A tdef=([unpack]=30 [node]=50 [smoke]=60 [conformance]=95 [models]=70 [nccl]=30 [bench]=115 [memcheck]=55
                 [bench_compile]=300)
declare -A tlim=()
for s in "${!tdef[@]}"; do
  v="GPU_WINDOW_T_$(echo "$s" | tr a-z A-Z)"
  [ "$s" = bench_compile ] && v=GPU_WINDOW_T_COMPILE
  tlim[$s]="$(num "$v" "${tdef[$s]}")" || exit 2
done
all_steps="node smoke conformance models nccl bench memcheck bench_compile"
steps="${GPU_WINDOW_STEPS:-$all_steps}"
for s in $steps; do
  case " unpack $all_steps " in *" $s "*) ;; *) echo "gpu_window.sh: unknown step '$s' (steps: $all_steps)" >&2; exit 2 ;; esac
done
smoke_filter='CudaRuntime.*:CudaFusedOps.*:CudaNnFused.*:CudaAttention.*:CudaAdamW.*'
memcheck_filter="${GPU_WINDOW_MEMCHECK_FILTER:-$smoke_filter}"
mkdir -p "$out" || { echo "gpu_window.sh: cannot create $out" >&2; exit 2; }
out="$(cd "$out" && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/gpu_window.XXXXXX")" || { echo "gpu_window.sh: no scratch folder" >&2; exit 2; }
logs="$work/logs"
mkdir -p "$logs"
# The conformance tests' CPU self-check of their harness must never stand in for the GPU here.
unset LOOM_CONFORMANCE_DEVICE LOOM_CONFORMANCE_PERTURB
gtest_awk="$here/bundle/gtest_results.awk"

host() { hostname 2>/dev/null || cat /proc/sys/kernel/hostname 2>/dev/null || echo unknown; }
say() { printf '[gpu_window +%3ds] %s\n' "$((SECONDS - t0))" "$*"; }
steps_file="$work/steps.txt"
: >"$steps_file"
declare -A st=()
worst=0
# record STEP STATUS SECS LIMIT DETAIL
cur_step=""
record() {
  cur_step=""
  printf '%-13s %-9s %4ss/%-4s %s\n' "$1" "$2" "$3" "$4" "$5" >>"$steps_file"
  st[$1]="$2"
  say "$1: $2 ($3 s of $4) $5"
  case "$2" in
    passed) ;;
    not_run) [ "$1" = bench_compile ] || [ $worst -ge 1 ] || worst=3 ;;
    *) worst=1 ;;
  esac
}
wanted() { case " $steps " in *" $1 "*) return 0 ;; esac; return 1; }
# budget STEP: sets limit to the step's timeout, cut to what the deadline leaves; records not_run and fails
# when less than 5 s would be left.
budget() {
  local left=$((deadline - (SECONDS - t0) - reserve - kill_after))
  limit="${tlim[$1]}"
  if [ $left -lt 5 ]; then
    record "$1" not_run 0 "$limit" "no time left before the ${deadline}s deadline ($((SECONDS - t0)) s used)"
    return 1
  fi
  [ $left -ge "$limit" ] || limit=$left
  cur_step="$1" cur_start=$SECONDS
  return 0
}
# run_limited LOG LIMIT CMD...: CMD under timeout (its process group gets SIGTERM, then SIGKILL; anything of
# it left when it ends gets SIGKILL too), no stdin,
# no file over 256 MiB (a runaway log ends with SIGXFSZ instead of filling the disk); sets rc, secs and cut
# (1 when the timeout ended it).
run_limited() {
  local log="$1" lim="$2" s=$SECONDS
  shift 2
  [ "$lim" -ge 1 ] || lim=1  # timeout 0 would mean no limit
  # In the background and waited for, so that a SIGTERM/SIGINT to this script is handled at once (the trap
  # below stops the step and still writes the files).
  (ulimit -f 262144 2>/dev/null; exec timeout -k "$kill_after" "$lim" "$@") </dev/null >"$log" 2>&1 &
  step_pid=$!
  wait "$step_pid"
  rc=$?
  # Whatever of the step is still alive (a child that ignored SIGTERM after its parent died, which ends
  # timeout's watch early; a daemon it started): timeout made the step its own process group.
  kill -KILL -- "-$step_pid" 2>/dev/null
  step_pid=""
  secs=$((SECONDS - s))
  cut=0
  if [ $rc -eq 124 ] || { [ $rc -eq 137 ] && [ $secs -ge "$lim" ]; }; then cut=1; fi
}
signame() {
  local n
  n="$(kill -l "$(($1 - 128))" 2>/dev/null)"
  n="SIG${n:-$(($1 - 128))}"
  [ "$n" != SIGXFSZ ] || n="$n (a file, e.g. its log, went over 256 MiB)"
  echo "$n"
}
# names LIST: the first five words, then how many more.
names() {
  # shellcheck disable=SC2086
  set -- $1
  local r="" i=0
  for w in "$@"; do i=$((i + 1)); [ $i -le 5 ] && r="$r${r:+ }$w"; done
  [ $# -le 5 ] || r="$r (+$(($# - 5)) more)"
  echo "$r"
}
# gtest_counts LOG: sets ok sk fl nr fnames nrnames from gtest's result lines.
gtest_counts() {
  { read -r ok sk fl nr; read -r fnames; read -r nrnames; } < <(awk -f "$gtest_awk" "$1")
}
first_skip_reason() { awk '/: Skipped$/ { if ((getline l) > 0) { print l; exit } }' "$1"; }
# judge_gtest STEP LOG FILTER [EXTRA]: one status from rc/cut and the cases' result lines.
judge_gtest() {
  local step="$1" log="$2" filter="$3" extra="${4:-}" counts d
  gtest_counts "$log"
  counts="$ok passed, $sk skipped, $fl failed"
  [ "$fl" -eq 0 ] || counts="$counts: $(names "$fnames")"
  if [ $cut -eq 1 ]; then
    record "$step" timed_out "$secs" "$limit" "cut after ${limit}s${nrnames:+ in $(names "$nrnames")}; before: $counts$extra"
  elif [ $rc -eq 127 ] && grep -q '^run.sh: ' "$log"; then
    record "$step" failed "$secs" "$limit" "$(grep -m1 '^run.sh: ' "$log")"
  elif [ $rc -gt 128 ] || [ "$nr" -gt 0 ]; then
    d="exit $rc"
    [ $rc -le 128 ] || d="$(signame $rc)"
    record "$step" crashed "$secs" "$limit" "$d${nrnames:+ in $(names "$nrnames")}; $counts$extra"
  elif [ "$fl" -gt 0 ]; then
    record "$step" failed "$secs" "$limit" "$counts$extra"
  elif [ $((ok + sk)) -eq 0 ]; then
    if grep -q '^\[==========\] Running 0 tests' "$log"; then d="no case matches $filter"
    else d="exit $rc before any case: $({ grep -m1 '^run.sh: ' "$log" || grep -v '^ *$' "$log" | tail -n1; } | cut -c1-200)"; fi
    record "$step" failed "$secs" "$limit" "$d"
  elif [ "$ok" -eq 0 ]; then
    record "$step" not_run "$secs" "$limit" "every case skipped ($sk): $(first_skip_reason "$log" | cut -c1-200)"
  elif [ $rc -ne 0 ]; then
    record "$step" failed "$secs" "$limit" "exit $rc after its cases; $counts$extra"
  else
    record "$step" passed "$secs" "$limit" "$counts$extra"
  fi
}
# step_gtest STEP PROGRAM FILTER [VAR=VALUE ...]
step_gtest() {
  local step="$1" prog="$2" filter="$3" extra=""
  shift 3
  if [ -z "$bundle" ]; then record "$step" not_run 0 "${tlim[$step]}" "no bundle (see unpack)"; return; fi
  budget "$step" || return
  say "$step: $prog --gtest_filter=$filter $* (limit ${limit}s)"
  run_limited "$logs/$step.log" "$limit" env LOOM_GPU_WINDOW_STEP="$step" "$@" "$bundle/run.sh" "$prog" \
    --gtest_filter="$filter"
  if [ "$step" = conformance ]; then
    # The per-op table the suite prints at its end: which ops and dtypes have a FAIL cell.
    extra="$(awk '
      /^\[conformance summary\]/ { on = 1; hdr = 0; next }
      on && !hdr { for (i = 2; i <= NF; i++) col[i - 1] = $i; ncol = NF - 1; hdr = 1; next }
      on && hdr && (NF == 0 || /^\[/) { on = 0; next }
      on && NF > ncol {
        rows++; bad = ""
        for (i = NF - ncol + 1; i <= NF; i++) if ($i == "FAIL") bad = bad (bad == "" ? "" : ",") col[i - NF + ncol]
        if (bad != "") { op = $1; for (i = 2; i <= NF - ncol; i++) op = op " " $i; fails = fails (fails == "" ? "" : " ") op "(" bad ")"; nf++ }
      }
      END { if (rows) printf "; table: %d ops, %d with FAIL%s", rows, nf, (nf ? ": " fails : "") }' "$logs/$step.log")"
  fi
  judge_gtest "$step" "$logs/$step.log" "$filter" "$extra"
}

# Benchmark figures, for the summary's BENCH line.
declare -A fig=([loom_tokens_per_s]=n/a [loom_mfu]=n/a [torch_eager_tokens_per_s]=n/a [ratio_eager]=n/a
                [torch_compile_tokens_per_s]=n/a [ratio_compile]=n/a)
# step_bench STEP MODE (eager or compile)
step_bench() {
  local step="$1" mode="$2" log="$logs/$1.log" tps mfu loss ttps tmfu ratio why d
  if [ -z "$bundle" ]; then record "$step" not_run 0 "${tlim[$step]}" "no bundle (see unpack)"; return; fi
  if [ "$step" = bench_compile ]; then
    case "${st[bench]:-}" in
      failed|crashed|timed_out)
        record "$step" not_run 0 "${tlim[$step]}" "the eager run did not pass (${st[bench]}): loom would fail again"
        return ;;
    esac
    local left=$((deadline - (SECONDS - t0) - reserve - kill_after))
    if [ $left -lt "$compile_min" ]; then
      [ $left -ge 0 ] || left=0
      record "$step" not_run 0 "${tlim[$step]}" "only ${left}s left before the deadline (it runs with >= ${compile_min}s)"
      return
    fi
  fi
  budget "$step" || return
  local args=(--model gpt2 --device cuda:0 --precision autocast --torch "$mode")
  [ -z "$py" ] || args+=(--python "$py")
  # shellcheck disable=SC2206
  args+=(${GPU_WINDOW_BENCH_ARGS:-})
  say "$step: bench_gpt2_gpu ${args[*]} (limit ${limit}s)"
  run_limited "$log" "$limit" env LOOM_GPU_WINDOW_STEP="$step" "$bundle/run.sh" bench_gpt2_gpu "${args[@]}"
  tps="$(sed -n 's/^loom tokens_per_s=\([0-9.]*\).*/\1/p' "$log" | tail -n1)"
  mfu="$(sed -n 's/^loom tokens_per_s=.* mfu=\([^ ]*\).*/\1/p' "$log" | tail -n1)"
  loss="$(sed -n 's/^loom loss0=\([^ ]*\) loss_last=\([^ ]*\).*/\1 -> \2/p' "$log" | tail -n1)"
  ttps="$(sed -n "s/^torch_$mode tokens_per_s=\([0-9.]*\).*/\1/p" "$log" | tail -n1)"
  tmfu="$(sed -n "s/^torch_$mode tokens_per_s=.* mfu=\([^ ]*\).*/\1/p" "$log" | tail -n1)"
  ratio="$(sed -n "s|^ratio loom/torch_$mode tokens_per_s=\([0-9.]*\).*|\1|p" "$log" | tail -n1)"
  why="$(grep -m1 -E "^(torch peer skipped|torch peer exited|torch_$mode (failed|skipped)|torch: )" "$log" | cut -c1-200)"
  d="loom ${tps:-?} tokens/s, MFU ${mfu:-?}${loss:+, loss $loss}"
  if [ -n "$ttps" ]; then d="$d; torch $mode ${ttps} tokens/s, MFU ${tmfu:-?}; ratio loom/$mode ${ratio:-?}"
  else d="$d; no torch $mode figure${why:+: $why}"; fi
  grep -q '^params DIFFER' "$log" && d="$d; $(grep -m1 '^params DIFFER' "$log")"
  # loom's figures from the eager run; the compile run's only where the eager run gave none.
  if [ -n "$tps" ] && { [ "$step" = bench ] || [ "${fig[loom_tokens_per_s]}" = n/a ]; }; then
    fig[loom_tokens_per_s]="$tps"
    fig[loom_mfu]="${mfu:-n/a}"
  fi
  if [ -n "$ttps" ]; then fig[torch_${mode}_tokens_per_s]="$ttps"; fig[ratio_$mode]="${ratio:-n/a}"; fi
  if [ $cut -eq 1 ]; then
    record "$step" timed_out "$secs" "$limit" "cut after ${limit}s; last line: $(grep -v '^ *$' "$log" | tail -n1 | cut -c1-160)"
  elif grep -q '^loom failed' "$log"; then
    record "$step" failed "$secs" "$limit" "$(grep -m1 '^loom failed' "$log" | cut -c1-240)${ttps:+; torch $mode $ttps tokens/s}"
  elif [ $rc -eq 127 ] && grep -q '^run.sh: ' "$log"; then
    record "$step" failed "$secs" "$limit" "$(grep -m1 '^run.sh: ' "$log")"
  elif [ $rc -gt 128 ]; then
    record "$step" crashed "$secs" "$limit" "$(signame $rc); last line: $(grep -v '^ *$' "$log" | tail -n1 | cut -c1-160)"
  elif [ $rc -ne 0 ] || [ -z "$tps" ]; then
    record "$step" failed "$secs" "$limit" "exit $rc; ${tps:+$d}${tps:-no loom figure; last line: $(grep -v '^ *$' "$log" | tail -n1 | cut -c1-160)}"
  else
    record "$step" passed "$secs" "$limit" "$d"
  fi
}

find_sanitizer() {
  local c d p
  if [ -n "${COMPUTE_SANITIZER:-}" ]; then echo "$COMPUTE_SANITIZER"; return; fi
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/nonexistent}/bin/compute-sanitizer" \
           /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return; fi
  done
  for p in "${LOOM_PYTHON:-python3}" python3; do
    d="$(timeout 20 "$p" -c 'import nvidia.cuda_sanitizer_api as m, os; print(os.path.dirname(m.__file__))' 2>/dev/null)"
    if [ -n "$d" ] && [ -x "$d/compute-sanitizer/compute-sanitizer" ]; then echo "$d/compute-sanitizer/compute-sanitizer"; return; fi
  done
}
step_memcheck() {
  local step=memcheck log="$logs/memcheck.log" san errs first at d
  if [ -z "$bundle" ]; then record "$step" not_run 0 "${tlim[$step]}" "no bundle (see unpack)"; return; fi
  san="$(find_sanitizer)"
  if [ -z "$san" ]; then
    record "$step" not_run 0 "${tlim[$step]}" "no compute-sanitizer (set COMPUTE_SANITIZER, or pip install nvidia-cuda-sanitizer-api)"
    return
  fi
  budget "$step" || return
  say "$step: $san --tool memcheck, LOOM_CUDA_NO_CACHING=1, test_gpu --gtest_filter=$memcheck_filter (limit ${limit}s)"
  run_limited "$log" "$limit" env LOOM_GPU_WINDOW_STEP="$step" LOOM_CUDA_NO_CACHING=1 "$san" --tool memcheck \
    --target-processes all --error-exitcode 97 --print-limit 100 "$bundle/run.sh" test_gpu --gtest_filter="$memcheck_filter"
  errs="$(sed -n 's/^========= ERROR SUMMARY: \([0-9]*\) error.*/\1/p' "$log" | tail -n1)"
  # The first error the sanitizer reports ("Invalid __global__ read of size 4 bytes") and the kernel it names.
  first="$(awk '/^========= [A-Z]/ && !/ERROR SUMMARY|COMPUTE-SANITIZER/ { sub(/^========= /, ""); print substr($0, 1, 120); exit }' "$log")"
  at="$(awk '/^========= [A-Z]/ && !/ERROR SUMMARY|COMPUTE-SANITIZER/ { f = 1; next }
             f && /^=========  +at / { sub(/^=========  +at /, ""); sub(/\(.*/, ""); print substr($0, 1, 80); exit }' "$log")"
  if grep -q -i 'device not supported' "$log"; then
    # The sanitizer cannot attach to this GPU (seen under gVisor): no verdict on loom either way.
    record "$step" not_run "$secs" "$limit" "compute-sanitizer refused the device: $(grep -m1 -i 'device not supported' "$log" | sed 's/^=* *//' | cut -c1-120)"
  elif [ $rc -eq 97 ] || { [ -n "$errs" ] && [ "$errs" -gt 0 ]; }; then
    gtest_counts "$log"
    d="${errs:-?} memcheck errors${first:+; first: $first}${at:+ at $at}; tests: $ok passed, $sk skipped, $fl failed"
    if [ $cut -eq 1 ]; then record "$step" timed_out "$secs" "$limit" "cut after ${limit}s; $d"
    else record "$step" failed "$secs" "$limit" "$d"; fi
  elif [ $cut -eq 0 ] && [ $rc -eq 0 ] && [ -z "$errs" ]; then
    record "$step" failed "$secs" "$limit" "no ERROR SUMMARY line: the sanitizer did not finish"
  else
    judge_gtest "$step" "$log" "$memcheck_filter" "; memcheck: ${errs:-no} errors (LOOM_CUDA_NO_CACHING=1)"
  fi
}

done_files=0
finish() {
  [ $done_files -eq 0 ] || return 0
  done_files=1
  local summary="$out/gpu_window_summary.txt" archive="$out/gpu_window_logs.tar.xz" cap size f
  for s in $all_steps; do
    [ -z "${st[$s]:-}" ] || continue
    if wanted "$s"; then record "$s" not_run 0 "${tlim[$s]}" "not reached (${interrupted:-stopped})"
    else record "$s" not_run 0 "${tlim[$s]}" "not asked for (GPU_WINDOW_STEPS)"; fi
  done
  local statuses=""
  for s in unpack $all_steps; do statuses="$statuses $s=${st[$s]:-not_run}"; done
  {
    echo "loom GPU window: $(date -u +%FT%TZ) on $(host), $((SECONDS - t0)) s of the ${deadline} s deadline${interrupted:+ (INTERRUPTED: $interrupted)}"
    echo "bundle: $(basename "$src")${built:+, built $built}"
    echo "gpu: ${gpu:-unknown}"
    echo "torch: ${torch_desc:-not probed}"
    echo
    printf '%-13s %-9s %s\n' step status "secs/limit  detail"
    cat "$steps_file"
    echo
    echo "bench (GPT-2 124M, B=16, T=1024, bf16 autocast): loom ${fig[loom_tokens_per_s]} tokens/s, MFU ${fig[loom_mfu]};" \
      "torch eager ${fig[torch_eager_tokens_per_s]} (loom/eager ${fig[ratio_eager]});" \
      "torch.compile ${fig[torch_compile_tokens_per_s]} (loom/compile ${fig[ratio_compile]})"
    echo "logs: gpu_window_logs.tar.xz (logs/<step>.log, node.txt, summary.txt)"
    printf 'BENCH'
    for k in loom_tokens_per_s loom_mfu torch_eager_tokens_per_s ratio_eager torch_compile_tokens_per_s ratio_compile; do
      printf ' %s=%s' "$k" "${fig[$k]}"
    done
    echo
    echo "STATUS$statuses"
  } >"$summary"
  cp "$summary" "$logs/summary.txt"
  # One archive under 4 MiB: each log cut to its head and tail, harder if it is still too big.
  for cap in "${GPU_WINDOW_LOG_CAP:-1048576}" 262144 65536 16384; do
    for f in "$logs"/*; do
      [ -f "$f" ] || continue
      size="$(stat -c %s "$f")"
      if [ "$size" -gt "$cap" ]; then
        { head -c $((cap / 4)) "$f"; printf '\n... [gpu_window.sh: %d bytes cut here] ...\n' $((size - cap)); tail -c $((cap * 3 / 4)) "$f"; } >"$f.cut"
        mv "$f.cut" "$f"
      fi
    done
    rm -f "$archive"
    if command -v xz >/dev/null; then tar -C "$work" -cJf "$archive" logs 2>/dev/null
    else tar -C "$work" -cf - logs | python3 -c 'import lzma, sys; sys.stdout.buffer.write(lzma.compress(sys.stdin.buffer.read()))' >"$archive"; fi
    [ -f "$archive" ] && [ "$(stat -c %s "$archive")" -lt 4000000 ] && break
  done
  say "wrote $summary and $archive ($(stat -c %s "$archive" 2>/dev/null || echo 0) bytes)"
  echo "==== $summary"
  cat "$summary"
  if [ -n "${GPU_WINDOW_KEEP:-}" ]; then say "kept $work"; else rm -rf "$work"; fi
}
interrupted=""
step_pid=""
on_signal() {
  interrupted="$1"
  trap '' INT TERM
  if [ -n "$step_pid" ]; then
    kill -TERM "$step_pid" 2>/dev/null  # timeout passes it on to the step's process group
    sleep "$kill_after"
    kill -KILL -- "-$step_pid" 2>/dev/null  # timeout made the step its own process group
    kill -KILL "$step_pid" 2>/dev/null
    wait "$step_pid" 2>/dev/null
  fi
  [ -z "$cur_step" ] || record "$cur_step" timed_out $((SECONDS - cur_start)) "${limit:-?}" "cut by $1 to gpu_window.sh"
  finish
  exit 130
}
trap 'on_signal SIGTERM' TERM
trap 'on_signal SIGINT' INT

# ---- unpack
bundle=""
built=""
if [ -d "$src" ]; then
  [ -x "$src/run.sh" ] && bundle="$src"
  if [ -n "$bundle" ]; then record unpack passed 0 0 "a bundle folder, used as it is: $src"
  else record unpack failed 0 0 "$src has no run.sh: not a bundle from scripts/bundle.sh"; fi
elif budget unpack; then
  mkdir -p "$work/bundle"
  say "unpack: $src ($(stat -c %s "$src") bytes) into $work/bundle (limit ${limit}s)"
  if command -v xz >/dev/null; then run_limited "$logs/unpack.log" "$limit" tar -xJf "$src" -C "$work/bundle"
  else run_limited "$logs/unpack.log" "$limit" "${LOOM_PYTHON:-python3}" -m tarfile -e "$src" "$work/bundle"; fi
  f="$(find "$work/bundle" -maxdepth 2 -name run.sh -type f | head -n1)"
  if [ $cut -eq 1 ]; then record unpack timed_out "$secs" "$limit" "cut after ${limit}s"
  elif [ $rc -ne 0 ] || [ -z "$f" ]; then
    record unpack failed "$secs" "$limit" "exit $rc${f:- (no run.sh in it)}: $(tail -n1 "$logs/unpack.log" | cut -c1-200)"
  else
    bundle="$(dirname "$f")"
    record unpack passed "$secs" "$limit" "$(du -sm "$bundle" | cut -f1) MiB, $(ls "$bundle/bin" | wc -l) programs"
  fi
fi
if [ -n "$bundle" ]; then
  built="$(sed -n 's/^built: *//p' "$bundle/MANIFEST" 2>/dev/null | head -n1)"
  [ -f "$bundle/gtest_results.awk" ] && [ ! -f "$gtest_awk" ] && gtest_awk="$bundle/gtest_results.awk"
fi

# ---- node: the GPU, the bundle's libraries, PyTorch
py=""
gpu=""
torch_desc=""
if wanted node && budget node; then
  s=$SECONDS
  nlog="$logs/node.txt"
  {
    echo "date: $(date -u +%FT%TZ)  host: $(host)  cpus: $(nproc 2>/dev/null)"
    [ -z "$bundle" ] || { echo "== MANIFEST (head)"; head -n 8 "$bundle/MANIFEST" 2>/dev/null; }
  } >"$nlog"
  node_fail=""
  # Four commands share the step's limit (each may take KILL_AFTER more): nvidia-smi twice 1/8, run.sh 1/4,
  # importing torch (slow on a cold disk) 1/2.
  nl=$((limit - 3 * kill_after))
  [ $nl -ge 4 ] || nl=4
  if command -v nvidia-smi >/dev/null; then
    run_limited "$work/smi.txt" "$((nl / 8))" nvidia-smi
    { echo "== nvidia-smi (exit $rc)"; cat "$work/smi.txt"; } >>"$nlog"
    run_limited "$work/smi.txt" "$((nl / 8))" nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
      --format=csv,noheader
    gpu="$(head -n1 "$work/smi.txt")"
    [ $rc -eq 0 ] && [ -n "$gpu" ] || { node_fail="nvidia-smi finds no GPU (exit $rc): $gpu"; gpu=""; }
  else
    node_fail="no nvidia-smi on this node"
  fi
  if [ -n "$bundle" ]; then
    run_limited "$work/check.txt" "$((nl / 4))" "$bundle/run.sh" --check test_gpu
    { echo "== run.sh --check test_gpu (exit $rc)"; cat "$work/check.txt"; } >>"$nlog"
    if [ $rc -ne 0 ]; then
      why="$(grep -m1 -E 'cannot|not found|needs glibc|older than' "$work/check.txt" || tail -n1 "$work/check.txt")"
      node_fail="${node_fail:+$node_fail; }run.sh --check test_gpu (exit $rc): $(printf '%s' "$why" | cut -c1-160)"
    fi
  fi
  cand="${LOOM_PYTHON:-python3}"
  run_limited "$work/torch.txt" "$((nl / 2))" "$cand" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
  { echo "== $cand: import torch (exit $rc)"; cat "$work/torch.txt"; } >>"$nlog"
  if [ $rc -eq 0 ]; then py="$(command -v "$cand" || echo "$cand")"; torch_desc="$(grep -m1 '^torch ' "$work/torch.txt") ($(basename "$py"))"
  elif [ $cut -eq 1 ]; then torch_desc="unknown: $cand's import torch took over $((nl / 2))s (the benchmark looks again)"
  else torch_desc="none: $cand cannot import torch (the benchmark reports loom alone)"; fi
  if [ -n "$node_fail" ]; then record node failed $((SECONDS - s)) "$limit" "$node_fail"
  else record node passed $((SECONDS - s)) "$limit" "$gpu; torch: $torch_desc"; fi
fi

wanted smoke && step_gtest smoke test_gpu "$smoke_filter" CUDA_LAUNCH_BLOCKING=1
wanted conformance && step_gtest conformance test_gpu 'Ops/*:Grads/*:CudaConformance.*'
wanted models && step_gtest models test_gpu 'CudaModels.*:CudaCheckpoint.*'
wanted nccl && step_gtest nccl test_collectives 'Nccl.*'
wanted bench && step_bench bench eager
wanted memcheck && step_memcheck
wanted bench_compile && step_bench bench_compile compile

finish
exit $worst
