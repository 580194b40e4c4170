"""The paper's Table 2 on our data: dense baseline, pruning only, and NeST (with and without
affine augmentation) for LeNet-300-100 and LeNet-5. Trained and selected on mnist5k only (4,500
train / 500 validation); test error on the official MNIST test set, used for nothing else.

Run: python benchmarks/table2.py [--models lenet-300-100,lenet-5] [--device cuda]
     -> results/table2.json and results/table2.md"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from nestir.runs import TOLERANCE, RunSpec, baseline_run, final_metrics, prepare
from nestir.synthesis import SynthConfig, Synthesizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, save  # noqa: E402

TEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")
DENSE_EPOCHS = {"lenet-300-100": 20, "lenet-5": 15}


def row(name: str, m: dict, wall: float, epochs: int, dense: dict | None) -> dict:
    r = {"method": name, "params": m["params"], "flops": m["flops"], "val_error": m["val_error"],
         "test_error": m["test_error"], "wall_seconds": round(wall, 1), "epochs": epochs}
    if dense is not None:
        r["params_reduction"] = round(dense["params"] / m["params"], 1)
        r["flops_reduction"] = round(dense["flops"] / m["flops"], 1)
    return r


def run_model(model: str, device: str | None, seed: int) -> dict:
    test = f"mnist-idx:{TEST}" if os.path.isdir(TEST) else None
    spec = RunSpec(model=model, test_data=test, device=device, seed=seed)
    dense_prep = prepare(spec, dense=True)
    cfg = SynthConfig(**dense_prep.defaults)
    rows = []
    t0 = time.perf_counter()
    dense = baseline_run(dense_prep, cfg, dense_epochs=DENSE_EPOCHS[model], prune=False)
    rows.append(row("dense baseline", dense["final"], time.perf_counter() - t0, dense["epochs"], None))
    ref = dense["final"]
    target = 1 - ref["val_error"] - TOLERANCE  # A, the same for both methods
    cfg.target_accuracy = target
    t0 = time.perf_counter()
    pruned = baseline_run(dense_prep, cfg, dense_epochs=0, prune=True, target=target, start=dense["graph"])
    wall = time.perf_counter() - t0 + rows[0]["wall_seconds"]  # its dense training included
    rows.append(row("pruning only (20%/step, retrain)", pruned["final"], wall, pruned["epochs"] + dense["epochs"], ref))
    for augment in (False, True):
        prep = prepare(spec)
        c = SynthConfig(**{**prep.defaults, "augment": augment, "target_accuracy": target})
        out = os.path.join("runs", "table2", f"{model}-{seed}{'-aug' if augment else ''}")
        os.makedirs(out, exist_ok=True)
        t0 = time.perf_counter()
        s = Synthesizer(prep.graph, prep.train, prep.val, c, out, device)
        st = s.run()
        m = final_metrics(s.graph, prep, s.dev)
        rows.append(row(f"NeST{' + affine augmentation' if augment else ''}", m, time.perf_counter() - t0,
                        st.epochs, ref))
        rows[-1]["target_reached"] = st.target_reached
    return {"target_accuracy": target, "rows": rows}


def markdown(results: dict) -> str:
    lines = []
    for model, r in results["models"].items():
        lines += [f"### {model} (target validation accuracy A = {r['target_accuracy']:.1%}: dense less "
                  f"{TOLERANCE:.1%})", "",
                  "| method | test error | val error | params | × fewer | FLOPs | × fewer | epochs | wall |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for x in r["rows"]:
            te = "-" if x["test_error"] is None else f"{100 * x['test_error']:.2f}%"
            lines.append(f"| {x['method']} | {te} | {100 * x['val_error']:.2f}% | {x['params']:,} | "
                         f"{x.get('params_reduction', 1.0)}× | {x['flops']:,} | {x.get('flops_reduction', 1.0)}× | "
                         f"{x['epochs']} | {x['wall_seconds']:.0f} s |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--device", default=None)
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds: split, initialization, growth")
    ap.add_argument("--merge", action="store_true", help="update the rows of these models in the existing results")
    args = ap.parse_args()
    models = {}
    existing = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "table2.json")
    if args.merge and os.path.isfile(existing):
        with open(existing) as f:
            models = json.load(f)["models"]
    for seed in (int(s) for s in args.seeds.split(",")):
        for m in args.models.split(","):
            models[f"{m} (seed {seed})"] = run_model(m, args.device, seed)
    results = {"machine": machine(), "data": "mnist5k (4,500 train / 500 val), test: MNIST t10k", "models": models}
    dev = "cuda" if args.device == "cuda" else "cpu"
    suffix = "" if dev == "cpu" else "_cuda"
    print(save(f"table2{suffix}.json", results))
    md = markdown(results)
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", f"table2{suffix}.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
