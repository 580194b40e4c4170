"""nestir.testing.check_pass catches passes that break their declared contract, names the pass
(and the passes before it), and lets correct passes through."""

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch
import torch.nn as nn
from hypothesis import given

import nestir
from nestir.ir.edit import add_neurons, remove_neurons
from nestir.ir.errors import PassError
from nestir.passes import Pass, PassContext, PassManager, PassResult, get
from nestir.testing import PassContractError, batch_for, check_pass, graphs, run_ir, sparsify


def mlp(seed: int = 0) -> nestir.Graph:
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)).eval()
    return nestir.trace(m, torch.randn(2, 6))


@dataclass(frozen=True)
class ScaleWeights(Pass):
    """Claims to preserve the function, but scales the first layer."""

    name: ClassVar[str] = "scale-weights"
    preserves_function: ClassVar[bool] = True

    def run(self, graph, ctx):
        graph.parametric()[0].params["weight"].mul_(2.0)
        return PassResult(graph, True)


@dataclass(frozen=True)
class DropConnection(Pass):
    """Declares 'grow' but turns one live connection off."""

    name: ClassVar[str] = "drop-connection"
    effect: ClassVar[str] = "grow"

    def run(self, graph, ctx):
        n = graph.parametric()[0]
        n.params["mask"].view(-1)[0] = False
        n.params["weight"].view(-1)[0] = 0.0
        return PassResult(graph, True)


@dataclass(frozen=True)
class GrowAndDrop(Pass):
    """Declares 'grow': adds a neuron (more connections in total) but kills a connection elsewhere,
    which a comparison of totals would miss."""

    name: ClassVar[str] = "grow-and-drop"
    effect: ClassVar[str] = "grow"

    def run(self, graph, ctx):
        info = graph.groups()
        add_neurons(graph, info.resizable()[0].id, 2, info=info)
        last = graph.parametric()[-1]
        last.params["mask"].view(-1)[0] = False
        last.params["weight"].view(-1)[0] = 0.0
        return PassResult(graph, True)


@dataclass(frozen=True)
class PruneAddsNeuron(Pass):
    name: ClassVar[str] = "prune-adds"
    effect: ClassVar[str] = "prune"

    def run(self, graph, ctx):
        info = graph.groups()
        add_neurons(graph, info.resizable()[0].id, 1, info=info)
        return PassResult(graph, True)


@dataclass(frozen=True)
class GrowRemovesNeuron(Pass):
    name: ClassVar[str] = "grow-removes"
    effect: ClassVar[str] = "grow"

    def run(self, graph, ctx):
        info = graph.groups()
        remove_neurons(graph, info.resizable()[0].id, [0], info=info)
        return PassResult(graph, True)


@dataclass(frozen=True)
class Silent(Pass):
    """Changes the graph but reports modified=False."""

    name: ClassVar[str] = "silent"

    def run(self, graph, ctx):
        graph.parametric()[0].params["bias"].add_(1.0)
        return PassResult(graph, False)


@dataclass(frozen=True)
class Boastful(Pass):
    """Changes nothing but reports modified=True."""

    name: ClassVar[str] = "boastful"

    def run(self, graph, ctx):
        return PassResult(graph, True)


@dataclass(frozen=True)
class FirstBatch(Pass):
    """Declares needs_data but reads the data without ctx.require_data: no data crashes it."""

    name: ClassVar[str] = "first-batch"
    needs_data: ClassVar[bool] = True

    def run(self, graph, ctx):
        x, _ = next(iter(ctx.data))
        graph.parametric()[0].params["bias"].add_(x.mean())
        return PassResult(graph, True)


@dataclass(frozen=True)
class Unseeded(Pass):
    """Draws from torch's global generator instead of ctx.generator(): not deterministic."""

    name: ClassVar[str] = "unseeded"

    def run(self, graph, ctx):
        b = graph.parametric()[0].params["bias"]
        b.add_(torch.randn(b.shape))
        return PassResult(graph, True)


@dataclass(frozen=True)
class Seeded(Pass):
    """The same as Unseeded, with the context's generator: deterministic."""

    name: ClassVar[str] = "seeded"

    def run(self, graph, ctx):
        b = graph.parametric()[0].params["bias"]
        b.add_(torch.randn(b.shape, generator=ctx.generator(self.name)))
        return PassResult(graph, True)


@dataclass(frozen=True)
class BreaksShape(Pass):
    name: ClassVar[str] = "breaks-shape"

    def run(self, graph, ctx):
        n = graph.parametric()[1]
        n.params["mask"] = torch.ones(2, 2, dtype=torch.bool)
        return PassResult(graph, True)


@dataclass(frozen=True)
class WrongEffect(Pass):
    name: ClassVar[str] = "wrong-effect"
    effect: ClassVar[str] = "grows"

    def run(self, graph, ctx):
        return PassResult(graph, False)


@pytest.mark.parametrize("p, match", [
    (ScaleWeights(), r"pass 'scale-weights'.*preserves_function but its outputs changed"),
    (DropConnection(), r"pass 'drop-connection'.*effect 'grow' but removed 1 live connections of '_0'"),
    (GrowAndDrop(), r"pass 'grow-and-drop'.*effect 'grow' but removed 1 live connections of '_4'"),
    (PruneAddsNeuron(), r"pass 'prune-adds'.*effect 'prune' but added 1 neuron"),
    (GrowRemovesNeuron(), r"pass 'grow-removes'.*effect 'grow' but removed 1 neuron"),
    (Silent(), r"pass 'silent'.*modified=False but changed the graph: node '_0' bias changed"),
    (Boastful(), r"pass 'boastful'.*modified=True but the graph is unchanged"),
    (FirstBatch(), r"pass 'first-batch'.*declares needs_data but raised StopIteration"),
    (Unseeded(), r"pass 'unseeded'.*not deterministic"),
    (BreaksShape(), r"pass 'breaks-shape'.*does not verify: node '_2'"),
    (WrongEffect(), r"pass 'wrong-effect'.*effect 'grows'"),
])
def test_check_pass_catches_a_broken_pass(p, match):
    g = mlp()
    with pytest.raises(PassContractError, match=match):
        check_pass(p, g, onnx=False)


def test_the_graph_given_is_left_untouched_and_correct_passes_get_through():
    g = mlp()
    ref = g.copy()
    res = check_pass(Seeded(), g, onnx=False)
    assert res.modified and not torch.equal(res.graph["_0"].params["bias"], g["_0"].params["bias"])
    assert all(torch.equal(a, b) for (_, _, a), (_, _, b) in zip(ref.tensors(), g.tensors(), strict=True))
    x, _ = batch_for(g)
    assert (run_ir(g, x) == run_ir(ref, x)).all()


def test_pipelines_are_checked_pass_by_pass_and_errors_name_the_passes_before():
    g = sparsify(mlp(), 0.5, seed=1)
    res = check_pass(["grow-connection:fraction=0.2", "magnitude-prune:fraction=0.3", "eliminate-dead-neurons"], g)
    assert res.modified
    with pytest.raises(PassContractError, match=r"pass 'silent' \(after 'grow-connection:.*', 'shift-activation:"):
        check_pass(PassManager([get("grow-connection"), PassManager([get("shift-activation", to="leaky_relu"),
                                                                      Silent()])]), g, onnx=False)
    res = check_pass("magnitude-prune:fraction=0.5", g)
    assert res.modified and res.info["connections"] > 0


def test_data_requirements():
    g = sparsify(mlp(), 0.5, seed=1)
    check_pass(get("grow-connection"), g)  # needs data: refuses with a PassError naming it without data
    with pytest.raises(PassError, match="x .*ctx.data"):
        check_pass(get("grow-connection"), g, PassContext(data=None))
    x, y = batch_for(g, n=5, seed=3)
    res = check_pass(get("grow-connection"), g, x=x)  # labels made to fit x
    assert res.modified
    check_pass(get("grow-connection"), g, PassContext(data=[(x, y)], seed=4))
    with pytest.raises(PassError, match="does not verify"):
        bad = g.copy()
        bad["_0"].params["mask"] = torch.ones(1, dtype=torch.bool)
        check_pass(get("grow-connection"), bad)


def test_batch_for_fits_the_graph():
    g = nestir.trace(nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 7)), torch.randn(1, 2, 4, 4))
    x, y = batch_for(g, n=5, seed=1)
    assert x.shape == (5, 2, 4, 4) and x.dtype == torch.float32
    assert y.shape == (5,) and y.dtype == torch.long and int(y.max()) < 7
    x2, y2 = batch_for(g, n=5, seed=1)
    assert torch.equal(x, x2) and torch.equal(y, y2)


@given(graphs(sparse=True))
def test_generated_graphs_verify_and_builtin_growth_passes_their_check(g):
    g.verify()
    check_pass("grow-connection:fraction=0.3", g, onnx=False)
