#!/usr/bin/env bash
# loomckpt export-onnx on checkpoints of the pretrain recipe (tiny GPT-2 and Llama, 3 steps each): the files pass
# onnx.checker and run in ONNX Runtime at two batch sizes and two sequence lengths (dynamic axes), a static export
# has fixed input dims, and a bad --seq is an error that names it.
# Usage: export_onnx_e2e.sh PRETRAIN LOOMCKPT SOURCE_DIR WORK_DIR. Exit 0 pass, 1 fail.
set -uo pipefail
pretrain=$1 loomckpt=$2 src=$3 work=$4/export_onnx_e2e
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
export OMP_NUM_THREADS=1
py=$src/.venv/bin/python
[[ -x $py ]] || { echo "FAIL: $py is missing: run scripts/setup.sh" >&2; exit 1; }
fail() { echo "FAIL: $*" >&2; for f in "$work"/*.log; do echo "---- $f" >&2; tail -n 30 "$f" >&2; done; exit 1; }

for family in gpt2 llama; do
  "$pretrain" --config "$src/configs/tiny_cpu.yaml" --set model.family=$family --set model.n_embd=64 \
    --set model.seq_len=32 --set training.global_batch_tokens=256 --set training.micro_batch=8 \
    --set training.steps=3 --set training.warmup_steps=1 --set logging.eval_interval=0 \
    --set checkpoint.dir="$work/$family" > pretrain_$family.log 2>&1 || fail "pretrain $family: exit $?"
  "$loomckpt" export-onnx "$work/$family" $family.onnx --batch dynamic --seq dynamic > export_$family.log 2>&1 ||
    fail "loomckpt export-onnx $family: exit $?"
  "$py" - $family.onnx 64 dynamic <<'PY' > check_$family.log 2>&1 || fail "ORT check of $family.onnx"
import sys, numpy as np, onnx, onnxruntime as ort
path, vocab = sys.argv[1], int(sys.argv[2])
m = onnx.load(path)
onnx.checker.check_model(m, full_check=True)
dims = [d.dim_param or d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
assert dims == ["batch", "seq"], dims
s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
for B, T in [(1, 5), (3, 17)]:
    y = s.run(["logits"], {"input_ids": np.random.default_rng(0).integers(0, vocab, (B, T))})[0]
    assert y.shape == (B, T, vocab) and np.isfinite(y).all(), y.shape
    print("ok", B, T, y.shape)
PY
done
# A static export: fixed dims in the graph's input.
"$loomckpt" export-onnx "$work/gpt2" static.onnx --batch 2 --seq 8 > export_static.log 2>&1 || fail "static export"
"$py" -c "
import onnx; m = onnx.load('static.onnx'); onnx.checker.check_model(m)
d = [x.dim_value for x in m.graph.input[0].type.tensor_type.shape.dim]; assert d == [2, 8], d" > check_static.log 2>&1 ||
  fail "static.onnx should have input dims [2, 8]"
# Errors: a bad size names the flag; a sequence longer than the model's names seq_len.
"$loomckpt" export-onnx "$work/gpt2" bad.onnx --seq banana > bad.log 2>&1 && fail "--seq banana exited 0"
grep -q -- "--seq" bad.log || fail "the error for --seq banana does not name --seq"
"$loomckpt" export-onnx "$work/gpt2" bad.onnx --seq 999 > bad2.log 2>&1 && fail "--seq 999 exited 0"
grep -q "seq_len" bad2.log || fail "the error for --seq 999 does not name seq_len"
echo "PASS"
