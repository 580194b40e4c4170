"""Dead-neuron analysis and elimination: the compiler's DCE, exactly function-preserving."""

from __future__ import annotations

import math

import torch

from nestir.ir.edit import remove_neurons
from nestir.ir.graph import Graph, Node
from nestir.ir.groups import Group, GroupInfo, analyze
from nestir.ir.kinds import Op


def _out_dead(graph: Graph, info: GroupInfo, grp: Group) -> torch.Tensor:
    """Neurons none of whose consumer columns is live."""
    used = torch.zeros(grp.width, dtype=torch.bool)
    for name in grp.consumers:
        node = graph[name]
        mask = node.params["mask"]
        live = mask.flatten(2).any(2) if mask.dim() > 2 else mask  # (out, in)
        col_live = live.any(0)
        if "area" in node.params:
            col_live = col_live & node.params["area"].flatten(1).any(1).to(col_live.device)
        for off, r, w in info.columns(name, grp.id):
            used |= col_live[off: off + w * r].view(w, r).any(1).cpu()
    return ~used


def _in_dead(graph: Graph, grp: Group) -> torch.Tensor:
    """Neurons with no live input connection in any producer (their value is a constant)."""
    dead = torch.ones(grp.width, dtype=torch.bool)
    for name in grp.producers:
        m = graph[name].params["mask"]
        dead &= ~m.flatten(1).any(1).cpu()
    return dead


def _consumer_inputs(graph: Graph, names: list[str]) -> dict[str, torch.Tensor]:
    from nestir.ir.interpreter import IRModule

    shapes = [tuple(n.shape or ()) for n in graph.inputs]
    probe = graph.copy()
    mod = IRModule(probe).eval()
    srcs = {c: probe[c].inputs[0] for c in names}
    cap = mod.start_capture(srcs.values())
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn((2, *s[1:]), generator=gen).to(probe.device) for s in shapes]
    with torch.no_grad():
        mod(*xs)
    return {c: cap.value_tensors[s] for c, s in srcs.items()}


def _fold(graph: Graph, info: GroupInfo, grp: Group, idx: list[int], staged: dict) -> list[int]:
    """Fold the constant outputs of neurons ``idx`` into each consumer's bias; returns the
    neurons that could be folded exactly everywhere."""
    values = _consumer_inputs(graph, grp.consumers)
    ok = []
    for k in idx:
        adds: list[tuple[str, torch.Tensor]] = []
        for name in grp.consumers:
            node, x = graph[name], values[name]
            w = node.params["weight"] * node.params["mask"]
            for off, r, _ in info.columns(name, grp.id):
                cols = slice(off + k * r, off + (k + 1) * r)
                if node.op == Op.LINEAR:
                    v = x[..., cols]
                    c = v.reshape(-1, r)[0]
                    if not torch.allclose(v.reshape(-1, r), c.expand_as(v.reshape(-1, r)), atol=0, rtol=1e-6):
                        break
                    adds.append((name, w[:, cols] @ c))
                else:
                    v = x[:, cols]
                    c = v.flatten()[0]
                    pad_free = all(p == 0 for p in node.attrs["padding"]) and "area" not in node.params
                    if not pad_free or not torch.allclose(v, c.expand_as(v), atol=0, rtol=1e-6):
                        break
                    adds.append((name, c * w[:, cols].flatten(1).sum(1)))
            else:
                continue
            break
        else:
            ok.append(k)
            for name, delta in adds:
                b = staged.get(name)
                if b is None:
                    b = graph[name].params.get("bias")
                    b = torch.zeros_like(delta) if b is None else b.clone()
                staged[name] = b + delta
    return ok


@torch.no_grad()
def eliminate_dead_neurons(graph: Graph, *, fold_constants: bool = True) -> bool:
    """Remove neurons with no live output, and (``fold_constants``) neurons with no live input
    after folding their constant output into the consumers' biases. Groups normalized by a
    LayerNorm are left alone (removing a neuron there changes the normalization). Repeats until
    nothing changes; returns whether anything was removed."""
    changed = False
    while True:
        info = analyze(graph)
        removed = False
        for grp in list(info.groups.values()):
            if not grp.resizable or grp.mixing or grp.product or grp.width <= 1:
                continue
            dead = _out_dead(graph, info, grp)
            const = _in_dead(graph, grp) & ~dead
            idx = dead.nonzero().flatten().tolist()
            if fold_constants and bool(const.any()):
                staged: dict[str, torch.Tensor] = {}
                folded = _fold(graph, info, grp, const.nonzero().flatten().tolist(), staged)
                if folded and len(idx) + len(folded) < grp.width:
                    for name, b in staged.items():
                        graph[name].params["bias"] = b
                    idx += folded
            if idx and len(idx) >= grp.width:
                idx = idx[: grp.width - 1]
            if idx:
                remove_neurons(graph, grp.id, idx, info=info)
                removed = changed = True
                break  # group ids change after an edit: analyze again
        if not removed:
            return changed


def _insert_before(graph: Graph, anchor: str, *new: Node) -> None:
    nodes = list(graph.nodes.values())
    graph.nodes = {}
    for m in nodes:
        if m.name == anchor:
            for x in new:
                graph.add(x)
        graph.add(m)


def _crop(graph: Graph, n: Node, live: torch.Tensor) -> bool:
    """Linear after a flatten of (N, C, *spatial): read only the bounding box of the live
    positions (a Slice is nearly free in onnxruntime, unlike a Gather)."""
    flat = graph[n.inputs[0]]
    if flat.op != Op.FLATTEN:
        return False
    src = graph[flat.inputs[0]]
    spatial = tuple((src.shape or ())[2:])
    if len(spatial) not in (1, 2):
        return False
    cube = live.view(-1, *spatial).any(0)
    starts, ends = [], []
    for d in range(len(spatial)):
        other = tuple(i for i in range(len(spatial)) if i != d)
        hit = (cube.any(other[0]) if other else cube).nonzero().flatten()
        starts.append(int(hit[0]))
        ends.append(int(hit[-1]) + 1)
    if all(s == 0 and e == full for s, e, full in zip(starts, ends, spatial, strict=True)):
        return False
    dims = list(range(2, 2 + len(spatial)))
    c = src.shape[1]  # type: ignore[index]
    box = tuple(e - s for s, e in zip(starts, ends, strict=True))
    sl = Node(graph.fresh_name(f"{n.name}_crop"), "slice", [src.name], {"dims": dims, "starts": starts, "ends": ends},
              {}, (src.shape[0], c, *box), None, "nestir: dead input positions")  # type: ignore[index]
    fl = Node(graph.fresh_name(f"{n.name}_crop_flat"), "flatten", [sl.name], {}, {}, (src.shape[0], c * math.prod(box)),
              None, "nestir: dead input positions")  # type: ignore[index]
    _insert_before(graph, n.name, sl, fl)
    grid = torch.arange(live.numel()).view(c, *spatial)
    for d, s, e in zip(dims, starts, ends, strict=True):
        grid = grid.narrow(d - 1, s, e - s)
    idx = grid.reshape(-1)
    n.inputs = [fl.name]
    for key in ("weight", "mask"):
        n.params[key] = n.params[key].index_select(1, idx.to(n.params[key].device))
    return True


@torch.no_grad()
def narrow_dead_inputs(graph: Graph, min_gather: float = 0.9) -> bool:
    """For lowering: a linear layer whose input has columns no live connection reads (and that DCE
    could not remove, e.g. pixels of the model's input) is made physically narrower, exactly
    preserving the function. After a flatten of an image it reads only the bounding box of the
    live positions (a crop); otherwise it gathers the live columns, but only when at least
    ``min_gather`` of them are dead (onnxruntime's Gather costs about as much as it saves below
    that; measured in benchmarks/latency.py)."""
    changed = False
    for n in list(graph.parametric()):
        if n.op != Op.LINEAR:
            continue
        live = n.params["mask"].any(0).cpu()
        dead = int((~live).sum())
        if dead == 0 or dead == live.numel():
            continue
        if _crop(graph, n, live):
            changed = True
            live = n.params["mask"].any(0).cpu()
            dead = int((~live).sum())
        if dead < min_gather * live.numel():
            continue
        idx = live.nonzero().flatten()
        src = graph[n.inputs[0]]
        shape = (*(src.shape or ())[:-1], idx.numel())
        g = Node(graph.fresh_name(f"{n.name}_live_inputs"), "gather", [src.name], {"dim": len(shape) - 1},
                 {"index": idx.to(n.params["weight"].device)}, shape, None, "nestir: dead input columns")
        _insert_before(graph, n.name, g)
        n.inputs = [g.name]
        for key in ("weight", "mask"):
            n.params[key] = n.params[key].index_select(1, idx.to(n.params[key].device))
        changed = True
    graph.drop_unused()
    return changed


def fuse_pieces(graph: Graph) -> bool:
    """Undo the frontend's producer cuts for lowering: a ``cat`` along the neuron axis whose inputs
    are convs (or linears) that read the same value with the same attributes, and that nothing
    else reads, becomes one layer with the pieces' rows stacked (same function, one kernel launch
    instead of several plus a copy). Returns whether anything changed."""
    users = graph.user_map()
    changed = False
    for c in list(graph):
        if c.op != Op.CAT or c.name not in graph.nodes:
            continue
        ps = [graph[i] for i in c.inputs]
        first = ps[0]
        if len(ps) < 2 or first.op not in (Op.CONV, Op.LINEAR) or c.attrs["dim"] != first.axis:
            continue
        if len({p.name for p in ps}) != len(ps) or any(
                p.op != first.op or p.inputs != first.inputs or p.attrs != first.attrs or p.axis != first.axis
                or set(p.params) != set(first.params) or "area" in p.params
                or [u.name for u in users.get(p.name, [])] != [c.name] for p in ps):
            continue
        if first.op == Op.CONV and first.attrs.get("groups", 1) != 1:
            continue
        params = {k: torch.cat([p.params[k] for p in ps], 0) for k in first.params}
        merged = Node(c.name, first.op, list(first.inputs), dict(first.attrs), params, c.shape, c.axis, c.source)
        nodes = [n for n in graph.nodes.values() if n.name not in {p.name for p in ps}]
        graph.nodes = {n.name: (merged if n.name == c.name else n) for n in nodes}
        users = graph.user_map()
        changed = True
    return changed
