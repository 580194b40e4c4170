"""Teacher probe on full MNIST: does distilling from an ensemble of dense networks make a
highly pruned network as accurate as its dense reference?

Per seed: trains (or reuses) K dense networks under the shared recipe (the first is the reference
every decision compares with); prunes the reference along the default chain (20% of the live
weights by global magnitude per step, FLOPs cut 20%, 3 epochs of distilled retraining per step)
for STEPS steps, distilling from the first ``t`` teachers for each ``t`` in --teachers; then gives
the chain's end the default trial refit (20 epochs, what the selection judges) and the default
final training (80 more epochs, what ships). Prints each network's error minus the reference's on
validation (10,000 images) and audit (5,000), and the paired difference on both pooled with its
standard error. Validation and audit only: the MNIST test files are not read.

Run: python benchmarks/teacher_probe.py MODEL [--steps 18] [--seeds 100,101,102] [--teachers 1,3]
     [--results results/teacher_probe.json]. Dense networks are cached in benchmarks/.cache/probe."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from nestir.backends.train import Trainer, logits
from nestir.driver.recipe import SoftTargets, stint, train_teachers
from nestir.driver.runs import RunSpec, dense_graph, prepare
from nestir.driver.synthesis import SynthConfig
from nestir.ir.serialize import atomic_save, graph_from_state, graph_state
from nestir.ir.stats import stats
from nestir.passes import resolve
from nestir.passinfra.base import PassContext, PassManager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, machine  # noqa: E402

FULL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache", "probe")


def wrong(g, d) -> torch.Tensor:  # type: ignore[no-untyped-def]
    return (logits(g, d.x).argmax(1).cpu() != d.y.cpu()).float()


def compare(g, ref, data) -> dict:  # type: ignore[no-untyped-def]
    """Error minus the reference's on validation, audit, and both pooled (with the paired SE)."""
    out = {}
    pooled = []
    for name, d in (("val", data.val), ("audit", data.audit)):
        diff = wrong(g, d) - wrong(ref, d)
        out[name] = round(100 * float(diff.mean()), 3)
        pooled.append(diff)
    diff = torch.cat(pooled)
    out["pooled"] = round(100 * float(diff.mean()), 3)
    out["pooled_se"] = round(100 * float(diff.std() / math.sqrt(len(diff))), 3)
    return out


def prune_chain(ref, data, cfg, soft, gen, steps: int, flops: float) -> Trainer:  # type: ignore[no-untyped-def]
    """The default pruning chain from ``ref``: ``steps`` steps of 20% of the live weights by global
    magnitude (FLOPs cut at least ``flops``), each retrained ``cfg.prune_epochs`` distilling from
    ``soft``. Returns the trainer holding the chain's end."""
    tr = Trainer(ref.copy(), lr=cfg.prune_lr, weight_decay=cfg.weight_decay)
    for _ in range(steps):
        PassManager(resolve([f"magnitude-prune:fraction=0.2,scope=global,flops_fraction={flops}",
                             "eliminate-dead-neurons"])).run(tr.graph, PassContext())
        tr.rebuild()
        stint(tr, data.train, cfg.prune_epochs, cfg.recipe(), gen, soft=soft, anneal=True)
    return tr


def run_seed(model: str, seed: int, steps: int, teacher_counts: list[int]) -> dict:
    spec = RunSpec(model=model, data=f"mnist-idx:{FULL}", seed=seed)
    prep = prepare(spec, dense=True)
    cfg = SynthConfig(**prep.defaults)
    data = prep.splits
    k = max(teacher_counts)
    os.makedirs(CACHE, exist_ok=True)
    path = os.path.join(CACHE, f"{model}-{seed}-k{k}.pt")
    t0 = time.perf_counter()
    if os.path.exists(path):
        nets = [graph_from_state(s) for s in torch.load(path, weights_only=True)]
    else:
        nets = train_teachers(k, lambda i: dense_graph(prep, spec), data.train, 40, cfg.final_epochs, cfg.recipe(),
                              cfg.seed, lr=cfg.lr, weight_decay=cfg.weight_decay)
        atomic_save([graph_state(g) for g in nets], path)
    ref = nets[0]
    res: dict = {"dense_seconds": round(time.perf_counter() - t0, 1),
                 "dense_val_error": round(100 * float(wrong(ref, data.val).mean()), 3),
                 "dense_audit_error": round(100 * float(wrong(ref, data.audit).mean()), 3)}
    for i in range(2, k + 1):  # what the ensembles of the first i teachers score (the reference's logits first)
        for name, d in (("val", data.val), ("audit", data.audit)):
            mean = torch.stack([logits(g, d.x) for g in nets[:i]]).mean(0)
            res[f"ensemble{i}_{name}_error"] = round(100 * float((mean.argmax(1).cpu() != d.y).float().mean()), 3)
    print(f"seed {seed}: {json.dumps(res)}", flush=True)
    for t in teacher_counts:
        t0 = time.perf_counter()
        soft = SoftTargets(nets[:t], data.train, torch.device("cpu"))
        gen = torch.Generator().manual_seed(seed)
        tr = prune_chain(ref, data, cfg, soft, gen, steps, 0.2)
        chain = tr.graph.copy()
        p = stats(chain)["params"]
        row: dict = {"params": p, "x_fewer": round(stats(ref)["params"] / p, 1), "chain_end": compare(chain, ref, data)}
        tr = Trainer(chain, lr=cfg.lr, weight_decay=cfg.weight_decay)
        stint(tr, data.train, cfg.trial_epochs, cfg.recipe(), gen, soft=soft, anneal=True)
        row["trial_refit"] = compare(tr.graph, ref, data)
        tr.set_lr(cfg.lr)
        stint(tr, data.train, cfg.final_epochs, cfg.recipe(), gen, soft=soft, anneal=True)
        row["final"] = compare(tr.graph, ref, data)
        row["seconds"] = round(time.perf_counter() - t0, 1)
        res[f"teachers{t}"] = row
        print(f"seed {seed}, {t} teacher(s): {json.dumps(row)}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--teachers", default="1,3")
    ap.add_argument("--results", default="")
    args = ap.parse_args()
    counts = [int(t) for t in args.teachers.split(",")]
    out = {"model": args.model, "steps": args.steps, "machine": machine(), "seeds": {}}
    for seed in (int(s) for s in args.seeds.split(",")):
        out["seeds"][str(seed)] = run_seed(args.model, seed, args.steps, counts)
        if args.results:
            with open(os.path.join(RESULTS, args.results), "w") as f:
                json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
