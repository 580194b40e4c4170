"""add-feature-map: NeST Policy 3, the best of K random kernel sets for a new conv channel (and,
in transformers, for a new attention head)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch.func import functional_call, vmap

from nestir.backends import dist
from nestir.ir.edit import add_neurons, add_units, remove_neurons
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph
from nestir.ir.groups import Group, GroupInfo
from nestir.ir.interpreter import IRModule, param_key
from nestir.ir.kinds import Op
from nestir.passinfra.base import Pass, PassContext, PassResult, name_list, register, select_layers


def eligible(graph: Graph, info: GroupInfo) -> list[Group]:
    """Resizable groups with a conv producer and at least one consumer."""
    return [g for g in info.resizable()
            if not g.mixing and g.consumers and any(graph[p].op == Op.CONV for p in g.producers)]


def _std(t: torch.Tensor) -> float:
    """The standard deviation of the non-zero entries of ``t`` (from sums: no copy of them)."""
    n = int(torch.count_nonzero(t))
    if n < 2:
        return 0.1
    s1, s2 = float(t.sum(dtype=torch.float64)), float(torch.linalg.vector_norm(t, dtype=torch.float64)) ** 2
    return max(0.0, (s2 - s1 * s1 / n) / (n - 1)) ** 0.5


@register
@dataclass(frozen=True)
class AddFeatureMap(Pass):
    """Add ``count`` channels to every eligible conv layer (or those in ``layers``). For each
    channel, draw ``candidates`` random kernel sets (its input kernels in every producer and its
    output kernels in every consumer, normal with the std of that layer's live weights times
    ``scale``), evaluate all candidate losses on the scoring batch in one ``vmap``-batched
    computation on the device (eval mode), and keep the best. Attention nodes gain ``count``
    whole heads the same way (random q, k, v rows and projection columns; the best of
    ``candidates`` by loss). Never removes."""

    count: int = 1
    candidates: int = 8
    scale: float = 1.0
    layers: str = ""
    name: ClassVar[str] = "add-feature-map"
    effect: ClassVar[str] = "grow"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.count < 0 or self.candidates < 1 or self.scale <= 0:
            raise PassError("add-feature-map: count >= 0, candidates >= 1 and scale > 0 required")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        data = ctx.require_data(self.name)
        groups = eligible(graph, graph.groups())
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            groups = [g for g in groups if set(wanted) & set(g.producers)]
        keys = [g.producers[0] for g in groups]
        gains: list[float] = []
        base: float | None = None  # the loss of the graph as it is: after each channel, the best candidate's
        for key in keys * self.count:
            info = graph.groups()
            grp = info.of(key)
            gain, base = self._grow_one(graph, grp, info, data, ctx, base)
            gains.append(gain)
        info = graph.groups()
        heads = [t.conv for t in info.ties() if graph[t.conv].op == Op.ATTENTION]
        if self.layers:  # (names checked by select_layers above)
            heads = [h for h in heads if set(graph[h].inputs) & set(name_list(self.layers))]
        for node in heads * self.count:
            gains.append(self._grow_head(graph, node, data, ctx))
        added = len(gains)
        return PassResult(graph, added > 0, {"added": added, "loss_gain": sum(gains)})

    def _grow_one(self, graph: Graph, grp: Group, info: GroupInfo, data, ctx: PassContext,  # type: ignore[no-untyped-def]
                  base_loss: float | None) -> tuple[float, float]:
        """Add one channel to ``grp``: the candidate with the lowest mean loss over ``data`` (over
        every rank's data under torch.distributed); returns the loss it gains and the loss after.
        ``base_loss``: the graph's loss on ``data`` when known (measured here when None).

        The candidates are scored on the graph itself with a zero channel added (the same
        function), which is then removed and added again with the best kernels: no copy of the
        graph."""
        gen = ctx.generator(f"fmap:{grp.producers[0]}:{grp.width}")
        k = self.candidates
        rows, cols = {}, {}
        for p in grp.producers:
            w = graph[p].params["weight"]
            rows[p] = torch.randn((k, 1, *w.shape[1:]), generator=gen) * _std(w) * self.scale
        for c in grp.consumers:
            w = graph[c].params["weight"]
            r = sum(rr for _, rr, _ in info.columns(c, grp.id))
            cols[c] = torch.randn((k, w.shape[0], r, *w.shape[2:]), generator=gen) * _std(w) * self.scale
        add_neurons(graph, grp.id, 1, info=info)
        tinfo = graph.groups()
        tgrp = tinfo.of(grp.producers[0])
        mod = IRModule(graph).eval()
        base = {n: t.detach() for n, t in mod.params.items()}
        stacked = {}
        own = set(grp.producers) & set(grp.consumers)  # a layer in x + f(layer(x)) reads its own channels
        for p in grp.producers:
            cand = rows[p]
            if p in own:  # the new row's kernel from the new channel itself is zero (as add_neurons makes it)
                (off, r, w), *_ = tinfo.columns(p, tgrp.id)
                at = off + (w - 1) * r
                cand = torch.cat([cand[:, :, :at], torch.zeros_like(cand[:, :, :r]), cand[:, :, at:]], 2)
            stacked[param_key(p, "weight")] = self._with_rows(base[param_key(p, "weight")], cand)
        for c in grp.consumers:
            cand = cols[c]
            if c in own:  # and so is the new channel's kernel into the new row
                cand = torch.cat([cand, torch.zeros_like(cand[:, :1])], 1)
            key = param_key(c, "weight")
            start = 0
            for off, r, w in tinfo.columns(c, tgrp.id):  # each place the consumer reads the group
                stacked[key] = self._with_cols(stacked.get(key, base[key]), cand[:, :, start:start + r],
                                               off + (w - 1) * r, k)
                start += r
        dev = next(iter(base.values())).device
        stacked = {n: t.to(dev) for n, t in stacked.items()}
        loss_fn = ctx.loss_fn()

        def loss_of(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            full = {f"params.{n}": t for n, t in base.items()}
            full.update({f"params.{n}": t for n, t in params.items()})
            return loss_fn(functional_call(mod, full, (x,)), y)

        sums = torch.zeros(k + 2, dtype=torch.float64)  # candidates' losses, the base loss, batches
        with torch.no_grad():
            for x, y in data:
                try:
                    losses = vmap(loss_of, in_dims=(0, None, None))(stacked, x, y)
                except Exception:  # an op without a batching rule: evaluate one by one
                    losses = torch.stack([loss_of({n: t[i] for n, t in stacked.items()}, x, y) for i in range(k)])
                sums[:k] += losses.detach().double().cpu()
                if base_loss is None:
                    sums[k] += float(loss_fn(mod(x), y))
                sums[k + 1] += 1
        dist.all_sum([sums])
        losses = sums[:k] / sums[k + 1]
        if base_loss is None:
            base_loss = float(sums[k] / sums[k + 1])
        best = int(torch.argmin(losses))
        remove_neurons(graph, tgrp.id, [tgrp.width - 1], info=tinfo)  # the zero channel scored on
        again = graph.groups()
        add_neurons(graph, again.of(grp.producers[0]).id, 1,
                    rows={p: {"weight": rows[p][best].to(graph.device)} for p in grp.producers},
                    cols={c: {"weight": cols[c][best].to(graph.device)} for c in grp.consumers}, info=again)
        return base_loss - float(losses[best]), float(losses[best])

    def _grow_head(self, graph: Graph, node: str, data, ctx: PassContext) -> float:  # type: ignore[no-untyped-def]
        """Add one head to attention ``node``: the best of ``candidates`` random heads by mean loss."""
        info = graph.groups()
        tie = next(t for t in info.ties() if t.conv == node)
        q, k, v = graph[node].inputs
        proj = info.groups[tie.dst].consumers
        gen = ctx.generator(f"head:{node}:{tie.groups}")
        n = self.candidates

        def draw(w: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
            return torch.randn((n, *shape), generator=gen) * _std(w) * self.scale

        rows = {p: draw(graph[p].params["weight"], (u, graph[p].params["weight"].shape[1]))
                for p, u in ((q, tie.src_unit), (k, tie.src_unit), (v, tie.dst_unit))}
        cols = {c: draw(graph[c].params["weight"], (graph[c].params["weight"].shape[0], tie.dst_unit)) for c in proj}
        trial = graph.copy()
        add_units(trial, node, 1)
        mod = IRModule(trial).eval()
        base = {name: t.detach() for name, t in mod.params.items()}
        loss_fn = ctx.loss_fn()
        sums = torch.zeros(n + 2, dtype=torch.float64)
        with torch.no_grad():
            for x, y in data:
                for i in range(n):
                    params = dict(base)
                    for p, r in rows.items():
                        w = params[param_key(p, "weight")].clone()
                        w[-r.shape[1]:] = r[i].to(w.device, w.dtype)
                        params[param_key(p, "weight")] = w
                    for c, cc in cols.items():
                        w = params[param_key(c, "weight")].clone()
                        w[:, -cc.shape[2]:] = cc[i].to(w.device, w.dtype)
                        params[param_key(c, "weight")] = w
                    out = functional_call(mod, {f"params.{name}": t for name, t in params.items()}, (x,))
                    sums[i] += float(loss_fn(out, y))
                sums[n] += float(loss_fn(mod(x), y))
                sums[n + 1] += 1
        dist.all_sum([sums])
        losses = sums[:n] / sums[n + 1]
        best = int(torch.argmin(losses))
        add_units(graph, node, 1, rows={p: {"weight": r[best].to(graph.device)} for p, r in rows.items()},
                  cols={c: {"weight": cc[best].to(graph.device)} for c, cc in cols.items()}, info=info)
        return float(sums[n] / sums[n + 1]) - float(losses[best])

    @staticmethod
    def _with_rows(w: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        k = cand.shape[0]
        out = w.unsqueeze(0).repeat(k, *([1] * w.dim())).clone()
        out[:, -1:] = cand.to(w.device, w.dtype)
        return out

    @staticmethod
    def _with_cols(w: torch.Tensor, cand: torch.Tensor, pos: int, k: int) -> torch.Tensor:
        """``w`` with each candidate's columns; ``w`` may be stacked already (a layer that also
        produces the group has its candidate rows in it)."""
        r = cand.shape[2]
        out = w.clone() if w.dim() == cand.dim() else w.unsqueeze(0).repeat(k, *([1] * w.dim())).clone()
        out[:, :, pos:pos + r] = cand.to(w.device, w.dtype)
        return out
