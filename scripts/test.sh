#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing and builds (scripts/setup.sh),
# then runs every CTest test. Extra arguments go to ctest (e.g. -L tensor, -R Matmul).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
ctest --test-dir build --output-on-failure --timeout 900 -j"$(nproc)" "$@"
