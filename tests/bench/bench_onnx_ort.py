"""ONNX Runtime CPU tokens/s of an exported model (bench_onnx runs it): bench_onnx_ort.py PATH B T ITERS VOCAB THREADS."""
import sys
import time

import numpy as np
import onnxruntime as ort

path, B, T, iters, vocab, threads = sys.argv[1], *map(int, sys.argv[2:])
so = ort.SessionOptions()
so.intra_op_num_threads = threads
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
ids = np.random.default_rng(0).integers(0, vocab, (B, T))
s.run(["logits"], {"input_ids": ids})  # warm-up
best = min((lambda t0: (s.run(["logits"], {"input_ids": ids}), time.perf_counter() - t0)[1])(time.perf_counter())
           for _ in range(iters))
print(f"onnxruntime {ort.__version__} (CPU, {threads} threads, best of {iters}): {B * T / best:.0f} tokens/s")
