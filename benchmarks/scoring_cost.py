"""Cost of all growth statistics (dense weight gradients of every layer + every bridge matrix)
as a ratio to one plain training step, and split-neuron eigen-scoring of a 784->300 layer.

Run: python benchmarks/scoring_cost.py [--device cuda]  -> results/scoring_cost[_cuda].json"""

from __future__ import annotations

import argparse
import sys
import time

import torch

import nestir
from nestir.backends.gradstats import collect
from nestir.driver.zoo import ZOO
from nestir.ir.interpreter import IRModule
from nestir.passes.bridge_neuron import eligible
from nestir.passes.split_neuron import SplitNeuron, site
from nestir.passinfra.base import PassContext

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import interleaved, machine, save, training_step  # noqa: E402


def scoring(name: str, batch: int, dev: torch.device) -> dict:
    torch.manual_seed(0)
    model = ZOO[name].factory().to(dev)
    x = torch.rand(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    g = nestir.trace(model.cpu(), x[:2].cpu()).to(dev)
    model.to(dev)
    info = g.groups()
    pairs = [(c, p) for grp in eligible(g, info) for c in grp.consumers for p in grp.producers]
    mod = IRModule(g)
    opt_ir = torch.optim.Adam(mod.parameters(), 1e-3)
    opt_pt = torch.optim.Adam(model.parameters(), 1e-3)

    step_torch = training_step(model, x, y, opt_pt)
    step_ir = training_step(mod, x, y, opt_ir, masks=True)

    def stats_all() -> None:
        collect(g, [(x, y)], weights=None, bridges=pairs, module=mod)

    def stats_weights() -> None:
        collect(g, [(x, y)], weights=None, module=mod)

    t = interleaved({"train_step_torch": step_torch, "train_step_ir": step_ir,
                     "growth_stats_all": stats_all, "growth_stats_weights_only": stats_weights}, repeats=30)
    return {"batch": batch, "bridge_pairs": pairs, "seconds": t,
            "ratio_all_vs_torch_step": t["growth_stats_all"] / t["train_step_torch"],
            "ratio_all_vs_ir_step": t["growth_stats_all"] / t["train_step_ir"],
            "ratio_weights_vs_torch_step": t["growth_stats_weights_only"] / t["train_step_torch"]}


def split_cost(dev: torch.device, batch: int = 256) -> dict:
    torch.manual_seed(0)
    model = ZOO["lenet-300-100"].factory()
    g = nestir.trace(model, torch.rand(2, 1, 28, 28)).to(dev)
    x = torch.rand(batch, 1, 28, 28, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    info = g.groups()
    sites = [s for grp in info.resizable() if (s := site(g, info, grp)) and s[0].name == "fc1"]
    p = SplitNeuron(count=1)
    ctx = PassContext(data=[(x, y)], device=dev)
    mod = IRModule(g)
    opt = torch.optim.Adam(mod.parameters(), 1e-3)

    step = training_step(mod, x, y, opt)

    def eig() -> None:
        p.scores(g, sites, ctx.data, ctx)

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    eig()
    first = time.perf_counter() - t0
    n, d, k = 300, 785, p.iterations
    # CPU: the eigen-solver's tensors, counted (X, C, the Lanczos basis, a few n x d temporaries);
    # CUDA: measured peak allocation of the whole scoring call.
    working = 4 * (batch * d + batch * n + k * n * d + 4 * n * d)
    peak = torch.cuda.max_memory_allocated() if dev.type == "cuda" else working
    t = interleaved({"train_step_ir": step, "split_scores_fc1": eig}, repeats=10, warmup=2)
    dense_bytes = 300 * 785 * 785 * 4
    return {"batch": batch, "layer": "fc1 784->300", "lanczos_iterations": p.iterations, "seconds": t,
            "first_call_s": first, "ratio_vs_train_step": t["split_scores_fc1"] / t["train_step_ir"],
            "peak_bytes": int(peak), "peak_kind": "measured" if dev.type == "cuda" else "counted working set",
            "dense_S_would_need_bytes": dense_bytes}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    out = {"machine": machine(), "lenet-300-100": scoring("lenet-300-100", 256, dev),
           "lenet-5": scoring("lenet-5", 128, dev), "split_neuron": split_cost(dev)}
    print(save("scoring_cost.json" if dev.type == "cpu" else f"scoring_cost_{dev.type}.json", out))
    for k in ("lenet-300-100", "lenet-5"):
        r = out[k]
        print(f"{k}: stats/step(torch) = {r['ratio_all_vs_torch_step']:.2f}x, "
              f"stats/step(ir) = {r['ratio_all_vs_ir_step']:.2f}x")
    s = out["split_neuron"]
    print(f"split fc1: {s['ratio_vs_train_step']:.1f}x a step, {s['peak_kind']} {s['peak_bytes'] / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
