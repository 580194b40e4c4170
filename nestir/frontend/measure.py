"""``nestir.stats`` of a graph or of a module (traced first)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from nestir.frontend.tracer import trace
from nestir.ir.edit import set_mask
from nestir.ir.errors import ArgumentError
from nestir.ir.graph import Graph
from nestir.ir.stats import graph_stats


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
    g = trace(model, example_inputs)
    for n in g.parametric():
        set_mask(g, n.name, n.params["weight"] != 0)
    return graph_stats(g, compact)
