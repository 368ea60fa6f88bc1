#!/usr/bin/python3
"""Times full training steps (forward, backward, AdamW) of a GPT-2 or Llama model in PyTorch on CPU.

Usage: torch_gpt2_step.py LAYERS WIDTH HEADS SEQ BATCH VOCAB STEPS THREADS [--mode eager|compile]
                          [--model gpt2|llama] [--profile]
Prints one line: `torch threads=<int> tokens_per_s=<float> step_ms=<float> version=<v> mode=<m>`. The models are
the architectures loom's bench builds (GPT-2: pre-norm, tanh GELU, tied head, no dropout; Llama: RMSNorm, RoPE,
SwiGLU, grouped-query attention with HEADS/3 kv heads (or HEADS when not divisible), untied head, no biases), so
the figures compare like for like. Each uses the fastest form its version has: scaled_dot_product_attention where
it exists (2.x), the composed attention otherwise (1.13); F.rms_norm where it exists. bench_gpt2_step runs it once
per thread count and mode, in a fresh process with OMP_NUM_THREADS (and OPENBLAS_NUM_THREADS, MKL_NUM_THREADS) set.
--profile: after timing, one more step under torch.profiler; prints `profile op=<name> self_ms=<f> calls=<n>` per
aten op (self CPU time).
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAS_SDPA = hasattr(F, "scaled_dot_product_attention")


def attention(q, k, v):
    if HAS_SDPA:
        if k.shape[1] != q.shape[1]:
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            except TypeError:
                pass
        rep = q.shape[1] // k.shape[1]
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    rep = q.shape[1] // k.shape[1]
    if rep > 1:
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    T = q.shape[2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    att = att.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return att.softmax(-1) @ v


class Block(nn.Module):
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
        x = x + self.c_proj(attention(q, k, v).transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, C, H, T, V):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.h:
            x = b(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


class RMSNorm(nn.Module):
    def __init__(self, C, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(C))

    def forward(self, x):
        if hasattr(F, "rms_norm"):
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class LlamaBlock(nn.Module):
    def __init__(self, C, H, KV, I):
        super().__init__()
        self.H, self.KV, self.D = H, KV, C // H
        self.input_layernorm = RMSNorm(C)
        self.q_proj = nn.Linear(C, C, bias=False)
        self.k_proj = nn.Linear(C, KV * self.D, bias=False)
        self.v_proj = nn.Linear(C, KV * self.D, bias=False)
        self.o_proj = nn.Linear(C, C, bias=False)
        self.post_attention_layernorm = RMSNorm(C)
        self.gate_proj = nn.Linear(C, I, bias=False)
        self.up_proj = nn.Linear(C, I, bias=False)
        self.down_proj = nn.Linear(I, C, bias=False)

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(B, T, self.H, self.D).transpose(1, 2)
        k = self.k_proj(h).view(B, T, self.KV, self.D).transpose(1, 2)
        v = self.v_proj(h).view(B, T, self.KV, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        x = x + self.o_proj(attention(q, k, v).transpose(1, 2).reshape(B, T, C))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, L, C, H, T, V, KV, I, theta=10000.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(V, C)
        self.layers = nn.ModuleList(LlamaBlock(C, H, KV, I) for _ in range(L))
        self.norm = RMSNorm(C)
        self.lm_head = nn.Linear(C, V, bias=False)
        D = C // H
        inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
        f = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        emb = torch.cat((f, f), dim=-1)
        self.register_buffer("cos", emb.cos(), persistent=False)
        self.register_buffer("sin", emb.sin(), persistent=False)

    def forward(self, idx, targets):
        T = idx.shape[1]
        x = self.embed_tokens(idx)
        cos, sin = self.cos[:T], self.sin[:T]
        for b in self.layers:
            x = b(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def llama_sizes(C, H):
    """kv heads and intermediate size of the bench's Llama shape (bench_gpt2_step uses the same rule)."""
    kv = H // 3 if H % 3 == 0 else H
    inter = (8 * C // 3 + 255) // 256 * 256
    return kv, inter


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("sizes", type=int, nargs=8)
    ap.add_argument("--mode", choices=["eager", "compile"], default="eager")
    ap.add_argument("--model", choices=["gpt2", "llama"], default="gpt2")
    ap.add_argument("--profile", action="store_true")
    a = ap.parse_args()
    L, C, H, T, B, V, steps, threads = a.sizes
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if a.model == "gpt2":
        model = GPT(L, C, H, T, V)
    else:
        kv, inter = llama_sizes(C, H)
        model = Llama(L, C, H, T, V, kv, inter)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    fwd = torch.compile(model) if a.mode == "compile" else model
    idx = torch.randint(0, V, (B, T))
    tgt = torch.randint(0, V, (B, T))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = fwd(idx, tgt)
        loss.backward()
        opt.step()

    times = []
    for i in range(steps + 2):  # two warm-up steps (the first compiles in compile mode)
        t0 = time.perf_counter()
        step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    print(f"torch threads={torch.get_num_threads()} tokens_per_s={B * T / med:.1f} step_ms={med * 1e3:.2f} "
          f"version={torch.__version__.split('+')[0]} mode={a.mode}", flush=True)
    if a.profile:
        profile_step(step)


# The categories of the per-op table; bench_gpt2_step puts loom's scopes into the same ones (profile_category there).
def category(name, phase):
    if phase == "optimizer":
        return "AdamW (whole optimizer step)"
    if name.startswith("autograd::engine") or "Backward" in name or name.startswith("torch::autograd"):
        return "autograd engine (node glue)"
    a = name.replace("aten::", "")
    if a in ("addmm", "mm", "linear", "matmul", "_addmm_activation"):
        return "matmuls (linear layers, LM head)"
    if "scaled_dot_product" in a or "flash_attention" in a or a in (
            "bmm", "baddbmm", "masked_fill", "masked_fill_", "triu", "_softmax", "softmax",
            "_softmax_backward_data", "repeat_interleave"):
        return "attention backward" if phase == "backward" else "attention forward"
    if "layer_norm" in a or "rms_norm" in a:
        return "layer norm / RMSNorm"
    if "gelu" in a or "silu" in a:
        return "GELU / SiLU"
    if "log_softmax" in a or "nll_loss" in a or "cross_entropy" in a:
        return "softmax + cross-entropy over the vocabulary"
    if "embedding" in a:
        return "embedding (forward and backward)"
    if a in ("copy_", "clone", "contiguous", "_to_copy", "to"):
        return "copies"
    if a.startswith("empty") or a in ("resize_",):
        return "allocation"
    return "other elementwise and reductions"


def profile_step(step):
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        wall = time.perf_counter() - t0
    print(f"profile wall_ms={wall * 1e3:.3f}")
    totals = {}
    for e in prof.events():
        phase = "forward"
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("Optimizer."):
                phase = "optimizer"
                break
            if p.name.startswith("autograd::engine::evaluate_function"):
                phase = "backward"
            p = p.cpu_parent
        if e.name.startswith("Optimizer."):
            phase = "optimizer"
        c = category(e.name, phase)
        totals[c] = totals.get(c, 0.0) + e.self_cpu_time_total / 1e3
    for c, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"profile cat={c}|ms={ms:.3f}")


if __name__ == "__main__":
    main()
