"""The sparse-connectivity IR: nodes in topological order, parameters with connectivity masks."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from nestir.ir.errors import NestirError
from nestir.ir.kinds import PARAMETRIC_OPS, Op

if TYPE_CHECKING:
    from nestir.ir.groups import GroupInfo

# The graph's analyses and lowerings live in modules above this one; ``nestir/__init__`` (the
# composition root) registers them here, so that this module imports none of them.
_PROVIDERS: dict[str, Callable[..., Any]] = {}


def provide(name: str, fn: Callable[..., Any]) -> None:
    """Register the implementation of ``Graph.<name>`` (groups, verify, to_torch, to_onnx, summary)."""
    _PROVIDERS[name] = fn


def _provider(name: str) -> Callable[..., Any]:
    fn = _PROVIDERS.get(name)
    if fn is None:  # only when nestir.ir.graph is loaded outside the nestir package
        raise NestirError(f"Graph.{name}() is not available: import nestir, which registers it")
    return fn


PARAMETRIC = PARAMETRIC_OPS  # the op definitions that say parametric (linear, conv), registered
ACTIVATIONS = frozenset(
    {"relu", "relu6", "leaky_relu", "gelu", "silu", "tanh", "sigmoid", "hardswish", "hardsigmoid", "elu"}
)


@dataclass
class Node:
    """One operation of the IR.

    ``inputs`` names the nodes whose values this node reads (tensors only; scalars live in
    ``attrs``). ``params`` holds tensors the node owns: for ``linear``/``conv`` a ``weight``, an
    optional ``bias``, a boolean ``mask`` of the weight's shape and, for a conv, an optional
    partial-area mask ``area`` of shape (in, out, P, Q). ``shape`` is the output shape for the
    example batch (batch dim included) and ``axis`` the output's neuron axis (None: no neurons).
    """

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    shape: tuple[int, ...] | None = None
    axis: int | None = None
    source: str = ""

    @property
    def width(self) -> int | None:
        if self.shape is None or self.axis is None:
            return None
        return self.shape[self.axis]

    @property
    def is_parametric(self) -> bool:
        return self.op in PARAMETRIC

    @property
    def is_plain_conv(self) -> bool:
        """A convolution over every input channel (groups == 1): what partial-area masks, input
        narrowing and channel permutations may treat as one dense kernel per channel pair."""
        return self.op == Op.CONV and self.attrs.get("groups") == 1

    def live_weight(self) -> torch.Tensor:
        """The weight with dormant connections zeroed (what the layer computes with)."""
        return self.params["weight"] * self.params["mask"]

    def describe(self) -> str:
        if self.op == Op.LINEAR:
            o, i = self.params["weight"].shape
            return f"Linear({i}->{o})"
        if self.op == Op.CONV:
            w = self.params["weight"]
            g = self.attrs["groups"]
            k = "x".join(str(s) for s in w.shape[2:])
            extra = f", groups={g}" if g != 1 else ""
            return f"Conv{len(w.shape) - 2}d({w.shape[1] * g}->{w.shape[0]}, k={k}{extra})"
        if self.op == Op.ACT:
            return self.attrs["kind"]
        if self.op == Op.OPAQUE:
            return f"opaque[{self.attrs.get('label', '?')}]"
        return self.op


class Graph:
    """A model as an ordered collection of :class:`Node`, inputs first, the output node last.

    The graph is a plain container; structural edits that keep the invariants go through
    :mod:`nestir.ir.edit`, and :meth:`verify` checks all of them.
    """

    def __init__(self, nodes: list[Node] | None = None, name: str = "model") -> None:
        self.nodes: dict[str, Node] = {}
        self.name = name
        # (node, param, edit) for every committed neuron edit, so that optimizer state can follow
        self.journal: list[tuple[str, str, tuple]] = []
        self.version = 0  # bumped by every committed edit (nestir.ir.edit): attributes may have changed
        self._groups: tuple[Any, GroupInfo] | None = None
        for n in nodes or []:
            self.add(n)

    def touch(self) -> None:
        """Record that nodes changed in place (the edit API calls it): cached analyses are stale."""
        self.version += 1

    # -- container -----------------------------------------------------------------------
    def add(self, node: Node) -> Node:
        if node.name in self.nodes:
            raise NestirError(f"duplicate node name '{node.name}'")
        self.nodes[node.name] = node
        return node

    def __getitem__(self, name: str) -> Node:
        try:
            return self.nodes[name]
        except KeyError:
            raise NestirError(f"no node named '{name}' in the graph") from None

    def __contains__(self, name: object) -> bool:
        return name in self.nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes.values()))

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op == Op.INPUT]

    @property
    def output(self) -> Node:
        outs = [n for n in self.nodes.values() if n.op == Op.OUTPUT]
        if len(outs) != 1:
            raise NestirError(f"graph has {len(outs)} output nodes, expected 1")
        return outs[0]

    def parametric(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.op in PARAMETRIC]

    def users(self, name: str) -> list[Node]:
        return [n for n in self.nodes.values() if name in n.inputs]

    def user_map(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {n: [] for n in self.nodes}
        for n in self.nodes.values():
            for i in dict.fromkeys(n.inputs):
                if i in out:
                    out[i].append(n)
        return out

    def copy(self) -> Graph:
        """A deep copy: tensors are cloned, opaque callables are deep-copied."""
        cached, self._groups = self._groups, None
        try:
            return copy.deepcopy(self)
        finally:
            self._groups = cached

    def fresh_name(self, base: str, taken: Collection[str] = ()) -> str:
        """``base``, or ``base_<i>``: a name neither in the graph nor in ``taken`` (names about to
        be added)."""
        if base not in self.nodes and base not in taken:
            return base
        i = 1
        while f"{base}_{i}" in self.nodes or f"{base}_{i}" in taken:
            i += 1
        return f"{base}_{i}"

    def drop_unused(self) -> bool:
        """Remove nodes whose value nothing reads (inputs and the output stay)."""
        changed = False
        while True:
            used = {i for n in self.nodes.values() for i in n.inputs}
            dead = [k for k, n in self.nodes.items() if k not in used and n.op not in (Op.INPUT, Op.OUTPUT)]
            for k in dead:
                del self.nodes[k]
            if not dead:
                return changed
            changed = True

    def tensors(self) -> Iterator[tuple[str, str, torch.Tensor]]:
        for n in self.nodes.values():
            for k, t in n.params.items():
                yield n.name, k, t

    def to(self, device: torch.device | str) -> Graph:
        """Move every tensor to ``device`` in place; returns self."""
        for n in self.nodes.values():
            for k, t in list(n.params.items()):
                n.params[k] = t.to(device)
        return self

    @property
    def device(self) -> torch.device:
        for n in self.nodes.values():
            for t in n.params.values():
                return t.device
        return torch.device("cpu")

    # -- analyses and lowering: provided by the layers above (see provide()) -----------------
    def groups(self) -> GroupInfo:
        """Neuron groups: coupled neurons across layers (:func:`nestir.ir.groups.analyze`). Cached:
        computed again only after an edit (:attr:`version`) or when a node's name, op, inputs,
        shape or axis changed; treat the result as read-only."""
        key = (self.version, tuple((n.name, n.op, tuple(n.inputs), n.shape, n.axis) for n in self.nodes.values()))
        if self._groups is None or self._groups[0] != key:
            self._groups = (key, _provider("groups")(self))
        return self._groups[1]

    def verify(self) -> None:
        """Raise :class:`~nestir.ir.errors.VerifyError` when an invariant is broken (:func:`nestir.verify`)."""
        _provider("verify")(self)

    def to_torch(self, *, compact: bool = True, sparse: str = "never", masks: bool = False) -> torch.nn.Module:
        """The compact PyTorch module (``nestir.backends.lower_torch``). ``masks=True``: pruned
        weights stay zero under fine-tuning (``nestir.remove_masks`` makes them permanent)."""
        return _provider("to_torch")(self, compact=compact, sparse=sparse, masks=masks)

    def to_onnx(self, path: str, *, compact: bool = True, opset: int = 18, sparse_storage: str = "auto") -> None:
        """Write the compact model as an ONNX file (``nestir.backends.lower_onnx``); mostly-zero
        weights are stored as sparse initializers unless ``sparse_storage="never"``."""
        _provider("to_onnx")(self, path, compact=compact, opset=opset, sparse_storage=sparse_storage)

    def summary(self) -> str:
        """A per-layer table of neurons, connections, parameters and FLOPs."""
        return _provider("summary")(self)

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self.nodes)} nodes)"
