#!/bin/sh
# Stand-in for bench_gpt2_gpu on a fake GPU node: the figure lines the real one prints, for --torch eager or
# compile. Behaviour: $FAKE_<STEP> for the step of scripts/gpu_window.sh (pass, fail: loom throws, crash:
# SIGSEGV, hang: ignores SIGTERM), default pass.
torch=eager
while [ $# -gt 0 ]; do
  case "$1" in --torch) torch="$2"; shift ;; esac
  shift
done
step="$(printf '%s' "${LOOM_GPU_WINDOW_STEP:-bench}" | tr a-z A-Z)"
mode=pass
eval "mode=\${FAKE_$step:-pass}"
echo "model: gpt2 (GPT-2 124M, vocab 50257 padded to 50304 (llm.c)): 12 layers, width 768"
echo "tf32=off for both sides (LOOM_ALLOW_TF32 unset; PyTorch gets --allow-tf32 0; affects f32 matmuls only)"
echo "torch peer environment: LD_LIBRARY_PATH '${LD_LIBRARY_PATH:-}'"
case "$torch" in
  eager) echo "torch_eager loss0=10.9876 loss_last=9.8765 warmup_s=2.0 adamw=fused"
         echo "torch_eager tokens_per_s=150000.0 step_ms=109.227 mfu=0.4000" ;;
  compile) echo "torch_compile loss0=10.9876 loss_last=9.8765 warmup_s=60.0 adamw=fused"
           echo "torch_compile tokens_per_s=200000.0 step_ms=81.920 mfu=0.5333" ;;
esac
case "$mode" in
  fail) echo "loom failed: CUDA error: an illegal memory access was encountered (fake)"; exit 1 ;;
  crash) kill -SEGV $$ ;;
  hang) trap '' TERM; while :; do sleep 1; done ;;
esac
echo "loom loss0=10.9880 loss_last=9.8770 (ln vocab = 10.8258)"
echo "loom tokens_per_s=120000.0 step_ms=136.533 mfu=0.3200"
echo "params match: loom 124475904, torch 124475904"
case "$torch" in
  eager) echo "ratio loom/torch_eager tokens_per_s=0.800" ;;
  compile) echo "ratio loom/torch_compile tokens_per_s=0.600" ;;
esac
