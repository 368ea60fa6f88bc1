#!/usr/bin/env python3
"""Test data for tests/data/tokenizer_test.cc: trains the test tokenizers (scripts/make_test_tokenizers.py), builds a
test corpus of >= 5 MB of varied text, and writes the token ids that the reference implementations (tiktoken, Hugging
Face tokenizers) give for every document of it.

    tokenizer_reference.py --out DIR [--mb 5.5]

DIR/corpus.bin: u32 n_docs, then per document u32 length and its bytes (not always valid UTF-8).
DIR/ref/<config>.<mode>.bin: per document u32 count and that many i32 ids; mode "ordinary" (special-token text is
plain text) or "special" (special tokens recognised). The references see bytes.decode("utf-8", "replace") of a
document (they take only Unicode strings); loom documents that it encodes invalid UTF-8 the same way.
DIR/configs.txt: one line per config: name, tokenizer file (relative to DIR), pattern argument ("-" for none).
"""
import argparse
import base64
import os
import random
import struct
import sys
import time
import unicodedata

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts"))
import make_test_tokenizers as mtt  # noqa: E402

GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
O200K_PAT = "|".join([  # tiktoken_ext/openai_public.py, o200k_base
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
    r"""\p{N}{1,3}""",
    r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
    r"""\s*[\r\n]+""",
    r"""\s+(?!\S)""",
    r"""\s+""",
])
CL100K_PAT = (r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
              r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")


def synthetic_docs(rng, specials):
    """Hand-made hard cases: emoji, whitespace runs, invalid UTF-8, contractions, long pieces, rare scripts."""
    docs = []
    emoji = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇩🇪🇯🇵", "❤️", "🧑🏿‍💻", "✊🏾", "1️⃣", "🫠", "☃", "©️"]
    ws = [" ", "  ", "\t", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2028", "\u2009", "\x0b", "\x0c", "\u0085",
          "\u1680", "\u202f", " \n ", "\n\n\n", "\t \t"]
    words = ["Hello", "world", "don't", "I'M", "WE'LL", "they'Re", "it'S", "you'VE", "'ſ", "'K", "ſ", "ﬁ", "ǅ",
             "naïve", "café", "Ελληνικά", "русский", "日本語", "中文", "한국어", "العربية", "עברית", "हिन्दी", "ไทย",
             "ქართული", "Հայերեն", "አማርኛ", "ᏣᎳᎩ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "x²", "½", "①", "٣٤٥", "१२३", "12345678", "3.14159",
             "0x7fff", "a+b=c", "<div>", "</p>", "==>", "...", "---", "__init__", "i++", "#!", "$$", "\\n", "'", "''",
             "'s", "’s", "e\u0301", "\u0301", "a\u200db", "\ufeff", "\u200b", "\x00", "\x01", "\x7f", "\ufffd"]
    for _ in range(300):
        parts = []
        for _ in range(rng.randint(5, 200)):
            r = rng.random()
            if r < 0.35:
                parts.append(rng.choice(words))
            elif r < 0.55:
                parts.append(rng.choice(ws) * rng.randint(1, 6))
            elif r < 0.65:
                parts.append(rng.choice(emoji))
            elif r < 0.72:
                parts.append(rng.choice(specials)[: rng.choice([100, 100, 100, 5, 3])])
            elif r < 0.80:
                parts.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
            else:
                parts.append(rng.choice(words) + rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL"]))
        docs.append("".join(parts).encode("utf-8"))
    # Long runs: whitespace, symbols, one long word, base64 blobs (pieces longer than 256 bytes).
    docs.append(b" " * 100000 + b"x" + b"\n" * 5000 + b"\t \n" * 3000)
    docs.append(b"=" * 20000 + b"-" * 3000 + b"*/" * 2000)
    docs.append(b"a" * 30000 + b" " + b"ab" * 5000 + b" " + "ж".encode() * 4000)
    docs.append(base64.b64encode(rng.randbytes(60000)))
    docs.append(("😀" * 3000 + "👨‍👩‍👧‍👦" * 500).encode())
    # Invalid UTF-8: random bytes, truncated sequences, surrogates, overlongs, bytes above F4, mixed with text.
    bad = [b"\xff", b"\xfe", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf4\x90\x80\x80",
           b"\xf5\x80", b"\xe2\x82", b"\xf0\x9f\x98", b"\x80", b"\xbf\xbf", b"\xc2", b"\xe2\x28\xa1", b"\xf8\x88\x80\x80\x80"]
    for _ in range(200):
        parts = []
        for _ in range(rng.randint(3, 60)):
            r = rng.random()
            if r < 0.3:
                parts.append(rng.choice(bad))
            elif r < 0.4:
                parts.append(rng.randbytes(rng.randint(1, 12)))
            else:
                parts.append((rng.choice(words) + rng.choice(ws)).encode())
        docs.append(b"".join(parts))
    docs.append(rng.randbytes(200000))
    # Random assigned code points (Unicode 14, which PCRE2 10.42 and Python 3.11 share), grouped in "words".
    cps = [c for c in range(0x20, 0x30000) if unicodedata.category(chr(c)) not in ("Cn", "Cs", "Co")]
    for _ in range(100):
        s = []
        for _ in range(rng.randint(100, 3000)):
            s.append(chr(rng.choice(cps)) if rng.random() < 0.85 else rng.choice(ws))
        docs.append("".join(s).encode("utf-8"))
    return docs


def split_docs(blobs, rng):
    """Splits big blobs into documents of 1..64 KiB (at arbitrary bytes: UTF-8 may be cut, as in real data)."""
    out = []
    for b in blobs:
        i = 0
        while i < len(b):
            n = rng.choice([1 << 10, 4 << 10, 16 << 10, 64 << 10])
            out.append(b[i: i + n])
            i += n
    return out


def write_ids(path, all_ids):
    with open(path, "wb") as f:
        for ids in all_ids:
            f.write(struct.pack("<I", len(ids)))
            f.write(struct.pack(f"<{len(ids)}i", *ids))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=5.5, help="Debian text in the corpus, MB (synthetic text on top)")
    args = ap.parse_args()
    t0 = time.time()
    import tiktoken
    from tokenizers import Tokenizer
    from tokenizers import models as hf_models
    from tokenizers import pre_tokenizers, decoders

    out = args.out
    os.makedirs(os.path.join(out, "ref"), exist_ok=True)
    # 1. tokenizers
    b = 3_000_000
    train_docs = mtt.gather(0, {"python": b * 3 // 10, "doc": b * 2 // 10, "mo": b * 3 // 10, "man": b * 15 // 100,
                                "i18n": b * 5 // 100})
    for style, vs in (("gpt2", 256 + 10000), ("llama3", 256 + 16000)):
        mtt.export(mtt.train(train_docs, vs, style), os.path.join(out, style), style)
    # 2. corpus: the other half of the files, plus synthetic text
    rng = random.Random(17)
    b = int(args.mb * 1e6)
    blobs = mtt.gather(1, {"python": b * 3 // 10, "doc": b * 2 // 10, "mo": b * 3 // 10, "man": b * 15 // 100,
                           "i18n": b * 5 // 100})
    specials = ["<|endoftext|>"] + mtt.llama3_special_tokens()[:12] + ["<|fim_prefix|>", "<|endofprompt|>"]
    docs = split_docs(blobs, rng) + synthetic_docs(rng, specials)
    # Special tokens inside ordinary documents too.
    for i in range(0, len(docs), 7):
        docs[i] = docs[i] + rng.choice(specials).encode() + docs[(i + 1) % len(docs)][:200]
    rng.shuffle(docs)
    with open(os.path.join(out, "corpus.bin"), "wb") as f:
        f.write(struct.pack("<I", len(docs)))
        for d in docs:
            f.write(struct.pack("<I", len(d)))
            f.write(d)
    texts = [d.decode("utf-8", "replace") for d in docs]
    total = sum(map(len, docs))

    # 3. references
    def ranks_of(path):
        ranks = {}
        with open(path, "rb") as f:
            for line in f.read().splitlines():
                if line:
                    tok, r = line.split()
                    ranks[base64.b64decode(tok)] = int(r)
        return ranks

    configs = []
    g_ranks = ranks_of(os.path.join(out, "gpt2", "gpt2.tiktoken"))
    l_ranks = ranks_of(os.path.join(out, "llama3", "tokenizer.model"))
    ng, nl = max(g_ranks.values()) + 1, max(l_ranks.values()) + 1
    tt = {
        "tt_gpt2": ("gpt2/gpt2.tiktoken", "-", tiktoken.Encoding("tt_gpt2", pat_str=GPT2_PAT, mergeable_ranks=g_ranks,
                                                                  special_tokens={"<|endoftext|>": ng})),
        # cl100k's pattern on the GPT-2-style ranks: they have tokens of newline + indentation, which the
        # cl100k and Llama 3 patterns split differently (a run of whitespace at the end of the text).
        "tt_cl100k": ("gpt2/gpt2.tiktoken", "cl100k", tiktoken.Encoding(
            "tt_cl100k", pat_str=CL100K_PAT, mergeable_ranks=g_ranks,
            special_tokens={"<|endoftext|>": ng + 1, "<|fim_prefix|>": ng + 2, "<|fim_middle|>": ng + 3,
                            "<|fim_suffix|>": ng + 4, "<|endofprompt|>": ng + 20})),
        "tt_gpt2_o200k": ("gpt2/gpt2.tiktoken", "o200k", tiktoken.Encoding(
            "tt_gpt2_o200k", pat_str=O200K_PAT, mergeable_ranks=g_ranks,
            special_tokens={"<|endoftext|>": ng + 1, "<|endofprompt|>": ng + 20})),
        "tt_gpt2_llama3": ("gpt2/gpt2.tiktoken", "llama3", tiktoken.Encoding(
            "tt_gpt2_llama3", pat_str=mtt.LLAMA3_PATTERN, mergeable_ranks=g_ranks,
            special_tokens={s: ng + i for i, s in enumerate(mtt.llama3_special_tokens())})),
        "tt_llama3": ("llama3/tokenizer.model", "-", tiktoken.Encoding(
            "tt_llama3", pat_str=mtt.LLAMA3_PATTERN, mergeable_ranks=l_ranks,
            special_tokens={s: nl + i for i, s in enumerate(mtt.llama3_special_tokens())})),
    }
    for name, (path, pat, enc) in tt.items():
        write_ids(os.path.join(out, "ref", name + ".ordinary.bin"), enc.encode_ordinary_batch(texts, num_threads=2))
        write_ids(os.path.join(out, "ref", name + ".special.bin"),
                  enc.encode_batch(texts, num_threads=2, allowed_special="all"))
        configs.append((name, path, pat))

    vocab_tok = Tokenizer(hf_models.BPE.from_file(os.path.join(out, "gpt2", "vocab.json"),
                                                  os.path.join(out, "gpt2", "merges.txt")))
    vocab_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    vocab_tok.decoder = decoders.ByteLevel()
    vocab_tok.add_special_tokens(["<|endoftext|>"])
    hf = {
        "hf_gpt2": ("gpt2/tokenizer.json", Tokenizer.from_file(os.path.join(out, "gpt2", "tokenizer.json"))),
        "hf_gpt2_strmerges": ("gpt2/tokenizer_strmerges.json", None),
        "hf_gpt2_prefix": ("gpt2/tokenizer_prefix.json",
                           Tokenizer.from_file(os.path.join(out, "gpt2", "tokenizer_prefix.json"))),
        "hf_llama3": ("llama3/tokenizer.json", Tokenizer.from_file(os.path.join(out, "llama3", "tokenizer.json"))),
        "hf_llama3_strmerges": ("llama3/tokenizer_strmerges.json", None),
        "hf_gpt2_vocab": ("gpt2/vocab.json", vocab_tok),
    }
    for name, (path, tok) in hf.items():
        if tok is None:  # the same tokenizer with "a b" merges: loom must give the same ids as from the array form
            src = name.replace("_strmerges", "")
            for mode in ("ordinary", "special"):
                with open(os.path.join(out, "ref", f"{src}.{mode}.bin"), "rb") as f:
                    data = f.read()
                with open(os.path.join(out, "ref", f"{name}.{mode}.bin"), "wb") as f:
                    f.write(data)
            configs.append((name, path, "-"))
            continue
        tok.encode_special_tokens = True
        write_ids(os.path.join(out, "ref", name + ".ordinary.bin"),
                  [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)])
        tok.encode_special_tokens = False
        write_ids(os.path.join(out, "ref", name + ".special.bin"),
                  [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)])
        configs.append((name, path, "-"))
    with open(os.path.join(out, "configs.txt"), "w") as f:
        for c in configs:
            f.write(" ".join(c) + "\n")
    print(f"tokenizer_reference: {len(docs)} documents, {total / 1e6:.2f} MB, {len(configs)} configs in "
          f"{time.time() - t0:.0f} s -> {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
