#!/usr/bin/python3
"""Loads a safetensors file exported by `loomckpt export` into PyTorch as Hugging Face's GPT-2 lays it out (Conv1D
weights (in, out): y = x @ W + b) and checks that it reproduces loom's logits.

Usage: export_logits_check.py EXPORT.safetensors REF.safetensors

REF holds `input_ids` (B, T) and loom's `logits` (B, T, V), and in its metadata a JSON `config` (family "gpt2" or
"llama", n_embd, n_head, n_layer; n_kv_head for Llama, whose Hugging Face layout is loom's: nn.Linear (out, in)).
Exits non-zero when a Hugging Face key is missing or the logits differ by more than 1e-4.
"""
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from model_ref import attention, llama_forward, read_safetensors  # noqa: E402


def conv1d(x, w, b):
    # transformers.pytorch_utils.Conv1D: weight (nx, nf), y = x @ W + b
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), w).reshape(*x.shape[:-1], w.shape[1])


def gpt2_hf_forward(p, cfg, idx):
    B, T = idx.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    x = p["transformer.wte.weight"][idx] + p["transformer.wpe.weight"][:T]
    for i in range(L):
        pre = f"transformer.h.{i}."
        h = F.layer_norm(x, (C,), p[pre + "ln_1.weight"], p[pre + "ln_1.bias"], 1e-5)
        q, k, v = conv1d(h, p[pre + "attn.c_attn.weight"], p[pre + "attn.c_attn.bias"]).split(C, dim=2)
        q, k, v = (t.view(B, T, H, C // H).transpose(1, 2) for t in (q, k, v))
        y = attention(q, k, v, H, H).transpose(1, 2).reshape(B, T, C)
        x = x + conv1d(y, p[pre + "attn.c_proj.weight"], p[pre + "attn.c_proj.bias"])
        h = F.layer_norm(x, (C,), p[pre + "ln_2.weight"], p[pre + "ln_2.bias"], 1e-5)
        h = F.gelu(conv1d(h, p[pre + "mlp.c_fc.weight"], p[pre + "mlp.c_fc.bias"]), approximate="tanh")
        x = x + conv1d(h, p[pre + "mlp.c_proj.weight"], p[pre + "mlp.c_proj.bias"])
    x = F.layer_norm(x, (C,), p["transformer.ln_f.weight"], p["transformer.ln_f.bias"], 1e-5)
    return x @ p["transformer.wte.weight"].t()  # tied head, as GPT2LMHeadModel


def main():
    params, meta = read_safetensors(sys.argv[1])
    ref, ref_meta = read_safetensors(sys.argv[2])
    cfg = json.loads(ref_meta["config"])
    C = cfg["n_embd"]
    for i in range(cfg["n_layer"] if cfg.get("family", "gpt2") == "gpt2" else 0):
        w = params[f"transformer.h.{i}.attn.c_attn.weight"]
        if tuple(w.shape) != (C, 3 * C):
            print("export_logits_check: FAIL: c_attn.weight is %s, Hugging Face's Conv1D stores (%d, %d)"
                  % (tuple(w.shape), C, 3 * C))
            sys.exit(1)
    with torch.no_grad():
        forward = gpt2_hf_forward if cfg.get("family", "gpt2") == "gpt2" else llama_forward
        logits = forward(params, cfg, ref["input_ids"])
    diff = (logits - ref["logits"]).abs().max().item()
    print("export_logits_check: max |logits - loom| = %.3g over %s (step %s)" % (diff, tuple(logits.shape),
                                                                                   meta.get("step")))
    if not diff <= 1e-4:
        print("export_logits_check: FAIL")
        sys.exit(1)
    print("export_logits_check: OK")


if __name__ == "__main__":
    main()
