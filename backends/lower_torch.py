"""Lowering to PyTorch: a compact torch.fx GraphModule of standard layers, masks baked in."""

from __future__ import annotations

import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from nestir.errors import LoweringError
from nestir.graph import Graph, Node

from .modules import CSRLinear, PartialAreaConv

_ACT = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
        "hardswish": nn.Hardswish, "hardsigmoid": nn.Hardsigmoid}
_BINOP = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv}
# CSR is a candidate only for large, sparse layers; "auto" then times both on this machine.
# benchmarks/latency.py (784x300, batch 256): CSR lost at 50% and 20% density in every run, and
# went from 0.7x to 1.2x at 10% and from 1.05x to 2.25x at 2% between runs on a noisy machine.
CSR_MAX_DENSITY = 0.2
CSR_MIN_WEIGHTS = 50_000


def csr_is_faster(w: torch.Tensor, b: torch.Tensor | None, batch: int = 256, repeats: int = 7) -> bool:
    """Time a dense and a CSR version of the layer on a random batch; True when CSR wins."""
    import time

    dense = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    with torch.no_grad():
        dense.weight.copy_(w)
    sparse = CSRLinear(w, b)
    x = torch.rand(batch, w.shape[1])
    times: dict[str, list[float]] = {"dense": [], "csr": []}
    with torch.no_grad():
        for i in range(repeats + 1):
            for k, m in (("dense", dense), ("csr", sparse)):
                t0 = time.perf_counter()
                m(x)
                if i:  # the first round warms up
                    times[k].append(time.perf_counter() - t0)
    return sorted(times["csr"])[repeats // 2] < sorted(times["dense"])[repeats // 2]


def prepare(graph: Graph, compact: bool) -> Graph:
    """A CPU copy of ``graph``; with ``compact``, dead neurons removed and linear layers narrowed to
    the input columns they read (e.g. a crop to the live pixels)."""
    g = graph.copy().to("cpu")
    if compact:
        from nestir.compact import eliminate_dead_neurons, narrow_dead_inputs

        eliminate_dead_neurons(g)
        narrow_dead_inputs(g)
    return g


def _module(n: Node, sparse: str) -> nn.Module | None:
    p, a = n.params, n.attrs
    if n.op in ("linear", "conv"):
        w = (p["weight"] * p["mask"]).detach()
        b = p.get("bias")
        if n.op == "linear":
            candidate = w.numel() >= CSR_MIN_WEIGHTS and float(p["mask"].float().mean()) <= CSR_MAX_DENSITY
            if sparse == "always" or (sparse == "auto" and candidate and csr_is_faster(w, b)):
                return CSRLinear(w, b)
            m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
        elif "area" in p:
            return PartialAreaConv(w, b, p["area"], a["stride"], a["padding"], a["dilation"])
        else:
            cls = nn.Conv1d if w.dim() == 3 else nn.Conv2d
            m = cls(w.shape[1] * a["groups"], w.shape[0], tuple(w.shape[2:]), a["stride"], a["padding"],
                    a["dilation"], a["groups"], bias=b is not None)
        with torch.no_grad():
            m.weight.copy_(w)
            if b is not None:
                m.bias.copy_(b)  # type: ignore[union-attr]
        return m
    if n.op == "batchnorm":
        c = p["running_mean"].shape[0]
        nd = len(n.shape or ()) - 2
        m = (nn.BatchNorm1d if nd <= 1 else nn.BatchNorm2d)(c, a["eps"], a["momentum"], affine="weight" in p)
        with torch.no_grad():
            m.running_mean.copy_(p["running_mean"])  # type: ignore[union-attr]
            m.running_var.copy_(p["running_var"])  # type: ignore[union-attr]
            if "weight" in p:
                m.weight.copy_(p["weight"])
                m.bias.copy_(p["bias"])
        return m.eval()
    if n.op == "layernorm":
        c = (n.shape or ())[-1]
        m = nn.LayerNorm(c, a["eps"], elementwise_affine="weight" in p, bias="bias" in p)
        with torch.no_grad():
            if "weight" in p:
                m.weight.copy_(p["weight"])
            if "bias" in p:
                m.bias.copy_(p["bias"])
        return m
    if n.op == "groupnorm":
        c = (n.shape or ())[1]
        m = nn.GroupNorm(a["groups"], c, a["eps"], affine="weight" in p)
        with torch.no_grad():
            if "weight" in p:
                m.weight.copy_(p["weight"])
                m.bias.copy_(p["bias"])
        return m
    if n.op == "act":
        k = a["kind"]
        if k in _ACT:
            return _ACT[k]()
        if k == "leaky_relu":
            return nn.LeakyReLU(a.get("slope", 0.01))
        if k == "gelu":
            return nn.GELU(a.get("approximate", "none"))
        if k == "elu":
            return nn.ELU(a.get("alpha", 1.0))
    if n.op == "identity" and a.get("p", 0.0) > 0:
        return nn.Dropout(a["p"])
    if n.op == "pool":
        nd = a["dims"]
        if a["mode"] == "max":
            cls = nn.MaxPool1d if nd == 1 else nn.MaxPool2d
            return cls(a["kernel"], a["stride"], a["padding"], a["dilation"], ceil_mode=a["ceil_mode"])
        if nd == 1:
            return nn.AvgPool1d(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
        return nn.AvgPool2d(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"],
                            a["divisor"])
    if n.op == "adaptive_pool":
        nd, mx = a["dims"], a["mode"] == "max"
        cls = {(1, False): nn.AdaptiveAvgPool1d, (2, False): nn.AdaptiveAvgPool2d,
               (1, True): nn.AdaptiveMaxPool1d, (2, True): nn.AdaptiveMaxPool2d}[(nd, mx)]
        return cls(a["output_size"])
    if n.op == "opaque" and a["kind"] == "module":
        return a["fn"]
    return None


def lower_torch(graph: Graph, *, compact: bool = True, sparse: str = "never") -> fx.GraphModule:
    """A plain ``torch.fx.GraphModule`` computing the same function as ``graph`` (eval mode).

    Masks are baked into the weights; with ``compact`` neurons without live inputs/outputs are
    physically removed first. ``sparse``: ``"never"`` (dense layers), ``"auto"`` (for large linear
    layers at density <= 20%, whichever of dense and CSR weights times faster here), ``"always"``."""
    if sparse not in ("never", "auto", "always"):
        raise LoweringError(f"sparse must be 'never', 'auto' or 'always', got {sparse!r}")
    g = prepare(graph, compact)
    root = nn.Module()
    fg = fx.Graph()
    env: dict[str, Any] = {}
    for n in g:
        try:
            env[n.name] = _emit(n, g, fg, root, env, sparse)
        except LoweringError:
            raise
        except Exception as e:
            raise LoweringError(f"node '{n.name}' ({n.describe()}) could not be lowered to torch: {e}") from e
    gm = fx.GraphModule(root, fg, g.name)
    gm.eval()
    gm.nestir_input_shapes = [tuple(n.shape or ())[1:] for n in g.inputs]  # type: ignore[assignment]
    return gm


def _batch_of(fg: fx.Graph) -> Any:
    """The batch size of a value, read at run time (``x.size(0)``) so exports stay batch-dynamic."""
    return lambda v: fg.call_method("size", (v, 0))


def _emit(n: Node, g: Graph, fg: fx.Graph, root: nn.Module, env: dict[str, Any], sparse: str) -> Any:
    args = [env[i] for i in n.inputs]
    if n.op == "input":
        return fg.placeholder("input" if len(g.inputs) == 1 else n.name)
    if n.op == "output":
        return fg.output(args[0] if n.attrs.get("structure") == "single" else tuple(args))
    mod = _module(n, sparse)
    if mod is not None:
        root.add_module(n.name, mod)
        if n.op == "opaque":  # the call as traced: constant arguments and keywords included
            from nestir.ops import fill_template

            size = _batch_of(fg)
            return fg.call_module(n.name, tuple(fill_template(n.attrs["args"], args, size)),
                                  fill_template(n.attrs["kwargs"], args, size))
        return fg.call_module(n.name, tuple(args))
    a = n.attrs
    if n.op == "identity":
        return args[0]
    if n.op == "flatten":
        return fg.call_function(torch.flatten, (args[0], 1))
    if n.op == "reshape":
        return fg.call_method("reshape", (args[0], -1, *a["rest"]))
    if n.op == "mean":
        return fg.call_method("mean", (args[0], tuple(a["dims"])), {"keepdim": a["keepdim"]})
    if n.op == "binary":
        if len(args) == 2:
            return fg.call_function(_BINOP[a["kind"]], tuple(args))
        pair = (a["scalar"], args[0]) if a.get("scalar_first") else (args[0], a["scalar"])
        return fg.call_function(_BINOP[a["kind"]], pair)
    if n.op == "cat":
        return fg.call_function(torch.cat, (list(args),), {"dim": a["dim"]})
    if n.op == "scale":
        v = n.params["value"].movedim(0, a["dim"]) if a.get("dim") else n.params["value"]
        root.register_parameter(n.name, nn.Parameter(v.detach().clone()))
        v = fg.get_attr(n.name)
        return fg.call_function(_BINOP[a["kind"]], (v, args[0]) if a.get("first") else (args[0], v))
    if n.op == "permute":
        return fg.call_method("permute", (args[0], *a["dims"]))
    if n.op == "pad":
        return fg.call_function(F.pad, (args[0], list(a["pads"])))
    if n.op == "resize":
        kw = {k: a.get(k) for k in ("size", "scale_factor", "mode", "align_corners")}
        return fg.call_function(F.interpolate, (args[0],), kw)
    if n.op == "attention":
        heads = [fg.call_method("transpose", (fg.call_method("unflatten", (t, -1, (a["heads"], -1))), -3, -2))
                 for t in args]
        o = fg.call_function(F.scaled_dot_product_attention, tuple(heads), {"scale": a["scale"]})
        return fg.call_method("flatten", (fg.call_method("transpose", (o, -3, -2)), -2))
    if n.op == "prepend":
        v = n.params["value"].movedim(0, a["vdim"] - 1).unsqueeze(0)
        root.register_parameter(n.name, nn.Parameter(v.detach().clone()))
        sizes = (fg.call_method("size", (args[0], 0)), *([-1] * (v.dim() - 1)))
        tok = fg.call_method("expand", (fg.get_attr(n.name), *sizes))
        return fg.call_function(torch.cat, ([tok, args[0]],), {"dim": a["dim"]})
    if n.op == "index":
        from nestir.ops import index_key

        return fg.call_function(operator.getitem, (args[0], index_key(a["items"])))
    if n.op == "const":
        root.register_buffer(n.name, n.params["value"].clone())
        return fg.get_attr(n.name)
    if n.op == "slice":
        x = args[0]
        for d, s, e in zip(a["dims"], a["starts"], a["ends"], strict=True):
            x = fg.call_method("narrow", (x, d, s, e - s))
        return x
    if n.op == "gather":
        root.register_buffer(n.name, n.params["index"].clone())
        return fg.call_function(torch.index_select, (args[0], a["dim"], fg.get_attr(n.name)))
    if n.op == "opaque":
        from nestir.ops import fill_template

        size = _batch_of(fg)
        call_args = fill_template(a["args"], args, size)
        call_kwargs = fill_template(a["kwargs"], args, size)
        if a["kind"] == "method":
            return fg.call_method(a["fn"], tuple(call_args), call_kwargs)
        return fg.call_function(a["fn"], tuple(call_args), call_kwargs)
    raise LoweringError(f"node '{n.name}': no torch lowering for op '{n.op}'")



