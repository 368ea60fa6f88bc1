#!/usr/bin/env bash
# bench_gpt2_gpu's PyTorch peer gets the caller's environment and loom's TF32 setting. The bench (tiny CPU run)
# runs through a bundle's real run.sh, which finds a (fake) CUDA library and puts its folder in front of
# LD_LIBRARY_PATH, as on a GPU node; the peer is a stand-in script that prints the LD_LIBRARY_PATH it got and
# its arguments. Checked: the peer sees the caller's LD_LIBRARY_PATH (set, then unset), not run.sh's; the
# bench and the peer both say tf32 on with LOOM_ALLOW_TF32=1 (--allow-tf32 1) and off without it.
# Usage: bench_peer_env_test.sh SOURCE_DIR BENCH_BINARY WORK_DIR
set -euo pipefail
src="$(cd "$1" && pwd)"
bench="$2"
tmp="$3/bench_peer_env_test_tmp"
fail() { echo "FAIL: $*" >&2; exit 1; }
rm -rf "$tmp"
mkdir -p "$tmp/b/bin" "$tmp/cudalib" "$tmp/orig"
cp "$src/scripts/bundle/run.sh" "$tmp/b/"
ln -s "$(cd "$(dirname "$bench")" && pwd)/$(basename "$bench")" "$tmp/b/bin/bench_gpt2_gpu"
: >"$tmp/cudalib/libfakecuda.so.1"
printf 'LOOM_REQ_GLIBC=2.2.5\nLOOM_REQ_GLIBCXX=\nLOOM_REQ_CXXABI=\nLOOM_REQ_CUDA_LIBS="libfakecuda.so.1"\n' >"$tmp/b/bundle.env"
cat >"$tmp/peer.py" <<'PY'
import os, sys
print("peer LD_LIBRARY_PATH=" + os.environ.get("LD_LIBRARY_PATH", "<unset>"))
a = sys.argv[1:]
tf32 = a[a.index("--allow-tf32") + 1] if "--allow-tf32" in a else "<none>"
print("peer --allow-tf32 " + tf32)
print("torch tf32=" + ("on" if tf32 == "1" else "off"))
print("torch_eager tokens_per_s=1000.0 step_ms=1.000 mfu=n/a", flush=True)
PY
py="$(command -v python3)"
run() {  # NAME VAR=VALUE...: the bench through run.sh; output in $tmp/NAME.log
  local name="$1"
  shift
  env -u LD_LIBRARY_PATH -u LOOM_ORIG_LD_LIBRARY_PATH -u LOOM_ALLOW_TF32 LOOM_CUDA_LIB_DIRS="$tmp/cudalib" \
    OMP_NUM_THREADS=1 "$@" "$tmp/b/run.sh" bench_gpt2_gpu --device cpu --layers 1 --width 32 --heads 2 --seq 16 \
    --batch 1 --vocab 64 --warmup 1 --steps 1 --torch eager --python "$py" --torch-script "$tmp/peer.py" \
    >"$tmp/$name.log" 2>&1 || { cat "$tmp/$name.log"; fail "$name: the bench failed"; }
  grep -E '^(tf32|torch peer environment|peer|torch tf32|ratio)' "$tmp/$name.log" | sed "s|^|$name: |"
}
has() { grep -qxF -- "$2" "$tmp/$1.log" || { cat "$tmp/$1.log"; fail "$1: no line '$2'"; }; }

run set LD_LIBRARY_PATH="$tmp/orig" LOOM_ALLOW_TF32=1
has set "peer LD_LIBRARY_PATH=$tmp/orig"
# ... while the bench itself ran with run.sh's (the fake CUDA folder in front), which the peer must not get.
has set "torch peer environment: LD_LIBRARY_PATH '$tmp/orig' (the caller's, saved by run.sh; this process has '$tmp/cudalib:$tmp/orig')"
has set "tf32=on for both sides (LOOM_ALLOW_TF32; PyTorch gets --allow-tf32 1; affects f32 matmuls only)"
has set "peer --allow-tf32 1"
has set "torch tf32=on"
grep -q '^ratio loom/torch_eager tokens_per_s=' "$tmp/set.log" || fail "set: no ratio from the peer's figure"
echo "ok: the peer got the caller's LD_LIBRARY_PATH, not run.sh's; tf32 on on both sides"

run unset
has unset "peer LD_LIBRARY_PATH=<unset>"
has unset "tf32=off for both sides (LOOM_ALLOW_TF32 unset; PyTorch gets --allow-tf32 0; affects f32 matmuls only)"
has unset "peer --allow-tf32 0"
echo "ok: the caller had no LD_LIBRARY_PATH, nor had the peer; tf32 off on both sides"

rm -rf "$tmp"
echo "bench peer environment test passed"
