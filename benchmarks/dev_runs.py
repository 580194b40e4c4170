"""Summarize finished development run directories from their own reports, validation and audit
only (the MNIST test files are not read: use ``score_runs.py`` for held-out seeds): what the run
kept (parameters and FLOPs fewer than dense, its distance from the dense reference on validation
and audit), the reference's and the teachers' errors, where the chain started, and every chain
step the selection judged (its size, paired error difference and bound after the trial refit).

    python benchmarks/dev_runs.py RUN_DIR... [--label NAME] [--out results/x.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

JUDGED = re.compile(r"chain step (\d+).*?error ([+-][\d.]+) pts.*?bound ([+-][\d.]+)")


def summarize(run: str) -> dict:
    with open(os.path.join(run, "report.json")) as f:
        r = json.load(f)
    b, k = r["baseline"], r["final"]
    t = b.get("teachers", {})
    pts = lambda v: round(100 * v, 2)  # noqa: E731
    out = {
        "run": os.path.basename(run.rstrip("/")), "model": r["model"], "seed": r["seed"], "method": r["method"],
        "teacher_augment": r["config"].get("teacher_augment", False), "tolerance": r["config"]["tolerance"],
        "kept_x": round(b["params"] / k["params"], 1), "kept_flops_x": round(b["flops"] / k["flops"], 1),
        "val_delta": pts(k["val_error"] - b["val_error"]), "audit_delta": pts(k["audit_error"] - b["audit_error"]),
        "reference": {"val": pts(b["val_error"]), "audit": pts(b["audit_error"])},
        "teachers": {"val": pts(t["val_error"]), "audit": pts(t["audit_error"]),
                     "val_members": [pts(v) for v in t["val_errors"]]} if t else None,
        "chain_start": "dense" if any(p["phase"] == "dense" for p in r["phases"]) else "grown",
        "wall_seconds": r.get("command_seconds"),
        "judged": [],
    }
    for p in r["phases"]:
        m = JUDGED.search(p.get("note", "")) if p["phase"] == "select" else None
        if m:
            out["judged"].append({"step": int(m.group(1)), "x": round(b["params"] / p["params"], 1),
                                  "delta": float(m.group(2)), "bound": float(m.group(3)), "passed": p["accepted"]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out")
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    rows = [summarize(d) for d in a.runs]
    for s in rows:
        t = s["teachers"] or {}
        print(f"{s['run']}: {s['kept_x']}x ({s['kept_flops_x']}x FLOPs) val {s['val_delta']:+.2f} audit "
              f"{s['audit_delta']:+.2f} | reference val {s['reference']['val']} audit {s['reference']['audit']} | "
              f"teachers val {t.get('val')} | chain from {s['chain_start']} | {s['wall_seconds']} s")
        for j in s["judged"]:
            print(f"    step {j['step']:>3} {j['x']:7.1f}x  {j['delta']:+.2f}  bound {j['bound']:+.2f}"
                  + ("  kept" if j["passed"] else ""))
    if a.out:
        old = json.load(open(a.out)) if os.path.isfile(a.out) else {"runs": []}
        keep = [r for r in old["runs"] if r["run"] not in {s["run"] for s in rows}]
        with open(a.out, "w") as f:
            json.dump({**old, "label": a.label or old.get("label", ""), "runs": keep + rows}, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
