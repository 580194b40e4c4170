"""Tracing frontend: torch.fx symbolic trace plus one recorded run becomes an IR :class:`Graph`."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import operator
import os
import traceback
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from nestir.frontend.builder import _Builder
from nestir.frontend.values import _NEW_TENSOR, _OWN_DIR, _TORCH_DIR
from nestir.ir import convert as cv
from nestir.ir.checks import opaque_nodes
from nestir.ir.errors import ShapeError, TraceError
from nestir.ir.graph import Graph
from nestir.ir.kinds import Fx
from nestir.ir.opdefs import OPS

log = logging.getLogger(__name__)


_SHAPE_READS = {"size", "dim", "numel", "ndimension", "nelement"}


class _InPlace(Exception):
    """An assignment into a computed tensor while tracing (see :meth:`_ShapeProxy.__setitem__`)."""


class _ShapeProxy(fx.Proxy):
    """A proxy Python may read as a number where its value follows from the example inputs'
    shapes alone (``if H != window``, ``int(math.sqrt(T))``, ``range(n)``): the trace is
    specialised to those shapes, as the IR is (see :meth:`_Tracer.concrete`)."""

    def __int__(self) -> int:
        return int(self.tracer.concrete(self))  # type: ignore[attr-defined]

    def __float__(self) -> float:
        return float(self.tracer.concrete(self))  # type: ignore[attr-defined]

    def __index__(self) -> int:
        return operator.index(self.tracer.concrete(self))  # type: ignore[attr-defined]

    def __setitem__(self, key: Any, value: Any) -> None:
        """``t[...] = v`` into a constant (a mask built in place) is recorded; into a computed
        tensor it stops the trace here (the submodule becomes a leaf), as torch.fx would."""
        if not _constant_only(self.node):
            raise _InPlace("assigns into a computed tensor, changing it in place, which nestir cannot follow "
                           "(compute the new value instead: torch.where, torch.cat)")
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})


class _Tracer(fx.Tracer):
    def __init__(self, leaves: tuple[type, ...], leaf_names: frozenset[str] = frozenset(),
                 through: frozenset[str] = frozenset(), inputs: tuple[torch.Tensor, ...] = (),
                 meta: dict[str, nn.Module] | None = None) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.leaves = leaves
        self.leaf_names = leaf_names
        self.through = through  # look-alike submodules that did not reproduce: traced through
        self.inputs = inputs  # the example inputs (their shapes answer branches on shapes)
        self.concrete_values: dict[fx.Node, Any] = {}
        self.meta_values: dict[int, dict[fx.Node, Any]] = {}  # per batch size: the traced nodes' meta values
        self.meta = {} if meta is None else meta  # the model on the meta device, made once per trace
        self.stack: list[str] = []  # qualified names of the submodules being traced, innermost last
        self.failed_in: list[str] | None = None  # the stack when tracing first failed

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def to_bool(self, obj: fx.Proxy) -> bool:
        return bool(self.concrete(obj))

    def concrete(self, p: fx.Proxy) -> Any:
        """The value of ``p`` where it is computed from the inputs' shapes alone and is the same
        at the example's batch size, at 1 and at a larger one: the code's branch on it is taken
        as traced (shapes are computed on meta tensors, nothing runs). Anything else (a tensor's
        values, the batch size) stays an error: the trace cannot follow it."""
        node = p.node
        if node in self.concrete_values:
            return self.concrete_values[node]
        if not self.inputs or not _shape_only(node):
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow")
        b = self.inputs[0].shape[0] if self.inputs[0].dim() else 1
        try:
            vals = [self._evaluate(node, n) for n in dict.fromkeys((b, 1, b + 5))]
        except Exception:
            raise fx.proxy.TraceError("symbolically traced variables cannot be used as inputs to control flow") \
                from None
        if any(isinstance(v, (torch.Tensor, fx.Proxy)) or type(v) is not type(vals[0]) or v != vals[0]
               for v in vals):
            raise fx.proxy.TraceError("a value read from the batch size cannot be used as inputs to control flow")
        self.concrete_values[node] = vals[0]
        return vals[0]

    def _evaluate(self, node: fx.Node, batch: int) -> Any:
        """``node``'s value with meta inputs of the examples' shapes at ``batch``. Values are
        kept per batch size (the graph only grows while tracing), so each node of the traced
        prefix runs once however many branches read shapes; a tensor's ``device`` (and
        ``is_cuda``) is the example inputs' device, so a branch on it goes the way the model runs."""
        unpatched = getattr(fx._symbolic_trace, "_maybe_revert_all_patches", contextlib.nullcontext)
        with unpatched(), torch.no_grad():  # for real, not through the tracer's patched calls
            if "root" not in self.meta:
                self.meta["root"] = copy.deepcopy(self.root).to("meta")
            env = self.meta_values.setdefault(batch, {})
            todo, seen = [node], set()
            while todo:
                n = todo.pop()
                if n not in env and n not in seen:
                    seen.add(n)
                    todo.extend(n.all_input_nodes)
            places = [n for n in self.graph.nodes if n.op == Fx.PLACEHOLDER]
            for n in [n for n in self.graph.nodes if n in seen]:  # in graph order
                env[n] = self._run(n, env, batch, places)
            v = env[node]
        return tuple(v) if isinstance(v, torch.Size) else v

    def _run(self, n: fx.Node, env: dict[fx.Node, Any], batch: int, places: list[fx.Node]) -> Any:
        root = self.meta["root"]
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == Fx.PLACEHOLDER:
            t = self.inputs[places.index(n)]
            return torch.empty((batch, *t.shape[1:]) if t.dim() else (), dtype=t.dtype, device="meta")
        if n.op == Fx.GET_ATTR:
            v: Any = root
            for part in str(n.target).split("."):
                v = getattr(v, part)
            return v
        if n.op == Fx.CALL_MODULE:
            return root.get_submodule(str(n.target))(*args, **kwargs)
        if n.op == Fx.CALL_METHOD:
            return getattr(args[0], str(n.target))(*args[1:], **kwargs)
        if n.target is getattr and isinstance(args[0], torch.Tensor) and args[1] in ("device", "is_cuda"):
            d = self.inputs[0].device
            return d if args[1] == "device" else d.type == "cuda"
        return n.target(*args, **kwargs)  # type: ignore[operator]

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if qualname in self.leaf_names or isinstance(m, self.leaves):
            return True
        if qualname in self.through:
            return super().is_leaf_module(m, qualname)
        return (cv.is_attention_module(m) or any(d.structural and d.matches(m) for d in OPS.values())
                or isinstance(m, (nn.Conv1d, nn.Conv2d))  # a subclass (timm's Conv2dSame): see conv_subclass
                or super().is_leaf_module(m, qualname))

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_in is None:
                self.failed_in = list(self.stack)
            raise
        finally:
            self.stack.pop()


class _Recorder(fx.Interpreter):
    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n] = out
        return out


def _as_inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,)
    if isinstance(example_inputs, (tuple, list)) and example_inputs and all(
        isinstance(t, torch.Tensor) for t in example_inputs
    ):
        return tuple(example_inputs)
    raise ShapeError(
        f"example_inputs must be a tensor or a tuple of tensors, got {type(example_inputs).__name__}"
    )


def _user_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    for fr in reversed(frames):
        f = os.path.abspath(fr.filename)
        if not f.startswith(_TORCH_DIR) and not f.startswith(_OWN_DIR + os.sep + "nestir"):
            return f"{fr.filename}:{fr.lineno}: {(fr.line or '').strip()}"
    return "(location unknown)"


_FUNCTION_CALLS: dict[type, Any] = {}


def _function_call(cls: type) -> Any:
    """One plain callable per custom ``torch.autograd.Function`` class: ``cls.apply(...)``. It is
    the target of the opaque node that keeps the Function whole, its custom backward included."""
    call = _FUNCTION_CALLS.get(cls)
    if call is None:
        def call(*args: Any, **kwargs: Any) -> Any:
            return cls.apply(*args, **kwargs)

        call.__name__ = call.__qualname__ = f"{cls.__name__}_apply"
        call.__module__ = __name__  # not torch's: fx must reference the object, not a torch path
        call._nestir_label = f"{cls.__qualname__}.apply (custom torch.autograd.Function)"  # type: ignore[attr-defined]
        _FUNCTION_CALLS[cls] = call
    return call


class _KeepFunctions:
    """While tracing, a call ``SomeFunction.apply(proxy, ...)`` of a custom autograd Function
    becomes one call node, instead of torch.fx tracing its ``forward`` as plain ops and silently
    dropping its custom ``backward``."""

    def __enter__(self) -> None:
        base = torch.autograd.Function
        self.original = original = base.__dict__["apply"]  # a classmethod, or a C classmethod_descriptor

        def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
            proxies = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, fx.Proxy)]
            if proxies:
                return proxies[0].tracer.create_proxy("call_function", _function_call(cls), args, kwargs)
            return original.__get__(None, cls)(*args, **kwargs)

        base.apply = classmethod(apply)  # type: ignore[method-assign,assignment]

    def __exit__(self, *exc: object) -> None:
        torch.autograd.Function.apply = self.original  # type: ignore[method-assign]


class _ThroughLibraryWraps:
    """While tracing, functions a model library marked with ``torch.fx.wrap`` to keep them whole
    (torchvision's Swin: ``shifted_window_attention`` takes its layers' weights as arguments) are
    traced through, so their layers and heads are understood; a block whose code then cannot be
    traced becomes a leaf as any other."""

    LIBRARIES = ("torchvision.models.",)

    def __enter__(self) -> None:
        table = getattr(fx._symbolic_trace, "_wrapped_fns_to_patch", None)
        self.table = table if isinstance(table, dict) else {}
        self.gone = {k: v for k, v in self.table.items() if str(v.get("__name__", "")).startswith(self.LIBRARIES)}
        for k in self.gone:
            del self.table[k]

    def __exit__(self, *exc: object) -> None:
        self.table.update(self.gone)


MAX_AUTO_LEAVES = 64


_META_ATTRS = ("shape", "ndim", "dtype", "device", "is_cuda")  # what a value's data do not change


def _reaches_inputs(node: fx.Node, inputs: Any) -> bool:
    """Whether walking up from ``node``, through ``inputs(n)`` (the nodes ``n`` reads that
    matter; None: none), reaches a model input or a submodule's output."""
    seen: set[fx.Node] = set()
    todo = [node]
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        up = inputs(n)
        if up is None:
            continue
        if n.op in (Fx.PLACEHOLDER, Fx.CALL_MODULE):
            return True
        todo.extend(up)
    return False


def _reads_meta(n: fx.Node) -> bool:
    """``n`` reads a value's shape, dtype or device, not its data."""
    return (n.op == Fx.CALL_FUNCTION and n.target is getattr and len(n.args) > 1 and n.args[1] in _META_ATTRS) \
        or (n.op == Fx.CALL_METHOD and n.target in _SHAPE_READS)


def _constant_only(node: fx.Node) -> bool:
    """Whether ``node`` is computed from the model's attributes, constants and shapes only (a new
    tensor made from an input, ``x.new_zeros((H, W))``, reads only its dtype and device)."""
    def inputs(n: fx.Node) -> list[fx.Node] | None:
        if _reads_meta(n):
            return None
        args = n.args[1:] if n.op == Fx.CALL_METHOD and n.target in _NEW_TENSOR else n.args
        return [a for a in cv.flat((*args, *n.kwargs.values())) if isinstance(a, fx.Node)]

    return not _reaches_inputs(node, inputs)


def _shape_only(node: fx.Node) -> bool:
    """Whether ``node`` reads the model's inputs only through their shapes (``x.shape``,
    ``x.size()``, ``x.dim()``) or their dtype and device, not through any tensor's values."""
    return not _reaches_inputs(node, lambda n: None if _reads_meta(n) else n.all_input_nodes)


def _symbolic(module: nn.Module, leaves: tuple[type, ...], concrete_args: dict | None,
              through: frozenset[str] = frozenset(), inputs: tuple[torch.Tensor, ...] = ()) -> fx.GraphModule:
    """torch.fx's trace of ``module``. A submodule whose own code cannot be traced becomes a leaf
    (one opaque node, logged and labelled) and tracing starts again; only code of the top-level
    module that cannot be traced fails the whole trace. Submodules nestir recognises by their
    structure are leaves, except those in ``through``."""
    auto: dict[str, str] = {}
    meta: dict[str, nn.Module] = {}  # shared by the retries: the meta copy is made at most once
    while True:
        tracer = _Tracer(leaves, frozenset(auto), through, inputs, meta)
        try:
            with _KeepFunctions(), _ThroughLibraryWraps():
                graph = tracer.trace(module, concrete_args=concrete_args)
            break
        except Exception as e:  # fx raises many kinds; all mean "not traceable as written"
            where = _user_frame(e)
            if isinstance(e, _InPlace):
                what = str(e)
            elif "batch size" in str(e):
                what = "branches on the batch size (nestir specialises a trace to the input's shape, not its batch)"
            elif isinstance(e, fx.proxy.TraceError) or "control flow" in str(e):
                what = "uses a tensor's value in Python control flow (if/while/bool/len/iteration)"
            else:
                what = f"cannot be traced symbolically ({type(e).__name__}: {str(e).splitlines()[0]})"
            inner = (tracer.failed_in or [""])[-1]
            if inner and inner not in auto and len(auto) < MAX_AUTO_LEAVES:
                auto[inner] = f"{where} {what}"
                continue
            raise TraceError(
                f"{type(module).__name__} is not traceable: {where} {what}. Fix: write that line without Python "
                "control flow on tensor values (e.g. with torch.where), fix the value with concrete_args, or make "
                "the submodule that contains it a leaf so it stays an opaque node: nestir.trace(..., "
                "leaf_modules=[ThatModule]), or on the command line `nestir inspect` / `nestir export` with "
                "--leaf ThatModule (the training verbs cannot store opaque nodes, so they take no --leaf)."
            ) from None
    for qual, why in auto.items():
        log.warning("submodule '%s' (%s) is not traceable (%s): kept whole as one opaque node", qual,
                    type(module.get_submodule(qual)).__name__, why)
    _decompose(graph)
    gm = fx.GraphModule(tracer.root, graph, type(module).__name__)
    gm._nestir_auto_leaves = auto  # type: ignore[assignment]
    return gm


def _decompose(graph: fx.Graph) -> None:
    """Calls that are a composition of ops nestir knows, written as those ops before anything
    reads the graph: ``torch.addcmul(a, b, c, value=v)`` (ResMLP's affine layer ``beta + alpha * x``)
    becomes ``a + b * c`` (times ``v`` when it is not 1), and ``addcdiv`` the same with a quotient.
    The new nodes keep the call's source line."""
    kinds = {torch.addcmul: operator.mul, "addcmul": operator.mul, torch.addcdiv: operator.truediv,
             "addcdiv": operator.truediv}
    for n in list(graph.nodes):
        if n.op not in (Fx.CALL_FUNCTION, Fx.CALL_METHOD) or n.target not in kinds or len(n.args) != 3 \
                or set(n.kwargs) - {"value"} or isinstance(n.kwargs.get("value", 1), fx.Node):
            continue
        a, b, c = n.args
        value = n.kwargs.get("value", 1)
        with graph.inserting_before(n):
            prod = graph.call_function(kinds[n.target], (b, c))
            if value != 1:
                prod = graph.call_function(operator.mul, (prod, value))
            out = graph.call_function(operator.add, (a, prod))
        for new in {prod, out, *prod.all_input_nodes} - set(n.all_input_nodes) - {n}:
            new.meta.update({k: v for k, v in n.meta.items() if k in ("stack_trace", "nn_module_stack")})
        n.replace_all_uses_with(out)
        graph.erase_node(n)


def trace(
    module: nn.Module,
    example_inputs: Any,
    *,
    leaf_modules: Iterable[type] = (),
    concrete_args: dict[str, Any] | None = None,
    name: str | None = None,
) -> Graph:
    """Trace ``module`` with torch.fx into a verified IR :class:`Graph`.

    ``example_inputs`` (a tensor or a tuple of tensors) fixes every value's shape. Calls nestir
    does not know stay as opaque nodes that still run; :func:`opaque_nodes` lists them.
    """
    if not isinstance(module, nn.Module):
        raise TraceError(f"nestir.trace needs a torch.nn.Module, got {type(module).__name__}")
    inputs = _as_inputs(example_inputs)
    concrete_args = {**_defaults_beyond(module, len(inputs)), **(concrete_args or {})} or None
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            through: frozenset[str] = frozenset()
            while True:
                gm = _symbolic(module, tuple(leaf_modules), concrete_args, through, inputs)
                rec = _Recorder(gm)
                try:  # one recorded run gives every value's shape (no separate eager run)
                    rec.run(*inputs)
                except Exception as e:
                    _rejects(module, inputs, e)
                builder = _Builder(gm, rec.values)
                graph = builder.build(name or type(module).__name__)
                if through or not builder.unmatched:
                    break
                # a submodule that looked like attention (or another op nestir knows by structure)
                # but did not reproduce: trace through it instead of keeping it whole, once
                log.info("tracing through %d look-alike submodule(s): %s", len(builder.unmatched),
                         ", ".join(builder.unmatched))
                through = frozenset(builder.unmatched)
    finally:
        module.train(was_training)
    ops = opaque_nodes(graph)
    if ops:
        log.warning("%d opaque node(s) kept as calls (widths frozen through them): %s",
                    len(ops), "; ".join(ops))
    graph.verify()
    return graph


def _defaults_beyond(module: nn.Module, given: int) -> dict[str, Any]:
    """The forward's optional parameters that the example inputs do not fill (timm's
    ``attn_mask=None``, ``is_causal=False``): fixed at their defaults, so that the graph takes
    exactly the inputs it was traced with and its lowerings do not ask for more."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in params[given:]
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not p.empty}


def _rejects(module: nn.Module, inputs: tuple[torch.Tensor, ...], error: Exception) -> None:
    """The traced program failed on the example inputs: a :class:`ShapeError` when the module
    itself rejects them, else a :class:`TraceError` (the trace does not run as the module does)."""
    try:
        module(*inputs)
    except Exception as e:
        shapes = ", ".join(str(tuple(t.shape)) for t in inputs)
        raise ShapeError(f"{type(module).__name__} rejects example input of shape {shapes}: "
                         f"{str(e).splitlines()[0]}") from None
    raise TraceError(f"{type(module).__name__} runs eagerly, but its torch.fx trace fails on the example input "
                     f"({type(error).__name__}: {str(error).splitlines()[0]}): the trace specialised on "
                     "something; fix it with concrete_args or make that submodule a leaf (leaf_modules=[...])"
                     ) from None


