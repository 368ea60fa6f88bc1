#!/usr/bin/env bash
# Packs a loom build into a folder that runs on a node without the development
# packages: the programs, every shared library they need that a bare Linux
# node lacks, configs/, run.sh (finds the node's CUDA libraries, checks glibc,
# runs a program), run_gpu_tests.sh (the `ctest -L gpu` tests) and a MANIFEST.
#
# Usage: scripts/bundle.sh BUILD_DIR OUT_DIR [--tar] [--programs "NAME ..."]
#   --tar        also write OUT_DIR.tar.xz (what travels to a node)
#   --programs   the programs to take (default: pretrain train_tiny trainlaunch
#                loomckpt test_gpu test_tensor test_collectives, every bench_*,
#                and every program a gpu-labelled test runs; those not built are
#                listed and skipped, except pretrain and trainlaunch)
#
# Not bundled, taken from the node: glibc (libc, libm, libpthread, libdl, librt,
# libresolv, ..., the dynamic loader), libstdc++ and libgcc_s (MANIFEST names the
# newest GLIBC / GLIBCXX versions needed; run.sh checks them), the NVIDIA driver
# (libcuda, libnvidia-*) and the CUDA Toolkit libraries (cudart, cuBLAS, cuBLASLt,
# cuDNN, NCCL, ...: hundreds of MB, present wherever PyTorch or the toolkit is).
# Bundled, everything else: OpenBLAS, HDF5 (and its libcurl and friends), yaml-cpp,
# Gloo, OpenSSL's libcrypto, libgomp, Open MPI's libraries (the programs link them;
# the mpi backend itself cannot run from a bundle: no mpirun and no MCA components).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
src="$(cd "$here/.." && pwd)"

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; }
build="" out="" tar=0 programs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --tar) tar=1; shift ;;
    --programs) programs="$2"; shift 2 ;;
    --programs=*) programs="${1#*=}"; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "bundle.sh: unknown option '$1'" >&2; usage >&2; exit 2 ;;
    *) if [ -z "$build" ]; then build="$1"; elif [ -z "$out" ]; then out="$1"; else
         echo "bundle.sh: unexpected argument '$1'" >&2; exit 2; fi; shift ;;
  esac
done
if [ -z "$build" ] || [ -z "$out" ]; then usage >&2; exit 2; fi
[ -f "$build/CMakeCache.txt" ] || { echo "bundle.sh: $build is not a CMake build folder" >&2; exit 2; }
build="$(cd "$build" && pwd)"
for tool in patchelf readelf strip ldd; do
  command -v "$tool" >/dev/null || { echo "bundle.sh: needs '$tool' (scripts/setup.sh installs patchelf)" >&2; exit 1; }
done

cache() { sed -n "s/^$1:[A-Z]*=//p" "$build/CMakeCache.txt" | head -n1; }

# Libraries the node provides. glibc's own, libstdc++ and libgcc_s: every Linux
# with a C++ runtime has them (their versions are checked by run.sh).
is_system_lib() {
  case "$1" in
    linux-vdso.so.*|ld-linux*.so.*|libc.so.6|libm.so.6|libmvec.so.1|libpthread.so.0|libdl.so.2|librt.so.1) return 0 ;;
    libresolv.so.2|libutil.so.1|libanl.so.1|libnsl.so.1|libnss_*.so.2|libBrokenLocale.so.1|libthread_db.so.1) return 0 ;;
    libc_malloc_debug.so.0|libstdc++.so.6|libgcc_s.so.1) return 0 ;;
  esac
  return 1
}
# The NVIDIA driver and the CUDA Toolkit's libraries: found on the node by run.sh.
is_cuda_lib() {
  case "$1" in
    libcuda.so.*|libnvidia-*|libcudart.so.*|libcublas.so.*|libcublasLt.so.*|libcudnn*.so.*|libnccl.so.*) return 0 ;;
    libnvrtc*.so.*|libnvJitLink.so.*|libcufft*.so.*|libcurand.so.*|libcusolver*.so.*|libcusparse*.so.*) return 0 ;;
    libcupti.so.*|libnvToolsExt.so.*|libcufile*.so.*|libnvshmem*.so.*) return 0 ;;
  esac
  return 1
}
is_elf() { [ "$(head -c4 "$1" 2>/dev/null | od -An -c | tr -d ' ')" = '177ELF' ]; }

# ---- which programs
gpu_tests_json="$(mktemp)"
trap 'rm -f "$gpu_tests_json"' EXIT
# The gpu-labelled tests, as CTest would run them (gtest cases discovered by running the programs).
if command -v ctest >/dev/null && ctest --test-dir "$build" -L gpu --show-only=json-v1 >"$gpu_tests_json" 2>/dev/null; then :; else
  echo '{"tests": []}' >"$gpu_tests_json"
fi
gpu_test_programs="$(python3 - "$gpu_tests_json" <<'EOF'
import json, os, sys
tests = json.load(open(sys.argv[1])).get("tests", [])
print(" ".join(sorted({os.path.basename(t["command"][0]) for t in tests if t.get("command")})))
EOF
)"
if [ -z "$programs" ]; then
  benches="$(find "$build/tests/bench" -maxdepth 1 -type f -perm -u+x -name 'bench_*' -printf '%f ' 2>/dev/null || true)"
  programs="pretrain train_tiny trainlaunch loomckpt test_gpu test_tensor test_collectives $benches $gpu_test_programs"
fi
declare -A prog_path=()
skipped=()
for p in $programs; do
  [ -n "${prog_path[$p]:-}" ] && continue
  f="$(find "$build" -type f -name "$p" -perm -u+x -not -path '*/CMakeFiles/*' | head -n1)"
  if [ -n "$f" ] && is_elf "$f"; then
    prog_path[$p]="$f"
  else
    case "$p" in pretrain|trainlaunch) echo "bundle.sh: $p is not built in $build" >&2; exit 1 ;; esac
    skipped+=("$p")
  fi
done
[ ${#skipped[@]} -eq 0 ] || echo "bundle.sh: not built, left out: ${skipped[*]}"

# ---- copy programs and the libraries they need
rm -rf "$out"
mkdir -p "$out/bin" "$out/lib"
out="$(cd "$out" && pwd)"
declare -A lib_from=()
node_cuda=()
for p in $(printf '%s\n' "${!prog_path[@]}" | sort); do
  cp "${prog_path[$p]}" "$out/bin/$p"
  while read -r name arrow path _; do
    [ "$arrow" = "=>" ] || continue
    is_system_lib "$name" && continue
    if is_cuda_lib "$name"; then
      [[ " ${node_cuda[*]} " == *" $name "* ]] || node_cuda+=("$name")
      continue
    fi
    if [ "$path" = "not" ]; then
      echo "bundle.sh: $p needs $name, which is not found here (ldd)" >&2
      exit 1
    fi
    [ -n "${lib_from[$name]:-}" ] || lib_from[$name]="$(readlink -f "$path")"
  done < <(ldd "${prog_path[$p]}")
done
for name in "${!lib_from[@]}"; do
  cp "${lib_from[$name]}" "$out/lib/$name"
  chmod u+w "$out/lib/$name"
done

# Strip symbol tables (the programs are Release builds without debug info; most
# libraries come stripped), then DT_RPATH (not RUNPATH: searched before
# LD_LIBRARY_PATH, so the node's own copies of these libraries cannot interfere)
# $ORIGIN/../lib on the programs and $ORIGIN on every library, so each one finds
# its dependencies in the bundle however it is loaded (dlopen included).
for f in "$out"/bin/* "$out"/lib/*; do
  if readelf -S -W "$f" | grep -q ' \.symtab '; then strip --strip-unneeded "$f"; fi
done
for f in "$out"/bin/*; do patchelf --force-rpath --set-rpath '$ORIGIN/../lib' "$f"; done
for f in "$out"/lib/*; do patchelf --force-rpath --set-rpath '$ORIGIN' "$f"; done

# ---- configs, launcher scripts, the gpu test list
cp -r "$src/configs" "$out/configs"
# The benchmarks' PyTorch peers (a benchmark finds them through $LOOM_BUNDLE, which run.sh sets).
mkdir -p "$out/tests/bench"
cp "$src"/tests/bench/*.py "$out/tests/bench/" 2>/dev/null || true
cp "$here/bundle/run.sh" "$here/bundle/run_gpu_tests.sh" "$here/bundle/gtest_results.awk" "$out/"
chmod +x "$out/run.sh" "$out/run_gpu_tests.sh"
python3 - "$gpu_tests_json" "$out" <<'EOF' >"$out/gpu_tests.txt"
# One line per gpu-labelled CTest test: NAME ENV PROGRAM ARGS... (ENV: comma-separated VAR=VALUE or '-').
import json, os, sys
tests = json.load(open(sys.argv[1])).get("tests", [])
out = sys.argv[2]
for t in tests:
    cmd = t.get("command") or []
    if not cmd or not os.path.exists(os.path.join(out, "bin", os.path.basename(cmd[0]))):
        continue
    env = []
    for p in t.get("properties", []):
        if p["name"] == "ENVIRONMENT":
            env += p["value"]
    # A parameterised gtest case's CTest name ends in " # GetParam() = ...": keep the part before.
    words = [t["name"].split()[0], ",".join(env) or "-", os.path.basename(cmd[0])] + cmd[1:]
    if any(not w or any(c.isspace() for c in w) for w in words):
        sys.exit("bundle.sh: gpu test %s has an argument with white space, which gpu_tests.txt cannot hold" % t["name"])
    print(" ".join(words))
EOF

# ---- what the node must provide: glibc and libstdc++ symbol versions, CUDA libraries
newest() { sort -t. -k1,1n -k2,2n -k3,3n | tail -n1; }
versions="$(for f in "$out"/bin/* "$out"/lib/*; do
  readelf -W -V "$f" | sed -n '/Version needs section/,$p' | grep -o 'Name: \(GLIBC\|GLIBCXX\|CXXABI\)_[0-9.]*' |
    sed "s|Name: \(.*\)|\1 ${f#"$out"/}|" || true
done | sort -u)"
req_glibc="$(echo "$versions" | sed -n 's/^GLIBC_\([^ ]*\) .*/\1/p' | newest)"
glibc_by="$(echo "$versions" | sed -n "s/^GLIBC_$req_glibc //p" | tr '\n' ' ')"
versions="$(echo "$versions" | cut -d' ' -f1 | sort -u)"
req_glibcxx="$(echo "$versions" | sed -n 's/^GLIBCXX_//p' | newest)"
req_cxxabi="$(echo "$versions" | sed -n 's/^CXXABI_//p' | newest)"
mapfile -t node_cuda < <(printf '%s\n' "${node_cuda[@]}" | sed '/^$/d' | sort)
cat >"$out/bundle.env" <<EOF
# Read by run.sh: what this bundle needs from the node.
LOOM_REQ_GLIBC=${req_glibc}
LOOM_REQ_GLIBCXX=${req_glibcxx}
LOOM_REQ_CXXABI=${req_cxxabi}
LOOM_REQ_CUDA_LIBS="${node_cuda[*]}"
EOF

commit="$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$src" diff --quiet HEAD 2>/dev/null || commit="$commit (with uncommitted changes)"
os="$(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME" || uname -s)"
cuda_compiler="$(cache CMAKE_CUDA_COMPILER)"
cuda_version=""
[ -n "$cuda_compiler" ] && [ -x "$cuda_compiler" ] && cuda_version="$("$cuda_compiler" --version | grep -o 'release [0-9.]*' | sed 's/release //')"
{
  echo "loom bundle"
  echo "built:        $(date -u '+%Y-%m-%d %H:%M UTC') on $os, $(ldd --version | head -n1 | sed 's/^ldd //'), commit $commit"
  echo "from:         $build (CMAKE_BUILD_TYPE=$(cache CMAKE_BUILD_TYPE), LOOM_ARCH=$(cache LOOM_ARCH), BUILD_SHARED_LIBS=$(cache BUILD_SHARED_LIBS | grep . || echo OFF))"
  if [ -n "$cuda_version" ]; then
    echo "CUDA:         nvcc $cuda_version, CMAKE_CUDA_ARCHITECTURES=$(cache CMAKE_CUDA_ARCHITECTURES | grep . || echo "CMakeLists.txt's default"); needs an NVIDIA driver for CUDA $cuda_version or newer"
  else
    echo "CUDA:         none (CPU build)"
  fi
  echo "needs glibc:  >= ${req_glibc:-?} (the newest GLIBC_ symbol version a bundled file uses: ${glibc_by% })"
  case "$req_glibcxx" in 3.4.28) gcc=" (GCC 10's libstdc++ or newer)" ;; 3.4.29) gcc=" (GCC 11's libstdc++ or newer)" ;;
    3.4.30) gcc=" (GCC 12's libstdc++ or newer)" ;; 3.4.31) gcc=" (GCC 13's libstdc++ or newer)" ;; *) gcc="" ;; esac
  echo "needs libstdc++: GLIBCXX_${req_glibcxx:-?}, CXXABI_${req_cxxabi:-?}$gcc"
  echo "needs from the node's CUDA (run.sh looks in \$LOOM_CUDA_LIB_DIRS, \$CUDA_HOME, /usr/local/cuda, python3's nvidia/*/lib wheels):"
  echo "              ${node_cuda[*]:-(none)}"
  echo "left out (not built): ${skipped[*]:-(none)}"
  total=0
  n=0
  while read -r size path; do total=$((total + size)); n=$((n + 1)); done < <(cd "$out" && find . -type f ! -name MANIFEST -printf '%s %P\n')
  echo "total:        $total bytes ($((total / 1048576)) MiB) in $n files, MANIFEST aside"
  echo
  echo "files (bytes):"
  (cd "$out" && find . -type f ! -name MANIFEST -printf '%12s  %P\n' | sort -k2)
} >"$out/MANIFEST"

if [ "$tar" = 1 ]; then
  (cd "$(dirname "$out")" && tar -cf - "$(basename "$out")" | xz -T0 -6 >"$out.tar.xz")
  echo "bundle.sh: wrote $out.tar.xz ($(stat -c %s "$out.tar.xz") bytes)"
fi
echo "bundle.sh: wrote $out ($(du -sb "$out" | cut -f1) bytes); programs: $(ls "$out/bin" | tr '\n' ' ')"
