"""Checks a model exported by loom (tests/onnx/test_onnx_export.cc): onnx.checker
accepts it, and ONNX Runtime reproduces loom's outputs for every case of the
manifest (max |ort - loom| <= rtol * max |loom|), and greedy decoding follows loom's tokens."""
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

DTYPES = {"f32": np.float32, "float32": np.float32, "i64": np.int64, "int64": np.int64, "i32": np.int32, "int32": np.int32}


def shape(s):
    return tuple(int(x) for x in s.split("x"))


def main(d):
    lines = [l.split() for l in open(os.path.join(d, "manifest.txt")) if l.strip()]
    _, model_file, in_name, out_name = lines[0]
    path = os.path.join(d, model_file)
    onnx.checker.check_model(path, full_check=True)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    failed = 0
    for l in lines[1:]:
        if l[0] == "case":
            _, fin, dt, sin, fout, sout, rtol = l
            x = np.fromfile(os.path.join(d, fin), dtype=DTYPES[dt]).reshape(shape(sin))
            want = np.fromfile(os.path.join(d, fout), dtype=np.float32).reshape(shape(sout))
            got = sess.run([out_name], {in_name: x})[0]
            if got.shape != want.shape:
                print(f"FAIL {fin}: ORT output shape {got.shape}, loom {want.shape}")
                failed += 1
                continue
            err = float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))
            ok = err <= float(rtol)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} input {x.shape}: max rel error {err:.3g} (limit {rtol})")
        elif l[0] == "ops":  # operators the graph must (NAME) or must not (-NAME) contain
            types = {n.op_type for n in onnx.load(path).graph.node}
            for name in l[1:]:
                ok = (name[1:] not in types) if name.startswith("-") else (name in types)
                failed += not ok
                print(f"{'ok  ' if ok else 'FAIL'} operator {name}")
        elif l[0] == "greedy":
            _, fp, n, fg, m = l
            ids = np.fromfile(os.path.join(d, fp), dtype=np.int64).reshape(1, int(n))
            want = np.fromfile(os.path.join(d, fg), dtype=np.int64).reshape(1, int(m))
            while ids.shape[1] < want.shape[1]:
                logits = sess.run([out_name], {in_name: ids})[0]
                ids = np.concatenate([ids, logits[:, -1].argmax(-1).reshape(1, 1).astype(np.int64)], axis=1)
            ok = np.array_equal(ids, want)
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} greedy decoding of {int(m) - int(n)} tokens: ort {ids[0].tolist()}"
                  + ("" if ok else f" loom {want[0].tolist()}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
