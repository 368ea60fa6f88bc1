#!/usr/bin/env python3
"""Trains small byte-level BPE tokenizers with Hugging Face `tokenizers` on text Debian ships, and exports them in
every format loom's tokenizer reads (no released vocabulary can be downloaded here; a user's real GPT-2 / Llama 3
files load the same way).

    make_test_tokenizers.py --out DIR [--mb 3] [--gpt2-vocab 10256] [--llama3-vocab 16256]

writes
    DIR/gpt2/tokenizer.json            GPT-2 style: ByteLevel pre-tokenizer (GPT-2 regex), <|endoftext|> = n
    DIR/gpt2/tokenizer_strmerges.json  the same with merges as "a b" strings (older tokenizers' layout)
    DIR/gpt2/vocab.json, merges.txt    GPT-2's original layout (<|endoftext|> in vocab.json)
    DIR/gpt2/gpt2.tiktoken             tiktoken ranks (base64 token, space, rank; rank = id)
    DIR/llama3/tokenizer.json          Llama 3 style: Split(Llama 3 regex, Isolated) + ByteLevel(use_regex=False),
                                       ignore_merges, Llama 3.1's 256 special tokens from id n
    DIR/llama3/tokenizer_strmerges.json
    DIR/llama3/tokenizer.model         tiktoken ranks, as Llama 3 ships them
Training text: Python's standard library, /usr/share/doc, translations (.mo files) in many languages and man pages;
files are taken in a fixed order (every other file: tests/data/tokenizer_reference.py takes the rest for testing).
"""
import argparse
import base64
import gzip
import json
import os
import struct
import sys

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def llama3_special_tokens():
    """Llama 3.1's 256 special tokens in id order, as its tokenizer.json has them (from id 128000)."""
    named = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
             "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>", "<|start_header_id|>", "<|end_header_id|>",
             "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
    return named + [f"<|reserved_special_token_{3 + i}|>" for i in range(256 - len(named))]


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# ---- Debian text -------------------------------------------------------------------------------------------------

def _files(root, pred, limit=None):
    out = []
    for d, dirs, fs in os.walk(root):
        dirs.sort()
        for f in sorted(fs):
            p = os.path.join(d, f)
            if pred(p) and os.path.isfile(p) and not os.path.islink(p):
                out.append(p)
    return out


def _read(p):
    try:
        if p.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                return f.read()
        with open(p, "rb") as f:
            return f.read()
    except OSError:
        return b""


def _mo_strings(p):
    """Message strings of a gettext .mo file (msgid and msgstr), as UTF-8 bytes joined by newlines."""
    data = _read(p)
    if len(data) < 28:
        return b""
    magic = struct.unpack("<I", data[:4])[0]
    end = "<" if magic == 0x950412DE else ">" if magic == 0xDE120495 else None
    if end is None:
        return b""
    n, orig, trans = struct.unpack(end + "III", data[8:20])
    out = []
    try:
        for table in (trans,):
            for i in range(n):
                ln, off = struct.unpack(end + "II", data[table + 8 * i: table + 8 * i + 8])
                s = data[off: off + ln]
                out.append(s.replace(b"\x00", b"\n"))
    except struct.error:
        return b""
    return b"\n".join(out)


LANGS = ["ru", "uk", "bg", "el", "ja", "zh_CN", "zh_TW", "ko", "ar", "fa", "he", "hi", "bn", "ta", "th", "ka", "hy",
         "am", "vi", "tr", "pl", "cs", "de", "fr", "es", "pt_BR", "it", "fi", "hu", "sv", "eo", "ga", "is", "km", "my",
         "si", "te", "ml", "pa", "gu", "mr", "ne", "kk", "ug", "ur"]


def sources():
    """(name, list of files, reader) per kind of text, in a fixed order."""
    py = _files("/usr/lib/python3.11", lambda p: p.endswith(".py") and "/site-packages/" not in p)
    doc = _files("/usr/share/doc", lambda p: os.path.basename(p) in ("copyright", "README", "NEWS", "AUTHORS")
                 or p.endswith((".txt", ".md", ".rst", "README.Debian", "changelog.gz", "changelog.Debian.gz")))
    mo = []
    for lang in LANGS:
        mo += _files(os.path.join("/usr/share/locale", lang), lambda p: p.endswith(".mo"))
    man = []
    for lang in ["man1", "ru", "ja", "zh_CN", "de", "fr", "ko", "uk", "pl"]:
        man += _files(os.path.join("/usr/share/man", lang), lambda p: p.endswith(".gz"))
    i18n = _files("/usr/share/i18n/locales", lambda p: True)
    return [("python", py, _read), ("doc", doc, _read), ("mo", mo, _mo_strings), ("man", man, _read),
            ("i18n", i18n, _read)]


def gather(parity, budgets):
    """Documents (bytes) of every kind, up to budgets[kind] bytes each, from files whose index % 2 == parity. A file
    is spread over the kinds' files evenly (a stride) so every language and package appears."""
    docs = []
    for name, files, reader in sources():
        budget = budgets.get(name, 0)
        files = files[parity::2]
        if not files or budget <= 0:
            continue
        # Visit files with a stride so the budget spans the whole list.
        total, k = 0, 0
        stride = max(1, len(files) // 400)
        order = [files[i] for s in range(stride) for i in range(s, len(files), stride)]
        per_file = max(4096, budget // 300)
        while total < budget and k < len(order):
            data = reader(order[k])[:per_file]
            k += 1
            if data:
                docs.append(data)
                total += len(data)
    return docs


# ---- training and export -----------------------------------------------------------------------------------------

def train(docs, vocab_size, style):
    from tokenizers import Tokenizer, Regex, decoders, models, pre_tokenizers, trainers
    tok = Tokenizer(models.BPE(ignore_merges=(style == "llama3")))
    if style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator((d.decode("utf-8", "replace") for d in docs), trainer)
    tok.add_special_tokens(["<|endoftext|>"] if style == "gpt2" else llama3_special_tokens())
    return tok


def export(tok, out_dir, style):
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer.json"), encoding="utf-8") as f:
        j = json.load(f)
    merges = j["model"]["merges"]
    j["model"]["merges"] = [m if isinstance(m, str) else f"{m[0]} {m[1]}" for m in merges]
    with open(os.path.join(out_dir, "tokenizer_strmerges.json"), "w", encoding="utf-8") as f:
        json.dump(j, f, ensure_ascii=False)
    if not all(isinstance(m, list) for m in merges):  # keep one file of each form
        j["model"]["merges"] = [m.split(" ") for m in j["model"]["merges"]]
        with open(os.path.join(out_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
    vocab = j["model"]["vocab"]
    u2b = {c: b for b, c in bytes_to_unicode().items()}
    n = len(vocab)
    assert sorted(vocab.values()) == list(range(n)), "trained vocabulary ids are not dense"
    lines = []
    for text, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
        lines.append(base64.b64encode(bytes(u2b[c] for c in text)).decode() + f" {rank}\n")
    name = "gpt2.tiktoken" if style == "gpt2" else "tokenizer.model"
    with open(os.path.join(out_dir, name), "w") as f:
        f.writelines(lines)
    if style == "gpt2":
        # The same vocabulary with ByteLevel(add_prefix_space=True), as some GPT-2 derivatives ship it.
        j["model"]["merges"] = merges
        j["pre_tokenizer"]["add_prefix_space"] = True
        with open(os.path.join(out_dir, "tokenizer_prefix.json"), "w", encoding="utf-8") as f:
            json.dump(j, f, ensure_ascii=False)
        v = dict(vocab)
        v["<|endoftext|>"] = n
        with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(v, f, ensure_ascii=False)
        with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n")
            for a, b in (m if isinstance(m, list) else m.split(" ") for m in merges):
                f.write(f"{a} {b}\n")
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--mb", type=float, default=3.0, help="training text, MB")
    ap.add_argument("--gpt2-vocab", type=int, default=256 + 10000)
    ap.add_argument("--llama3-vocab", type=int, default=256 + 16000)
    args = ap.parse_args()
    b = int(args.mb * 1e6)
    docs = gather(0, {"python": b * 3 // 10, "doc": b * 2 // 10, "mo": b * 3 // 10, "man": b * 15 // 100,
                      "i18n": b * 5 // 100})
    for style, vs in (("gpt2", args.gpt2_vocab), ("llama3", args.llama3_vocab)):
        tok = train(docs, vs, style)
        n = export(tok, os.path.join(args.out, style), style)
        print(f"make_test_tokenizers: {style}: {n} tokens ({n - 256} merges) from "
              f"{sum(map(len, docs)) / 1e6:.1f} MB -> {os.path.join(args.out, style)}", file=sys.stderr)


if __name__ == "__main__":
    main()
