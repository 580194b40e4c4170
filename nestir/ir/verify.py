"""The verifier: checks every IR invariant and names the node that breaks one."""

from __future__ import annotations

import torch

from nestir.ir.errors import VerifyError
from nestir.ir.graph import Graph, Node
from nestir.ir.groups import analyze
from nestir.ir.kinds import Op
from nestir.ir.opdefs import OPS, evaluate, opdef


def verify(graph: Graph, *, check_values: bool = True) -> None:
    """Raise :class:`VerifyError` naming the first node that breaks an invariant.

    Checks: known ops, topological order and no dangling uses, one output node, parameter and
    mask shapes and dtypes, every stored shape against shape inference, neuron-group widths,
    and (``check_values``) finite parameters."""
    from nestir.ir.checks import require_graph

    require_graph(graph, "nestir.ir.verify")
    seen: set[str] = set()
    nodes = list(graph)
    if not nodes or nodes[-1].op != Op.OUTPUT:
        raise VerifyError(nodes[-1].name if nodes else "<graph>", "the output node must come last")
    if sum(n.op == Op.OUTPUT for n in nodes) != 1:
        raise VerifyError("<graph>", "graph must have exactly one output node")
    if not graph.inputs:
        raise VerifyError("<graph>", "graph has no input node")
    for n in nodes:
        if n.op not in OPS:
            raise VerifyError(n.name, f"unknown op '{n.op}'")
        for i in n.inputs:
            if i not in graph:
                raise VerifyError(n.name, f"uses '{i}', which is not in the graph")
            if i not in seen:
                raise VerifyError(n.name, f"uses '{i}' before it is defined (cycle or bad order)")
        seen.add(n.name)
        _check_params(graph, n, check_values)
        _check_shape(graph, n)
    _check_groups(graph)


def _fail(n: Node, msg: str) -> VerifyError:
    return VerifyError(n.name, msg)


def _finite(t: torch.Tensor) -> bool:
    """All entries finite: one reduction (NaN and inf propagate into the sum); the exact check only
    where the sum is not finite (it may overflow on finite entries)."""
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _check_params(graph: Graph, n: Node, check_values: bool) -> None:
    p = n.params
    for k, t in p.items():
        if not isinstance(t, torch.Tensor):
            raise _fail(n, f"param '{k}' is not a tensor")
        if check_values and t.is_floating_point() and not _finite(t):
            raise _fail(n, f"param '{k}' has NaN or infinite entries")
    why = opdef(n.op).check(graph, n)
    if why:
        raise _fail(n, why)


def _check_shape(graph: Graph, n: Node) -> None:
    if not opdef(n.op).shaped:  # no shape rule: their values are given
        return
    srcs = [graph[i] for i in n.inputs]
    if any(s.shape is None for s in srcs) or n.shape is None:
        raise _fail(n, "a tensor op needs known input and output shapes")
    key = (n.op, repr(n.attrs), tuple(s.shape for s in srcs), n.shape, n.axis,
           tuple((k, tuple(t.shape), t.dtype) for k, t in n.params.items()))
    if key in _SHAPES_OK:  # the same op on the same shapes passed before: shape inference is pure
        return
    meta = [torch.empty(s.shape, device="meta") for s in srcs]  # type: ignore[arg-type]
    params = {k: torch.empty(t.shape, dtype=t.dtype, device="meta") for k, t in n.params.items()}
    if "weight" in params and "mask" in params:
        params.pop("mask")
    try:
        out = evaluate(n, meta, params)
    except Exception as e:
        raise _fail(n, f"does not compute on inputs of shape {[s.shape for s in srcs]}: "
                       f"{str(e).splitlines()[0]}") from None
    if tuple(out.shape) != n.shape:
        raise _fail(n, f"stored shape {n.shape} but its inputs give {tuple(out.shape)}")
    if n.axis is not None and not 0 <= n.axis < len(n.shape):
        raise _fail(n, f"neuron axis {n.axis} out of range for shape {n.shape}")
    if len(_SHAPES_OK) > 20_000:
        _SHAPES_OK.clear()
    _SHAPES_OK.add(key)


_SHAPES_OK: set[tuple] = set()  # signatures of nodes whose stored shape inference confirmed


def _check_groups(graph: Graph) -> None:
    info = analyze(graph)
    for g in info.groups.values():
        for name in g.producers:
            w = graph[name].params["weight"].shape[0]
            if w != g.width:
                raise VerifyError(name, f"produces {w} neurons but its group {g.id} has width {g.width}")
    for name, lay in info.layouts.items():
        if lay is None:
            continue
        n = graph[name]
        total = sum(info.groups[g].width * r for g, r in lay)
        if n.width != total:
            raise VerifyError(name, f"width {n.width} does not match its neuron groups ({total})")
