"""Neuron-group analysis: which values must keep identical neurons, and where each group's
neurons live in every producer, per-neuron node and consumer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .graph import Graph, Node

Layout = list[tuple[int, int]]  # segments (group id, repeat): a group's neurons, each repeated


@dataclass
class Group:
    """A set of values whose neuron axis is one index space of ``width`` neurons.

    ``producers`` compute the neurons (their weight rows), ``per_neuron`` nodes hold one entry per
    neuron (BatchNorm, LayerNorm, depthwise conv), ``consumers`` read them as input columns.
    A ``frozen`` group cannot change width (it touches the model's input/output, an opaque op,
    or a reshape); ``reason`` says why."""

    id: int
    width: int
    frozen: bool = False
    reason: str = ""
    producers: list[str] = field(default_factory=list)
    per_neuron: list[str] = field(default_factory=list)
    consumers: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    mixing: bool = False  # a LayerNorm normalizes across these neurons
    tie: Tie | None = None  # a grouped conv ties this group to another in units of whole conv groups

    @property
    def resizable(self) -> bool:
        """Neurons may be added or removed one at a time (by every pass)."""
        return not self.frozen and bool(self.producers) and self.tie is None

    @property
    def prunable(self) -> bool:
        """Neurons may be removed: one at a time, or in whole units where a grouped conv ties the
        group (:func:`nestir.edit.remove_units`)."""
        return not self.frozen and bool(self.producers)


@dataclass(frozen=True)
class Tie:
    """A grouped conv ``conv`` with ``groups`` groups reads group ``src`` in units of ``src_unit``
    channels and writes group ``dst`` in units of ``dst_unit``: unit k of one exists only with
    unit k of the other, so both lose whole units together (``src == dst`` for a conv inside
    a residual loop with equal units)."""

    conv: str
    groups: int
    src: int
    src_unit: int
    dst: int
    dst_unit: int


@dataclass
class GroupInfo:
    groups: dict[int, Group]
    layouts: dict[str, Layout | None]
    consumer_layouts: dict[str, Layout]  # consumers and per-neuron nodes: layout of their input axis

    def of(self, node: str) -> Group | None:
        """The group of a node's output value when it is a single group."""
        lay = self.layouts.get(node)
        if not lay or len({g for g, _ in lay}) != 1:
            return None
        return self.groups[lay[0][0]]

    def columns(self, consumer: str, gid: int) -> list[tuple[int, int, int]]:
        """Where group ``gid`` sits in ``consumer``'s input: (offset, repeat, width) per segment."""
        out, off = [], 0
        for g, r in self.consumer_layouts[consumer]:
            w = self.groups[g].width
            if g == gid:
                out.append((off, r, w))
            off += w * r
        return out

    def resizable(self) -> list[Group]:
        return [g for g in self.groups.values() if g.resizable]

    def ties(self) -> list[Tie]:
        """The grouped-conv ties whose groups can lose whole units (one per conv)."""
        return list(dict.fromkeys(g.tie for g in self.groups.values() if g.tie is not None and g.prunable))


class _Analysis:
    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.parent: dict[int, int] = {}
        self.width: dict[int, int] = {}
        self.frozen: dict[int, str] = {}
        self.layout: dict[str, Layout | None] = {}
        self.consumer: dict[str, Layout] = {}
        self.producers: dict[int, list[str]] = {}
        self.per_neuron: dict[str, Layout] = {}
        self.mixing: set[int] = set()
        self.ties: list[tuple[str, int, int, int, int, int]] = []  # conv, groups, src, src unit, dst, dst unit

    def find(self, g: int) -> int:
        while self.parent[g] != g:
            self.parent[g] = self.parent[self.parent[g]]
            g = self.parent[g]
        return g

    def new(self, width: int, producer: str | None = None, frozen: str = "") -> int:
        g = len(self.parent)
        self.parent[g] = g
        self.width[g] = width
        self.producers[g] = [producer] if producer else []
        if frozen:
            self.frozen[g] = frozen
        return g

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra

    def freeze(self, lay: Layout | None, why: str) -> None:
        for g, _ in lay or []:
            self.frozen.setdefault(self.find(g), why)

    def unify(self, layouts: list[Layout | None], why: str) -> Layout | None:
        known = [lay for lay in layouts if lay is not None]
        if len(known) != len(layouts) or not known:
            for lay in known:
                self.freeze(lay, why)
            return None
        ref = known[0]
        for lay in known[1:]:
            if len(lay) != len(ref) or any(r1 != r2 for (_, r1), (_, r2) in zip(lay, ref, strict=True)):
                for x in known:
                    self.freeze(x, why + " (layouts differ)")
                return None
            for (g1, _), (g2, _) in zip(lay, ref, strict=True):
                self.union(g1, g2)
        return ref

    def input_layout(self, node: Node, along: int | None) -> Layout | None:
        """The layout of input 0 when read along dim ``along`` (None: any), else None (frozen)."""
        src = self.graph[node.inputs[0]]
        lay = self.layout.get(src.name)
        if lay is None:
            return None
        if src.shape is None or src.axis is None or (along is not None and src.axis != along % len(src.shape)):
            self.freeze(lay, f"'{node.name}' reads it along another dim")
            return None
        return lay

    def visit(self, n: Node) -> Layout | None:
        op = n.op
        if op == "input":
            return None if n.axis is None else [(self.new(n.width or 0, frozen="model input"), 1)]
        if op == "output":
            for i in n.inputs:
                self.freeze(self.layout.get(i), "model output")
            return None
        if op == "reshape" and "keep" in n.attrs:  # the neuron axis stays a whole dim
            return self.input_layout(n, n.attrs["keep"][0])
        if op in ("const", "reshape", "opaque", "gather", "slice"):
            for i in n.inputs:
                self.freeze(self.layout.get(i), f"{op} node '{n.name}'")
            return None
        if op == "linear":
            lay = self.input_layout(n, -1)
            if lay is not None:
                self.consumer[n.name] = lay
            return [(self.new(n.params["weight"].shape[0], n.name), 1)]
        if op == "conv":
            return self.visit_conv(n)
        if op == "attention":
            return self.visit_attention(n)
        if op in ("batchnorm", "layernorm"):
            lay = self.input_layout(n, 1 if op == "batchnorm" else -1)
            if lay is not None:
                self.per_neuron[n.name] = lay
                if op == "layernorm":
                    self.mixing.update(g for g, _ in lay)
            return lay
        if op == "index":
            return self.visit_index(n)
        if op in ("act", "identity", "permute"):  # the neuron axis moves (Node.axis follows) but stays whole
            return self.layout.get(n.inputs[0])
        if op in ("scale", "groupnorm", "prepend"):
            return self.visit_channelwise(n)
        if op in ("pool", "adaptive_pool", "resize", "pad"):
            return self.input_layout(n, 1)
        if op == "flatten":
            lay = self.input_layout(n, 1)
            src = self.graph[n.inputs[0]].shape or ()
            sp = math.prod(src[2:])
            return None if lay is None else [(g, r * sp) for g, r in lay]
        if op == "mean":
            lay = self.layout.get(n.inputs[0])
            if n.axis is None:
                self.freeze(lay, f"mean '{n.name}' reduces the neuron axis")
                return None
            return lay
        if op == "binary":
            return self.visit_binary(n)
        if op == "cat":
            lays = [self.layout.get(i) for i in n.inputs]
            srcs = [self.graph[i] for i in n.inputs]
            if all(s.axis == n.attrs["dim"] for s in srcs):
                if any(lay is None for lay in lays):
                    for lay in lays:
                        self.freeze(lay, f"cat '{n.name}' joins a frozen value")
                    return None
                return [seg for lay in lays for seg in lay]  # type: ignore[union-attr]
            return self.unify(lays, f"cat '{n.name}'")
        for i in n.inputs:
            self.freeze(self.layout.get(i), f"unknown op '{op}'")
        return None

    def visit_channelwise(self, n: Node) -> Layout | None:
        """A per-channel operand (``x * gamma``) or a GroupNorm: one entry per neuron. A GroupNorm
        with one group normalizes across the neurons (like a LayerNorm); one with a group per
        channel does not; other group counts tie channels in fixed-size sets (frozen)."""
        lay = self.input_layout(n, 1 if n.op == "groupnorm" else None)
        if lay is None:
            return None
        if any(r != 1 for _, r in lay):
            self.freeze(lay, f"'{n.name}' reads a repeated layout")
            return None
        if n.op == "groupnorm":
            g, c = n.attrs["groups"], sum(self.width[x] for x, _ in lay)
            if 1 < g < c or len(lay) > 1 and g != c:
                self.freeze(lay, f"GroupNorm '{n.name}' normalizes {c} channels in {g} groups")
                return lay
            if g == 1:
                self.mixing.update(x for x, _ in lay)
        self.per_neuron[n.name] = lay
        return lay

    def visit_index(self, n: Node) -> Layout | None:
        """Indexing that keeps the neuron axis whole passes its layout through; a range of the
        neuron axis (a channel slice, a piece of ``split``/``chunk``) selects the segments it
        covers, and freezes them where it cuts one (the frontend splits such producers first)."""
        src = self.graph[n.inputs[0]]
        lay = self.layout.get(src.name)
        cut = index_range(n, src.axis)
        if lay is None or cut is None:
            return lay
        start, stop = cut
        out, off = [], 0
        for g, r in lay:
            w = self.width[self.find(g)] * r
            if start <= off and off + w <= stop:
                out.append((g, r))
            elif off < stop and start < off + w:  # cuts into this segment
                self.freeze(lay, f"'{n.name}' takes channels {start}:{stop}, which cut a neuron group")
                return None
            off += w
        return out

    def visit_attention(self, n: Node) -> Layout | None:
        """q and k share one index space (their dot product pairs neuron j of q with neuron j of
        k); v's neurons flow to the output. Both are cut in heads: head h of q/k exists only with
        head h of v, so the node ties the two groups in units of whole heads."""
        lays = []
        for i in n.inputs:
            src, lay = self.graph[i], self.layout.get(i)
            ok = lay is not None and len(lay) == 1 and lay[0][1] == 1 and src.shape is not None \
                and src.axis == len(src.shape) - 1
            lays.append(lay if ok else None)
        if any(lay is None for lay in lays):
            for i in n.inputs:
                self.freeze(self.layout.get(i), f"attention '{n.name}' reads it in a layout it cannot cut in heads")
            return None
        (q, _), (k, _), (v, _) = (lay[0] for lay in lays)  # type: ignore[index]
        self.union(q, k)
        h = n.attrs["heads"]
        self.ties.append((n.name, h, q, self.width[self.find(q)] // h, v, self.width[self.find(v)] // h))
        return lays[2]

    def visit_conv(self, n: Node) -> Layout | None:
        g = n.attrs["groups"]
        w = n.params["weight"]
        lay = self.input_layout(n, 1)
        if lay is not None and any(r != 1 for _, r in lay):
            self.freeze(lay, f"conv '{n.name}' reads a repeated layout")
            lay = None
        c_in = w.shape[1] * g
        if g == 1:
            if lay is not None:
                self.consumer[n.name] = lay
            return [(self.new(w.shape[0], n.name), 1)]
        if g == c_in == w.shape[0] and lay is not None:
            self.per_neuron[n.name] = lay  # depthwise: output channel c is input channel c
            return lay
        if lay is not None and len(lay) == 1:  # whole conv groups: unit k of the input <-> unit k of the output
            out = self.new(w.shape[0], n.name)
            self.ties.append((n.name, g, lay[0][0], w.shape[1], out, w.shape[0] // g))
            return [(out, 1)]
        self.freeze(lay, f"grouped conv '{n.name}'")
        return [(self.new(w.shape[0], n.name, frozen=f"grouped conv '{n.name}'"), 1)]

    def visit_binary(self, n: Node) -> Layout | None:
        if n.axis is None or n.shape is None:
            for i in n.inputs:
                self.freeze(self.layout.get(i), f"binary '{n.name}' has no neuron axis")
            return None
        lays = []
        for i in n.inputs:
            src = self.graph[i]
            s = src.shape or ()
            k = len(s) - len(n.shape) + n.axis  # broadcast aligns trailing dims
            if k < 0:
                continue
            if s[k] == 1 and n.shape[n.axis] != 1:
                # broadcast along the neuron axis: growing that input would break it
                self.freeze(self.layout.get(i) if src.axis == k else None, f"'{n.name}' broadcasts it")
                continue
            lays.append(self.layout.get(i) if src.axis == k else None)
        return self.unify(lays, f"binary '{n.name}'")

    def resolve_ties(self) -> dict[int, Tie]:
        """Each group in at most one tie, with the same unit on both sides of a self-tie, else
        every group involved is frozen."""
        ties = [(conv, g, self.find(s), su, self.find(d), du) for conv, g, s, su, d, du in self.ties]
        count: dict[int, int] = {}
        for _, _, s, _, d, _ in ties:
            for x in {s, d}:
                count[x] = count.get(x, 0) + 1
        frozen = {self.find(x) for x in self.frozen}
        out: dict[int, Tie] = {}
        for conv, g, s, su, d, du in ties:
            why = ""
            if count[s] > 1 or count[d] > 1:
                why = f"grouped conv '{conv}' shares its groups with another grouped conv"
            elif s == d and su != du:
                why = f"grouped conv '{conv}' feeds its own input with other units"
            elif s in frozen or d in frozen:
                why = f"grouped conv '{conv}' is tied to a frozen group"
            if why:
                for x in (s, d):
                    self.frozen.setdefault(x, why)
                continue
            out[s] = out[d] = Tie(conv, g, s, su, d, du)
        return out

    def run(self) -> GroupInfo:
        for n in self.graph:
            lay = self.visit(n)
            self.layout[n.name] = lay
        ties = self.resolve_ties()
        groups: dict[int, Group] = {}
        for g in self.parent:
            r = self.find(g)
            grp = groups.setdefault(r, Group(r, self.width[r]))
            grp.producers.extend(self.producers[g])
            if g in self.frozen:
                grp.frozen, grp.reason = True, grp.reason or self.frozen[g]
            if g in self.mixing:
                grp.mixing = True
        for r, tie in ties.items():
            groups[r].tie = tie
        norm = lambda lay: None if lay is None else [(self.find(g), r) for g, r in lay]
        layouts = {k: norm(v) for k, v in self.layout.items()}
        for name, lay in layouts.items():
            for g in dict.fromkeys(g for g, _ in lay or []):
                groups[g].values.append(name)
        index: dict[str, Layout] = {}
        for members, attr in ((self.consumer, "consumers"), (self.per_neuron, "per_neuron")):
            for name, lay in members.items():
                index[name] = norm(lay)  # type: ignore[assignment]
                for g in dict.fromkeys(g for g, _ in index[name]):
                    getattr(groups[g], attr).append(name)
        return GroupInfo(groups, layouts, index)


def index_range(n: Node, axis: int | None) -> tuple[int, int] | None:
    """The (start, stop) an ``index`` node takes of its input's neuron ``axis``, or None when it
    takes all of it."""
    if axis is None:
        return None
    item = n.attrs["items"][axis]
    return None if item is None or isinstance(item, int) else (item[0], item[1])


def analyze(graph: Graph) -> GroupInfo:
    """Find every neuron group of ``graph`` (recomputed from scratch; cheap)."""
    return _Analysis(graph).run()
