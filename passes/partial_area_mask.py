"""partial-area-mask: NeST Algorithm 2, mask the least useful (in, out, position) triples of a conv."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F

from nestir.backends import dist
from nestir.ir.edit import set_mask
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph, Node
from nestir.ir.interpreter import IRModule
from nestir.passinfra.base import Pass, PassContext, PassResult, register, select_layers


def contributions(n: Node, x: torch.Tensor) -> torch.Tensor:
    """mean over the batch of |C[m, n, p, q]|, C[m, n] = conv(x_m, K[n, m]), by one grouped conv."""
    w = n.params["weight"] * n.params["mask"]
    n_out, n_in = w.shape[:2]
    w2 = w.transpose(0, 1).reshape(n_in * n_out, 1, *w.shape[2:])
    a = n.attrs
    fn = F.conv1d if w.dim() == 3 else F.conv2d
    c = fn(x, w2, None, a["stride"], a["padding"], a["dilation"], n_in)
    return c.abs().mean(0).view(n_in, n_out, *c.shape[2:])


@register
@dataclass(frozen=True)
class PartialAreaMask(Pass):
    """For every conv with groups=1 (or those in ``layers``), compute |C| averaged over the data
    and mask off the ``fraction`` of its still-active (in, out, position) triples with the
    smallest mean |C|. The layer then computes F_n = sum_m C[m,n] * Msk[m,n] in the executor,
    in ``to_torch()`` and in ``to_onnx()`` alike; FLOPs count only live positions. Never adds;
    ``fraction=0`` changes nothing (``modified`` false)."""

    fraction: float = 0.01
    layers: str = ""
    name: ClassVar[str] = "partial-area-mask"
    effect: ClassVar[str] = "prune"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if not 0 <= self.fraction < 1:
            raise PassError(f"partial-area-mask: fraction must be in [0, 1), got {self.fraction}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        convs = [n for n in graph.parametric() if n.is_plain_conv]
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            convs = [n for n in convs if n.name in wanted]
        if not convs or self.fraction == 0:
            return PassResult(graph, False, {"masked": 0})
        data = ctx.require_data(self.name)
        mod = IRModule(graph.copy()).eval()
        cap = mod.start_capture(n.inputs[0] for n in convs)
        sums: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            for xb, _ in data:
                mod(xb)
                for n in convs:
                    c = contributions(n, cap.value_tensors[n.inputs[0]])
                    sums[n.name] = sums.get(n.name, 0) + c
        dist.all_sum([sums[n.name] for n in convs])  # every rank ranks the union of the ranks' data
        masked = 0
        for n in convs:
            w = n.params["weight"]
            area = n.params.get("area")
            if area is None:
                area = torch.ones((w.shape[1], w.shape[0], *(n.shape or ())[2:]), dtype=torch.bool, device=w.device)
            live = int(area.sum())
            k = math.floor(self.fraction * live)
            k = min(k, live - 1)
            if k <= 0:
                continue
            score = sums[n.name].masked_fill(~area, float("inf")).flatten()
            idx = torch.topk(score, k, largest=False).indices
            new = area.clone().flatten()
            new[idx] = False
            set_mask(graph, n.name, new.view_as(area), key="area")
            masked += k
        return PassResult(graph, masked > 0, {"masked": masked})
