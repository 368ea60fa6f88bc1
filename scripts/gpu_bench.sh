#!/usr/bin/env bash
# Runs the single-GPU training benchmarks (tests/bench/bench_gpt2_gpu.cc: loom next to PyTorch eager and
# torch.compile in the same run) for GPT-2 124M and the Llama-3.2-1B-shaped model, on cuda:0 of this machine, and
# writes each run's output and a summary into OUT_DIR.
#
# Usage: scripts/gpu_bench.sh OUT_DIR [BENCH_BINARY] [-- extra bench_gpt2_gpu options for every run]
#   BENCH_BINARY  the bench_gpt2_gpu program, or a bundle folder (scripts/bundle.sh; run through its run.sh);
#                 default: $LOOM_BENCH_BIN, else the first of build-sm90/, build-sm90a/, build/ (tests/bench/
#                 bench_gpt2_gpu) that exists (scripts/build_cuda.sh --target bench_gpt2_gpu builds it)
#   LOOM_PYTHON   the python whose PyTorch is the peer (default: python3, else /usr/bin/python3)
#   GPU_BENCH_RUNS     runs to do, in order (default: "gpt2_autocast gpt2_bf16 llama1b_autocast"); each is
#                      MODEL_PRECISION with MODEL gpt2 or llama1b and PRECISION bf16, autocast or f32
#   GPU_BENCH_TIMEOUT  seconds allowed per run (default 420; torch.compile's first compilation takes minutes)
# Files: env.txt (GPU, driver, PyTorch, commit), <run>.txt per run, summary.txt (the figure lines of every run).
# Exit status: 0 when every run finished, 1 when one failed or timed out (the others still run), 2 on usage errors.
set -uo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 1 ] && [ "$1" != "-h" ] && [ "$1" != "--help" ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
out="$1"
shift
bin=""
if [ $# -ge 1 ] && [ "$1" != "--" ]; then
  bin="$1"
  shift
fi
[ $# -ge 1 ] && [ "$1" = "--" ] && shift
extra=("$@")

if [ -z "$bin" ]; then
  for c in "${LOOM_BENCH_BIN:-}" build-sm90/tests/bench/bench_gpt2_gpu build-sm90a/tests/bench/bench_gpt2_gpu \
           build/tests/bench/bench_gpt2_gpu; do
    if [ -n "$c" ] && [ -x "$c" ]; then bin="$c"; break; fi
  done
fi
launch=("$bin")
if [ -n "$bin" ] && [ -d "$bin" ] && [ -x "$bin/run.sh" ]; then
  launch=("$bin/run.sh" bench_gpt2_gpu)
elif [ -z "$bin" ] || [ ! -x "$bin" ] || [ -d "$bin" ]; then
  echo "gpu_bench.sh: no bench_gpt2_gpu binary (give its path, set LOOM_BENCH_BIN, or build it with" \
       "scripts/build_cuda.sh --target bench_gpt2_gpu)" >&2
  exit 2
fi
mkdir -p "$out" || { echo "gpu_bench.sh: cannot create $out" >&2; exit 2; }

py="${LOOM_PYTHON:-}"
if [ -z "$py" ]; then
  for c in python3 /usr/bin/python3; do
    if "$c" -c 'import torch' >/dev/null 2>&1; then py="$c"; break; fi
  done
fi

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "host: $(hostname)"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with local changes)')"
  echo "binary: ${launch[*]}"
  echo "gpu: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv,noheader -i 0 2>&1)"
  if [ -n "$py" ]; then
    echo "python: $py"
    "$py" - <<'EOF' 2>&1
import torch
print("torch:", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available())
try:
    import triton
    print("triton:", triton.__version__)
except ImportError:
    print("triton: not installed (torch.compile cannot generate GPU kernels)")
EOF
  else
    echo "python: none imports torch (set LOOM_PYTHON): the runs have no PyTorch figures"
  fi
  echo "cpus: $(nproc)"
  nvidia-smi 2>&1 | head -20
} >"$out/env.txt"
cat "$out/env.txt"

runs="${GPU_BENCH_RUNS:-gpt2_autocast gpt2_bf16 llama1b_autocast}"
limit="${GPU_BENCH_TIMEOUT:-420}"
status=0
: >"$out/summary.txt"
for run in $runs; do
  model="${run%_*}"
  precision="${run##*_}"
  case "$model" in gpt2|llama1b) ;; *) echo "gpu_bench.sh: run '$run': model must be gpt2 or llama1b" >&2; exit 2 ;; esac
  case "$precision" in bf16|autocast|f32) ;; *) echo "gpu_bench.sh: run '$run': bad precision" >&2; exit 2 ;; esac
  echo "=== $run: ${launch[*]} --model $model --device cuda:0 --precision $precision ${extra[*]}"
  py_args=()
  [ -f tests/bench/torch_gpt2_gpu.py ] && py_args+=(--torch-script "$PWD/tests/bench/torch_gpt2_gpu.py")
  [ -n "$py" ] && py_args+=(--python "$py")
  timeout --kill-after=20 "$limit" "${launch[@]}" --model "$model" --device cuda:0 --precision "$precision" "${py_args[@]}" \
    "${extra[@]}" 2>&1 | tee "$out/$run.txt"
  rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ]; then
    status=1
    [ "$rc" -eq 124 ] && echo "gpu_bench.sh: $run timed out after ${limit}s" | tee -a "$out/$run.txt"
    echo "gpu_bench.sh: $run exited with status $rc" | tee -a "$out/$run.txt"
  fi
  {
    echo "== $run (exit $rc)"
    grep -E '^(model|run|params|peak|tf32|torch (params|attention|tf32)|torch_[a-z]+ |loom |ratio |params (match|DIFFER)|torch peer|loom failed|gpu_bench)' \
      "$out/$run.txt"
  } >>"$out/summary.txt"
done
echo "=== summary ($out/summary.txt)"
cat "$out/summary.txt"
exit $status
