"""GPU benchmark: what the CUDA backend buys, measured when a GPU is present.

1. scoring cost: all growth statistics of LeNet-300-100 and LeNet-5 (dense weight gradients and
   bridge matrices) as a ratio to one training step, on the GPU (interleaved timing);
2. a ResNet-18 growth step at 224x224 (grow-connection on a 50%-dense seed + add-feature-map on
   one conv, verifier off) against a training step of the same network;
3. synthesis wall time of both LeNets (the CLI with default options, one seed) on the GPU, on full
   MNIST (the paper's setting, ../shared/data/mnist) when it is there, else on mnist5k (--data).

Run: python benchmarks/gpu.py [--skip-synthesis] -> results/gpu.json, results/gpu.md
Without CUDA it stops with a message (``--cpu`` runs the same measurements on the CPU, for a
smoke test of the script only: those numbers are not GPU results and are written to
results/gpu_cpu_smoke.json)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch

import nestir
from nestir.backends.gradstats import collect
from nestir.driver.synthesis import sparsify_seed
from nestir.driver.zoo import ZOO
from nestir.ir.interpreter import IRModule
from nestir.passes.bridge_neuron import eligible

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, interleaved, machine, save, training_step  # noqa: E402


def scoring(name: str, batch: int, dev: torch.device, repeats: int) -> dict:
    torch.manual_seed(0)
    e = ZOO[name]
    g = nestir.trace(e.factory(), torch.zeros(2, *e.input_shape)).to(dev)
    x = torch.rand(batch, *e.input_shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    pairs = [(c, p) for grp in eligible(g, g.groups()) for c in grp.consumers for p in grp.producers]
    mod = IRModule(g)
    opt = torch.optim.Adam(mod.parameters(), 1e-3)

    step = training_step(mod, x, y, opt, masks=True)

    def stats() -> None:
        collect(g, [(x, y)], bridges=pairs, module=mod)

    t = interleaved({"train_step": step, "all_statistics": stats}, repeats=repeats)
    return {"model": name, "batch": batch, **{k: round(v * 1e3, 3) for k, v in t.items()},
            "ratio": round(t["all_statistics"] / t["train_step"], 2)}


def resnet_growth(dev: torch.device, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    e = ZOO["resnet-18"]
    g = nestir.trace(e.factory(), torch.zeros(2, *e.input_shape))
    sparsify_seed(g, 0.5, 0)  # a sparse seed: grow-connection has dormant connections to score
    x = torch.rand(batch, *e.input_shape)
    y = torch.randint(0, 1000, (batch,))
    mod = IRModule(g.copy().to(dev))
    opt = torch.optim.SGD(mod.parameters(), 0.01)
    xd, yd = x.to(dev), y.to(dev)

    step = training_step(mod, xd, yd, opt)

    def grow() -> None:
        nestir.apply(g, ["grow-connection:fraction=0.05", "add-feature-map:count=1,candidates=4,layers=layer4.1.conv2"],
                     data=[(x, y)], device=dev, verify=False)

    t = interleaved({"train_step": step, "growth_step": grow}, repeats=repeats, warmup=1)
    return {"model": "resnet-18", "batch": batch, **{k: round(v * 1e3, 1) for k, v in t.items()},
            "ratio": round(t["growth_step"] / t["train_step"], 2)}


FULL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")


def synthesis(model: str, device: str, data: str) -> dict:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        test = ["--test-data", f"mnist-idx:{FULL}"] if os.path.isdir(FULL) else []
        p = subprocess.run([sys.executable, "-m", "nestir.cli", "synthesize", model, "--device", device, "--out", d,
                            "--data", data, *test, "--quiet"], capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if p.returncode != 0:
            return {"model": model, "error": p.stderr[-500:]}
        r = json.load(open(os.path.join(d, "report.json")))
    return {"model": model, "data": data, "wall_seconds": round(wall, 1), "params": r["final"]["params"],
            "dense_params": r["baseline"]["params"], "val_error": r["final"]["val_error"],
            "test_error": r["final"].get("test_error"), "baseline_test_error": r["baseline"].get("test_error")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", action="store_true", help="smoke-test the script on the CPU (not GPU results)")
    ap.add_argument("--skip-synthesis", action="store_true")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--data", default=f"mnist-idx:{FULL}" if os.path.isdir(FULL) else "mnist5k",
                    help="data of the synthesis runs (default: full MNIST when present, else mnist5k)")
    args = ap.parse_args()
    if not torch.cuda.is_available() and not args.cpu:
        sys.exit("gpu.py: no CUDA device here; run it on a GPU machine (or --cpu for a smoke test)")
    dev = torch.device("cuda" if not args.cpu else "cpu")
    out = {"machine": machine(), "scoring": [scoring("lenet-300-100", 512, dev, args.repeats),
                                            scoring("lenet-5", 512, dev, args.repeats)],
           "resnet18_growth": resnet_growth(dev, 32 if dev.type == "cuda" else 4, max(3, args.repeats // 4))}
    if not args.skip_synthesis:
        out["synthesis"] = [synthesis(m, dev.type, args.data) for m in ("lenet-300-100", "lenet-5")]
    name = "gpu" if dev.type == "cuda" else "gpu_cpu_smoke"
    save(f"{name}.json", out)
    rows = ["| measurement | train step | scored step | ratio |", "|---|---:|---:|---:|"]
    for s in out["scoring"]:
        rows.append(f"| {s['model']} all growth statistics, batch {s['batch']} | {s['train_step']} ms | "
                    f"{s['all_statistics']} ms | {s['ratio']}x |")
    r = out["resnet18_growth"]
    rows.append(f"| ResNet-18 growth step (grow-connection + add-feature-map), batch {r['batch']} | "
                f"{r['train_step']} ms | {r['growth_step']} ms | {r['ratio']}x |")
    for s in out.get("synthesis", []):
        rows.append(f"| synthesize {s['model']} (defaults, {s['data']}) | | {s.get('wall_seconds', 'failed')} s | |")
    with open(os.path.join(RESULTS, f"{name}.md"), "w") as f:
        f.write(f"Device: {out['machine']['device']}\n\n" + "\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
