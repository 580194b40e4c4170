"""Size and cost of a graph or module: live parameters, FLOPs, and a per-layer table."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from nestir.ir.errors import ArgumentError
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Op
from nestir.ir.opdefs import opdef


def _positions(n: Node) -> float | torch.Tensor:
    """Multiply-accumulates per sample of one weight entry: a number for a linear layer or a plain
    conv, an (out, in) tensor of live positions for a partial-area conv."""
    return opdef(n.op).positions(n)


def weight_macs(n: Node) -> torch.Tensor:
    """Multiply-accumulates per sample of each weight entry of a parametric node, shaped like its
    mask (whether live or not; a broadcast view, nothing is copied): output positions for a conv
    (its live area positions where a partial-area mask is set), the leading non-batch positions
    for a linear layer."""
    mask = n.params["mask"]
    pos = _positions(n)
    if isinstance(pos, torch.Tensor):
        return pos.view(*pos.shape, *([1] * (mask.dim() - 2))).expand(mask.shape)
    return torch.tensor(pos, dtype=torch.float64, device=mask.device).expand(mask.shape)


def _flops(n: Node, mask: torch.Tensor, rows: torch.Tensor | None = None,
           cols: torch.Tensor | None = None) -> int:
    """2 x live multiply-accumulates per sample of ``mask``: a parametric node's mask, or only its
    live ``rows`` and ``cols`` of it (partial areas counted)."""
    pos = _positions(n)
    if isinstance(pos, torch.Tensor):  # live kernel taps of each (out, in) pair x its live positions
        if rows is not None:
            pos = pos[rows.to(pos.device)]
        if cols is not None:
            pos = pos[:, cols.to(pos.device)]
        return 2 * round(float((mask.flatten(2).sum(2).double() * pos).sum()))
    return 2 * int(mask.sum()) * round(pos)


def layer_flops(n: Node) -> int:
    """2 x live multiply-accumulates per sample of a parametric node (partial areas counted)."""
    return _flops(n, n.params["mask"])


class _Live:
    """Which neurons are live: a neuron none of whose consumer columns is live (in a consumer row
    that is itself live) does not change the output, and ``eliminate-dead-neurons`` removes it.
    Computed as a fixpoint over the neuron groups from the masks alone (nothing is copied,
    nothing runs), for the groups that pass may shrink (resizable, not normalized by a LayerNorm,
    more than one neuron; it keeps the last neuron of a group whose neurons are all dead).
    Neurons with no live input are counted: ``eliminate-dead-neurons`` folds their constant
    output into the next layer's bias when that is exact, which takes evaluating the graph."""

    def __init__(self, graph: Graph) -> None:
        self.graph, self.info = graph, graph.groups()
        self.owners = {m for g in self.info.groups.values() for m in (*g.producers, *g.per_neuron)}
        self.alive = {g.id: torch.ones(g.width, dtype=torch.bool) for g in self.info.groups.values()
                      if g.resizable and not g.mixing and not g.product and g.width > 1}
        changed = True
        while changed:
            changed = False
            for gid, a in self.alive.items():
                new = a & self._used(gid)
                if not new.any():  # keep one neuron, as eliminate-dead-neurons does
                    new[int(a.nonzero().flatten()[-1])] = True
                if not torch.equal(new, a):
                    self.alive[gid], changed = new, True

    def _segments(self, lay: Any) -> torch.Tensor | None:
        if not lay:
            return None
        parts = []
        for gid, r in lay:
            a = self.alive.get(gid)
            parts.append(a.repeat_interleave(r) if a is not None
                         else torch.ones(self.info.groups[gid].width * r, dtype=torch.bool))
        return torch.cat(parts)

    def rows(self, n: Node) -> torch.Tensor | None:
        """Live output rows of a parametric node (None: all)."""
        if n.name not in self.owners:
            return None  # its rows are no neurons (a linear that mixes token positions)
        r = self._segments(self.info.layouts.get(n.name))
        return r if r is not None and r.numel() == n.params["mask"].shape[0] else None

    def cols(self, n: Node) -> torch.Tensor | None:
        """Live input columns of a parametric node (None: all; a grouped conv's columns are local
        to its conv groups and follow its rows)."""
        if n.attrs.get("groups", 1) != 1:
            return None
        c = self._segments(self.info.consumer_layouts.get(n.name))
        return c if c is not None and c.numel() == n.params["mask"].shape[1] else None

    def _used(self, gid: int) -> torch.Tensor:
        grp = self.info.groups[gid]
        used = torch.zeros(grp.width, dtype=torch.bool)
        for name in grp.consumers:
            node = self.graph[name]
            mask = node.params["mask"]
            live = mask.flatten(2).any(2) if mask.dim() > 2 else mask  # (out, in)
            rows = self.rows(node)
            if rows is not None:
                live = live[rows.to(live.device)]
            col_live = live.any(0)
            if "area" in node.params:
                col_live = col_live & node.params["area"].flatten(1).any(1).to(col_live.device)
            for off, r, w in self.info.columns(name, gid):
                used |= col_live[off: off + w * r].view(w, r).any(1).cpu()
        return used

    def fraction(self, name: str) -> float:
        """The live share of a per-neuron node's neurons (its input axis)."""
        seg = self._segments(self.info.consumer_layouts.get(name))
        return 1.0 if seg is None or seg.numel() == 0 else float(seg.sum()) / seg.numel()


def layer_row(n: Node, live: _Live | None = None) -> dict[str, Any]:
    p = n.params
    mask, rows = p["mask"], live.rows(n) if live is not None else None
    cols = live.cols(n) if live is not None else None
    if rows is not None:
        mask = mask[rows.to(mask.device)]
    if cols is not None:
        mask = mask[:, cols.to(mask.device)]
    conns = int(mask.sum())
    out = int(rows.sum()) if rows is not None else int(p["weight"].shape[0])
    bias = out if "bias" in p else 0
    flops = _flops(n, mask, rows, cols)
    return {"name": n.name, "layer": n.describe(), "neurons": out,
            "connections": conns, "density": conns / max(1, mask.numel()),
            "params": conns + bias, "flops": flops}


def graph_stats(graph: Graph, compact: bool = True) -> dict[str, Any]:
    """Counts of ``graph`` as it stands; with ``compact``, without the neurons
    ``eliminate-dead-neurons`` would remove for having no live output (:class:`_Live`). A pure
    function of the graph: nothing is copied, changed or run."""
    live = _Live(graph) if compact else None
    layers = [layer_row(n, live) for n in graph.parametric()]
    norm = 0.0
    for n in graph:
        if n.is_parametric:
            continue
        k = sum(t.numel() for key, t in n.params.items() if key in opdef(n.op).counted)
        norm += k * (live.fraction(n.name) if live is not None and k else 1.0)
    return {
        "params": sum(r["params"] for r in layers) + round(norm),
        "flops": sum(r["flops"] for r in layers),
        "connections": sum(r["connections"] for r in layers),
        "layers": layers,
        "opaque": [n.name for n in graph if n.op == Op.OPAQUE],
    }


def stats(graph: Graph, *, compact: bool = True) -> dict[str, Any]:
    """``params`` (live weights + biases, plus norm-layer affine terms), ``flops`` (2 x live MACs
    per sample), ``connections`` and a per-layer table ``layers`` of a graph (``nestir.stats``
    also takes a module, which it traces first)."""
    if isinstance(graph, Graph):
        return graph_stats(graph, compact)
    if isinstance(graph, nn.Module):
        raise ArgumentError("nestir.ir.stats.stats takes a Graph: nestir.stats(module, example_inputs) traces a "
                            "module first")
    raise ArgumentError(f"stats needs a Graph or an nn.Module, got {type(graph).__name__}")


def format_table(s: dict[str, Any]) -> str:
    rows = [("layer", "kind", "neurons", "connections", "density", "params", "FLOPs")]
    for r in s["layers"]:
        rows.append((r["name"], r["layer"], str(r["neurons"]), str(r["connections"]),
                     f"{r['density']:.1%}", str(r["params"]), str(r["flops"])))
    rows.append(("total", "", "", str(s["connections"]), "", str(s["params"]), str(s["flops"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
             for r in rows]
    out = "\n".join(lines)
    if s["opaque"]:
        out += "\nopaque nodes (run as calls, widths frozen): " + ", ".join(s["opaque"])
    return out
