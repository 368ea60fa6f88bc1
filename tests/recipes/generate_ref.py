#!/usr/bin/python3
"""Checks loom's greedy generation against PyTorch step by step: loads a safetensors file exported by `loomckpt
export` (Hugging Face names) into the plain-PyTorch GPT-2 / Llama of tests/reference/model_ref.py and, for every
generated token of every sequence, checks that it is the argmax of PyTorch's logits after the same prefix.

Usage: generate_ref.py MODEL.safetensors CONFIG.json IDS_FILE [LOGITS_FILE]

CONFIG.json is the Hugging Face config (model_type gpt2 or llama); IDS_FILE holds `generate --ids` lines
("ids B: prompt ids | generated ids"); LOGITS_FILE, `generate --dump-logits`'s output (every step's (B, V) logits as
f32), is then compared with PyTorch's to 1e-5 (f32, other summation orders). Exits non-zero on the first
mismatch, naming the sequence and step.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "reference"))
from model_ref import gpt2_forward, llama_forward, read_safetensors  # noqa: E402


def main():
    params, _ = read_safetensors(sys.argv[1])
    hf = json.load(open(sys.argv[2]))
    if hf["model_type"] == "gpt2":
        cfg = {"n_embd": hf["n_embd"], "n_head": hf["n_head"], "n_layer": hf["n_layer"]}
        # Hugging Face's Conv1D layout (in, out) -> nn.Linear's (out, in), as model_ref's gpt2_forward expects.
        for k in list(params):
            if k.endswith(("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")):
                params[k] = params[k].t().contiguous()
        forward = gpt2_forward
    else:
        cfg = {"n_embd": hf["hidden_size"], "n_head": hf["num_attention_heads"],
               "n_kv_head": hf["num_key_value_heads"], "n_layer": hf["num_hidden_layers"],
               "rope_theta": hf.get("rope_theta", 10000.0), "rms_norm_eps": hf.get("rms_norm_eps", 1e-6)}
        forward = llama_forward
    seqs = []
    for line in open(sys.argv[3]):
        if not line.startswith("ids "):
            continue
        prompt, gen = line.split(":", 1)[1].split("|")
        seqs.append(([int(t) for t in prompt.split()], [int(t) for t in gen.split()]))
    if not seqs:
        sys.exit("generate_ref: FAIL: no 'ids' lines in " + sys.argv[3])
    checked = 0
    dumped = None
    if len(sys.argv) > 4:
        import numpy as np
        V = params["lm_head.weight" if "lm_head.weight" in params else
                   ("transformer.wte.weight" if hf["model_type"] == "gpt2" else "model.embed_tokens.weight")].shape[0]
        dumped = torch.from_numpy(np.fromfile(sys.argv[4], dtype=np.float32)).reshape(-1, len(seqs), V)
    worst = 0.0
    with torch.no_grad():
        for b, (prompt, gen) in enumerate(seqs):
            for i, tok in enumerate(gen):
                idx = torch.tensor([prompt + gen[:i]], dtype=torch.int64)
                logits = forward(params, cfg, idx)[0, -1]
                want = int(torch.argmax(logits))
                top2 = torch.topk(logits, 2).values
                if want != tok:
                    sys.exit("generate_ref: FAIL: sequence %d step %d: loom %d, PyTorch argmax %d (logits %.6f vs "
                             "%.6f, PyTorch's top two %.6f %.6f)" % (b, i, tok, want, logits[tok], logits[want],
                                                                     top2[0], top2[1]))
                if dumped is not None:
                    diff = (dumped[i, b] - logits).abs().max().item()
                    worst = max(worst, diff)
                    if not diff <= 1e-5:
                        sys.exit("generate_ref: FAIL: sequence %d step %d: loom's logits differ from PyTorch's by %.3g"
                                 % (b, i, diff))
                checked += 1
    print("generate_ref: OK: %d tokens of %d sequences are PyTorch's argmax%s" % (
        checked, len(seqs), "" if dumped is None else "; logits within %.2g of PyTorch's" % worst))


if __name__ == "__main__":
    main()
