#!/usr/bin/env bash
# The ConvNet examples on the digits split: converts sklearn's digits with scripts/digits_to_idx.py into the build
# folder, trains EXAMPLE on 1 rank and on 2 ranks (trainlaunch), and checks that each reaches MIN test accuracy and
# that the two agree to within one test sample (1/360).
# Usage: convnet_digits_test.sh SOURCE_DIR BINARY_DIR EXAMPLE TRAINLAUNCH EPOCHS LR MIN
set -euo pipefail
src=$1 bin=$2 example=$3 launch=$4 epochs=$5 lr=$6 min=$7
py=$src/.venv/bin/python
[[ -x $py ]] || { echo "convnet_digits_test: $py is missing: run scripts/setup.sh"; exit 1; }
data=$bin/digits
"$py" "$src/scripts/digits_to_idx.py" "$data"
name=$(basename "$example")
log1=$(mktemp /tmp/$name.1rank.XXXXXX) log2=$(mktemp /tmp/$name.2ranks.XXXXXX)
trap 'rm -f "$log1" "$log2"' EXIT
args=(--data "$data" --epochs "$epochs" --lr "$lr" --min-accuracy "$min")
echo "== 1 rank"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} "$example" "${args[@]}" | tee "$log1"
echo "== 2 ranks"
OMP_NUM_THREADS=1 "$launch" --standalone --nproc-per-node 2 -- "$example" "${args[@]}" | tee "$log2"
a1=$(grep -o 'final test accuracy: [0-9.]*' "$log1" | awk '{print $4}')
a2=$(grep -o 'final test accuracy: [0-9.]*' "$log2" | awk '{print $4}')
[[ -n $a1 && -n $a2 ]] || { echo "convnet_digits_test: no final accuracy printed"; exit 1; }
echo "1 rank: $a1, 2 ranks: $a2 (minimum $min)"
awk -v a="$a1" -v b="$a2" 'BEGIN { d = a - b; if (d < 0) d = -d; if (d > 1.0 / 360 + 1e-4) { print "convnet_digits_test: 1 and 2 ranks differ by more than one sample"; exit 1 } }'
