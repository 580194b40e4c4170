"""The builder's values: what each fx node became (an IR node, a constant, a batch size), the
nodes it adds, and the batch-size arithmetic an fx graph carries."""

from __future__ import annotations

import operator
import os
from typing import Any

import torch
import torch.fx as fx

from nestir.ir import convert as cv
from nestir.ir.graph import Graph, Node
from nestir.ir.kinds import Fx, Op
from nestir.ir.opdefs import opdef
from nestir.ir.ops import BATCH_ARITH

_TORCH_DIR = os.path.dirname(torch.__file__)
_OWN_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above nestir/
_NEW_TENSOR = ("new_zeros", "new_ones", "new_full", "new_empty", "new_tensor")  # read only the dtype and device


def _source(node: fx.Node) -> str:
    """Where the call was written: the innermost frame of its recorded stack outside torch and
    nestir."""
    frames = [line.strip()[5:].replace('"', "") for line in (node.stack_trace or "").splitlines()
              if line.strip().startswith("File ")]
    own = [f for f in frames if not os.path.abspath(f.split(",")[0]).startswith(
        (_TORCH_DIR, _OWN_DIR + os.sep + "nestir"))]
    return (own or frames or [""])[-1]


class _Values:
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
                return n.params["value"] if n.op == Op.CONST else None
            if kind in ("shape", "batch"):
                return v[1]
            if kind == "batchexpr":
                return v[-1]
            if kind == "tuple":
                return None
            return v
        return a

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

    def put(self, node: Node, inputs: list[str], v: torch.Tensor, axis: int = -1) -> None:
        """Add a node the frontend made up (not one fx node), with its value ``v``."""
        node.inputs = inputs
        node.shape = tuple(v.shape)
        node.axis = axis % v.dim()
        self.graph.add(node)

    def made(self, node: Node, inputs: list[str], shape: tuple[int, ...], fxn: fx.Node) -> str:
        """Add a node the frontend made up while converting ``fxn`` (its output ``shape``, its
        source line ``fxn``'s)."""
        node.inputs, node.source, node.shape = inputs, _source(fxn), tuple(shape)
        node.axis = self.axis(node, torch.empty(shape, device="meta"))
        node.name = self.graph.fresh_name(node.name)
        self.graph.add(node)
        return node.name

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

    def same_tensor_type(self, fxn: fx.Node, x: str) -> bool:
        """The call's value has the dtype and device of its input ``x`` (a cast that does nothing)."""
        v, src = self.values.get(fxn), self.values.get(fxn.args[0])  # type: ignore[arg-type]
        return isinstance(v, torch.Tensor) and isinstance(src, torch.Tensor) and v.dtype == src.dtype \
            and v.device == src.device and tuple(v.shape) == tuple(src.shape) and not fxn.kwargs.get("copy", False)

    def batch_input(self, size: int) -> str | None:
        """A model input whose batch dim has ``size`` (the batch size is read from it at run time)."""
        return next((n.name for n in self.graph.inputs if (n.shape or (None,))[0] == size), None)

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

    def sizes(self, fxn: fx.Node, v: Any) -> bool:
        """Track ``x.shape``, ``x.size()`` and the batch size read from them (``x.shape[0]``,
        ``x.size(0)``): an opaque call that uses the batch size then reads it at run time instead
        of keeping the example's batch size as a constant."""
        t, args = fxn.target, fxn.args
        if fxn.op == Fx.CALL_FUNCTION and t is getattr and len(args) == 2 and args[1] == "shape":
            x = self.ref(args[0])
            if x is not None:
                self.env[fxn] = ("shape", (x, v))
                return True
        if fxn.op == Fx.CALL_METHOD and t == "size" and args and self.ref(args[0]) is not None:
            x, dim = self.ref(args[0]), args[1] if len(args) > 1 else fxn.kwargs.get("dim")
            if dim is None:
                self.env[fxn] = ("shape", (x, v))
                return True
            if dim == 0:
                self.env[fxn] = ("batch", (x, v))
                return True
        if fxn.op == Fx.CALL_FUNCTION and t is operator.getitem and len(args) == 2 and args[1] == 0 \
                and isinstance(args[0], fx.Node) and self.env.get(args[0], ("", None))[0] == "shape":
            self.env[fxn] = ("batch", (self.env[args[0]][1][0], v))
            return True
        op = next((k for k, f in BATCH_ARITH.items() if f is t), None)
        if fxn.op == Fx.CALL_FUNCTION and op is not None and len(args) == 2 and not fxn.kwargs and \
                any(isinstance(a, fx.Node) and self.env.get(a, ("", None))[0] in ("batch", "batchexpr") for a in args) \
                and all(isinstance(a, int) or (isinstance(a, fx.Node) and (
                    self.env.get(a, ("", None))[0] in ("batch", "batchexpr")
                    or isinstance(self.const(a), int))) for a in args):
            self.env[fxn] = ("batchexpr", (op, args[0], args[1], v))  # B * C: follows the batch size too
            return True
        return False
