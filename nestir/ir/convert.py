"""Rules that turn one torch.fx node into one IR node (or mark it opaque)."""

from __future__ import annotations

import copy
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from nestir.ir.graph import Node
from nestir.ir.kinds import Fx

BINARY_FUNCS: dict[Any, str] = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.sub: "sub", operator.isub: "sub",
    torch.sub: "sub", operator.mul: "mul", operator.imul: "mul", torch.mul: "mul",
    operator.truediv: "div", operator.itruediv: "div", torch.div: "div",
}
BINARY_METHODS = {"add": "add", "add_": "add", "sub": "sub", "sub_": "sub", "mul": "mul", "mul_": "mul",
                   "div": "div", "div_": "div"}
IDENTITY_METHODS = {"contiguous", "clone"}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "reshape_as", "view_as"}
RESHAPE_FUNCS = {torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze}


def _pair(v: Any, nd: int) -> tuple[int, ...]:
    if isinstance(v, (tuple, list)):
        return tuple(int(x) for x in v)
    return (int(v),) * nd


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


_FUSED = ("qkv", "to_qkv", "qkv_proj", "in_proj", "Wqkv")  # one linear computing q, k and v
_SEPARATE = (("q", "k", "v"), ("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("to_q", "to_k", "to_v"),
             ("wq", "wk", "wv"))
_OUT = ("proj", "out_proj", "to_out", "o_proj", "out", "wo", "c_proj")
_HEADS = ("num_heads", "heads", "n_heads", "num_attention_heads", "n_head", "nhead")
_EXTRAS = ("q_norm", "k_norm")  # anything there but an identity changes the computation


def _linear(m: nn.Module, name: str) -> nn.Linear | None:
    """``m.name`` as a linear layer: a ``Linear``, or a ``Sequential`` of one ``Linear`` and
    dropout / identity layers (an output projection written ``nn.Sequential(nn.Linear, nn.Dropout)``)."""
    sub = getattr(m, name, None)
    if isinstance(sub, nn.Sequential):
        lins = [c for c in sub if isinstance(c, nn.Linear)]
        rest = [c for c in sub if not isinstance(c, (nn.Linear, nn.Dropout, nn.Identity))]
        return lins[0] if len(lins) == 1 and not rest else None
    return sub if isinstance(sub, nn.Linear) else None


AttentionLayout = tuple[list[nn.Linear], nn.Linear, int, "nn.LayerNorm | None"]


def _attention_layout(m: nn.Module) -> AttentionLayout | None:
    """([qkv] or [q, k, v] linears, output linear, heads, pre-norm) of a module that looks like
    self-attention by its attributes (timm's ``Attention``, lucidrains-style ``norm`` /
    ``to_qkv`` / ``to_out``, separate ``query`` / ``key`` / ``value`` or ``q_proj`` / ...
    projections)."""
    heads = next((getattr(m, a) for a in _HEADS if isinstance(getattr(m, a, None), int)), None)
    out = next((lin for a in _OUT if (lin := _linear(m, a)) is not None), None)
    norm = getattr(m, "norm", None)
    if isinstance(norm, nn.Identity):
        norm = None
    if heads is None or heads < 1 or out is None or getattr(m, "gate", None) is not None or \
            any(not isinstance(getattr(m, a, nn.Identity()), nn.Identity) for a in _EXTRAS) or \
            not (norm is None or isinstance(norm, nn.LayerNorm)):
        return None
    fused = next((lin for a in _FUSED if (lin := _linear(m, a)) is not None), None)
    if fused is not None:
        return [fused], out, heads, norm
    for names in _SEPARATE:
        lins = [_linear(m, a) for a in names]
        if all(lin is not None for lin in lins):
            return lins, out, heads, norm  # type: ignore[return-value]
    return None


def is_attention_module(m: nn.Module) -> bool:
    """Self-attention modules nestir rebuilds as q/k/v projections, an ``attention`` node and an
    output projection (traced as leaves): ``nn.MultiheadAttention`` and modules that look like
    self-attention by their attributes (:func:`_attention_layout`). The frontend checks the
    rebuilt computation against the module's recorded output; one that differs is traced
    through instead."""
    return isinstance(m, nn.MultiheadAttention) or _attention_layout(m) is not None


_BIAS_METHODS = ("_get_rel_pos_bias", "get_rel_pos_bias", "get_relative_position_bias", "_get_relative_position_bias",
                 "get_attention_biases")


def attention_biases(m: nn.Module, heads: int, tokens: int) -> list[torch.Tensor]:
    """Candidate per-head logit biases of an attention module: what its relative-position-bias
    method returns (timm's ``_get_rel_pos_bias()``, ``get_attention_biases(device)``), as
    (heads, tokens, tokens). The frontend keeps one only where it reproduces the module."""
    out = []
    for name in _BIAS_METHODS:
        fn = getattr(m, name, None)
        if not callable(fn):
            continue
        for args in ((), (torch.device("cpu"),)):
            try:
                with torch.no_grad():
                    b = fn(*args)
            except Exception:
                continue
            if isinstance(b, torch.Tensor) and b.numel() == heads * tokens * tokens:
                out.append(b.detach().reshape(heads, tokens, tokens).float().clone())
            break
    return out


AttentionParts = tuple[list[tuple[torch.Tensor, torch.Tensor | None]], tuple[torch.Tensor, torch.Tensor | None], int,
                       float, "nn.LayerNorm | None"]


def attention_parts(m: nn.Module, args: tuple, kwargs: dict, same_input: bool) -> AttentionParts | None:
    """((q, k, v) weights and biases, output projection, heads, scale, pre-norm) of a
    self-attention call, or None where the call is not plain self-attention (masks,
    cross-attention, extra terms)."""
    if isinstance(m, nn.MultiheadAttention):
        extra = {k: v for k, v in kwargs.items() if k not in ("need_weights", "average_attn_weights")}
        if (not same_input or len(args) != 3 or any(not (v is None or v is False) for v in extra.values())
                or not m.batch_first or not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn):
            return None
        w, b = m.in_proj_weight, m.in_proj_bias
        e = m.embed_dim
        qkv = [(w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]) for i in range(3)]
        return qkv, (m.out_proj.weight, m.out_proj.bias), m.num_heads, float(m.head_dim ** -0.5), None
    layout = _attention_layout(m)
    if layout is None or len(args) != 1 or any(not (v is None or v is False) for v in kwargs.values()):
        return None
    lins, out, heads, norm = layout
    if len(lins) == 1:
        w, b = lins[0].weight, lins[0].bias
        e = w.shape[0] // 3
        qkv = [(w[i * e:(i + 1) * e], None if b is None else b[i * e:(i + 1) * e]) for i in range(3)]
        if b is None and isinstance(getattr(m, "q_bias", None), torch.Tensor) and \
                isinstance(getattr(m, "v_bias", None), torch.Tensor):  # BEiT: q and v biases, none for k
            qkv = [(qkv[0][0], m.q_bias), (qkv[1][0], None), (qkv[2][0], m.v_bias)]  # type: ignore[list-item]
    else:
        qkv = [(lin.weight, lin.bias) for lin in lins]
    e = qkv[0][0].shape[0]
    scale = getattr(m, "scale", None)
    scale = float(scale) if isinstance(scale, (int, float)) else (e // heads) ** -0.5
    return qkv, (out.weight, out.bias), heads, scale, norm


def flat(a: Any) -> list[Any]:
    """The leaves of nested lists, tuples and dicts (call arguments)."""
    if isinstance(a, (list, tuple)):
        return [y for x in a for y in flat(x)]
    if isinstance(a, dict):
        return [y for x in a.values() for y in flat(x)]
    return [a]


SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind"}
SPLIT_FUNCS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}


def split_dim(method: str, args: tuple, kwargs: dict, nd: int) -> int | None:
    """The dim a chunk / split / unbind call cuts (its args after the tensor), or None."""
    dim = kwargs.get("dim", args[1] if len(args) > 1 else 0) if method != "unbind" else \
        kwargs.get("dim", args[0] if args else 0)
    return int(dim) % nd if isinstance(dim, int) else None


PERMUTE_METHODS = {"permute", "transpose", "swapaxes", "swapdims"}
PERMUTE_FUNCS = {torch.permute, torch.transpose, torch.swapaxes, torch.swapdims}


def permute_dims(method: str, nd: int, args: tuple, batch_first: bool = True) -> list[int] | None:
    """The full permutation of a permute / transpose call with ``args`` after the tensor, or
    None when it is not a constant permutation (that keeps the batch dim first)."""
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
    if sorted(dims) != list(range(nd)) or (batch_first and dims[0] != 0):
        return None
    return dims


def opaque_node(name: str, node: fx.Node, fn: Any, kind: str, args: Any, kwargs: Any, label: str) -> Node:
    if isinstance(fn, nn.Module):
        fn = copy.deepcopy(fn)
    if kind == "method" and fn == "view" and not any(isinstance(a, torch.dtype) for a in flat(args)):
        # the same shape change, whatever the strides: nestir's own ops may lay out their
        # outputs differently from the model's (a view after an attention would fail)
        fn = "reshape"
    return Node(name, "opaque", attrs={"fn": fn, "kind": kind, "args": args, "kwargs": kwargs, "label": label})


def target_label(node: fx.Node, root: nn.Module) -> str:
    if node.op == Fx.CALL_MODULE:
        return type(root.get_submodule(str(node.target))).__name__
    if node.op == Fx.CALL_METHOD:
        return f"Tensor.{node.target}"
    t = node.target
    mod = getattr(t, "__module__", None) or ""
    return f"{mod}.{getattr(t, '__name__', repr(t))}".lstrip(".")
