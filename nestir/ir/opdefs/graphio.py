"""The graph's boundary and what nestir keeps as given: ``input``, ``output``, ``const`` and
``opaque`` (a call nestir does not understand: it runs as traced and freezes what it touches).
The lowerings emit inputs and outputs themselves."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from nestir.ir.opdefs.base import OpDef, register
from nestir.ir.ops import BATCH_ARITH, fill_template, run_opaque

if TYPE_CHECKING:
    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import Layout, _Analysis


@register
class Input(OpDef):
    name = "input"
    shaped = False

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        return 1 if value.dim() >= 2 else None

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        return None if node.axis is None else [(an.new(node.width or 0, frozen="model input"), 1)]


@register
class Output(OpDef):
    name = "output"
    shaped = False

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        for i in node.inputs:
            an.freeze(an.layout.get(i), "model output")
        return None


@register
class Const(OpDef):
    """A constant tensor ``params["value"]`` (a buffer or an untrained parameter)."""

    name = "const"
    shaped = False

    def check(self, graph: Graph, node: Node) -> str | None:
        if "value" not in node.params:
            return "const node needs a 'value'"
        if node.shape is not None and tuple(node.params["value"].shape) != node.shape:
            return "const value does not match its shape"
        return None

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return p["value"]

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        low.root.register_buffer(node.name, node.params["value"].clone())
        return low.fg.get_attr(node.name)

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        return e.const(node.name, node.params["value"])


@register
class Opaque(OpDef):
    """A call kept as traced: ``fn`` (a module, a function or a method name) with its ``args`` and
    ``kwargs`` templates (inputs as ``("__ref__", i)``, the batch size as ``("__batch__", i)``)."""

    name = "opaque"
    shaped = False

    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        return run_opaque(node, args)

    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        a, size = node.attrs, low.batch()

        def arith(op: str, x: Any, y: Any) -> Any:  # on the batch size read at run time: an fx node
            return low.fg.call_function(BATCH_ARITH[op], (x, y))

        call_args = tuple(fill_template(a["args"], args, size, arith))
        call_kwargs = fill_template(a["kwargs"], args, size, arith)
        if a["kind"] == "module":
            return low.module(node, a["fn"], call_args, call_kwargs)
        if a["kind"] == "method":
            return low.fg.call_method(a["fn"], call_args, call_kwargs)
        return low.fg.call_function(a["fn"], call_args, call_kwargs)
