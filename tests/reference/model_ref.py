#!/usr/bin/python3
"""Reference run of a tiny GPT-2 or Llama in PyTorch, for loom's reference test.

Usage: model_ref.py IN.safetensors OUT.safetensors

IN holds the model's weights under Hugging Face's names, the batch as
`__input_ids` and `__targets` (int64, (B, T)), and in its metadata a JSON
`config` (family, sizes, dtype, optimizer settings). OUT receives `logits`,
`loss`, `grad.<name>` for every parameter (after one backward), `losses`
(the loss before each of the AdamW steps) and `final.<name>` (the
parameters after them). The models are written here in plain PyTorch so
the test depends on nothing but Debian's python3-torch.
"""
import json
import math
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

DT = {"F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8}
CODE = {np.dtype(v): k for k, v in DT.items()}


def read_safetensors(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        s, t = e["data_offsets"]
        arr = np.frombuffer(raw[8 + n + s : 8 + n + t], dtype=DT[e["dtype"]]).reshape(e["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out, meta


def write_safetensors(path, tensors):
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = np.array(t.detach().cpu().numpy(), order="C", copy=True)  # keeps 0-d shapes
        b = a.tobytes()
        header[name] = {"dtype": CODE[a.dtype], "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * ((8 - (len(h) + 8) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# Autocast mirror (config "autocast": true): loom's AutocastGuard policy written
# out as casts. Matrix products take bf16 operands (computed with f32
# accumulation, rounded once); layer norm and the loss run in f32; attention
# takes bf16 q, k, v, computes in f32 and rounds its output to bf16 (as loom's
# fused attention and flash attention do); elementwise ops promote.
AUTOCAST = False


def lo(t):
    return t.bfloat16() if AUTOCAST and t is not None and t.dtype == torch.float32 else t


def hi(t):
    return t.float() if AUTOCAST and t is not None and t.dtype == torch.bfloat16 else t


def linear(x, w, b=None):
    return F.linear(lo(x), lo(w), lo(b))


def attention(q, k, v, n_head, n_kv_head):
    if AUTOCAST:
        return attention_f(hi(q), hi(k), hi(v), n_head, n_kv_head).to(q.dtype)
    return attention_f(q, k, v, n_head, n_kv_head)


def attention_f(q, k, v, n_head, n_kv_head):
    # q (B, H, T, D), k/v (B, Hkv, T, D): repeat kv heads as HF's repeat_kv does.
    rep = n_head // n_kv_head
    if rep > 1:
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
    T = q.shape[2]
    att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), diagonal=1)
    att = att.masked_fill(mask, float("-inf")).softmax(dim=-1)
    return att @ v


def gpt2_forward(p, cfg, idx):
    B, T = idx.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][:T]
    for i in range(L):
        pre = f"transformer.h.{i}."
        h = F.layer_norm(hi(x), (C,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], eps)
        qkv = linear(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"])
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = attention(q, k, v, H, H).transpose(1, 2).reshape(B, T, C)
        x = x + linear(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        h = F.layer_norm(hi(x), (C,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], eps)
        h = F.gelu(linear(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + linear(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    x = F.layer_norm(hi(x), (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], eps)
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["transformer.wte.weight"]
    return linear(x, head)


def rms_norm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rotate_half(x):
    d = x.shape[-1] // 2
    return torch.cat((-x[..., d:], x[..., :d]), dim=-1)


def llama_forward(p, cfg, idx):
    B, T = idx.shape
    C, H, Hkv, L = cfg["n_embd"], cfg["n_head"], cfg["n_kv_head"], cfg["n_layer"]
    D = C // H
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    freqs = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(p["model.norm.weight"].dtype), emb.sin().to(p["model.norm.weight"].dtype)
    x = p["model.embed_tokens.weight"][idx]
    for i in range(L):
        pre = f"model.layers.{i}."
        h = rms_norm(x, p[pre + "input_layernorm.weight"], eps)
        q = F.linear(h, p[pre + "self_attn.q_proj.weight"]).view(B, T, H, D).transpose(1, 2)
        k = F.linear(h, p[pre + "self_attn.k_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        v = F.linear(h, p[pre + "self_attn.v_proj.weight"]).view(B, T, Hkv, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = attention(q, k, v, H, Hkv).transpose(1, 2).reshape(B, T, C)
        x = x + F.linear(y, p[pre + "self_attn.o_proj.weight"])
        h = rms_norm(x, p[pre + "post_attention_layernorm.weight"], eps)
        g = F.silu(F.linear(h, p[pre + "mlp.gate_proj.weight"])) * F.linear(h, p[pre + "mlp.up_proj.weight"])
        x = x + F.linear(g, p[pre + "mlp.down_proj.weight"])
    x = rms_norm(x, p["model.norm.weight"], eps)
    head = p["lm_head.weight"] if "lm_head.weight" in p else p["model.embed_tokens.weight"]
    return F.linear(x, head)


def main():
    tensors, meta = read_safetensors(sys.argv[1])
    cfg = json.loads(meta["config"])
    global AUTOCAST
    AUTOCAST = bool(cfg.get("autocast", False))
    if AUTOCAST and cfg["family"] != "gpt2":
        sys.exit("model_ref.py: the autocast mirror is written for gpt2 only")
    torch.set_num_threads(int(cfg.get("threads", 1)))
    idx = tensors.pop("__input_ids")
    targets = tensors.pop("__targets")
    params = {k: v.clone().requires_grad_(True) for k, v in tensors.items()}
    forward = gpt2_forward if cfg["family"] == "gpt2" else llama_forward

    def loss_of(logits):
        return F.cross_entropy(hi(logits).reshape(-1, logits.shape[-1]), targets.reshape(-1))

    logits = forward(params, cfg, idx)
    loss = loss_of(logits)
    loss.backward()
    out = {"logits": hi(logits.detach()), "loss": loss.detach().reshape(())}
    for k, v in params.items():
        out["grad." + k] = v.grad.detach().clone()

    # AdamW steps on the same batch; decay on 2-D+ parameters only.
    decay = [v for v in params.values() if v.dim() >= 2]
    no_decay = [v for v in params.values() if v.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["eps"])
    losses = []
    for _ in range(cfg["steps"]):
        opt.zero_grad(set_to_none=True)
        l = loss_of(forward(params, cfg, idx))
        losses.append(l.item())
        l.backward()
        opt.step()
    out["losses"] = torch.tensor(losses, dtype=torch.float64)
    for k, v in params.items():
        out["final." + k] = v.detach()
    write_safetensors(sys.argv[2], out)


if __name__ == "__main__":
    main()
