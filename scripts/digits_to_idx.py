#!/usr/bin/env python3
"""Converts scikit-learn's digits set (Debian python3-sklearn: sklearn/datasets/data/digits.csv.gz, 1,797 8x8 images
with values 0..16, label in the last column) to MNIST IDX files the ConvNet of examples/convnet_digits reads unchanged.

Scaling: each 8x8 image is multiplied by 255/16 (values 0..255) and resized to 28x28 by bilinear interpolation with
half-pixel centres (PyTorch's F.interpolate(mode="bilinear", align_corners=False)), then rounded to unsigned bytes.
Split (fixed, no randomness): sample i (0-based, file order) is a test sample when i % 5 == 0 (360 images), a training
sample otherwise (1,437 images).

Writes into OUT_DIR: train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
t10k-labels-idx1-ubyte (with --gzip: the same names + .gz).
Usage: digits_to_idx.py OUT_DIR [--gzip] [--csv PATH]
"""
import argparse
import gzip
import os
import struct
import sys

import numpy as np


def find_digits_csv():
    import sklearn.datasets

    return os.path.join(os.path.dirname(sklearn.datasets.__file__), "data", "digits.csv.gz")


def bilinear(img, out_h, out_w):
    """img (H, W) float -> (out_h, out_w), half-pixel centres, edges clamped (align_corners=False)."""
    in_h, in_w = img.shape

    def axis(out_n, in_n):
        src = (np.arange(out_n) + 0.5) * (in_n / out_n) - 0.5
        src = np.clip(src, 0, None)
        i0 = np.minimum(np.floor(src).astype(int), in_n - 1)
        i1 = np.minimum(i0 + 1, in_n - 1)
        return i0, i1, src - i0

    y0, y1, wy = axis(out_h, in_h)
    x0, x1, wx = axis(out_w, in_w)
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy)[:, None] + bot * wy[:, None]


def write_idx(path, array, gz):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    opener = gzip.open if gz else open
    with opener(path + (".gz" if gz else ""), "wb") as f:
        f.write(header + array.tobytes())


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--gzip", action="store_true", help="write .gz files")
    ap.add_argument("--csv", default=None, help="digits.csv.gz (default: the one python3-sklearn ships)")
    args = ap.parse_args()
    src = args.csv or find_digits_csv()
    if not os.path.exists(src):
        sys.exit(f"digits_to_idx.py: {src} not found; install Debian's python3-sklearn (scripts/setup.sh)")
    data = np.loadtxt(src, delimiter=",", dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 65:
        sys.exit(f"digits_to_idx.py: {src}: expected 65 columns (64 pixels + label), got shape {data.shape}")
    pixels, labels = data[:, :64].reshape(-1, 8, 8), data[:, 64].astype(np.uint8)
    images = np.stack([bilinear(p * (255.0 / 16.0), 28, 28) for p in pixels])
    images = np.clip(np.rint(images), 0, 255).astype(np.uint8)
    test = np.arange(len(labels)) % 5 == 0
    os.makedirs(args.out_dir, exist_ok=True)
    for prefix, mask in (("train", ~test), ("t10k", test)):
        write_idx(os.path.join(args.out_dir, f"{prefix}-images-idx3-ubyte"), images[mask], args.gzip)
        write_idx(os.path.join(args.out_dir, f"{prefix}-labels-idx1-ubyte"), labels[mask], args.gzip)
    print(f"digits_to_idx.py: {int((~test).sum())} training and {int(test.sum())} test images (28x28) in {args.out_dir}")


if __name__ == "__main__":
    main()
