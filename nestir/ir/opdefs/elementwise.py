"""Elementwise ops: ``act``, ``identity``, ``binary`` (two values, or a value and a scalar) and
``scale`` (a value and a per-neuron constant: a layer scale, a shift, a position embedding)."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir.errors import LoweringError
from nestir.ir.graph import ACTIVATIONS, Node
from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.opdefs.heads import join, per_head_const, through
from nestir.ir.ops import activation, binary

if TYPE_CHECKING:
    import torch.fx as fx

    from nestir.ir.graph import Graph
    from nestir.ir.groups import Layout, _Analysis

ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.ELU: "elu",
}
ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.gelu: "gelu",
    F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.elu: "elu", torch.relu_: "relu",
    F.relu_: "relu", torch.sigmoid_: "sigmoid", torch.tanh_: "tanh",  # torch's in-place aliases
}
ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid", "tanh": "tanh",
               "tanh_": "tanh"}
_TORCH_ACT = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
              "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}
BINOP = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
_ONNX_BINOP = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}


def _same_axis(node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
    return None if not srcs or value.dim() < 2 else srcs[0].axis


@register
class Act(OpDef):
    """An elementwise activation (``kind``): relu, relu6, leaky_relu, gelu, silu, tanh, sigmoid,
    hardswish, hardsigmoid, elu."""

    name = "act"
    per_channel = True
    modules = tuple(ACT_MODULES)
    functions = tuple(ACT_FUNCS)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        kind = ACT_MODULES.get(type(mod))
        if kind is None:
            return None
        attrs: dict[str, Any] = {"kind": kind}
        if kind == "leaky_relu":
            attrs["slope"] = float(mod.negative_slope)  # type: ignore[arg-type]
        elif kind == "gelu":
            attrs["approximate"] = mod.approximate
        elif kind == "elu":
            attrs["alpha"] = float(mod.alpha)  # type: ignore[arg-type]
        return Node(name, "act", attrs=attrs)

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        kind = ACT_FUNCS[fxn.target]
        attrs: dict[str, Any] = {"kind": kind}
        if kw is not None and kind == "leaky_relu":
            attrs["slope"] = float(kw.get("negative_slope", 0.01))
        if kw is not None and kind == "gelu":
            attrs["approximate"] = kw.get("approximate", "none")
        if kw is not None and kind == "elu":
            attrs["alpha"] = float(kw.get("alpha", 1.0))
        return Node(name, "act", attrs=attrs)

    axis = staticmethod(_same_axis)  # type: ignore[assignment]

    def check(self, graph: Graph, node: Node) -> str | None:
        kind = node.attrs.get("kind")
        return None if kind in ACTIVATIONS else f"unknown activation '{kind}'"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return activation(node.attrs["kind"], node.attrs)(args[0])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.layout.get(node.inputs[0])

    head_flow = staticmethod(through)  # type: ignore[assignment]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        k, a = node.attrs["kind"], node.attrs
        if k in _TORCH_ACT:
            m = _TORCH_ACT[k]()
        elif k == "leaky_relu":
            m = nn.LeakyReLU(a.get("slope", 0.01))
        elif k == "gelu":
            m = nn.GELU(a.get("approximate", "none"))
        elif k == "elu":
            m = nn.ELU(a.get("alpha", 1.0))
        else:
            raise LoweringError(f"node '{node.name}': no torch lowering for activation '{k}'")
        return low.module(node, m, args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        k, a, nm, x = node.attrs["kind"], node.attrs, node.name, xs[0]
        simple = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "hardswish": "HardSwish"}
        if k in simple:
            return e.op(simple[k], [x], nm)
        if k == "relu6":
            return e.op("Clip", [x, e.const(nm + "_lo", 0.0), e.const(nm + "_hi", 6.0)], nm)
        if k == "leaky_relu":
            return e.op("LeakyRelu", [x], nm, alpha=float(a.get("slope", 0.01)))
        if k == "elu":
            return e.op("Elu", [x], nm, alpha=float(a.get("alpha", 1.0)))
        if k == "hardsigmoid":
            return e.op("HardSigmoid", [x], nm, alpha=1.0 / 6.0, beta=0.5)
        if k == "silu":
            return e.op("Mul", [x, e.op("Sigmoid", [x], nm + "_sig")], nm)
        if k == "gelu":
            half = e.op("Mul", [x, e.const(nm + "_half", 0.5)], nm + "_h")
            if a.get("approximate", "none") == "tanh":
                cube = e.op("Mul", [e.op("Mul", [x, x], nm + "_x2"), x], nm + "_x3")
                inner = e.op("Add", [x, e.op("Mul", [cube, e.const(nm + "_c", 0.044715)], nm + "_cx3")], nm + "_in")
                s = e.op("Mul", [inner, e.const(nm + "_k", math.sqrt(2 / math.pi))], nm + "_s")
                t = e.op("Tanh", [s], nm + "_t")
            else:
                t = e.op("Erf", [e.op("Mul", [x, e.const(nm + "_r", 1 / math.sqrt(2))], nm + "_s")], nm + "_t")
            return e.op("Mul", [half, e.op("Add", [t, e.const(nm + "_one", 1.0)], nm + "_1p")], nm)
        raise LoweringError(f"node '{nm}': no ONNX lowering for activation '{k}'")


def _is_stochastic_depth(target: Any) -> bool:
    return (getattr(target, "__name__", "") == "stochastic_depth"
            and str(getattr(target, "__module__", "")).startswith("torchvision"))


@register
class Softmax(OpDef):
    """``softmax`` along ``dim``, another dim than the neuron axis (SKNet's attention over its
    paths): each neuron's values are normalised among themselves. Along the neuron axis it would
    mix the neurons: that freezes them."""

    name = "softmax"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return torch.softmax(args[0], node.attrs["dim"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.layout.get(node.inputs[0])
        if node.axis is not None and node.attrs["dim"] == node.axis:
            an.freeze(lay, f"softmax '{node.name}' normalises across the neurons")
            return None
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        h = an.heads[node.inputs[0]][1]
        return (False, None) if node.attrs["dim"] == h else through(an, node)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(torch.softmax, (args[0], node.attrs["dim"]))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("Softmax", xs, node.name, axis=int(node.attrs["dim"]))


@register
class RadixSoftmax(OpDef):
    """ResNeSt's radix softmax (timm's ``RadixSoftmax`` with one cardinal group, recognised by name
    and attributes): the channels are ``radix`` pieces of C, and channel c of every piece is
    normalised against channel c of the others; the output is (B, radix * C). The pieces hold
    the same neurons: the analysis unifies them (they must be separate groups, as the frontend's
    cut of the producing conv at the view into pieces makes them), so a neuron goes from every
    piece at once."""

    name = "radix_softmax"
    structural = True

    def matches(self, mod: nn.Module) -> bool:
        return (type(mod).__name__ == "RadixSoftmax" and isinstance(getattr(mod, "radix", None), int)
                and mod.radix > 1 and getattr(mod, "cardinality", None) == 1)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        return Node(name, "radix_softmax", attrs={"radix": int(mod.radix)})  # type: ignore[arg-type]

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1 if srcs[0].axis == 1 else None

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        x, r = args[0], node.attrs["radix"]
        return x.reshape(x.shape[0], r, -1).softmax(1).reshape(x.shape[0], -1)

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.input_layout(node, 1)
        if lay is None:
            return None
        r = node.attrs["radix"]
        total = sum(an.width[an.find(g)] * k for g, k in lay)
        parts: list[list[tuple[int, int]]] = [[]]
        off = 0
        for g, k in lay:
            w = an.width[an.find(g)] * k
            if off + w > len(parts) * total // r:  # a segment across two pieces: frozen, but the layout
                # goes on, so that the view into pieces downstream gets its producer cut
                an.freeze(lay, f"radix softmax '{node.name}' reads channels not cut into its {r} pieces")
                return lay
            parts[-1].append((g, k))
            off += w
            if off == len(parts) * total // r and len(parts) < r:
                parts.append([])
        for part in parts[1:]:
            if an.unify([parts[0], part], f"radix softmax '{node.name}'") is None:
                return None
        return lay

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        fg, r = low.fg, node.attrs["radix"]
        width = (node.shape or (0, 0))[1]
        y = fg.call_method("reshape", (args[0], -1, r, width // r))
        return fg.call_method("reshape", (fg.call_method("softmax", (y, 1)), -1, width))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nm, r = node.name, node.attrs["radix"]
        width = (node.shape or (0, 0))[1]
        y = e.op("Reshape", [xs[0], e.const(nm + "_pieces", np.array([-1, r, width // r]), np.int64)], nm + "_r")
        y = e.op("Softmax", [y], nm + "_s", axis=1)
        return e.op("Reshape", [y, e.const(nm + "_flat", np.array([-1, width]), np.int64)], nm)


@register
class Identity(OpDef):
    """The value itself; dropout with ``p`` > 0 in training (``nn.Dropout``, ``F.dropout``),
    ``nn.Identity``, channel dropout and torchvision's stochastic depth in eval form."""

    name = "identity"
    per_channel = True
    layout_only = True
    modules = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
    functions = (F.dropout, F.dropout1d, F.dropout2d)

    def handles(self, target: Any) -> bool:
        return super().handles(target) or _is_stochastic_depth(target)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        if type(mod) is nn.Dropout:
            return Node(name, "identity", attrs={"p": float(mod.p)})
        if isinstance(mod, (nn.Identity, nn.Dropout1d, nn.Dropout2d)):
            return Node(name, "identity", attrs={"p": 0.0})
        return None

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        if kw is None:
            return None
        t = fxn.target
        if _is_stochastic_depth(t):  # torchvision.ops: the identity in eval
            return Node(name, "identity", attrs={"p": 0.0}) if kw.get("training") is False else None
        return Node(name, "identity", attrs={"p": float(kw.get("p", 0.5)) if t is F.dropout else 0.0})

    axis = staticmethod(_same_axis)  # type: ignore[assignment]

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        if node.attrs.get("p", 0.0) and training:
            return F.dropout(args[0], node.attrs["p"], True)
        return args[0]

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.layout.get(node.inputs[0])

    head_flow = staticmethod(through)  # type: ignore[assignment]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.module(node, nn.Dropout(node.attrs["p"]), args) if node.attrs.get("p", 0.0) > 0 else args[0]

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return xs[0]


@register
class Binary(OpDef):
    """add / sub / mul / div of two values (broadcasting), or of a value and a scalar
    (``scalar``, ``scalar_first``)."""

    name = "binary"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        if value.dim() < 2:
            return None
        return next((s.axis for s in srcs if s.shape == tuple(value.shape) and s.axis is not None), None)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        a = node.attrs
        if len(args) == 2:
            return binary(a["kind"], args[0], args[1])
        if a.get("scalar_first"):
            return binary(a["kind"], a["scalar"], args[0])
        return binary(a["kind"], args[0], a["scalar"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        if node.axis is None or node.shape is None:
            for i in node.inputs:
                an.freeze(an.layout.get(i), f"binary '{node.name}' has no neuron axis")
            return None
        lays = []
        for i in node.inputs:
            src = an.graph[i]
            s = src.shape or ()
            k = len(s) - len(node.shape) + node.axis  # broadcast aligns trailing dims
            if k < 0:
                continue
            if s[k] == 1 and node.shape[node.axis] != 1:
                # broadcast along the neuron axis: growing that input would break it
                an.freeze(an.layout.get(i), f"'{node.name}' broadcasts it")
                continue
            if src.axis != k:  # its neurons lie along another dim of the sum (token mixing): fixed
                an.freeze(an.layout.get(i), f"'{node.name}' adds it along another dim")
            lays.append(an.layout.get(i) if src.axis == k else None)
        return an.unify(lays, f"binary '{node.name}'")

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """Values in head space with their heads on the same dim (rotary embeddings: ``q * cos +
        rotate(q) * sin``) tie; another operand must be the same for every head."""
        if node.shape is None:
            return False, None
        nd = len(node.shape)
        h = next(an.heads[i][1] for i in node.inputs if i in an.heads)
        per_head: list[tuple[str, int]] = []
        for i in node.inputs:
            s = an.graph[i].shape or ()
            if i in an.heads:
                if len(s) != nd or an.heads[i][1] != h:
                    return False, None
                continue
            c = per_head_const(an, node, i, h)
            if c is False:
                return False, None
            if c is not None:
                per_head.append(c)  # type: ignore[arg-type]
        ok = join(an, node, h)
        for i, k in per_head:
            an.heads[i] = (an.heads[node.name][0], k)
        return ok, None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        if len(args) == 2:
            return low.fg.call_function(BINOP[a["kind"]], tuple(args))
        pair = (a["scalar"], args[0]) if a.get("scalar_first") else (args[0], a["scalar"])
        return low.fg.call_function(BINOP[a["kind"]], pair)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        a = node.attrs
        if len(xs) == 1:
            s = e.const(node.name + "_scalar", np.array(a["scalar"]))
            xs = [s, xs[0]] if a.get("scalar_first") else [xs[0], s]
        return e.op(_ONNX_BINOP[a["kind"]], xs, node.name)


@register
class ExpandAs(Binary):
    """``x.expand_as(y)``: ``x`` broadcast to the shape of ``y`` (a gate ``(B, C, 1, 1)`` spread
    over a feature map before a product). Neurons couple as in a :class:`Binary` of the two (the
    sizes must keep matching); ``y`` gives only its shape."""

    name = "expand_as"
    head_flow = OpDef.head_flow

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0].expand_as(args[1])

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_method("expand_as", (args[0], args[1]))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.op("Expand", [xs[0], e.op("Shape", [xs[1]], node.name + "_shape")], node.name)


@register
class Scale(OpDef):
    """``x op c`` with ``c`` one (trained) value per neuron of ``x``, broadcast along the other
    dims: ``params["value"]`` holds it with the neuron dim first; ``attrs["dim"]`` is where that
    dim sits in the operand as written (0 when absent); ``first``: ``c op x``."""

    name = "scale"
    trainable = ("value",)
    entries = ("value",)
    counted = ("value",)

    axis = staticmethod(_same_axis)  # type: ignore[assignment]

    @staticmethod
    def operand(node: Node, v: torch.Tensor) -> torch.Tensor:
        return v.movedim(0, node.attrs["dim"]) if node.attrs.get("dim") else v

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        a, v = node.attrs, self.operand(node, p["value"])
        return binary(a["kind"], v, args[0]) if a.get("first") else binary(a["kind"], args[0], v)

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.channelwise(node, None)

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """The same constant for every head (a rotary embedding's cos and sin tables)."""
        c, h, nd = self.operand(node, node.params["value"]), an.heads[node.inputs[0]][1], len(node.shape or ())
        k = c.dim() - nd + h
        return (False, None) if k >= 0 and c.shape[k] != 1 else through(an, node)

    def fill(self, node: Node, key: str) -> float | bool:  # the identity of its operation
        return 1.0 if node.attrs["kind"] in ("mul", "div") else 0.0

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        low.root.register_parameter(node.name, nn.Parameter(self.operand(node, node.params["value"]).detach().clone()))
        v = low.fg.get_attr(node.name)
        return low.fg.call_function(BINOP[a["kind"]], (v, args[0]) if a.get("first") else (args[0], v))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        a = node.attrs
        v = e.const(node.name + "_value", self.operand(node, node.params["value"]))
        return e.op(_ONNX_BINOP[a["kind"]], [v, xs[0]] if a.get("first") else [xs[0], v], node.name)


@register
class Normalize(OpDef):
    """``F.normalize(x, p=2, dim)``: each vector along ``dim`` divided by its L2 norm (at least
    ``eps``). Along the neuron axis it mixes the neurons (it freezes them); along another dim each
    neuron is normalised by itself, and in head space every head alike (XCiT's q and k)."""

    name = "normalize"
    functions = (F.normalize,)

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        if kw is None or float(kw.get("p", 2.0)) != 2.0 or not isinstance(kw.get("dim", 1), int) or kw.get("out"):
            return None
        return Node(name, "normalize", attrs={"dim": int(kw.get("dim", 1)), "eps": float(kw.get("eps", 1e-12))})

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return F.normalize(args[0], 2.0, node.attrs["dim"], node.attrs["eps"])

    def _dim(self, node: Node) -> int:
        return node.attrs["dim"] % len(node.shape or (0,))

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.layout.get(node.inputs[0])
        if node.axis is not None and self._dim(node) == node.axis:
            an.freeze(lay, f"normalize '{node.name}' divides by a norm across the neurons")
            return None
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        return (False, None) if self._dim(node) == an.heads[node.inputs[0]][1] else through(an, node)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        return low.fg.call_function(F.normalize, (args[0], 2.0, node.attrs["dim"], node.attrs["eps"]))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nm = node.name
        axes = e.const(nm + "_axes", np.array([self._dim(node)]), np.int64)
        norm = e.op("ReduceL2", [xs[0], axes], nm + "_norm", keepdims=1)
        norm = e.op("Max", [norm, e.const(nm + "_eps", np.array(node.attrs["eps"], np.float32))], nm + "_clamp")
        return e.op("Div", [xs[0], norm], nm)


@register
class FixedScale(Scale):
    """:class:`Scale` with a constant that is not a trained parameter of the model (a buffer, or
    computed from buffers: a rotary embedding's cos and sin tables, a fixed position embedding):
    it keeps one entry per neuron, but it does not train and does not count as a parameter."""

    name = "scale_const"
    trainable = ()
    counted = ()

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        low.root.register_buffer(node.name, self.operand(node, node.params["value"]).detach().clone())
        v = low.fg.get_attr(node.name)
        return low.fg.call_function(BINOP[a["kind"]], (v, args[0]) if a.get("first") else (args[0], v))
