"""Lowering to ONNX: each IR op becomes ONNX nodes directly, with compact dense initializers.

Graphs with opaque nodes go through ``torch.onnx.export`` of the torch lowering instead."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from nestir.errors import LoweringError
from nestir.graph import Graph, Node
from nestir.serialize import atomic_write

from .lower_torch import lower_torch, prepare

IR_VERSION = 8  # onnxruntime rejects the IR version newer onnx writes by default


class _Emitter:
    def __init__(self, opset: int) -> None:
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.names: set[str] = set()

    def fresh(self, base: str) -> str:
        name, i = base, 0
        while name in self.names:
            i += 1
            name = f"{base}_{i}"
        self.names.add(name)
        return name

    def const(self, base: str, value: Any, dtype: Any = np.float32) -> str:
        name = self.fresh(base)
        arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        self.inits.append(numpy_helper.from_array(arr.astype(dtype, order="C"), name))  # 0-d stays 0-d
        return name

    def op(self, op_type: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out


def _conv_attrs(a: dict[str, Any]) -> dict[str, Any]:
    pads = list(a["padding"])
    return {"strides": list(a["stride"]), "pads": pads + pads, "dilations": list(a["dilation"])}


def _act(e: _Emitter, n: Node, x: str) -> str:
    k, a, nm = n.attrs["kind"], n.attrs, n.name
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
            t = e.op("Tanh", [e.op("Mul", [inner, e.const(nm + "_k", math.sqrt(2 / math.pi))], nm + "_s")], nm + "_t")
        else:
            t = e.op("Erf", [e.op("Mul", [x, e.const(nm + "_r", 1 / math.sqrt(2))], nm + "_s")], nm + "_t")
        return e.op("Mul", [half, e.op("Add", [t, e.const(nm + "_one", 1.0)], nm + "_1p")], nm)
    raise LoweringError(f"node '{nm}': no ONNX lowering for activation '{k}'")


def _conv(e: _Emitter, n: Node, x: str) -> str:
    p, a, nm = n.params, n.attrs, n.name
    w = p["weight"] * p["mask"]
    b = p.get("bias")
    if "area" not in p:
        ins = [x, e.const(nm + "_weight", w)] + ([e.const(nm + "_bias", b)] if b is not None else [])
        return e.op("Conv", ins, nm, group=int(a["groups"]), **_conv_attrs(a))
    n_out, n_in = w.shape[:2]
    w2 = w.transpose(0, 1).reshape(n_in * n_out, 1, *w.shape[2:])
    c = e.op("Conv", [x, e.const(nm + "_pweight", w2)], nm + "_c", group=int(n_in), **_conv_attrs(a))
    spatial = list((n.shape or ())[2:])
    shape = e.const(nm + "_shape", np.array([0, n_in, n_out, *spatial]), np.int64)
    c5 = e.op("Reshape", [c, shape], nm + "_c5")
    masked = e.op("Mul", [c5, e.const(nm + "_area", p["area"].float())], nm + "_m")
    out = e.op("ReduceSum", [masked, e.const(nm + "_axes", np.array([1]), np.int64)], nm + "_sum", keepdims=0)
    if b is None:
        return out
    return e.op("Add", [out, e.const(nm + "_bias", b.reshape(-1, *([1] * len(spatial))))], nm)


def _windows(size: int, out: int) -> list[tuple[int, int]]:
    """PyTorch's adaptive pooling windows: [floor(i*size/out), ceil((i+1)*size/out))."""
    return [((i * size) // out, -((-(i + 1) * size) // out)) for i in range(out)]


def _uneven_adaptive(e: _Emitter, nm: str, x: str, spatial: list[int], outs: list[int], mode: str) -> str:
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
            parts.append(e.op("ReduceMax", [sl, e.const(f"{prefix}_{i}ax", np.array([axes[k]]), np.int64)],
                              f"{prefix}_{i}m", keepdims=1) if k == len(spatial) - 1 else cells(f"{prefix}_{i}", sl,
                                                                                                k + 1))
        if k < len(spatial) - 1:  # reduce this axis after the inner ones
            parts = [e.op("ReduceMax", [q, e.const(f"{prefix}_{i}rx", np.array([axes[k]]), np.int64)],
                          f"{prefix}_{i}r", keepdims=1) for i, q in enumerate(parts)]
        return e.op("Concat", parts, f"{prefix}_cat", axis=axes[k])

    return e.op("Identity", [cells(nm + "_w", x, 0)], nm)


def _pool(e: _Emitter, n: Node, x: str, src: Node) -> str:
    a, nm = n.attrs, n.name
    if n.op == "adaptive_pool":
        spatial = list((src.shape or ())[2:])
        outs = list(a["output_size"])
        if all(o == 1 for o in outs):
            return e.op("GlobalMaxPool" if a["mode"] == "max" else "GlobalAveragePool", [x], nm)
        if any(s % o for s, o in zip(spatial, outs, strict=True)):  # overlapping or uneven windows
            return _uneven_adaptive(e, nm, x, spatial, outs, a["mode"])
        k = [s // o for s, o in zip(spatial, outs, strict=True)]
        kind = "MaxPool" if a["mode"] == "max" else "AveragePool"
        return e.op(kind, [x], nm, kernel_shape=k, strides=k)
    pads = list(a["padding"]) * 2
    common = {"kernel_shape": list(a["kernel"]), "strides": list(a["stride"]), "pads": pads,
              "ceil_mode": int(a["ceil_mode"])}
    if a["mode"] == "max":
        return e.op("MaxPool", [x], nm, dilations=list(a["dilation"]), **common)
    if a.get("divisor"):
        raise LoweringError(f"node '{nm}': avg pooling with divisor_override has no ONNX equivalent")
    return e.op("AveragePool", [x], nm, count_include_pad=int(a["count_include_pad"]), **common)


def _resize(e: _Emitter, n: Node, x: str) -> str:
    """torch's nearest (floor of dst / scale) and (bi)linear (half-pixel or align-corners)."""
    a, nm, shape = n.attrs, n.name, n.shape or ()
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


def _attention(e: _Emitter, nm: str, xs: list[str], heads: int, scale: float) -> str:
    """(B, T, H*D) q, k, v: split heads, softmax(q k^T * scale) v, merge heads."""
    split = e.const(nm + "_heads", np.array([0, 0, heads, -1]), np.int64)
    q, k, v = (e.op("Reshape", [x, split], f"{nm}_{s}") for x, s in zip(xs, "qkv", strict=True))
    q = e.op("Transpose", [q], nm + "_qh", perm=[0, 2, 1, 3])
    k = e.op("Transpose", [k], nm + "_kt", perm=[0, 2, 3, 1])
    v = e.op("Transpose", [v], nm + "_vh", perm=[0, 2, 1, 3])
    s = e.op("Mul", [e.op("MatMul", [q, k], nm + "_qk"), e.const(nm + "_scale", np.array(scale))], nm + "_s")
    o = e.op("MatMul", [e.op("Softmax", [s], nm + "_p", axis=-1), v], nm + "_o")
    o = e.op("Transpose", [o], nm + "_ot", perm=[0, 2, 1, 3])
    return e.op("Reshape", [o, e.const(nm + "_merge", np.array([0, 0, -1]), np.int64)], nm)


def _index(e: _Emitter, nm: str, x: str, items: list) -> str:
    """Ranges as one Slice, then each int index as a Gather (last dim first: it drops the dim)."""
    ranges = [(d, i) for d, i in enumerate(items) if isinstance(i, (list, tuple))]
    if ranges:
        cols = list(zip(*[(s, t, st, d) for d, (s, t, st) in ranges], strict=True))
        big = np.iinfo(np.int64).max  # a negative step's stop of -1 means 'past index 0', not 'the last'
        stops = [-big if st < 0 and t == -1 else t for t, st in zip(cols[1], cols[2], strict=True)]
        ins = [x] + [e.const(nm + k, np.array(v), np.int64)
                     for k, v in (("_starts", cols[0]), ("_ends", stops), ("_axes", cols[3]), ("_steps", cols[2]))]
        x = e.op("Slice", ins, nm + "_slice")
    for d in sorted((d for d, i in enumerate(items) if isinstance(i, int)), reverse=True):
        x = e.op("Gather", [x, e.const(nm + "_at", np.array(items[d]), np.int64)], nm + f"_at{d}", axis=d)
    return x


def _groupnorm(e: _Emitter, n: Node, x: str) -> str:
    """GroupNorm as reshape to (N, G, -1), normalize over the last axis, reshape back, then the
    per-channel affine (opset 18's GroupNormalization has per-group scale and bias)."""
    shape, a, p, nm = n.shape or (), n.attrs, n.params, n.name
    c, g = shape[1], a["groups"]
    y = e.op("Reshape", [x, e.const(nm + "_grouped", np.array([0, g, -1]), np.int64)], nm + "_r")
    axes = e.const(nm + "_axes", np.array([2]), np.int64)
    mean = e.op("ReduceMean", [y, axes], nm + "_mean", keepdims=1)
    d = e.op("Sub", [y, mean], nm + "_d")
    var = e.op("ReduceMean", [e.op("Mul", [d, d], nm + "_d2"), axes], nm + "_var", keepdims=1)
    std = e.op("Sqrt", [e.op("Add", [var, e.const(nm + "_eps", np.array(a["eps"], np.float32))], nm + "_ve")],
               nm + "_std")
    y = e.op("Div", [d, std], nm + "_n")
    back = np.array([0, c, *shape[2:]])
    y = e.op("Reshape", [y, e.const(nm + "_shape", back, np.int64)], nm + ("_b" if "weight" in p else ""))
    if "weight" not in p:
        return y
    bshape = (c, *([1] * (len(shape) - 2)))
    y = e.op("Mul", [y, e.const(nm + "_scale", p["weight"].reshape(bshape))], nm + "_w")
    return e.op("Add", [y, e.const(nm + "_shift", p["bias"].reshape(bshape))], nm)


def _emit(e: _Emitter, n: Node, g: Graph, env: dict[str, str]) -> str:
    xs = [env[i] for i in n.inputs]
    p, a, nm = n.params, n.attrs, n.name
    if n.op == "linear":
        w = p["weight"] * p["mask"]
        if len(g[n.inputs[0]].shape or ()) == 2:
            ins = [xs[0], e.const(nm + "_weight", w)] + ([e.const(nm + "_bias", p["bias"])] if "bias" in p else [])
            return e.op("Gemm", ins, nm, transB=1)
        y = e.op("MatMul", [xs[0], e.const(nm + "_weightT", w.T)], nm + "_mm")
        return e.op("Add", [y, e.const(nm + "_bias", p["bias"])], nm) if "bias" in p else y
    if n.op == "conv":
        return _conv(e, n, xs[0])
    if n.op == "batchnorm":
        c = p["running_mean"].shape[0]
        scale = p.get("weight", torch.ones(c))
        shift = p.get("bias", torch.zeros(c))
        ins = [xs[0], e.const(nm + "_scale", scale), e.const(nm + "_shift", shift),
               e.const(nm + "_mean", p["running_mean"]), e.const(nm + "_var", p["running_var"])]
        return e.op("BatchNormalization", ins, nm, epsilon=float(a["eps"]))
    if n.op == "layernorm":
        c = (n.shape or ())[-1]
        ins = [xs[0], e.const(nm + "_scale", p.get("weight", torch.ones(c))),
               e.const(nm + "_shift", p.get("bias", torch.zeros(c)))]
        return e.op("LayerNormalization", ins, nm, axis=-1, epsilon=float(a["eps"]))
    if n.op == "groupnorm":
        return _groupnorm(e, n, xs[0])
    if n.op == "scale":
        kind = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[a["kind"]]
        v = e.const(nm + "_value", p["value"].movedim(0, a["dim"]) if a.get("dim") else p["value"])
        return e.op(kind, [v, xs[0]] if a.get("first") else [xs[0], v], nm)
    if n.op == "permute":
        return e.op("Transpose", xs, nm, perm=list(a["dims"]))
    if n.op == "index":
        return _index(e, nm, xs[0], a["items"])
    if n.op == "pad":  # F.pad's (last dim first, begin/end pairs) to ONNX's (all begins, all ends)
        nd = len(n.shape or ())
        fp = list(a["pads"])
        begins = [0, 0] + [fp[2 * (nd - 3 - i)] for i in range(nd - 2)]
        ends = [0, 0] + [fp[2 * (nd - 3 - i) + 1] for i in range(nd - 2)]
        return e.op("Pad", [xs[0], e.const(nm + "_pads", np.array(begins + ends), np.int64)], nm)
    if n.op == "resize":
        return _resize(e, n, xs[0])
    if n.op == "attention":
        return _attention(e, nm, xs, a["heads"], a["scale"])
    if n.op == "prepend":
        v = p["value"].movedim(0, a["vdim"] - 1).unsqueeze(0)
        batch = e.op("Slice", [e.op("Shape", [xs[0]], nm + "_shape")] + [e.const(nm + k, np.array([i]), np.int64)
                     for k, i in (("_b0", 0), ("_b1", 1))], nm + "_batch")
        rest = e.const(nm + "_rest", np.array(v.shape[1:]), np.int64)
        size = e.op("Concat", [batch, rest], nm + "_size", axis=0)
        tok = e.op("Expand", [e.const(nm + "_value", v), size], nm + "_tok")
        return e.op("Concat", [tok, xs[0]], nm, axis=int(a["dim"]))
    if n.op == "act":
        return _act(e, n, xs[0])
    if n.op == "identity":
        return xs[0]
    if n.op in ("pool", "adaptive_pool"):
        return _pool(e, n, xs[0], g[n.inputs[0]])
    if n.op == "flatten":
        return e.op("Flatten", xs, nm, axis=1)
    if n.op == "reshape":
        return e.op("Reshape", [xs[0], e.const(nm + "_shape", np.array([-1, *a["rest"]]), np.int64)], nm)
    if n.op == "mean":
        axes = e.const(nm + "_axes", np.array(a["dims"]), np.int64)
        return e.op("ReduceMean", [xs[0], axes], nm, keepdims=int(a["keepdim"]))
    if n.op == "binary":
        kind = {"add": "Add", "sub": "Sub", "mul": "Mul", "div": "Div"}[a["kind"]]
        if len(xs) == 1:
            s = e.const(nm + "_scalar", np.array(a["scalar"]))
            xs = [s, xs[0]] if a.get("scalar_first") else [xs[0], s]
        return e.op(kind, xs, nm)
    if n.op == "cat":
        return e.op("Concat", xs, nm, axis=int(a["dim"]))
    if n.op == "const":
        return e.const(nm, p["value"])
    if n.op == "slice":
        ins = [xs[0]] + [e.const(nm + k, np.array(a[v]), np.int64)
                         for k, v in (("_starts", "starts"), ("_ends", "ends"), ("_axes", "dims"))]
        return e.op("Slice", ins, nm)
    if n.op == "gather":
        return e.op("Gather", [xs[0], e.const(nm + "_index", p["index"], np.int64)], nm, axis=int(a["dim"]))
    raise LoweringError(f"node '{nm}' ({n.describe()}): no direct ONNX lowering for op '{n.op}'")


def build_model(g: Graph, opset: int = 18) -> onnx.ModelProto:
    e = _Emitter(opset)
    env: dict[str, str] = {}
    inputs, outputs = [], []
    for n in g:
        if n.op == "input":
            name = "input" if len(g.inputs) == 1 else n.name
            e.names.add(name)
            env[n.name] = name
            dims = ["batch", *list((n.shape or ())[1:])]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        elif n.op == "output":
            for k, i in enumerate(n.inputs):
                name = "output" if k == 0 else f"output_{k}"
                e.nodes.append(helper.make_node("Identity", [env[i]], [name], name=name))
                dims = ["batch", *list((g[i].shape or ())[1:])]
                outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        else:
            env[n.name] = _emit(e, n, g, env)
    graph = helper.make_graph(e.nodes, g.name, inputs, outputs, e.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="nestir")
    model.ir_version = IR_VERSION
    return model


def _export_via_torch(g: Graph, path: str, opset: int) -> None:
    module = lower_torch(g, compact=False)
    xs = tuple(torch.zeros(2, *(n.shape or ())[1:]) for n in g.inputs)
    names = ["input"] if len(xs) == 1 else [n.name for n in g.inputs]
    batch = torch.export.Dim("batch", min=1)
    dyn = {name: {0: batch} for name in (["input"] if len(xs) == 1 else names)}
    try:
        prog = torch.onnx.export(module, xs, dynamo=True, input_names=names, dynamic_shapes=dyn,
                                 opset_version=opset, verbose=False)
    except Exception as e:
        ops = ", ".join(n.name for n in g if n.op == "opaque")
        raise LoweringError(f"ONNX export through torch failed for the graph with opaque node(s) {ops}: "
                            f"{str(e).splitlines()[0]}") from e
    model = prog.model_proto  # type: ignore[union-attr]
    model.ir_version = min(model.ir_version, 10)
    _save(model, path)


def _save(model: onnx.ModelProto, path: str) -> None:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
        raise LoweringError(f"the ONNX model fails onnx's checker at opset {opset}: {str(e).splitlines()[0]} "
                            "(the default opset 18 is supported)") from None
    atomic_write(path, lambda tmp: onnx.save(model, tmp))


def lower_onnx(graph: Graph, path: str, *, compact: bool = True, opset: int = 18) -> None:
    """Write ``graph`` as an ONNX file (input ``input``, dynamic batch, checker-valid)."""
    g = prepare(graph, compact)
    if any(n.op == "opaque" for n in g):
        return _export_via_torch(g, path, opset)
    _save(build_model(g, opset), path)
