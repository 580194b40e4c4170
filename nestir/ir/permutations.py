"""Channel permutations folded into the layers that read them (ShuffleNet's channel shuffle).

A channel shuffle (``view(B, g, C/g, H, W)``, ``transpose(1, 2)``, ``view(B, C, H, W)``) moves
channels, so no neuron group survives it as a range: everything it touches would freeze. But a
permutation costs nothing once a layer that mixes channels reads it, because that layer can read
its input columns in another order. So the frontend:

1. replaces a chain of reshapes and permutes that only moves channels (checked on probe tensors,
   never assumed from the pattern) by a ``gather`` of the channels, and
2. pushes each ``gather`` towards the layers that read it: a channel range of a gather is a
   narrower gather; a gather of only some channels becomes channel ranges joined by a ``cat``
   (ranges are what neuron groups understand: they cut producers where needed) followed by a
   gather that only reorders; a reordering gather moves past ``cat`` (after the join), past
   per-channel layers (batch norm, activations, depthwise convs: their per-channel params are
   reordered instead) and into convs and linears, which take the order into their weight columns.

What cannot be pushed stays a ``gather`` and freezes what it reads, as before.
"""

from __future__ import annotations

import math

import torch

from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Op
from nestir.ir.opdefs import opdef


def fold_permutations(graph: Graph) -> None:
    """Rewrite ``graph`` in place: channel-only reshape/permute chains become gathers, and the
    gathers are pushed into the layers that read them (see the module docstring)."""
    changed = _find_shuffles(graph)
    if not changed:
        return
    for _ in range(100_000):  # each round removes one read of a gather or moves one further down
        if not _push_one(graph):
            break
    graph.drop_unused()


# -- 1. find channel permutations -------------------------------------------------------------
def _find_shuffles(graph: Graph) -> bool:
    found = False
    while _replace_one_shuffle(graph):
        found = True
        graph.drop_unused()
        _refresh_axes(graph)  # what follows a shuffle had no neuron axis until now
    return found


def _replace_one_shuffle(graph: Graph) -> bool:
    users = graph.user_map()
    for x in list(graph):
        if x.axis is None or x.shape is None or x.axis == 0:
            continue
        for first in users.get(x.name, []):
            if first.op != Op.RESHAPE or "keep" in first.attrs:
                continue
            chain, n = [first], first
            while tuple(n.shape or ()) != tuple(x.shape):
                nxt = users.get(n.name, [])
                if len(nxt) != 1 or not opdef(nxt[0].op).layout_only or len(nxt[0].inputs) != 1:
                    break
                n = nxt[0]
                chain.append(n)
            if len(chain) < 2 or tuple(chain[-1].shape or ()) != tuple(x.shape):
                continue
            perm = _channel_permutation(chain, x)
            if perm is None:
                continue
            last = chain[-1]
            graph.nodes[last.name] = Node(last.name, "gather", [x.name], {"dim": x.axis}, {"index": perm},
                                          tuple(x.shape), x.axis, last.source)
            return True
    return False


def _refresh_axes(graph: Graph) -> None:
    for n in graph:
        if n.shape is None or len(n.shape) < 2 or n.op in (Op.INPUT, Op.OUTPUT, Op.CONST):
            continue
        try:
            n.axis = opdef(n.op).axis(n, [graph[i] for i in n.inputs], torch.empty(n.shape, device="meta"))
        except Exception:  # an op whose axis rule needs real values keeps the axis it was traced with
            continue


def _channel_permutation(chain: list[Node], x: Node) -> torch.Tensor | None:
    """The permutation ``perm`` with out[:, j] = in[:, perm[j]] when ``chain`` only moves channels
    along ``x``'s neuron axis (every position stays where it is), else None."""
    shape, a = tuple(x.shape or ()), x.axis
    assert a is not None
    c = shape[a]
    view = [1] * len(shape)
    view[a] = c
    chan = torch.arange(c, dtype=torch.float64).reshape(view).expand(shape).contiguous()
    flat = list(shape)
    flat[a] = 1
    other = torch.arange(math.prod(flat), dtype=torch.float64).reshape(flat).expand(shape).contiguous()
    outs = []
    for probe in (chan, other):
        v = probe
        try:
            for n in chain:
                v = opdef(n.op).evaluate(n, [v], n.params, False)
        except Exception:
            return None
        if tuple(v.shape) != shape:
            return None
        outs.append(v)
    if not torch.equal(outs[1], other):  # positions other than the channel moved
        return None
    perm = outs[0].movedim(a, 0).reshape(c, -1)
    if not bool((perm == perm[:, :1]).all()):
        return None
    idx = perm[:, 0].long()
    if sorted(idx.tolist()) != list(range(c)) or torch.equal(idx, torch.arange(c)):
        return None
    return idx


# -- 2. push gathers down -----------------------------------------------------------------------
def _push_one(graph: Graph) -> bool:
    users = graph.user_map()
    for g in list(graph):
        if g.op != Op.GATHER:
            continue
        for u in users.get(g.name, []):
            if _push_into(graph, g, u):
                graph.drop_unused()
                return True
    return False


def _inverse(perm: torch.Tensor) -> torch.Tensor:
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel())
    return inv


def _is_permutation(idx: torch.Tensor, width: int) -> bool:
    return idx.numel() == width and sorted(idx.tolist()) == list(range(width))


def _push_into(graph: Graph, g: Node, u: Node) -> bool:
    src = graph[g.inputs[0]]
    dim, idx = g.attrs["dim"], g.params["index"]
    if src.shape is None or src.axis != dim:
        return False
    width = src.shape[dim]
    if u.op == Op.INDEX and u.inputs == [g.name]:  # a range of a gather: a narrower gather
        items = u.attrs["items"]
        rng = items[dim] if dim < len(items) else None
        if any(i is not None for k, i in enumerate(items) if k != dim):
            return False
        if rng is None:
            sel = idx
        elif isinstance(rng, (list, tuple)) and rng[2] == 1:
            sel = idx[rng[0]:rng[1]]
        else:
            return False
        _replace(graph, u, Node(u.name, "gather", [src.name], {"dim": dim}, {"index": sel.clone()},
                                u.shape, u.axis, u.source))
        return True
    if u.op == Op.GATHER and u.inputs == [g.name] and u.attrs["dim"] == dim:  # composed
        _replace(graph, u, Node(u.name, "gather", [src.name], {"dim": dim}, {"index": idx[u.params["index"]]},
                                u.shape, u.axis, u.source))
        return True
    if idx.unique().numel() != idx.numel():
        return False  # a channel read twice: left as it is
    if not _is_permutation(idx, width):
        _as_ranges(graph, g, src)
        return True
    if torch.equal(idx, torch.arange(width)):  # nothing moves: readers read the source
        for n in graph:
            n.inputs = [src.name if i == g.name else i for i in n.inputs]
        return True
    if u.op == Op.CAT and u.attrs["dim"] == dim and u.axis == dim:
        ins, index, off = [], [], 0
        for i in u.inputs:
            n = graph[i]
            k = n.shape[dim]  # type: ignore[index]
            if n.op == Op.GATHER and n.attrs["dim"] == dim and graph[n.inputs[0]].shape[dim] == k \
                    and _is_permutation(n.params["index"], k):  # type: ignore[index]
                ins.append(n.inputs[0])
                index.append(n.params["index"] + off)
            else:
                ins.append(i)
                index.append(torch.arange(k) + off)
            off += k
        joined = Node(u.name, "cat", ins, dict(u.attrs), {}, u.shape, u.axis, u.source)
        after = Node(graph.fresh_name(u.name + "_order"), "gather", [u.name], {"dim": dim},
                     {"index": torch.cat(index)}, u.shape, u.axis, u.source)
        _replace_and_follow(graph, u, joined, after)
        return True
    if u.inputs == [g.name] and u.axis == dim and (
            opdef(u.op).per_channel or (u.op == Op.CONV and u.attrs["groups"] == width == u.shape[dim])):  # type: ignore[index]
        if "area" in u.params:
            return False
        inv = _inverse(idx)
        params = {k: (t.index_select(0, inv) if t.dim() >= 1 and t.shape[0] == width else t.clone())
                  for k, t in u.params.items()}
        moved = Node(u.name, u.op, [src.name], dict(u.attrs), params, u.shape, u.axis, u.source)
        after = Node(graph.fresh_name(u.name + "_order"), "gather", [u.name], {"dim": dim}, {"index": idx.clone()},
                     u.shape, u.axis, u.source)
        _replace_and_follow(graph, u, moved, after)
        return True
    reads = (u.is_plain_conv and dim == 1) or (
        u.op == Op.LINEAR and dim == len(src.shape) - 1)
    if reads and u.inputs == [g.name] and "area" not in u.params:  # the columns take the order
        inv = _inverse(idx)
        params = {k: (t.index_select(1, inv) if k in ("weight", "mask") else t.clone()) for k, t in u.params.items()}
        _replace(graph, u, Node(u.name, u.op, [src.name], dict(u.attrs), params, u.shape, u.axis, u.source))
        return True
    return False


def _as_ranges(graph: Graph, g: Node, src: Node) -> None:
    """A gather of some of ``src``'s channels becomes channel ranges of ``src`` joined by a cat
    (ranges are what neuron groups understand; they cut producers where needed), followed by a
    gather that only puts them in order."""
    dim, idx = g.attrs["dim"], g.params["index"]
    chosen = sorted(idx.tolist())
    runs: list[tuple[int, int]] = []
    for c in chosen:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0], c + 1)
        else:
            runs.append((c, c + 1))
    shape = tuple(src.shape or ())
    pieces: list[Node] = []
    taken: set[str] = set()

    def fresh(base: str) -> str:
        taken.add(name := graph.fresh_name(base, taken))
        return name

    for a, b in runs:
        items: list = [None] * len(shape)
        items[dim] = (a, b, 1)
        sh = list(shape)
        sh[dim] = b - a
        pieces.append(Node(fresh(g.name + "_range"), "index", [src.name], {"items": items}, {},
                           tuple(sh), dim, g.source))
    pos = {c: k for k, c in enumerate(chosen)}
    order = torch.tensor([pos[c] for c in idx.tolist()])
    joined = Node(fresh(g.name + "_ranges"), "cat", [p.name for p in pieces], {"dim": dim}, {},
                  g.shape, dim, g.source) if len(pieces) > 1 else None
    last = joined or pieces[0]
    nodes = list(graph.nodes.values())
    graph.nodes = {}
    for n in nodes:
        if n.name == g.name:
            for p in [*pieces, *([joined] if joined else [])]:
                graph.nodes[p.name] = p
            graph.nodes[g.name] = Node(g.name, "gather", [last.name], {"dim": dim}, {"index": order},
                                       g.shape, dim, g.source)
            continue
        graph.nodes[n.name] = n


def _replace(graph: Graph, old: Node, new: Node) -> None:
    graph.nodes[old.name] = new


def _replace_and_follow(graph: Graph, old: Node, new: Node, after: Node) -> None:
    """``new`` takes ``old``'s place and name; ``after`` (reading it) follows right behind, and
    every other reader of ``old`` reads ``after`` instead."""
    nodes = list(graph.nodes.values())
    graph.nodes = {}
    for n in nodes:
        if n.name == old.name:
            graph.nodes[new.name] = new
            graph.nodes[after.name] = after
            continue
        if old.name in n.inputs:
            n.inputs = [after.name if i == old.name else i for i in n.inputs]
        graph.nodes[n.name] = n
