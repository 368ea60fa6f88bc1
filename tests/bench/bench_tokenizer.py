#!/usr/bin/env python3
"""Reference half of bench_tokenizer: tiktoken and Hugging Face tokenizers, one thread each, on the corpus that
bench_tokenizer times loom on. Prints one line per figure: `<config> <implementation> <MB/s of the thread's CPU
time> <MB/s wall> <tokens>`.

    bench_tokenizer.py DATA_DIR REPEATS
"""
import base64
import os
import struct
import sys
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data"))
import tokenizer_reference as ref  # noqa: E402
import make_test_tokenizers as mtt  # noqa: E402


def main():
    d, repeats = sys.argv[1], int(sys.argv[2])
    import tiktoken
    from tokenizers import Tokenizer
    with open(os.path.join(d, "corpus.bin"), "rb") as f:
        data = f.read()
    n = struct.unpack("<I", data[:4])[0]
    pos, docs = 4, []
    for _ in range(n):
        ln = struct.unpack("<I", data[pos:pos + 4])[0]
        docs.append(data[pos + 4:pos + 4 + ln])
        pos += 4 + ln
    total = sum(map(len, docs))
    texts = [x.decode("utf-8", "replace") for x in docs]

    def ranks_of(path):
        out = {}
        for line in open(path, "rb").read().splitlines():
            if line:
                tok, r = line.split()
                out[base64.b64decode(tok)] = int(r)
        return out

    g = ranks_of(os.path.join(d, "gpt2", "gpt2.tiktoken"))
    l3 = ranks_of(os.path.join(d, "llama3", "tokenizer.model"))
    encs = {
        "gpt2 tiktoken-ranks": tiktoken.Encoding("g", pat_str=ref.GPT2_PAT, mergeable_ranks=g, special_tokens={}),
        "llama3 tiktoken-ranks": tiktoken.Encoding("l", pat_str=mtt.LLAMA3_PATTERN, mergeable_ranks=l3,
                                                   special_tokens={}),
    }
    for name, enc in encs.items():
        best, best_cpu, count = 1e9, 1e9, 0
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            count = sum(len(enc.encode_ordinary(t)) for t in texts)
            best_cpu = min(best_cpu, time.thread_time() - c0)
            best = min(best, time.perf_counter() - t0)
        print(f"{name} tiktoken-{tiktoken.__version__} {total / best_cpu / 1e6:.2f} {total / best / 1e6:.2f} {count}",
              flush=True)
    import tokenizers
    for name, path in (("gpt2 tokenizer.json", "gpt2/tokenizer.json"), ("llama3 tokenizer.json", "llama3/tokenizer.json")):
        tok = Tokenizer.from_file(os.path.join(d, path))
        tok.encode_special_tokens = True
        best, best_cpu, count = 1e9, 1e9, 0
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.thread_time()
            count = sum(len(tok.encode(t, add_special_tokens=False).ids) for t in texts)
            best_cpu = min(best_cpu, time.thread_time() - c0)
            best = min(best, time.perf_counter() - t0)
        print(f"{name} tokenizers-{tokenizers.__version__} {total / best_cpu / 1e6:.2f} {total / best / 1e6:.2f} "
              f"{count}", flush=True)


if __name__ == "__main__":
    main()
