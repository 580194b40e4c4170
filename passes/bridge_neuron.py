"""bridge-neuron: NeST Policy 2 / Algorithm 1, a new neuron bridging strongly correlated pairs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from nestir.backends.gradstats import collect
from nestir.ir.edit import add_neurons, follow
from nestir.ir.errors import PassError
from nestir.ir.graph import Graph
from nestir.ir.groups import Group, GroupInfo
from nestir.ir.kinds import Op
from nestir.passinfra.base import Pass, PassContext, PassResult, register, select_layers


def eligible(graph: Graph, info: GroupInfo) -> list[Group]:
    """Resizable groups produced and consumed only by linear layers (fully connected layers)."""
    out = []
    for g in info.resizable():
        if g.mixing or not g.consumers:
            continue
        if any(graph[p].op != Op.LINEAR for p in g.producers):
            continue
        if any(graph[c].op != Op.LINEAR or any(r != 1 for _, r, _ in info.columns(c, g.id)) for c in g.consumers):
            continue
        out.append(g)
    return out


def connected_pairs(graph: Graph, grp: Group) -> list[tuple[str, str]]:
    """(consumer, producer) pairs of ``grp`` where the consumer reads what the producer wrote: in a
    residual stream ``h1 = fc0(x); h2 = h1 + f(fc1(h1))`` fc1 reads fc0's neurons but not its own,
    so a new neuron's row in fc1 and its column in fc1 are not a bridge; nor are a producer on
    tokens and a consumer after a mean over them (see :func:`_rows`)."""
    out = []
    for c in grp.consumers:
        seen: set[str] = set()
        stack = list(graph[c].inputs)
        while stack:
            v = stack.pop()
            if v not in seen:
                seen.add(v)
                stack.extend(graph[v].inputs)
        out.extend((c, p) for p in grp.producers if p in seen and _rows(graph, c) == _rows(graph, graph[p].inputs[0]))
    return out


def _rows(graph: Graph, value: str) -> int:
    """Vectors per sample of a layer's value (tokens, pixels): a bridge joins a producer's input
    to a consumer's output position by position, so both must have as many (a layer after a mean
    over tokens has one per sample, a layer on tokens N)."""
    shape = graph[value].shape or (1, 1)
    return math.prod(shape[1:-1])


def _avg_abs(t: torch.Tensor) -> float:
    nz = t[t != 0]
    return float(nz.abs().mean()) if nz.numel() else 0.0


@register
@dataclass(frozen=True)
class BridgeNeuron(Pass):
    """Add ``count`` neurons to every eligible fully connected layer l (or those in ``layers``).

    G (M x N) = sum_batch dL/du^{l+1}_m * x^{l-1}_n over every (consumer, producer) pair of the
    layer's neuron group in which the consumer reads what the producer wrote (a residual group
    has pairs that are not: a layer further down the stream does not feed one above it). Entries
    with |G| above the (beta*M*N)-th largest are bridged: for each, d = sqrt(|G_mn|) * (random
    +-1); w_out[m] += d; w_in[n] -= d * sgn(G_mn). The seed notes write ``+``; with G the loss
    *gradient* that sign would raise the loss, so nestir takes the descent sign (w_out[m] *
    w_in[n] = -G_mn). Then w_out *= alpha*avg|W^{l+1}|/avg|w_out|, w_in *=
    alpha*avg|W^l|/avg|w_in| (averages over non-zeros), and w_out is flipped if the full
    first-order change sum w_out^T G w_in is still positive. With several new neurons the
    selected entries are dealt round-robin so each bridges different pairs. Random signs come
    from the context's seeded generator. New neurons join the whole group (BN rows at identity,
    every coupled consumer extended). Never removes."""

    count: int = 1
    alpha: float = 0.3
    beta: float = 0.01
    layers: str = ""  # comma-separated producer names; empty: every eligible layer
    name: ClassVar[str] = "bridge-neuron"
    effect: ClassVar[str] = "grow"
    needs_data: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if self.count < 0 or self.alpha < 0 or not 0 < self.beta <= 1:
            raise PassError("bridge-neuron: count >= 0, alpha >= 0 and 0 < beta <= 1 required")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        groups = eligible(graph, graph.groups())
        wanted = select_layers(self.name, self.layers, graph)
        if wanted is not None:
            groups = [g for g in groups if set(wanted) & set(g.producers)]
        if not groups or self.count == 0:
            return PassResult(graph, False, {"added": 0})
        keys = [tuple(g.producers) for g in groups]
        pairs = [pair for g in groups for pair in connected_pairs(graph, g)]
        stats = collect(graph, ctx.require_data(self.name), ctx.loss, weights=[], bridges=pairs)
        plans = [(key, *self._neurons(graph, g, stats.bridge, ctx.generator(f"bridge:{key[0]}")))
                 for key, g in zip(keys, groups, strict=True)]
        start, added = len(graph.journal), 0
        for key, rows, cols in plans:
            if rows is None:
                continue
            # earlier additions in this run widened some of these layers: follow them
            later = graph.journal[start:]
            rows = {n: {k: follow(t, n, k, later) for k, t in d.items()} for n, d in rows.items()}
            cols = {n: {k: follow(t, n, k, later) for k, t in d.items()} for n, d in cols.items()}
            info = graph.groups()
            add_neurons(graph, info.of(key[0]).id, self.count, rows=rows, cols=cols, info=info)
            added += self.count
        return PassResult(graph, added > 0, {"added": added, "loss": stats.loss})

    def _neurons(self, graph: Graph, grp: Group, bridge: dict, gen: torch.Generator):  # type: ignore[no-untyped-def]
        mats = {pair: bridge[pair] for pair in connected_pairs(graph, grp)}
        flat = torch.cat([m.flatten() for m in mats.values()])
        k = max(self.count, math.ceil(self.beta * flat.numel()))
        k = min(k, int((flat != 0).sum()))
        if k == 0:
            return None, None
        thres = torch.topk(flat.abs(), k).values[-1]
        dev = flat.device
        w_in = {p: torch.zeros(self.count, graph[p].params["weight"].shape[1], device=dev) for p in grp.producers}
        w_out = {c: torch.zeros(graph[c].params["weight"].shape[0], self.count, device=dev) for c in grp.consumers}
        slot = 0
        for (c, p), g in mats.items():
            sel = (g.abs() >= thres).nonzero()
            if sel.numel() == 0:
                continue
            vals = g[sel[:, 0], sel[:, 1]]
            order = torch.argsort(vals.abs(), descending=True)
            sel, vals = sel[order], vals[order]
            eps = (torch.randint(0, 2, (vals.numel(),), generator=gen) * 2 - 1).to(dev, vals.dtype)
            d = vals.abs().sqrt() * eps
            j = (torch.arange(vals.numel(), device=dev) + slot) % self.count
            slot = (slot + vals.numel()) % self.count
            w_out[c].index_put_((sel[:, 0], j), d, accumulate=True)
            w_in[p].index_put_((j, sel[:, 1]), -d * vals.sign(), accumulate=True)
        for p, w in w_in.items():
            ref, cur = _avg_abs(graph[p].live_weight()), _avg_abs(w)
            if cur > 0:
                w *= self.alpha * ref / cur
        for c, w in w_out.items():
            ref, cur = _avg_abs(graph[c].live_weight()), _avg_abs(w)
            if cur > 0:
                w *= self.alpha * ref / cur
        # the sign after the rescaling: a group with several producers or consumers (a residual
        # stream) rescales its pairs' terms by different factors, which can flip their sum
        for j in range(self.count):
            first = sum(float(w_out[c][:, j] @ mats[(c, p)] @ w_in[p][j]) for (c, p) in mats)
            if first > 0:
                for c in w_out:
                    w_out[c][:, j] = -w_out[c][:, j]
        rows = {p: {"weight": w, "mask": w != 0} for p, w in w_in.items()}
        cols = {c: {"weight": w, "mask": w != 0} for c, w in w_out.items()}
        return rows, cols
