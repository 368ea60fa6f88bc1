#!/usr/bin/env python3
"""Writes a small random GPT-2 or Llama model as Hugging Face's transformers saves one (save_pretrained): config.json
and model.safetensors, or model-0000k-of-0000N.safetensors shards with model.safetensors.index.json, written with the
`safetensors` library (safetensors.torch.save_file, metadata {"format": "pt"}), the tied head left out. GPT-2 uses
Conv1D weights stored (in, out) and can be written as the hub's original files are (--bare: no "transformer." prefix,
causal-mask buffers attn.bias / attn.masked_bias included). With --ref, also writes input ids and the logits of a
PyTorch forward (float64 from the stored weights) for loom to reproduce.

Usage: make_hf_model.py OUT_DIR --family gpt2|llama [--n-embd 64 --n-layer 2 --n-head 4 --n-kv-head 2 --vocab 64
       --seq 16 --inner 128 --dtype f32|bf16|f16 --shards N --bare --untied --head-name --seed S --ref REF.safetensors
       --config-set key=json_value ...]
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "reference"))
sys.path.insert(0, here)
from model_ref import llama_forward, write_safetensors  # noqa: E402
from export_logits_check import gpt2_hf_forward  # noqa: E402

DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def gpt2(a, g):
    C, L, V, T = a.n_embd, a.n_layer, a.vocab, a.seq
    r = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    sd = {"transformer.wte.weight": r(V, C) * 5, "transformer.wpe.weight": r(T, C) * 5}
    for i in range(L):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = 1 + r(C) * 5
        sd[p + "ln_1.bias"] = r(C)
        sd[p + "attn.c_attn.weight"] = r(C, 3 * C) * 5  # Conv1D: (in, out)
        sd[p + "attn.c_attn.bias"] = r(3 * C)
        sd[p + "attn.c_proj.weight"] = r(C, C) * 5
        sd[p + "attn.c_proj.bias"] = r(C)
        sd[p + "ln_2.weight"] = 1 + r(C) * 5
        sd[p + "ln_2.bias"] = r(C)
        sd[p + "mlp.c_fc.weight"] = r(C, 4 * C) * 5
        sd[p + "mlp.c_fc.bias"] = r(4 * C)
        sd[p + "mlp.c_proj.weight"] = r(4 * C, C) * 5
        sd[p + "mlp.c_proj.bias"] = r(C)
    sd["transformer.ln_f.weight"] = 1 + r(C) * 5
    sd["transformer.ln_f.bias"] = r(C)
    if a.untied:
        sd["lm_head.weight"] = r(V, C) * 5
    config = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
              "n_embd": C, "n_layer": L, "n_head": a.n_head, "n_positions": T, "n_ctx": T, "n_inner": None,
              "vocab_size": V, "layer_norm_epsilon": 1e-5, "tie_word_embeddings": not a.untied,
              "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[a.dtype]}
    return sd, config


def llama(a, g):
    C, L, V, H, Hkv, I = a.n_embd, a.n_layer, a.vocab, a.n_head, a.n_kv_head, a.inner
    D = C // H
    r = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    sd = {"model.embed_tokens.weight": r(V, C) * 5}
    for i in range(L):
        p = f"model.layers.{i}."
        sd[p + "input_layernorm.weight"] = 1 + r(C)
        sd[p + "self_attn.q_proj.weight"] = r(H * D, C)
        sd[p + "self_attn.k_proj.weight"] = r(Hkv * D, C)
        sd[p + "self_attn.v_proj.weight"] = r(Hkv * D, C)
        sd[p + "self_attn.o_proj.weight"] = r(C, H * D)
        sd[p + "post_attention_layernorm.weight"] = 1 + r(C)
        sd[p + "mlp.gate_proj.weight"] = r(I, C)
        sd[p + "mlp.up_proj.weight"] = r(I, C)
        sd[p + "mlp.down_proj.weight"] = r(C, I)
    sd["model.norm.weight"] = 1 + r(C)
    if a.untied:
        sd["lm_head.weight"] = r(V, C)
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
              "hidden_size": C, "num_hidden_layers": L, "num_attention_heads": H, "num_key_value_heads": Hkv,
              "intermediate_size": I, "vocab_size": V, "max_position_embeddings": a.seq, "rms_norm_eps": 1e-6,
              "rope_theta": 10000.0, "rope_scaling": None, "attention_bias": False, "mlp_bias": False,
              "tie_word_embeddings": not a.untied,
              "torch_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[a.dtype]}
    return sd, config


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--family", required=True, choices=["gpt2", "llama"])
    ap.add_argument("--n-embd", type=int, default=64)
    ap.add_argument("--n-layer", type=int, default=2)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-kv-head", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--inner", type=int, default=128)
    ap.add_argument("--dtype", default="f32", choices=list(DTYPES))
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--bare", action="store_true")
    ap.add_argument("--untied", action="store_true")
    ap.add_argument("--head-name", action="store_true",
                    help="tied: store the shared tensor as lm_head.weight only (huggingface_hub's save_torch_state_dict)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ref")
    ap.add_argument("--config-set", action="append", default=[])
    a = ap.parse_args()
    g = torch.Generator().manual_seed(a.seed)
    sd, config = gpt2(a, g) if a.family == "gpt2" else llama(a, g)
    sd = {k: v.to(DTYPES[a.dtype]).contiguous() for k, v in sd.items()}
    stored = dict(sd)
    if a.family == "gpt2" and a.bare:  # the hub's original files: saved from the bare GPT2Model
        stored = {k[len("transformer."):] if k.startswith("transformer.") else k: v for k, v in sd.items()}
        T = a.seq
        for i in range(a.n_layer):
            stored[f"h.{i}.attn.bias"] = torch.tril(torch.ones(T, T, dtype=torch.uint8)).view(1, 1, T, T)
            stored[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    if a.head_name and not a.untied:
        emb = "transformer.wte.weight" if a.family == "gpt2" else "model.embed_tokens.weight"
        stored["lm_head.weight"] = stored.pop(emb)
    for kv in a.config_set:
        k, v = kv.split("=", 1)
        config[k] = json.loads(v)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)
    names = list(stored)
    if a.shards <= 1:
        save_file(stored, os.path.join(a.out, "model.safetensors"), metadata={"format": "pt"})
    else:
        total = sum(t.numel() * t.element_size() for t in stored.values())
        per = (total + a.shards - 1) // a.shards
        groups, cur, size = [], [], 0
        for n in names:  # in order, a new shard when the current one is full (transformers' rule)
            b = stored[n].numel() * stored[n].element_size()
            if cur and size + b > per and len(groups) < a.shards - 1:
                groups.append(cur)
                cur, size = [], 0
            cur.append(n)
            size += b
        groups.append(cur)
        weight_map = {}
        for k, grp in enumerate(groups):
            fname = "model-%05d-of-%05d.safetensors" % (k + 1, len(groups))
            save_file({n: stored[n] for n in grp}, os.path.join(a.out, fname), metadata={"format": "pt"})
            weight_map.update({n: fname for n in grp})
        with open(os.path.join(a.out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f,
                      indent=2)
    if a.ref:
        p = {k: v.double() for k, v in sd.items()}
        idx = torch.randint(0, a.vocab, (2, a.seq), generator=g)
        with torch.no_grad():
            if a.family == "gpt2":
                x = gpt2_hf_forward(p, {"n_embd": a.n_embd, "n_head": a.n_head, "n_layer": a.n_layer}, idx)
                if a.untied:  # gpt2_hf_forward ties the head: redo the last product with the head
                    raise SystemExit("--ref with --untied GPT-2 is not supported")
            else:
                x = llama_forward(p, {"n_embd": a.n_embd, "n_head": a.n_head, "n_kv_head": a.n_kv_head,
                                      "n_layer": a.n_layer, "rms_norm_eps": 1e-6, "rope_theta": 10000.0}, idx)
        write_safetensors(a.ref, {"input_ids": idx, "logits": x.float()})
    print("make_hf_model: wrote %s (%d tensors, %s)" % (a.out, len(names), a.dtype))


if __name__ == "__main__":
    main()
