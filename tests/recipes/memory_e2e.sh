#!/usr/bin/env bash
# Memory you can plan with: the per-step peak pretrain logs, and pretrain --validate's estimate of it.
# Usage: memory_e2e.sh CASE PRETRAIN TRAINLAUNCH SOURCE_DIR WORK_DIR
# Cases:
#   peak      2 DDP ranks, 3 steps: every metrics line has peak_mem_bytes (>= mem_bytes, above it by at least the
#             order of the saved activations), peak_mem_bytes_max (the largest of peak_mem_by_rank, one per rank);
#             the console line shows "peak" and "(max ... rN)".
#   estimate  each row of ROWS below: --validate's estimate_bytes total against the largest peak_mem_bytes_max of a
#             2-step run of the same config, within TOLERANCE (15 %); prints the table.
# Exit 0 pass, 1 fail.
set -uo pipefail

case_name=$1 pretrain=$2 trainlaunch=$3 src=$4 work=$5/memory_e2e_$1
rm -rf "$work"
mkdir -p "$work"
cd "$work" || exit 1
export OMP_NUM_THREADS=1 LOOM_STORE_SECRET=memory-e2e
config=$src/configs/tiny_cpu.yaml
common=(--set training.warmup_steps=0 --set logging.interval=1 --set checkpoint.dir= --set logging.eval_interval=0
        --set logging.progress=false)

fail() {
  echo "FAIL ($case_name): $*" >&2
  for f in "$work"/*.log; do
    [[ -f $f ]] && { echo "---- $f (last 30 lines)" >&2; tail -n 30 "$f" >&2; }
  done
  exit 1
}

# The integer value of KEY in a JSON line.
field() { echo "$1" | grep -o "\"$2\":[0-9]*" | head -1 | cut -d: -f2; }

case $case_name in
peak)
  # 2 layers of 64 wide, 8 sequences of 64 tokens per rank: one block saves ~17 (B, T, C) f32 tensors.
  L=2 C=64 T=64 B=8
  "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${common[@]}" \
    --set model.n_layer=$L --set model.n_embd=$C --set model.seq_len=$T --set training.micro_batch=$B \
    --set training.global_batch_tokens=$((2 * B * T)) --set training.steps=3 \
    --set logging.metrics_file="$work/m.jsonl" > run.log 2>&1 || fail "exit $?"
  [[ $(wc -l < m.jsonl) -eq 3 ]] || fail "expected 3 metrics lines"
  acts=$((L * 8 * B * T * C * 4))  # half of what the blocks save: the peak must exceed the resting memory by more
  while read -r line; do
    mem=$(field "$line" mem_bytes) peak=$(field "$line" peak_mem_bytes) max=$(field "$line" peak_mem_bytes_max)
    [[ -n $mem && -n $peak && -n $max ]] || fail "missing mem_bytes / peak_mem_bytes / peak_mem_bytes_max: $line"
    by_rank=$(echo "$line" | grep -o '"peak_mem_by_rank":\[[0-9,]*\]' | sed 's/.*\[//; s/\]//')
    [[ $(echo "$by_rank" | tr ',' '\n' | grep -c .) -eq 2 ]] || fail "peak_mem_by_rank should have 2 entries: $line"
    largest=$(echo "$by_rank" | tr ',' '\n' | sort -n | tail -1)
    [[ $max -eq $largest ]] || fail "peak_mem_bytes_max $max is not the largest of peak_mem_by_rank [$by_rank]"
    [[ $peak -eq ${by_rank%%,*} ]] || fail "peak_mem_bytes $peak is not rank 0's peak [$by_rank]"
    ((peak >= mem)) || fail "peak $peak below the memory in use after the step $mem: $line"
    ((peak - mem >= acts)) || fail "peak $peak exceeds the resting memory $mem by less than $acts bytes of activations"
    echo "step $(field "$line" step): mem $mem, peak $peak (ranks $by_rank), above by $((peak - mem)) >= $acts"
  done < m.jsonl
  grep -q "| mem [0-9.]* [KMG]*i*B peak [0-9.]* [KMG]*i*B (max [0-9.]* [KMG]*i*B r[01]) |" run.log ||
    fail "the console line does not show 'mem A peak P (max M rN)'"

  # Each step's own peak: a checkpoint saved after a step, or loaded before the first step of a resumed run, needs
  # more memory than these steps (a wide, shallow model on 16-token sequences: the states dominate), and must not
  # show in the next step's peak. Steps 3 and 4 follow a save (and, resumed, a load): their peaks equal step 2's.
  small=(--set model.n_layer=1 --set model.n_embd=256 --set model.seq_len=16 --set training.micro_batch=1
         --set training.global_batch_tokens=32 --set checkpoint.interval=1 --set checkpoint.dir="$work/ck")
  for run in "3 fresh" "4 resumed"; do
    set -- $run
    "$trainlaunch" --standalone --nproc-per-node 2 -- "$pretrain" --config "$config" "${common[@]}" "${small[@]}" \
      --set training.steps="$1" > "ck_$2.log" 2>&1 || fail "checkpointed run ($2): exit $?"
  done
  grep -q "resumed from step 3" ck_resumed.log || fail "the second run did not resume from step 3"
  peaks=$(grep -o '"peak_mem_bytes":[0-9]*' ck/metrics.jsonl | cut -d: -f2 | tr '\n' ' ')
  echo "checkpointed steps 1-4 peaks: $peaks"
  read -r p1 p2 p3 p4 <<< "$peaks"
  [[ -n ${p4:-} ]] || fail "expected 4 steps in ck/metrics.jsonl, got peaks '$peaks'"
  for p in "$p3" "$p4"; do
    awk -v a="$p" -v b="$p2" 'BEGIN { exit !(a <= b * 1.02 && a >= b * 0.98) }' ||
      fail "a step after a checkpoint save or load peaks at $p, step 2 at $p2: the save's or load's memory is charged to it"
  done
  ;;
estimate)
  # One row per line: NAME RANKS --set ... (added to the tiny job shrunk to 4 layers of 128, vocabulary 512). The first
  # nine are none/full/selective x DDP/FSDP/HSDP; then selective:K, accumulation, TP, one rank with SGD, bf16.
  ROWS=$(cat <<'EOF'
none_ddp_gpt2        2 --set model.family=gpt2
none_fsdp_llama      2 --set model.family=llama --set parallelism.fsdp=2
none_hsdp_llama      4 --set model.family=llama --set parallelism.dp=2 --set parallelism.fsdp=2 --set training.global_batch_tokens=4096
full_ddp_gpt2        2 --set model.family=gpt2 --set training.activation_checkpointing=full
full_fsdp_llama      2 --set model.family=llama --set parallelism.fsdp=2 --set training.activation_checkpointing=full
full_hsdp_llama      4 --set model.family=llama --set parallelism.dp=2 --set parallelism.fsdp=2 --set training.global_batch_tokens=4096 --set training.activation_checkpointing=full
selective_ddp_gpt2   2 --set model.family=gpt2 --set training.activation_checkpointing=selective
selective_fsdp_llama 2 --set model.family=llama --set parallelism.fsdp=2 --set training.activation_checkpointing=selective
selective_hsdp_llama 4 --set model.family=llama --set parallelism.dp=2 --set parallelism.fsdp=2 --set training.global_batch_tokens=4096 --set training.activation_checkpointing=selective
selective2_ddp_llama 2 --set model.family=llama --set training.activation_checkpointing=selective:2
none_fsdp_gpt2_accum 2 --set model.family=gpt2 --set parallelism.fsdp=2 --set training.micro_batch=4
none_tp_gpt2         2 --set model.family=gpt2 --set parallelism.tp=2 --set training.global_batch_tokens=1024
full_tp_gpt2         2 --set model.family=gpt2 --set parallelism.tp=2 --set training.global_batch_tokens=1024 --set training.activation_checkpointing=full
none_one_llama_sgd   1 --set model.family=llama --set training.optimizer=sgd --set model.n_kv_head=2
none_fsdp_llama_bf16 2 --set model.family=llama --set parallelism.fsdp=2 --set training.precision=bf16
EOF
)
  TOLERANCE=${MEMORY_ESTIMATE_TOLERANCE:-0.15}
  shape=(--set model.n_layer=4 --set model.n_embd=128 --set model.n_head=4 --set model.vocab_size=512
         --set training.steps=2)
  bad=0
  printf "%-22s %5s %14s %14s %8s\n" config ranks estimate measured est/meas
  while read -r name ranks sets; do
    [[ -z $name ]] && continue
    # shellcheck disable=SC2086
    "$pretrain" --config "$config" "${common[@]}" "${shape[@]}" $sets --validate --world-size "$ranks" \
      > "$name.validate.log" 2>&1 || fail "$name: --validate exit $?"
    est=$(sed -n 's/^estimate_bytes total=\([0-9]*\) .*/\1/p' "$name.validate.log")
    [[ -n $est ]] || fail "$name: --validate printed no 'estimate_bytes total=' line"
    # shellcheck disable=SC2086
    "$trainlaunch" --standalone --nproc-per-node "$ranks" -- "$pretrain" --config "$config" "${common[@]}" \
      "${shape[@]}" $sets --set logging.metrics_file="$work/$name.jsonl" > "$name.log" 2>&1 || fail "$name: exit $?"
    measured=0
    while read -r line; do
      v=$(field "$line" peak_mem_bytes_max)
      [[ -n $v ]] || fail "$name: no peak_mem_bytes_max in $line"
      ((v > measured)) && measured=$v
    done < "$name.jsonl"
    ((measured > 0)) || fail "$name: no peak measured"
    ratio=$(awk -v e="$est" -v m="$measured" 'BEGIN { printf "%.3f", e / m }')
    printf "%-22s %5s %14s %14s %8s\n" "$name" "$ranks" "$est" "$measured" "$ratio"
    awk -v r="$ratio" -v t="$TOLERANCE" 'BEGIN { exit !(r >= 1 - t && r <= 1 + t) }' || {
      echo "  ^ off by more than $TOLERANCE" >&2
      bad=1
    }
  done <<< "$ROWS"
  ((bad == 0)) || fail "some estimates are off by more than $TOLERANCE of the measured peak (table above)"
  ;;
*)
  echo "unknown case '$case_name'" >&2
  exit 1
  ;;
esac
echo "PASS ($case_name)"
