"""How the judged chain steps measure by size: from finished run directories' ``history.csv``
(validation errors only), every step the selection judged, its compression (the chain start's
parameters over its own: the dense reference's, for a chain from dense) and its paired error
difference from the dense reference after the trial refit, grouped in bands of compression. It
shows where a model's chain falls off on validation, and so how often a step far out can pass by
luck: the selection keeps the most pruned step that passes. Reads no test data.

    python benchmarks/scan_bands.py RUN_DIR... [--bands 80,100,120,150] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from scan_start import judged  # noqa: E402  (one reader of the runs' judged steps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--bands", default="80,100,120,150")
    ap.add_argument("--tolerance", type=float, default=0.15, help="points: a step passes alone at delta + se <= this")
    ap.add_argument("--out")
    a = ap.parse_args()
    edges = [0.0, *map(float, a.bands.split(",")), float("inf")]
    steps = {os.path.basename(p.rstrip("/")): [{"x": j["x"], "delta": j["after"], "se": j["se"]} for j in judged(p)]
             for p in a.runs}
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
