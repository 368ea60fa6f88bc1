#!/usr/bin/env bash
# Builds loom with the CUDA backend for one GPU architecture, with portable CPU
# code (-march=x86-64-v3), ready for scripts/bundle.sh to pack for a GPU node.
#
# Usage: scripts/build_cuda.sh [--arch 90|90a|80|...] [--build-dir DIR] [--static] [--jobs N]
#                              [--target T ...] [-- extra cmake arguments]
#   --arch       CMAKE_CUDA_ARCHITECTURES (default 90: sm_90, the H100 and H200)
#   --build-dir  build folder (default build-sm<arch>)
#   --static     link the loom libraries statically into every program (default:
#                shared libloom_*.so, so a bundle carries one copy of the loom
#                code and of the GPU kernels instead of one per program)
#   --jobs       parallel build jobs (default: the number of cores)
#   --target     build only this target (repeatable; default: everything)
set -euo pipefail
cd "$(dirname "$0")/.."

arch=90
build_dir=""
shared=ON
jobs="$(nproc)"
targets=()
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --arch=*) arch="${1#*=}"; shift ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    --build-dir=*) build_dir="${1#*=}"; shift ;;
    --static) shared=OFF; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --jobs=*) jobs="${1#*=}"; shift ;;
    --target) targets+=("$2"); shift 2 ;;
    --target=*) targets+=("${1#*=}"); shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_cuda.sh: unknown argument '$1' (try --help)" >&2; exit 2 ;;
  esac
done
arch_re='^[0-9]+[af]?(-real|-virtual)?(;[0-9]+[af]?(-real|-virtual)?)*$'
if ! [[ "$arch" =~ $arch_re ]]; then
  echo "build_cuda.sh: --arch '$arch' is not a CUDA architecture list such as 90, 90a, 80 or '80;90'" >&2
  exit 2
fi
[ -n "$build_dir" ] || build_dir="build-sm${arch//;/_}"

nvcc_bin="$(command -v nvcc || true)"
[ -n "$nvcc_bin" ] || { [ -x /usr/local/cuda/bin/nvcc ] && nvcc_bin=/usr/local/cuda/bin/nvcc; }
if [ -z "$nvcc_bin" ]; then
  echo "build_cuda.sh: nvcc not found (PATH or /usr/local/cuda/bin); install the CUDA Toolkit" >&2
  exit 1
fi

echo "build_cuda.sh: CUDA architectures '$arch', $("$nvcc_bin" --version | grep -o 'release [0-9.]*'), shared libs $shared, into $build_dir"
cmake -S . -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release \
  -DLOOM_CUDA=ON \
  -DCMAKE_CUDA_COMPILER="$nvcc_bin" \
  -DCMAKE_CUDA_ARCHITECTURES="$arch" \
  -DLOOM_ARCH=x86-64-v3 \
  -DBUILD_SHARED_LIBS="$shared" \
  "${extra[@]}"
target_args=()
for t in "${targets[@]}"; do target_args+=(--target "$t"); done
cmake --build "$build_dir" -j "$jobs" "${target_args[@]}"
echo "build_cuda.sh: built $build_dir; pack it with: scripts/bundle.sh $build_dir OUT_DIR"
