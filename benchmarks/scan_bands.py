"""How the judged chain steps measure by size: from finished run directories' ``history.csv``
(validation errors only), every step the selection judged, its compression (dense parameters over
its parameters) and its paired error difference from the dense reference after the trial refit,
grouped in bands of compression. It shows where a model's chain falls off on validation, and so
how often a step far out can pass by luck: the selection keeps the most pruned step that passes.
Reads no test data.

    python benchmarks/scan_bands.py RUN_DIR... [--bands 80,100,120,150] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics

_ERR = re.compile(r"error ([+-]\d+\.\d+) pts vs reference, bound ([+-]\d+\.\d+) \(\+(\d+\.\d+)\)")
_STEP = re.compile(r"chain step (\d+) after")


def judged(path: str) -> list[dict[str, float]]:
    """One run's judged steps: compression, paired difference and its standard error (points)."""
    with open(os.path.join(path, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    dense = next((float(r["params"]) for r in rows if r["phase"] == "dense"), None)
    out = []
    for r in rows:
        m = _ERR.search(r["note"]) if r["phase"] == "select" and _STEP.match(r["note"]) else None
        if m is None or dense is None:
            continue
        out.append({"x": round(dense / float(r["params"]), 1), "delta": float(m.group(1)), "se": float(m.group(3))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--bands", default="80,100,120,150")
    ap.add_argument("--tolerance", type=float, default=0.15, help="points: a step passes alone at delta + se <= this")
    ap.add_argument("--out")
    a = ap.parse_args()
    edges = [0.0, *map(float, a.bands.split(",")), float("inf")]
    steps = {os.path.basename(p.rstrip("/")): judged(p) for p in a.runs}
    table = []
    for lo, hi in zip(edges, edges[1:], strict=False):
        d = [s for v in steps.values() for s in v if lo <= s["x"] < hi]
        if not d:
            continue
        table.append({"band": f"{lo:g}-{hi:g}x", "judged": len(d),
                      "median_delta": round(statistics.median(s["delta"] for s in d), 2),
                      "pass_alone": sum(s["delta"] + s["se"] <= a.tolerance for s in d)})
        print(f"{table[-1]['band']:>12}  judged {len(d):3d}  median {table[-1]['median_delta']:+.2f} pts  "
              f"pass alone {table[-1]['pass_alone']}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"runs": steps, "bands": table, "tolerance": a.tolerance}, f, indent=1)


if __name__ == "__main__":
    main()
