#!/usr/bin/python3
"""PyTorch reference values for loom's reduction, matmul and nn-kernel tests.

Run with Debian's python (torch 1.13): /usr/bin/python3 tensor_ops_ref.py
Prints one line per figure: `name v0 v1 ...` (row-major values, %.17g).
Inputs come from gen(shape, seed) = 2*sin(0.37*i + seed) in f64, the same
formula tests/tensor/torch_ref.h uses, then cast to the case's dtype.
"""
import math
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
out = sys.stdout


def gen(shape, seed, scale=2.0, dtype=torch.float32):
    n = math.prod(shape)
    v = torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + seed) * scale
    return v.reshape(shape).to(dtype)


def emit(name, t):
    if isinstance(t, (int, float)):
        vals = [float(t)]
    else:
        vals = t.detach().to(torch.float64).reshape(-1).tolist()
    out.write(name + " " + " ".join("%.17g" % v for v in vals) + "\n")


# ------------------------------------------------------------------ reductions
x = gen((3, 4, 5), 1)
emit("sum_all", x.sum())
emit("sum_d1", x.sum(1))
emit("sum_d02_keep", x.sum((0, 2), keepdim=True))
emit("sum_neg", x.sum(-1))
emit("mean_d1", x.mean(1))
emit("mean_all", x.mean())
emit("var_all", x.var())
emit("var_d1_c0", x.var(1, unbiased=False))
emit("var_d02_keep", x.var((0, 2), keepdim=True))
emit("max_all", x.max())
v, i = x.max(1)
emit("max_d1_values", v)
emit("max_d1_indices", i)
emit("argmax_neg_keep", x.argmax(-1, keepdim=True))
emit("norm_all", torch.linalg.norm(x.reshape(-1)))
emit("sum_to_3_1", x.sum_to_size(4, 1))
emit("sum_to_1_4_5", x.sum_to_size(1, 4, 5))
xt = gen((4, 6), 2).t()  # (6, 4) transposed view
emit("sum_t_d1", xt.sum(1))
emit("sum_t_d0", xt.sum(0))
emit("sum_sliced", gen((5, 8), 3)[1:4, ::3].sum(0))
xi = (gen((3, 4), 4) * 50).to(torch.int32)
emit("sum_i32_d0", xi.sum(0))
emit("sum_i32_all", xi.sum())
emit("max_i32_d1_values", xi.max(1)[0])
xb = gen((6, 40), 5, dtype=torch.bfloat16)
emit("sum_bf16_d1", xb.sum(1))
emit("sum_f64_d0", gen((7, 3), 6, dtype=torch.float64).sum(0))
big = gen((1000000,), 7, scale=1.0, dtype=torch.float32) + 1.1
emit("sum_big", big.to(torch.float64).sum())
emit("mean_big", big.to(torch.float64).mean())
bigc = gen((1000, 1000), 8, scale=1.0) + 0.5
emit("sum_big_d0", bigc.to(torch.float64).sum(0))

# ------------------------------------------------------------------ matmul
a = gen((5, 7), 1)
b = gen((7, 3), 2)
emit("mm_2d", a @ b)
emit("mm_tt", gen((7, 5), 3).t() @ gen((3, 7), 4).t())
emit("mm_vv", gen((7,), 1) @ gen((7,), 2))
emit("mm_vm", gen((7,), 1) @ b)
emit("mm_mv", a @ gen((7,), 2))
emit("mm_bcast", gen((2, 1, 4, 5), 5) @ gen((3, 5, 6), 6))
emit("mm_b_vec", gen((2, 3, 4), 7) @ gen((4,), 8))
emit("mm_vec_b", gen((4,), 9) @ gen((2, 4, 3), 10))
emit("mm_fold", gen((2, 3, 4, 5), 11) @ gen((5, 6), 12))
emit("mm_fold_t", gen((2, 3, 4, 5), 11) @ gen((6, 5), 13).t())
emit("mm_sliced", gen((6, 10), 14)[:, 2:9] @ gen((14, 3), 15)[::2])
emit("mm_strided", gen((5, 14), 16)[:, ::2] @ gen((7, 3), 17))
emit("mm_batch_t", gen((3, 5, 4), 18).transpose(1, 2) @ gen((3, 6, 5), 19).transpose(1, 2))
emit("mm_f64", gen((4, 6), 20, dtype=torch.float64) @ gen((6, 2), 21, dtype=torch.float64))
# torch 1.13's CPU bf16 matmul accumulates in bf16 (off by ~0.03 here); loom, like
# cuBLAS and newer PyTorch, accumulates in f32 and rounds once, so that is the reference.
emit("mm_bf16", (gen((4, 16), 22, dtype=torch.bfloat16).float() @ gen((16, 3), 23, dtype=torch.bfloat16).float()).bfloat16())
emit("mm_f16", (gen((4, 16), 22, dtype=torch.float16).float() @ gen((16, 3), 23, dtype=torch.float16).float()).half())
emit("mm_i64", (gen((3, 4), 24) * 10).to(torch.int64) @ (gen((4, 2), 25) * 10).to(torch.int64))
emit("linear_bias", F.linear(gen((2, 3, 8), 26), gen((5, 8), 27), gen((5,), 28)))
emit("linear_nobias", F.linear(gen((2, 3, 8), 26), gen((5, 8), 27)))
emit("linear_wt", F.linear(gen((4, 8), 29), gen((8, 5), 30).t(), gen((5,), 31)))
emit("linear_xt", F.linear(gen((3, 2, 8), 32).transpose(0, 1), gen((5, 8), 33), gen((5,), 34)))
emit("linear_vec", F.linear(gen((8,), 35), gen((5, 8), 36), gen((5,), 37)))
emit("linear_bf16", F.linear(gen((4, 8), 38, dtype=torch.bfloat16).float(), gen((5, 8), 39, dtype=torch.bfloat16).float(),
                             gen((5,), 40, dtype=torch.bfloat16).float()).bfloat16())
c0 = gen((5, 3), 41)
emit("gemm_ab", 2.0 * c0 + 0.5 * (gen((7, 5), 42).t() @ gen((7, 3), 43)))

# ------------------------------------------------------------------ softmax family
s = gen((4, 10), 1, scale=3.0)
emit("softmax_last", torch.softmax(s, -1))
emit("softmax_d0", torch.softmax(s, 0))
emit("log_softmax_last", torch.log_softmax(s, -1))
s3 = gen((3, 5, 4), 2, scale=3.0)
emit("softmax_dm2", torch.softmax(s3, -2))
emit("log_softmax_d1", torch.log_softmax(s3, 1))
sm = gen((3, 6), 3, scale=3.0).masked_fill(torch.triu(torch.ones(3, 6, dtype=torch.bool), 1), float("-inf"))
emit("softmax_masked", torch.softmax(sm, -1))
emit("softmax_bf16", torch.softmax(gen((4, 32), 4, scale=3.0, dtype=torch.bfloat16).float(), -1))
emit("softmax_f64", torch.softmax(gen((3, 9), 5, dtype=torch.float64), -1))
emit("softmax_large", torch.softmax(gen((2, 300), 6, scale=40.0), -1))
for name, fn, dim, shape in (("softmax_bwd", torch.softmax, -1, (4, 10)), ("log_softmax_bwd", torch.log_softmax, -1, (4, 10)),
                             ("softmax_bwd_d0", torch.softmax, 0, (4, 10)), ("log_softmax_bwd_d1", torch.log_softmax, 1, (3, 5, 4))):
    xx = gen(shape, 7, scale=3.0).requires_grad_()
    yy = fn(xx, dim)
    yy.backward(gen(shape, 8))
    emit(name, xx.grad)

# ------------------------------------------------------------------ norms
xn = gen((6, 16), 9).requires_grad_()
wn = gen((16,), 10, scale=1.0) + 1.0
wn.requires_grad_()
bn = gen((16,), 11, scale=0.5).requires_grad_()
yn = F.layer_norm(xn, (16,), wn, bn, 1e-5)
var, mu = torch.var_mean(xn.detach(), -1, unbiased=False)
emit("ln_y", yn)
emit("ln_mean", mu)
emit("ln_rstd", torch.rsqrt(var + 1e-5))
yn.backward(gen((6, 16), 12))
emit("ln_dx", xn.grad)
emit("ln_dw", wn.grad)
emit("ln_db", bn.grad)
xn2 = gen((2, 3, 16), 13).requires_grad_()
y2 = F.layer_norm(xn2, (16,), None, None, 1e-5)
y2.backward(gen((2, 3, 16), 14))
emit("ln_noaffine_y", y2)
emit("ln_noaffine_dx", xn2.grad)
emit("ln_bf16_y", F.layer_norm(gen((4, 16), 15, dtype=torch.bfloat16).float(), (16,), wn.detach(), bn.detach(), 1e-5))

xr = gen((5, 12), 16).requires_grad_()
wr = (gen((12,), 17, scale=1.0) + 1.0).requires_grad_()
rstd = torch.rsqrt(xr.pow(2).mean(-1, keepdim=True) + 1e-6)
yr = xr * rstd * wr
emit("rms_y", yr)
emit("rms_rstd", rstd)
yr.backward(gen((5, 12), 18))
emit("rms_dx", xr.grad)
emit("rms_dw", wr.grad)

# ------------------------------------------------------------------ embedding
we = gen((10, 6), 19).requires_grad_()
ie = torch.tensor([[1, 3, 3], [9, 0, 1]])
ye = F.embedding(ie, we)
emit("emb_y", ye)
ye.backward(gen((2, 3, 6), 20))
emit("emb_dw", we.grad)

# ------------------------------------------------------------------ cross-entropy
lg = gen((8, 11), 21, scale=4.0).requires_grad_()
tg = torch.tensor([3, -100, 0, 10, 5, -100, 7, 7])
loss = F.cross_entropy(lg, tg, ignore_index=-100)
emit("ce_loss", loss)
emit("ce_lse", torch.logsumexp(lg.detach(), -1))
(loss * 1.5).backward()
emit("ce_dlogits", lg.grad)
emit("ce_all_ignored", F.cross_entropy(gen((3, 4), 22), torch.tensor([-100, -100, -100])))
lg2 = gen((4, 1000), 23, scale=30.0).requires_grad_()
tg2 = torch.tensor([0, 999, 500, 17])
loss2 = F.cross_entropy(lg2, tg2)
emit("ce_big_loss", loss2)
loss2.backward()
emit("ce_big_dlogits", lg2.grad)
lg3 = gen((5, 7), 24, scale=3.0, dtype=torch.float64).requires_grad_()
tg3 = torch.tensor([1, 2, 3, -1, 6])
loss3 = F.cross_entropy(lg3, tg3, ignore_index=-1)
emit("ce_f64_loss", loss3)
loss3.backward()
emit("ce_f64_dlogits", lg3.grad)

# ------------------------------------------------------------------ rope (Hugging Face Llama convention)
B, H, T, D = 2, 3, 5, 8
xq = gen((B, H, T, D), 25)
inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv_freq)  # (T, D/2)
emb = torch.cat((freqs, freqs), dim=-1)
cos, sin = emb.cos(), emb.sin()


def rotate_half(v):
    v1, v2 = v[..., : v.shape[-1] // 2], v[..., v.shape[-1] // 2:]
    return torch.cat((-v2, v1), dim=-1)


emit("rope_cos", freqs.cos())
emit("rope_sin", freqs.sin())
emit("rope_y", xq * cos + rotate_half(xq) * sin)
