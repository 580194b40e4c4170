import pytest
import torch

import nestir
from nestir.errors import PassError, VerifyError
from nestir.passes import get, parse
from nestir.passinfra import Pass, PassContext, PassManager, PassResult
from nestir.zoo import LeNet300100


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
