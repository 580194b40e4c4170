"""magnitude-prune: NeST Policy 4, remove small effective weights and weak neurons."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from nestir.backends import dist
from nestir.ir.edit import remove_neurons, remove_units, set_mask
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph, Node
from nestir.ir.groups import GroupInfo, Tie
from nestir.ir.interpreter import IRModule
from nestir.ir.kinds import Op
from nestir.ir.stats import weight_macs
from nestir.passinfra.base import Pass, PassContext, PassResult, name_list, register, select_layers


def effective_weight(graph: Graph, n: Node) -> torch.Tensor:
    """The weight with a following BatchNorm folded in: W* = W * gamma / sqrt(var + eps)."""
    w = n.params["weight"]
    users = graph.users(n.name)
    if len(users) == 1 and users[0].op == Op.BATCHNORM and len(users[0].params["running_var"]) == w.shape[0]:
        bn = users[0]
        scale = bn.params.get("weight", torch.ones_like(bn.params["running_var"])) / torch.sqrt(
            bn.params["running_var"] + bn.attrs["eps"])
        return w * scale.view(-1, *([1] * (w.dim() - 1)))
    return w



SCOPES = ("layer", "global", "lamp")


def lamp_scores(mag: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Layer-adaptive magnitude scores (LAMP, Lee et al. 2021) of one layer's live weights: a
    weight's squared magnitude over the sum of the squares of the live weights at least as large.
    The layer's largest weight scores 1, so a global cut on these scores never empties a layer, and
    it spreads the sparsity over the layers by how much of each layer's energy a cut would take,
    not by the layers' raw weight scales. Dead weights score +inf (never picked)."""
    sq = mag.double().flatten() ** 2
    live = mask.flatten()
    out = torch.full_like(sq, float("inf"))
    idx = live.nonzero().flatten()
    if idx.numel():
        vals = sq[idx]
        order = torch.argsort(vals)
        tail = torch.flip(torch.cumsum(torch.flip(vals[order], [0]), 0), [0])  # sum of squares from here up
        scores = torch.empty_like(vals)
        scores[order] = vals[order] / tail.clamp_min(torch.finfo(torch.float64).tiny)
        out[idx] = scores
    return out.view_as(mag)


@register
@dataclass(frozen=True)
class MagnitudePrune(Pass):
    """Remove live connections with the smallest effective magnitude |W*| (BatchNorm folded in):
    a ``fraction`` of each layer's live connections (``scope="layer"``) or of all of them
    (``scope="global"``: the smallest |W*| anywhere; ``scope="lamp"``: the smallest layer-adaptive
    scores, :func:`lamp_scores`), or every one below ``threshold``. With ``neuron_fraction`` > 0 also
    remove that fraction of each resizable group's neurons with the smallest mean |output| over
    the data (measured on the device, at the group's last value before its consumers), and of
    each grouped conv's groups and each attention node's heads (whole units, the nearest count:
    a quarter of 3 heads is 1) with the smallest mean |output|. Never adds; never empties a layer
    or a group (refuses such a step with a clear error when ``strict``, else keeps the strongest).
    With ``flops_fraction`` > 0, when the connections removed so far cut the layers'
    multiply-accumulates by less than that fraction, further live connections go, cheapest first
    by |W*| per multiply-accumulate saved (the greedy answer to "lose the least magnitude for this
    many FLOPs"): the FLOPs then fall at least as fast as the requested fraction. ``modified`` is
    false when nothing was below threshold or nothing was live."""

    fraction: float = 0.0
    threshold: float = 0.0
    scope: str = "layer"
    neuron_fraction: float = 0.0
    flops_fraction: float = 0.0
    layers: str = ""
    skip: str = ""  # comma-separated node names never pruned
    strict: bool = False
    name: ClassVar[str] = "magnitude-prune"
    effect: ClassVar[str] = "prune"

    def __post_init__(self) -> None:
        if (not 0 <= self.fraction < 1 or not 0 <= self.neuron_fraction < 1 or not 0 <= self.flops_fraction < 1
                or self.threshold < 0):
            raise PassError("magnitude-prune: 0 <= fraction < 1, 0 <= neuron_fraction < 1, "
                            "0 <= flops_fraction < 1, threshold >= 0")
        if self.scope not in SCOPES:
            raise PassError(f"magnitude-prune: scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")

    def _names(self, graph: Graph) -> list[str]:
        names = [n.name for n in graph.parametric()]
        skip = set(name_list(self.skip))
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            names = wanted
        return [n for n in names if n not in skip]

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        names = self._names(graph)
        if self.flops_fraction > 0:  # the cost of every weight, before the magnitude cut
            macs = {n: weight_macs(graph[n]) for n in names}
            before = sum(float((macs[n] * graph[n].params["mask"]).sum()) for n in names)
        removed = self._connections(graph, names)
        if self.flops_fraction > 0:
            removed += self._flops(graph, names, macs, (1 - self.flops_fraction) * before)
        neurons = self._neurons(graph, ctx, set(names)) if self.neuron_fraction > 0 else 0
        return PassResult(graph, removed + neurons > 0, {"connections": removed, "neurons": neurons})

    @torch.no_grad()
    def _connections(self, graph: Graph, names: list[str]) -> int:
        if not self.fraction and not self.threshold:
            return 0
        mags = {n: effective_weight(graph, graph[n]).abs().float() for n in names}
        drop: dict[str, torch.Tensor] = {}
        if self.threshold:
            for n in names:
                drop[n] = graph[n].params["mask"] & (mags[n] < self.threshold)
        elif self.scope in ("global", "lamp"):
            # the k smallest live magnitudes, picked by index: a threshold compared against would miss
            # weights that decayed to denormal floats (with torch.set_flush_denormal(True), as training
            # on the CPU sets it, kthvalue reports such a cut as 0.0 while no denormal is <= 0.0)
            if self.scope == "lamp":
                live = torch.cat([lamp_scores(mags[n], graph[n].params["mask"]).flatten() for n in names])
            else:
                live = torch.cat([mags[n].masked_fill(~graph[n].params["mask"], float("inf")).flatten()
                                  for n in names])
            k = math.floor(self.fraction * sum(int(graph[n].params["mask"].sum()) for n in names))
            if k == 0:
                return 0
            flat = torch.zeros(live.numel(), dtype=torch.bool, device=live.device)
            flat[torch.topk(live, k, largest=False).indices] = True
            start = 0
            for n in names:
                m = graph[n].params["mask"]
                drop[n] = flat[start:start + m.numel()].view_as(m) & m
                start += m.numel()
        else:
            for n in names:
                m = graph[n].params["mask"]
                k = math.floor(self.fraction * int(m.sum()))
                if k == 0:
                    continue
                vals = mags[n].masked_fill(~m, float("inf")).flatten()
                idx = torch.topk(vals, k, largest=False).indices
                d = torch.zeros_like(m).flatten()
                d[idx] = True
                drop[n] = d.view_as(m)
        total = 0
        for n, d in drop.items():
            m = graph[n].params["mask"]
            new = m & ~d
            if not new.any():
                if self.strict:
                    raise PassError(f"magnitude-prune: pruning would remove every connection of '{n}' "
                                    "and disconnect the network; lower the fraction or threshold")
                keep = mags[n].masked_fill(~m, -1.0).flatten().argmax()
                new.view(-1)[keep] = True
            total += int(m.sum() - new.sum())
            set_mask(graph, n, new)
        return total

    @torch.no_grad()
    def _flops(self, graph: Graph, names: list[str], macs: dict[str, torch.Tensor], target: float) -> int:
        """Remove live connections until the layers' multiply-accumulates are at most ``target``:
        the cut is shared by the layers whose weights are used at more than one position (convs),
        in proportion to their multiply-accumulates, each removing its smallest |W*| first and
        keeping at least one connection."""
        cost = {n: float((macs[n] * graph[n].params["mask"]).sum()) for n in names}
        need = sum(cost.values()) - target
        spatial = [n for n in names if cost[n] > int(graph[n].params["mask"].sum())]
        share = sum(cost[n] for n in spatial)
        if need <= 0 or share <= 0:
            return 0
        total = 0
        for n in spatial:
            m = graph[n].params["mask"]
            flat = m.flatten()
            live = flat.nonzero().flatten()
            if live.numel() <= 1:
                continue
            mag = effective_weight(graph, graph[n]).abs().flatten()[live]
            order = torch.argsort(mag)[:-1]  # the strongest connection stays
            c = torch.cumsum(macs[n].flatten()[live][order], 0)
            want = min(need * cost[n] / share, float(c[-1]))
            k = int(torch.searchsorted(c, torch.tensor([want], dtype=c.dtype, device=c.device)).item()) + 1
            k = min(k, order.numel())
            new = flat.clone()
            new[live[order[:k]]] = False
            set_mask(graph, n, new.view_as(m))
            total += k
        return total

    @torch.no_grad()
    def _neurons(self, graph: Graph, ctx: PassContext, allowed: set[str]) -> int:
        info = graph.groups()
        # groups a LayerNorm normalizes prune too (the normalization then spans fewer neurons: a
        # lossy step like any pruning, which retraining recovers; growth leaves them alone)
        groups = [g for g in info.resizable() if set(g.producers) <= allowed and g.width > 1]
        ties = [t for t in info.ties() if t.groups > 1 and {c for c in t.convs if graph[c].is_parametric} <= allowed
                and {p for gid, _ in t.sides for p in info.groups[gid].producers} <= allowed]
        if not groups and not ties:
            return 0
        data = ctx.require_data(self.name)
        taps = {g.id: _tap(graph, info, g.id) for g in groups}
        for t in ties:
            taps[t.dst] = _tap(graph, info, _scored(info, t))
        mod = IRModule(graph.copy()).eval()
        cap = mod.start_capture(taps.values())
        sums: dict[str, torch.Tensor] = {}
        for xb, _ in data:
            mod(xb)
            for v, t in cap.value_tensors.items():
                node = graph[v]
                a = t.abs().float().movedim(node.axis, -1).reshape(-1, t.shape[node.axis]).mean(0)  # type: ignore[arg-type]
                sums[v] = sums.get(v, 0) + a
        dist.all_sum([sums[v] for v in sorted(sums)])  # every rank ranks the union of the ranks' data
        removed = 0
        keys = [(g.producers[0], taps[g.id]) for g in groups]
        for prod, tap in keys:
            info = graph.groups()
            grp = info.of(prod)
            k = math.floor(self.neuron_fraction * grp.width)
            k = min(k, grp.width - 1)
            if k <= 0:
                continue
            idx = torch.topk(sums[tap].cpu(), k, largest=False).indices.tolist()
            remove_neurons(graph, grp.id, idx, info=info)
            removed += k
        for conv, tap in [(t.conv, taps[t.dst]) for t in ties]:  # whole conv groups: weakest mean |output|
            info = graph.groups()
            tie = next(t for t in info.ties() if conv in t.convs)
            k = min(math.floor(self.neuron_fraction * tie.groups + 0.5), tie.groups - 1)  # whole units: nearest count
            if k <= 0:
                continue
            unit_score = sums[tap].cpu().view(tie.groups, -1).mean(1)
            remove_units(graph, conv, torch.topk(unit_score, k, largest=False).indices.tolist(), info=info)
            removed += k * sum(unit for _, unit in tie.sides)
        return removed


def _scored(info: GroupInfo, tie: Tie) -> int:
    """The group of a tie whose outputs rank its units: the written one (a grouped conv's output,
    attention's v, which the output projection reads), else the first that layers read."""
    sides = [gid for gid, _ in tie.sides]
    return next((g for g in [tie.dst, *sides] if info.groups[g].consumers), tie.dst)


def _tap(graph: Graph, info: GroupInfo, gid: int) -> str:
    """The group's value that its consumers read (its 'output'), single-segment."""
    grp = info.groups[gid]
    for c in grp.consumers:
        src = graph[c].inputs[0]
        lay = info.layouts.get(src)
        if lay and len(lay) == 1 and lay[0] == (gid, 1):
            return src
    return [v for v in grp.values if (info.layouts.get(v) or [None]) == [(gid, 1)]][-1]
