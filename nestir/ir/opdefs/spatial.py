"""Ops over the spatial dims, channel by channel: ``pool``, ``adaptive_pool``, ``resize``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir.convert import _pair, pool_node, resize_node
from nestir.ir.errors import LoweringError
from nestir.ir.graph import Node
from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.ops import adaptive_pool, pool

if TYPE_CHECKING:
    import torch.fx as fx

    from nestir.ir.graph import Graph
    from nestir.ir.groups import Layout, _Analysis


class _Spatial(OpDef):
    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1 if value.dim() >= 2 else None

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return an.input_layout(node, 1)


@register
class Pool(_Spatial):
    """Max or average pooling (1-D, 2-D)."""

    name = "pool"
    modules = (nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d)
    # torch's own aliases (torch.max_pool2d ...) are the same ops: their default stride is [] (the kernel)
    functions = (F.max_pool1d, F.max_pool2d, F.avg_pool1d, F.avg_pool2d, torch.max_pool1d, torch.max_pool2d,
                 torch.avg_pool1d)
    _MAX = {F.max_pool1d: 1, F.max_pool2d: 2, torch.max_pool1d: 1, torch.max_pool2d: 2}
    _AVG = {F.avg_pool1d: 1, F.avg_pool2d: 2, torch.avg_pool1d: 1}

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        m: Any = mod
        if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
            if m.return_indices:
                return None
            nd = 1 if isinstance(m, nn.MaxPool1d) else 2
            return pool_node(name, "max", nd, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, True, None)
        nd = 1 if isinstance(m, nn.AvgPool1d) else 2
        return pool_node(name, "avg", nd, m.kernel_size, m.stride, m.padding, 1, m.ceil_mode, m.count_include_pad,
                         getattr(m, "divisor_override", None))

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        t = fxn.target
        if kw is None:
            return None
        stride = kw.get("stride") or None  # [] in torch's aliases: the kernel size
        if t in self._MAX:
            if kw.get("return_indices"):
                return None
            return pool_node(name, "max", self._MAX[t], kw["kernel_size"], stride, kw.get("padding", 0),
                             kw.get("dilation", 1), kw.get("ceil_mode", False), True, None)
        return pool_node(name, "avg", self._AVG[t], kw["kernel_size"], stride, kw.get("padding", 0), 1,
                         kw.get("ceil_mode", False), kw.get("count_include_pad", True), kw.get("divisor_override"))

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return pool(args[0], node.attrs)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a, nd = node.attrs, node.attrs["dims"]
        if a["mode"] == "max":
            cls = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
            m: nn.Module = cls(a["kernel"], a["stride"], a["padding"], a["dilation"], ceil_mode=a["ceil_mode"])
        elif nd == 1:
            m = nn.AvgPool1d(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
        else:
            m = nn.AvgPool2d(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                             a["divisor"])
        return low.module(node, m, args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        a, nm = node.attrs, node.name
        pads = list(a["padding"]) * 2
        common = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": pads,
                  "ceil_mode": int(a["ceil_mode"])}
        if a["mode"] == "max":
            return e.op("MaxPool", xs, nm, dilations=list(a["dilation"]), **common)
        if a.get("divisor"):
            raise LoweringError(f"node '{nm}': avg pooling with divisor_override has no ONNX equivalent")
        return e.op("AveragePool", xs, nm, count_include_pad=int(a["count_include_pad"]), **common)


@register
class AdaptivePool(_Spatial):
    """Adaptive max or average pooling to ``output_size`` (1-D, 2-D)."""

    name = "adaptive_pool"
    modules = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)
    functions = (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        m: Any = mod
        if getattr(m, "return_indices", False):
            return None
        nd = 1 if isinstance(m, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else 2
        if m.output_size is None or (isinstance(m.output_size, tuple) and None in m.output_size):
            return None
        mode = "max" if "Max" in type(m).__name__ else "avg"
        return Node(name, "adaptive_pool", attrs={"mode": mode, "dims": nd, "output_size": _pair(m.output_size, nd)})

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        t = fxn.target
        if kw is None or kw.get("return_indices"):
            return None
        nd = 2 if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) else 1
        mode = "max" if t in (F.adaptive_max_pool2d, F.adaptive_max_pool1d) else "avg"
        attrs = {"mode": mode, "dims": nd, "output_size": _pair(kw["output_size"], nd)}
        return Node(name, "adaptive_pool", attrs=attrs)

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return adaptive_pool(args[0], node.attrs)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a = node.attrs
        cls = {(1, False): nn.AdaptiveAvgPool1d, (2, False): nn.AdaptiveAvgPool2d,
               (1, True): nn.AdaptiveMaxPool1d, (2, True): nn.AdaptiveMaxPool2d}[(a["dims"], a["mode"] == "max")]
        return low.module(node, cls(a["output_size"]), args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        a, nm, x = node.attrs, node.name, xs[0]
        spatial = list((g[node.inputs[0]].shape or ())[2:])
        outs = list(a["output_size"])
        if all(o == 1 for o in outs):
            return e.op("GlobalMaxPool" if a["mode"] == "max" else "GlobalAveragePool", [x], nm)
        if any(s % o for s, o in zip(spatial, outs, strict=True)):  # overlapping or uneven windows
            return _uneven_adaptive(e, nm, x, spatial, outs, a["mode"])
        k = [s // o for s, o in zip(spatial, outs, strict=True)]
        return e.op("MaxPool" if a["mode"] == "max" else "AveragePool", [x], nm, kernel_shape=k, strides=k)


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _uneven_adaptive(e: Any, nm: str, x: str, spatial: list[int], outs: list[int], mode: str) -> str:
    """Adaptive pooling whose windows are not one plain pooling (input not a multiple of the
    output, e.g. AlexNet's 6x6 pool on small inputs). Average: a constant averaging matrix per
    spatial axis (MatMul, exact). Max: one ReduceMax per window, concatenated."""
    axes = list(range(2, 2 + len(spatial)))
    if mode != "max":
        y = x
        for k, (size, out) in enumerate(zip(spatial, outs, strict=True)):
            m = np.zeros((out, size), np.float32)
            for i, (lo, hi) in enumerate(_windows(size, out)):
                m[i, lo:hi] = 1.0 / (hi - lo)
            if k == len(spatial) - 1:  # last axis: y @ m.T
                y = e.op("MatMul", [y, e.const(f"{nm}_avg{k}", m.T.copy())], f"{nm}_mm{k}")
            else:  # earlier axis (2-D: height): m @ y over that axis
                y = e.op("MatMul", [e.const(f"{nm}_avg{k}", m), y], f"{nm}_mm{k}")
        return e.op("Identity", [y], nm)

    def cells(prefix: str, src: str, k: int) -> str:
        parts = []
        for i, (lo, hi) in enumerate(_windows(spatial[k], outs[k])):
            ins = [src] + [e.const(f"{prefix}_{i}{t}", np.array([v]), np.int64)
                           for t, v in (("s", lo), ("e", hi), ("a", axes[k]))]
            sl = e.op("Slice", ins, f"{prefix}_{i}")
            if k == len(spatial) - 1:
                ax = e.const(f"{prefix}_{i}ax", np.array([axes[k]]), np.int64)
                parts.append(e.op("ReduceMax", [sl, ax], f"{prefix}_{i}m", keepdims=1))
            else:
                parts.append(cells(f"{prefix}_{i}", sl, k + 1))
        if k < len(spatial) - 1:  # reduce this axis after the inner ones
            parts = [e.op("ReduceMax", [q, e.const(f"{prefix}_{i}rx", np.array([axes[k]]), np.int64)],
                          f"{prefix}_{i}r", keepdims=1) for i, q in enumerate(parts)]
        return e.op("Concat", parts, f"{prefix}_cat", axis=axes[k])

    return e.op("Identity", [cells(nm + "_w", x, 0)], nm)


@register
class Resize(_Spatial):
    """``nn.Upsample`` / ``F.interpolate``: nearest or (bi)linear, by ``scale_factor`` or ``size``."""

    name = "resize"
    modules = (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d)
    functions = (F.interpolate,)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        m: Any = mod
        if type(m) not in self.modules:
            return None
        return resize_node(name, m.size, m.scale_factor, m.mode, m.align_corners, None, False)

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        if kw is None:
            return None

        def value(v: Any) -> Any:  # sizes may be read from a tensor's shape (GhostNetV2): their traced values
            return [const(a) for a in v] if isinstance(v, (list, tuple)) else const(v)

        size, scale = value(kw.get("size")), value(kw.get("scale_factor"))
        for v in (size, scale):
            if v is not None and not all(isinstance(a, (int, float)) for a in (v if isinstance(v, list) else [v])):
                return None
        return resize_node(name, size, scale, kw.get("mode", "nearest"), kw.get("align_corners"),
                           kw.get("recompute_scale_factor"), kw.get("antialias", False))

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        a = node.attrs
        return F.interpolate(args[0], size=a.get("size"), scale_factor=a.get("scale_factor"), mode=a["mode"],
                             align_corners=a["align_corners"])

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        kw = {k: node.attrs.get(k) for k in ("size", "scale_factor", "mode", "align_corners")}
        return low.fg.call_function(F.interpolate, (args[0],), kw)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """torch's nearest (floor of dst / scale) and (bi)linear (half-pixel or align-corners)."""
        a, nm, shape, x = node.attrs, node.name, node.shape or (), xs[0]
        nd = len(shape) - 2
        empty = e.const(nm + "_roi", np.array([], np.float32))
        if "scale_factor" in a:
            s = a["scale_factor"] if isinstance(a["scale_factor"], list) else [a["scale_factor"]] * nd
            ins = [x, empty, e.const(nm + "_scales", np.array([1.0, 1.0, *s], np.float32))]
        else:  # a fixed size: batch and channels from the input, the spatial size as traced
            head = e.op("Slice", [e.op("Shape", [x], nm + "_shape"), e.const(nm + "_s0", np.array([0]), np.int64),
                                  e.const(nm + "_s2", np.array([2]), np.int64)], nm + "_nc")
            sizes = e.op("Concat", [head, e.const(nm + "_hw", np.array(shape[2:]), np.int64)], nm + "_sizes", axis=0)
            ins = [x, empty, e.const(nm + "_noscales", np.array([], np.float32)), sizes]
        if a["mode"] == "nearest":
            return e.op("Resize", ins, nm, mode="nearest", coordinate_transformation_mode="asymmetric",
                        nearest_mode="floor")
        ctm = "align_corners" if a["align_corners"] else "pytorch_half_pixel"
        return e.op("Resize", ins, nm, mode="linear", coordinate_transformation_mode=ctm)
