#!/bin/sh
# Runs a program of this loom bundle (written by scripts/bundle.sh) on this node:
# checks the node's glibc and C++ runtime against what the bundle needs (bundle.env),
# finds the CUDA libraries it takes from the node, then runs bin/PROGRAM.
#
# Usage: ./run.sh PROGRAM [ARGS...]     e.g. ./run.sh pretrain --config configs/tiny_cpu.yaml
#        ./run.sh trainlaunch --standalone --nproc-per-node 2 -- pretrain --config configs/tiny_cpu.yaml
#        ./run.sh --check [PROGRAM]     only the checks, with what was found
#        ./run.sh --list                the programs
# LOOM_CUDA_LIB_DIRS (colon-separated) names folders with the CUDA libraries when
# they are not in a usual place. bin/ goes first on PATH, so trainlaunch finds the
# bundle's programs by name. POSIX sh and shell built-ins only (plus getconf, and
# python3 to find pip's nvidia wheels when a CUDA library is not found elsewhere).
set -eu
case "$0" in */*) here="${0%/*}" ;; *) here=. ;; esac
here="$(cd "$here" && pwd)"
. "$here/bundle.env"

say() { printf '%s\n' "run.sh: $*" >&2; }

# ver_ge A B: version A >= version B (dotted numbers).
ver_ge() {
  a="$1" b="$2"
  while [ -n "$a" ] || [ -n "$b" ]; do
    x="${a%%.*}" y="${b%%.*}"
    [ -n "$x" ] || x=0
    [ -n "$y" ] || y=0
    [ "$x" -gt "$y" ] && return 0
    [ "$x" -lt "$y" ] && return 1
    case "$a" in *.*) a="${a#*.}" ;; *) a="" ;; esac
    case "$b" in *.*) b="${b#*.}" ;; *) b="" ;; esac
  done
  return 0
}

check=0
case "${1:-}" in
  ""|-h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  --list) ls "$here/bin"; exit 0 ;;
  --check) check=1; shift; set -- "${1:-pretrain}" ;;
esac
prog="$1"
shift
bin="$here/bin/$prog"
if [ ! -x "$bin" ]; then
  say "no program '$prog' in this bundle; it has: $(ls "$here/bin" | tr '\n' ' ')"
  exit 127
fi

# 1. glibc: the node's must be at least the newest symbol version the bundle uses.
node_glibc="$(getconf GNU_LIBC_VERSION 2>/dev/null || true)"
node_glibc="${node_glibc#glibc }"
if [ -z "$node_glibc" ]; then
  say "cannot tell this node's glibc version (getconf GNU_LIBC_VERSION); this bundle needs glibc >= $LOOM_REQ_GLIBC"
elif [ -n "$LOOM_REQ_GLIBC" ] && ! ver_ge "$node_glibc" "$LOOM_REQ_GLIBC"; then
  say "this node has glibc $node_glibc, but the bundle needs glibc >= $LOOM_REQ_GLIBC (see MANIFEST)."
  say "Build the bundle on a system with glibc <= $node_glibc (scripts/build_cuda.sh + scripts/bundle.sh), or use a newer node."
  exit 1
fi
[ "$check" = 0 ] || say "glibc $node_glibc (needs >= ${LOOM_REQ_GLIBC:-any}): ok"

# 2. CUDA libraries from the node: already known to the loader, or in a usual folder.
cuda_dirs=""
if [ -n "$LOOM_REQ_CUDA_LIBS" ]; then
  cands="${LOOM_CUDA_LIB_DIRS:-}"
  for d in ${CUDA_HOME:+$CUDA_HOME/lib64} ${CUDA_HOME:+$CUDA_HOME/lib} /usr/local/cuda/lib64 /usr/local/cuda/lib \
           /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 /usr/local/nvidia/lib; do
    cands="$cands:$d"
  done
  pysites=""
  missing=""
  for lib in $LOOM_REQ_CUDA_LIBS; do
    found=""
    IFS=:
    for d in $cands; do
      if [ -n "$d" ] && [ -e "$d/$lib" ]; then found="$d"; break; fi
    done
    unset IFS
    if [ -z "$found" ]; then
      # pip's nvidia-* wheels (what PyTorch uses): site-packages/nvidia/*/lib.
      if [ -z "$pysites" ] && command -v python3 >/dev/null 2>&1; then
        pysites="$(python3 -c 'import site, sys; print(" ".join(site.getsitepackages() + [site.getusersitepackages()] + sys.path))' 2>/dev/null || true)"
        [ -n "$pysites" ] || pysites=" "
      fi
      for s in $pysites; do
        for d in "$s"/nvidia/*/lib; do
          if [ -e "$d/$lib" ]; then found="$d"; break 2; fi
        done
      done
    fi
    if [ -n "$found" ]; then
      case ":$cuda_dirs:" in *":$found:"*) ;; *) cuda_dirs="${cuda_dirs:+$cuda_dirs:}$found" ;; esac
      [ "$check" = 0 ] || say "$lib: $found"
    else
      missing="$missing $lib"
    fi
  done
  if [ -n "$missing" ]; then
    # The loader may still know them (ld.so.cache, LD_LIBRARY_PATH): step 3 decides.
    [ "$check" = 0 ] || say "not in a usual folder (the loader may still know them):$missing"
  fi
fi

# The caller's library path, before the CUDA folders go in front: a program that starts another one
# (bench_gpt2_gpu's PyTorch peer) gives it this one back, so PyTorch loads its own CUDA libraries, not the
# ones found here. Kept from an outer run.sh when one already set it.
[ -n "${LOOM_ORIG_LD_LIBRARY_PATH+set}" ] || export LOOM_ORIG_LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}"
export PATH="$here/bin:$PATH"
[ -z "$cuda_dirs" ] || export LD_LIBRARY_PATH="$cuda_dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LOOM_BUNDLE="$here"

# 3. Ask the dynamic loader to resolve everything (without running the program):
# a missing library or a too-old libstdc++ (GLIBCXX_...) is reported here.
trace="$(LD_TRACE_LOADED_OBJECTS=1 "$bin" 2>&1 || true)"
case "$trace" in
  *"not found"*)
    say "the loader cannot satisfy $prog on this node:"
    printf '%s\n' "$trace" | while IFS= read -r line; do
      case "$line" in *"not found"*) printf '    %s\n' "$line" >&2 ;; esac
    done
    case "$trace" in
      *GLIBCXX_*"not found"*|*CXXABI_*"not found"*)
        say "the node's libstdc++ is older than the one the bundle was built with (needs GLIBCXX_$LOOM_REQ_GLIBCXX, CXXABI_$LOOM_REQ_CXXABI)." ;;
    esac
    case "$trace" in
      *"libcu"*"not found"*|*"libnccl"*"not found"*|*"libnv"*"not found"*)
        say "CUDA libraries come from the node ($LOOM_REQ_CUDA_LIBS): install PyTorch's nvidia-* wheels or the CUDA Toolkit, or set LOOM_CUDA_LIB_DIRS to the folders that hold them." ;;
    esac
    exit 127 ;;
esac
if [ "$check" = 1 ]; then
  say "every library of $prog resolves${cuda_dirs:+ (CUDA from $cuda_dirs)}"
  [ -n "$cuda_dirs" ] && printf 'export LD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}\n' "$cuda_dirs"
  exit 0
fi
exec "$bin" "$@"
