#!/usr/bin/env python3
"""PyTorch reference values for loom's conv2d, pooling and batch-norm tests (tests/nn/conv_reference_test.cc).

Run with the repository's .venv python (torch 1.13). Prints one line per figure: `name v0 v1 ...` (row-major, %.17g).
Inputs are gen(shape, seed, scale) = scale * sin(0.37*i + seed) in f64, the formula the C++ test uses, cast to the
case's dtype; every gradient is that of sum(y * gen(y.shape, 9, 1)) so one upstream gradient reaches every element.
"""
import math
import sys

import torch
import torch.nn.functional as F

torch.set_num_threads(1)
out = sys.stdout


def gen(shape, seed, scale=1.0, dtype=torch.float64):
    n = math.prod(shape)
    v = torch.sin(torch.arange(n, dtype=torch.float64) * 0.37 + seed) * scale
    return v.reshape(shape).to(dtype)


def emit(name, t):
    vals = t.detach().to(torch.float64).reshape(-1).tolist()
    out.write(name + " " + " ".join("%.17g" % v for v in vals) + "\n")


def backward_of(y):
    (y * gen(tuple(y.shape), 9, 1.0, y.dtype)).sum().backward()


# name, x shape, w shape, bias, stride, padding, dilation, groups
CONVS = [
    ("conv_basic", (2, 3, 7, 6), (4, 3, 3, 3), True, (1, 1), (1, 1), (1, 1), 1),
    ("conv_groups", (2, 4, 9, 8), (6, 2, 3, 2), True, (2, 1), (1, 0), (1, 2), 2),
    ("conv_depthwise", (3, 6, 7, 7), (6, 1, 3, 3), False, (2, 2), (1, 1), (2, 2), 6),
    ("conv_1x1", (2, 5, 4, 4), (3, 5, 1, 1), True, (1, 1), (0, 0), (1, 1), 1),
    ("conv_stride3_pad2", (1, 2, 6, 6), (2, 2, 3, 3), True, (3, 3), (2, 2), (1, 1), 1),
    ("conv_1x1_stride2", (2, 4, 5, 5), (4, 4, 1, 1), False, (2, 2), (0, 0), (1, 1), 1),
]

# name, x shape, kernel, stride, padding, dilation, ceil_mode, count_include_pad
MAXPOOLS = [
    ("maxpool_k3s2p1", (2, 3, 7, 8), (3, 3), (2, 2), (1, 1), (1, 1), False),
    ("maxpool_ceil", (2, 2, 5, 5), (2, 2), (2, 2), (0, 0), (1, 1), True),
    ("maxpool_dil", (1, 2, 6, 7), (2, 3), (1, 2), (1, 1), (2, 1), False),
]
AVGPOOLS = [
    ("avgpool_k3s2p1", (2, 3, 7, 8), (3, 3), (2, 2), (1, 1), False, True),
    ("avgpool_nopad_count", (2, 3, 7, 8), (3, 3), (2, 2), (1, 1), False, False),
    ("avgpool_ceil", (2, 2, 5, 5), (2, 2), (2, 2), (0, 0), True, True),
]
ADAPTIVE = [("adaptive_3x4", (2, 3, 7, 9), (3, 4)), ("adaptive_1x1", (2, 3, 5, 4), (1, 1))]

for dname, dt in (("f32", torch.float32), ("f64", torch.float64)):
    for name, xs, ws, bias, st, pad, dil, groups in CONVS:
        x = gen(xs, 1, 2.0, dt).requires_grad_()
        w = gen(ws, 2, 0.5, dt).requires_grad_()
        b = gen((ws[0],), 3, 0.5, dt).requires_grad_() if bias else None
        y = F.conv2d(x, w, b, st, pad, dil, groups)
        backward_of(y)
        emit(f"{name}_{dname}_y", y)
        emit(f"{name}_{dname}_dx", x.grad)
        emit(f"{name}_{dname}_dw", w.grad)
        if bias:
            emit(f"{name}_{dname}_db", b.grad)
    for name, xs, k, st, pad, dil, ceil in MAXPOOLS:
        x = gen(xs, 4, 2.0, dt).requires_grad_()
        y, idx = F.max_pool2d(x, k, st, pad, dil, ceil, return_indices=True)
        backward_of(y)
        emit(f"{name}_{dname}_y", y)
        emit(f"{name}_{dname}_idx", idx)
        emit(f"{name}_{dname}_dx", x.grad)
    for name, xs, k, st, pad, ceil, cip in AVGPOOLS:
        x = gen(xs, 5, 2.0, dt).requires_grad_()
        y = F.avg_pool2d(x, k, st, pad, ceil, cip)
        backward_of(y)
        emit(f"{name}_{dname}_y", y)
        emit(f"{name}_{dname}_dx", x.grad)
    for name, xs, os in ADAPTIVE:
        x = gen(xs, 6, 2.0, dt).requires_grad_()
        y = F.adaptive_avg_pool2d(x, os)
        backward_of(y)
        emit(f"{name}_{dname}_y", y)
        emit(f"{name}_{dname}_dx", x.grad)
    for training in (True, False):
        name = "bn_train" if training else "bn_eval"
        x = (gen((4, 3, 5, 5), 7, 2.0, dt) + 0.5).requires_grad_()
        w = (gen((3,), 8, 0.5, dt) + 1.0).requires_grad_()
        b = gen((3,), 10, 0.5, dt).requires_grad_()
        rm = gen((3,), 11, 0.3, dt)
        rv = gen((3,), 12, 0.3, dt) + 1.0
        y = F.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)
        backward_of(y)
        emit(f"{name}_{dname}_y", y)
        emit(f"{name}_{dname}_dx", x.grad)
        emit(f"{name}_{dname}_dw", w.grad)
        emit(f"{name}_{dname}_db", b.grad)
        emit(f"{name}_{dname}_running_mean", rm)
        emit(f"{name}_{dname}_running_var", rv)
