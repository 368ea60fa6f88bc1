#!/usr/bin/env bash
# End-to-end tests of `loomdata tokenize` and of checkpoints written before JSON moved to nlohmann-json.
# Usage: loomdata_e2e.sh CASE LOOMDATA PRETRAIN SOURCE_DIR WORK_DIR
# Cases:
#   pretrain        tokenize a JSON-lines corpus (2 threads, several shards, a val split), then pretrain trains on the
#                   shards as they are: the loss falls.
#   cli             --help (loomdata's and pretrain's) has the example footer; a usage error exits 2; a corrupt line exits 1 naming file:line;
#                   --skip-bad counts it; a run stopped abruptly (after its 2nd shard) and run again gives the same
#                   bytes as an uninterrupted run; a finished directory is left alone.
#   old_checkpoint  pretrain resumes from a checkpoint that main d199872 (hand-written JSON) wrote.
# Exit 0 pass, 1 fail.
set -uo pipefail

case_name=$1 loomdata=$2 pretrain=$3 src=$4 work=$5/loomdata_e2e_$1
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
export OMP_NUM_THREADS=1 LOOM_STORE_SECRET=loomdata-e2e
python=$src/.venv/bin/python

fail() {
  echo "FAIL ($case_name): $*" >&2
  for f in "$work"/*.log; do
    [[ -f $f ]] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

# A corpus of JSON lines: the GPL's paragraphs and README.md's, each a document, 4 times over in shuffled order.
make_corpus() {
  [[ -x $python ]] || fail "$python is missing: run scripts/setup.sh"
  "$python" "$src/tests/data/make_tiny_tokenizer.py" tokenizer.json 400 /usr/share/common-licenses/GPL-3 \
    "$src/README.md" || fail "could not make the test tokenizer"
  "$python" - "$src/README.md" > corpus.jsonl <<'PY' || fail "could not make the corpus"
import json, random, sys
paras = []
for path in ["/usr/share/common-licenses/GPL-3", sys.argv[1]]:
    paras += [p for p in open(path, encoding="utf-8").read().split("\n\n") if p.strip()]
rng = random.Random(0)
for i in range(4):
    rng.shuffle(paras)
    for p in paras:
        print(json.dumps({"text": p, "source": "test"}))
PY
}

case $case_name in
pretrain)
  make_corpus
  "$loomdata" tokenize --tokenizer tokenizer.json --out shards --shard-tokens 40000 --val-fraction 0.05 \
    --threads 2 corpus.jsonl > tokenize.log 2>&1 || fail "loomdata: exit $?"
  grep -q "documents, .* tokens (uint16, vocabulary 400) in [0-9]* shards" tokenize.log || fail "no summary line"
  ls shards/train_000001.bin shards/val_000000.bin > /dev/null || fail "expected 2+ train shards and a val shard"
  "$pretrain" --config "$src/configs/tiny_cpu.yaml" --set model.vocab_size=400 --set model.n_embd=64 \
    --set model.seq_len=64 --set training.global_batch_tokens=1024 --set training.micro_batch=8 \
    --set training.steps=60 --set training.warmup_steps=5 --set logging.interval=10 --set logging.eval_interval=30 \
    --set logging.eval_sequences=16 --set checkpoint.dir="$work/run" --set data.source=llmc \
    --set "data.train_path=$work/shards/train_*.bin" --set "data.val_path=$work/shards/val_*.bin" \
    > pretrain.log 2>&1 || fail "pretrain: exit $?"
  # Mean of the first 5 logged losses against the last 5: the model learns the corpus (ln 400 = 6.0 at the start).
  awk 'match($0, /"loss":[0-9.eE+-]+/) { l[++n] = substr($0, RSTART + 7, RLENGTH - 7) } END {
         if (n < 20) { print "only " n " steps"; exit 1 }
         for (i = 1; i <= 5; i++) { a += l[i]; b += l[n - 5 + i] }
         a /= 5; b /= 5; printf "loss %.3f -> %.3f\n", a, b; exit !(b < a - 0.5) }' run/metrics.jsonl ||
    fail "the loss did not fall by 0.5 nats on the prepared shards"
  grep -q '"eval_loss"' run/metrics.jsonl || fail "no eval loss from the val shards"
  ;;
cli)
  make_corpus
  "$loomdata" --help > help.log 2>&1 || fail "--help: exit $?"
  grep -q "^Example:" help.log || fail "--help has no example footer"
  "$pretrain" --help > help_pretrain.log 2>&1 || fail "pretrain --help: exit $?"
  grep -q "^Example:" help_pretrain.log || fail "pretrain --help has no example footer"
  "$pretrain" --config x.yaml --bogus > /dev/null 2> bogus.log
  [[ $? -eq 2 ]] || fail "pretrain with an unknown option should exit 2"
  grep -q -- "--bogus" bogus.log || fail "pretrain's usage error does not name --bogus"
  "$loomdata" tokenize --help > help2.log 2>&1 || fail "tokenize --help: exit $?"
  for opt in --tokenizer --out --shard-tokens --val-fraction --skip-bad --threads; do
    grep -q -- "$opt" help2.log || fail "tokenize --help does not list $opt"
  done
  "$loomdata" tokenize --tokenizer tokenizer.json corpus.jsonl > usage.log 2>&1
  [[ $? -eq 2 ]] || fail "a missing --out should exit 2"
  grep -q -- "--out" usage.log || fail "the usage error does not name --out"
  printf '{"text": "fine"}\n{"text": "broken\n{"text": "fine again"}\n' > bad.jsonl
  "$loomdata" tokenize --tokenizer tokenizer.json --out bad bad.jsonl > bad.log 2>&1
  [[ $? -eq 1 ]] || fail "a corrupt line should exit 1"
  grep -q "bad.jsonl:2" bad.log || fail "the error does not name bad.jsonl:2"
  "$loomdata" tokenize --tokenizer tokenizer.json --out bad --skip-bad bad.jsonl > skip.log 2>&1 ||
    fail "--skip-bad: exit $?"
  grep -q "skipped 1 bad lines" skip.log || fail "--skip-bad does not count the bad line"
  grep -q "2 documents" skip.log || fail "--skip-bad should keep the 2 good documents"
  # Stopped abruptly right after its 2nd shard was renamed into place, then run again: the same bytes as one run.
  args=(tokenize --tokenizer tokenizer.json --shard-tokens 5000 --val-fraction 0.1 --no-progress corpus.jsonl)
  "$loomdata" "${args[@]}" --out whole --threads 2 > whole.log 2>&1 || fail "exit $?"
  "$loomdata" "${args[@]}" --out cut --threads 2 --test-abort-after-shards 2 > cut.log 2>&1
  [[ $? -eq 137 ]] || fail "the run did not stop at the abort point"
  "$loomdata" "${args[@]}" --out cut --threads 1 > resume.log 2>&1 || fail "resume: exit $?"
  grep -q "resumed an interrupted run" resume.log || fail "the second run did not resume"
  for f in whole/*.bin; do cmp "$f" "cut/$(basename "$f")" || fail "cut/$(basename "$f") differs"; done
  [[ $(ls cut/*.bin | wc -l) -eq $(ls whole/*.bin | wc -l) ]] || fail "different numbers of shards"
  # A real SIGKILL once the first progress save is on disk (wherever it lands), then a rerun: the same bytes again.
  for i in 1 2 3 4 5 6 7 8; do cat corpus.jsonl; done > big.jsonl
  big=(tokenize --tokenizer tokenizer.json --shard-tokens 20000 --val-fraction 0.1 --no-progress big.jsonl)
  "$loomdata" "${big[@]}" --out big_whole --threads 2 > big_whole.log 2>&1 || fail "exit $?"
  "$loomdata" "${big[@]}" --out big_cut --threads 2 --chunk-bytes 4096 > big_cut.log 2>&1 &
  pid=$!
  for _ in $(seq 1 400); do
    grep -q '"record": [1-9]' big_cut/progress.json 2> /dev/null && break
    sleep 0.05
  done
  kill -KILL $pid 2> /dev/null && echo "killed loomdata mid-run" || echo "loomdata finished before the kill"
  wait $pid
  "$loomdata" "${big[@]}" --out big_cut --threads 1 > big_resume.log 2>&1 || fail "resume after SIGKILL: exit $?"
  for f in big_whole/*.bin; do cmp "$f" "big_cut/$(basename "$f")" || fail "big_cut/$(basename "$f") differs"; done
  [[ $(ls big_cut/*.bin | wc -l) -eq $(ls big_whole/*.bin | wc -l) ]] || fail "different numbers of shards after SIGKILL"
  "$loomdata" "${args[@]}" --out cut > again.log 2>&1 || fail "rerun: exit $?"
  grep -q "already holds a finished run" again.log || fail "a finished directory was not recognised"
  ;;
old_checkpoint)
  # Written by: pretrain (main d199872) --config configs/tiny_cpu.yaml --set model.n_layer=1 --set model.n_embd=16
  # --set model.n_head=2 --set model.seq_len=16 --set training.global_batch_tokens=64 --set training.micro_batch=4
  # --set training.steps=4 --set training.warmup_steps=1 (checkpoint at step 4).
  mkdir run && cp -r "$src/tests/checkpoint/data/main_d199872/." run/ || fail "no fixture"
  "$pretrain" --config "$src/configs/tiny_cpu.yaml" --set model.n_layer=1 --set model.n_embd=16 \
    --set model.n_head=2 --set model.seq_len=16 --set training.global_batch_tokens=64 --set training.micro_batch=4 \
    --set training.steps=6 --set training.warmup_steps=1 --set checkpoint.interval=2 --set logging.interval=1 \
    --set logging.eval_interval=0 --set checkpoint.dir="$work/run" > resume.log 2>&1 || fail "pretrain: exit $?"
  grep -q "resumed from step 4" resume.log || fail "did not resume from the old checkpoint"
  grep -q "step 6/6 | loss" resume.log || fail "no step 6"
  [[ -f run/step_00000006/metadata.json ]] || fail "no new checkpoint"
  ;;
*)
  echo "unknown case $case_name" >&2
  exit 1
  ;;
esac
echo "PASS ($case_name)"
