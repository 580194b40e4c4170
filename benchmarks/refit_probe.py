"""Refit probe on full MNIST: how a pruned network's retraining settles its error.

Trains (or reuses) the dense reference of one seed on the full MNIST training set (45,000 train /
10,000 validation / 5,000 audit), prunes it along the default chain (20% of the live weights by
global magnitude per step, FLOPs cut 20%, ``PE`` epochs of distilled retraining per step, 3 by
default) for STEPS steps, then retrains the chain's end under each VARIANT and prints its
validation and audit error minus the dense reference's. Validation and audit only: the MNIST test
files are not read.

Run: python benchmarks/refit_probe.py MODEL STEPS NAME:LR:EPOCHS:ALPHA:T[,...] [--seed 100]
     (PE=8 in the environment: 8 epochs per chain step). Dense networks and chains are cached in
     $TMPDIR. Results of 2026-12-06: benchmarks/README.md, "Full MNIST: first runs"."""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

import torch

from nestir.backends.train import Trainer, evaluate
from nestir.driver.recipe import SoftTargets, stint
from nestir.driver.runs import RunSpec, dense_reference, prepare
from nestir.driver.synthesis import SynthConfig
from nestir.ir.serialize import graph_from_state, graph_state
from nestir.ir.stats import stats
from nestir.passes import resolve
from nestir.passinfra.base import PassContext, PassManager

FULL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("steps", type=int)
    ap.add_argument("variants")
    ap.add_argument("--seed", type=int, default=100)
    args = ap.parse_args()
    spec = RunSpec(model=args.model, data=f"mnist-idx:{FULL}", seed=args.seed)
    prep = prepare(spec, dense=True)
    cfg = SynthConfig(**prep.defaults)
    data = prep.splits
    tmp = tempfile.gettempdir()
    path = os.path.join(tmp, f"dense_{args.model}_{args.seed}.pt")
    if os.path.exists(path):
        teacher = graph_from_state(torch.load(path, weights_only=True))
    else:
        teacher = dense_reference(prep, spec, cfg, dense_epochs=40)["teacher"]
        torch.save(graph_state(teacher), path)

    def err(g, d) -> float:  # type: ignore[no-untyped-def]
        return 100 * evaluate(g, d.x, d.y).error

    dv, da = err(teacher, data.val), err(teacher, data.audit)
    print(f"dense: validation {dv:.2f}%, audit {da:.2f}%", flush=True)
    soft = SoftTargets(teacher, data.train, torch.device("cpu"))
    pe = int(os.environ.get("PE", 3))
    chain = os.path.join(tmp, f"chain_{args.model}_{args.seed}_{args.steps}_{pe}.pt")
    if os.path.exists(chain):
        g = graph_from_state(torch.load(chain, weights_only=True))
    else:
        tr = Trainer(teacher.copy(), lr=cfg.prune_lr, weight_decay=cfg.weight_decay)
        gen = torch.Generator().manual_seed(0)
        for _ in range(args.steps):
            PassManager(resolve(["magnitude-prune:fraction=0.2,scope=global,flops_fraction=0.2",
                                 "eliminate-dead-neurons"])).run(tr.graph, PassContext())
            tr.rebuild()
            stint(tr, data.train, pe, cfg.recipe(), gen, soft=soft, anneal=True)
        g = tr.graph.copy()
        torch.save(graph_state(g), chain)
    p = stats(g)["params"]
    print(f"chain end ({args.steps} steps, {pe} epochs each): {p:,} params ({stats(teacher)['params'] / p:.1f}x), "
          f"validation {err(g, data.val) - dv:+.2f}, audit {err(g, data.audit) - da:+.2f} points", flush=True)
    for v in args.variants.split(","):
        name, lr, ep, alpha, t = v.split(":")
        t0 = time.perf_counter()
        tr = Trainer(g.copy(), lr=float(lr), weight_decay=cfg.weight_decay)
        rec = dataclasses.replace(cfg.recipe(), alpha=float(alpha), temperature=float(t))
        stint(tr, data.train, int(ep), rec, torch.Generator().manual_seed(1),
              soft=soft if float(alpha) > 0 else None, anneal=True)
        print(f"{name}: lr {lr}, {ep} epochs, alpha {alpha}, T {t}: validation "
              f"{err(tr.graph, data.val) - dv:+.2f}, audit {err(tr.graph, data.audit) - da:+.2f} points "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
