"""Trace + verify + lower time for a ResNet-18-sized model on CPU (target: under 5 s).

Run: python benchmarks/trace_lower.py  -> benchmarks/results/trace_lower.json"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time

import torch

import nestir
from nestir.driver.zoo import ZOO


def main() -> None:
    torch.manual_seed(0)
    results = {}
    for name in ("resnet-18", "resnet-cifar", "lenet-5"):
        e = ZOO[name]
        model = e.factory().eval()
        x = torch.rand(1, *e.input_shape)
        t0 = time.perf_counter()
        g = nestir.trace(model, x)
        t1 = time.perf_counter()
        g.verify()
        t2 = time.perf_counter()
        mod = g.to_torch()
        t3 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            g.to_onnx(os.path.join(d, "m.onnx"))
        t4 = time.perf_counter()
        with torch.no_grad():
            err = float((mod(x) - model(x)).abs().max())
        results[name] = {"params": nestir.stats(g, compact=False)["params"], "trace_s": t1 - t0,
                         "verify_s": t2 - t1, "to_torch_s": t3 - t2, "to_onnx_s": t4 - t3,
                         "trace_verify_lower_torch_s": t3 - t0, "total_with_onnx_s": t4 - t0,
                         "max_abs_diff": err}
    out = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
           "torch": torch.__version__, "results": results}
    os.makedirs(os.path.join(os.path.dirname(__file__), "results"), exist_ok=True)
    path = os.path.join(os.path.dirname(__file__), "results", "trace_lower.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
