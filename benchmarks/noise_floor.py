"""The noise floor of issue 8's accuracy check: how far apart networks of *equal* quality land.

Issue 8 compares one shipped network's MNIST test error with one dense baseline's (+0.25 points
allowed). Both are single training runs, so even a network exactly as good as the dense model
misses that bar some of the time. This benchmark measures how often, per split seed:

- ``K`` dense networks of the shared recipe (:func:`nestir.driver.recipe.train_teachers`: the first is
  the run's dense baseline, bit for bit the one ``nestir synthesize --seed S`` reports), and
- ``D`` born-again students: the dense architecture again (no compression at all), trained under
  the same budget while distilling from the baseline, as every synthesis stint does.

Each network is scored once on validation, audit and the 10,000 MNIST test images. Reported: each
network's error minus the baseline's on validation and on test, the share within +0.25 test points,
and how well the validation difference (what every synthesis decision reads) predicts the test
difference. Nothing is selected here: the test set is read for reporting only.

Run: python benchmarks/noise_floor.py [--models lenet-300-100,lenet-5] [--seeds 0,1,2]
                                      [--dense 4] [--students 2] [--results noise_floor.json]
Results are saved after every network; a second call skips seeds already measured.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch

from nestir.backends.train import Trainer, evaluate
from nestir.driver.recipe import SoftTargets, train_dense, train_teachers
from nestir.driver.runs import RunSpec, dense_graph, prepare
from nestir.driver.synthesis import SynthConfig

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import RESULTS, load_results, machine, save  # noqa: E402

TEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "mnist")
DENSE_EPOCHS = 40  # as the CLI's and the Pareto benchmark's dense reference
SLACK = 0.0025  # issue 8's check: within a quarter point of the dense baseline's test error
STUDENT_SEED_STRIDE = 104729  # born-again student j starts from seed + (j + 1) * this


def _scores(graph, prep) -> dict:  # type: ignore[no-untyped-def]
    out = {}
    for name, d in (("val", prep.val), ("audit", prep.splits.audit), ("test", prep.test)):
        ev = evaluate(graph, d.x, d.y, device=prep.device)
        out[name] = {"error": ev.error, "wrong": ev.wrong}
    return out


def _row(kind: str, index: int, s: dict, base: dict | None, wall: float) -> dict:
    row = {"kind": kind, "index": index, "wall_seconds": round(wall, 1)}
    for name, v in s.items():
        row[f"{name}_error"] = v["error"]
        if base is not None:
            d = v["wrong"].double() - base[name]["wrong"].double()
            row[f"{name}_delta"] = float(d.mean())
            # nestir.driver.decide.paired's standard error without its prior discordant image: the raw spread
            row[f"{name}_paired_se"] = math.sqrt(max(float((d != 0).double().mean()) - float(d.mean()) ** 2, 0.0)
                                                 / d.numel())
    return row


def run_seed(model: str, seed: int, k: int, students: int, rows: list, save_rows) -> None:  # type: ignore[no-untyped-def]
    spec = RunSpec(model=model, test_data=f"mnist-idx:{TEST}", seed=seed)
    prep = prepare(spec)
    cfg = SynthConfig(**prep.defaults)
    data = prep.splits.to(prep.device)
    t0 = time.perf_counter()
    nets = train_teachers(k, lambda i: dense_graph(prep, spec), data.train, DENSE_EPOCHS, cfg.final_epochs,
                          cfg.recipe(), cfg.seed, device=prep.device, lr=cfg.lr, weight_decay=cfg.weight_decay)
    wall = (time.perf_counter() - t0) / k
    base = _scores(nets[0], prep)
    rows.append(_row("baseline", 0, base, None, wall))
    for i, g in enumerate(nets[1:], 1):
        rows.append(_row("dense", i, _scores(g, prep), base, wall))
    save_rows()
    soft = SoftTargets(nets[0], data.train, prep.device)
    for j in range(students):
        s = seed + (j + 1) * STUDENT_SEED_STRIDE
        t0 = time.perf_counter()
        torch.manual_seed(s)
        tr = Trainer(dense_graph(prep, spec), device=prep.device, lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = train_dense(tr, data.train, DENSE_EPOCHS, cfg.final_epochs, cfg.recipe(), torch.Generator().manual_seed(s),
                        soft=soft)
        rows.append(_row("born-again", j + 1, _scores(g, prep), base, time.perf_counter() - t0))
        save_rows()


def _corr(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or statistics.pstdev(a) == 0 or statistics.pstdev(b) == 0:
        return None
    return statistics.correlation(a, b)


def summarize(results: dict) -> dict:
    out: dict = {}
    for model, seeds in results["models"].items():
        rows = [(s, r) for s, rs in seeds.items() for r in rs]
        m: dict = {"seeds": len(seeds)}
        for kind in ("dense", "born-again"):
            rs = [r for _, r in rows if r["kind"] == kind]
            if not rs:
                continue
            dt = [100 * r["test_delta"] for r in rs]
            dv = [100 * r["val_delta"] for r in rs]
            m[kind] = {"networks": len(rs), "test_delta_pts": [round(x, 2) for x in dt],
                       "median_test_delta": round(statistics.median(dt), 2),
                       "within_slack": f"{sum(x <= 100 * SLACK + 1e-9 for x in dt)}/{len(dt)}",
                       "val_delta_pts": [round(x, 2) for x in dv],
                       "val_test_correlation": _corr(dv, dt),
                       "mean_paired_se_val": round(100 * statistics.mean(r["val_paired_se"] for r in rs), 2),
                       "mean_paired_se_test": round(100 * statistics.mean(r["test_paired_se"] for r in rs), 2)}
        dense_tests = {s: [100 * r["test_error"] for r in rs if r["kind"] in ("baseline", "dense")]
                       for s, rs in seeds.items()}
        sds = [statistics.stdev(v) for v in dense_tests.values() if len(v) > 1]
        m["dense_test_sd_within_split"] = round(math.sqrt(statistics.mean(x * x for x in sds)), 2) if sds else None
        m["baseline_test_error"] = {s: round(v[0], 2) for s, v in dense_tests.items() if v}
        out[model] = m
    return out


def markdown(summary: dict, results: dict) -> str:
    lines = ["# Noise floor of issue 8's accuracy check (`benchmarks/noise_floor.py`)", "",
             "Per split seed, the dense baseline of `nestir synthesize --seed S` and networks of *equal* quality: "
             "other dense networks of the same recipe (other initializations) and born-again students (the dense "
             "architecture distilled from the baseline under the same budget, no compression). Δ: the network's "
             "error minus the baseline's, in points, on the same images. 'within +0.25': share of networks that "
             "would pass issue 8's accuracy bar although none is worse than dense by construction. Test set read "
             "for reporting only.", "",
             f"Machine: {results.get('machine', {})}", ""]
    for model, m in summary.items():
        lines += [f"### {model} ({m['seeds']} splits; baseline test error by split: "
                  + ", ".join(f"seed {s}: {v:.2f}%" for s, v in m["baseline_test_error"].items()) + ")", "",
                  "| networks | count | Δ test (median; all) | within +0.25 test pts | Δ validation (all) "
                  "| corr(Δ val, Δ test) | paired SE val / test |",
                  "|---|---:|---|---:|---|---:|---:|"]
        for kind, label in (("dense", "other dense networks"), ("born-again", "born-again students")):
            if kind not in m:
                continue
            k = m[kind]
            corr = f"{k['val_test_correlation']:.2f}" if k["val_test_correlation"] is not None else "-"
            lines.append(f"| {label} | {k['networks']} | {k['median_test_delta']:+.2f}; "
                         + " ".join(f"{x:+.2f}" for x in k["test_delta_pts"])
                         + f" | {k['within_slack']} | " + " ".join(f"{x:+.2f}" for x in k["val_delta_pts"])
                         + f" | {corr} | {k['mean_paired_se_val']:.2f} / {k['mean_paired_se_test']:.2f} |")
        lines += ["", f"Spread of dense test errors within a split (same data, other initializations): SD "
                      f"{m['dense_test_sd_within_split']} points.", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="lenet-300-100,lenet-5")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--dense", type=int, default=4, help="dense networks per split (the first is the baseline)")
    ap.add_argument("--students", type=int, default=2, help="born-again students per split")
    ap.add_argument("--results", default="noise_floor.json")
    ap.add_argument("--merge", default="", help="comma-separated results files merged into --results (no runs)")
    args = ap.parse_args()
    results = load_results(args.results, args.merge)
    if args.merge:
        args.models = ""
    if args.models and not os.path.isdir(TEST):
        sys.exit(f"the MNIST test files are not in {TEST}")
    if args.models:  # a merge keeps the machine the runs were measured on
        results["machine"] = machine()
    for model in filter(None, args.models.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            if len(results["models"].get(model, {}).get(str(seed), [])) >= args.dense + args.students:
                continue  # measured (a seed interrupted part-way is measured again)
            rows: list = []
            key = str(seed)

            def save_rows(model=model, key=key, rows=rows) -> None:  # type: ignore[no-untyped-def]
                results["models"].setdefault(model, {})[key] = rows
                save(args.results, results)

            run_seed(model, seed, args.dense, args.students, rows, save_rows)
            print(f"{model} seed {seed}: " + ", ".join(f"{r['kind']} {100 * r['test_error']:.2f}%" for r in rows),
                  flush=True)
    results["summary"] = summarize(results)
    save(args.results, results)
    with open(os.path.join(RESULTS, os.path.splitext(args.results)[0] + ".md"), "w") as f:
        f.write(markdown(results["summary"], results))
    print(markdown(results["summary"], results))


if __name__ == "__main__":
    main()
