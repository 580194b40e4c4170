"""Score finished run directories the way issue 8's check does: the written ``model.onnx`` on
the 10,000 MNIST test images in onnxruntime, its non-zero weights counted, beside the run's own
report (dense baseline, validation and audit errors). Reporting only: nothing here is chosen by
the test set.

    python benchmarks/score_runs.py RUN_DIR... [--test ../shared/data/mnist] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nestir.driver.data import load_idx  # noqa: E402


def onnx_test_error(path: str, x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(test error, non-zero weights of the ONNX file's initializers)."""
    m = onnx.load(path)
    arrays = [numpy_helper.to_array(t) for t in m.graph.initializer]
    arrays += [numpy_helper.to_array(t.values) for t in m.graph.sparse_initializer]  # pruned weights
    nonzero = sum(int(np.count_nonzero(w)) for w in arrays if w.dtype.kind == "f")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    wrong = 0
    for i in range(0, len(x), 1000):
        out = sess.run(None, {name: x[i:i + 1000]})[0]
        wrong += int((out.argmax(1) != y[i:i + 1000]).sum())
    return wrong / len(x), nonzero


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--test", default=os.path.join("..", "shared", "data", "mnist"))
    ap.add_argument("--out")
    ap.add_argument("--md", help="also write a markdown table here")
    a = ap.parse_args()
    test = load_idx(a.test, "test")
    x, y = test.x.numpy().astype(np.float32), test.y.numpy()
    rows = []
    for d in a.runs:
        r = json.load(open(os.path.join(d, "report.json")))
        b, f = r["baseline"], r["final"]
        err, nz = onnx_test_error(os.path.join(d, "model.onnx"), x, y)
        rows.append({"run": os.path.basename(d.rstrip("/")), "model": r["model"], "seed": r["seed"],
                     "partial_area": r["config"]["partial_area"], "confidence": r["config"].get("confidence"),
                     "dense": {k: b.get(k) for k in ("params", "flops", "val_error", "audit_error", "test_error")},
                     "kept": {k: f.get(k) for k in ("params", "flops", "val_error", "audit_error", "test_error")},
                     "onnx_test_error": err, "onnx_nonzero_weights": nz,
                     "params_reduction": round(b["params"] / f["params"], 1),
                     "flops_reduction": round(b["flops"] / f["flops"], 1), "wall_seconds": r["wall_seconds"]})
        print(json.dumps(rows[-1]))
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    if a.md:
        with open(a.md, "w") as fh:
            fh.write(table(rows))


def table(rows: list[dict]) -> str:
    """One row per run: what issue 8's check reads (ONNX test error against the report's dense
    test error, non-zero weights) beside the run's own validation and audit estimates."""
    out = ["| model | seed | z | params kept (× fewer) | FLOPs × fewer | val Δ | audit (kept / dense) "
           "| test (kept / dense) | Δ test | wall |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        d, k = r["dense"], r["kept"]
        dt = d.get("test_error")
        delta = f"{100 * (r['onnx_test_error'] - dt):+.2f}" if dt is not None else "-"
        out.append(f"| {r['model']} | {r['seed']} | {r.get('confidence')} | {r['onnx_nonzero_weights']:,} "
                   f"({r['params_reduction']}×) | {r['flops_reduction']}× | "
                   f"{100 * (k['val_error'] - d['val_error']):+.2f} | {100 * k['audit_error']:.1f}% / "
                   f"{100 * d['audit_error']:.1f}% | {100 * r['onnx_test_error']:.2f}% / "
                   f"{'-' if dt is None else f'{100 * dt:.2f}%'} | {delta} | {r['wall_seconds']:.0f} s |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
