"""End-of-build rewrites of the IR the builder made: a producer whose output channels are read in
ranges (slices, pieces of ``split``; add/mul sides grouped differently) is cut into one producer
per range joined by a ``cat``, so that each range is a neuron group that resizes alone; and the
helpers the builder uses to read those pieces and the model's outputs."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import torch
import torch.fx as fx

from nestir.ir.errors import TraceError
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Fx, Op

if TYPE_CHECKING:
    from nestir.frontend.values import _Values as _Builder


def _cut_producers(graph: Graph) -> None:
    """Where a channel range (a slice, a piece of ``split``) cuts a neuron group with a single
    linear/conv producer, split that producer's rows into pieces joined by a ``cat`` under its
    name: the same function, and each piece becomes a group of its own that resizes alone
    (CSPNet's and DPN's splits, GhostNet's and ReXNet's slices). The same where an add or mul
    meets groups split differently on its two sides (:func:`_align_cuts`)."""
    from nestir.ir.groups import analyze
    from nestir.ir.opdefs import index_range

    for _ in range(8):
        info = analyze(graph)
        cuts: dict[str, set[int]] = {}
        for n in graph:
            src = graph[n.inputs[0]] if n.op == Op.INDEX else None
            cut = index_range(n, src.axis) if src is not None else None
            lay = info.layouts.get(src.name) if src is not None else None
            if cut is None or lay is None:
                continue
            off = 0
            for g, r in lay:
                grp = info.groups[g]
                w = grp.width * r
                inner = {c - off for c in cut if off < c < off + w}
                for prod in _cuttable(graph, grp, inner) if r == 1 else []:
                    cuts.setdefault(prod.name, set()).update(inner)
                off += w
        for n in graph:
            if n.op == Op.BINARY and len(n.inputs) == 2:
                _align_cuts(graph, info, n, cuts)
        if not cuts:
            return
        for name, offsets in cuts.items():
            _cut(graph, name, sorted(offsets))


def _take_pieces(graph: Graph) -> None:
    """An ``index`` that takes exactly one input of a ``cat`` (a piece of a cut producer, such as
    q of a fused qkv layer) is that input: consumers read the piece itself, so that no value
    holds the groups of q, k and v at once (their heads are tied; see :mod:`nestir.ir.opdefs.heads`)."""
    alias: dict[str, str] = {}
    for n in graph:
        src = graph[n.inputs[0]] if n.op == Op.INDEX else None
        if src is None or src.op != Op.CAT:
            continue
        d, items = src.attrs["dim"], n.attrs["items"]
        cut = items[d] if d < len(items) else None
        others = [it for i, it in enumerate(items) if i != d]
        if not isinstance(cut, (list, tuple)) or cut[2] != 1 or any(it is not None for it in others):
            continue
        off = 0
        for i in src.inputs:
            w = (graph[i].shape or ())[d]
            if (off, off + w) == (cut[0], cut[1]) and graph[i].shape == n.shape and graph[i].axis == n.axis:
                alias[n.name] = i
            off += w
    if not alias:
        return
    for n in graph:
        n.inputs = [alias.get(i, i) for i in n.inputs]
    for name in alias:
        del graph.nodes[name]
    graph.drop_unused()


def _cuttable(graph: Graph, grp: Any, offsets: set[int]) -> list[Node]:
    """The linear/conv producers of a neuron group when every one of them can have its rows cut
    into pieces at ``offsets`` (none reads the group itself; a grouped conv only between its
    conv groups, each piece then reading its own range of the input), else []."""
    prods = [graph[p] for p in grp.producers]

    def ok(p: Node) -> bool:
        if p.name in grp.consumers or p.op not in (Op.LINEAR, Op.CONV):
            return False
        g = p.attrs.get("groups", 1) if p.op == Op.CONV else 1
        per = p.params["weight"].shape[0] // g
        return g == 1 or ("area" not in p.params and all(o % per == 0 for o in offsets))

    return prods if prods and offsets and all(ok(p) for p in prods) else []


def _align_cuts(graph: Graph, info: Any, n: Node, cuts: dict[str, set[int]]) -> None:
    """An add or mul of two values whose neuron groups split the channels differently (MixNet's and
    GhostNet's cat of pieces times a squeeze-and-excitation gate, or plus a shortcut conv): cut
    the single producers on either side at the other side's boundaries, so that the groups line
    up piece by piece instead of freezing."""
    lays = [info.layouts.get(i) for i in n.inputs]
    srcs = [graph[i] for i in n.inputs]
    if any(lay is None or any(r != 1 for _, r in lay) for lay in lays) or any(
            s.axis is None or s.shape is None or n.shape is None or len(s.shape) != len(n.shape)
            or s.axis != n.axis or s.shape[s.axis] != n.shape[n.axis] for s in srcs):
        return
    bounds: list[set[int]] = []
    for lay in lays:
        off, b = 0, set()
        for g, _ in lay:  # type: ignore[union-attr]
            off += info.groups[g].width
            b.add(off)
        bounds.append(b)
    if bounds[0] == bounds[1]:
        return
    every = bounds[0] | bounds[1]
    for lay in lays:
        off = 0
        for g, _ in lay:  # type: ignore[union-attr]
            w = info.groups[g].width
            inner = {c - off for c in every if off < c < off + w}
            for prod in _cuttable(graph, info.groups[g], inner):
                cuts.setdefault(prod.name, set()).update(inner)
            off += w


def _cut(graph: Graph, name: str, offsets: list[int]) -> None:
    p = graph[name]
    bounds = [0, *offsets, p.params["weight"].shape[0]]
    groups = p.attrs.get("groups", 1) if p.op == Op.CONV else 1
    per, width = p.params["weight"].shape[0] // groups, p.params["weight"].shape[1]  # a conv group's rows, columns
    pieces: list[Node] = []
    taken: set[str] = set()

    def fresh(base: str) -> str:
        taken.add(name_ := graph.fresh_name(base, taken))
        return name_

    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        piece = fresh(f"{name}__{k}")
        params = {key: (t[:, a:b] if key == "area" else t[a:b]).clone() for key, t in p.params.items()}
        shape = list(p.shape or ())
        shape[p.axis] = b - a  # type: ignore[index]
        inputs, attrs = list(p.inputs), dict(p.attrs)
        if groups > 1:  # conv groups a/per .. b/per read input channels a/per*width .. b/per*width
            src = graph[p.inputs[0]]
            items: list[Any] = [None] * len(src.shape or ())
            items[1] = (a // per * width, b // per * width, 1)
            in_shape = list(src.shape or ())
            in_shape[1] = (b - a) // per * width
            sl = Node(fresh(f"{piece}_in"), "index", [src.name], {"items": items}, {}, tuple(in_shape), src.axis,
                      p.source)
            pieces.append(sl)
            inputs, attrs["groups"] = [sl.name], (b - a) // per
        pieces.append(Node(piece, p.op, inputs, attrs, params, tuple(shape), p.axis, p.source))
    joined = Node(name, "cat", [q.name for q in pieces if q.op != Op.INDEX], {"dim": p.axis}, {}, p.shape, p.axis,
                  p.source)
    nodes = list(graph.nodes.values())
    graph.nodes = {}
    for n in nodes:
        for new in (pieces + [joined] if n.name == name else [n]):
            graph.nodes[new.name] = new


def _takes_piece(u: fx.Node) -> bool:
    """``u`` takes pieces along dim 0: ``unbind(0)`` or ``[k]``."""
    if u.op == Fx.CALL_FUNCTION and u.target is operator.getitem:
        return len(u.args) == 2 and isinstance(u.args[1], int)
    unbind = ((u.op == Fx.CALL_METHOD and u.target == "unbind")
              or (u.op == Fx.CALL_FUNCTION and u.target is torch.unbind))
    return unbind and (u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)) == 0


def _holds_tensor(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) or _holds_tensor(t) for t in v)


def _output_refs(b: _Builder, arg: Any) -> tuple[list[str], str]:
    if isinstance(arg, (tuple, list)):
        refs = [b.ref(a) for a in arg]
        if all(r is not None for r in refs):
            return refs, "tuple"  # type: ignore[return-value]
        raise TraceError("model output must be a tensor or a tuple of tensors")
    r = b.ref(arg)
    if r is None:
        raise TraceError("model output must be a tensor or a tuple of tensors")
    return [r], "single"

