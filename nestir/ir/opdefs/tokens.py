"""Transformer ops: ``attention`` (multi-head, its heads tie q/k and v in whole units) and
``prepend`` (learned tokens, such as a class token, before a sequence)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.ops import attention

if TYPE_CHECKING:
    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import Layout, _Analysis


@register
class Attention(OpDef):
    """softmax(q k^T * ``scale``) v per head over the token axis (-2); q, k, v hold ``heads``
    equal heads on the last axis, head-major. q and k share one index space (their dot product
    pairs neuron j of q with neuron j of k); v's neurons flow to the output. Head h of q/k exists
    only with head h of v: the node ties the two groups in whole heads, the unit pruning removes."""

    name = "attention"
    unit_attr = "heads"
    trainable = ("bias",)
    counted = ("bias",)
    unit_entries = ("bias",)  # optional: (heads, T, T) added to each head's logits

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return value.dim() - 1

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return attention(args[0], args[1], args[2], node.attrs["heads"], node.attrs["scale"], p.get("bias"))

    def check(self, graph: Graph, node: Node) -> str | None:
        b = node.params.get("bias")
        t = (graph[node.inputs[0]].shape or (0, 0))[-2] if node.inputs else 0
        if b is not None and tuple(b.shape) != (node.attrs["heads"], t, t):
            return f"attention bias has shape {tuple(b.shape)}, expected ({node.attrs['heads']}, {t}, {t})"
        return None

    def fill(self, node: Node, key: str) -> float | bool:
        return 0.0

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lays = []
        for i in node.inputs:
            src, lay = an.graph[i], an.layout.get(i)
            ok = lay is not None and len(lay) == 1 and lay[0][1] == 1 and src.shape is not None \
                and src.axis == len(src.shape) - 1
            lays.append(lay if ok else None)
        if any(lay is None for lay in lays):
            for i in node.inputs:
                an.freeze(an.layout.get(i), f"attention '{node.name}' reads it in a layout it cannot cut in heads")
            return None
        (q, _), (k, _), (v, _) = (lay[0] for lay in lays)  # type: ignore[index]
        an.union(q, k)
        h = node.attrs["heads"]
        an.ties.append((node.name, h, q, an.width[an.find(q)] // h, v, an.width[an.find(v)] // h))
        return lays[2]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        fg, h = low.fg, node.attrs["heads"]
        heads = [fg.call_method("transpose", (fg.call_method("unflatten", (t, -1, (h, -1))), -3, -2)) for t in args]
        kw: dict[str, Any] = {"scale": node.attrs["scale"]}
        if "bias" in node.params:
            low.root.register_parameter(node.name + "_bias", nn.Parameter(node.params["bias"].detach().clone()))
            kw["attn_mask"] = fg.get_attr(node.name + "_bias")
        o = fg.call_function(F.scaled_dot_product_attention, tuple(heads), kw)
        return fg.call_method("flatten", (fg.call_method("transpose", (o, -3, -2)), -2))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """(B, T, H*D) q, k, v: split heads, softmax(q k^T * scale) v, merge heads."""
        nm, heads, scale = node.name, node.attrs["heads"], node.attrs["scale"]
        split = e.const(nm + "_heads", np.array([0, 0, heads, -1]), np.int64)
        q, k, v = (e.op("Reshape", [x, split], f"{nm}_{s}") for x, s in zip(xs, "qkv", strict=True))
        q = e.op("Transpose", [q], nm + "_qh", perm=[0, 2, 1, 3])
        k = e.op("Transpose", [k], nm + "_kt", perm=[0, 2, 3, 1])
        v = e.op("Transpose", [v], nm + "_vh", perm=[0, 2, 1, 3])
        s = e.op("Mul", [e.op("MatMul", [q, k], nm + "_qk"), e.const(nm + "_scale", np.array(scale))], nm + "_s")
        if "bias" in node.params:
            s = e.op("Add", [s, e.const(nm + "_bias", node.params["bias"])], nm + "_sb")
        o = e.op("MatMul", [e.op("Softmax", [s], nm + "_p", axis=-1), v], nm + "_o")
        o = e.op("Transpose", [o], nm + "_ot", perm=[0, 2, 1, 3])
        return e.op("Reshape", [o, e.const(nm + "_merge", np.array([0, 0, -1]), np.int64)], nm)


@register
class Prepend(OpDef):
    """``cat([tok.expand(B, ...), x], dim)``: learned tokens before the tokens of ``x``, one
    entry per neuron of ``x``. ``params["value"]`` holds them with the neuron dim first;
    ``vdim`` is the neuron axis of the output (``value`` as written is (1, *rest))."""

    name = "prepend"
    trainable = ("value",)
    entries = ("value",)
    counted = ("value",)

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    @staticmethod
    def tokens(node: Node, v: torch.Tensor) -> torch.Tensor:
        return v.movedim(0, node.attrs["vdim"] - 1).unsqueeze(0)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        x, v = args[0], self.tokens(node, p["value"])
        return torch.cat([v.expand(x.shape[0], *v.shape[1:]).to(x.dtype), x], node.attrs["dim"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.channelwise(node, None)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        v = self.tokens(node, node.params["value"])
        low.root.register_parameter(node.name, nn.Parameter(v.detach().clone()))
        sizes = (low.fg.call_method("size", (args[0], 0)), *([-1] * (v.dim() - 1)))
        tok = low.fg.call_method("expand", (low.fg.get_attr(node.name), *sizes))
        return low.fg.call_function(torch.cat, ([tok, args[0]],), {"dim": node.attrs["dim"]})

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nm = node.name
        v = self.tokens(node, node.params["value"])
        shape = e.op("Shape", [xs[0]], nm + "_shape")
        batch = e.op("Slice", [shape, e.const(nm + "_b0", np.array([0]), np.int64),
                               e.const(nm + "_b1", np.array([1]), np.int64)], nm + "_batch")
        size = e.op("Concat", [batch, e.const(nm + "_rest", np.array(v.shape[1:]), np.int64)], nm + "_size", axis=0)
        tok = e.op("Expand", [e.const(nm + "_value", v), size], nm + "_tok")
        return e.op("Concat", [tok, xs[0]], nm, axis=int(node.attrs["dim"]))


@register
class BatchExpand(OpDef):
    """``v.repeat(B, 1, ...)`` / ``v.expand(B, -1, ...)`` of a computed value ``v`` of batch 1 (a
    position encoding computed from a constant grid: XCiT), ``B`` read from input 1 (a model
    input) at run time. Its neurons are ``v``'s."""

    name = "batch_expand"

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return srcs[0].axis

    def check(self, graph: Graph, node: Node) -> str | None:
        src = graph[node.inputs[0]]
        if src.shape and src.shape[0] == 1:
            return None
        return f"expands a value of batch {src.shape and src.shape[0]}, not 1"

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return args[0].expand(args[1].shape[0], *args[0].shape[1:])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.layout.get(node.inputs[0])

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        nd = len(node.shape or ())
        return low.fg.call_method("expand", (args[0], low.fg.call_method("size", (args[1], 0)), *([-1] * (nd - 1))))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nm, nd = node.name, len(node.shape or ())

        def dims(x: str, lo: int, hi: int, tag: str) -> str:
            shape = e.op("Shape", [x], f"{nm}_{tag}shape")
            return e.op("Slice", [shape, e.const(f"{nm}_{tag}lo", np.array([lo]), np.int64),
                                  e.const(f"{nm}_{tag}hi", np.array([hi]), np.int64)], f"{nm}_{tag}")
        size = e.op("Concat", [dims(xs[1], 0, 1, "b"), dims(xs[0], 1, nd, "r")], nm + "_size", axis=0)
        return e.op("Expand", [xs[0], size], nm)
