import pytest
import torch
import torch.nn as nn
from blocks import GroupedBlock

import nestir
from nestir.driver.zoo import LeNet300100, ResNet
from nestir.ir.errors import PassError
from nestir.passes import get
from nestir.passes.magnitude_prune import effective_weight, lamp_scores
from nestir.passinfra.base import PassContext


def test_prunes_smallest_fraction_per_layer_and_never_adds():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    before = {n.name: n.params["weight"].abs().clone() for n in g.parametric()}
    res = get("magnitude-prune", fraction=0.5).run(g, PassContext())
    assert res.modified
    for n in g.parametric():
        m = n.params["mask"]
        assert int(m.sum()) == m.numel() - m.numel() // 2
        assert before[n.name][m].min() >= before[n.name][~m].max()
        assert bool((n.params["weight"][~m] == 0).all())


def test_batchnorm_is_folded_into_effective_weights():
    m = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2)).eval()
    with torch.no_grad():
        m[0].weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
        m[1].weight.copy_(torch.tensor([1.0, 0.01]))
    g = nestir.trace(m, torch.rand(1, 1, 3, 3))
    eff = effective_weight(g, g["_0"]).flatten()
    assert eff[1] < eff[0]
    # prune globally: the output channel with the small BN scale goes first
    big = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(18, 2)).eval()
    with torch.no_grad():
        big[0].weight.copy_(torch.tensor([1.0, 1.0]).view(2, 1, 1, 1))
        big[1].weight.copy_(torch.tensor([1.0, 0.01]))
    g = nestir.trace(big, torch.rand(1, 1, 3, 3))
    get("magnitude-prune", threshold=0.5, layers="_0").run(g, PassContext())
    assert g["_0"].params["mask"].flatten().tolist() == [True, False]


def test_threshold_second_prune_is_unmodified_and_layers_never_empty():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    p = get("magnitude-prune", threshold=0.02)
    assert p.run(g, PassContext()).modified
    assert not p.run(g, PassContext()).modified
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    get("magnitude-prune", threshold=100.0).run(g, PassContext())
    assert all(int(n.params["mask"].sum()) >= 1 for n in g.parametric())
    g.verify()
    with pytest.raises(PassError, match="disconnect"):
        get("magnitude-prune", threshold=100.0, strict=True).run(g.copy(), PassContext())


def test_neuron_pruning_on_residual_network():
    torch.manual_seed(0)
    g = nestir.trace(ResNet(), torch.rand(2, 3, 32, 32))
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    widths = {p: g[p].params["weight"].shape[0] for p in ("layers_1_conv2", "layers_1_conv1")}
    res = get("magnitude-prune", neuron_fraction=0.25).run(g, PassContext(data=[(x, y)]))
    assert res.info["neurons"] > 0
    g.verify()
    assert g["layers_1_conv2"].params["weight"].shape[0] == widths["layers_1_conv2"] - 8
    assert g["layers_1_short_0"].params["weight"].shape[0] == widths["layers_1_conv2"] - 8
    assert g["layers_1_conv1"].params["weight"].shape[0] == widths["layers_1_conv1"] - 8


def test_flops_fraction_cuts_conv_flops_by_at_least_that_fraction_smallest_first():
    from nestir.driver.zoo import LeNet5
    from nestir.ir.stats import stats

    torch.manual_seed(0)
    g = nestir.trace(LeNet5(), torch.rand(1, 1, 28, 28))
    plain = g.copy()
    get("magnitude-prune", fraction=0.2, scope="global").run(plain, PassContext())
    before = {n.name: n.params["weight"].abs().clone() for n in g.parametric()}
    f0 = stats(g, compact=False)["flops"]
    res = get("magnitude-prune", fraction=0.2, scope="global", flops_fraction=0.3).run(g, PassContext())
    assert stats(g, compact=False)["flops"] <= 0.7 * f0  # plain global magnitude alone cuts far less
    assert stats(plain, compact=False)["flops"] > 0.7 * f0
    assert res.info["connections"] > sum(int((~n.params["mask"]).sum()) for n in plain.parametric())
    for n in g.parametric():
        m = n.params["mask"]
        assert m.any()
        assert before[n.name][m].min() >= before[n.name][~m].max()  # smallest first within each layer
        assert bool((n.params["weight"][~m] == 0).all())
    # the fully connected layers lose only what the global magnitude cut took from them
    assert all(torch.equal(g[n].params["mask"], plain[n].params["mask"]) for n in ("fc1", "fc2"))
    with pytest.raises(PassError, match="flops_fraction"):
        get("magnitude-prune", flops_fraction=1.0)


def test_neuron_fraction_removes_whole_groups_of_a_grouped_conv():
    torch.manual_seed(0)
    g = nestir.trace(GroupedBlock(out=32).eval(), torch.rand(2, 3, 8, 8))
    data = [(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))]
    res = get("magnitude-prune", neuron_fraction=0.5).run(g, PassContext(data=data))
    g.verify()
    assert g["c2"].attrs["groups"] == 2
    assert g["c1"].params["weight"].shape[0] == 8 and g["c2"].params["weight"].shape[0] == 16
    assert g["c3"].params["weight"].shape[1] == 16
    assert res.info["neurons"] >= 8 + 16


@pytest.mark.parametrize("flush", [True, False])
def test_global_scope_prunes_denormal_weights_first(flush):
    # late in training many weights decay to denormal floats; with flush-to-zero on (as CPU training
    # sets it) a threshold taken from kthvalue reads 0.0 and no denormal compares below it
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    tiny = {}
    for n in g.parametric():
        w = n.params["weight"]
        t = torch.rand(w.shape) < 0.3
        w[t] = 5e-43 * torch.sign(torch.randn(int(t.sum())))
        tiny[n.name] = t
    live = sum(int(n.params["mask"].sum()) for n in g.parametric())
    old = torch.is_flush_denormal_enabled() if hasattr(torch, "is_flush_denormal_enabled") else False
    torch.set_flush_denormal(flush)
    try:
        res = get("magnitude-prune", fraction=0.2, scope="global").run(g, PassContext())
    finally:
        torch.set_flush_denormal(old)
    assert res.info["connections"] == int(0.2 * live)
    for n in g.parametric():  # every connection removed was one of the denormal ones
        assert bool(tiny[n.name][~n.params["mask"]].all()), n.name


def test_lamp_scores_by_share_of_the_layers_remaining_energy():
    mag = torch.tensor([[3.0, 1.0], [2.0, 0.5]])
    mask = torch.tensor([[True, True], [True, False]])
    s = lamp_scores(mag, mask)
    assert s[0, 0] == 1.0  # the layer's largest live weight
    assert s[1, 0] == pytest.approx(4 / (4 + 9))
    assert s[0, 1] == pytest.approx(1 / (1 + 4 + 9))
    assert s[1, 1] == float("inf")  # dead: never picked


def test_lamp_scope_prunes_the_fraction_without_emptying_a_layer_and_ignores_layer_scale():
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    g["fc3"].params["weight"].mul_(1e-3)  # far smaller weights: global magnitude would strip fc3 first
    live = sum(int(n.params["mask"].sum()) for n in g.parametric())
    glob = g.copy()
    before = {n.name: n.params["weight"].abs().clone() for n in g.parametric()}
    get("magnitude-prune", fraction=0.5, scope="global").run(glob, PassContext())
    res = get("magnitude-prune", fraction=0.5, scope="lamp").run(g, PassContext())
    assert res.info["connections"] == int(0.5 * live)
    assert int(glob["fc3"].params["mask"].sum()) == 1  # global: the scaled layer emptied (one kept)
    kept = int(g["fc3"].params["mask"].sum())
    assert 0.2 * 1000 < kept < 1000  # lamp: the scale of a layer does not decide its share
    for n in g.parametric():  # within a layer the smallest go first
        m, w = n.params["mask"], before[n.name]
        if (~m).any():
            assert w[m].min() >= w[~m].max()
