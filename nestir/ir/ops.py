"""Numeric helpers the op definitions (:mod:`nestir.ir.opdefs`) and the lowerings share."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from nestir.ir.errors import NestirError
from nestir.ir.graph import Node

ActFn = Callable[[torch.Tensor], torch.Tensor]


_ACTIVATIONS: dict[str, ActFn] = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "tanh": torch.tanh,
                                   "sigmoid": torch.sigmoid, "hardswish": F.hardswish, "hardsigmoid": F.hardsigmoid}


def activation(kind: str, attrs: dict[str, Any]) -> ActFn:
    """The elementwise function of an ``act`` node."""
    if kind in _ACTIVATIONS:
        return _ACTIVATIONS[kind]
    if kind == "leaky_relu":
        slope = float(attrs.get("slope", 0.01))
        return lambda x: F.leaky_relu(x, slope)
    if kind == "gelu":
        approx = attrs.get("approximate", "none")
        return lambda x: F.gelu(x, approximate=approx)
    if kind == "elu":
        alpha = float(attrs.get("alpha", 1.0))
        return lambda x: F.elu(x, alpha)
    raise NestirError(f"unknown activation '{kind}'")


def conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, attrs: dict[str, Any]) -> torch.Tensor:
    fn = F.conv1d if weight.dim() == 3 else F.conv2d
    return fn(x, weight, bias, attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"])


def partial_area_conv(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, area: torch.Tensor, attrs: dict[str, Any]
) -> torch.Tensor:
    """F_n = sum_m C[m,n] * Msk[m,n] with C[m,n] = conv(x_m, K[n,m]) (NeST Algorithm 2).

    C is computed by one grouped conv: input channel m convolved with every K[., m]."""
    if attrs["groups"] != 1:
        raise NestirError("partial-area convolution needs groups=1")
    n_out, n_in = weight.shape[:2]
    w2 = weight.transpose(0, 1).reshape(n_in * n_out, 1, *weight.shape[2:])
    fn = F.conv1d if weight.dim() == 3 else F.conv2d
    c = fn(x, w2, None, attrs["stride"], attrs["padding"], attrs["dilation"], n_in)
    c = c.view(c.shape[0], n_in, n_out, *c.shape[2:])
    out = (c * area.to(c.dtype)).sum(1)
    if bias is not None:
        out = out + bias.view(1, -1, *([1] * (out.dim() - 2)))
    return out


def pool(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    nd = a["dims"]
    if a["mode"] == "max":
        fn = F.max_pool1d if nd == 1 else F.max_pool2d
        return fn(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
    fn = F.avg_pool1d if nd == 1 else F.avg_pool2d
    if nd == 1:
        return fn(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
    return fn(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"], a["divisor"])


def adaptive_pool(x: torch.Tensor, a: dict[str, Any]) -> torch.Tensor:
    nd = a["dims"]
    if a["mode"] == "max":
        fn = F.adaptive_max_pool1d if nd == 1 else F.adaptive_max_pool2d
    else:
        fn = F.adaptive_avg_pool1d if nd == 1 else F.adaptive_avg_pool2d
    return fn(x, a["output_size"])


def binary(kind: str, a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    if kind == "add":
        return a + b  # type: ignore[operator,return-value]
    if kind == "sub":
        return a - b  # type: ignore[operator,return-value]
    if kind == "mul":
        return a * b  # type: ignore[operator,return-value]
    if kind == "div":
        return a / b  # type: ignore[operator,return-value]
    raise NestirError(f"unknown binary op '{kind}'")


def _batch(v: Any) -> Any:
    return v.shape[0]


# integer arithmetic an opaque call's arguments may apply to the batch size (``B * C``, ``B // 2``)
BATCH_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "mul": operator.mul, "add": operator.add, "sub": operator.sub, "floordiv": operator.floordiv,
    "mod": operator.mod}


def _arith(op: str, a: Any, b: Any) -> Any:
    return BATCH_ARITH[op](a, b)


def fill_template(template: Any, values: Sequence[Any], batch: Callable[[Any], Any] = _batch,
                  arith: Callable[[str, Any, Any], Any] = _arith) -> Any:
    """Replace ``("__ref__", i)`` markers in an args/kwargs template by ``values[i]``,
    ``("__batch__", i)`` markers (an int the model read from a tensor's batch dim, such as
    ``x.shape[0]``) by ``batch(values[i])`` and ``("__expr__", op, a, b)`` (integer arithmetic on
    them, ``B * C``) by ``arith(op, a, b)``, so the call follows the batch size it is run with."""
    if isinstance(template, tuple) and len(template) == 2 and template[0] == "__ref__":
        return values[template[1]]
    if isinstance(template, tuple) and len(template) == 2 and template[0] == "__batch__":
        return batch(values[template[1]])
    if isinstance(template, tuple) and len(template) == 4 and template[0] == "__expr__":
        return arith(template[1], fill_template(template[2], values, batch, arith),
                     fill_template(template[3], values, batch, arith))
    if isinstance(template, (list, tuple)):
        return type(template)(fill_template(t, values, batch, arith) for t in template)
    if isinstance(template, dict):
        return {k: fill_template(v, values, batch, arith) for k, v in template.items()}
    return template


def run_opaque(node: Node, args: Sequence[Any]) -> Any:
    a = node.attrs
    fn = a["fn"]
    call_args = fill_template(a["args"], args)
    call_kwargs = fill_template(a["kwargs"], args)
    if a["kind"] == "method":
        return getattr(call_args[0], fn)(*call_args[1:], **call_kwargs)
    return fn(*call_args, **call_kwargs)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float,
              bias: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-head scaled dot-product attention over the token axis (-2); the last axis of q, k
    and v holds ``heads`` heads of equal size, head-major. ``bias`` (heads, T, T), if given, is
    added to each head's logits (a relative position bias)."""

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.unflatten(-1, (heads, -1)).transpose(-3, -2)

    o = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=bias, scale=scale)
    return o.transpose(-3, -2).flatten(-2)


def index_key(items: Sequence[Any]) -> tuple[Any, ...]:
    """The Python index of an ``index`` node: a slice or int per dim."""
    return tuple(slice(None) if i is None else i if isinstance(i, int) else slice(*i) for i in items)


def kept_axis(src: Sequence[int], out: Sequence[int], axis: int | None, *, rebatch: bool = False) -> int | None:
    """Where a reshape from ``src`` to ``out`` (batch dim first) puts dim ``axis`` when it keeps
    it a whole dim (the dims before it and after it only merge or split among themselves:
    ``flatten(2)`` of a conv output, ``(B, N, C) -> (B, H, W, C)``), else None. ``rebatch``: the
    batch dim is among the dims before it (they hold the same elements in total)."""
    if axis is None or axis == 0:
        return None
    before, after = math.prod(src[1:axis]), math.prod(src[axis + 1:])
    for k in range(1, len(out)):
        if out[k] == src[axis] and (rebatch or math.prod(out[1:k]) == before) and math.prod(out[k + 1:]) == after:
            return k
    return None


def merged_axis(src: Sequence[int], out: Sequence[int], axis: int | None) -> tuple[int, int, int] | None:
    """Where a reshape from ``src`` to ``out`` that merges a run of dims holding dim ``axis`` into
    one dim puts it, when ``axis`` is the first or the last of the run and every other dim stays
    (Swin's patch merging: ``(B, h, w, 2, 2, C) -> (B, h, w, 4C)``): (output dim, elements of the
    run before ``axis``, after it), else None."""
    if axis is None or axis == 0 or len(out) >= len(src):
        return None
    m = len(src) - len(out) + 1  # the run's length
    for k in range(1, len(out)):
        if k <= axis < k + m and tuple(src[:k]) == tuple(out[:k]) and tuple(src[k + m:]) == tuple(out[k + 1:]) \
                and out[k] == math.prod(src[k:k + m]) and axis in (k, k + m - 1):
            return k, math.prod(src[k:axis]), math.prod(src[axis + 1:k + m])
    return None
