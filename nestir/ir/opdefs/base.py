"""The op-definition interface and its registry.

An :class:`OpDef` says everything nestir knows about one kind of IR node: how the frontend
recognises it (module and functional forms), how it evaluates (which is also its shape rule: the
verifier evaluates it on meta tensors), its output's neuron axis, how neurons flow through it
(group analysis), which of its tensors train, hold one entry per neuron or count as parameters,
and how it lowers to torch and to ONNX. Frontend, verifier, group analysis, executor, edits,
statistics and both lowerings read the definitions; adding an op is one subclass here, registered
with :func:`register`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from nestir.ir.errors import NestirError
from nestir.ir.kinds import PARAMETRIC_OPS

if TYPE_CHECKING:
    import torch.fx as fx

    from nestir.ir.graph import Graph, Node
    from nestir.ir.groups import GroupInfo, Layout, _Analysis

OPS: dict[str, OpDef] = {}


def register(cls: type[OpDef]) -> type[OpDef]:
    """Class decorator: make ``cls`` the definition of the op ``cls.name``."""
    if cls.name in OPS:
        raise NestirError(f"op '{cls.name}' is defined twice ({type(OPS[cls.name]).__name__}, {cls.__name__})")
    OPS[cls.name] = cls()
    if cls.parametric:
        PARAMETRIC_OPS.add(cls.name)
    return cls


def opdef(op: str) -> OpDef:
    """The definition of ``op``; a clear error for an op nothing defines."""
    d = OPS.get(op)
    if d is None:
        raise NestirError(f"unknown op '{op}' (defined: {', '.join(sorted(OPS))})")
    return d


class OpDef:
    """One kind of IR node. Subclasses set ``name`` and override what applies."""

    name: ClassVar[str] = ""
    trainable: ClassVar[tuple[str, ...]] = ()  # params the executor trains
    entries: ClassVar[tuple[str, ...]] = ()  # per-neuron params: one entry per neuron along dim 0
    counted: ClassVar[tuple[str, ...]] = ()  # params counted as model parameters (linear/conv: by stats)
    shaped: ClassVar[bool] = True  # its stored shape follows from its inputs (the verifier checks it)
    parametric: ClassVar[bool] = False  # a weight with a connectivity mask, grown and pruned (linear, conv)
    per_channel: ClassVar[bool] = False  # acts on each channel alone: a channel permutation commutes with it
    layout_only: ClassVar[bool] = False  # only moves values (reshape, permute): a chain of them may fold away
    modules: ClassVar[tuple[type, ...]] = ()  # module types the frontend converts with from_module
    functions: ClassVar[tuple[Any, ...]] = ()  # functions the frontend converts with from_function

    # -- frontend ------------------------------------------------------------------------------
    def handles(self, target: Any) -> bool:
        """Whether a call of function ``target`` may be this op (then :meth:`from_function`)."""
        return any(target is f for f in self.functions)

    structural: ClassVar[bool] = False  # recognised by what a module holds, not by its class (see matches)

    def matches(self, mod: torch.nn.Module) -> bool:
        """Whether a call of ``mod`` may be this op (then :meth:`from_module`). Ops with
        ``structural`` set recognise a library's module they cannot import by its name and
        attributes; the frontend traces such a module as a leaf and keeps the node only where it
        reproduces the module's recorded output."""
        return isinstance(mod, self.modules)

    def from_module(self, name: str, mod: torch.nn.Module) -> Node | None:
        """A node for a call of a module of one of ``modules`` (one tensor in), or None (opaque)."""
        return None

    def from_function(self, name: str, fxn: fx.Node, kw: dict[str, Any] | None, const: Any) -> Node | None:
        """A node for a call of one of ``functions``; ``kw`` holds the call's arguments by name
        (None where torch.fx could not normalise them), ``const`` maps an argument to its constant
        value (a parameter or buffer) or None. None keeps the call opaque."""
        return None

    def axis(self, node: Node, srcs: list[Node], value: torch.Tensor) -> int | None:
        """The neuron axis of the node's output ``value`` (``srcs``: its input nodes), or None."""
        return None

    # -- meaning -------------------------------------------------------------------------------
    def evaluate(self, node: Node, args: Sequence[Any], p: dict[str, torch.Tensor], training: bool) -> Any:
        raise NestirError(f"node '{node.name}': op '{self.name}' has no evaluation")

    def neurons(self, an: _Analysis, node: Node) -> Layout | None:
        """The neuron layout of the node's output, recording in ``an`` what the node couples,
        produces, consumes or freezes (see :mod:`nestir.ir.groups`). Default: freeze every input."""
        for i in node.inputs:
            an.freeze(an.layout.get(i), f"{self.name} node '{node.name}'")
        return None

    def head_flow(self, an: _Analysis, node: Node) -> tuple[bool, Layout | None]:
        """How the node carries inputs in head space (a group's neurons split in heads, see
        :mod:`nestir.ir.opdefs.heads`): ``(True, layout)`` where it follows them (it records its
        output's head axis in ``an.heads``, or returns the layout of the heads merged back),
        ``(False, None)`` where it cannot (their groups then freeze). Default: it cannot."""
        return False, None

    def fill(self, node: Node, key: str) -> float | bool:
        """The value of per-neuron param ``key`` for a new neuron (one that changes nothing)."""
        return 0.0

    unit_attr: ClassVar[str] = ""  # the attribute counting the whole units a tie removes (conv groups, heads)
    unit_entries: ClassVar[tuple[str, ...]] = ()  # params with one entry per unit along dim 0 (a head's bias)

    def follow(self, node: Node, graph: Graph, info: GroupInfo, gid: int, delta: int,
               shape: tuple[int, ...] | None) -> dict[str, Any] | None:
        """Attributes that follow an edit of group ``gid`` by ``delta`` neurons per repeat
        (``shape``: the node's new output shape where its output holds the group, else None)."""
        return None

    def check(self, graph: Graph, node: Node) -> str | None:
        """What is wrong with the node's params and attributes (the verifier), or None."""
        return None

    def positions(self, node: Node) -> float | torch.Tensor:
        """Multiply-accumulates per sample of one weight entry (parametric ops): a number, or an
        (out, in) tensor of live positions for a partial-area conv."""
        return 0.0

    def resized(self, node: Node, delta: int) -> dict[str, Any] | None:
        """Attributes of a per-neuron node that follow its width when it changes by ``delta``."""
        return None

    # -- lowering ------------------------------------------------------------------------------
    def to_torch(self, low: Any, node: Node, args: list[Any]) -> Any:
        """Emit the node into the torch.fx graph of ``low`` (a :class:`TorchLowering`)."""
        from nestir.ir.errors import LoweringError

        raise LoweringError(f"node '{node.name}': no torch lowering for op '{self.name}'")

    def to_onnx(self, e: Any, node: Node, xs: list[str], g: Graph) -> str:
        """Emit the node with the ONNX emitter ``e`` (``e.op``, ``e.const``); returns its output."""
        from nestir.ir.errors import LoweringError

        raise LoweringError(f"node '{node.name}' ({node.describe()}): no direct ONNX lowering for op '{self.name}'")


class TorchLowering:
    """What an op's ``to_torch`` builds with: the fx graph ``fg``, the module ``root`` that owns
    submodules and parameters, the graph ``g`` being lowered, and factories the backend supplies
    for layers it chooses (dense or sparse linear, partial-area conv)."""

    fg: fx.Graph
    root: torch.nn.Module
    g: Graph

    def module(self, node: Node, mod: torch.nn.Module, args: Sequence[Any], kwargs: dict | None = None) -> Any:
        self.root.add_module(node.name, mod)
        return self.fg.call_module(node.name, tuple(args), kwargs or {})

    def linear(self, weight: torch.Tensor, bias: torch.Tensor | None, mask: torch.Tensor) -> torch.nn.Module:
        raise NotImplementedError

    def partial_area_conv(self, node: Node, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.nn.Module:
        raise NotImplementedError

    def batch(self) -> Any:
        """A function from an fx value to its batch size read at run time."""
        return lambda v: self.fg.call_method("size", (v, 0))
