#!/usr/bin/env bash
# End-to-end tests of the pretrain recipe on the tiny CPU config, shrunk so each case takes seconds.
# Usage: pretrain_e2e.sh CASE PRETRAIN TRAINLAUNCH SOURCE_DIR WORK_DIR
# Cases: main_job, one_rank, two_ranks, resume, hsdp_resume, sigterm, sigterm_group, layouts, activation_checkpointing, straggler, slurm_script, slurm_port_taken, config_error, validate, plot, trace,
# init_from, init_from_hf, freeze. Exit 0 pass, 1 fail, 77 skipped.
set -uo pipefail

case_name=$1 pretrain=$2 trainlaunch=$3 src=$4 bindir=$5 work=$5/pretrain_e2e_$1
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
export OMP_NUM_THREADS=1 LOOM_STORE_SECRET=pretrain-e2e
config=$src/configs/tiny_cpu.yaml
# The tiny job at a quarter of its size: 2 ranks x 8 sequences x 64 tokens per step.
small=(--set model.n_embd=64 --set model.seq_len=64 --set training.global_batch_tokens=1024
       --set training.warmup_steps=10 --set logging.interval=10 --set checkpoint.dir="$work/run")

fail() {
  echo "FAIL ($case_name): $*" >&2
  for f in "$work"/*.log; do
    [[ -f $f ]] && { echo "---- $f (last 40 lines)" >&2; tail -n 40 "$f" >&2; }
  done
  exit 1
}

# Column of a metrics file: "step value" for each line that has the key.
column() {  # column FILE KEY
  awk -v key="$2" '{ if (match($0, "\"" key "\":-?[0-9.eE+-]+")) { m = substr($0, RSTART, RLENGTH);
                     sub(/^"[^"]*":/, "", m); match($0, /"step":[0-9]+/); s = substr($0, RSTART + 7, RLENGTH - 7);
                     print s, m } }' "$1"
}

# The loss must fall: mean of the last 5 logged losses at least `drop` nats below the mean of the first 5.
loss_falls() {  # loss_falls METRICS DROP
  column "$1" loss | awk -v drop="$2" '{ l[NR] = $2 } END {
      if (NR < 10) { print "only " NR " steps logged"; exit 1 }
      for (i = 1; i <= 5; i++) { a += l[i]; b += l[NR - 5 + i] }
      a /= 5; b /= 5; printf "loss %.4f -> %.4f over %d steps\n", a, b, NR
      exit !(b < a - drop) }'
}

steps_of() { column "$1" loss | awk '{ printf "%s ", $1 }'; }

case $case_name in
main_job)
  # The README's main job exactly as written (from a fresh directory): the loss falls by more than 2 nats, the
  # held-out loss ends below 2, checkpoints land in runs/tiny_cpu, and the same command again has nothing to do.
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" > main.log 2>&1 || fail "exit $?"
  loss_falls runs/tiny_cpu/metrics.jsonl 2.0 || fail "the loss did not fall by 2 nats"
  column runs/tiny_cpu/metrics.jsonl eval_loss | tail -1 | awk '{ exit !($2 < 2.0) }' ||
    fail "final eval loss $(column runs/tiny_cpu/metrics.jsonl eval_loss | tail -1) is not below 2"
  [[ -d runs/tiny_cpu/step_00000400 ]] || fail "no final checkpoint in runs/tiny_cpu"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" > again.log 2>&1 || fail "rerun: exit $?"
  grep -q "all 400 steps are done" again.log || fail "the rerun did not say all steps are done"
  ;;
init_from)
  # A run started from a safetensors file: train, export with loomckpt (Hugging Face names), start a fresh run from
  # the export; its first loss is near the trained model's (~2.7), not a random init's (ln 64 = 4.16).
  "$pretrain" --config "$config" "${small[@]}" --set training.steps=120 > first.log 2>&1 || fail "exit $?"
  "$bindir/checkpoint/loomckpt" export run model.safetensors > export.log 2>&1 || fail "loomckpt export: exit $?"
  "$pretrain" --config "$config" "${small[@]}" --set checkpoint.dir="$work/run2" --set training.steps=3 \
    --set training.warmup_steps=0 --set logging.interval=1 --set model.init_from="$work/model.safetensors" > second.log 2>&1 || fail "exit $?"
  grep -q "initial weights: $work/model.safetensors" second.log || fail "no 'initial weights' line"
  trained=$(column run/metrics.jsonl loss | tail -1 | awk '{ print $2 }')
  first=$(column run2/metrics.jsonl loss | head -1 | awk '{ print $2 }')
  awk -v a="$first" -v t="$trained" 'BEGIN { exit !(a < 3.6 && a < t + 0.5) }' ||
    fail "first loss from the export is $first (trained model ended at $trained; random init gives 4.16)"
  # Resuming run2 uses its checkpoint, not the file.
  "$pretrain" --config "$config" "${small[@]}" --set checkpoint.dir="$work/run2" --set training.steps=4 \
    --set training.warmup_steps=0 --set model.init_from="$work/model.safetensors" > third.log 2>&1 || fail "exit $?"
  grep -q "not used: the run resumes" third.log || fail "the resumed run should ignore model.init_from"
  # A missing file is an error naming it.
  "$pretrain" --config "$config" "${small[@]}" --set checkpoint.dir="$work/run3" --set training.steps=3 \
    --set training.warmup_steps=0 --set model.init_from="$work/missing.safetensors" > missing.log 2>&1 && fail "a missing init_from file succeeded"
  grep -q "missing.safetensors" missing.log || fail "the error does not name the missing file"
  ;;
init_from_hf)
  # model.init_from a Hugging Face GPT-2 directory as transformers writes it (config.json, 3 bf16 shards + index,
  # Conv1D weights; tests/checkpoint/make_hf_model.py): one rank and FSDP(2) (each rank reading its shards from the
  # file) start from the same first loss; a recipe that differs from config.json is an error naming the key; `loomckpt
  # import` makes a step-0 checkpoint that verifies and that pretrain resumes from (1 rank and FSDP(2)) with that loss.
  py=$src/.venv/bin/python
  [[ -x $py ]] || fail "$py is missing: run scripts/setup.sh"
  "$py" "$src/tests/checkpoint/make_hf_model.py" hf --family gpt2 --n-embd 64 --n-layer 2 --n-head 4 --vocab 64 \
    --seq 64 --shards 3 --dtype bf16 --seed 7 > make.log 2>&1 || fail "make_hf_model.py: exit $?"
  sed -e 's/^  n_embd: 128/  n_embd: 64/' -e 's/^  seq_len: 128/  seq_len: 64/' "$config" > small.yaml
  run=(--config small.yaml --set training.global_batch_tokens=1024 --set training.warmup_steps=0 --set logging.interval=1
       --set training.steps=2)
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/one" --set model.init_from="$work/hf" > one.log 2>&1 || fail "one rank: exit $?"
  grep -q "initial weights: $work/hf (config.json matches the model" one.log || fail "no 'initial weights' line naming the check"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" "${run[@]}" --set parallelism.fsdp=2 \
    --set checkpoint.dir="$work/fsdp" --set model.init_from="$work/hf" > fsdp.log 2>&1 || fail "fsdp: exit $?"
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/rand" > rand.log 2>&1 || fail "random init: exit $?"
  first() { column "$1" loss | head -1 | awk '{ print $2 }'; }
  a=$(first one/metrics.jsonl) b=$(first fsdp/metrics.jsonl) r=$(first rand/metrics.jsonl)
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a != "" && d <= 1e-5 * a) }' ||
    fail "first loss from the file: one rank $a, FSDP(2) $b"
  awk -v a="$a" -v r="$r" 'BEGIN { d = a - r; if (d < 0) d = -d; exit !(d > 0.01) }' ||
    fail "first loss $a is the random init's ($r): the weights were not loaded"
  echo "first loss from the HF file: one rank $a, FSDP(2) $b (random init $r)"
  # Each FSDP rank read its half of the file's tensor data, one rank all of it.
  whole=$(sed -n 's/.*initial weights: .* read \([0-9]*\) bytes.*/\1/p' one.log)
  part=$(sed -n 's/.*initial weights: .* read \([0-9]*\) bytes.*/\1/p' fsdp.log)
  awk -v w="$whole" -v p="$part" 'BEGIN { exit !(w > 0 && p > 0 && p <= 0.55 * w) }' ||
    fail "FSDP rank 0 read ${part:-?} bytes of the file's ${whole:-?}: more than its shard"
  # The recipe says 3 layers, the file 2: an error naming config.json, the key and both values, on both layouts.
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/bad" --set model.n_layer=3 --set model.init_from="$work/hf" \
    > bad.log 2>&1 && fail "a model of 3 layers loaded a 2-layer file"
  grep -q "hf/config.json: n_layer is 2, the model's n_layer is 3 (recipe key model.n_layer)" bad.log ||
    fail "the mismatch error does not name the key: $(tail -2 bad.log)"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" "${run[@]}" --set parallelism.fsdp=2 \
    --set checkpoint.dir="$work/bad2" --set model.n_layer=3 --set model.init_from="$work/hf" > bad2.log 2>&1 &&
    fail "FSDP(2): a model of 3 layers loaded a 2-layer file"
  grep -q "n_layer is 2" bad2.log || fail "FSDP(2): the mismatch error does not name the key"
  # A norm epsilon other than the family's: a mismatch naming model.norm_eps, which then makes it load.
  "$py" "$src/tests/checkpoint/make_hf_model.py" hf_eps --family gpt2 --n-embd 64 --n-layer 2 --n-head 4 --vocab 64 \
    --seq 64 --config-set layer_norm_epsilon=1e-6 > make_eps.log 2>&1 || fail "make_hf_model.py (eps): exit $?"
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/eps" --set model.init_from="$work/hf_eps" > eps.log 2>&1 &&
    fail "a LayerNorm epsilon of 1e-6 loaded into a model of 1e-5"
  grep -q "layer_norm_epsilon is 1e-06, the model's LayerNorm epsilon is 1e-05 (recipe key model.norm_eps)" eps.log ||
    fail "the epsilon mismatch does not name the key: $(tail -2 eps.log)"
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/eps2" --set model.norm_eps=1e-6 \
    --set model.init_from="$work/hf_eps" > eps2.log 2>&1 || fail "model.norm_eps=1e-6: exit $?"
  # loomckpt import: with the recipe (checked against config.json) and without (the model from config.json).
  ckpt=$bindir/checkpoint/loomckpt
  "$ckpt" import hf imported --config small.yaml > import.log 2>&1 || fail "loomckpt import: exit $?"
  grep -q "config.json matches" import.log || fail "loomckpt import did not check config.json: $(cat import.log)"
  "$ckpt" verify imported > verify.log 2>&1 || fail "loomckpt verify of the import: exit $?"
  "$ckpt" import hf/model.safetensors.index.json imported2 > import2.log 2>&1 || fail "loomckpt import (index): exit $?"
  "$ckpt" verify imported2 > verify2.log 2>&1 || fail "loomckpt verify of the second import: exit $?"
  sed -e 's/^  n_layer: 2/  n_layer: 3/' small.yaml > bad.yaml
  "$ckpt" import hf imported3 --config bad.yaml > import3.log 2>&1 && fail "loomckpt import into a 3-layer recipe"
  grep -q "n_layer is 2" import3.log || fail "loomckpt import's mismatch error does not name the key"
  cp -r imported imported_fsdp
  "$pretrain" "${run[@]}" --set checkpoint.dir="$work/imported" > resume.log 2>&1 || fail "resume from the import: exit $?"
  grep -q "resumed from step 0" resume.log || fail "pretrain did not resume from the imported checkpoint"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" "${run[@]}" --set parallelism.fsdp=2 \
    --set checkpoint.dir="$work/imported_fsdp" > resume_fsdp.log 2>&1 || fail "FSDP(2) resume from the import: exit $?"
  c=$(first imported/metrics.jsonl) d=$(first imported_fsdp/metrics.jsonl)
  awk -v a="$a" -v c="$c" -v d="$d" 'BEGIN { x = a - c; y = a - d; if (x < 0) x = -x; if (y < 0) y = -y;
                                             exit !(c != "" && x <= 1e-5 * a && y <= 1e-5 * a) }' ||
    fail "first loss after resuming the import: one rank $c, FSDP(2) $d; init_from gave $a"
  ;;
freeze)
  # model.freeze on 2 FSDP ranks (frozen and trainable parameters in every unit): the frozen embeddings (and the tied
  # head) and first block are bit for bit the same after steps 1 and 6 (AdamW's weight decay alone would move them
  # every step), everything else trains; the checkpoint holds them but optimizer state only for trainable parameters;
  # the run resumes from it. Globs that match nothing or freeze everything are config errors naming key and numbers.
  run=("$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}"
       --set parallelism.fsdp=2 --set checkpoint.interval=1 --set checkpoint.keep_last=10
       --set training.warmup_steps=0 --set 'model.freeze=[transformer.wte.*, transformer.h.0.*]')
  "${run[@]}" --set training.steps=6 > freeze.log 2>&1 || fail "exit $?"
  grep -Eq "model.freeze: [0-9]+ trainable parameters \([0-9]+ elements\), [0-9]+ frozen \([0-9]+ elements\)" freeze.log ||
    fail "no line counting trainable and frozen parameters"
  "$bindir/checkpoint/loomckpt" export run/step_00000001 s1.safetensors > export1.log 2>&1 || fail "export step 1: exit $?"
  "$bindir/checkpoint/loomckpt" export run/step_00000006 s6.safetensors > export6.log 2>&1 || fail "export step 6: exit $?"
  /usr/bin/python3 - s1.safetensors s6.safetensors > compare.log 2>&1 << 'PY' || fail "frozen/trainable check: $(tail -3 compare.log)"
import json, re, struct, sys
def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    return {k: data[v["data_offsets"][0]:v["data_offsets"][1]] for k, v in header.items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
frozen = re.compile(r"(^|\.)(wte|h\.0)\.")
nf = nt = 0
for name in a:
    if frozen.search(name):
        nf += 1
        if a[name] != b[name]: sys.exit(f"frozen {name} changed between steps 1 and 6")
    else:
        nt += 1
        if a[name] == b[name]: sys.exit(f"trainable {name} did not change between steps 1 and 6")
if nf == 0 or nt == 0: sys.exit(f"{nf} frozen and {nt} trainable tensors: the names are not what the test expects")
print(f"{nf} frozen tensors unchanged, {nt} trainable ones changed")
PY
  md=run/step_00000006/metadata.json
  grep -q '"model/transformer.wte.weight"' $md || fail "the checkpoint lacks the frozen embedding"
  grep -q '"model/transformer.h.0.mlp.c_fc.weight"' $md || fail "the checkpoint lacks a frozen block weight"
  grep -q '"optim/exp_avg/transformer.wte.weight"' $md && fail "the checkpoint has optimizer state for a frozen parameter"
  grep -q '"optim/exp_avg/transformer.h.0.ln_1.weight"' $md && fail "the checkpoint has optimizer state for a frozen parameter"
  grep -q '"optim/exp_avg/transformer.h.1.mlp.c_fc.weight"' $md || fail "no optimizer state for a trainable parameter"
  "${run[@]}" --set training.steps=8 > resume.log 2>&1 || fail "resume: exit $?"
  grep -q "resumed from step 6" resume.log || fail "the run did not resume from step 6"
  "$pretrain" --config "$config" "${small[@]}" --set training.steps=1 --set training.warmup_steps=0 --set checkpoint.dir="$work/bad" \
    --set 'model.freeze=[transformer.wte.*, transformer.h.*.mlp.x]' > nomatch.log 2>&1
  rc=$?
  [[ $rc -eq 2 ]] || fail "a glob matching nothing: exit $rc, expected 2"
  grep -q "model.freeze\[1\] 'transformer.h.\*.mlp.x' matches none of the 28 parameters; names look like transformer.h.0.mlp.c_fc.weight" nomatch.log ||
    fail "the error does not name the glob, the count and a similar name: $(tail -1 nomatch.log)"
  "$pretrain" --config "$config" "${small[@]}" --set training.steps=1 --set training.warmup_steps=0 \
    --set checkpoint.dir="$work/bad" --set 'model.freeze=["*"]' > all.log 2>&1
  rc=$?
  [[ $rc -eq 2 ]] || fail "freezing everything: exit $rc, expected 2"
  grep -Eq "model.freeze freezes all 28 trainable parameters \([0-9]+ elements\); nothing would train" all.log ||
    fail "the error does not say everything is frozen: $(tail -1 all.log)"
  ;;
one_rank)
  "$pretrain" --config "$config" "${small[@]}" --set training.steps=80 > one.log 2>&1 || fail "exit $?"
  loss_falls run/metrics.jsonl 0.5 || fail "the loss did not fall by 0.5 nats"
  [[ $(wc -l < run/metrics.jsonl) -eq 80 ]] || fail "expected 80 metrics lines"
  grep -q "2 micro-steps" one.log || fail "one rank should accumulate the 2-rank global batch in 2 micro-steps"
  grep -q "step 80/80 | loss" one.log || fail "no console line for the last step"
  grep -q '"eval_loss"' run/metrics.jsonl || fail "no eval loss in the metrics"
  [[ -d run/step_00000080 ]] || fail "no final checkpoint step_00000080"
  # On a terminal (script(1) gives it one): a progress bar redrawn in place with \r; in a file: no bar.
  grep -q $'\r' one.log && fail "progress bar escapes in a log file"
  if command -v script > /dev/null; then
    script -qec "'$pretrain' --config '$config' ${small[*]} --set checkpoint.dir=$work/tty --set training.steps=12" \
      /dev/null > tty.log 2>&1 || fail "run on a terminal: exit $?"
    grep -q $'\r\e\\[K\\[#' tty.log || fail "no progress bar on a terminal"
  fi
  ;;
two_ranks)
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set training.steps=80 > two.log 2>&1 || fail "exit $?"
  loss_falls run/metrics.jsonl 0.5 || fail "the loss did not fall by 0.5 nats"
  grep -q "slowest r[01]" two.log || fail "no per-rank step times in the console line"
  grep -q '"step_time_by_rank":\[[0-9.e-]*,[0-9.e-]*\]' run/metrics.jsonl || fail "metrics lack both ranks' step times"
  grep -q "1 micro-step of 8 x 64" two.log || fail "2 ranks should not accumulate"
  ;;
resume)
  # A 40-step run with checkpoints at 20 and 40, then the same run resumed from step 20: steps 21..40 must repeat
  # bit for bit (model, optimizer, schedule, data position and RNGs all restored).
  run=("$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}"
       --set checkpoint.interval=20)
  "${run[@]}" --set training.steps=40 > first.log 2>&1 || fail "first run: exit $?"
  cp run/metrics.jsonl straight.jsonl
  "${run[@]}" --set training.steps=40 --set checkpoint.resume=step_00000020 > again.log 2>&1 || fail "rerun: exit $?"
  grep -q "resumed from step 20" again.log || fail "the rerun did not say it resumed from step 20"
  [[ "$(steps_of run/metrics.jsonl)" == "$(steps_of straight.jsonl)" ]] || fail "metrics steps do not continue 1..40"
  diff <(column straight.jsonl loss) <(column run/metrics.jsonl loss) > loss.diff ||
    fail "losses of steps 21..40 differ after resuming: $(head -4 loss.diff)"
  # More steps: resumes from the latest (40) and goes on to 50.
  "${run[@]}" --set training.steps=50 > more.log 2>&1 || fail "longer run: exit $?"
  grep -q "resumed from step 40" more.log || fail "the longer run did not resume from step 40"
  [[ "$(steps_of run/metrics.jsonl)" == "$(seq -s ' ' 1 50) " ]] || fail "metrics steps are not 1..50"
  # Everything done: says so and exits 0 without training.
  "${run[@]}" --set training.steps=50 > done.log 2>&1 || fail "rerun of a finished job: exit $?"
  grep -q "all 50 steps are done" done.log || fail "a finished job's rerun did not say all steps are done"
  # Another layout: the 2-rank DDP checkpoint goes on as one process, then as 2-rank FSDP.
  "$pretrain" --config "$config" "${small[@]}" --set training.steps=55 > one.log 2>&1 || fail "1-rank resume: exit $?"
  grep -q "resumed from step 50 .*saved on 2 data-parallel ranks" one.log || fail "1 rank did not resume from step 50"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set parallelism.fsdp=2 --set training.steps=60 > fsdp.log 2>&1 || fail "FSDP resume: exit $?"
  grep -q "resumed from step 55 .*saved on 1 data-parallel rank" fsdp.log || fail "FSDP did not resume from step 55"
  [[ "$(steps_of run/metrics.jsonl)" == "$(seq -s ' ' 1 60) " ]] || fail "metrics steps are not 1..60"
  ;;
hsdp_resume)
  # Hybrid sharding (dp 2 x fsdp 2, 4 ranks) straight to step 40; its step-20 checkpoint resumed as FSDP over 4 ranks,
  # and that run's step-30 checkpoint resumed as DDP over 2 ranks (each to step 40: the cosine schedule depends on
  # training.steps). A resumed run starts at the saved step and data position with the saved weights, AdamW moments
  # and schedule: its losses follow the straight run's (same batches; only the order of f32 additions differs).
  hs=(--set training.global_batch_tokens=2048 --set logging.eval_interval=0 --set checkpoint.interval=10
      --set checkpoint.keep_last=4 --set training.steps=40)
  "$trainlaunch" --standalone --nproc-per-node 4 -- "$pretrain" --config "$config" "${small[@]}" "${hs[@]}" \
    --set parallelism.dp=2 --set parallelism.fsdp=2 --set checkpoint.dir="$work/straight" > hsdp.log 2>&1 ||
    fail "HSDP run: exit $?"
  grep -q "DeviceMesh(dp=2, fsdp=2)" hsdp.log || fail "dp=2 fsdp=2 did not build a dp x fsdp mesh"
  grep -q '"layout": *"hsdp"' straight/step_00000020/metadata.json || fail "the checkpoint's layout is not hsdp"
  # The replicas hold identical shards: between them every element of every tensor is written exactly once.
  if command -v python3 > /dev/null; then
    python3 - straight/step_00000020/metadata.json > pieces.log 2>&1 << 'PY' || fail "HSDP checkpoint pieces: $(cat pieces.log)"
import json, math, sys
md = json.load(open(sys.argv[1]))
for name, t in md["tensors"].items():
    n = math.prod(t["shape"])
    seen = sorted(tuple(p["flat_range"]) for p in t["pieces"])  # one box per tensor here (no tp)
    pos = 0
    for b, e in seen:
        if b != pos: sys.exit(f"{name}: pieces {seen} do not tile [0, {n}) once")
        pos = e
    if pos != n: sys.exit(f"{name}: pieces {seen} do not tile [0, {n}) once")
    if len({p["file"] for p in t["pieces"]}) < min(len(t["pieces"]), 2) and n >= 4:
        sys.exit(f"{name}: written by one rank only")
print("every tensor's pieces tile it once")
PY
  fi
  "$trainlaunch" --standalone --nproc-per-node 4 -- "$pretrain" --config "$config" "${small[@]}" "${hs[@]}" \
    --set parallelism.fsdp=4 --set checkpoint.resume="$work/straight/step_00000020" > fsdp.log 2>&1 ||
    fail "FSDP resume: exit $?"
  grep -q "resumed from step 20 .*saved on 4 data-parallel ranks" fsdp.log || fail "FSDP did not resume from step 20"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" "${hs[@]}" \
    --set checkpoint.dir="$work/ddp" --set checkpoint.resume="$work/run/step_00000030" > ddp.log 2>&1 ||
    fail "DDP resume: exit $?"
  grep -q "resumed from step 30 .*saved on 4 data-parallel ranks" ddp.log || fail "DDP did not resume from step 30"
  [[ "$(steps_of run/metrics.jsonl)" == "$(seq -s ' ' 21 40) " ]] || fail "FSDP metrics steps are not 21..40"
  [[ "$(steps_of ddp/metrics.jsonl)" == "$(seq -s ' ' 31 40) " ]] || fail "DDP metrics steps are not 31..40"
  for resumed in run ddp; do
    awk 'NR == FNR { want[$1] = $2; next } ($1 in want) { d = $2 - want[$1]; if (d < 0) d = -d; if (d > worst) worst = d; n++ }
         END { printf "%d losses after resuming, worst |difference| from the HSDP run %.2g\n", n, worst
               exit !(n >= 10 && worst < 1e-4) }' <(column straight/metrics.jsonl loss) <(column $resumed/metrics.jsonl loss) ||
      fail "the losses resumed in $resumed/ do not continue the HSDP run's"
  done
  ;;
sigterm)
  # SIGTERM to the launcher (as Slurm sends it): the ranks agree on one step, save it and exit 0; a rerun resumes.
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set training.steps=100000 --set checkpoint.interval=0 > term.log 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    [[ -f run/metrics.jsonl && $(wc -l < run/metrics.jsonl) -ge 15 ]] && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.1
  done
  kill -TERM $pid 2> /dev/null || fail "the job ended before it was signalled"
  wait $pid
  rc=$?
  [[ $rc -eq 0 ]] || fail "trainlaunch exited $rc after SIGTERM (a clean, checkpointed stop must exit 0)"
  grep -q "stopped by" term.log || fail "no 'stopped by' line"
  n=$(sed -n 's/.*stopped by .* after step \([0-9]*\) of.*/\1/p' term.log | head -1)
  [[ -n $n ]] || fail "cannot find the step it stopped at"
  [[ -d run/$(printf 'step_%08d' "$n") ]] || fail "no checkpoint of step $n"
  grep -q "$(printf 'step_%08d' "$n")" run/latest || fail "latest does not name step $n"
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set checkpoint.interval=0 --set training.steps=$((n + 5)) > resume.log 2>&1 ||
    fail "resume: exit $?"
  grep -q "resumed from step $n " resume.log || fail "the rerun did not resume from step $n"
  [[ "$(steps_of run/metrics.jsonl)" == "$(seq -s ' ' 1 $((n + 5))) " ]] || fail "metrics steps are not 1..$((n + 5))"
  ;;
sigterm_group)
  # A process manager that signals every process of the job, several times: trainlaunch in its own process group
  # (setsid) gets SIGTERM through the group and each rank gets it directly too (as Slurm's step signal does), every
  # 50 ms until the job ends. The repeats must not cost the checkpoint: one agreed stop step, saved whole, and exit 0.
  setsid "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set training.steps=100000 --set checkpoint.interval=0 > group.log 2>&1 &
  pid=$!
  for _ in $(seq 600); do
    [[ -f run/metrics.jsonl && $(wc -l < run/metrics.jsonl) -ge 10 ]] && break
    kill -0 $pid 2> /dev/null || break
    sleep 0.1
  done
  ranks=$(pgrep -P $pid | tr '\n' ' ')
  [[ $(wc -w <<< "$ranks") -eq 2 ]] || fail "expected 2 rank processes under trainlaunch, found: $ranks"
  for _ in $(seq 40); do  # again and again until the job has stopped: a repeat must never cut the stop short
    kill -TERM -- -$pid 2> /dev/null || break
    # shellcheck disable=SC2086
    kill -TERM $ranks 2> /dev/null
    sleep 0.05
  done
  wait $pid
  rc=$?
  [[ $rc -eq 0 ]] || fail "trainlaunch exited $rc after repeated SIGTERMs to its group and its ranks"
  n=$(sed -n 's/.*stopped by SIGTERM after step \([0-9]*\) of.*/\1/p' group.log | head -1)
  [[ -n $n ]] || fail "no 'stopped by SIGTERM after step N' line"
  ck=run/$(printf 'step_%08d' "$n")
  [[ -f $ck/COMPLETE ]] || fail "the checkpoint of the stop step $n is not complete"
  grep -q "$(printf 'step_%08d' "$n")" run/latest || fail "latest does not name step $n"
  if [[ -x $bindir/checkpoint/loomckpt ]]; then
    "$bindir/checkpoint/loomckpt" verify "$ck" > verify.log 2>&1 || fail "loomckpt verify $ck: exit $?"
  fi
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set checkpoint.interval=0 --set training.steps=$((n + 2)) > resume.log 2>&1 || fail "resume: exit $?"
  grep -q "resumed from step $n " resume.log || fail "the rerun did not resume from step $n"
  ;;
layouts)
  # FSDP and TP through the config give the losses DDP gives (the same global batches, the same initial weights);
  # bf16 (FullyShard mixed precision) trains and stays close.
  for layout in ddp:parallelism.dp=0 fsdp:parallelism.fsdp=2 tp:parallelism.tp=2 bf16:training.precision=bf16; do
    "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
      --set training.steps=20 --set checkpoint.dir="$work/${layout%%:*}" --set "${layout#*:}" > "${layout%%:*}.log" 2>&1 ||
      fail "${layout%%:*}: exit $?"
  done
  grep -q "DeviceMesh(fsdp=2)" fsdp.log || fail "fsdp=2 did not build an fsdp mesh"
  grep -q "tp=2" tp.log || fail "tp=2 did not build a tp mesh"
  for l in fsdp tp bf16; do
    tol=2e-4
    [[ $l == bf16 ]] && tol=3e-2
    paste <(column ddp/metrics.jsonl loss) <(column $l/metrics.jsonl loss) |
      awk -v tol=$tol -v l=$l '{ d = $2 - $4; if (d < 0) d = -d; if (d > tol) { print l " step " $1 ": loss " $4 " vs ddp " $2; bad = 1 } }
                               END { exit bad }' || fail "$l losses differ from ddp's"
  done
  ;;
activation_checkpointing)
  # training.activation_checkpointing full / selective / selective:2 give the loss sequence none gives, bit for bit
  # (dropout on: the recompute replays the masks), on 2 FullyShard ranks; a bad value is an error naming the key (and
  # the file and line when it comes from the file), exit 2.
  for ac in none full selective selective:2; do
    name=${ac/:/_}
    "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
      --set training.steps=10 --set logging.interval=1 --set model.dropout=0.1 --set parallelism.fsdp=2 \
      --set checkpoint.dir="$work/$name" --set training.activation_checkpointing=$ac > "$name.log" 2>&1 ||
      fail "$ac: exit $?"
  done
  grep -q "activation checkpointing: full" full.log || fail "full: no 'activation checkpointing: full' line"
  [[ $(column none/metrics.jsonl loss | wc -l) -eq 10 ]] || fail "none: expected 10 logged losses"
  for name in full selective selective_2; do
    cmp <(column none/metrics.jsonl loss) <(column $name/metrics.jsonl loss) ||
      fail "$name: losses differ from none's: $(paste <(column none/metrics.jsonl loss) <(column $name/metrics.jsonl loss))"
  done
  "$pretrain" --config "$config" --set training.activation_checkpointing=fulll > /dev/null 2> bad_set.log
  [[ $? -eq 2 ]] || fail "bad value through --set: exit code is not 2"
  grep -q "training.activation_checkpointing" bad_set.log || fail "the error does not name the key: $(cat bad_set.log)"
  sed 's/^  seed: 1337$/  seed: 1337\n  activation_checkpointing: selective:0/' "$config" > bad.yaml
  line=$(grep -n "activation_checkpointing" bad.yaml | cut -d: -f1)
  "$pretrain" --config bad.yaml > /dev/null 2> bad_file.log
  [[ $? -eq 2 ]] || fail "bad value in the file: exit code is not 2"
  grep -q "bad.yaml:$line" bad_file.log || fail "the error does not name bad.yaml:$line: $(cat bad_file.log)"
  grep -q "selective:0" bad_file.log || fail "the error does not quote the value: $(cat bad_file.log)"
  ;;
eval_layouts)
  # One checkpoint evaluated on 1 rank (two micro-batch sizes), 2 DDP ranks, 2 FSDP ranks and 2 TP ranks gives the
  # eval loss the 2-rank training run logged at that step, to round-off: logging.eval_sequences is one global set of
  # held-out sequences split over the data-parallel ranks. 33 sequences split unevenly over 2 ranks (17 + 16: micro-
  # batches 8+8+1 and 8+8, so FSDP's second rank runs a dummy forward to keep the all-gathers paired).
  ev=(--set logging.eval_interval=20 --set logging.eval_sequences=33)
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" "${ev[@]}" \
    --set training.steps=20 > train.log 2>&1 || fail "training: exit $?"
  logged=$(column run/metrics.jsonl eval_loss | awk '$1 == 20 { print $2 }')
  [[ -n $logged ]] || fail "no eval_loss at step 20 in the metrics"
  grep -q "eval: the first 33 held-out sequences .* over 2 data-parallel ranks" train.log || fail "no eval set line"
  "$pretrain" --config "$config" "${small[@]}" "${ev[@]}" --eval > one.log 2>&1 || fail "1 rank --eval: exit $?"
  "$pretrain" --config "$config" "${small[@]}" "${ev[@]}" --set training.micro_batch=4 --eval > one_mb4.log 2>&1 ||
    fail "1 rank, micro_batch 4, --eval: exit $?"
  for layout in ddp:parallelism.dp=0 fsdp:parallelism.fsdp=2 tp:parallelism.tp=2; do
    "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" "${ev[@]}" \
      --set "${layout#*:}" --eval > "${layout%%:*}.log" 2>&1 || fail "${layout%%:*} --eval: exit $?"
  done
  grep -q "DeviceMesh(fsdp=2)" fsdp.log || fail "fsdp=2 did not build an fsdp mesh"
  grep -q "tp=2" tp.log || fail "tp=2 did not build a tp mesh"
  for l in one one_mb4 ddp fsdp tp; do
    got=$(sed -n 's/.*eval loss \([^ ]*\) at step 20 (.*step_00000020).*/\1/p' $l.log | head -1)
    [[ -n $got ]] || fail "$l: no 'eval loss ... at step 20 (...step_00000020)' line"
    awk -v a="$got" -v b="$logged" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(d < 2e-6) }' ||
      fail "$l: eval loss $got differs from the training run's $logged (2 DDP ranks) by more than 2e-6 relative"
    echo "$l: eval loss $got (training run: $logged)"
  done
  # The retired key is an error naming file, line, key and its replacement.
  sed 's/^  eval_sequences: .*/  eval_batches: 4/' "$config" > old.yaml
  line=$(grep -n "eval_batches" old.yaml | cut -d: -f1)
  "$pretrain" --config old.yaml --validate > /dev/null 2> old.log
  [[ $? -eq 2 ]] || fail "logging.eval_batches: exit code is not 2"
  grep -q "old.yaml:$line: logging.eval_batches: .*logging.eval_sequences" old.log || fail "retired key: $(cat old.log)"
  ;;
straggler)
  # Rank 1 shares core 0 with three busy loops, rank 0 has core 1 to itself (the test runs alone, RUN_SERIAL): rank 1 must show as the slowest rank in
  # (nearly) every step's record although DDP makes rank 0 wait for it every step.
  command -v taskset > /dev/null && [[ $(getconf _NPROCESSORS_ONLN) -ge 2 ]] || { echo "needs taskset and 2 cores: skipped"; exit 77; }
  cat > slow_rank.sh <<'WRAP'
#!/usr/bin/env bash
if [[ $LOCAL_RANK == 1 ]]; then
  taskset -c 0 bash -c 'while :; do :; done' & h1=$!
  taskset -c 0 bash -c 'while :; do :; done' & h2=$!
  taskset -c 0 bash -c 'while :; do :; done' & h3=$!
  trap 'kill $h1 $h2 $h3 2> /dev/null' EXIT
  taskset -c 0 "$@"
  exit $?
fi
exec taskset -c 1 "$@"
WRAP
  chmod +x slow_rank.sh
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$work/slow_rank.sh" "$pretrain" --config "$config" "${small[@]}" \
    --set training.steps=30 > slow.log 2>&1 || fail "exit $?"
  n1=$(grep -c '"slowest_rank":1' run/metrics.jsonl)
  [[ $n1 -ge 24 ]] || fail "rank 1 was the slowest in only $n1 of 30 steps"
  grep -q "slowest r1)" slow.log || fail "the console lines do not name rank 1 as the slowest"
  ;;
slurm_script)
  # scripts/slurm/pretrain_multinode.sbatch run as Slurm would run its batch step on a one-node allocation; a stand-in
  # srun starts the one launcher per node the way srun --ntasks-per-node=1 does (SLURM_NODEID, SLURM_NNODES set).
  mkdir -p bin
  cat > bin/srun <<'SRUN'
#!/usr/bin/env bash
while [[ $# -gt 0 && $1 == --* ]]; do shift; done
export SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0
exec "$@"
SRUN
  chmod +x bin/srun
  PATH="$work/bin:$PATH" SLURM_NNODES=1 SLURM_JOB_ID=4242 SLURM_JOB_NODELIST=127.0.0.1 NPROC_PER_NODE=2 \
    MASTER_PORT=$("$src/tests/free_port.sh" 2) TRAINLAUNCH="$trainlaunch" PRETRAIN="$pretrain" \
    bash "$src/scripts/slurm/pretrain_multinode.sbatch" "$config" "${small[@]}" --set training.steps=20 \
    > slurm.log 2>&1 || fail "the batch script exited $?"
  grep -q "config OK" slurm.log || fail "the batch script did not validate the config first"
  [[ -s logs/4242/attempt_0/rank_0.log && -s logs/4242/attempt_0/rank_1.log ]] || fail "no per-rank logs under logs/4242/attempt_0"
  [[ $(wc -l < run/metrics.jsonl) -eq 20 ]] || fail "expected 20 metrics lines"
  # A layout that does not fit (3 ranks) stops in the batch script, before srun.
  PATH="$work/bin:$PATH" SLURM_NNODES=1 SLURM_JOB_ID=4243 NPROC_PER_NODE=3 TRAINLAUNCH="$trainlaunch" \
    PRETRAIN="$pretrain" bash "$src/scripts/slurm/pretrain_multinode.sbatch" "$config" > bad.log 2>&1 &&
    fail "a layout for 3 ranks should fail"
  [[ ! -e logs/4243 ]] || fail "the launcher started although the layout does not fit"
  grep -q "tiny_cpu.yaml:" bad.log || fail "no file:line in the batch script's error: $(cat bad.log)"
  ;;
slurm_port_taken)
  # The batch script's MASTER_PORT when ports are taken on the node: job 4244 once derived 24244, then 28488, from its
  # id; with both pairs held by listeners the job must still run, on a free port < 32768 (trainlaunch --free-port).
  command -v python3 > /dev/null || { echo "needs python3 for the listeners: skipped"; exit 77; }
  mkdir -p bin
  printf '#!/usr/bin/env bash\nwhile [[ $# -gt 0 && $1 == --* ]]; do shift; done\nexport SLURM_NODEID=0 SLURM_PROCID=0 SLURM_LOCALID=0\nexec "$@"\n' > bin/srun
  chmod +x bin/srun
  python3 -c "
import socket, sys, time
held = []
for p in (24244, 24245, 28488, 28489):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(('0.0.0.0', p)); s.listen(); held.append(s)
    except OSError:
        pass  # held by something else already: taken either way
print('up', flush=True); time.sleep(120)" > held.out 2>&1 &
  holder=$!
  trap 'kill $holder 2> /dev/null' EXIT
  for _ in $(seq 100); do [[ -s held.out ]] && break; sleep 0.05; done
  PATH="$work/bin:$PATH" SLURM_NNODES=1 SLURM_JOB_ID=4244 SLURM_JOB_NODELIST=127.0.0.1 NPROC_PER_NODE=2 \
    TRAINLAUNCH="$trainlaunch" PRETRAIN="$pretrain" \
    bash "$src/scripts/slurm/pretrain_multinode.sbatch" "$config" "${small[@]}" --set training.steps=3 --set training.warmup_steps=1 \
    > slurm.log 2>&1 || fail "the batch script exited $? with the job id's ports taken"
  port=$(sed -n 's/.*MASTER_PORT \([0-9]*\)$/\1/p' slurm.log)
  [[ -n $port ]] || fail "the batch script does not print its MASTER_PORT"
  ((port <= 32767)) || fail "MASTER_PORT $port is in the ephemeral range"
  [[ $port != 24244 && $port != 28488 ]] || fail "MASTER_PORT $port is held by a listener"
  [[ $(wc -l < run/metrics.jsonl) -eq 3 ]] || fail "expected 3 metrics lines"
  ;;
config_error)
  # Unknown key: file, line, key and a suggestion; exit 2, before any rank starts.
  sed 's/^  n_layer: 2$/  n_layers: 2/' "$config" > bad.yaml
  line=$(grep -n "n_layers" bad.yaml | cut -d: -f1)
  "$pretrain" --config bad.yaml > bad.out 2> bad.log
  rc=$?
  [[ $rc -eq 2 ]] || fail "unknown key: exit $rc, expected 2"
  grep -q "bad.yaml:$line" bad.log || fail "the error does not name bad.yaml:$line: $(cat bad.log)"
  grep -q "n_layers" bad.log || fail "the error does not name the key"
  grep -qi "did you mean" bad.log || fail "no suggestion for the misspelt key"
  # A wrong type through --set.
  "$pretrain" --config "$config" --set training.steps=many > /dev/null 2> type.log
  [[ $? -eq 2 ]] || fail "wrong type: exit code is not 2"
  grep -q "training.steps" type.log || fail "the type error does not name training.steps"
  # A layout that does not fit the world: 3 ranks cannot split 16 sequences of 128 tokens into micro-batches of 8.
  "$pretrain" --config "$config" --validate --world-size 3 > /dev/null 2> layout.log
  [[ $? -eq 2 ]] || fail "bad layout: exit code is not 2"
  grep -q "tiny_cpu.yaml" layout.log || fail "the layout error does not name the file: $(cat layout.log)"
  # Hybrid sharding groups that do not fill the world: dp 2 x fsdp 2 on 6 ranks, fsdp 4 on 6 ranks.
  "$pretrain" --config "$config" --set parallelism.dp=2 --set parallelism.fsdp=2 \
    --set training.global_batch_tokens=4096 --validate --world-size 6 > /dev/null 2> hsdp.log
  [[ $? -eq 2 ]] || fail "dp=2 x fsdp=2 on 6 ranks: exit code is not 2"
  grep -q "parallelism.dp.*dp (2) \* fsdp (2) \* tp (1) = 4 but the world has 6 ranks" hsdp.log ||
    fail "the HSDP layout error does not name the key and the numbers: $(cat hsdp.log)"
  "$pretrain" --config "$config" --set parallelism.fsdp=4 --validate --world-size 6 > /dev/null 2> fsdp.log
  [[ $? -eq 2 ]] || fail "fsdp=4 on 6 ranks: exit code is not 2"
  grep -q "parallelism.fsdp.*fsdp (4) \* tp (1) = 4 does not divide the world size 6" fsdp.log ||
    fail "the fsdp layout error does not name the key and the numbers: $(cat fsdp.log)"
  # The same under the launcher: every rank exits 2 before creating a process group (nothing to hang on).
  timeout 60 "$trainlaunch" --standalone --nproc-per-node 3 -- "$pretrain" --config "$config" > launch.log 2>&1
  rc=$?
  [[ $rc -ne 0 && $rc -ne 124 ]] || fail "3 ranks with a 2-rank-only batch: exit $rc"
  grep -q "exit code 2\|exited with 2\|status 2\|code 2" launch.log || fail "the launcher did not report exit code 2"
  ;;
validate)
  "$pretrain" --config "$config" --validate --world-size 2 > v.log 2>&1 || fail "exit $?"
  grep -q "^parameters: [0-9]" v.log || fail "no parameter count"
  grep -q "estimated memory per rank:" v.log || fail "no memory estimate"
  grep -q "^traffic per rank per step over the data-parallel group (dp, 2 ranks): " v.log || fail "no DDP traffic line"
  # Hybrid sharding: traffic over the shard group and over the replica group.
  "$pretrain" --config "$config" --set parallelism.dp=2 --set parallelism.fsdp=2 --set training.global_batch_tokens=4096 \
    --validate --world-size 4 > hsdp.log 2>&1 || fail "HSDP --validate: exit $?"
  grep -q "^traffic per rank per step over the shard group (fsdp, 2 ranks): [0-9.]* MiB" hsdp.log ||
    fail "no shard-group traffic line for HSDP"
  grep -q "^traffic per rank per step over the replica group (dp, 2 replicas): [0-9.]* MiB" hsdp.log ||
    fail "no replica-group traffic line for HSDP"
  grep -q "n_embd: 128" v.log || fail "the resolved config is not printed"
  [[ ! -e runs ]] || fail "--validate wrote files"
  ;;
plot)
  command -v gnuplot > /dev/null || { echo "gnuplot not installed: skipped"; exit 77; }
  for s in $(seq 1 50); do
    echo "{\"step\":$s,\"loss\":$(awk -v s=$s 'BEGIN{print 4/(1+s/10)}'),\"lr\":0.001,\"tokens_per_s\":$((1000 + s))$( ((s % 10 == 0)) && echo ",\"eval_loss\":2.5")}"
  done > m.jsonl
  "$src/scripts/plot_metrics" m.jsonl out.png > plot.log 2>&1 || fail "plot_metrics: exit $?"
  [[ "$(head -c 4 out.png | od -An -c | tr -d ' ')" == '211PNG' ]] || fail "out.png is not a PNG"
  [[ $(stat -c %s out.png) -gt 5000 ]] || fail "out.png is suspiciously small"
  echo '{"nothing":1}' > empty.jsonl
  "$src/scripts/plot_metrics" empty.jsonl e.png > /dev/null 2>&1 && fail "a file without losses should be an error"
  ;;
trace)
  # logging.trace_steps on 2 DDP ranks: per-rank and merged Chrome trace under run/trace, exposed communication in the
  # console and metrics.jsonl for the traced steps only, and scripts/plot_trace draws the merged file.
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${small[@]}" \
    --set training.steps=6 --set training.warmup_steps=2 --set logging.interval=1 --set "logging.trace_steps=[3, 4]" \
    > trace.log 2>&1 || fail "exit $?"
  for f in trace_rank0.json trace_rank1.json trace.json; do [[ -s run/trace/$f ]] || fail "run/trace/$f missing"; done
  python3 -c "import json,sys; d=json.load(open('run/trace/trace.json')); sys.exit(0 if {0,1} <= {e['pid'] for e in d['traceEvents']} else 1)" \
    || fail "run/trace/trace.json is not JSON with both ranks' tracks"
  n=$(grep -c '"comm_hidden_frac"' run/metrics.jsonl)
  [[ $n -eq 2 ]] || fail "$n metrics lines carry comm_hidden_frac (want the 2 traced steps)"
  grep '"step":3,' run/metrics.jsonl | grep -q '"comm_blocked_s"' || fail "step 3 has no comm_blocked_s"
  grep -q 'step 4/6 .*% hidden' trace.log || fail "the console line of step 4 does not show the hidden fraction"
  grep -q 'trace of steps 3..4: .*run/trace/trace.json' trace.log || fail "the merged trace's path is not printed"
  if command -v gnuplot > /dev/null; then
    "$src/scripts/plot_trace" run/trace/trace.json t.png > plot.log 2>&1 || fail "plot_trace: exit $?"
    [[ "$(head -c 4 t.png | od -An -c | tr -d ' ')" == '211PNG' ]] || fail "t.png is not a PNG"
    [[ $(stat -c %s t.png) -gt 5000 ]] || fail "t.png is suspiciously small"
    echo '{"nothing":1}' > bad.json
    "$src/scripts/plot_trace" bad.json b.png > bad.log 2>&1 && fail "a file that is not a trace should be an error"
    grep -q "not a Chrome trace" bad.log || fail "plot_trace's error does not say what is wrong: $(cat bad.log)"
  fi
  ;;
*)
  echo "unknown case $case_name" >&2
  exit 1
  ;;
esac
echo "PASS ($case_name)"
