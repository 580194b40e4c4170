"""Tracing frontend: torch.fx symbolic trace plus one recorded run becomes an IR :class:`Graph`."""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import math
import operator
import os
import traceback
from collections.abc import Iterable
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from nestir.ir import convert as cv
from nestir.ir.checks import opaque_nodes
from nestir.ir.errors import ShapeError, TraceError
from nestir.ir.graph import Graph, Node
from nestir.ir.opdefs import OPS, evaluate, opdef
from nestir.ir.opdefs.elementwise import ACT_METHODS
from nestir.ir.ops import BATCH_ARITH, kept_axis, merged_axis
from nestir.ir.permutations import fold_permutations

log = logging.getLogger(__name__)
_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above nestir/


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
            places = [n for n in self.graph.nodes if n.op == "placeholder"]
            for n in [n for n in self.graph.nodes if n in seen]:  # in graph order
                env[n] = self._run(n, env, batch, places)
            v = env[node]
        return tuple(v) if isinstance(v, torch.Size) else v

    def _run(self, n: fx.Node, env: dict[fx.Node, Any], batch: int, places: list[fx.Node]) -> Any:
        root = self.meta["root"]
        args = fx.node.map_arg(n.args, lambda a: env[a])
        kwargs = fx.node.map_arg(n.kwargs, lambda a: env[a])
        if n.op == "placeholder":
            t = self.inputs[places.index(n)]
            return torch.empty((batch, *t.shape[1:]) if t.dim() else (), dtype=t.dtype, device="meta")
        if n.op == "get_attr":
            v: Any = root
            for part in str(n.target).split("."):
                v = getattr(v, part)
            return v
        if n.op == "call_module":
            return root.get_submodule(str(n.target))(*args, **kwargs)
        if n.op == "call_method":
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
_NEW_TENSOR = ("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")  # read only the dtype and device


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
        if n.op in ("placeholder", "call_module"):
            return True
        todo.extend(up)
    return False


def _reads_meta(n: fx.Node) -> bool:
    """``n`` reads a value's shape, dtype or device, not its data."""
    return (n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] in _META_ATTRS) \
        or (n.op == "call_method" and n.target in _SHAPE_READS)


def _constant_only(node: fx.Node) -> bool:
    """Whether ``node`` is computed from the model's attributes, constants and shapes only (a new
    tensor made from an input, ``x.new_zeros((H, W))``, reads only its dtype and device)."""
    def inputs(n: fx.Node) -> list[fx.Node] | None:
        if _reads_meta(n):
            return None
        args = n.args[1:] if n.op == "call_method" and n.target in _NEW_TENSOR else n.args
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
        if n.op not in ("call_function", "call_method") or n.target not in kinds or len(n.args) != 3 \
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


def _source(node: fx.Node) -> str:
    """Where the call was written: the innermost frame of its recorded stack outside torch and
    nestir."""
    frames = [line.strip()[5:].replace('"', "") for line in (node.stack_trace or "").splitlines()
              if line.strip().startswith("File ")]
    own = [f for f in frames if not os.path.abspath(f.split(",")[0]).startswith(
        (_TORCH_DIR, _OWN_DIR + os.sep + "nestir"))]
    return (own or frames or [""])[-1]


class _Builder:
    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
        self.gm = gm
        self.values = values
        self.env: dict[fx.Node, tuple[str, Any]] = {}
        self.graph = Graph()
        self.unmatched: list[str] = []  # submodules kept whole as look-alikes that did not reproduce

    # -- helpers -----------------------------------------------------------------------------
    def ref(self, a: Any) -> str | None:
        """The IR node name of a tensor-valued fx arg, else None."""
        if isinstance(a, fx.Node) and self.env.get(a, ("", None))[0] == "node":
            return self.env[a][1]
        return None

    def const(self, a: Any) -> Any:
        if isinstance(a, fx.Node):
            kind, v = self.env[a]
            if kind == "node":
                n = self.graph[v]
                return n.params["value"] if n.op == "const" else None
            if kind in ("shape", "batch"):
                return v[1]
            if kind == "batchexpr":
                return v[-1]
            if kind == "tuple":
                return None
            return v
        return a

    def sizes(self, fxn: fx.Node, v: Any) -> bool:
        """Track ``x.shape``, ``x.size()`` and the batch size read from them (``x.shape[0]``,
        ``x.size(0)``): an opaque call that uses the batch size then reads it at run time instead
        of keeping the example's batch size as a constant."""
        t, args = fxn.target, fxn.args
        if fxn.op == "call_function" and t is getattr and len(args) == 2 and args[1] == "shape":
            x = self.ref(args[0])
            if x is not None:
                self.env[fxn] = ("shape", (x, v))
                return True
        if fxn.op == "call_method" and t == "size" and args and self.ref(args[0]) is not None:
            x, dim = self.ref(args[0]), args[1] if len(args) > 1 else fxn.kwargs.get("dim")
            if dim is None:
                self.env[fxn] = ("shape", (x, v))
                return True
            if dim == 0:
                self.env[fxn] = ("batch", (x, v))
                return True
        if fxn.op == "call_function" and t is operator.getitem and len(args) == 2 and args[1] == 0 \
                and isinstance(args[0], fx.Node) and self.env.get(args[0], ("", None))[0] == "shape":
            self.env[fxn] = ("batch", (self.env[args[0]][1][0], v))
            return True
        op = next((k for k, f in BATCH_ARITH.items() if f is t), None)
        if fxn.op == "call_function" and op is not None and len(args) == 2 and not fxn.kwargs and \
                any(isinstance(a, fx.Node) and self.env.get(a, ("", None))[0] in ("batch", "batchexpr") for a in args) \
                and all(isinstance(a, int) or (isinstance(a, fx.Node) and (
                    self.env.get(a, ("", None))[0] in ("batch", "batchexpr")
                    or isinstance(self.const(a), int))) for a in args):
            self.env[fxn] = ("batchexpr", (op, args[0], args[1], v))  # B * C: follows the batch size too
            return True
        return False

    def template(self, args: Any, kwargs: Any) -> tuple[list[str], Any, Any]:
        inputs: list[str] = []

        def sub(a: Any) -> Any:
            r = self.ref(a)
            if r is not None:
                inputs.append(r)
                return ("__ref__", len(inputs) - 1)
            if isinstance(a, fx.Node) and self.env[a][0] == "tuple":
                refs: list[Any] = []
                for name in self.env[a][1]:
                    if name is not None:
                        inputs.append(name)
                    refs.append(None if name is None else ("__ref__", len(inputs) - 1))
                return tuple(refs)
            if isinstance(a, fx.Node) and self.env[a][0] == "batchexpr":
                op, x, y, _ = self.env[a][1]
                return ("__expr__", op, sub(x), sub(y))
            if isinstance(a, fx.Node) and self.env[a][0] == "batch":
                # read it from a model input (frozen anyway) rather than freeze the value it came from
                src, size = self.env[a][1]
                inputs.append(self.batch_input(size) or src)
                return ("__batch__", len(inputs) - 1)
            return self.const(a)

        return inputs, fx.node.map_aggregate(args, sub), fx.node.map_aggregate(kwargs, sub)

    def add(self, node: Node, fxn: fx.Node, inputs: list[str]) -> None:
        v = self.values[fxn]
        node.inputs = inputs
        node.source = _source(fxn)
        if isinstance(v, torch.Tensor):
            node.shape = tuple(v.shape)
            node.axis = self.axis(node, v)
        self.graph.add(node)
        self.env[fxn] = ("node", node.name)

    def in_shape(self, name: str) -> tuple[int, ...]:
        return self.graph[name].shape or ()

    def axis(self, node: Node, v: torch.Tensor) -> int | None:
        """The neuron axis of ``node``'s value ``v``: its op definition says."""
        if v.dim() < 2:
            return None
        return opdef(node.op).axis(node, [self.graph[i] for i in node.inputs], v)

    # -- per-kind conversion -------------------------------------------------------------------
    def opaque(self, fxn: fx.Node, fn: Any, kind: str, label: str | None = None) -> None:
        inputs, args, kwargs = self.template(fxn.args, fxn.kwargs)
        label = label or getattr(fn, "_nestir_label", None) or cv.target_label(fxn, self.gm)
        self.add(cv.opaque_node(fxn.name, fxn, fn, kind, args, kwargs, label), fxn, inputs)

    def attention(self, fxn: fx.Node, mod: nn.Module) -> bool:
        """A self-attention module call as q, k, v linears, an ``attention`` node (heads are the
        units it prunes in) and the output projection, kept only where it reproduces the
        module's recorded output."""
        x = self.ref(fxn.args[0]) if fxn.args else None
        if x is None or len(self.in_shape(x)) != 3:
            return False
        same = all(self.ref(a) == x for a in fxn.args)
        kwargs = {k: self.const(v) for k, v in fxn.kwargs.items()}
        parts = cv.attention_parts(mod, fxn.args, kwargs, same)
        out = self.values[fxn]
        tuple_out = isinstance(out, tuple)
        if parts is None or (tuple_out and any(u.target is operator.getitem and u.args[1] != 0 and u.users
                                                for u in fxn.users)):
            return False  # masks or cross-attention; or the attention weights are used
        qkv, (wo, bo), heads, scale, pre = parts
        if any(w.shape[0] % heads for w, _ in qkv) or qkv[0][0].shape[0] != qkv[1][0].shape[0]:
            return False
        src = self.values[fxn.args[0]]
        norm = None
        if pre is not None:  # a LayerNorm the module applies first (lucidrains-style attention)
            norm = OPS["layernorm"].from_module(self.graph.fresh_name(f"{fxn.name}__norm"), pre)
            if norm is None:
                return False
        names = [self.graph.fresh_name(f"{fxn.name}__{s}") for s in ("q", "k", "v")]
        nodes = [cv.linear_node(nm, w, bias) for nm, (w, bias) in zip(names, qkv, strict=True)]
        att = Node(self.graph.fresh_name(fxn.name), "attention", inputs=names, attrs={"heads": heads, "scale": scale})
        proj = cv.linear_node(self.graph.fresh_name(f"{fxn.name}__proj"), wo, bo)
        ref = out[0] if tuple_out else out
        if not isinstance(ref, torch.Tensor):
            return False
        tokens = self.in_shape(x)[-2]
        for bias in [None, *cv.attention_biases(mod, heads, tokens)]:  # plain, then with a position bias
            att.params = {} if bias is None else {"bias": bias}
            try:
                with torch.no_grad():  # the rebuilt computation must reproduce the module's
                    normed = evaluate(norm, [src], norm.params) if norm is not None else src
                    vals = [evaluate(n, [normed], n.params) for n in nodes]
                    a = evaluate(att, vals, att.params)
                    y = evaluate(proj, [a], proj.params)
            except Exception:  # another layout of q, k, v (EfficientFormer's)
                continue
            if ref.shape == y.shape and torch.allclose(y, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-4):
                break
        else:
            return False
        if norm is not None:
            self.put(norm, [x], normed)
            x = norm.name
        for n, v in zip(nodes, vals, strict=True):
            self.put(n, [x], v)
        self.put(att, names, a)
        self.put(proj, [att.name], y)
        self.env[fxn] = ("tuple", [proj.name, None]) if tuple_out else ("node", proj.name)
        return True

    def conv_subclass(self, fxn: fx.Node, mod: nn.Module, x: str) -> bool:
        """A subclass of ``nn.Conv2d`` / ``nn.Conv1d`` (timm's ``Conv2dSame``) whose recorded output
        is a plain conv of its input, as declared or after TensorFlow-style 'same' zero padding
        (asymmetric: a ``pad`` node before the conv)."""
        w, b = mod.weight, mod.bias  # type: ignore[union-attr]
        src, out = self.values[fxn.args[0]], self.values[fxn]
        if not isinstance(out, torch.Tensor) or getattr(mod, "padding_mode", "zeros") != "zeros":
            return False
        k, s, d = tuple(w.shape[2:]), cv._pair(mod.stride, w.dim() - 2), cv._pair(mod.dilation, w.dim() - 2)
        pads: list[int] = []
        for i, kk, ss, dd in reversed(list(zip(src.shape[2:], k, s, d, strict=True))):  # F.pad: last dim first
            total = max((math.ceil(i / ss) - 1) * ss + (kk - 1) * dd + 1 - i, 0)
            pads += [total // 2, total - total // 2]
        tol = 1e-5 * max(1.0, float(out.abs().max()))
        for same in (False, True):
            attrs = cv.conv_attrs(mod.stride, 0 if same else mod.padding, mod.dilation, mod.groups, k)
            if attrs is None:
                continue
            node = cv.conv_node(fxn.name, w, b, attrs)
            with torch.no_grad():
                inp = F.pad(src, pads) if same else src
                y = evaluate(node, [inp], node.params)
            if y.shape != out.shape or not torch.allclose(y, out, atol=tol, rtol=1e-4):
                continue
            if same and any(pads):
                pad = Node(self.graph.fresh_name(f"{fxn.name}__pad"), "pad", attrs={"pads": pads})
                self.put(pad, [x], inp, axis=1)
                x = pad.name
            self.put(node, [x], y, axis=1)
            self.env[fxn] = ("node", node.name)
            return True
        return False

    def put(self, node: Node, inputs: list[str], v: torch.Tensor, axis: int = -1) -> None:
        """Add a node the frontend made up (not one fx node), with its value ``v``."""
        node.inputs = inputs
        node.shape = tuple(v.shape)
        node.axis = axis % v.dim()
        self.graph.add(node)

    def batch_expanded(self, name: str) -> torch.Tensor | None:
        """The constant that opaque node ``name`` expands to the batch size (``tok.expand(B, -1, -1)``
        with ``tok`` of batch dim 1), else None."""
        n = self.graph[name]
        if n.op != "opaque" or n.attrs["kind"] != "method" or n.attrs["fn"] != "expand" or n.attrs["kwargs"]:
            return None
        args = n.attrs["args"]
        src = self.graph[n.inputs[0]]
        sizes = args[1:] if len(args) > 2 or not isinstance(args[1], (list, tuple)) else args[1]
        if src.op != "const" or args[0] != ("__ref__", 0) or not src.shape or src.shape[0] != 1:
            return None
        if len(sizes) != len(src.shape) or sizes[0] != ("__batch__", 1) or any(s != -1 for s in sizes[1:]):
            return None
        return src.params["value"]

    def prepend(self, fxn: fx.Node, refs: list[str], dim: int) -> bool:
        """``cat([tok.expand(B, -1, -1), ..., x], dim)``: learned tokens (a class token) before the
        tokens of ``x``, one entry per neuron of ``x``: a ``prepend`` node that owns them."""
        *toks, x = refs
        values = [self.batch_expanded(t) for t in toks]
        ax = self.graph[x].axis
        if not toks or any(v is None for v in values) or ax is None or dim in (0, ax):
            return False
        value = torch.cat(values, dim).detach().float()  # type: ignore[arg-type]
        node = Node(fxn.name, "prepend", attrs={"dim": dim, "vdim": ax}, params={"value": value[0].movedim(ax - 1, 0)})
        self.add(node, fxn, [x])
        return True

    def split(self, fxn: fx.Node, x: str, method: str, args: tuple) -> bool:
        """``chunk`` / ``split`` / ``tensor_split`` / ``unbind``: one ``index`` node per piece (a
        range of the cut dim, or one position for unbind); the call's value is their tuple."""
        shape = self.in_shape(x)
        kwargs = {k: self.const(v) for k, v in fxn.kwargs.items()}
        dim = cv.split_dim(method, tuple(self.const(a) for a in args), kwargs, len(shape))
        pieces = self.values[fxn]
        if dim is None or dim == 0 or not isinstance(pieces, (tuple, list)) or not pieces:
            return False
        names, start = [], 0
        for k, v in enumerate(pieces):
            index: Any = [slice(None)] * len(shape)
            if method == "unbind":
                index[dim] = k
            else:
                index[dim] = slice(start, start + v.shape[dim])
                start += v.shape[dim]
            items = cv.index_items(tuple(index), shape, self.graph[x].axis)
            if items is None:
                for n in names:
                    del self.graph.nodes[n]
                return False
            node = Node(self.graph.fresh_name(f"{fxn.name}__{k}"), "index", [x], {"items": items})
            node.axis = self.axis(node, v)
            node.shape, node.source = tuple(v.shape), _source(fxn)
            self.graph.add(node)
            names.append(node.name)
        self.env[fxn] = ("tuple", names)
        return True

    def permute(self, fxn: fx.Node, x: str, args: tuple, method: str | None = None) -> bool:
        if method is None:
            method = "permute" if fxn.target is torch.permute else "transpose"
        dims = cv.permute_dims(method, len(self.in_shape(x)), tuple(self.const(a) for a in args))
        if dims is None:
            return False
        if dims == sorted(dims):
            self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        else:
            self.add(Node(fxn.name, "permute", attrs={"dims": dims}), fxn, [x])
        return True

    def reshape(self, fxn: fx.Node, x: str) -> None:
        out = tuple(self.values[fxn].shape)
        if self.rebatches(fxn):
            self.unmerge_batch(x, out)  # the reshape that folded the channels into the batch dim keeps them apart
        src = self.in_shape(x)
        if len(out) == 2 and len(src) >= 2 and out[0] == src[0] and out[1] == math.prod(src[1:]) and \
                (self.graph[x].axis in (None, 1) or len(src) == 2):  # (else: a channels-last layout, below)
            op = "identity" if len(src) == 2 else "flatten"
            self.add(Node(fxn.name, op, attrs={"p": 0.0} if op == "identity" else {}), fxn, [x])
        elif self.heads(fxn, x, src, out) or self.split_axis(fxn, x, src, out) or \
                self.channels_first_heads(fxn, x, src, out) or self.channels_first_merge(fxn, x, src, out):
            return
        elif len(src) >= 1 and len(out) >= 1 and out[0] == src[0] and self.fixed_rest(fxn):
            attrs: dict[str, Any] = {"rest": out[1:]}
            keep = kept_axis(src, out, self.graph[x].axis)
            if keep is not None:
                attrs["keep"] = [self.graph[x].axis, keep]
            elif (joins := merged_axis(src, out, self.graph[x].axis)) is not None:
                attrs["joins"] = list(joins)
            if keep is None and len(src) >= 3 and out[:-1] == src[:-2] and out[-1] == src[-2] * src[-1]:
                attrs["merge"] = True  # (B, ..., H, D) -> (B, ..., H*D): heads merged back (opdefs.heads)
            self.add(Node(fxn.name, "reshape", attrs=attrs), fxn, [x])
        elif self.rebatches(fxn):
            attrs = {"rest": out[1:], "rebatch": True}
            keep = kept_axis(src, out, self.graph[x].axis, rebatch=True)
            if keep is not None:
                attrs["keep"] = [self.graph[x].axis, keep]
            self.add(Node(fxn.name, "reshape", attrs=attrs), fxn, [x])
        elif fxn.op == "call_module":
            mod = self.gm.get_submodule(str(fxn.target))
            self.opaque(fxn, mod, "module", f"{type(mod).__name__}: reshapes the batch dimension away")
        else:
            self.opaque(fxn, fxn.target, "method" if fxn.op == "call_method" else "function")

    def unmerge_batch(self, x: str, out: tuple[int, ...]) -> bool:
        """``x`` comes from a reshape that folded the batch dim together with the neuron axis and
        more (MobileViT's unfold: ``(B, C, H, W) -> (B*C*nh, ph, nw, pw)``), then permutes that
        leave dim 0 alone, and this reshape splits dim 0 back into the batch and the same leading
        dims (``-> (B, C, N, P)``). Written with the folded dims kept apart instead (``(B, C, nh,
        ph, nw, pw)``, the permutes shifted past them), the elements keep their order and the
        neuron axis stays a whole dim: the earlier reshape and permutes are rewritten in place."""
        chain, n = [], self.graph[x]
        while n.op == "permute" and n.attrs["dims"][0] == 0:
            chain.append(n)
            n = self.graph[n.inputs[0]]
        first = n
        if first.op != "reshape" or not first.attrs.get("rebatch") or "keep" in first.attrs:
            return False
        users = self.graph.user_map()  # (only now: it walks the whole graph) nothing else reads the chain:
        if any(len(users.get(m.name, [])) != (i > 0) for i, m in enumerate([*chain, first])):  # x: no user yet
            return False
        src_node = self.graph[first.inputs[0]]
        src, a, rest = src_node.shape, src_node.axis, tuple(first.attrs["rest"])
        if src is None or a is None or a == 0 or math.prod(src[1:]) % math.prod(rest):
            return False
        merged, lead = math.prod(src[1:]) // math.prod(rest), math.prod(src[1:a + 1])
        if merged % lead or len(out) < a + 1 or math.prod(out[1:]) != math.prod(src[1:]) or \
                tuple(out[1:a + 1]) != tuple(src[1:a + 1]):
            return False
        f = merged // lead
        kept = (*src[1:a + 1], f) if f > 1 else tuple(src[1:a + 1])
        first.attrs = {"rest": (*kept, *rest), "keep": [a, a]}
        first.shape, first.axis = (src[0], *kept, *rest), a
        prev, shift = first, len(kept)
        for p in reversed(chain):
            dims = [0, *range(1, shift + 1), *(d + shift for d in p.attrs["dims"][1:])]
            p.attrs = {**p.attrs, "dims": dims}
            p.shape, p.axis = tuple(prev.shape[d] for d in dims), dims.index(a)  # type: ignore[index]
            prev = p
        return True

    def rebatches(self, fxn: fx.Node) -> bool:
        """A reshape that merges the batch dim with others or splits it, with every other size a
        constant: ``view(-1, w, w, C)`` (Swin's windows), ``view(B // n, n, ...)``,
        ``flatten(0, 1)``; it is ``reshape(-1, *rest)`` at any batch size."""
        m = str(fxn.target) if fxn.op == "call_method" else getattr(fxn.target, "__name__", "")
        if m == "flatten" and fxn.op in ("call_method", "call_function") and fxn.target in ("flatten", torch.flatten):
            return (fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("start_dim", 0)) == 0
        if fxn.op == "call_method" and m in ("reshape_as", "view_as"):  # the other value's shape: fixed but its batch
            return True
        if not ((fxn.op == "call_method" and m in ("view", "reshape")) or
                (fxn.op == "call_function" and fxn.target is torch.reshape)):
            return False
        sizes = self.sizes_of(fxn)
        # a -1 after a batch-derived first size (``reshape(B * P, N, -1)``) stands for a size fixed by
        # the example, the channels' where it is their dim (then it follows their width under edits)
        batch_first = bool(sizes) and self.env.get(sizes[0], ("", None))[0] in ("batch", "batchexpr")
        return bool(sizes) and self.fixed_rest(fxn) and all(
            isinstance(v := self.const(a), int) and not isinstance(v, bool) and v >= -1
            and (v != -1 or i == 0 or batch_first)
            for i, a in enumerate(sizes) if i or not batch_first)

    def sizes_of(self, fxn: fx.Node) -> list[Any]:
        """The sizes a ``view``/``reshape`` call asks for, as written ([] for other calls)."""
        if not ((fxn.op == "call_method" and fxn.target in ("view", "reshape")) or
                (fxn.op == "call_function" and fxn.target is torch.reshape)):
            return []
        sizes = list(fxn.args[1:])
        if len(sizes) == 1 and isinstance(self.const(sizes[0]), (tuple, list, torch.Size)):
            sizes = list(sizes[0]) if isinstance(sizes[0], (tuple, list)) else list(self.const(sizes[0]))
        return sizes

    def fixed_rest(self, fxn: fx.Node) -> bool:
        """No size but the first of a ``view``/``reshape`` is read from the batch size (then the
        example's batch size would be baked into the others)."""
        return not any(isinstance(a, fx.Node) and self.env.get(a, ("", None))[0] in ("batch", "batchexpr")
                       for a in self.sizes_of(fxn)[1:])

    def made(self, node: Node, inputs: list[str], shape: tuple[int, ...], fxn: fx.Node) -> str:
        """Add a node the frontend made up while converting ``fxn`` (its output ``shape``, its
        source line ``fxn``'s)."""
        node.inputs, node.source, node.shape = inputs, _source(fxn), tuple(shape)
        node.axis = self.axis(node, torch.empty(shape, device="meta"))
        node.name = self.graph.fresh_name(node.name)
        self.graph.add(node)
        return node.name

    def channels_first_heads(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """Attention on a channels-first map (Visformer: ``qkv(x).reshape(B, 3, H, D, -1)`` of a
        ``(B, 3C, h, w)`` conv output, permuted with the 3 first): written as the channels-last
        form the heads are read in, ``flatten(2)``, channels last, ``reshape(B, N, 3, H, D)``, and
        the same permute on those dims (:meth:`heads`)."""
        if self.graph[x].axis != 1 or len(src) < 3 or len(out) != 5 or out[0] != src[0] or out[1] < 2 or \
                math.prod(out[1:4]) != src[1] or out[4] != math.prod(src[2:]):
            return False
        p, dims = self.only_permute(fxn, 5)
        if p is None or dims is None or dims[0] != 1:
            return False
        to_last = {0: 0, 1: 2, 2: 3, 3: 4, 4: 1}  # (B, K, H, D, N) -> (B, N, K, H, D)
        dims = tuple(to_last[d] for d in dims)
        if dims[0] != 2 or not p.users or not all(_takes_piece(u) for u in p.users):
            return False
        b, n, (k_n, h_n, d_n) = src[0], out[4], out[1:4]
        c = h_n * d_n

        def to_last(piece: str, k: int) -> str:  # (B, c, h, w) -> (B, c, N) -> (B, N, c)
            flat = self.made(Node(f"{fxn.name}__{k}f", "reshape", attrs={"rest": (c, n), "keep": [1, 1]}), [piece],
                             (b, c, n), fxn)
            return self.made(Node(f"{fxn.name}__{k}t", "permute", attrs={"dims": [0, 2, 1]}), [flat], (b, n, c), fxn)

        rest = [d - (d > 2) for d in dims[1:]]  # the permute on (B, N, H, D), K taken out
        return self.into_heads(fxn, p, x, 1, (b, c, *src[2:]), (k_n, h_n, d_n), rest, (b, n, h_n, d_n), to_last)

    def channels_first_merge(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """Attention's output ``(B, H, D, N)`` (a permute of what it computed) reshaped into a
        channels-first map ``(B, H*D, h, w)`` (Visformer): written as the channels-last merge the
        heads are read in, ``(B, N, H, D) -> (B, N, H*D)``, channels first again, then the map."""
        n = self.graph[x]
        if n.op != "permute" or list(n.attrs["dims"]) != [0, 1, 3, 2] or \
                self.graph[n.inputs[0]].op not in ("sdpa", "matmul", "einsum", "attention") or \
                len(src) != 4 or len(out) < 3 or out[0] != src[0] or out[1] != src[1] * src[2] or \
                math.prod(out[2:]) != src[3]:
            return False
        b, h, d, t = src
        last = self.made(Node(f"{fxn.name}__last", "permute", attrs={"dims": [0, 3, 1, 2]}), [x], (b, t, h, d), fxn)
        merged = self.made(Node(f"{fxn.name}__merge", "reshape", attrs={"rest": (t, h * d), "merge": True}), [last],
                           (b, t, h * d), fxn)
        first = self.made(Node(f"{fxn.name}__first", "permute", attrs={"dims": [0, 2, 1]}), [merged], (b, h * d, t),
                          fxn)
        self.add(Node(fxn.name, "reshape", attrs={"rest": out[1:], "keep": [1, 1]}), fxn, [first])
        return True

    def only_permute(self, fxn: fx.Node, rank: int) -> tuple[fx.Node | None, tuple[int, ...] | None]:
        """The call's only user when it is a permute or transpose, with its dims on a value of
        ``rank`` dims; (None, None) otherwise."""
        users = list(fxn.users)
        p = users[0] if len(users) == 1 else None
        if p is None or not ((p.op == "call_method" and p.target in cv.PERMUTE_METHODS and not p.kwargs)
                             or (p.op == "call_function" and p.target in cv.PERMUTE_FUNCS)):
            return None, None
        method = str(p.target) if p.op == "call_method" else ("permute" if p.target is torch.permute else "transpose")
        return p, cv.permute_dims(method, rank, tuple(self.const(v) for v in p.args[1:]), batch_first=False)

    def heads(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """A reshape that splits the neuron axis (the last) into (heads, per head): attention's
        reshape into heads, a ``heads`` node (:mod:`nestir.ir.opdefs.heads`). Into (K, heads, per
        head) with a permute that brings K first and only pieces taken of it (``q, k, v =
        qkv.reshape(B, N, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)``): K channel ranges, each
        split into heads and permuted alike (the producer is cut into K pieces)."""
        a = self.graph[x].axis
        if a is None or len(src) < 3 or a != len(src) - 1:
            return False
        permuted = any((u.op == "call_method" and u.target in cv.PERMUTE_METHODS) or
                       (u.op == "call_function" and u.target in cv.PERMUTE_FUNCS) for u in fxn.users)
        if len(out) == len(src) + 1 and out[:-2] == src[:-1] and out[-2] * out[-1] == src[-1] and \
                (out[-2] > 1 or permuted):  # (one head, as PVT's first stage: where a permute follows)
            self.add(Node(fxn.name, "heads", attrs={"heads": out[-2]}), fxn, [x])
            return True
        if len(out) != len(src) + 2 or out[:-3] != src[:-1] or math.prod(out[-3:]) != src[-1] or out[-3] < 2:
            return False
        p, dims = self.only_permute(fxn, len(out))
        if p is None:
            return False
        kpos = len(out) - 3
        if dims is None or dims[0] != kpos or not p.users or not all(_takes_piece(u) for u in p.users):
            return False
        k_n, h_n, d_n = out[-3:]
        rest = [d - (d > kpos) for d in dims[1:]]
        return self.into_heads(fxn, p, x, a, (*src[:-1], h_n * d_n), (k_n, h_n, d_n), rest, (*src[:-1], h_n, d_n))

    def into_heads(self, fxn: fx.Node, p: fx.Node, x: str, axis: int, piece: tuple[int, ...],
                   khd: tuple[int, int, int], rest: list[int], split: tuple[int, ...],
                   to_last: Any = None) -> bool:
        """K channel ranges of ``x`` along ``axis`` (the producer is cut into K pieces), each of
        shape ``piece``, made channels-last by ``to_last(name, k)`` where given, split into heads
        (``split``) and permuted by ``rest`` like the permute ``p`` did: the pieces ``p`` gives."""
        k_n, h_n, d_n = khd
        names = []
        for k in range(k_n):
            items: list[Any] = [None] * len(piece)
            items[axis] = (k * h_n * d_n, (k + 1) * h_n * d_n, 1)
            last = self.made(Node(f"{fxn.name}__{k}", "index", attrs={"items": items}), [x], piece, fxn)
            if to_last is not None:
                last = to_last(last, k)
            last = self.made(Node(f"{fxn.name}__{k}h", "heads", attrs={"heads": h_n}), [last], split, fxn)
            if rest != sorted(rest):
                last = self.made(Node(f"{p.name}__{k}", "permute", attrs={"dims": rest}), [last],
                                 tuple(split[d] for d in rest), p)
            names.append(last)
        self.env[fxn] = self.env[p] = ("tuple", names)  # the permute is done: its pieces are these
        return True

    def split_axis(self, fxn: fx.Node, x: str, src: tuple[int, ...], out: tuple[int, ...]) -> bool:
        """A reshape that splits the neuron axis into (R, C), the rest unchanged (SKNet's attention
        ``view(B, paths, C, 1, 1)``): R channel ranges stacked along a new dim, so the R pieces
        become the same C neurons (the producer is cut into R pieces)."""
        a = self.graph[x].axis
        if a is None or a == 0 or len(out) != len(src) + 1 or out[:a] != src[:a] or out[a + 2:] != src[a + 1:]:
            return False
        r, c = out[a], out[a + 1]
        if r < 2 or r * c != src[a]:
            return False
        if any((u.op == "call_method" and u.target in cv.PERMUTE_METHODS) or
               (u.op == "call_function" and u.target in cv.PERMUTE_FUNCS) for u in fxn.users):
            return False  # a channel shuffle (view, transpose, view): nestir.ir.permutations folds it
        pieces = []
        for k in range(r):
            items: list[Any] = [None] * len(src)
            items[a] = (k * c, (k + 1) * c, 1)
            shape = list(src)
            shape[a] = c
            name = self.graph.fresh_name(f"{fxn.name}__{k}")
            self.graph.add(Node(name, "index", [x], {"items": items}, {}, tuple(shape), a, _source(fxn)))
            pieces.append(name)
        self.add(Node(fxn.name, "stack", attrs={"dim": a}), fxn, pieces)
        return True

    def flatten_module(self, fxn: fx.Node, mod: nn.Flatten, x: str) -> None:
        """``nn.Flatten``: from dim 1 to the last, the flatten op (one channel becomes its H*W
        features); another range that keeps the batch dim, a reshape (freezes the groups it
        touches); one that flattens the batch dim stays opaque, saying so."""
        nd = len(self.in_shape(x))
        start = mod.start_dim % nd if nd else mod.start_dim
        if start >= 1:
            return self.reshape(fxn, x)
        self.opaque(fxn, mod, "module", f"Flatten(start_dim={mod.start_dim}, end_dim={mod.end_dim}): flattens "
                    "the batch dimension (only start_dim >= 1 is understood; nn.Flatten() is)")

    def mean(self, fxn: fx.Node, x: str, dims: Any, keepdim: bool, kind: str = "mean") -> None:
        nd = len(self.in_shape(x))
        if dims is None or not isinstance(keepdim, bool):
            return self.opaque(fxn, fxn.target, "method" if fxn.op == "call_method" else "function")
        dims = [dims] if isinstance(dims, int) else list(dims)
        dims = sorted(d % nd for d in dims)
        if 0 in dims:
            return self.opaque(fxn, fxn.target, "method" if fxn.op == "call_method" else "function")
        attrs: dict[str, Any] = {"dims": dims, "keepdim": bool(keepdim)}
        if kind != "mean":
            attrs["kind"] = kind
        self.add(Node(fxn.name, "mean", attrs=attrs), fxn, [x])

    def softmax(self, fxn: fx.Node, x: str, dim: int) -> None:
        nd = len(self.in_shape(x))
        if dim % nd == 0:
            return self.opaque(fxn, fxn.target, "method" if fxn.op == "call_method" else "function")
        self.add(Node(fxn.name, "softmax", attrs={"dim": dim % nd}), fxn, [x])

    def index_key(self, a: Any) -> Any:
        """An indexing key with the sizes it holds resolved (``x[:, :H, :W]`` with H and W read
        from a shape)."""
        if isinstance(a, (tuple, list)):
            return type(a)(self.index_key(k) for k in a)
        if isinstance(a, slice):
            return slice(*(self.const(v) if isinstance(v, fx.Node) else v for v in (a.start, a.stop, a.step)))
        return self.const(a)

    def trained(self, a: Any) -> bool:
        """Whether the constant ``a`` is (or is computed from) a parameter the model trains."""
        kind, r = self.env.get(a, ("const", None)) if isinstance(a, fx.Node) else ("const", None)
        return kind == "node" and bool(self.graph[r].attrs.get("trained"))

    def const_tensor(self, a: Any) -> torch.Tensor | None:
        """The value of a constant tensor argument (a parameter, buffer or folded constant)."""
        v = self.const(a)
        return v if isinstance(v, torch.Tensor) else None

    def channelwise(self, fxn: fx.Node, kind: str, x: str, c: torch.Tensor, first: bool, trained: bool = True) -> bool:
        """``x op c`` with ``c`` one value per neuron of ``x`` (a layer scale, a per-channel shift,
        ``c`` broadcast along every other dim): a ``scale`` node that owns ``c`` (``scale_const``
        where ``c`` is not a trained parameter, ``trained``: a buffer, a table computed from
        buffers); a one-element ``c`` becomes a scalar operand."""
        src, out = self.graph[x], tuple(self.values[fxn].shape)
        if src.shape != out or c.is_complex():
            return False
        if c.numel() == 1:
            self.add(Node(fxn.name, "binary", attrs={"kind": kind, "scalar": float(c.item()), "scalar_first": first}),
                     fxn, [x])
            return True
        shape = list(c.shape)
        while shape and shape[0] == 1:
            shape.pop(0)
        ax = src.axis
        k = -1 if ax is None else len(shape) - len(out) + ax  # the operand's dim along the neuron axis
        if k < 0 or shape[k] != out[ax] or torch.broadcast_shapes(tuple(shape), out) != out:  # type: ignore[index]
            return False
        value = c.detach().reshape(shape).movedim(k, 0).clone().float()  # one row per neuron
        attrs = {"kind": kind, "first": first, **({"dim": k} if k else {})}
        op = "scale" if trained else "scale_const"
        self.add(Node(fxn.name, op, attrs=attrs, params={"value": value}), fxn, [x])
        return True

    def binary(self, fxn: fx.Node, kind: str, a: Any, b: Any) -> bool:
        ra, rb = self.ref(a), self.ref(b)
        for r, other, first in ((ra, b, False), (rb, a, True)):
            c = self.const_tensor(other)
            if r is not None and c is not None and self.graph[r].op != "const" \
                    and self.channelwise(fxn, kind, r, c, first, self.trained(other)):
                return True
        if ra is not None and rb is not None:
            self.add(Node(fxn.name, "binary", attrs={"kind": kind}), fxn, [ra, rb])
            return True
        for r, other, first in ((ra, b, False), (rb, a, True)):
            s = self.const(other)
            if r is not None and isinstance(s, (int, float)) and not isinstance(s, bool):
                self.add(Node(fxn.name, "binary", attrs={"kind": kind, "scalar": float(s), "scalar_first": first}),
                         fxn, [r])
                return True
        return False

    def batch_expand(self, fxn: fx.Node, x: str, method: str) -> bool:
        """``v.repeat(B, 1, ...)`` / ``v.expand(B, -1, ...)`` of a computed value of batch 1, ``B``
        the batch size (XCiT's position encoding, a conv of a constant grid): a ``batch_expand``
        node that reads the batch size from a model input at run time."""
        shape = self.in_shape(x)
        sizes = fxn.args[1] if len(fxn.args) == 2 and isinstance(fxn.args[1], (list, tuple)) else fxn.args[1:]
        if fxn.kwargs or not shape or shape[0] != 1 or len(sizes) != len(shape) or self.graph[x].op == "const":
            return False
        first = sizes[0]
        if not isinstance(first, fx.Node) or self.env.get(first, ("", None))[0] != "batch":
            return False
        keep = 1 if method == "repeat" else -1
        if any(self.const(a) != keep for a in sizes[1:]):
            return False
        inp = self.batch_input(self.env[first][1][1])
        if inp is None:
            return False
        self.add(Node(fxn.name, "batch_expand"), fxn, [x, inp])
        return True

    def batch_input(self, size: int) -> str | None:
        """A model input whose batch dim has ``size`` (the batch size is read from it at run time)."""
        return next((n.name for n in self.graph.inputs if (n.shape or (None,))[0] == size), None)

    def same_tensor_type(self, fxn: fx.Node, x: str) -> bool:
        """The call's value has the dtype and device of its input ``x`` (a cast that does nothing)."""
        v, src = self.values.get(fxn), self.values.get(fxn.args[0])  # type: ignore[arg-type]
        return isinstance(v, torch.Tensor) and isinstance(src, torch.Tensor) and v.dtype == src.dtype \
            and v.device == src.device and tuple(v.shape) == tuple(src.shape) and not fxn.kwargs.get("copy", False)

    def matmul(self, fxn: fx.Node) -> bool:
        """``a @ b`` of two computed values (not constants: a product with a weight is a layer)."""
        refs = [self.ref(a) for a in fxn.args]
        if len(refs) != 2 or fxn.kwargs or any(r is None or self.graph[r].op == "const" for r in refs):
            return False
        self.add(Node(fxn.name, "matmul"), fxn, refs)  # type: ignore[arg-type]
        return True

    def roll(self, fxn: fx.Node, x: str) -> bool:
        """``torch.roll`` with constant shifts along given dims other than the batch dim."""
        a = {**dict(zip(("input", "shifts", "dims"), fxn.args, strict=False)), **fxn.kwargs}
        shifts, dims = a.get("shifts"), a.get("dims")
        shifts = [self.const(v) for v in shifts] if isinstance(shifts, (tuple, list)) else [self.const(shifts)]
        dims = [self.const(v) for v in dims] if isinstance(dims, (tuple, list)) else [self.const(dims)]
        nd = len(self.in_shape(x))
        if len(shifts) != len(dims) or not all(isinstance(v, int) for v in shifts + dims) or \
                any(d % nd == 0 for d in dims):
            return False
        self.add(Node(fxn.name, "roll", attrs={"shifts": tuple(shifts), "dims": tuple(d % nd for d in dims)}), fxn, [x])
        return True

    def pad(self, fxn: fx.Node, x: str) -> bool:
        """``F.pad`` with zeros, the batch dim not padded: a ``pad`` node (an identity where every
        pad is 0, as Swin's at sizes that are multiples of its window)."""
        names = ("input", "pad", "mode", "value")
        a = {**dict(zip(names, fxn.args, strict=False)), **fxn.kwargs}
        pads, mode, value = a.get("pad"), self.const(a.get("mode", "constant")), self.const(a.get("value"))
        pads = [self.const(p) for p in pads] if isinstance(pads, (tuple, list)) else self.const(pads)
        nd = len(self.in_shape(x))
        if not isinstance(pads, (tuple, list)) or not all(isinstance(p, int) for p in pads) or len(pads) % 2 or \
                len(pads) // 2 >= nd or mode != "constant" or value not in (None, 0, 0.0):
            return False
        if not any(pads):
            self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        else:
            self.add(Node(fxn.name, "pad", attrs={"pads": tuple(pads)}), fxn, [x])
        return True

    def einsum(self, fxn: fx.Node) -> bool:
        """``torch.einsum(equation, *values)`` of computed values: an ``einsum`` node."""
        if fxn.kwargs or len(fxn.args) < 2 or not isinstance(fxn.args[0], str):
            return False
        ops = fxn.args[1] if len(fxn.args) == 2 and isinstance(fxn.args[1], (list, tuple)) else fxn.args[1:]
        refs = [self.ref(a) for a in ops]
        eq = fxn.args[0].replace(" ", "")
        if not refs or "." in eq or any(r is None or self.graph[r].op == "const" for r in refs):
            return False
        self.add(Node(fxn.name, "einsum", attrs={"equation": eq}), fxn, refs)  # type: ignore[arg-type]
        return True

    def sdpa(self, fxn: fx.Node) -> bool:
        """``F.scaled_dot_product_attention`` with constant options: an ``sdpa`` node."""
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
        if len(fxn.args) > len(names) or any(k not in names for k in fxn.kwargs):
            return False
        a = {**dict(zip(names, fxn.args, strict=False)), **fxn.kwargs}
        refs = [self.ref(a.get(k)) for k in names[:3]]
        mask = a.get("attn_mask")
        opts = [self.const(a.get(k)) for k in ("dropout_p", "is_causal", "scale", "enable_gqa")]
        if any(r is None for r in refs) or (mask is not None and self.ref(mask) is None) or opts[3] or \
                not isinstance(opts[0] or 0.0, (int, float)) or not isinstance(opts[2] or 1.0, (int, float)):
            return False
        attrs: dict[str, Any] = {"p": float(opts[0] or 0.0), "causal": bool(opts[1]),
                                 "scale": None if opts[2] is None else float(opts[2])}
        if mask is not None:
            refs.append(self.ref(mask))
            attrs["bool_mask"] = self.values[mask].dtype == torch.bool
        self.add(Node(fxn.name, "sdpa", attrs=attrs), fxn, refs)  # type: ignore[arg-type]
        return True

    def known_function(self, fxn: fx.Node, kw: dict[str, Any] | None) -> bool:
        """A call of a function an op definition recognises (``OpDef.functions``), with one tensor
        input and every other tensor argument a constant."""
        t = fxn.target
        d = next((d for d in OPS.values() if d.handles(t)), None)
        if d is None:
            return False
        src = kw["input"] if kw is not None and "input" in kw else (fxn.args[0] if fxn.args else None)
        x = self.ref(src)
        others = [a for a in cv.flat((*fxn.args, *fxn.kwargs.values())) if isinstance(a, fx.Node) and a is not src]
        if x is None or any(self.env[a][0] == "node" and self.graph[self.env[a][1]].op != "const" for a in others):
            return False
        node = d.from_function(fxn.name, fxn, kw, self.const)
        if node is None:
            return False
        self.add(node, fxn, [x])
        return True

    def call_function(self, fxn: fx.Node) -> None:
        t = fxn.target
        try:
            norm = fxn.normalized_arguments(self.gm, normalize_to_only_use_kwargs=True)
        except Exception:
            norm = None
        kw = dict(norm.kwargs) if norm is not None else None
        first = self.ref(fxn.args[0]) if fxn.args else None
        if t in (operator.neg, torch.neg) and first is not None and len(fxn.args) == 1 and not fxn.kwargs:
            return self.add(Node(fxn.name, "binary", attrs={"kind": "mul", "scalar": -1.0, "scalar_first": False}),
                            fxn, [first])
        if t in (operator.matmul, torch.matmul, torch.bmm) and self.matmul(fxn):
            return None
        if t is F.scaled_dot_product_attention and self.sdpa(fxn):
            return None
        if t is torch.einsum and self.einsum(fxn):
            return None
        if t is F.pad and first is not None and self.pad(fxn, first):
            return None
        if t is torch.roll and first is not None and self.roll(fxn, first):
            return None
        if t in cv.BINARY_FUNCS and len(fxn.args) == 2 and fxn.kwargs.get("alpha", 1) == 1:
            if self.binary(fxn, cv.BINARY_FUNCS[t], fxn.args[0], fxn.args[1]):
                return
        if t in (torch.cat, torch.concat) and kw is not None:
            refs = [self.ref(a) for a in kw["tensors"]]
            if refs and all(r is not None for r in refs):
                nd = len(self.in_shape(refs[0]))  # type: ignore[arg-type]
                if self.prepend(fxn, refs, int(kw.get("dim", 0)) % nd):  # type: ignore[arg-type]
                    return
                self.add(Node(fxn.name, "cat", attrs={"dim": int(kw.get("dim", 0)) % nd}), fxn, refs)  # type: ignore[arg-type]
                return
        if t is torch.stack and kw is not None:
            refs = [self.ref(a) for a in kw["tensors"]]
            if refs and all(r is not None for r in refs):
                nd = len(self.in_shape(refs[0])) + 1  # type: ignore[arg-type]
                d = int(kw.get("dim", 0)) % nd
                if d >= 1:
                    self.add(Node(fxn.name, "stack", attrs={"dim": d}), fxn, refs)  # type: ignore[arg-type]
                    return
        if t in (torch.softmax, F.softmax) and first is not None and kw is not None and isinstance(kw.get("dim"), int) \
                and kw.get("dtype") is None:
            return self.softmax(fxn, first, kw["dim"])
        if t is torch.sum and first is not None and kw is not None and kw.get("dim") is not None \
                and kw.get("dtype") is None:
            return self.mean(fxn, first, kw.get("dim"), kw.get("keepdim", False), kind="sum")
        if t in cv.RESHAPE_FUNCS and first is not None:
            return self.reshape(fxn, first)
        if t in cv.PERMUTE_FUNCS and first is not None and self.permute(fxn, first, fxn.args[1:]):
            return None
        if t in cv.SPLIT_FUNCS and first is not None and self.split(fxn, first, t.__name__, tuple(fxn.args[1:])):
            return None
        if t is torch.mean and first is not None and kw is not None and "dim" in kw:
            return self.mean(fxn, first, kw.get("dim"), kw.get("keepdim", False))
        if t is operator.getitem and first is not None and len(fxn.args) == 2 and self.ref(fxn.args[1]) is None:
            items = cv.index_items(self.index_key(fxn.args[1]), self.in_shape(first), self.graph[first].axis)
            if items is not None:
                op = "identity" if all(i is None for i in items) else "index"
                return self.add(Node(fxn.name, op, attrs={"p": 0.0} if op == "identity" else {"items": items}),
                                fxn, [first])
        if self.known_function(fxn, kw):
            return None
        self.opaque(fxn, t, "function")

    def call_method(self, fxn: fx.Node) -> None:
        m = str(fxn.target)
        x = self.ref(fxn.args[0]) if fxn.args else None
        if x is not None and m in cv.IDENTITY_METHODS:
            return self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])
        if x is not None and m == "roll" and self.roll(fxn, x):
            return None
        if x is not None and m in ("to", "type_as", "float") and self.same_tensor_type(fxn, x):
            return self.add(Node(fxn.name, "identity", attrs={"p": 0.0}), fxn, [x])  # a cast to what it is
        if x is not None and m in ACT_METHODS and len(fxn.args) == 1:
            return self.add(Node(fxn.name, "act", attrs={"kind": ACT_METHODS[m]}), fxn, [x])
        if m in cv.BINARY_METHODS and len(fxn.args) == 2 and not fxn.kwargs:
            if self.binary(fxn, cv.BINARY_METHODS[m], fxn.args[0], fxn.args[1]):
                return
        if x is not None and m in ("repeat", "expand") and self.batch_expand(fxn, x, m):
            return None
        if x is not None and m == "expand_as" and len(fxn.args) == 2 and not fxn.kwargs:
            other = self.ref(fxn.args[1])
            if other is not None and self.graph[other].op != "const":
                return self.add(Node(fxn.name, "expand_as"), fxn, [x, other])
        if x is not None and m == "neg" and len(fxn.args) == 1 and not fxn.kwargs:
            return self.add(Node(fxn.name, "binary", attrs={"kind": "mul", "scalar": -1.0, "scalar_first": False}),
                            fxn, [x])
        if m in ("matmul", "bmm", "__matmul__") and self.matmul(fxn):
            return None
        if x is not None and m in cv.RESHAPE_METHODS:
            return self.reshape(fxn, x)
        if x is not None and m in cv.SPLIT_METHODS and self.split(fxn, x, m, tuple(fxn.args[1:])):
            return None
        if x is not None and m in cv.PERMUTE_METHODS and not fxn.kwargs and self.permute(fxn, x, fxn.args[1:], m):
            return None
        if x is not None and m in ("mean", "sum") and "dtype" not in fxn.kwargs:
            dims = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim")
            keepdim = fxn.args[2] if len(fxn.args) > 2 else fxn.kwargs.get("keepdim", False)
            return self.mean(fxn, x, dims, keepdim, kind=m)
        if x is not None and m == "softmax" and "dtype" not in fxn.kwargs:
            dim = fxn.args[1] if len(fxn.args) > 1 else fxn.kwargs.get("dim")
            if isinstance(dim, int):
                return self.softmax(fxn, x, dim)
        self.opaque(fxn, m, "method")

    def call_module(self, fxn: fx.Node) -> None:
        mod = self.gm.get_submodule(str(fxn.target))
        auto = getattr(self.gm, "_nestir_auto_leaves", {})
        x = self.ref(fxn.args[0]) if len(fxn.args) == 1 and not fxn.kwargs else None
        if isinstance(mod, nn.Flatten) and x is not None and str(fxn.target) not in auto:
            return self.flatten_module(fxn, mod, x)
        if type(mod) is nn.Softmax and x is not None and isinstance(mod.dim, int):
            return self.softmax(fxn, x, mod.dim)
        if cv.is_attention_module(mod) and str(fxn.target) not in auto and self.attention(fxn, mod):
            return None
        if x is not None and isinstance(mod, (nn.Conv1d, nn.Conv2d)) and type(mod) not in (nn.Conv1d, nn.Conv2d):
            if str(fxn.target) not in auto and self.conv_subclass(fxn, mod, x):
                return None
            if str(fxn.target) not in auto:  # not a plain conv (weight standardisation): trace it through
                self.unmatched.append(str(fxn.target))
        d = next((d for d in OPS.values() if d.matches(mod)), None)
        node = d.from_module(fxn.name, mod) if d is not None and x is not None and str(fxn.target) not in auto else None
        if node is not None and d.structural and not self.reproduces(node, fxn):  # type: ignore[union-attr]
            node = None
        if node is not None:
            return self.add(node, fxn, [x])  # type: ignore[list-item]
        if str(fxn.target) not in auto and not type(mod).__module__.startswith("torch.") and \
                (cv.is_attention_module(mod) or (d is not None and d.structural)):
            self.unmatched.append(str(fxn.target))
        self.opaque(fxn, mod, "module")
        if str(fxn.target) in auto:
            n = self.graph[fxn.name]
            n.attrs["label"] = f"{n.attrs['label']} (not traceable, kept whole: {auto[str(fxn.target)]})"

    def setitem(self, fxn: fx.Node) -> None:
        """``t[...] = value``: on a constant (a mask built in place, as Swin's) the constant's
        recorded value already holds it; on a computed value nestir cannot follow it."""
        target = fxn.args[0]
        kind, r = self.env.get(target, ("const", None)) if isinstance(target, fx.Node) else ("const", None)
        if kind == "node" and self.graph[r].op != "const":
            raise TraceError(f"{_source(fxn)}: an assignment into a computed tensor ('{r}[...] = ...') changes it in "
                             "place, which nestir cannot follow. Fix: compute the new value (torch.where, torch.cat, "
                             "index_put) instead, or make the submodule that does it a leaf: nestir.trace(..., "
                             "leaf_modules=[ThatModule]).")
        self.env[fxn] = ("const", None)

    def reproduces(self, node: Node, fxn: fx.Node) -> bool:
        """Whether ``node`` computes what the module call ``fxn`` recorded (a module recognised by
        its structure, not its class, must prove it)."""
        x, ref = self.values.get(fxn.args[0]), self.values.get(fxn)
        if not isinstance(x, torch.Tensor) or not isinstance(ref, torch.Tensor):
            return False
        try:
            with torch.no_grad():
                y = opdef(node.op).evaluate(node, [x], node.params, False)
        except Exception:
            return False
        return tuple(y.shape) == tuple(ref.shape) and torch.allclose(
            y, ref, atol=1e-5 * max(1.0, float(ref.abs().max())), rtol=1e-4)

    def folds(self, fxn: fx.Node, v: Any) -> bool:
        """A call whose every input is a constant (``gamma.view(1, -1, 1, 1)``, ``pos.flatten()``)
        is itself a constant: the value recorded for it."""
        if not isinstance(v, torch.Tensor) or fxn.op == "call_module":
            return False
        args = list(fxn.args)
        fresh = fxn.op == "call_method" and fxn.target in _NEW_TENSOR  # x.new_zeros(sizes): x's dtype only
        used = [a for a in (*args[fresh:], *fxn.kwargs.values()) for a in cv.flat(a) if isinstance(a, fx.Node)]
        refs = [self.env[a] for a in used]
        return (bool(refs) or fresh) and all(kind == "const" or (kind == "node" and self.graph[r].op == "const")
                                             for kind, r in refs)

    def build(self, name: str) -> Graph:
        self.graph.name = name
        for fxn in self.gm.graph.nodes:
            v = self.values.get(fxn)
            if fxn in self.env:  # converted with the node before it (a permute into heads)
                continue
            if fxn.op == "placeholder" and not isinstance(v, torch.Tensor):  # an argument fixed at its default
                self.env[fxn] = ("const", v)
            elif fxn.op == "placeholder":
                self.add(Node(fxn.name, "input"), fxn, [])
            elif fxn.op == "output":
                refs, structure = _output_refs(self, fxn.args[0])
                self.graph.add(Node(fxn.name, "output", inputs=refs, attrs={"structure": structure}))
            elif fxn.op == "get_attr":
                if isinstance(v, torch.Tensor):
                    trained = {"trained": True} if isinstance(v, nn.Parameter) and v.requires_grad else {}
                    self.add(Node(fxn.name, "const", attrs=trained, params={"value": v.detach().clone()}), fxn, [])
                else:
                    self.env[fxn] = ("const", v)
            elif fxn.target is operator.getitem and isinstance(fxn.args[0], fx.Node) \
                    and self.env[fxn.args[0]][0] == "tuple":
                item = self.env[fxn.args[0]][1][fxn.args[1]]
                self.env[fxn] = ("const", None) if item is None else ("node", item)
            elif _takes_piece(fxn) and isinstance(fxn.args[0], fx.Node) and self.env[fxn.args[0]][0] == "tuple":
                self.env[fxn] = self.env[fxn.args[0]]  # unbind(0) of pieces: the pieces
            elif fxn.op == "call_function" and fxn.target is operator.setitem:
                self.setitem(fxn)
            elif not isinstance(v, torch.Tensor) and not _holds_tensor(v):
                if not self.sizes(fxn, v):
                    self.env[fxn] = ("const", v)
            elif self.folds(fxn, v):
                used = [a for a in cv.flat((*fxn.args, *fxn.kwargs.values())) if isinstance(a, fx.Node)]
                trained = {"trained": True} if any(self.trained(a) for a in used) else {}
                self.add(Node(fxn.name, "const", attrs=trained, params={"value": v.detach().clone()}), fxn, [])
            elif fxn.op == "call_function":
                self.call_function(fxn)
            elif fxn.op == "call_method":
                self.call_method(fxn)
            else:
                self.call_module(fxn)
        self.graph.drop_unused()
        fold_permutations(self.graph)
        _cut_producers(self.graph)
        _take_pieces(self.graph)
        return self.graph


def _cut_producers(graph: Graph) -> None:
    """Where a channel range (a slice, a piece of ``split``) cuts a neuron group with a single
    linear/conv producer, split that producer's rows into pieces joined by a ``cat`` under its
    name: the same function, and each piece becomes a group of its own that resizes alone
    (CSPNet's and DPN's splits, GhostNet's and ReXNet's slices). The same where an add or mul
    meets groups split differently on its two sides (:func:`_align_cuts`)."""
    from nestir.ir.groups import analyze
    from nestir.ir.opdefs import index_range

    for _ in range(8):
        info = analyze(graph)
        cuts: dict[str, set[int]] = {}
        for n in graph:
            src = graph[n.inputs[0]] if n.op == "index" else None
            cut = index_range(n, src.axis) if src is not None else None
            lay = info.layouts.get(src.name) if src is not None else None
            if cut is None or lay is None:
                continue
            off = 0
            for g, r in lay:
                grp = info.groups[g]
                w = grp.width * r
                inner = {c - off for c in cut if off < c < off + w}
                for prod in _cuttable(graph, grp, inner) if r == 1 else []:
                    cuts.setdefault(prod.name, set()).update(inner)
                off += w
        for n in graph:
            if n.op == "binary" and len(n.inputs) == 2:
                _align_cuts(graph, info, n, cuts)
        if not cuts:
            return
        for name, offsets in cuts.items():
            _cut(graph, name, sorted(offsets))


def _take_pieces(graph: Graph) -> None:
    """An ``index`` that takes exactly one input of a ``cat`` (a piece of a cut producer, such as
    q of a fused qkv layer) is that input: consumers read the piece itself, so that no value
    holds the groups of q, k and v at once (their heads are tied; see :mod:`nestir.ir.opdefs.heads`)."""
    alias: dict[str, str] = {}
    for n in graph:
        src = graph[n.inputs[0]] if n.op == "index" else None
        if src is None or src.op != "cat":
            continue
        d, items = src.attrs["dim"], n.attrs["items"]
        cut = items[d] if d < len(items) else None
        others = [it for i, it in enumerate(items) if i != d]
        if not isinstance(cut, (list, tuple)) or cut[2] != 1 or any(it is not None for it in others):
            continue
        off = 0
        for i in src.inputs:
            w = (graph[i].shape or ())[d]
            if (off, off + w) == (cut[0], cut[1]) and graph[i].shape == n.shape and graph[i].axis == n.axis:
                alias[n.name] = i
            off += w
    if not alias:
        return
    for n in graph:
        n.inputs = [alias.get(i, i) for i in n.inputs]
    for name in alias:
        del graph.nodes[name]
    graph.drop_unused()


def _cuttable(graph: Graph, grp: Any, offsets: set[int]) -> list[Node]:
    """The linear/conv producers of a neuron group when every one of them can have its rows cut
    into pieces at ``offsets`` (none reads the group itself; a grouped conv only between its
    conv groups, each piece then reading its own range of the input), else []."""
    prods = [graph[p] for p in grp.producers]

    def ok(p: Node) -> bool:
        if p.name in grp.consumers or p.op not in ("linear", "conv"):
            return False
        g = p.attrs.get("groups", 1) if p.op == "conv" else 1
        per = p.params["weight"].shape[0] // g
        return g == 1 or ("area" not in p.params and all(o % per == 0 for o in offsets))

    return prods if prods and offsets and all(ok(p) for p in prods) else []


def _align_cuts(graph: Graph, info: Any, n: Node, cuts: dict[str, set[int]]) -> None:
    """An add or mul of two values whose neuron groups split the channels differently (MixNet's and
    GhostNet's cat of pieces times a squeeze-and-excitation gate, or plus a shortcut conv): cut
    the single producers on either side at the other side's boundaries, so that the groups line
    up piece by piece instead of freezing."""
    lays = [info.layouts.get(i) for i in n.inputs]
    srcs = [graph[i] for i in n.inputs]
    if any(lay is None or any(r != 1 for _, r in lay) for lay in lays) or any(
            s.axis is None or s.shape is None or n.shape is None or len(s.shape) != len(n.shape)
            or s.axis != n.axis or s.shape[s.axis] != n.shape[n.axis] for s in srcs):
        return
    bounds: list[set[int]] = []
    for lay in lays:
        off, b = 0, set()
        for g, _ in lay:  # type: ignore[union-attr]
            off += info.groups[g].width
            b.add(off)
        bounds.append(b)
    if bounds[0] == bounds[1]:
        return
    every = bounds[0] | bounds[1]
    for lay in lays:
        off = 0
        for g, _ in lay:  # type: ignore[union-attr]
            w = info.groups[g].width
            inner = {c - off for c in every if off < c < off + w}
            for prod in _cuttable(graph, info.groups[g], inner):
                cuts.setdefault(prod.name, set()).update(inner)
            off += w


def _cut(graph: Graph, name: str, offsets: list[int]) -> None:
    p = graph[name]
    bounds = [0, *offsets, p.params["weight"].shape[0]]
    groups = p.attrs.get("groups", 1) if p.op == "conv" else 1
    per, width = p.params["weight"].shape[0] // groups, p.params["weight"].shape[1]  # a conv group's rows, columns
    pieces: list[Node] = []
    taken: set[str] = set()

    def fresh(base: str) -> str:
        taken.add(name_ := graph.fresh_name(base, taken))
        return name_

    for k, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False)):
        piece = fresh(f"{name}__{k}")
        params = {key: (t[:, a:b] if key == "area" else t[a:b]).clone() for key, t in p.params.items()}
        shape = list(p.shape or ())
        shape[p.axis] = b - a  # type: ignore[index]
        inputs, attrs = list(p.inputs), dict(p.attrs)
        if groups > 1:  # conv groups a/per .. b/per read input channels a/per*width .. b/per*width
            src = graph[p.inputs[0]]
            items: list[Any] = [None] * len(src.shape or ())
            items[1] = (a // per * width, b // per * width, 1)
            in_shape = list(src.shape or ())
            in_shape[1] = (b - a) // per * width
            sl = Node(fresh(f"{piece}_in"), "index", [src.name], {"items": items}, {}, tuple(in_shape), src.axis,
                      p.source)
            pieces.append(sl)
            inputs, attrs["groups"] = [sl.name], (b - a) // per
        pieces.append(Node(piece, p.op, inputs, attrs, params, tuple(shape), p.axis, p.source))
    joined = Node(name, "cat", [q.name for q in pieces if q.op != "index"], {"dim": p.axis}, {}, p.shape, p.axis,
                  p.source)
    nodes = list(graph.nodes.values())
    graph.nodes = {}
    for n in nodes:
        for new in (pieces + [joined] if n.name == name else [n]):
            graph.nodes[new.name] = new


def _takes_piece(u: fx.Node) -> bool:
    """``u`` takes pieces along dim 0: ``unbind(0)`` or ``[k]``."""
    if u.op == "call_function" and u.target is operator.getitem:
        return len(u.args) == 2 and isinstance(u.args[1], int)
    unbind = (u.op == "call_method" and u.target == "unbind") or (u.op == "call_function" and u.target is torch.unbind)
    return unbind and (u.args[1] if len(u.args) > 1 else u.kwargs.get("dim", 0)) == 0


def _holds_tensor(v: Any) -> bool:
    return isinstance(v, (tuple, list)) and any(isinstance(t, torch.Tensor) or _holds_tensor(t) for t in v)


def _output_refs(b: _Builder, arg: Any) -> tuple[list[str], str]:
    if isinstance(arg, (tuple, list)):
        refs = [b.ref(a) for a in arg]
        if all(r is not None for r in refs):
            return refs, "tuple"  # type: ignore[return-value]
        raise TraceError("model output must be a tensor or a tuple of tensors")
    r = b.ref(arg)
    if r is None:
        raise TraceError("model output must be a tensor or a tuple of tensors")
    return [r], "single"
