from typing import ClassVar

import pytest
import torch

import nestir
from nestir.driver.zoo import LeNet300100
from nestir.ir.errors import PassError, VerifyError
from nestir.passes import get, parse
from nestir.passinfra.base import Pass, PassContext, PassManager, PassResult


def test_spec_parsing_and_option_types():
    p = parse("grow-connection:fraction=0.25,init=gradient,layers=fc1+fc2")
    assert p.fraction == 0.25 and p.init == "gradient" and p.layers == "fc1+fc2"
    q = parse("magnitude-prune{fraction=0.1 neuron_fraction=0.2 strict=true}")
    assert q.neuron_fraction == 0.2 and q.strict is True
    assert get("bridge-neuron", count="3").count == 3
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        parse("nope")
    with pytest.raises(PassError, match="has no option 'colour'"):
        parse("grow-connection:colour=red")
    with pytest.raises(PassError, match="not a valid int"):
        parse("bridge-neuron:count=many")
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    g["fc1"].params["mask"][0] = False
    with pytest.raises(PassError, match="needs data"):
        nestir.apply(g, ["grow-connection"])


def test_layers_option_selects_layers_in_a_spec():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    for n in g.parametric():
        n.params["mask"][:, ::2] = False
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    out = nestir.apply(g, ["grow-connection:fraction=0.1,layers=fc2+fc3"], (x, y))
    assert torch.equal(out["fc1"].params["mask"], g["fc1"].params["mask"])
    assert int(out["fc2"].params["mask"].sum()) > int(g["fc2"].params["mask"].sum())


class Breaks(Pass):
    name = "breaks"

    def run(self, graph, ctx):
        graph["fc2"].params["mask"] = torch.ones(2, 2, dtype=torch.bool)
        return PassResult(graph, True)


def test_manager_verifies_between_passes_and_nests():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    inner = PassManager([get("shift-activation", to="leaky_relu")])
    res = PassManager([inner, get("shift-activation", to="relu")]).run(g, PassContext())
    assert res.modified
    with pytest.raises(VerifyError, match="fc2"):
        PassManager([Breaks()]).run(g, PassContext())
    original = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    nestir.apply(original, ["shift-activation:to=leaky_relu"])
    assert all(n.attrs["kind"] == "relu" for n in original if n.op == "act")  # apply works on a copy


class GrowThatPrunes(Pass):
    name = "grow-that-prunes"
    effect = "grow"

    def run(self, graph, ctx):
        graph["fc1"].params["mask"][0, :3] = False
        return PassResult(graph, True)


class PruneThatGrows(Pass):
    name = "prune-that-grows"
    effect = "prune"

    def run(self, graph, ctx):
        from nestir.ir.edit import add_neurons

        add_neurons(graph, graph.groups().of("fc1").id, 1)
        return PassResult(graph, True)


class ClaimsToPreserve(Pass):
    name = "claims-to-preserve"
    preserves_function = True

    def run(self, graph, ctx):
        graph["fc3"].params["bias"] += 1.0
        return PassResult(graph, True)


class CountsRuns(Pass):
    name = "counts-runs"
    runs: ClassVar[list[int]] = []

    def run(self, graph, ctx):
        self.runs.append(1)
        graph["fc3"].params["bias"] += 1.0
        return PassResult(graph, True)


def test_manager_enforces_declared_effects_and_names_the_passes_before():
    from nestir.ir.errors import PassContractError

    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    relu = get("shift-activation", to="leaky_relu")
    with pytest.raises(PassContractError, match=r"pass 'grow-that-prunes' \(after 'shift-activation:.*'\): "
                                                r"declares effect 'grow' but removed 3 live connections of 'fc1'"):
        PassManager([relu, GrowThatPrunes()]).run(g.copy(), PassContext())
    with pytest.raises(PassContractError, match=r"pass 'prune-that-grows'.*effect 'prune' but added 1 neuron"):
        PassManager([PassManager([PruneThatGrows()])]).run(g.copy(), PassContext())  # nested managers check too
    with pytest.raises(AssertionError):  # a contract error is also an AssertionError for test runners
        PassManager([GrowThatPrunes()]).run(g.copy(), PassContext())
    PassManager([GrowThatPrunes()], check_effects=False).run(g.copy(), PassContext())  # opt out


def test_manager_names_the_pass_after_which_the_graph_stopped_verifying():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    with pytest.raises(VerifyError, match=r"node 'fc2'.*\(after pass 'breaks' \(after 'shift-activation"):
        PassManager([get("shift-activation", to="leaky_relu"), Breaks()]).run(g, PassContext())


def test_manager_refuses_a_data_pass_without_data_before_any_pass_runs():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    CountsRuns.runs.clear()
    bias = g["fc3"].params["bias"].clone()
    with pytest.raises(PassError, match="'grow-connection' scores with gradients and needs data"):
        PassManager([CountsRuns(), PassManager([get("grow-connection")])]).run(g, PassContext())
    assert CountsRuns.runs == [] and torch.equal(g["fc3"].params["bias"], bias)  # nothing half applied


def test_manager_checks_function_preservation_on_request():
    from nestir.ir.errors import PassContractError

    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    ctx = PassContext(data=[(torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,)))])
    PassManager([ClaimsToPreserve()]).run(g.copy(), ctx)  # off by default
    with pytest.raises(PassContractError, match="'claims-to-preserve'.*preserves_function but its outputs"):
        PassManager([ClaimsToPreserve()], check_function=True).run(g.copy(), ctx)
    g["fc1"].params["mask"][:, ::2] = False
    PassManager([get("grow-connection", fraction=0.1), get("eliminate-dead-neurons")],
                check_function=True).run(g, ctx)  # passes that keep their promise get through


def test_a_pass_called_directly_is_held_to_its_contract():
    from nestir.ir.errors import PassContractError

    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    with pytest.raises(PassContractError, match=r"'grow-that-prunes'.*declares effect 'grow' but removed"):
        GrowThatPrunes()(g.copy(), PassContext())
    with pytest.raises(VerifyError, match=r"after pass 'breaks'"):
        Breaks()(g.copy(), PassContext())
    with pytest.raises(nestir.PassError, match="needs data"):
        get("grow-connection")(g.copy(), PassContext())
