"""The generic pass harness: every registered pass must keep the verifier green, honour its
declared effect (grow never removes, prune never adds) and lower to torch and ONNX."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import onnxruntime as ort
import torch

from nestir.graph import Graph
from nestir.passinfra import Pass, PassContext


def size_counts(g: Graph) -> tuple[dict[str, int], dict[int, int], int]:
    """Live connections per parametric node, neurons per producer, total neurons."""
    conns = {n.name: int(n.params["mask"].sum()) for n in g.parametric()}
    widths = {i: grp.width for i, grp in g.groups().groups.items()}
    return conns, widths, sum(n.params["weight"].shape[0] for n in g.parametric())


def run_onnx(g: Graph, x: torch.Tensor) -> np.ndarray:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        g.to_onnx(path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        return sess.run(None, {"input": x.numpy()})[0]


def check_pass(p: Pass, g: Graph, ctx: PassContext, x: torch.Tensor) -> tuple[Graph, bool]:
    """Run ``p`` on a copy of ``g`` and assert the universal invariants; returns the result."""
    before = g.copy()
    conns0, _, neurons0 = size_counts(before)
    res = p.run(g.copy(), ctx)
    out = res.graph
    out.verify()
    conns1, _, neurons1 = size_counts(out)
    if p.effect == "grow":
        assert neurons1 >= neurons0, f"{p.name} removed neurons"
        assert sum(conns1.values()) >= sum(conns0.values()), f"{p.name} removed connections"
    if p.effect == "prune":
        assert neurons1 <= neurons0, f"{p.name} added neurons"
        assert sum(conns1.values()) <= sum(conns0.values()), f"{p.name} added connections"
    if not res.modified:
        assert conns1 == conns0 and neurons1 == neurons0, f"{p.name} said unmodified but changed sizes"
    with torch.no_grad():
        y_torch = out.to_torch()(x).numpy()
        y_ir = run_ir(out, x)
    np.testing.assert_allclose(y_torch, y_ir, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(run_onnx(out, x), y_torch, atol=1e-4, rtol=1e-4)
    if p.preserves_function:
        np.testing.assert_allclose(y_torch, run_ir(before, x), atol=1e-4, rtol=1e-4)
    return out, res.modified


def run_ir(g: Graph, x: torch.Tensor) -> np.ndarray:
    from nestir.backends.executor import IRModule

    with torch.no_grad():
        return IRModule(g.copy()).eval()(x).numpy()


# A user model file for CLI runs on `digits` (8x8): a tiny MLP, fast enough for fuzz and kill tests.
TINY_MLP_FILE = '''
import torch.nn as nn
INPUT_SHAPE = (1, 8, 8)
class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(64, 16)
        self.fc2 = nn.Linear(16, 10)
    def forward(self, x):
        return self.fc2(self.fc1(x.flatten(1)).relu())
def make():
    return MLP()
'''
