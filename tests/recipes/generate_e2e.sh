#!/usr/bin/env bash
# End-to-end tests of the generate program and pretrain's logging.sample_interval, on tiny models trained here on
# text (the repository's own sources, bytes as tokens) with a byte-level tokenizer of 256 tokens + <|endoftext|>.
# Usage: generate_e2e.sh CASE BUILD_DIR SOURCE_DIR
# Cases:
#   cli           train a tiny GPT-2 (samples printed every 10 steps), generate from its checkpoint: streamed text,
#                 tokens/s, greedy with the cache == without, seeded sampling reproducible, batches, bad arguments
#   torch_gpt2, torch_llama
#                 export a (one-step) model with loomckpt, generate greedily from it with --safetensors for three
#                 prompts of different lengths, and check every token is the argmax of PyTorch's logits after the same
#                 prefix and loom's logits are PyTorch's within 1e-5 (tests/recipes/generate_ref.py); --checkpoint
#                 gives the same tokens
#   sample_layouts
#                 logging.sample_interval under trainlaunch with 2 ranks as FSDP and as tensor parallelism
# Exit 0 pass, 1 fail.
set -uo pipefail
case_name=$1 bindir=$2 src=$3
work=$bindir/generate_e2e_$case_name
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
export OMP_NUM_THREADS=1 LOOM_STORE_SECRET=generate-e2e
pretrain=$bindir/recipes/pretrain generate=$bindir/recipes/generate loomckpt=$bindir/checkpoint/loomckpt
trainlaunch=$bindir/launcher/trainlaunch
python=$src/.venv/bin/python

fail() {
  echo "FAIL ($case_name): $*" >&2
  for f in "$work"/*.log "$work"/*.out "$work"/*.err; do
    [[ -f $f ]] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

# The tokenizer: every byte is its own token (rank = byte), <|endoftext|> = 256; the corpus: loom's sources.
"$python" -c "
import base64
with open('bytes.tiktoken', 'w') as f:
    for b in range(256): f.write(base64.b64encode(bytes([b])).decode() + ' ' + str(b) + '\n')
" || fail "cannot write the tokenizer with $python (run scripts/setup.sh)"
cat "$src"/nn/*.h "$src"/recipes/*.cc > corpus.txt

config() {  # config FAMILY STEPS
  cat > tiny.yaml <<YAML
model:
  family: $1
  n_layer: 2
  n_embd: 32
  n_head: 4
  n_kv_head: $([[ $1 == llama ]] && echo 2 || echo 4)
  vocab_size: 257
  seq_len: 48
data:
  source: text
  train_path: corpus.txt
training:
  global_batch_tokens: 768
  micro_batch: 16
  steps: $2
  lr: 3.0e-3
  warmup_steps: 1
checkpoint:
  dir: run
logging:
  interval: 10
YAML
}

case $case_name in
cli)
  config gpt2 20
  "$pretrain" --config tiny.yaml --set logging.sample_interval=10 --set logging.sample_tokenizer=bytes.tiktoken \
    --set logging.sample_prompt="int " --set logging.sample_tokens=16 > train.log 2>&1 || fail "pretrain: exit $?"
  [[ $(grep -c '^sample at step \(10\|20\): int ' train.log) == 2 ]] || fail "pretrain printed no sample at steps 10 and 20"
  gen=("$generate" --checkpoint run --tokenizer bytes.tiktoken)
  "${gen[@]}" --prompt "int main(" --max-new-tokens 30 --temperature 0 --ids > greedy.out 2> greedy.err ||
    fail "generate: exit $?"
  grep -q '^int main(' greedy.out || fail "the output does not start with the prompt"
  grep -q 'generate: 30 tokens in .* tokens/s' greedy.err || fail "no tokens/s line"
  grep -q 'checkpoint run/step_00000020 (step 20)' greedy.err || fail "the run directory's latest checkpoint was not used"
  "${gen[@]}" --prompt "int main(" --max-new-tokens 30 --temperature 0 --ids --no-cache > plain.out 2> plain.err ||
    fail "generate --no-cache: exit $?"
  cmp -s greedy.out plain.out || fail "greedy text with the KV cache differs from without"
  diff <(grep '^ids' greedy.err) <(grep '^ids' plain.err) || fail "greedy ids with the KV cache differ from without"
  sample=(--prompt "for (" --max-new-tokens 40 --temperature 0.9 --top-k 20 --top-p 0.95)
  "${gen[@]}" "${sample[@]}" --seed 7 > s1.out 2> /dev/null || fail "sampling: exit $?"
  "${gen[@]}" "${sample[@]}" --seed 7 > s2.out 2> /dev/null || fail "sampling: exit $?"
  cmp -s s1.out s2.out || fail "the same seed gave different samples"
  "${gen[@]}" "${sample[@]}" --seed 8 > s3.out 2> /dev/null || fail "sampling: exit $?"
  cmp -s s1.out s3.out && fail "seeds 7 and 8 gave the same sample"
  # A batch: two prompts of different lengths, two samples each, with the cache and without: the same text.
  batch=(--prompt "x" --prompt "static void f(int a) {" --num-samples 2 --max-new-tokens 12 --temperature 0.8 --seed 3)
  "${gen[@]}" "${batch[@]}" > b1.out 2> b1.err || fail "batch: exit $?"
  "${gen[@]}" "${batch[@]}" --no-cache > b2.out 2> b2.err || fail "batch --no-cache: exit $?"
  [[ $(grep -c '^=== sample [1-4] (prompt [12]) ===' b1.out) == 4 ]] || fail "expected 4 sample blocks"
  cmp -s b1.out b2.out || fail "batched sampling with the cache differs from without"
  # Streaming holds back split UTF-8 characters but prints every byte: stdout is the prompt, then the bytes of the
  # generated ids (this tokenizer: id = byte). A high temperature makes bytes >= 0x80 (split characters) likely.
  "${gen[@]}" --prompt "é✓ " --max-new-tokens 40 --temperature 3 --seed 5 --ids > u.out 2> u.err ||
    fail "utf-8: exit $?"
  "$python" -c "
import sys
ids = [int(t) for t in open('u.err').read().split('ids 0:')[1].split('\n')[0].split('|')[1].split()]
want = 'é✓ '.encode() + bytes(i for i in ids if i < 256) + b'\n'
got = open('u.out', 'rb').read()
assert any(i >= 0x80 for i in ids), 'no byte >= 0x80 was sampled: the check would be weak'
sys.exit(0 if got == want else 'streamed %r, expected %r' % (got, want))" || fail "streamed bytes differ from the ids"
  # Bad arguments: exit 2 with a message naming the option, or 1 naming the file / limit.
  expect() {  # expect RC PATTERN ARGS...
    local rc=$1 pat=$2
    shift 2
    "$@" > bad.out 2> bad.err
    local got=$?
    [[ $got == "$rc" ]] || fail "$* exited $got, expected $rc: $(cat bad.err)"
    grep -q -- "$pat" bad.err || fail "$* did not say '$pat': $(cat bad.err)"
  }
  expect 2 "tokenizer is required" "$generate" --checkpoint run --prompt x
  expect 2 "excludes" "$generate" --checkpoint run --safetensors x.safetensors --tokenizer bytes.tiktoken --prompt x
  expect 2 "checkpoint or --safetensors" "$generate" --tokenizer bytes.tiktoken --prompt x
  expect 2 "at least one prompt" "$generate" --checkpoint run --tokenizer bytes.tiktoken
  expect 2 "top-p" "$generate" --checkpoint run --tokenizer bytes.tiktoken --prompt x --top-p 0
  expect 2 "temperature" "$generate" --checkpoint run --tokenizer bytes.tiktoken --prompt x --temperature -1
  expect 1 "nowhere: neither a checkpoint" "$generate" --checkpoint nowhere --tokenizer bytes.tiktoken --prompt x
  expect 1 "exceeds the model's context of 48" "$generate" --checkpoint run --tokenizer bytes.tiktoken \
    --prompt "0123456789" --max-new-tokens 40
  expect 1 "no config.json beside it" "$generate" --safetensors corpus.txt --tokenizer bytes.tiktoken --prompt x
  ;;
torch_gpt2 | torch_llama)
  family=${case_name#torch_}
  config "$family" 1
  "$pretrain" --config tiny.yaml > train.log 2>&1 || fail "pretrain: exit $?"
  "$loomckpt" export run model.safetensors > export.log 2>&1 || fail "loomckpt export: exit $?"
  if [[ $family == gpt2 ]]; then
    echo '{"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 4, "vocab_size": 257, "n_positions": 48}' \
      > config.json
  else
    echo '{"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 257, "max_position_embeddings": 48,
      "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": false}' > config.json
  fi
  prompts=(--prompt "a" --prompt "int main(void) {" --prompt "return x;")
  "$generate" --safetensors model.safetensors --tokenizer bytes.tiktoken "${prompts[@]}" --max-new-tokens 16 \
    --temperature 0 --ids --dump-logits logits.f32 > st.out 2> st.err || fail "generate --safetensors: exit $?"
  [[ $(grep -c '^ids' st.err) == 3 ]] || fail "expected 3 ids lines"
  "$python" "$src/tests/recipes/generate_ref.py" model.safetensors config.json st.err logits.f32 > ref.log 2>&1 ||
    fail "$(cat ref.log)"
  cat ref.log
  "$generate" --checkpoint run --tokenizer bytes.tiktoken "${prompts[@]}" --max-new-tokens 16 --temperature 0 \
    --ids > ck.out 2> ck.err || fail "generate --checkpoint: exit $?"
  diff <(grep '^ids' st.err) <(grep '^ids' ck.err) || fail "--checkpoint and --safetensors generated different tokens"
  ;;
sample_layouts)
  config llama 4
  for layout in fsdp tp; do
    "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config tiny.yaml --set checkpoint.dir= \
      --set parallelism.$layout=2 --set training.micro_batch=8 --set model.vocab_size=258 \
      --set logging.sample_interval=2 --set logging.sample_tokenizer=bytes.tiktoken --set logging.sample_tokens=8 \
      > $layout.log 2>&1 || fail "pretrain with $layout=2: exit $?"
    [[ $(grep -ac "sample at step [24]: " $layout.log) == 2 ]] || fail "$layout: expected samples at steps 2 and 4"
  done
  ;;
*)
  fail "unknown case"
  ;;
esac
echo "PASS ($case_name)"
