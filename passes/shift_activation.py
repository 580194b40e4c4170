"""shift-activation: NeST grows with leaky ReLU and prunes with ReLU."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nestir.ir.errors import PassError
from nestir.ir.graph import Graph
from nestir.ir.kinds import Op
from nestir.passinfra.base import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class ShiftActivation(Pass):
    """Turn every ReLU into a leaky ReLU (``to="leaky_relu"``) or every leaky ReLU into a ReLU
    (``to="relu"``). Structure is unchanged; the function changes where inputs are negative."""

    to: str = "relu"
    slope: float = 0.01
    name: ClassVar[str] = "shift-activation"
    effect: ClassVar[str] = "neutral"

    def __post_init__(self) -> None:
        if self.to not in ("relu", "leaky_relu"):
            raise PassError(f"shift-activation: to must be 'relu' or 'leaky_relu', got {self.to!r}")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        src = "leaky_relu" if self.to == "relu" else "relu"
        changed = 0
        for n in graph:
            if n.op == Op.ACT and n.attrs["kind"] == src:
                n.attrs = {"kind": self.to, **({"slope": float(self.slope)} if self.to == "leaky_relu" else {})}
                changed += 1
        return PassResult(graph, changed > 0, {"activations": changed})
