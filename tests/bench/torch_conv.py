#!/usr/bin/env python3
"""PyTorch peer of bench_conv: Conv2d forward+backward GFLOP/s for the shapes bench_conv passes, and the ConvNet
training step (issue 18's network, AdamW) in images/s, on CPU with THREADS threads.

Usage: torch_conv.py THREADS BATCH STEPS SHAPE...   (SHAPE = name:N,C,H,W,OC,K,stride,pad)
Prints `torch conv <name> threads=T gflops=X` per shape and `torch convnet threads=T images_per_s=X step_ms=Y`.
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def best_time(fn, reps, rounds=3):
    fn()  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main():
    threads, batch, steps = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    for spec in sys.argv[4:]:
        name, dims = spec.split(":")
        N, C, H, W, OC, K, s, p = (int(v) for v in dims.split(","))
        x = torch.randn(N, C, H, W, requires_grad=True)
        w = torch.randn(OC, C, K, K, requires_grad=True)
        b = torch.randn(OC, requires_grad=True)
        OH, OW = (H + 2 * p - K) // s + 1, (W + 2 * p - K) // s + 1
        r = torch.randn(N, OC, OH, OW)

        def step():
            y = F.conv2d(x, w, b, s, p)
            gx, gw, gb = torch.autograd.grad(y, (x, w, b), r)

        t = best_time(step, 3)
        flops = 3 * 2.0 * N * OC * OH * OW * C * K * K
        print(f"torch conv {name} threads={threads} gflops={flops / t / 1e9:.2f}", flush=True)

    model = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Dropout(0.25), nn.Flatten(),
        nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Dropout(0.5), nn.Linear(128, 10))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    x = torch.randn(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))

    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()

    t = best_time(train_step, steps)
    print(f"torch convnet threads={threads} images_per_s={batch / t:.1f} step_ms={t * 1e3:.2f}", flush=True)


if __name__ == "__main__":
    main()
