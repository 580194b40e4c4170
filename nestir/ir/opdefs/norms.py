"""Normalizations: ``batchnorm``, ``layernorm`` (over the last axis), ``groupnorm``, ``grn``."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir.graph import Node
from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.opdefs.heads import through

if TYPE_CHECKING:
    import torch.fx as fx

    from nestir.ir.graph import Graph
    from nestir.ir.groups import Layout, _Analysis

_FILL = {"running_mean": 0.0, "running_var": 1.0, "weight": 1.0, "bias": 0.0}  # a new neuron: identity


def _tensors(kw: dict[str, Any], const: Any, *keys: str) -> dict[str, torch.Tensor | None]:
    out = {}
    for k in keys:
        v = const(kw.get(k))
        out[k] = v.detach().clone().float() if isinstance(v, torch.Tensor) else None
    return out


def _constant_or_absent(kw: dict[str, Any], t: dict[str, torch.Tensor | None], *keys: str) -> bool:
    return all(kw.get(k) is None or t[k] is not None for k in keys)


class _Norm(OpDef):
    trainable = ("weight", "bias")
    entries = ("running_mean", "running_var", "weight", "bias")
    counted = ("weight", "bias")

    def fill(self, node: Node, key: str) -> float | bool:
        return _FILL[key]


@register
class BatchNorm(_Norm):
    """Inference-form batch normalization over axis 1 (running statistics); trains in train mode."""

    name = "batchnorm"
    per_channel = True
    modules = (nn.BatchNorm1d, nn.BatchNorm2d)
    functions = (F.batch_norm,)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        if mod.running_mean is None or mod.running_var is None:
            return None
        params = {"running_mean": mod.running_mean.detach().clone().float(),  # type: ignore[union-attr]
                  "running_var": mod.running_var.detach().clone().float()}  # type: ignore[union-attr]
        if mod.affine:
            params["weight"] = mod.weight.detach().clone().float()  # type: ignore[union-attr]
            params["bias"] = mod.bias.detach().clone().float()  # type: ignore[union-attr]
        momentum = 0.1 if mod.momentum is None else float(mod.momentum)  # type: ignore[arg-type]
        return Node(name, "batchnorm", attrs={"eps": float(mod.eps), "momentum": momentum}, params=params)  # type: ignore[arg-type]

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        """``F.batch_norm`` in inference form (timm's ``BatchNormAct``)."""
        if kw is None:
            return None
        t = _tensors(kw, const, "running_mean", "running_var", "weight", "bias")
        if t["running_mean"] is None or t["running_var"] is None or kw.get("training") is not False:
            return None
        if not _constant_or_absent(kw, t, "weight", "bias"):
            return None
        params = {"running_mean": t["running_mean"], "running_var": t["running_var"]}
        w, b = t["weight"], t["bias"]
        if (w is None) != (b is None):  # the IR's batchnorm is affine in both or neither
            w = torch.ones_like(params["running_mean"]) if w is None else w
            b = torch.zeros_like(params["running_mean"]) if b is None else b
        if w is not None:
            params["weight"], params["bias"] = w, b  # type: ignore[assignment]
        return Node(name, "batchnorm", attrs={"eps": float(kw.get("eps", 1e-5)), "momentum": 0.1}, params=params)

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        a = node.attrs
        return F.batch_norm(args[0], p["running_mean"], p["running_var"], p.get("weight"), p.get("bias"),
                            training, a["momentum"], a["eps"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.input_layout(node, 1)
        if lay is not None:
            an.per_neuron[node.name] = lay
        return lay

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        p, a = node.params, node.attrs
        c = p["running_mean"].shape[0]
        nd = len(node.shape or ()) - 2
        m = (nn.BatchNorm1d if nd <= 1 else nn.BatchNorm2d)(c, a["eps"], a["momentum"], affine="weight" in p)
        with torch.no_grad():
            m.running_mean.copy_(p["running_mean"])  # type: ignore[union-attr]
            m.running_var.copy_(p["running_var"])  # type: ignore[union-attr]
            if "weight" in p:
                m.weight.copy_(p["weight"])
                m.bias.copy_(p["bias"])
        return low.module(node, m.eval(), args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        p, nm = node.params, node.name
        c = p["running_mean"].shape[0]
        ins = [xs[0], e.const(nm + "_scale", p.get("weight", torch.ones(c))),
               e.const(nm + "_shift", p.get("bias", torch.zeros(c))),
               e.const(nm + "_mean", p["running_mean"]), e.const(nm + "_var", p["running_var"])]
        return e.op("BatchNormalization", ins, nm, epsilon=float(node.attrs["eps"]))


@register
class LayerNorm(_Norm):
    """Layer normalization over the last axis; it normalizes across the neurons it reads, so its
    group is 'mixing' (growth leaves it alone)."""

    name = "layernorm"
    modules = (nn.LayerNorm,)
    functions = (F.layer_norm,)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        if len(mod.normalized_shape) != 1:  # type: ignore[arg-type]
            return None
        params = {k: t.detach().clone().float() for k in ("weight", "bias") if (t := getattr(mod, k)) is not None}
        return Node(name, "layernorm", attrs={"eps": float(mod.eps)}, params=params)  # type: ignore[arg-type]

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        if kw is None:
            return None
        shape = kw.get("normalized_shape")
        t = _tensors(kw, const, "weight", "bias")
        if not isinstance(shape, (list, tuple)) or len(shape) != 1 or not _constant_or_absent(kw, t, "weight", "bias"):
            return None
        params = {k: v for k, v in t.items() if v is not None}
        return Node(name, "layernorm", attrs={"eps": float(kw.get("eps", 1e-5))}, params=params)  # type: ignore[arg-type]

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return value.dim() - 1

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return F.layer_norm(args[0], (args[0].shape[-1],), p.get("weight"), p.get("bias"), node.attrs["eps"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.input_layout(node, -1)
        if lay is not None:
            an.per_neuron[node.name] = lay
            an.mixing.update(g for g, _ in lay)
        return lay

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """Within each head (q/k normalization): its weights are shared by the heads."""
        h = an.heads[node.inputs[0]][1]
        return (False, None) if h == len(node.shape or ()) - 1 else through(an, node)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        p = node.params
        m = nn.LayerNorm((node.shape or ())[-1], node.attrs["eps"], elementwise_affine="weight" in p, bias="bias" in p)
        with torch.no_grad():
            if "weight" in p:
                m.weight.copy_(p["weight"])
            if "bias" in p:
                m.bias.copy_(p["bias"])
        return low.module(node, m, args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        p, nm = node.params, node.name
        c = (node.shape or ())[-1]
        ins = [xs[0], e.const(nm + "_scale", p.get("weight", torch.ones(c))),
               e.const(nm + "_shift", p.get("bias", torch.zeros(c)))]
        return e.op("LayerNormalization", ins, nm, axis=-1, epsilon=float(node.attrs["eps"]))


@register
class GroupNorm(_Norm):
    """Group normalization over axis 1. One group normalizes across the neurons (like a
    LayerNorm); a group per channel does not; other counts tie channels in fixed sets (frozen)."""

    name = "groupnorm"
    modules = (nn.GroupNorm,)
    functions = (F.group_norm,)

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        params = {}
        if mod.affine:
            params = {"weight": mod.weight.detach().clone().float(), "bias": mod.bias.detach().clone().float()}  # type: ignore[union-attr]
        return Node(name, "groupnorm", attrs={"groups": int(mod.num_groups), "eps": float(mod.eps)}, params=params)  # type: ignore[arg-type]

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        if kw is None:
            return None
        t = _tensors(kw, const, "weight", "bias")
        if not _constant_or_absent(kw, t, "weight", "bias") or not isinstance(kw.get("num_groups"), int):
            return None
        params = {}
        w, b = t["weight"], t["bias"]
        if w is not None or b is not None:
            c = (w if w is not None else b).shape[0]  # type: ignore[union-attr]
            params = {"weight": torch.ones(c) if w is None else w, "bias": torch.zeros(c) if b is None else b}
        return Node(name, "groupnorm", attrs={"groups": kw["num_groups"], "eps": float(kw.get("eps", 1e-5))},
                    params=params)

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return F.group_norm(args[0], node.attrs["groups"], p.get("weight"), p.get("bias"), node.attrs["eps"])

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        lay = an.channelwise(node, 1)
        if lay is None:
            return None
        g, c = node.attrs["groups"], sum(an.width[x] for x, _ in lay)
        if 1 < g < c or (len(lay) > 1 and g != c):
            del an.per_neuron[node.name]
            an.freeze(lay, f"GroupNorm '{node.name}' normalizes {c} channels in {g} groups")
        elif g == 1:
            an.mixing.update(x for x, _ in lay)
        return lay

    def resized(self, node: Node, delta: int) -> dict[str, Any] | None:  # a group per channel follows
        return {"groups": node.attrs["groups"] + delta} if node.attrs["groups"] > 1 else None

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        p = node.params
        m = nn.GroupNorm(node.attrs["groups"], (node.shape or ())[1], node.attrs["eps"], affine="weight" in p)
        with torch.no_grad():
            if "weight" in p:
                m.weight.copy_(p["weight"])
                m.bias.copy_(p["bias"])
        return low.module(node, m, args)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """Reshape to (N, G, -1), normalize over the last axis, reshape back, then the per-channel
        affine (opset 18's GroupNormalization has per-group scale and bias)."""
        shape, a, p, nm = node.shape or (), node.attrs, node.params, node.name
        c, groups = shape[1], a["groups"]
        y = e.op("Reshape", [xs[0], e.const(nm + "_grouped", np.array([0, groups, -1]), np.int64)], nm + "_r")
        axes = e.const(nm + "_axes", np.array([2]), np.int64)
        mean = e.op("ReduceMean", [y, axes], nm + "_mean", keepdims=1)
        d = e.op("Sub", [y, mean], nm + "_d")
        var = e.op("ReduceMean", [e.op("Mul", [d, d], nm + "_d2"), axes], nm + "_var", keepdims=1)
        eps = e.const(nm + "_eps", np.array(a["eps"], np.float32))
        std = e.op("Sqrt", [e.op("Add", [var, eps], nm + "_ve")], nm + "_std")
        y = e.op("Div", [d, std], nm + "_n")
        back = np.array([0, c, *shape[2:]])
        y = e.op("Reshape", [y, e.const(nm + "_shape", back, np.int64)], nm + ("_b" if "weight" in p else ""))
        if "weight" not in p:
            return y
        bshape = (c, *([1] * (len(shape) - 2)))
        y = e.op("Mul", [y, e.const(nm + "_scale", p["weight"].reshape(bshape))], nm + "_w")
        return e.op("Add", [y, e.const(nm + "_shift", p["bias"].reshape(bshape))], nm)


@register
class GlobalResponseNorm(OpDef):
    """ConvNeXt-V2's global response normalization (timm's ``GlobalResponseNorm``, recognised by
    its name and attributes): ``x + bias + weight * x * n`` with ``n`` each channel's L2 norm over
    the spatial dims divided by the mean of those norms over the channels. The mean spans the
    neurons, so its group is 'mixing' (like a LayerNorm); ``weight`` and ``bias`` are per neuron
    (a new neuron with both zero passes its input through)."""

    name = "grn"
    trainable = ("weight", "bias")
    entries = ("weight", "bias")
    counted = ("weight", "bias")
    structural = True

    def matches(self, mod: nn.Module) -> bool:
        return (type(mod).__name__ == "GlobalResponseNorm" and getattr(mod, "channel_dim", None) in (-1, 1)
                and all(k in mod._parameters for k in ("weight", "bias"))  # (while tracing, getattr gives proxies)
                and isinstance(getattr(mod, "eps", None), float))

    def from_module(self, name: str, mod: nn.Module) -> Node | None:
        last = mod.channel_dim == -1
        params = {"weight": mod.weight.detach().clone().float(), "bias": mod.bias.detach().clone().float()}  # type: ignore[union-attr,operator]
        return Node(name, "grn", attrs={"eps": float(mod.eps), "channels_last": last}, params=params)  # type: ignore[arg-type]

    @staticmethod
    def _dims(node: Node, nd: int) -> tuple[tuple[int, ...], int]:
        """(spatial dims, channel dim) of an ``nd``-dim input."""
        if node.attrs["channels_last"]:
            return tuple(range(1, nd - 1)), nd - 1
        return tuple(range(2, nd)), 1

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return self._dims(node, value.dim())[1]

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        x = args[0]
        sd, cd = self._dims(node, x.dim())
        shape = [1] * x.dim()
        shape[cd] = -1
        g = x.norm(p=2, dim=sd, keepdim=True)
        n = g / (g.mean(dim=cd, keepdim=True) + node.attrs["eps"])
        return x + torch.addcmul(p["bias"].view(shape), p["weight"].view(shape), x * n)

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        nd = len(node.shape or ())
        lay = an.input_layout(node, self._dims(node, nd)[1])
        if lay is not None:
            an.per_neuron[node.name] = lay
            an.mixing.update(g for g, _ in lay)
        return lay

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        nd = len(node.shape or ())
        sd, cd = self._dims(node, nd)
        shape = [1] * nd
        shape[cd] = -1
        for k in ("weight", "bias"):
            low.root.register_parameter(f"{node.name}_{k}", nn.Parameter(node.params[k].view(shape).detach().clone()))
        fg, x = low.fg, args[0]
        g = fg.call_method("norm", (x,), {"p": 2, "dim": sd, "keepdim": True})
        m = fg.call_method("mean", (g,), {"dim": cd, "keepdim": True})
        n = fg.call_function(operator.truediv, (g, fg.call_function(operator.add, (m, node.attrs["eps"]))))
        y = fg.call_function(torch.addcmul, (fg.get_attr(f"{node.name}_bias"), fg.get_attr(f"{node.name}_weight"),
                                             fg.call_function(operator.mul, (x, n))))
        return fg.call_function(operator.add, (x, y))

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        nd, nm = len(node.shape or ()), node.name
        sd, cd = self._dims(node, nd)
        shape = [1] * nd
        shape[cd] = -1
        x = xs[0]
        gn = e.op("ReduceL2", [x, e.const(nm + "_sd", np.array(sd), np.int64)], nm + "_g", keepdims=1)
        m = e.op("ReduceMean", [gn, e.const(nm + "_cd", np.array([cd]), np.int64)], nm + "_m", keepdims=1)
        m = e.op("Add", [m, e.const(nm + "_eps", np.array(node.attrs["eps"], np.float32))], nm + "_me")
        n = e.op("Div", [gn, m], nm + "_n")
        y = e.op("Mul", [e.op("Mul", [x, n], nm + "_xn"), e.const(nm + "_w", node.params["weight"].view(shape))],
                 nm + "_y")
        y = e.op("Add", [y, e.const(nm + "_b", node.params["bias"].view(shape))], nm + "_yb")
        return e.op("Add", [x, y], nm)
