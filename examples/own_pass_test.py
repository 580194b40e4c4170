"""Property-test your own pass with nestir's kit: `python -m pytest examples/own_pass_test.py`.

A user-defined pass is registered under a name (so `nestir.apply`, the CLI and pipelines know
it) and checked on random models: `graphs()` draws small MLPs and CNNs (residual, concat,
depthwise, BatchNorm, LayerNorm, every activation), traced, some with dormant connections;
`check_pass` runs the pass on a copy and asserts what it declares (here: it only prunes), that
the result verifies, that `modified` is honest, that it is deterministic, refuses missing data
clearly, and still lowers to torch and ONNX with the same outputs."""

from dataclasses import dataclass
from typing import ClassVar

from hypothesis import given, settings

from nestir.ir.edit import set_mask
from nestir.passes import Pass, PassResult, register
from nestir.testing import check_pass, graphs


@register
@dataclass(frozen=True)
class PruneBelow(Pass):
    """Turn off every live connection whose |weight| is below ``threshold``."""

    threshold: float = 0.05
    name: ClassVar[str] = "prune-below"
    effect: ClassVar[str] = "prune"

    def run(self, graph, ctx):
        removed = 0
        for n in graph.parametric():
            keep = n.params["mask"] & (n.params["weight"].abs() >= self.threshold)
            removed += int((n.params["mask"] & ~keep).sum())
            set_mask(graph, n.name, keep)
        return PassResult(graph, removed > 0, {"removed": removed})


@settings(max_examples=20, deadline=None)
@given(graphs())
def test_prune_below_keeps_its_contract(g):
    res = check_pass("prune-below:threshold=0.2", g)
    assert res.modified == (res.info["removed"] > 0)


@settings(max_examples=8, deadline=None)
@given(graphs())
def test_in_a_pipeline_with_builtin_passes(g):
    check_pass(["prune-below:threshold=0.1", "eliminate-dead-neurons", "grow-connection:fraction=0.1"], g)
