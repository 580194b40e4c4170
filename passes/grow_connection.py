"""grow-connection: NeST Policy 1, activate the dormant connections with the largest |dL/dw|."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from nestir.backends.gradstats import collect
from nestir.ir.edit import activate
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph
from nestir.passinfra.base import Pass, PassContext, PassResult, register, select_layers


@register
@dataclass(frozen=True)
class GrowConnection(Pass):
    """Score every dormant connection w (x_n -> u_m) by |sum_batch dL/du_m * x_n|, the dense
    gradient of the masked weight (for a conv, every kernel tap), and activate the best.

    How many: ``fraction`` of each layer's live connections (or of all live ones with
    ``scope="global"``), or ``count`` per layer, or every one scoring above ``threshold``. New
    weights start at zero (``init="zero"``: the function is exactly preserved) or one gradient
    step (``init="gradient"``, step ``lr``). Never removes; ``modified`` is false when nothing
    was dormant or no dormant connection had a non-zero score."""

    fraction: float = 0.1
    count: int = 0
    threshold: float = 0.0
    scope: str = "layer"
    init: str = "zero"
    lr: float = 0.01
    layers: str = ""  # comma-separated node names; empty: every parametric node
    name: ClassVar[str] = "grow-connection"
    effect: ClassVar[str] = "grow"
    preserves_function: ClassVar[bool] = True
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.scope not in ("layer", "global"):
            raise PassError(f"grow-connection: scope must be 'layer' or 'global', got {self.scope!r}")
        if self.init not in ("zero", "gradient"):
            raise PassError(f"grow-connection: init must be 'zero' or 'gradient', got {self.init!r}")
        if self.fraction < 0 or self.count < 0 or self.threshold < 0:
            raise PassError("grow-connection: fraction, count and threshold must be >= 0")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        names = [n.name for n in graph.parametric()]
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            names = wanted
        names = [n for n in names if not bool(graph[n].params["mask"].all())]
        if not names:
            return PassResult(graph, False, {"grown": 0})
        stats = collect(graph, ctx.require_data(self.name), ctx.loss, weights=names)
        picks = self._pick(graph, names, stats.weight_grad)
        grown = 0
        with torch.no_grad():
            for name, idx in picks.items():
                if idx.numel() == 0:
                    continue
                init = (-self.lr * stats.weight_grad[name].flatten()[idx] if self.init == "gradient" else 0.0)
                activate(graph, name, idx, init)
                grown += idx.numel()
        return PassResult(graph, grown > 0, {"grown": grown, "loss": stats.loss})

    def _pick(self, graph: Graph, names: list[str], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = {}
        for name in names:
            s = grads[name].abs().flatten().clone()
            s[graph[name].params["mask"].flatten()] = -1.0  # live connections are not candidates
            scores[name] = s
        if self.threshold > 0:
            return {n: (s > self.threshold).nonzero().flatten() for n, s in scores.items()}
        if self.scope == "global" and not self.count:
            live = sum(int(graph[n].params["mask"].sum()) for n in names)
            k = math.ceil(self.fraction * live)
            allscores = torch.cat([scores[n] for n in names])
            k = min(k, int((allscores > 0).sum()))
            if k <= 0:
                return {}
            cut = torch.topk(allscores, k).values[-1]
            out, budget = {}, k
            for n in names:
                idx = (scores[n] >= cut).nonzero().flatten()[:budget]
                budget -= idx.numel()
                out[n] = idx
            return out
        out = {}
        for n in names:
            live = int(graph[n].params["mask"].sum())
            k = self.count or math.ceil(self.fraction * max(live, 1))
            k = min(k, int((scores[n] > 0).sum()))
            out[n] = torch.topk(scores[n], k).indices if k > 0 else torch.empty(0, dtype=torch.long)
        return out
