"""Size and cost of a graph or module: live parameters, FLOPs, and a per-layer table."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from .edit import set_mask
from .errors import ArgumentError
from .graph import Graph, Node
from .opdefs import opdef


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


def layer_flops(n: Node) -> int:
    """2 x live multiply-accumulates per sample of a parametric node (partial areas counted)."""
    mask = n.params["mask"]
    pos = _positions(n)
    if isinstance(pos, torch.Tensor):  # live kernel taps of each (out, in) pair x its live positions
        return 2 * round(float((mask.flatten(2).sum(2).double() * pos).sum()))
    return 2 * int(mask.sum()) * round(pos)


def layer_row(n: Node) -> dict[str, Any]:
    p = n.params
    conns = int(p["mask"].sum())
    bias = p["bias"].numel() if "bias" in p else 0
    return {"name": n.name, "layer": n.describe(), "neurons": int(p["weight"].shape[0]),
            "connections": conns, "density": conns / max(1, p["mask"].numel()),
            "params": conns + bias, "flops": layer_flops(n)}


def graph_stats(graph: Graph, compact: bool = True) -> dict[str, Any]:
    if compact:
        from .compact import eliminate_dead_neurons

        graph = graph.copy()
        eliminate_dead_neurons(graph)
    layers = [layer_row(n) for n in graph.parametric()]
    norm = sum(t.numel() for n in graph if not n.is_parametric
               for k, t in n.params.items() if k in opdef(n.op).counted)
    return {
        "params": sum(r["params"] for r in layers) + norm,
        "flops": sum(r["flops"] for r in layers),
        "connections": sum(r["connections"] for r in layers),
        "layers": layers,
        "opaque": [n.name for n in graph if n.op == "opaque"],
    }


def stats(model: Graph | nn.Module, example_inputs: Any = None, *, compact: bool = True) -> dict[str, Any]:
    """``params`` (live weights + biases, plus norm-layer affine terms), ``flops`` (2 x live MACs
    per sample), ``connections`` and a per-layer table ``layers``.

    A module is traced first (zero weights count as absent connections); a module returned by
    ``Graph.to_torch()`` knows its input shape, any other needs ``example_inputs``."""
    if isinstance(model, Graph):
        return graph_stats(model, compact)
    if not isinstance(model, nn.Module):
        raise ArgumentError(f"stats needs a Graph or an nn.Module, got {type(model).__name__}")
    if example_inputs is None:
        shapes = getattr(model, "nestir_input_shapes", None)
        if shapes is None:
            raise ArgumentError("stats of a plain module needs example_inputs (its input shape)")
        example_inputs = tuple(torch.zeros(1, *s) for s in shapes)
    from .frontend import trace

    g = trace(model, example_inputs)
    for n in g.parametric():
        set_mask(g, n.name, n.params["weight"] != 0)
    return graph_stats(g, compact)


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
