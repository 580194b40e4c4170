"""The pass-contract checker: run a pass on a copy of a graph and assert everything it declares."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch

from nestir.ir.errors import NestirError, PassContractError, PassError
from nestir.ir.graph import Graph
from nestir.ir.kinds import Op
from nestir.passes import resolve
from nestir.passinfra.base import Pass, PassContext, PassManager, PassResult
from nestir.passinfra.contracts import EFFECTS, check_effect, live_state
from nestir.passinfra.contracts import where as where_of


# -- running a graph -----------------------------------------------------------------------------
def _inputs(x: Any) -> tuple[torch.Tensor, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _numpy(v: Any) -> list[np.ndarray]:
    vs = v if isinstance(v, (tuple, list)) else (v,)
    return [t.detach().float().cpu().numpy() for t in vs]


def _one(outs: list[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    return outs[0] if len(outs) == 1 else outs


def _ir(graph: Graph, x: Any) -> list[np.ndarray]:
    from nestir.ir.interpreter import IRModule

    with torch.no_grad():
        return _numpy(IRModule(graph.copy().to("cpu")).eval()(*(t.cpu() for t in _inputs(x))))


def _torch(graph: Graph, x: Any) -> list[np.ndarray]:
    with torch.no_grad():
        return _numpy(graph.to_torch().eval()(*(t.cpu() for t in _inputs(x))))


def _onnx(graph: Graph, x: Any) -> list[np.ndarray]:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.onnx")
        graph.to_onnx(path)
        sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {i.name: t.detach().cpu().numpy() for i, t in zip(sess.get_inputs(), _inputs(x), strict=True)}
        return sess.run(None, feed)


def run_ir(graph: Graph, x: Any) -> np.ndarray | list[np.ndarray]:
    """The output of ``graph`` on inputs ``x`` (a tensor or a tuple of tensors) from nestir's IR
    executor, on the CPU, as an array (a list of arrays when the model has several outputs)."""
    return _one(_ir(graph, x))


def run_torch(graph: Graph, x: Any) -> np.ndarray | list[np.ndarray]:
    """The output of ``graph.to_torch()`` (the compact lowered module) on ``x``, as :func:`run_ir`."""
    return _one(_torch(graph, x))


def onnx_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def run_onnx(graph: Graph, x: Any) -> np.ndarray | list[np.ndarray]:
    """The output of ``graph.to_onnx(...)`` run in onnxruntime on the CPU, as :func:`run_ir`."""
    return _one(_onnx(graph, x))


def _close(a: list[np.ndarray], b: list[np.ndarray], atol: float, rtol: float) -> str | None:
    """None when every output agrees within tolerance (relative to the output's scale), else why not."""
    if len(a) != len(b):
        return f"{len(a)} outputs against {len(b)}"
    for k, (u, v) in enumerate(zip(a, b, strict=True)):
        if u.shape != v.shape:
            return f"output {k} has shape {u.shape} against {v.shape}"
        scale = max(1.0, float(np.abs(v).max(initial=0.0)))
        err = np.abs(u.astype(np.float64) - v.astype(np.float64))
        bad = err > atol * scale + rtol * np.abs(v)
        if bad.any():
            return f"output {k} differs by up to {float(err.max()):.3g} ({int(bad.sum())} of {bad.size} entries " \
                   f"beyond atol={atol:g}, rtol={rtol:g})"
    return None


# -- comparing graphs ----------------------------------------------------------------------------
def _tensor_state(n: Any, key: str) -> torch.Tensor:
    t = n.params[key]
    if key == "weight" and "mask" in n.params:
        return (t * n.params["mask"]).detach().cpu()  # dormant weights do not compute
    return t.detach().cpu()


def _diff(a: Graph, b: Graph) -> str | None:
    """The first difference between two graphs that changes what they are (structure, live
    weights, masks, other parameters, attributes), or None."""
    if list(a.nodes) != list(b.nodes):
        gone = [k for k in a.nodes if k not in b.nodes]
        new = [k for k in b.nodes if k not in a.nodes]
        return f"nodes differ (removed {gone[:3]}, added {new[:3]})" if gone or new else "node order differs"
    for n in a:
        m = b[n.name]
        if (n.op, n.inputs, n.shape, n.axis) != (m.op, m.inputs, m.shape, m.axis):
            return f"node '{n.name}' changed (op, inputs, shape or axis)"
        if n.op != Op.OPAQUE:
            try:
                same = n.attrs == m.attrs
            except Exception:  # tensors in attrs: compare their reprs
                same = repr(n.attrs) == repr(m.attrs)
            if not same:
                return f"node '{n.name}' attributes changed: {n.attrs} -> {m.attrs}"
        if set(n.params) != set(m.params):
            return f"node '{n.name}' parameters changed: {sorted(n.params)} -> {sorted(m.params)}"
        for k in n.params:
            u, v = _tensor_state(n, k), _tensor_state(m, k)
            if u.shape != v.shape or u.dtype != v.dtype or not torch.equal(u, v):
                return f"node '{n.name}' {k} changed"
    return None


def _no_data(p: Pass, where: str, graph: Graph, ctx: PassContext) -> None:
    """Without data a pass that scores must refuse with a PassError that names it (or find nothing
    eligible and change nothing); no pass may fail with anything but a clear nestir error."""
    g = graph.copy()
    empty = PassContext(data=[], loss=ctx.loss, device=ctx.device, seed=ctx.seed)
    label = p.name or type(p).__name__
    try:
        res = p.run(g, empty)
    except NestirError as e:
        if label not in str(e):
            raise PassContractError(where, f"without data it raised {type(e).__name__} that does not name the "
                                           f"pass: {e}") from e
        return
    except Exception as e:
        hint = "declares needs_data but" if p.needs_data else "without data it"
        raise PassContractError(where, f"{hint} raised {type(e).__name__}: {e}; a pass that scores must call "
                                       "ctx.require_data(self.name), which raises a clear PassError") from e
    if p.needs_data and isinstance(res, PassResult) and res.modified:
        raise PassContractError(where, "declares needs_data but changed the graph without any data")


def _flatten(p: Any) -> list[Pass]:
    if isinstance(p, PassManager):
        return [q for inner in p.passes for q in _flatten(inner)]
    if isinstance(p, Pass):
        return [p]
    return [q for item in resolve(p) for q in _flatten(item)]


def check_pass(
    p: Pass | str | Iterable[Pass | str],
    graph: Graph,
    ctx: PassContext | None = None,
    x: Any = None,
    *,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    onnx: bool | None = None,
    deterministic: bool = True,
    no_data: bool = True,
) -> PassResult:
    """Run pass ``p`` on a copy of ``graph`` and assert its declared contract; returns its
    :class:`~nestir.passes.PassResult` (``graph`` is left untouched).

    ``p`` is a pass object, a spec string (``"magnitude-prune:fraction=0.3"``), a
    :class:`~nestir.passes.PassManager` or a list of specs and passes: a pipeline is checked pass
    by pass, each on the previous one's output, and the result is the last pass's graph with
    ``modified`` true when any pass modified it. ``ctx`` defaults to a context whose data is
    one batch ``(x, labels)`` (:func:`~nestir.testing.batch_for` when ``x`` is None too); ``x``
    defaults to the inputs of the context's first batch. The data must be re-iterable.

    Asserted for every pass (a failure raises :class:`PassContractError`, an ``AssertionError``
    naming the pass and the passes before it):

    - it returns a ``PassResult`` whose graph verifies (:func:`nestir.verify`);
    - its declared ``effect``: ``"grow"`` removes no live connection, partial-area position,
      neuron or layer; ``"prune"`` adds none; ``"neutral"`` does neither. Masks are compared
      entry by entry, carried through the pass's journaled edits (so a resize that bypasses
      :mod:`nestir.ir.edit` is caught too);
    - ``modified`` is honest: false exactly when the graph is unchanged;
    - ``preserves_function``: the IR's outputs on ``x`` are unchanged within ``atol``/``rtol``
      (relative to the output scale);
    - data: run with no data, a ``needs_data`` pass raises a :class:`~nestir.PassError` naming
      it (or changes nothing); no pass fails with anything but a nestir error that names it
      (``no_data=False`` skips this);
    - ``deterministic``: a second run with the same context gives an identical graph;
    - lowering: ``to_torch()`` computes what the IR executor computes, and so does the ONNX
      file in onnxruntime (``onnx=None``: when onnxruntime is installed).
    """
    from nestir.ir.checks import require_graph

    require_graph(graph, "check_pass")
    passes = _flatten(p)
    if not passes:
        raise PassError("check_pass: the pipeline is empty")
    try:
        graph.verify()
    except NestirError as e:
        raise PassError(f"check_pass: the graph given does not verify, before any pass ran: {e}") from e
    if ctx is None:
        from nestir.testing.strategies import batch_for

        xb, yb = batch_for(graph, n=8 if x is None else _inputs(x)[0].shape[0])
        ctx = PassContext(data=[(xb if x is None else x, yb)])
    if x is None:
        data = ctx.data if isinstance(ctx.data, (list, tuple)) else None
        if not data:
            raise PassError("check_pass: give x (the inputs to compare outputs on) when ctx.data is not a "
                            "non-empty list of (inputs, targets) batches")
        x = data[0][0]
    if onnx is None:
        onnx = onnx_available()
    g = graph.copy()
    modified, done = False, []
    res: PassResult | None = None
    for q in passes:
        where = where_of(q.spec(), done)
        res = _check_one(q, where, g, ctx, x, atol, rtol, onnx, deterministic, no_data)
        g, modified = res.graph, modified or res.modified
        done.append(q.spec())
    assert res is not None
    return res if len(passes) == 1 else PassResult(g, modified, res.info)


def _check_one(q: Pass, where: str, graph: Graph, ctx: PassContext, x: Any, atol: float, rtol: float,
               onnx: bool, deterministic: bool, no_data: bool) -> PassResult:
    if q.effect not in EFFECTS:
        raise PassContractError(where, f"declares effect {q.effect!r}; expected one of {', '.join(EFFECTS)}")
    before = graph.copy()
    live = live_state(before)
    start = len(graph.journal)
    try:
        res = q.run(graph.copy(), ctx)
    except Exception as e:
        raise PassContractError(where, f"raised {type(e).__name__}: {e}") from e
    if not isinstance(res, PassResult) or not isinstance(res.graph, Graph):
        raise PassContractError(where, f"must return PassResult(graph, modified), got {type(res).__name__}")
    out = res.graph
    try:
        out.verify()
    except NestirError as e:
        raise PassContractError(where, f"left a graph that does not verify: {e}") from e
    journal = out.journal[start:]  # what the pass's edits journaled
    check_effect(q.effect, where, live, out, journal)
    change = _diff(before, out)
    if res.modified and change is None:
        raise PassContractError(where, "returned modified=True but the graph is unchanged")
    if not res.modified and change is not None:
        raise PassContractError(where, f"returned modified=False but changed the graph: {change}")
    y_ir = _ir(out, x)
    if q.preserves_function:
        why = _close(y_ir, _ir(before, x), atol, rtol)
        if why:
            raise PassContractError(where, f"declares preserves_function but its outputs changed: {why}")
    if deterministic:
        try:
            again = q.run(before.copy(), ctx).graph
        except Exception as e:
            raise PassContractError(where, f"a second run with the same context raised {type(e).__name__}: {e}") \
                from e
        why = _diff(out, again)
        if why:
            raise PassContractError(where, f"is not deterministic: a second run with the same context (seed "
                                           f"{ctx.seed}) differs: {why}")
    if no_data:
        _no_data(q, where, before, ctx)
    y_torch = _lowered(_torch, out, x, y_ir, where, "torch", "the lowered torch module disagrees with the IR "
                       "executor", atol, rtol)
    if onnx:
        _lowered(_onnx, out, x, y_torch, where, "ONNX", "the ONNX model in onnxruntime disagrees with torch", atol,
                 rtol)
    return res


def _lowered(lower: Any, graph: Graph, x: torch.Tensor, ref: Any, where: str, target: str, disagrees: str,
             atol: float, rtol: float) -> Any:
    """``graph`` lowered by ``lower`` and run on ``x``, held to ``ref`` (a contract error otherwise)."""
    try:
        y = lower(graph, x)
    except Exception as e:
        raise PassContractError(where, f"its graph does not lower to {target}: {type(e).__name__}: {e}") from e
    why = _close(y, ref, atol, rtol)
    if why:
        raise PassContractError(where, f"{disagrees}: {why}")
    return y
