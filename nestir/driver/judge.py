"""Judging a network under the run's rule, without side effects: its validation error (1 - the
metric with a custom metric), whether it is accepted, whether its point estimate meets the
target, and the per-image errors and standard error the selection pools."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nestir.backends import dist
from nestir.backends.device import resolve_device
from nestir.backends.train import evaluate
from nestir.driver.decide import paired
from nestir.ir.graph import Graph


def score(graph: Graph, data: Any, *, metric: Any = None, loss: Any = None, device: Any = None) -> float:
    """The metric (higher is better) of ``graph`` on ``data`` (a Dataset): accuracy by default,
    else ``metric(outputs, targets)`` averaged over batches weighted by their size."""
    dev = resolve_device(device)
    if metric is None:
        return 1 - evaluate(graph, data.x, data.y, device=dev, loss=loss).error
    from nestir.backends.train import batches
    from nestir.ir.interpreter import IRModule

    mod = IRModule(graph.copy(), dev).eval()
    total, n = 0.0, 0
    part = dist.shard(data.x.shape[0])  # under torch.distributed each rank scores its share
    with torch.no_grad():
        for xb, yb in batches(data.x[part].to(dev), data.y[part].to(dev), 1024):
            total += float(metric(mod(xb), yb)) * xb.shape[0]
            n += xb.shape[0]
    total, n = dist.sum_float(total, n)
    return total / max(1, n)


@dataclass
class Verdict:
    error: float  # validation error (1 - metric with a custom metric)
    accepted: bool
    point_ok: bool  # the point estimate meets the target (the bound may not)
    how: str  # the decision in words
    wrong: torch.Tensor | None = None  # per-image errors (accuracy rules), pooled by the selection
    se: float | None = None  # the paired decision's standard error


@dataclass
class Judge:
    """The run's rule: a custom ``metric`` kept at ``target``; accuracy paired with the dense
    reference's per-image errors ``reference`` (``confidence`` z, ``tolerance``); or accuracy at
    least ``target``."""

    val: Any  # the validation Dataset, on the device
    device: torch.device
    loss: Any = None
    metric: Any = None
    reference: torch.Tensor | None = None
    confidence: float = 1.0
    tolerance: float = 0.0

    def __call__(self, graph: Graph, target: float) -> Verdict:
        if self.metric is not None:
            m = score(graph, self.val, metric=self.metric, loss=self.loss, device=self.device)
            ok = m >= target
            return Verdict(1 - m, ok, ok, f"metric {m:.6g} (target {target:.6g})")
        ev = evaluate(graph, self.val.x, self.val.y, device=self.device, loss=self.loss)
        if self.reference is not None:
            v = paired(ev.wrong, self.reference, z=self.confidence, tolerance=self.tolerance)
            return Verdict(ev.error, v.accept, v.point_ok, v.describe(), ev.wrong, v.se)
        ok = 1 - ev.error >= target
        return Verdict(ev.error, ok, ok, "", ev.wrong)
