#!/usr/bin/env bash
# Fails (exit 1) listing the files clang-format would change, per .clang-format (STYLE.md: "clang-format clean").
# Usage: scripts/check_format.sh [--fix]
set -euo pipefail
cd "$(dirname "$0")/.."
cf=$(command -v clang-format) || { echo "check_format: clang-format not installed (scripts/setup.sh installs it)"; exit 77; }
if git rev-parse --is-inside-work-tree > /dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.h' '*.cc' '*.cu' '*.cuh')
else
  mapfile -t files < <(find . -path ./build -prune -o -path './build-*' -prune -o \( -name '*.h' -o -name '*.cc' -o -name '*.cu' \) -print)
fi
if [[ ${1:-} == --fix ]]; then
  "$cf" -i "${files[@]}"
  exit 0
fi
bad=()
for f in "${files[@]}"; do
  "$cf" --dry-run --Werror "$f" > /dev/null 2>&1 || bad+=("$f")
done
if [[ ${#bad[@]} -gt 0 ]]; then
  echo "check_format: not clang-format clean (run scripts/check_format.sh --fix): ${bad[*]}"
  exit 1
fi
echo "check_format: ${#files[@]} files clean"
