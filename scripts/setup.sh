#!/usr/bin/env bash
# Installs every Debian package loom needs (idempotent), then configures and
# builds the project. Usage: scripts/setup.sh [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build pkg-config git
  libopenblas-dev libopenblas-openmp-dev libgtest-dev libgmock-dev
  libssl-dev libgloo-dev libopenmpi-dev openmpi-bin
  libhdf5-dev hdf5-tools libyaml-cpp-dev nlohmann-json3-dev
  python3 python3-torch python3-h5py python3-numpy
  slurm-wlm gnuplot-nox ccache clang-format patchelf
  iproute2 procps xz-utils zstd
  libpcre2-dev libcli11-dev libonnx-dev libprotobuf-dev protobuf-compiler
  python3-venv python3-onnx python3-sklearn
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# The test virtual environment: Debian's python3 (and its torch, h5py, onnx, sklearn) plus the reference
# implementations from PyPI that the tests compare against. Pinned, so a test's reference does not move.
venv_pkgs=(tiktoken==0.14.0 tokenizers==0.23.3 onnxruntime==1.32.0 safetensors==0.8.0)
if ! .venv/bin/python -c "import tiktoken, tokenizers, onnxruntime, safetensors" 2>/dev/null; then
  echo "setup: creating .venv (${venv_pkgs[*]})"
  rm -rf .venv  # a broken or partial one (or a dangling link) would make venv fail
  /usr/bin/python3 -m venv --system-site-packages .venv
  .venv/bin/pip install -q --disable-pip-version-check "${venv_pkgs[@]}"
fi

if [ "${1:-}" != "--no-build" ]; then
  cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release
  cmake --build build -j"$(nproc)"
fi
