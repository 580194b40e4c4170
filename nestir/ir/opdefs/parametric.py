"""Layers with a weight and a connectivity mask: ``linear`` and ``conv``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir.convert import conv_attrs, conv_node, linear_node
from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.ops import conv, partial_area_conv

if TYPE_CHECKING:
    import torch.fx as fx

    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import Layout, _Analysis


@register
class Linear(OpDef):
    """``y = x W^T + b`` over the last axis; its rows are neurons of the group it produces, its
    columns read the group of its input. A square linear over another dim than its input's
    neuron axis (token mixing, ResMLP's ``Linear(tokens, tokens)`` between two transposes) mixes
    positions, not neurons: the input's neurons pass through it and its rows are no group (a
    value has one neuron axis, so a linear that changes that dim's size keeps its own rows as
    neurons and freezes its input's, as MLP-Mixer's token MLP does)."""

    name = "linear"
    parametric = True
    trainable = ("weight", "bias")
    modules = (nn.Linear,)
    functions = (F.linear,)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        return linear_node(name, mod.weight, mod.bias)  # type: ignore[arg-type]

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        bound = _bound(fxn)
        w, b = const(bound.get("weight")), const(bound.get("bias"))
        if not isinstance(w, torch.Tensor) or (b is not None and not isinstance(b, torch.Tensor)):
            return None
        return linear_node(name, w, b)

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        if "positions" not in node.attrs and srcs:  # decided once, when traced (edits keep it)
            node.attrs["positions"] = _mixes_positions(node, srcs[0])
        return srcs[0].axis if node.attrs.get("positions") else value.dim() - 1

    def check(self, graph: Graph, node: Node) -> str | None:
        why = _check_weight(node)
        if why:
            return why
        w, src = node.params["weight"], graph[node.inputs[0]]
        if w.dim() != 2 or src.shape is None or src.shape[-1] != w.shape[1]:
            return f"weight {tuple(w.shape)} does not fit input {src.shape}"
        return None

    def positions(self, node: Node) -> float | torch.Tensor:  # the leading non-batch positions
        return float(math.prod((node.shape or ())[1:-1]))

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return F.linear(args[0], p["weight"], p.get("bias"))

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        if node.attrs.get("positions"):
            return an.layout.get(node.inputs[0])
        lay = an.input_layout(node, -1)
        if lay is not None:
            an.consumer[node.name] = lay
        return [(an.new(node.params["weight"].shape[0], node.name), 1)]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        p = node.params
        return low.module(node, low.linear((p["weight"] * p["mask"]).detach(), p.get("bias"), p["mask"]), args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        p, nm = node.params, node.name
        w = p["weight"] * p["mask"]
        if len(g[node.inputs[0]].shape or ()) == 2:
            ins = [xs[0], e.const(nm + "_weight", w)] + ([e.const(nm + "_bias", p["bias"])] if "bias" in p else [])
            return e.op("Gemm", ins, nm, transB=1)
        y = e.op("MatMul", [xs[0], e.const(nm + "_weightT", w.T)], nm + "_mm")
        return e.op("Add", [y, e.const(nm + "_bias", p["bias"])], nm) if "bias" in p else y


def _mixes_positions(node: Node, src: Node) -> bool:
    """A square linear over a dim other than the neuron axis of its input (see :class:`Linear`);
    not on a model input, whose axis is a convention, not neurons."""
    w = node.params["weight"]
    return (src.op != "input" and src.axis is not None and src.shape is not None and len(src.shape) >= 3
            and src.axis != len(src.shape) - 1 and w.dim() == 2 and w.shape[0] == w.shape[1])


def _slides_over_neurons(node: Node, src: Node, value: torch.Tensor) -> bool:
    """A one-channel 1-D conv along its input's neuron axis that keeps its length (ECA's
    ``conv1d`` over the pooled channels, ``y.view(B, 1, C)``; see :class:`Conv`)."""
    w, a = node.params["weight"], node.attrs
    return (src.op != "input" and w.dim() == 3 and tuple(w.shape[:2]) == (1, 1) and a.get("groups") == 1
            and tuple(a.get("stride", ())) == (1,) and src.axis == 2 and src.shape is not None
            and len(src.shape) == 3 and value.dim() == 3 and value.shape[2] == src.shape[2])


@register
class Conv(OpDef):
    """A 1-D or 2-D convolution (grouped, depthwise, or with a partial-area mask ``area``). A
    one-channel 1-D conv that slides along its input's neuron axis and keeps its length (ECA:
    the pooled channels as a sequence) mixes neighbouring neurons but keeps them: the neurons
    pass through it along its length, and it has none of its own."""

    name = "conv"
    parametric = True
    unit_attr = "groups"
    trainable = ("weight", "bias")
    modules = (nn.Conv1d, nn.Conv2d)
    functions = (F.conv1d, F.conv2d)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        if type(mod) not in (nn.Conv1d, nn.Conv2d) or mod.padding_mode != "zeros":  # subclasses: see the frontend
            return None
        attrs = conv_attrs(mod.stride, mod.padding, mod.dilation, mod.groups, tuple(mod.kernel_size))
        return None if attrs is None else conv_node(name, mod.weight, mod.bias, attrs)  # type: ignore[arg-type]

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        bound = _bound(fxn)
        w, b = const(bound.get("weight")), const(bound.get("bias"))
        if not isinstance(w, torch.Tensor) or (b is not None and not isinstance(b, torch.Tensor)):
            return None
        attrs = conv_attrs(bound.get("stride", 1), bound.get("padding", 0), bound.get("dilation", 1),
                           bound.get("groups", 1), tuple(w.shape[2:]))
        return None if attrs is None else conv_node(name, w, b, attrs)

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        if "positions" not in node.attrs and srcs:  # decided once, when traced (edits keep it)
            node.attrs["positions"] = _slides_over_neurons(node, srcs[0], value)
        return 2 if node.attrs.get("positions") else 1

    def check(self, graph: Graph, node: Node) -> str | None:
        why = _check_weight(node)
        if why:
            return why
        w, p, g, src = node.params["weight"], node.params, node.attrs["groups"], graph[node.inputs[0]]
        if w.dim() not in (3, 4) or src.shape is None or src.shape[1] != w.shape[1] * g or w.shape[0] % g:
            return f"weight {tuple(w.shape)} with groups={g} does not fit input {src.shape}"
        if "area" in p:
            want = (w.shape[1], w.shape[0], *(node.shape or ())[2:])
            if p["area"].dtype != torch.bool or tuple(p["area"].shape) != want:
                return f"partial-area mask must be bool of shape {want}, got {tuple(p['area'].shape)}"
        return None

    def positions(self, node: Node) -> float | torch.Tensor:  # output positions, or the live area ones
        if "area" in node.params:
            return node.params["area"].flatten(2).sum(2).T.double()
        return float(math.prod((node.shape or ())[2:]))

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        if "area" in p:
            return partial_area_conv(args[0], p["weight"], p.get("bias"), p["area"], node.attrs)
        return conv(args[0], p["weight"], p.get("bias"), node.attrs)

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        if node.attrs.get("positions"):  # ECA: the neurons are its positions; one segment, else
            lay = an.layout.get(node.inputs[0])  # a new neuron would land between two it mixes
            if lay is not None and len(lay) > 1:
                an.freeze(lay, f"conv '{node.name}' slides over neurons of several groups")
                return None
            return lay
        g = node.attrs["groups"]
        w = node.params["weight"]
        lay = an.input_layout(node, 1)
        if lay is not None and any(r != 1 for _, r in lay):
            an.freeze(lay, f"conv '{node.name}' reads a repeated layout")
            lay = None
        c_in = w.shape[1] * g
        if g == 1:
            if lay is not None:
                an.consumer[node.name] = lay
            return [(an.new(w.shape[0], node.name), 1)]
        if g == c_in == w.shape[0] and lay is not None:
            an.per_neuron[node.name] = lay  # depthwise: output channel c is input channel c
            return lay
        if lay is not None and len(lay) == 1:  # whole conv groups: unit k of the input <-> unit k of the output
            out = an.new(w.shape[0], node.name)
            an.ties.append((node.name, g, lay[0][0], w.shape[1], out, w.shape[0] // g))
            return [(out, 1)]
        an.freeze(lay, f"grouped conv '{node.name}'")
        return [(an.new(w.shape[0], node.name, frozen=f"grouped conv '{node.name}'"), 1)]

    def fill(self, node: Node, key: str) -> float | bool:  # a depthwise conv's new channel: zero kernel, live
        return True if key == "mask" else 0.0

    def resized(self, node: Node, delta: int) -> dict[str, Any] | None:  # depthwise: a group per channel
        return {"groups": node.attrs["groups"] + delta}

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        p, a = node.params, node.attrs
        w, b = (p["weight"] * p["mask"]).detach(), p.get("bias")
        if "area" in p:
            return low.module(node, low.partial_area_conv(node, w, b), args)
        cls = nn.Conv1d if w.dim() == 3 else nn.Conv2d
        m = cls(w.shape[1] * a["groups"], w.shape[0], tuple(w.shape[2:]), a["stride"], a["padding"],
                a["dilation"], a["groups"], bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)  # type: ignore[union-attr]
        return low.module(node, m, args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        p, a, nm, x = node.params, node.attrs, node.name, xs[0]
        w = p["weight"] * p["mask"]
        b = p.get("bias")
        pads = list(a["padding"])
        attrs = {"strides": list(a["stride"]), "pads": pads + pads, "dilations": list(a["dilation"])}
        if "area" not in p:
            ins = [x, e.const(nm + "_weight", w)] + ([e.const(nm + "_bias", b)] if b is not None else [])
            return e.op("Conv", ins, nm, group=int(a["groups"]), **attrs)
        n_out, n_in = w.shape[:2]
        w2 = w.transpose(0, 1).reshape(n_in * n_out, 1, *w.shape[2:])
        c = e.op("Conv", [x, e.const(nm + "_pweight", w2)], nm + "_c", group=int(n_in), **attrs)
        spatial = list((node.shape or ())[2:])
        shape = e.const(nm + "_shape", np.array([0, n_in, n_out, *spatial]), np.int64)
        c5 = e.op("Reshape", [c, shape], nm + "_c5")
        masked = e.op("Mul", [c5, e.const(nm + "_area", p["area"].float())], nm + "_m")
        out = e.op("ReduceSum", [masked, e.const(nm + "_axes", np.array([1]), np.int64)], nm + "_sum", keepdims=0)
        if b is None:
            return out
        return e.op("Add", [out, e.const(nm + "_bias", b.reshape(-1, *([1] * len(spatial))))], nm)


def _check_weight(node: Node) -> str | None:
    p = node.params
    if len(node.inputs) != 1:
        return f"{node.op} must have exactly one input"
    w = p.get("weight")
    if w is None or "mask" not in p:
        return "parametric node needs 'weight' and 'mask'"
    if p["mask"].dtype != torch.bool or p["mask"].shape != w.shape:
        return (f"mask must be bool of the weight's shape {tuple(w.shape)}, "
                f"got {p['mask'].dtype} {tuple(p['mask'].shape)}")
    if "bias" in p and tuple(p["bias"].shape) != (w.shape[0],):
        return f"bias shape {tuple(p['bias'].shape)} does not match {w.shape[0]} outputs"
    return None


def _bound(fxn: fx.Node) -> dict[str, Any]:
    names = ["input", "weight", "bias", "stride", "padding", "dilation", "groups"]
    return {**dict(zip(names, fxn.args, strict=False)), **fxn.kwargs}
