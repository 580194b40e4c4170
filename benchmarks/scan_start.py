"""Where the selection scan should start: from finished run directories' ``history.csv`` (validation
errors only), each judged chain step's error before its trial refit, minus the dense reference's,
beside its paired error difference after the refit. A step whose error before the refit is far
above the reference's never came close after it, so the scan can start below it (``scan_slack``).
Reads no test data.

    python benchmarks/scan_start.py RUN_DIR... [--slacks 0.01,0.005,0.004,0.003] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re

_DELTA = re.compile(r"error ([+-]\d+\.\d+) pts vs reference(?:, bound [+-]\d+\.\d+ \(\+(\d+\.\d+)\))?")
_STEP = re.compile(r"chain step (\d+) after")


def judged(path: str) -> list[dict[str, float]]:
    """The scan's judged steps of one run: chain index, error before the refit minus the
    reference's, paired error difference after it and its standard error (points), and
    compression (the chain start's parameters over the step's)."""
    with open(os.path.join(path, "history.csv")) as f:
        rows = list(csv.DictReader(f))
    prune = [i for i, r in enumerate(rows) if r["phase"] == "prune"]
    if not prune:
        return []
    chain = [rows[prune[0] - 1]] + [rows[i] for i in prune]  # index 0: the network the chain starts from
    out = []
    for r in rows:
        m = _STEP.match(r["note"]) if r["phase"] == "select" else None
        d = _DELTA.search(r["note"]) if m else None
        if m is None or d is None:
            continue
        k, delta = int(m.group(1)), float(d.group(1))
        ref = 100 * float(r["val_error"]) - delta  # the reference's validation error, points
        out.append({"index": k, "before": round(100 * float(chain[k]["val_error"]) - ref, 2), "after": delta,
                    "se": float(d.group(2)) if d.group(2) else None,
                    "x": round(float(chain[0]["params"]) / float(r["params"]), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--slacks", default="0.01,0.005,0.004,0.003")
    ap.add_argument("--near", type=float, default=0.10, help="a step 'came close' within this many points")
    ap.add_argument("--out")
    a = ap.parse_args()
    slacks = [float(s) for s in a.slacks.split(",")]
    runs = []
    for d in a.runs:
        steps = judged(d)
        if not steps:
            continue
        close = [s["before"] for s in steps if s["after"] <= a.near]
        # a scan that starts at the most pruned step within the slack skips every step more pruned
        start = {x: max((s["index"] for s in steps if s["before"] <= 100 * x), default=0) for x in slacks}
        runs.append({"run": os.path.basename(d.rstrip("/")), "steps": steps,
                     "close_before_max": max(close, default=None),
                     "skipped": {str(x): sum(s["index"] > start[x] for s in steps) for x in slacks},
                     "skipped_close": {str(x): sum(s["index"] > start[x] for s in steps if s["after"] <= a.near)
                                       for x in slacks}})
        r = runs[-1]
        print(f"{r['run']:<24} judged {len(steps):>2}  close steps' before-refit excess (max) "
              f"{r['close_before_max'] if close else '-':>5}  trials a start at each slack skips: "
              + ", ".join(f"{k}: {v}" for k, v in r["skipped"].items()))
    summary = {"runs": len(runs), "close_before_max": max((r["close_before_max"] for r in runs
                                                          if r["close_before_max"] is not None), default=None),
               "skipped_close": {str(x): sum(r["skipped_close"][str(x)] for r in runs) for x in slacks},
               "skipped_total": {str(x): sum(r["skipped"][str(x)] for r in runs) for x in slacks},
               "judged_total": sum(len(r["steps"]) for r in runs)}
    print(json.dumps(summary))
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"near": a.near, "summary": summary, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
