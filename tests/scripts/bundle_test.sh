#!/usr/bin/env bash
# Bundles this build with scripts/bundle.sh and proves the bundle is
# self-contained: inside a user + mount namespace where /usr/lib (and so /lib,
# /lib64: Debian's library folders) is replaced by a folder holding only glibc,
# libstdc++ and libgcc_s, every program and library of the bundle resolves
# inside the bundle or to that set (CUDA libraries, if any, from /usr/local as
# on a GPU node), `pretrain --validate` and a 20-step 2-rank gloo job under
# trainlaunch run through run.sh, loomckpt verifies the job's checkpoint, and
# run.sh refuses, by name, a node whose glibc is too old.
# Without user namespaces it falls back to a weaker check (printed).
# Usage: bundle_test.sh SOURCE_DIR BUILD_DIR      exit 77: skipped (no patchelf)
set -euo pipefail
src="$1"
build="$2"
tmp="$build/bundle_test_tmp"
b="$tmp/bundle"
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v patchelf >/dev/null || { echo "SKIPPED: patchelf is not installed (scripts/setup.sh installs it)"; exit 77; }
rm -rf "$tmp"
mkdir -p "$tmp"

start=$SECONDS
"$src/scripts/bundle.sh" "$build" "$b" >"$tmp/bundle.log" 2>&1 || { cat "$tmp/bundle.log"; fail "bundle.sh failed"; }
tail -n1 "$tmp/bundle.log"
echo "bundled in $((SECONDS - start)) s; $(sed -n 's/^total: *//p' "$b/MANIFEST")"
for f in run.sh run_gpu_tests.sh gtest_results.awk MANIFEST bundle.env gpu_tests.txt configs/tiny_cpu.yaml bin/pretrain bin/trainlaunch; do
  [ -e "$b/$f" ] || fail "the bundle has no $f"
done
grep -q '^needs glibc: *>= 2\.[0-9]' "$b/MANIFEST" || fail "MANIFEST names no glibc version"

# Names the node provides: glibc's libraries, libstdc++, libgcc_s; CUDA's by pattern.
allowed_system='^(linux-vdso\.so\.1|ld-linux-x86-64\.so\.2|libc\.so\.6|libm\.so\.6|libmvec\.so\.1|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libresolv\.so\.2|libutil\.so\.1|libstdc\+\+\.so\.6|libgcc_s\.so\.1)$'
allowed_cuda='^lib(cuda|nvidia-.*|cudart|cublas|cublasLt|cudnn.*|nccl|nvrtc.*|nvJitLink|cufft.*|curand|cusolver.*|cusparse.*|cupti|nvToolsExt|cufile.*|nvshmem.*)\.so'

# The stand-in for /usr/lib: glibc, libstdc++ and libgcc_s only.
stage="$tmp/usr_lib"
mkdir -p "$stage/x86_64-linux-gnu"
for n in ld-linux-x86-64.so.2 libc.so.6 libm.so.6 libmvec.so.1 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 \
         libutil.so.1 libstdc++.so.6 libgcc_s.so.1 libnss_files.so.2 libnss_dns.so.2; do
  [ -e "/usr/lib/x86_64-linux-gnu/$n" ] && cp -L "/usr/lib/x86_64-linux-gnu/$n" "$stage/x86_64-linux-gnu/"
done

# hidden CMD...: runs CMD with /usr/lib replaced by the stage (POSIX sh: dash needs only libc).
# (LOOM_BUNDLE_TEST_FALLBACK=1 forces the fallback, to test it.)
if [ -z "${LOOM_BUNDLE_TEST_FALLBACK:-}" ] && unshare -rm true 2>/dev/null && [ "$(readlink -f /lib)" = /usr/lib ] && [ "$(readlink -f /lib64)" = /usr/lib64 ]; then
  mode=namespace
  hidden() { unshare -rm sh -c 'mount --bind "$0" /usr/lib && exec "$@"' "$stage" "$@"; }
else
  mode=fallback
  hidden() { "$@"; }
  echo "NOTE: no user+mount namespace (or no merged /usr) here, so Debian's library folders stay visible."
  echo "      Weaker check instead: the loader's own log (LD_DEBUG=files) must show every library it opened"
  echo "      coming from the bundle or the allowed system set. That proves which files are loaded (dlopen"
  echo "      included), not that the run would survive on a node where they are absent."
fi
echo "mode: $mode"

if [ "$mode" = namespace ]; then
  # The namespace must really hide Debian's libraries: the build's own pretrain cannot load there.
  orig="$(find "$build" -type f -name pretrain -perm -u+x -not -path '*/CMakeFiles/*' -not -path "$tmp/*" | head -n1)"
  out="$(hidden /lib64/ld-linux-x86-64.so.2 --list "$orig" 2>&1 || true)"
  echo "$out" | grep -Eq 'not found|cannot open shared object' || { echo "$out"; fail "the namespace does not hide /usr/lib"; }
  echo "ok: in the namespace the build's own pretrain cannot load: $(echo "$out" | grep -E 'not found|cannot open' | head -n1)"
fi

# Every ELF of the bundle: each dependency resolves into the bundle or to an allowed name.
hidden sh -c 'for f in "$0"/bin/* "$0"/lib/*; do echo "== $f"; /lib64/ld-linux-x86-64.so.2 --list "$f" 2>&1; done' "$b" \
  >"$tmp/ldd.txt" || true
nfiles="$(grep -c '^== ' "$tmp/ldd.txt")"
bad="$(awk -v b="$b" -v sys="$allowed_system" -v cuda="$allowed_cuda" '
  /^== / { f = $2; next }
  /not found/ { print f ": " $0; next }
  $2 == "=>" {
    name = $1; path = $3
    sub(/\/bin\/\.\.\/lib\//, "/lib/", path); sub(/\/lib\/\.\//, "/lib/", path)
    if (index(path, b "/lib/") == 1) next
    if (name ~ sys) next
    if (name ~ cuda) next
    print f ": " name " resolves outside the bundle to " path
  }' "$tmp/ldd.txt")"
[ -z "$bad" ] || { echo "$bad"; fail "libraries resolve outside the bundle or not at all"; }
nbundled="$(grep -c "=> $b/lib/" "$tmp/ldd.txt" || true)"
echo "ok: $nfiles ELF files; every dependency resolves inside the bundle ($nbundled links) or to glibc/libstdc++/libgcc_s/CUDA"

# The programs run: pretrain --validate, then the main job for 20 steps on 2 ranks (gloo), then loomckpt.
run_logged() {  # NAME CMD...
  local name="$1"
  shift
  if [ "$mode" = fallback ]; then
    env -u LD_LIBRARY_PATH LD_DEBUG=files LD_DEBUG_OUTPUT="$tmp/lddebug.$name" "$@" >"$tmp/$name.log" 2>&1
  else
    hidden env -u LD_LIBRARY_PATH "$@" >"$tmp/$name.log" 2>&1
  fi
}
cd "$b"
run_logged validate ./run.sh pretrain --validate --config configs/tiny_cpu.yaml || { cat "$tmp/validate.log"; fail "bundled pretrain --validate"; }
grep -q 'config OK' "$tmp/validate.log" || { cat "$tmp/validate.log"; fail "pretrain --validate did not say 'config OK'"; }
echo "ok: bundled pretrain --validate --config configs/tiny_cpu.yaml"

start=$SECONDS
run_logged job env OMP_NUM_THREADS=1 ./run.sh trainlaunch --standalone --nproc-per-node 2 -- \
  pretrain --config configs/tiny_cpu.yaml --set training.steps=20 --set training.warmup_steps=5 \
  --set checkpoint.dir="$tmp/run" --set checkpoint.interval=20 --set logging.interval=10 \
  --set logging.eval_interval=20 --set logging.eval_sequences=16 --set checkpoint.resume=never ||
  { tail -n 40 "$tmp/job.log"; fail "the bundled 2-rank job failed"; }
grep -E '^\[rank0\]: .*step +20' "$tmp/job.log" >/dev/null || { tail -n 40 "$tmp/job.log"; fail "the job printed no step 20"; }
[ -e "$tmp/run/latest" ] || fail "the job wrote no checkpoint (no $tmp/run/latest)"
echo "ok: bundled trainlaunch + pretrain, 2 ranks, gloo, 20 steps in $((SECONDS - start)) s, checkpoint written:"
grep -E '^\[rank0\]: .*step +20' "$tmp/job.log" | head -n1
run_logged verify ./run.sh loomckpt verify "$tmp/run/$(cat "$tmp/run/latest")" ||
  { cat "$tmp/verify.log"; fail "bundled loomckpt verify"; }
echo "ok: bundled loomckpt verify: $(tail -n1 "$tmp/verify.log")"

if [ "$mode" = fallback ]; then
  outside="$(cat "$tmp"/lddebug.* | sed -n 's/.*calling init: //p' | sort -u | while read -r p; do
    n="${p##*/}"
    p="${p/\/bin\/..\/lib\///lib/}"
    case "$p" in "$b"/lib/*) continue ;; esac
    echo "$n" | grep -Eq "$allowed_system|$allowed_cuda" && continue
    echo "$p"
  done)"
  [ -z "$outside" ] || { echo "$outside"; fail "these libraries were loaded from outside the bundle"; }
  echo "ok: the loader opened no library outside the bundle and the allowed set (LD_DEBUG)"
fi

# run.sh names a too-old glibc before anything fails obscurely.
old="$tmp/old_node"
mkdir -p "$old/bin"
cp "$b/run.sh" "$old/"
ln -s "$b/bin/pretrain" "$old/bin/pretrain"
sed 's/^LOOM_REQ_GLIBC=.*/LOOM_REQ_GLIBC=99.1/' "$b/bundle.env" >"$old/bundle.env"
if "$old/run.sh" pretrain --validate --config configs/tiny_cpu.yaml >"$tmp/old.log" 2>&1; then
  fail "run.sh ran on a node whose glibc is older than the bundle needs"
fi
grep -q 'needs glibc >= 99.1' "$tmp/old.log" || { cat "$tmp/old.log"; fail "run.sh did not name the glibc it needs"; }
echo "ok: run.sh refuses an old glibc: $(head -n1 "$tmp/old.log")"

cd /
rm -rf "$tmp"
echo "bundle test passed ($mode)"
