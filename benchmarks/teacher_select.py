"""The real synthesis on a teacher-probe seed, with 1 or K teachers: which network the selection
keeps and how far it is from the dense reference on validation, audit and both pooled.

Uses the dense networks `teacher_probe.py` cached for the seed (run it first), or with
PARETO=1 in the environment those `pareto.py` cached (its reference and teachers 2-3); the first is
the reference, the first K teach. SAVE_KEPT=path saves the kept network (graph state) there.
Validation and audit only: the MNIST test files are not read.

Run: [PARETO=1] python benchmarks/teacher_select.py MODEL SEED METHOD K ['{"option": value}']
     -> prints the selection's rows and a line "RESULT {json}" (collected into
        results/teacher_probe.json under "selection_runs")."""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import torch

from nestir.driver.runs import RunSpec, prepare
from nestir.driver.synthesis import SynthConfig, Synthesizer
from nestir.ir.serialize import graph_from_state, graph_state
from nestir.ir.stats import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from teacher_probe import CACHE, FULL, compare  # noqa: E402


def main() -> None:
    model, seed, method, teachers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    extra = json.loads(sys.argv[5]) if len(sys.argv) > 5 else {}
    prep = prepare(RunSpec(model=model, data=f"mnist-idx:{FULL}", seed=seed))
    if os.environ.get("PARETO"):
        base = os.path.join(os.path.dirname(CACHE), f"{model}-mnist-{seed}")
        nets = [graph_from_state(torch.load(base + ".pt", weights_only=True)),
                *[graph_from_state(g) for g in torch.load(base + "-teachers3.pt", weights_only=True)["nets"]]]
    else:
        nets = [graph_from_state(s) for s in torch.load(os.path.join(CACHE, f"{model}-{seed}-k3.pt"),
                                                        weights_only=True)]
    c = SynthConfig.for_method(method, **prep.defaults, **extra)
    c.teachers = teachers
    start = nets[0].copy() if method == "prune" else prep.graph.copy()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        s = Synthesizer(start, prep.splits, c, out, teacher=nets[0], ensemble=nets[1:teachers])
        st = s.run()
    if os.environ.get("SAVE_KEPT"):  # the kept network, for a later single read of the test set
        torch.save(graph_state(s.graph), os.environ["SAVE_KEPT"])
    dense = stats(nets[0])
    for r in st.history:
        if r["phase"] == "select":
            print(r["params"], f"{dense['params'] / r['params']:.1f}x", f"val {100 * r['val_error']:.2f}%",
                  r.get("accepted"), r.get("note", ""))
    print("RESULT", json.dumps({"seed": seed, "method": method, "teachers": teachers, "extra": extra,
                                "x": round(dense["params"] / stats(s.graph)["params"], 1),
                                "flops_x": round(dense["flops"] / stats(s.graph)["flops"], 1),
                                **compare(s.graph, nets[0], prep.splits), "wall": round(time.perf_counter() - t0)}),
          flush=True)


if __name__ == "__main__":
    main()
