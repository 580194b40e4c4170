"""FLOPs-rule probe on full MNIST: how fast the pruning chain cuts the convolutions' FLOPs
(``prune_flops``: at least this fraction per step) against the accuracy the network keeps.

Per seed, with the dense reference and teachers `pareto.py` cached: prunes the reference along
the default chain (20% of the live weights by global magnitude per step) for STEPS steps under
each FLOPs fraction, distilling from the teachers, gives the chain's end the default 20-epoch
trial refit and prints its parameters, FLOPs and its error minus the reference's on validation,
audit and both pooled. Validation and audit only: the MNIST test files are not read.

Run: python benchmarks/flops_probe.py MODEL [--seed 0] [--steps 18] [--flops 0.2,0.12]"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

from nestir.driver.recipe import SoftTargets, stint
from nestir.driver.runs import RunSpec, prepare
from nestir.driver.synthesis import SynthConfig
from nestir.ir.serialize import graph_from_state
from nestir.ir.stats import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from teacher_probe import FULL, compare, prune_chain  # noqa: E402

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--flops", default="0.2,0.12")
    args = ap.parse_args()
    prep = prepare(RunSpec(model=args.model, data=f"mnist-idx:{FULL}", seed=args.seed), dense=True)
    cfg = SynthConfig(**prep.defaults)
    data = prep.splits
    base = os.path.join(CACHE, f"{args.model}-mnist-{args.seed}")
    ref = graph_from_state(torch.load(base + ".pt", weights_only=True))
    others = [graph_from_state(g) for g in torch.load(base + f"-teachers{cfg.teachers}.pt", weights_only=True)["nets"]]
    soft = SoftTargets([ref, *others], data.train, torch.device("cpu"))
    dense = stats(ref)
    for f in (float(v) for v in args.flops.split(",")):
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(args.seed)
        tr = prune_chain(ref, data, cfg, soft, gen, args.steps, f)
        s = stats(tr.graph)
        row = {"flops_fraction": f, "params_x": round(dense["params"] / s["params"], 1),
               "flops_x": round(dense["flops"] / s["flops"], 1), "chain_end": compare(tr.graph, ref, data)}
        tr.set_lr(cfg.lr)
        stint(tr, data.train, cfg.trial_epochs, cfg.recipe(), gen, soft=soft, anneal=True)
        row["trial_refit"] = compare(tr.graph, ref, data)
        row["seconds"] = round(time.perf_counter() - t0)
        print("RESULT", json.dumps({"model": args.model, "seed": args.seed, "steps": args.steps, **row}), flush=True)


if __name__ == "__main__":
    main()
