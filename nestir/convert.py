"""Rules that turn one torch.fx node into one IR node (or mark it opaque)."""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .graph import Node

ACT_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky_relu", nn.GELU: "gelu", nn.SiLU: "silu",
    nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
    nn.ELU: "elu",
}
ACT_FUNCS: dict[Any, str] = {
    F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.leaky_relu: "leaky_relu", F.gelu: "gelu",
    F.silu: "silu", torch.tanh: "tanh", F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid",
    F.hardswish: "hardswish", F.hardsigmoid: "hardsigmoid", F.elu: "elu", torch.relu_: "relu",
}
ACT_METHODS = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
BINARY_FUNCS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", operator.isub: "sub",
    torch.sub: "sub", operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
}
BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                   "div": "div", "div_": "div"}
IDENTITY_METHODS = {"contiguous", "clone"}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze"}
RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze}


def _pair(v: Any, nd: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return (int(v),) * nd


def axis_for(shape: tuple[int, ...] | None, default: int = 1) -> int | None:
    if shape is None or len(shape) < 2:
        return None
    return default if default >= 0 else len(shape) + default


def conv_attrs(stride: Any, padding: Any, dilation: Any, groups: int, kernel: tuple[int, ...]) -> dict | None:
    """Normalized conv hyper-parameters, or None where padding cannot be expressed symmetrically."""
    nd = len(kernel)
    dil = _pair(dilation, nd)
    if isinstance(padding, str):
        if padding == "valid":
            pad = (0,) * nd
        else:  # "same"
            totals = [d * (k - 1) for d, k in zip(dil, kernel, strict=True)]
            if any(t % 2 for t in totals):
                return None
            pad = tuple(t // 2 for t in totals)
    else:
        pad = _pair(padding, nd)
    return {"stride": _pair(stride, nd), "padding": pad, "dilation": dil, "groups": int(groups)}


def linear_node(name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> Node:
    params = {"weight": weight.detach().clone().float(), "mask": torch.ones(weight.shape, dtype=torch.bool)}
    if bias is not None:
        params["bias"] = bias.detach().clone().float()
    return Node(name, "linear", params=params)


def conv_node(name: str, weight: torch.Tensor, bias: torch.Tensor | None, attrs: dict) -> Node:
    node = linear_node(name, weight, bias)
    node.op = "conv"
    node.attrs = attrs
    return node


def module_node(name: str, mod: nn.Module) -> Node | None:
    """An IR node for a known leaf module, or None when it must stay opaque."""
    if isinstance(mod, nn.Linear):
        return linear_node(name, mod.weight, mod.bias)
    if isinstance(mod, (nn.Conv1d, nn.Conv2d)) and type(mod) in (nn.Conv1d, nn.Conv2d):
        if mod.padding_mode != "zeros":
            return None
        attrs = conv_attrs(mod.stride, mod.padding, mod.dilation, mod.groups, tuple(mod.kernel_size))
        return None if attrs is None else conv_node(name, mod.weight, mod.bias, attrs)
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if mod.running_mean is None or mod.running_var is None:
            return None
        params = {"running_mean": mod.running_mean.detach().clone().float(),
                  "running_var": mod.running_var.detach().clone().float()}
        if mod.affine:
            params["weight"] = mod.weight.detach().clone().float()
            params["bias"] = mod.bias.detach().clone().float()
        momentum = 0.1 if mod.momentum is None else float(mod.momentum)
        return Node(name, "batchnorm", attrs={"eps": float(mod.eps), "momentum": momentum}, params=params)
    if isinstance(mod, nn.LayerNorm):
        if len(mod.normalized_shape) != 1:
            return None
        params = {}
        if mod.weight is not None:
            params["weight"] = mod.weight.detach().clone().float()
        if mod.bias is not None:
            params["bias"] = mod.bias.detach().clone().float()
        return Node(name, "layernorm", attrs={"eps": float(mod.eps)}, params=params)
    if type(mod) in (nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d):
        return resize_node(name, mod.size, mod.scale_factor, mod.mode, mod.align_corners, None, False)
    if isinstance(mod, nn.GroupNorm):
        params = {}
        if mod.affine:
            params = {"weight": mod.weight.detach().clone().float(), "bias": mod.bias.detach().clone().float()}
        return Node(name, "groupnorm", attrs={"groups": int(mod.num_groups), "eps": float(mod.eps)}, params=params)
    kind = ACT_MODULES.get(type(mod))
    if kind is not None:
        attrs: dict[str, Any] = {"kind": kind}
        if kind == "leaky_relu":
            attrs["slope"] = float(mod.negative_slope)  # type: ignore[attr-defined]
        elif kind == "gelu":
            attrs["approximate"] = mod.approximate  # type: ignore[attr-defined]
        elif kind == "elu":
            attrs["alpha"] = float(mod.alpha)  # type: ignore[attr-defined]
        return Node(name, "act", attrs=attrs)
    if type(mod) is nn.Dropout:
        return Node(name, "identity", attrs={"p": float(mod.p)})
    if isinstance(mod, (nn.Identity, nn.Dropout1d, nn.Dropout2d)):
        return Node(name, "identity", attrs={"p": 0.0})
    if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)) and not mod.return_indices:
        nd = 1 if isinstance(mod, nn.MaxPool1d) else 2
        return pool_node(name, "max", nd, mod.kernel_size, mod.stride, mod.padding, mod.dilation,
                         mod.ceil_mode, True, None)
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d)):
        nd = 1 if isinstance(mod, nn.AvgPool1d) else 2
        div = getattr(mod, "divisor_override", None)
        return pool_node(name, "avg", nd, mod.kernel_size, mod.stride, mod.padding, 1, mod.ceil_mode,
                         mod.count_include_pad, div)
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d)):
        if getattr(mod, "return_indices", False):
            return None
        nd = 1 if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d)) else 2
        if mod.output_size is None or (isinstance(mod.output_size, tuple) and None in mod.output_size):
            return None
        mode = "max" if "Max" in type(mod).__name__ else "avg"
        return Node(name, "adaptive_pool",
                    attrs={"mode": mode, "dims": nd, "output_size": _pair(mod.output_size, nd)})
    return None


def resize_node(name: str, size: Any, scale: Any, mode: str, align_corners: Any, recompute: Any,
                antialias: Any) -> Node | None:
    """``nn.Upsample`` / ``F.interpolate`` in nearest or (bi)linear mode, else None (opaque)."""
    if mode not in ("nearest", "linear", "bilinear") or antialias or recompute:
        return None
    if (size is None) == (scale is None):
        return None
    attrs: dict[str, Any] = {"mode": mode, "align_corners": None if mode == "nearest" else bool(align_corners)}
    if size is not None:
        attrs["size"] = list(size) if isinstance(size, (list, tuple)) else size
    else:
        attrs["scale_factor"] = [float(s) for s in scale] if isinstance(scale, (list, tuple)) else float(scale)
    return Node(name, "resize", attrs=attrs)


def pool_node(name: str, mode: str, nd: int, kernel: Any, stride: Any, padding: Any, dilation: Any,
              ceil_mode: bool, count_include_pad: bool, divisor: Any) -> Node:
    k = _pair(kernel, nd)
    s = k if stride is None or stride == [] or stride == () else _pair(stride, nd)
    attrs = {"mode": mode, "dims": nd, "kernel": k, "stride": s, "padding": _pair(padding, nd),
             "dilation": _pair(dilation, nd), "ceil_mode": bool(ceil_mode),
             "count_include_pad": bool(count_include_pad), "divisor": divisor}
    return Node(name, "pool", attrs=attrs)


def function_node(name: str, node: fx.Node, kw: dict[str, Any] | None, refs: list[Any]) -> Node | None:
    """An IR node for a known function call; ``refs`` holds the tensor-valued args in order."""
    t = node.target
    kind = ACT_FUNCS.get(t)
    if kind is not None:
        attrs: dict[str, Any] = {"kind": kind}
        if kw is not None and kind == "leaky_relu":
            attrs["slope"] = float(kw.get("negative_slope", 0.01))
        if kw is not None and kind == "gelu":
            attrs["approximate"] = kw.get("approximate", "none")
        if kw is not None and kind == "elu":
            attrs["alpha"] = float(kw.get("alpha", 1.0))
        return Node(name, "act", attrs=attrs)
    if kw is None:
        return None
    if _is_stochastic_depth(t) and kw.get("training") is False:  # torchvision.ops: the identity in eval
        return Node(name, "identity", attrs={"p": 0.0})
    if t is F.interpolate:
        return resize_node(name, kw.get("size"), kw.get("scale_factor"), kw.get("mode", "nearest"),
                           kw.get("align_corners"), kw.get("recompute_scale_factor"), kw.get("antialias", False))
    if t is F.dropout or t is F.dropout2d or t is F.dropout1d:
        return Node(name, "identity", attrs={"p": float(kw.get("p", 0.5)) if t is F.dropout else 0.0})
    if t is F.max_pool2d or t is F.max_pool1d:
        if kw.get("return_indices"):
            return None
        nd = 2 if t is F.max_pool2d else 1
        return pool_node(name, "max", nd, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0),
                         kw.get("dilation", 1), kw.get("ceil_mode", False), True, None)
    if t is F.avg_pool2d or t is F.avg_pool1d:
        nd = 2 if t is F.avg_pool2d else 1
        return pool_node(name, "avg", nd, kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), 1,
                         kw.get("ceil_mode", False), kw.get("count_include_pad", True),
                         kw.get("divisor_override"))
    if t in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool1d):
        if kw.get("return_indices"):
            return None
        nd = 2 if t in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d) else 1
        mode = "max" if t in (F.adaptive_max_pool2d, F.adaptive_max_pool1d) else "avg"
        return Node(name, "adaptive_pool",
                    attrs={"mode": mode, "dims": nd, "output_size": _pair(kw["output_size"], nd)})
    return None


def _is_stochastic_depth(target: Any) -> bool:
    return (getattr(target, "__name__", "") == "stochastic_depth"
            and str(getattr(target, "__module__", "")).startswith("torchvision"))


def norm_function_node(name: str, target: Any, kw: dict[str, Any], const: Any) -> Node | None:
    """An IR node for ``F.batch_norm`` in inference form (running statistics, ``training=False``)
    or ``F.layer_norm`` over the last axis; ``const`` maps an argument to its constant tensor
    (a parameter or buffer) or None. None when the call must stay opaque."""

    def tensor(key: str) -> torch.Tensor | None:
        v = const(kw.get(key))
        return v.detach().clone().float() if isinstance(v, torch.Tensor) else None

    def optional(key: str) -> bool:  # absent, or a constant tensor
        return kw.get(key) is None or tensor(key) is not None

    if target is F.batch_norm:
        mean, var = tensor("running_mean"), tensor("running_var")
        if mean is None or var is None or kw.get("training") is not False:
            return None
        if not (optional("weight") and optional("bias")):
            return None
        params = {"running_mean": mean, "running_var": var}
        w, b = tensor("weight"), tensor("bias")
        if (w is None) != (b is None):  # the IR's batchnorm is affine in both or neither
            w = torch.ones_like(mean) if w is None else w
            b = torch.zeros_like(mean) if b is None else b
        if w is not None:
            params["weight"], params["bias"] = w, b
        return Node(name, "batchnorm", attrs={"eps": float(kw.get("eps", 1e-5)), "momentum": 0.1}, params=params)
    if target is F.group_norm:
        w, b = tensor("weight"), tensor("bias")
        if not (optional("weight") and optional("bias")) or not isinstance(kw.get("num_groups"), int):
            return None
        params = {}
        if w is not None or b is not None:
            c = (w if w is not None else b).shape[0]  # type: ignore[union-attr]
            params = {"weight": torch.ones(c) if w is None else w, "bias": torch.zeros(c) if b is None else b}
        return Node(name, "groupnorm", attrs={"groups": kw["num_groups"], "eps": float(kw.get("eps", 1e-5))},
                    params=params)
    if target is F.layer_norm:
        shape = kw.get("normalized_shape")
        if not isinstance(shape, (list, tuple)) or len(shape) != 1:
            return None
        if not (optional("weight") and optional("bias")):
            return None
        params = {k: t for k in ("weight", "bias") if (t := tensor(k)) is not None}
        return Node(name, "layernorm", attrs={"eps": float(kw.get("eps", 1e-5))}, params=params)
    return None


def index_items(index: Any, shape: tuple[int, ...], axis: int | None) -> list[Any] | None:
    """``x[index]`` as one item per dim of ``x``: ``None`` (the whole dim), an int (the dim is
    removed) or ``(start, stop, step)``; None when the index is not of that form, touches the
    batch dim, or does not keep the neuron axis whole (those stay opaque)."""
    idx = list(index) if isinstance(index, tuple) else [index]
    if sum(i is Ellipsis for i in idx) > 1 or any(i is None or isinstance(i, (torch.Tensor, list, bool)) for i in idx):
        return None
    if Ellipsis in idx:
        k = idx.index(Ellipsis)
        idx = idx[:k] + [slice(None)] * (len(shape) - len(idx) + 1) + idx[k + 1:]
    if len(idx) > len(shape):
        return None
    idx += [slice(None)] * (len(shape) - len(idx))
    items: list[Any] = []
    for d, (i, n) in enumerate(zip(idx, shape, strict=True)):
        if isinstance(i, slice):
            if not all(v is None or isinstance(v, int) for v in (i.start, i.stop, i.step)):
                return None
            r = i.indices(n)
            items.append(None if r == (0, n, 1) else r)
        elif isinstance(i, int):
            if not -n <= i < n:
                return None
            items.append(i % n)
        else:
            return None
        if items[-1] is not None and (d == 0 or (d == axis and not (isinstance(i, slice) and items[-1][2] == 1))):
            return None  # the batch dim stays whole; the neuron axis whole or a contiguous range
    return items


def is_attention_module(m: nn.Module) -> bool:
    """Self-attention modules nestir rebuilds as q/k/v projections, an ``attention`` node and an
    output projection (traced as leaves): ``nn.MultiheadAttention`` and timm-style ``Attention``
    (``qkv`` and ``proj`` linears, ``num_heads``). The frontend checks the rebuilt computation
    against the module's recorded output and keeps the module opaque where they differ."""
    if isinstance(m, nn.MultiheadAttention):
        return True
    return (isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "proj", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int) and getattr(m, "gate", None) is None
            and all(isinstance(getattr(m, a, nn.Identity()), nn.Identity) for a in ("q_norm", "k_norm", "norm")))


AttentionParts = tuple[list[tuple[torch.Tensor, torch.Tensor | None]], tuple[torch.Tensor, torch.Tensor | None], int,
                       float]


def attention_parts(m: nn.Module, args: tuple, kwargs: dict, same_input: bool) -> AttentionParts | None:
    """((q, k, v) weights and biases, output projection, heads, scale) of a self-attention call,
    or None where the call is not plain self-attention (masks, cross-attention, extra terms)."""
    if isinstance(m, nn.MultiheadAttention):
        extra = {k: v for k, v in kwargs.items() if k not in ("need_weights", "average_attn_weights")}
        if (not same_input or len(args) != 3 or any(v not in (None, False) for v in extra.values())
                or not m.batch_first or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn):
            return None
        w, b = m.in_proj_weight, m.in_proj_bias
        e = m.embed_dim
        qkv = [(w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]) for i in range(3)]
        return qkv, (m.out_proj.weight, m.out_proj.bias), m.num_heads, float(m.head_dim ** -0.5)
    if len(args) != 1 or any(v not in (None, False) for v in kwargs.values()):
        return None
    w, b = m.qkv.weight, m.qkv.bias  # type: ignore[union-attr]
    e = w.shape[0] // 3
    qkv = [(w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]) for i in range(3)]
    heads = m.num_heads
    scale = float(getattr(m, "scale", (e // heads) ** -0.5))  # type: ignore[operator]
    return qkv, (m.proj.weight, m.proj.bias), heads, scale  # type: ignore[union-attr,return-value]


SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind"}
SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}


def split_dim(method: str, args: tuple, kwargs: dict, nd: int) -> int | None:
    """The dim a chunk / split / unbind call cuts (its args after the tensor), or None."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) if method != "unbind" else \
        kwargs.get("dim", args[0] if args else 0)
    return int(dim) % nd if isinstance(dim, int) else None


PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}
PERMUTE_FUNCS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}


def permute_dims(method: str, nd: int, args: tuple) -> list[int] | None:
    """The full permutation of a permute / transpose call with ``args`` after the tensor, or
    None when it is not a constant permutation that keeps the batch dim first."""
    try:
        if method == "permute":
            dims = list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
            dims = [int(d) % nd for d in dims]
        else:
            a, b = (int(d) % nd for d in args)
            dims = list(range(nd))
            dims[a], dims[b] = dims[b], dims[a]
    except (TypeError, ValueError, IndexError):
        return None
    if sorted(dims) != list(range(nd)) or dims[0] != 0:
        return None
    return dims


def is_param_ref(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and not isinstance(value, fx.Proxy)


def opaque_node(name: str, node: fx.Node, fn: Any, kind: str, args: Any, kwargs: Any, label: str) -> Node:
    if isinstance(fn, nn.Module):
        fn = copy.deepcopy(fn)
    return Node(name, "opaque", attrs={"fn": fn, "kind": kind, "args": args, "kwargs": kwargs, "label": label})


def target_label(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    t = node.target
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__name__', repr(t))}".lstrip(".")
