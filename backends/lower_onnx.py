"""Lowering to ONNX: each IR op becomes ONNX nodes directly, with compact dense initializers, as
its op definition says (:meth:`nestir.ir.opdefs.OpDef.to_onnx`); this module walks the graph.

Graphs with opaque nodes go through ``torch.onnx.export`` of the torch lowering instead."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from nestir.backends.lower_torch import lower_torch, prepare
from nestir.ir.errors import LoweringError
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Fx, Op
from nestir.ir.opdefs import opdef
from nestir.ir.serialize import atomic_write

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


def _emit(e: _Emitter, n: Node, g: Graph, env: dict[str, str]) -> str:
    return opdef(n.op).to_onnx(e, n, [env[i] for i in n.inputs], g)


def build_model(g: Graph, opset: int = 18) -> onnx.ModelProto:
    e = _Emitter(opset)
    env: dict[str, str] = {}
    inputs, outputs = [], []
    for n in g:
        if n.op == Op.INPUT:
            name = "input" if len(g.inputs) == 1 else n.name
            e.names.add(name)
            env[n.name] = name
            dims = ["batch", *list((n.shape or ())[1:])]
            inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, dims))
        elif n.op == Op.OUTPUT:
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


def _export_via_torch(g: Graph, path: str, opset: int, sparse_storage: str = "auto") -> None:
    module = lower_torch(g, compact=False)
    xs = tuple(torch.zeros(2, *(n.shape or ())[1:]) for n in g.inputs)
    names = ["input"] if len(xs) == 1 else [n.name for n in g.inputs]
    batch = torch.export.Dim("batch", min=1)
    dyn = {name: {0: batch} for name in (["input"] if len(xs) == 1 else names)}
    def export() -> Any:
        return torch.onnx.export(module, xs, dynamo=True, input_names=names, dynamic_shapes=dyn,
                                 opset_version=opset, verbose=False)

    try:
        try:
            prog = export()
        except Exception:  # torch's ONNX translation of attention takes 4-D q, k, v only (NesT has 5-D):
            with _math_attention(module):  # export the opaque calls' attention as its math instead
                prog = export()
    except Exception as e:
        ops = ", ".join(n.name for n in g if n.op == Op.OPAQUE)
        raise LoweringError(f"ONNX export through torch failed for the graph with opaque node(s) {ops}: "
                            f"{str(e).splitlines()[0]}") from e
    model = prog.model_proto  # type: ignore[union-attr]
    model.ir_version = min(model.ir_version, 10)
    _save(model, path, sparse_storage)


def _sdpa_math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask: torch.Tensor | None = None,
               dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None,
               enable_gqa: bool = False) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (inference) as softmax(q k^T * scale + mask) v."""
    if enable_gqa and k.shape[-3] != q.shape[-3]:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    a = (q @ k.transpose(-2, -1)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if is_causal:
        keep = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
        a = a.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        a = a.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else a + attn_mask
    return a.softmax(-1) @ v


@contextlib.contextmanager
def _math_attention(module: torch.fx.GraphModule) -> Iterator[None]:
    """Attention written as MatMul / Softmax while exporting: the module's own attention calls
    (opaque function calls) and those inside opaque modules (``F.scaled_dot_product_attention``
    looked up when they run), so that attention of any rank exports."""
    original = F.scaled_dot_product_attention
    calls = [n for n in module.graph.nodes if n.op == Fx.CALL_FUNCTION and n.target is original]
    for n in calls:
        n.target = _sdpa_math
    module.recompile()
    F.scaled_dot_product_attention = _sdpa_math  # type: ignore[assignment]
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original
        for n in calls:
            n.target = original
        module.recompile()


# a weight is stored sparse (values + int64 linear indices: 12 bytes a non-zero instead of 4 bytes a
# weight) when that takes at most this fraction of its dense bytes, i.e. at density <= 1/4
SPARSE_STORAGE_MAX_RATIO = 0.75
SPARSE_STORAGE_MIN_ELEMENTS = 256  # small tensors (biases, scales) stay dense


def store_sparse(model: onnx.ModelProto) -> int:
    """Move the float initializers that are mostly zeros (pruned weights) to the graph's
    ``sparse_initializer`` (ONNX ``SparseTensorProto``): the file then grows with the non-zero
    weights. onnxruntime densifies them when it loads the model, so inference runs as before and
    only the file and its load differ. Returns how many initializers moved."""
    keep, moved = [], 0
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT or np.prod(t.dims) < SPARSE_STORAGE_MIN_ELEMENTS:
            keep.append(t)
            continue
        arr = numpy_helper.to_array(t)
        flat = arr.reshape(-1)
        idx = np.flatnonzero(flat)
        if 12 * idx.size > SPARSE_STORAGE_MAX_RATIO * 4 * flat.size:
            keep.append(t)
            continue
        values = numpy_helper.from_array(flat[idx].astype(np.float32), t.name)
        indices = numpy_helper.from_array(idx.astype(np.int64), t.name + "_indices")
        model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, list(arr.shape)))
        moved += 1
    if moved:
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return moved


def _save(model: onnx.ModelProto, path: str, sparse_storage: str = "auto") -> None:
    if sparse_storage == "auto":
        store_sparse(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), "?")
        raise LoweringError(f"the ONNX model fails onnx's checker at opset {opset}: {str(e).splitlines()[0]} "
                            "(the default opset 18 is supported)") from None
    atomic_write(path, lambda tmp: onnx.save(model, tmp))


def lower_onnx(graph: Graph, path: str, *, compact: bool = True, opset: int = 18,
               sparse_storage: str = "auto") -> None:
    """Write ``graph`` as an ONNX file (input ``input``, dynamic batch, checker-valid).

    ``sparse_storage``: ``"auto"`` stores each weight that is at least three quarters zeros as an
    ONNX sparse initializer (the file follows the non-zero weights; onnxruntime densifies it at
    load), ``"never"`` stores every weight dense (for consumers that do not read sparse
    initializers)."""
    if sparse_storage not in ("auto", "never"):
        raise LoweringError(f"sparse_storage must be 'auto' or 'never', got {sparse_storage!r}")
    g = prepare(graph, compact)
    if any(n.op == Op.OPAQUE for n in g):
        return _export_via_torch(g, path, opset, sparse_storage)
    _save(build_model(g, opset), path, sparse_storage)
