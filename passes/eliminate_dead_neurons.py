"""eliminate-dead-neurons: the compiler's DCE over neuron groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from nestir.ir.compact import eliminate_dead_neurons
from nestir.ir.graph import Graph
from nestir.passinfra.base import Pass, PassContext, PassResult, register


@register
@dataclass(frozen=True)
class EliminateDeadNeurons(Pass):
    """Drop neurons with no live output; fold neurons with no live input (a constant output)
    into the next layers' biases. Exactly function-preserving; keeps every group non-empty;
    skips groups normalized by a LayerNorm. Never adds."""

    fold_constants: bool = True
    name: ClassVar[str] = "eliminate-dead-neurons"
    effect: ClassVar[str] = "prune"
    preserves_function: ClassVar[bool] = True

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        before = {g.id: g.width for g in graph.groups().groups.values()}
        changed = eliminate_dead_neurons(graph, fold_constants=self.fold_constants)
        after = sum(g.width for g in graph.groups().groups.values())
        return PassResult(graph, changed, {"neurons_removed": sum(before.values()) - after})
