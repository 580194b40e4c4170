"""Runs an IR graph on a device with its connectivity masks applied; trainable with any optimizer."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from nestir.ir.graph import Graph
from nestir.ir.kinds import Op
from nestir.ir.opdefs import evaluate, opdef


@dataclass
class Capture:
    """What a forward pass records: the output of every node in ``values`` (gradient retained)
    and, for each parametric node in ``weights``, its masked weight as a leaf whose ``.grad`` after
    backward is the dense weight gradient (dormant connections included)."""

    values: set[str] = field(default_factory=set)
    weights: set[str] = field(default_factory=set)
    value_tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    weight_leaves: dict[str, torch.Tensor] = field(default_factory=dict)


def param_key(node: str, key: str) -> str:
    return f"{node}__{key}"


class IRModule(nn.Module):
    """An ``nn.Module`` view of a :class:`Graph`.

    Its parameters share storage with the graph's tensors, so training updates the graph in
    place. After a structural edit call :meth:`sync` (or build a new one): parameters are
    re-created from the graph. Dormant weights are kept at zero by :meth:`apply_masks`."""

    def __init__(self, graph: Graph, device: torch.device | str | None = None) -> None:
        super().__init__()
        self.graph = graph
        if device is not None:
            graph.to(device)
        self.params = nn.ParameterDict()
        self.capture: Capture | None = None
        self.sync()

    def sync(self) -> None:
        """Re-create parameters from the graph's current tensors (after an edit)."""
        self.params = nn.ParameterDict()
        for n in self.graph:
            for key in opdef(n.op).trainable:
                t = n.params.get(key)
                if t is not None:
                    p = nn.Parameter(t, requires_grad=True)
                    n.params[key] = p.data  # the graph keeps a plain tensor on the same storage
                    self.params[param_key(n.name, key)] = p

    def param(self, node: str, key: str) -> torch.Tensor | None:
        k = param_key(node, key)
        return self.params[k] if k in self.params else None

    def tensors(self, name: str) -> dict[str, torch.Tensor]:
        n = self.graph[name]
        p = dict(n.params)
        for key in opdef(n.op).trainable:
            t = self.param(name, key)
            if t is not None:
                p[key] = t
        if "mask" in p:
            p["weight"] = p["weight"] * p.pop("mask")
        return p

    def forward(self, *inputs: torch.Tensor) -> Any:
        env: dict[str, Any] = {}
        it = iter(inputs)
        for n in self.graph:
            if n.op == Op.INPUT:
                env[n.name] = next(it)
                if self.capture is not None:
                    self._capture_value(n.name, env[n.name])
            elif n.op == Op.OUTPUT:
                outs = [env[i] for i in n.inputs]
                return outs[0] if n.attrs.get("structure") == "single" else tuple(outs)
            else:
                p = self.tensors(n.name)
                if self.capture is not None and n.op in (Op.LINEAR, Op.CONV):
                    p["weight"] = self._captured_weight(n.name, p["weight"])
                env[n.name] = evaluate(n, [env[i] for i in n.inputs], p, self.training)
                if self.capture is not None:
                    self._capture_value(n.name, env[n.name])
        raise RuntimeError("graph has no output node")

    # -- hooks for gradient statistics -------------------------------------------------------
    def start_capture(self, values: Iterable[str] = (), weights: Iterable[str] = ()) -> Capture:
        """Record the next forward passes into a fresh :class:`Capture` (``capture = None`` stops)."""
        self.capture = Capture(set(values), set(weights))
        return self.capture

    def _captured_weight(self, name: str, w: torch.Tensor) -> torch.Tensor:
        if name in self.capture.weights:  # type: ignore[union-attr]
            w = w.detach().requires_grad_(True)
            self.capture.weight_leaves[name] = w  # type: ignore[union-attr]
        return w

    def _capture_value(self, name: str, v: Any) -> None:
        if isinstance(v, torch.Tensor) and name in self.capture.values:  # type: ignore[union-attr]
            if v.requires_grad:
                v.retain_grad()
            self.capture.value_tensors[name] = v  # type: ignore[union-attr]

    @torch.no_grad()
    def apply_masks(self) -> None:
        for n in self.graph:
            if "mask" in n.params:
                p = self.param(n.name, "weight")
                if p is not None:
                    p.mul_(n.params["mask"])
