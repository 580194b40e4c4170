import torch
from blocks import GroupedBlock

import nestir
import nestir.ir.interpreter
from nestir.driver.zoo import LeNet5, MobileNetTiny, ResNet


def test_residual_add_couples_producers_and_bn():
    g = nestir.trace(ResNet().eval(), torch.randn(2, 3, 32, 32))
    info = g.groups()
    grp = info.of("layers_1_conv2")
    assert set(grp.producers) == {"layers_1_conv2", "layers_1_short_0"}
    assert {"layers_1_bn2", "layers_1_short_1"} <= set(grp.per_neuron)
    assert grp.resizable


def test_flatten_expands_channels_to_features():
    g = nestir.trace(LeNet5().eval(), torch.randn(2, 1, 28, 28))
    info = g.groups()
    grp = info.of("conv2")
    assert info.columns("fc1", grp.id) == [(0, 16, 50)]


def test_depthwise_ties_in_and_out_channels():
    g = nestir.trace(MobileNetTiny().eval(), torch.randn(2, 3, 32, 32))
    info = g.groups()
    dw = [n for n in g if n.op == "conv" and n.attrs["groups"] > 1]
    assert dw
    for n in dw:
        assert info.of(n.name) is info.of(n.inputs[0])
        assert n.name in info.of(n.name).per_neuron


def test_concat_offsets():
    class Cat(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = torch.nn.Conv2d(2, 3, 1)
            self.b = torch.nn.Conv2d(2, 4, 1)
            self.c = torch.nn.Conv2d(7, 2, 1)

        def forward(self, x):
            return self.c(torch.cat([self.a(x), self.b(x)], 1))

    g = nestir.trace(Cat().eval(), torch.randn(1, 2, 4, 4))
    info = g.groups()
    assert info.columns("c", info.of("a").id) == [(0, 1, 3)]
    assert info.columns("c", info.of("b").id) == [(3, 1, 4)]


def test_model_input_and_output_are_frozen():
    g = nestir.trace(LeNet5().eval(), torch.randn(2, 1, 28, 28))
    info = g.groups()
    assert not info.of("x").resizable and "input" in info.of("x").reason
    assert not info.of("fc2").resizable and "output" in info.of("fc2").reason


def test_grouped_conv_ties_its_groups_in_units():
    g = nestir.trace(GroupedBlock(out=32).eval(), torch.randn(2, 3, 8, 8))
    info = g.groups()
    (tie,) = info.ties()
    assert (tie.conv, tie.groups, tie.src_unit, tie.dst_unit) == ("c2", 4, 4, 8)
    src, dst = info.of("c1"), info.of("c2")
    assert src.tie == dst.tie == tie and src.prunable and dst.prunable
    assert not src.resizable and not dst.resizable  # growth adds one neuron at a time: not here


def test_remove_units_removes_whole_groups_on_both_sides_atomically():
    import pytest

    from nestir.ir.edit import remove_units
    from nestir.ir.errors import EditError

    torch.manual_seed(0)
    m = GroupedBlock(out=32).eval()
    x = torch.randn(2, 3, 8, 8)
    g = nestir.trace(m, x)
    w1, w2, w3 = (g[n].params["weight"].clone() for n in ("c1", "c2", "c3"))
    remove_units(g, "c2", [1, 3])
    g.verify()
    assert g["c2"].attrs["groups"] == 2
    assert torch.equal(g["c1"].params["weight"], torch.cat([w1[0:4], w1[8:12]]))
    assert torch.equal(g["c2"].params["weight"], torch.cat([w2[0:8], w2[16:24]]))
    assert torch.equal(g["c3"].params["weight"], torch.cat([w3[:, 0:8], w3[:, 16:24]], 1))
    assert g["b1"].params["running_mean"].shape == (8,) and g["b2"].params["running_mean"].shape == (16,)
    before = {n.name: {k: t.clone() for k, t in n.params.items()} for n in g}
    for bad in ([0, 1], [5]):
        with pytest.raises(EditError):
            remove_units(g, "c2", bad)
    with pytest.raises(EditError, match="cannot lose whole groups"):
        remove_units(g, "c1", [0])
    assert all(torch.equal(t, before[n.name][k]) for n in g for k, t in n.params.items())
    torch.testing.assert_close(g.to_torch()(x), nestir.ir.interpreter.IRModule(g.copy()).eval()(x))


def test_token_mixing_passes_the_channels_through_and_affine_addcmul_is_understood():
    """ResMLP: a square linear over the token axis of ``h.transpose(1, 2)``, added back to ``h``,
    mixes positions, not neurons: the residual's channels pass through it (its weight keeps its
    shape) and prune and grow with the residual; its affine layers (``torch.addcmul(beta, alpha,
    x)``) are a per-channel scale and shift. A linear over tokens that changes their number
    (MLP-Mixer's token MLP) keeps its own rows as neurons and freezes the channels it reads across."""
    import numpy as np

    from nestir.ir.edit import add_neurons
    from nestir.testing import run_ir, run_onnx

    class TokMix(torch.nn.Module):
        def __init__(self, hidden: int = 5) -> None:
            super().__init__()
            self.emb, self.tok, self.ch = torch.nn.Linear(6, 8), torch.nn.Linear(5, hidden), torch.nn.Linear(8, 8)
            self.back = torch.nn.Linear(hidden, 5) if hidden != 5 else torch.nn.Identity()
            self.alpha, self.beta = torch.nn.Parameter(torch.rand(8) + 0.5), torch.nn.Parameter(torch.randn(8))
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x):
            h = self.emb(x)
            a = torch.addcmul(self.beta, self.alpha, h)
            h = h + self.back(self.tok(a.transpose(1, 2))).transpose(1, 2)
            return self.fc((h + self.ch(h)).mean(1))

    torch.manual_seed(0)
    x = torch.rand(3, 5, 6)
    m = TokMix().eval()
    g = nestir.trace(m, x)
    assert not nestir.opaque_nodes(g)
    info = g.groups()
    assert info.produced("tok") is None and info.of("tok") is info.produced("emb")
    assert info.produced("emb").resizable and "ch" in info.produced("emb").producers
    np.testing.assert_allclose(run_ir(g, x), m(x).detach().numpy(), atol=1e-5)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.25", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([0, 1, 2]))])
    p.verify()
    assert p["tok"].params["weight"].shape == (5, 5) and p["emb"].params["weight"].shape == (6, 6)
    y = torch.rand(2, 5, 6)
    ref = run_ir(p, y)
    np.testing.assert_allclose(run_onnx(p, y), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(p.to_torch()(y).detach().numpy(), ref, rtol=1e-5, atol=1e-5)
    add_neurons(p, p.groups().produced("emb").id, 2)  # zero rows and columns: nothing changes
    p.verify()
    np.testing.assert_allclose(run_ir(p, y), ref, atol=1e-6)
    np.testing.assert_allclose(run_onnx(p, y), ref, rtol=1e-4, atol=1e-5)

    mixer = nestir.trace(TokMix(hidden=7).eval(), x)
    info = mixer.groups()
    assert info.produced("tok").resizable and not info.produced("emb").resizable


def test_parallel_grouped_convs_with_the_same_tie_lose_the_same_units():
    """Two grouped convs side by side on one value, summed (MobileOne's / FastViT's kxk and 1x1
    branches): one tie for both, so whole units go from both at once and the sum stays exact."""
    import torch.nn as nn

    from nestir.ir.edit import remove_units

    class Parallel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, 8, 1)
            self.k = nn.Conv2d(8, 16, 3, padding=1, groups=4)
            self.s = nn.Conv2d(8, 16, 1, groups=4)
            self.c3 = nn.Conv2d(16, 5, 1)

        def forward(self, x):
            y = torch.relu(self.c1(x))
            return self.c3(torch.relu(self.k(y) + self.s(y)))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 6)
    g = nestir.trace(Parallel().eval(), x)
    (tie,) = g.groups().ties()
    assert set(tie.convs) == {"k", "s"} and (tie.groups, tie.src_unit, tie.dst_unit) == (4, 2, 4)
    remove_units(g, "s", [2])
    g.verify()
    assert g["k"].attrs["groups"] == g["s"].attrs["groups"] == 3
    assert g["k"].params["weight"].shape[0] == g["s"].params["weight"].shape[0] == 12
    torch.testing.assert_close(g.to_torch()(x), nestir.ir.interpreter.IRModule(g.copy()).eval()(x))
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([0, 1]))])
    assert p["k"].attrs["groups"] == p["s"].attrs["groups"] < 3


def test_grouped_convs_chained_through_their_groups_form_one_tie():
    """FastViT: each stage's patch embedding is a grouped conv (one group per input channel, two
    outputs each) that reads the previous stage's channels, so the stages' groups are tied in a
    chain (48 -> 96 -> 192 ... channels). One tie spans them all, with as many units as the gcd of
    the convs' group counts: unit k is the k-th equal range of every group, and each conv loses
    whole conv groups."""
    import torch.nn as nn

    from nestir.ir.edit import add_units, remove_units

    class Chain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Conv2d(3, 4, 3, padding=1)
            self.d1 = nn.Conv2d(4, 8, 3, padding=1, groups=4)  # unit: 1 in, 2 out
            self.d1s = nn.Conv2d(4, 8, 1, groups=4)  # its parallel branch
            self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise: per channel
            self.d2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8)  # unit: 1 in, 2 out
            self.fc = nn.Linear(16, 5)

        def forward(self, x):
            y = torch.relu(self.stem(x))
            z = torch.relu(self.d1(y) + self.d1s(y))
            z = z + self.dw(z)
            return self.fc(torch.relu(self.d2(z)).mean((2, 3)))

    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    g = nestir.trace(Chain().eval(), x)
    (tie,) = g.groups().ties()
    assert set(tie.convs) == {"d1", "d1s", "d2"} and tie.groups == 4
    assert sorted(unit for _, unit in tie.sides) == [1, 2, 4]
    w2 = g["d2"].params["weight"].clone()
    remove_units(g, "d2", [1, 2])
    g.verify()
    assert (g["d1"].attrs["groups"], g["d1s"].attrs["groups"], g["d2"].attrs["groups"]) == (2, 2, 4)
    assert (g["stem"].params["weight"].shape[0], g["dw"].params["weight"].shape[0], g["fc"].params["weight"].shape[1]) \
        == (2, 4, 8)
    assert torch.equal(g["d2"].params["weight"], torch.cat([w2[0:4], w2[12:16]]))
    torch.testing.assert_close(g.to_torch()(x), nestir.ir.interpreter.IRModule(g.copy()).eval()(x))
    add_units(g, "d1", 1)
    g.verify()
    assert (g["d1"].attrs["groups"], g["d2"].attrs["groups"], g["fc"].params["weight"].shape[1]) == (3, 6, 12)
    p = nestir.apply(g, ["magnitude-prune:neuron_fraction=0.5", "eliminate-dead-neurons"],
                     data=[(x, torch.tensor([0, 1]))])
    assert p["d1"].attrs["groups"] < 3 and p["stem"].params["weight"].shape[0] == p["d1"].attrs["groups"]


def test_group_analysis_is_cached_until_an_edit_or_a_structural_change():
    from nestir.ir.edit import remove_neurons

    g = nestir.trace(LeNet5().eval(), torch.zeros(2, 1, 28, 28))
    a = g.groups()
    assert g.groups() is a  # nothing changed: the same analysis
    grp = a.of("conv1")
    remove_neurons(g, grp.id, [0, 1], info=a)
    b = g.groups()
    assert b is not a and b.of("conv1").width == grp.width - 2  # an edit invalidates it
    assert g.copy().groups() is not b  # a copy analyses itself
    name = next(n.name for n in g if n.op == "act")
    g[name].inputs = list(g[name].inputs)  # same structure: still cached
    assert g.groups() is b
    g.nodes[name].shape = (1, *g.nodes[name].shape[1:])  # a changed shape: analysed again
    assert g.groups() is not b
