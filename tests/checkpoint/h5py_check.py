#!/usr/bin/python3
"""Reads a loom checkpoint with h5py alone (no loom code) and checks it against its metadata.json.

Usage: h5py_check.py CHECKPOINT_DIR

For every tensor of the metadata: each piece's dataset exists in the rank file it names, holds as many elements as
its flat range, carries the same box/range attributes and CRC32C list, and the CRC32C of every block of 2^20
elements computed here matches; the pieces assemble (numpy) into the global shape with every element covered
exactly once. Exits non-zero with a message naming the file, dataset and tensor otherwise.
"""
import json
import os
import sys

import h5py
import numpy as np


def crc32c_table():
    t = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t[i] = c
    return [int(x) for x in t]


TABLE = crc32c_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    tb = TABLE
    for b in data:
        c = tb[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def fail(msg):
    print("h5py_check: FAIL: " + msg)
    sys.exit(1)


def main():
    d = sys.argv[1]
    assert crc32c(b"123456789") == 0xE3069283, "CRC32C self-test"
    md = json.load(open(os.path.join(d, "metadata.json")))
    if not os.path.exists(os.path.join(d, "COMPLETE")):
        fail(d + " has no COMPLETE marker")
    if md.get("checksum") != "crc32c":
        fail("unexpected checksum " + str(md.get("checksum")))
    block = int(md["checksum_block_elements"])
    files = {}
    checked = 0
    for name, t in md["tensors"].items():
        shape = tuple(int(s) for s in t["shape"])
        np_dtype = {"float32": np.float32, "float64": np.float64, "int64": np.int64, "int32": np.int32}[t["dtype"]]
        full = np.zeros(shape, dtype=np_dtype)
        count = np.zeros(shape, dtype=np.int32)
        for p in t["pieces"]:
            path = os.path.join(d, p["file"])
            f = files.setdefault(path, h5py.File(path, "r"))
            where = "tensor %s, dataset %s of %s" % (name, p["dataset"], path)
            if p["dataset"] not in f:
                fail("missing " + where)
            ds = f[p["dataset"]]
            b, e = p["flat_range"]
            data = ds[...]
            if data.shape != (e - b,):
                fail("%s holds %s elements, the range is [%d, %d)" % (where, data.shape, b, e))
            if list(ds.attrs["box_offset"]) != p["box_offset"] or list(ds.attrs["box_size"]) != p["box_size"]:
                fail("box attributes differ from the metadata in " + where)
            if list(ds.attrs["global_shape"]) != list(shape):
                fail("global_shape attribute differs in " + where)
            if [int(c) for c in ds.attrs["crc32c"]] != [int(c) for c in p["crc32c"]]:
                fail("crc32c attribute differs from the metadata in " + where)
            raw = np.ascontiguousarray(data).view(np.uint8).tobytes()
            es = data.dtype.itemsize
            for k, want in enumerate(p["crc32c"]):
                got = crc32c(raw[k * block * es : (k + 1) * block * es])
                if got != int(want):
                    fail("checksum of block %d differs (%08x vs %08x) in %s" % (k, got, int(want), where))
            # place the piece: flat range [b, e) of the box, the box at box_offset of the global tensor
            box = tuple(slice(o, o + s) for o, s in zip(p["box_offset"], p["box_size"]))
            sub = full[box] if shape else full
            flat = np.zeros(int(np.prod(p["box_size"])), dtype=np_dtype)
            cnt = np.zeros_like(flat, dtype=np.int32)
            flat[b:e] = data
            cnt[b:e] = 1
            full[box] = np.where(cnt.reshape(p["box_size"]) > 0, flat.reshape(p["box_size"]), sub)
            count[box] += cnt.reshape(p["box_size"])
            checked += 1
        if not np.all(count == 1):
            fail("tensor %s: elements covered %d..%d times, expected exactly once" % (name, count.min(), count.max()))
    print("h5py_check: OK: %d tensors, %d pieces, %d rank files" % (len(md["tensors"]), checked, len(files)))


if __name__ == "__main__":
    main()
