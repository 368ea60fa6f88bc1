#!/usr/bin/python3
"""PyTorch peer of tests/bench/bench_gpt2_gpu.cc: trains the same GPT-2 or Llama model with the same step.

Usage (bench_gpt2_gpu passes every value; run it alone the same way):
  torch_gpt2_gpu.py --arch gpt2|llama --layers L --width C --heads H --kv-heads K --mlp F --vocab V
                    --data-vocab V0 --tied 0|1 --rope-theta THETA --seq T --batch B --warmup N --steps M
                    --precision bf16|f32|autocast --device cuda:0|cpu --peak FLOPS (0: unknown)
                    --modes eager,compile --threads N --allow-tf32 0|1

Prints `torch params=N matmul_params=N flops_per_token=F`, then per mode
`torch_<mode> loss0=... loss_last=...` and `torch_<mode> tokens_per_s=... step_ms=... mfu=...`,
or `torch_compile skipped: <why>` where this PyTorch has no torch.compile (never a made-up figure).

The models are loom's: GPT-2 is pre-norm with biases, tanh GELU, learned positions and a tied head, initialised
normal(0, 0.02) with the residual projections at 0.02/sqrt(2L); Llama has RMSNorm, RoPE (Hugging Face's rotate-half
layout), grouped-query attention, SwiGLU, no biases, every weight normal(0, 0.02). Attention is
F.scaled_dot_product_attention(is_causal=True) pinned to the flash kernel on CUDA in bf16 (the line `attention=...`
says what ran). Precision as loom: bf16 = model.to(torch.bfloat16) (bf16 parameters, gradients and AdamW state);
autocast = f32 parameters, forward and loss under torch.autocast("cuda", torch.bfloat16); f32. The optimizer is
torch.optim.AdamW(fused=True) (lr 3e-4, betas 0.9/0.95, eps 1e-8, weight decay 0.1 on >= 2-D parameters only).
--allow-tf32 sets f32 matmuls to TF32 or full f32 with torch.set_float32_matmul_precision("high" / "highest"), and
cuDNN's TF32 likewise (bench_gpt2_gpu passes loom's own setting, LOOM_ALLOW_TF32, so f32 runs compare like with like);
the line `torch tf32=...` says what was set.
Timing: N warm-up steps (compilation happens there), then M steps between two torch.cuda.synchronize();
tokens_per_s = B*T*M / elapsed. MFU = tokens_per_s * (6*N + 12*L*T*C) / peak, N = parameters that enter a matmul
(all but GPT-2's position embedding and an untied input embedding).
"""
import argparse
import contextlib
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")


def causal_attention(q, k, v, gqa):
    """q (B, H, T, D), k/v (B, Hkv, T, D) -> (B, H, T, D)."""
    native_gqa = gqa > 1 and HAVE_SDPA and ATTN["enable_gqa"]
    if gqa > 1 and not native_gqa:
        k = k.repeat_interleave(gqa, dim=1)
        v = v.repeat_interleave(gqa, dim=1)
    if HAVE_SDPA:
        if native_gqa:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    T = q.shape[2]
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), 1)
    att = att.masked_fill(mask, float("-inf")).float().softmax(-1).to(q.dtype)
    return att @ v


ATTN = {"enable_gqa": False}  # set in main: whether this SDPA takes enable_gqa (PyTorch >= 2.5)


def lm_loss(logits, targets):
    """Mean cross-entropy over the flattened (B*T, V) logits, inside forward so torch.compile sees it too."""
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class GPT2Block(nn.Module):
    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))
        y = causal_attention(q, k, v, 1)
        x = x + self.c_proj(y.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT2(nn.Module):
    def __init__(self, a):
        super().__init__()
        L, C = a.layers, a.width
        self.wte = nn.Embedding(a.vocab, C)
        self.wpe = nn.Embedding(a.seq, C)
        self.h = nn.ModuleList(GPT2Block(C, a.heads) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.lm_head = nn.Linear(C, a.vocab, bias=False)
        if a.tied:
            self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * L) if name.endswith(("c_proj.weight", "mlp_proj.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def matmul_params(self, a):
        n = sum(p.numel() for p in self.parameters())
        return n - self.wpe.weight.numel() - (0 if a.tied else self.wte.weight.numel())

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device))
        for b in self.h:
            x = b(x)
        return lm_loss(self.lm_head(self.ln_f(x)), targets)


class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, a):
        super().__init__()
        C, self.H, self.K = a.width, a.heads, a.kv_heads
        self.D = C // self.H
        self.input_layernorm = RMSNorm(C)
        self.q_proj = nn.Linear(C, self.H * self.D, bias=False)
        self.k_proj = nn.Linear(C, self.K * self.D, bias=False)
        self.v_proj = nn.Linear(C, self.K * self.D, bias=False)
        self.o_proj = nn.Linear(self.H * self.D, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C)
        self.gate_proj = nn.Linear(C, a.mlp, bias=False)
        self.up_proj = nn.Linear(C, a.mlp, bias=False)
        self.down_proj = nn.Linear(a.mlp, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.K, self.D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.K, self.D).transpose(1, 2)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = causal_attention(q, k, v, self.H // self.K)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.width)
        self.layers = nn.ModuleList(LlamaBlock(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.width)
        self.lm_head = nn.Linear(a.width, a.vocab, bias=False)
        if a.tied:
            self.lm_head.weight = self.embed_tokens.weight
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
        D = a.width // a.heads
        inv = 1.0 / (a.rope_theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
        ang = torch.outer(torch.arange(a.seq, dtype=torch.float64), inv)  # (T, D/2)
        ang = torch.cat((ang, ang), dim=-1)
        self.register_buffer("cos", ang.cos().float(), persistent=False)
        self.register_buffer("sin", ang.sin().float(), persistent=False)

    def matmul_params(self, a):
        n = sum(p.numel() for p in self.parameters())
        return n - (0 if a.tied else self.embed_tokens.weight.numel())

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.embed_tokens(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        for b in self.layers:
            x = b(x, cos, sin)
        return lm_loss(self.lm_head(self.norm(x)), targets)


def build(a, device):
    """The model on device, initialised there (PyTorch >= 2.0) or on the CPU and moved."""
    torch.manual_seed(1337)
    where = torch.device(device) if hasattr(torch, "compile") else contextlib.nullcontext()
    with where:
        m = GPT2(a) if a.arch == "gpt2" else Llama(a)
    m = m.to(device)
    if a.precision == "bf16":
        m = m.to(torch.bfloat16)
        if a.arch == "llama":  # RoPE tables stay f32 (forward rounds them to q's dtype, as loom rounds its bf16 copy)
            m.cos, m.sin = m.cos.float(), m.sin.float()
    if a.tied:  # a move to some devices (meta) makes new Parameters per module; tie again
        if a.arch == "gpt2":
            m.lm_head.weight = m.wte.weight
        else:
            m.lm_head.weight = m.embed_tokens.weight
    return m


def make_optimizer(model, device):
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
    kw = dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8)
    try:
        return torch.optim.AdamW(groups, fused=True, **kw), "fused"
    except (TypeError, RuntimeError, ValueError) as e:  # no fused AdamW for this device or version
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        return torch.optim.AdamW(groups, **kw), f"default (fused unavailable: {why})"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_flash(a, device):
    """A context that restricts SDPA to the flash kernel when it can run this model, else a null context."""
    if device.type != "cuda" or not HAVE_SDPA or a.precision == "f32":
        return contextlib.nullcontext, "sdpa (default kernel choice)" if HAVE_SDPA else "composed ops"
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:
        return contextlib.nullcontext, "sdpa (default kernel choice; no torch.nn.attention.sdpa_kernel)"
    D, K = a.width // a.heads, a.kv_heads
    q = torch.randn(1, a.heads, 64, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, K, 64, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, K, 64, D, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            causal_attention(q, k, v, a.heads // K).sum().backward()
        return (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "flash (sdpa pinned to FLASH_ATTENTION)"
    except RuntimeError as e:
        why = str(e).splitlines()[0]
        return contextlib.nullcontext, f"sdpa (default kernel choice; flash refused: {why})"


def set_tf32(on):
    """TF32 for f32 matmuls and cuDNN on or off; returns what was set. set_float32_matmul_precision is the API every
    PyTorch 2.x keeps; cuDNN takes the fp32_precision API where it exists (PyTorch >= 2.9, which refuses a mix of
    that and the older allow_tf32 flags), else allow_tf32."""
    torch.set_float32_matmul_precision("high" if on else "highest")
    desc = f"float32_matmul_precision={torch.get_float32_matmul_precision()}"
    try:
        conv = getattr(torch.backends.cudnn, "conv", None)
        if conv is not None and hasattr(conv, "fp32_precision"):
            conv.fp32_precision = "tf32" if on else "ieee"
            desc += f", cudnn.conv.fp32_precision={conv.fp32_precision}"
        else:
            torch.backends.cudnn.allow_tf32 = on
            desc += f", cudnn.allow_tf32={torch.backends.cudnn.allow_tf32}"
    except (AttributeError, RuntimeError, ValueError) as e:  # report, never stop the benchmark for it
        desc += f", cudnn tf32 not set: {type(e).__name__}: {e}"
    return desc


def run_mode(mode, a, device, idx, tgt, attn_ctx, flops_per_token):
    model = build(a, device)
    opt, opt_kind = make_optimizer(model, device)
    fwd = model
    if mode == "compile":
        fwd = torch.compile(model)
    amp = (torch.autocast(device_type=device.type, dtype=torch.bfloat16) if a.precision == "autocast"
           else contextlib.nullcontext())

    def step():
        opt.zero_grad(set_to_none=True)
        with attn_ctx():
            with amp:
                loss = fwd(idx, tgt)
            loss.backward()
        opt.step()
        return loss

    t0 = time.perf_counter()
    loss0 = None
    for i in range(a.warmup):
        loss = step()
        if i == 0:
            loss0 = loss.item()
    sync(device)
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    sync(device)
    step_s = (time.perf_counter() - t0) / a.steps
    tps = a.batch * a.seq / step_s
    mfu = f"{tps * flops_per_token / a.peak:.4f}" if a.peak > 0 else "n/a"
    print(f"torch_{mode} loss0={loss0:.4f} loss_last={loss.item():.4f} warmup_s={warm_s:.1f} adamw={opt_kind}")
    print(f"torch_{mode} tokens_per_s={tps:.1f} step_ms={step_s * 1e3:.3f} mfu={mfu}", flush=True)
    if device.type == "cuda":
        print(f"torch_{mode} max_memory_allocated_gib={torch.cuda.max_memory_allocated(device) / 2**30:.2f}")
    del model, opt, fwd
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    for k, d in [("layers", 12), ("width", 768), ("heads", 12), ("kv-heads", 12), ("mlp", 3072), ("vocab", 50304),
                 ("data-vocab", 50257), ("tied", 1), ("seq", 1024), ("batch", 16), ("warmup", 3), ("steps", 10),
                 ("threads", 0), ("allow-tf32", 0)]:
        p.add_argument("--" + k, type=int, default=d)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--precision", choices=["bf16", "f32", "autocast"], default="bf16")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--peak", type=float, default=0.0)
    p.add_argument("--modes", default="eager,compile")
    a = p.parse_args()
    if a.arch == "gpt2" and (a.kv_heads != a.heads or a.mlp != 4 * a.width):
        p.error("gpt2 has kv-heads = heads and mlp = 4 * width")
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"torch: CUDA is not available to this PyTorch ({torch.__version__}); no figures")
        return 1
    if a.threads > 0 and device.type == "cpu":
        torch.set_num_threads(a.threads)
    # loom's setting (LOOM_ALLOW_TF32, passed by bench_gpt2_gpu); only f32 matmuls are affected, not bf16/autocast.
    tf32_desc = set_tf32(bool(a.allow_tf32))
    if HAVE_SDPA:
        try:
            t = torch.zeros(1, 2, 4, 8)
            F.scaled_dot_product_attention(t, t[:, :1], t[:, :1], is_causal=True, enable_gqa=True)
            ATTN["enable_gqa"] = True
        except (TypeError, RuntimeError):
            ATTN["enable_gqa"] = False

    probe = build(a, torch.device("cpu") if device.type == "cpu" else "meta")
    n_params = sum(q.numel() for q in probe.parameters())
    matmul_params = probe.matmul_params(a)
    del probe
    flops_per_token = 6 * matmul_params + 12 * a.layers * a.seq * a.width
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch version={torch.__version__} device={name}")
    print(f"torch tf32={'on' if a.allow_tf32 else 'off'} ({tf32_desc})")
    print(f"torch params={n_params} matmul_params={matmul_params} flops_per_token={flops_per_token:.6g}")
    attn_ctx, attn_desc = pin_flash(a, device)
    print(f"torch attention={attn_desc} precision={a.precision}", flush=True)

    g = torch.Generator().manual_seed(7)
    idx = torch.randint(0, a.data_vocab, (a.batch, a.seq), generator=g).to(device)
    tgt = torch.randint(0, a.data_vocab, (a.batch, a.seq), generator=g).to(device)
    for mode in [m for m in a.modes.split(",") if m]:
        if mode not in ("eager", "compile"):
            print(f"torch: unknown mode '{mode}' (eager, compile)")
            continue
        if mode == "compile" and not hasattr(torch, "compile"):
            print(f"torch_compile skipped: PyTorch {torch.__version__} has no torch.compile")
            continue
        try:
            run_mode(mode, a, device, idx, tgt, attn_ctx, flops_per_token)
        except Exception as e:  # report and go on to the next mode; the C++ side prints no ratio for it
            print(f"torch_{mode} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
