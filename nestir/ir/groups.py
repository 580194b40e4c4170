"""Neuron-group analysis: which values must keep identical neurons, and where each group's
neurons live in every producer, per-neuron node and consumer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nestir.ir.graph import Graph, Node
from nestir.ir.opdefs import opdef

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
    product: bool = False  # a product of two values reads them (q @ k^T): no neuron is dead for want of a layer
    tie: Tie | None = None  # a grouped conv ties this group to another in units of whole conv groups

    @property
    def resizable(self) -> bool:
        """Neurons may be added or removed one at a time (by every pass)."""
        return not self.frozen and bool(self.producers) and self.tie is None

    @property
    def prunable(self) -> bool:
        """Neurons may be removed: one at a time, or in whole units where a grouped conv ties the
        group (:func:`nestir.ir.edit.remove_units`)."""
        return not self.frozen and bool(self.producers)


@dataclass(frozen=True)
class Tie:
    """A grouped conv ``conv`` with ``groups`` groups reads group ``src`` in units of ``src_unit``
    channels and writes group ``dst`` in units of ``dst_unit``: unit k of one exists only with
    unit k of the other, so both lose whole units together (``src == dst`` for a conv inside
    a residual loop with equal units). ``also``: other grouped convs (or attention nodes) of the
    same tie (parallel branches of one block, as in MobileOne/FastViT). Ties that share a group
    are one tie (FastViT chains grouped convs from stage to stage): ``more`` holds its further
    groups (id, channels per unit), ``per_unit`` the conv groups (heads) per unit of each of
    :attr:`convs` (empty: one each); ``groups`` counts the units, the gcd of the convs' groups."""

    conv: str
    groups: int
    src: int
    src_unit: int
    dst: int
    dst_unit: int
    also: tuple[str, ...] = ()
    more: tuple[tuple[int, int], ...] = ()
    per_unit: tuple[int, ...] = ()

    @property
    def convs(self) -> tuple[str, ...]:
        return (self.conv, *self.also)

    @property
    def sides(self) -> list[tuple[int, int]]:
        """Every group of the tie with its channels per unit."""
        first = [(self.src, self.src_unit)] + ([(self.dst, self.dst_unit)] if self.dst != self.src else [])
        return first + list(self.more)

    def multiples(self) -> tuple[int, ...]:
        """Conv groups (heads) per unit of each of :attr:`convs`."""
        return self.per_unit or (1,) * len(self.convs)


@dataclass
class GroupInfo:
    groups: dict[int, Group]
    layouts: dict[str, Layout | None]
    consumer_layouts: dict[str, Layout]  # consumers and per-neuron nodes: layout of their input axis
    heads: dict[str, tuple[int, int]] = field(default_factory=dict)  # head-space value: (group, head axis)

    def of(self, node: str) -> Group | None:
        """The group of a node's output value when it is a single group."""
        lay = self.layouts.get(node)
        if not lay or len({g for g, _ in lay}) != 1:
            return None
        return self.groups[lay[0][0]]

    def produced(self, node: str) -> Group | None:
        """The group whose neurons are a parametric node's output channels: it produces them, or
        holds one entry each (a depthwise conv). None: its rows are no neurons (a linear that
        mixes token positions)."""
        g = self.of(node)
        return g if g is not None and (node in g.producers or node in g.per_neuron) else None

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
        self.product: set[int] = set()
        self.ties: list[tuple[str, int, int, int, int, int]] = []  # conv, groups, src, src unit, dst, dst unit
        self.heads: dict[str, tuple[int, int]] = {}  # value in head space: (group, axis of its heads)
        self._users: dict[str, list[Node]] | None = None

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

    def channelwise(self, node: Node, along: int | None) -> Layout | None:
        """A node with one entry per neuron of its input (read along ``along``, None: any axis):
        registered as per-neuron; a repeated layout freezes."""
        lay = self.input_layout(node, along)
        if lay is None:
            return None
        if any(r != 1 for _, r in lay):
            self.freeze(lay, f"'{node.name}' reads a repeated layout")
            return None
        self.per_neuron[node.name] = lay
        return lay

    def visit(self, n: Node) -> Layout | None:
        """What ``n`` does to neurons: its op definition says (:meth:`nestir.ir.opdefs.OpDef.neurons`;
        for inputs in head space :meth:`~nestir.ir.opdefs.OpDef.head_flow`, and where it cannot
        follow the heads, their groups freeze)."""
        d = opdef(n.op)
        if any(i in self.heads for i in n.inputs):
            ok, lay = d.head_flow(self, n)
            if ok:
                return lay
            for i in n.inputs:
                if i in self.heads:
                    self.freeze_heads(i, f"{n.op} '{n.name}' reads attention heads in a way nestir cannot follow")
        return d.neurons(self, n)

    def users(self, value: str) -> list[Node]:
        if self._users is None:
            self._users = self.graph.user_map()
        return self._users.get(value, [])

    # -- head space: a group's neurons split into (heads, per-head) dims, as attention reads them ---
    def freeze_heads(self, value: str, why: str) -> None:
        self.frozen.setdefault(self.find(self.heads[value][0]), why)

    def tie_heads(self, node: str, a: int, b: int, heads: int) -> bool:
        """Groups ``a`` and ``b`` lose and gain whole heads together (``heads`` of each)."""
        wa, wb = self.width[self.find(a)], self.width[self.find(b)]
        if heads < 1 or wa % heads or wb % heads:
            self.frozen.setdefault(self.find(a), f"'{node}' splits it in {heads} heads")
            self.frozen.setdefault(self.find(b), f"'{node}' splits it in {heads} heads")
            return False
        self.ties.append((node, heads, a, wa // heads, b, wb // heads))
        return True

    def resolve_ties(self) -> dict[int, Tie]:
        """The ties of grouped convs and attention nodes, one per set of groups they connect:
        ties sharing a group join (parallel convs with the same tie; FastViT's grouped convs
        chained from stage to stage), with ``units`` the gcd of their group counts, so that unit
        k is the k-th of ``units`` equal contiguous ranges of every group and each conv loses
        whole conv groups. Ties touching a frozen group freeze every group they connect."""
        merged: dict[tuple[int, int, int, int, int], list[str]] = {}
        for conv, g, s, su, d, du in self.ties:  # parallel grouped convs with the same tie: one tie
            merged.setdefault((g, self.find(s), su, self.find(d), du), []).append(conv)
        comp: dict[int, int] = {}

        def root(x: int) -> int:
            while comp.setdefault(x, x) != x:
                x = comp[x]
            return x

        for _, s, _, d, _ in merged:
            comp[root(s)] = root(d)
        parts: dict[int, list[tuple[int, int, int, int, int]]] = {}
        for key in merged:
            parts.setdefault(root(key[1]), []).append(key)
        frozen = {self.find(x) for x in self.frozen}
        out: dict[int, Tie] = {}
        for keys in parts.values():
            convs = [c for k in keys for c in merged[k]]
            gids = list(dict.fromkeys(x for _, s, _, d, _ in keys for x in (s, d)))
            units = math.gcd(*(k[0] for k in keys))
            why = ""
            if any(s == d and su != du for _, s, su, d, du in keys):
                why = f"grouped conv '{convs[0]}' feeds its own input with other units"
            elif any(x in frozen for x in gids):
                why = f"grouped conv '{convs[0]}' is tied to a frozen group"
            elif units < 2 and len({k[0] for k in keys}) > 1:
                why = f"grouped convs '{convs[0]}' and others split their groups in units with no common count"
            if why:
                for x in gids:
                    self.frozen.setdefault(x, why)
                continue
            _, s, _, d, _ = keys[0]
            tie = Tie(convs[0], units, s, self.width[s] // units, d, self.width[d] // units, tuple(convs[1:]),
                      tuple((x, self.width[x] // units) for x in gids if x not in (s, d)),
                      tuple(k[0] // units for k in keys for _ in merged[k]) if len(keys) > 1 else ())
            for x in gids:
                out[x] = tie
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
            if g in self.product:
                grp.product = True
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
        heads = {k: (self.find(g), h) for k, (g, h) in self.heads.items()}
        return GroupInfo(groups, layouts, index, heads)


def analyze(graph: Graph) -> GroupInfo:
    """Find every neuron group of ``graph`` (recomputed from scratch; cheap)."""
    return _Analysis(graph).run()
