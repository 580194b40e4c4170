"""nestir.ir.edit on a layer that reads and writes one neuron group (h + relu(fc1(h)))."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nestir
from nestir.ir.edit import add_neurons, remove_neurons
from nestir.ir.errors import EditError
from nestir.testing import run_ir


class SelfLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc0 = nn.Linear(3, 4)
        self.fc1 = nn.Linear(4, 4)
        self.out = nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc0(x))
        return self.out(h + torch.relu(self.fc1(h)))


@pytest.mark.parametrize("rows_before", [True, False])
def test_cols_of_a_layer_that_also_produces_the_group(rows_before):
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    g = nestir.trace(SelfLoop().eval(), x)
    grp = g.groups().of("fc0")
    assert set(grp.producers) == {"fc0", "fc1"} and {"fc1", "out"} <= set(grp.consumers)
    ref = run_ir(g, x)
    out_rows = 4 if rows_before else 6  # fc1's columns counted before or after its 2 new rows
    cols = {"fc1": {"weight": torch.zeros(out_rows, 2), "mask": torch.zeros(out_rows, 2, dtype=torch.bool)}}
    rows = {"fc1": {"weight": torch.full((2, 4), 0.5)}}
    assert add_neurons(g, grp.id, 2, rows=rows, cols=cols) == [4, 5]
    g.verify()
    w, m = g["fc1"].params["weight"], g["fc1"].params["mask"]
    assert w.shape == (6, 6) and torch.equal(w[4:, :4], torch.full((2, 4), 0.5))
    assert torch.equal(w[:, 4:], torch.zeros(6, 2))
    assert not m[:4, 4:].any() and bool(m[4:, 4:].all()) == rows_before  # the new-to-new block: default fill
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-6)  # new columns are zero: same function
    remove_neurons(g, g.groups().of("fc0").id, [4, 5])
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-6)
    with pytest.raises(EditError, match="expected"):
        add_neurons(g, g.groups().of("fc0").id, 2, cols={"fc1": {"weight": torch.zeros(5, 2)}})


def test_masks_change_only_through_the_edit_api_and_dormant_weights_are_zero():
    """``set_mask`` zeroes what it makes dormant and checks shape and dtype; ``activate`` makes
    connections live with their initial weights and checks the indices."""
    from nestir.ir.edit import activate, set_mask

    g = nestir.trace(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval(), torch.rand(2, 4))
    name = next(iter(g.parametric())).name
    keep = torch.tensor([[True, False, True, False]] * 3)
    set_mask(g, name, keep)
    w = g[name].params["weight"]
    assert bool((w[~keep] == 0).all()) and bool((w[keep] != 0).all())
    activate(g, name, torch.tensor([1, 3]), torch.tensor([0.5, -0.5]))
    assert bool(g[name].params["mask"].view(-1)[[1, 3]].all()) and w.view(-1)[1] == 0.5 and w.view(-1)[3] == -0.5
    with pytest.raises(EditError, match="expected"):
        set_mask(g, name, torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(EditError, match="boolean"):
        set_mask(g, name, torch.ones(3, 4))
    with pytest.raises(EditError, match="out of range"):
        activate(g, name, torch.tensor([12]))
    g.verify()


def test_whole_units_are_added_to_attention_heads_and_conv_groups_without_changing_the_function():
    """``add_units``: a new attention head (q, k, v rows, projection columns) or a new conv
    group (the grouped conv's rows and the producer rows of the channels it reads), in one edit;
    with v rows given the new head still leaves the output unchanged (zero projection columns)."""
    from blocks import GroupedBlock, TinyViT

    from nestir.ir.edit import add_units

    torch.manual_seed(0)
    x = torch.rand(3, 3, 8, 8)
    g = nestir.trace(TinyViT().eval(), x)
    before = run_ir(g, x)
    v = torch.randn(4, 8)
    add_units(g, "mha", 1, rows={"mha__v": {"weight": v}})
    assert g["mha"].attrs["heads"] == 3
    assert [g[n].params["weight"].shape[0] for n in ("mha__q", "mha__k", "mha__v")] == [12, 12, 12]
    assert g["mha__proj"].params["weight"].shape == (8, 12) and torch.equal(g["mha__v"].params["weight"][8:], v)
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), before, atol=1e-6)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), before, atol=1e-5)
    c = nestir.trace(GroupedBlock().eval(), torch.rand(2, 3, 8, 8))
    y = torch.rand(2, 3, 8, 8)
    before = run_ir(c, y)
    add_units(c, "c2", 2)
    assert c["c2"].attrs["groups"] == 6 and c["c2"].params["weight"].shape[0] == 24
    assert c["c1"].params["weight"].shape[0] == 24
    c.verify()
    np.testing.assert_allclose(run_ir(c, y), before, atol=1e-6)
    with pytest.raises(EditError, match="whole units"):
        add_units(c, "c1", 1)


def test_a_depthwise_conv_reading_a_group_twice_keeps_its_groups_in_step():
    """GhostNet: cat([x, cheap(x)]) (cheap: depthwise, so both halves are one group) into a
    depthwise conv: removing neurons removes both of its entries, and its ``groups`` follows."""

    class Ghost(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pc, self.cheap = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 3, padding=1, groups=8)
            self.dw, self.out = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.Conv2d(16, 4, 1)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            a = torch.relu(self.pc(x))
            return self.fc(self.out(self.dw(torch.cat([a, self.cheap(a)], 1))).mean((2, 3)))

    x = torch.rand(3, 3, 6, 6)
    g = nestir.trace(Ghost().eval(), x)
    remove_neurons(g, g.groups().of("pc").id, [0, 5])
    assert g["dw"].params["weight"].shape[0] == 12 and g["dw"].attrs["groups"] == 12
    g.verify()
    add_neurons(g, g.groups().of("pc").id, 1)
    assert g["dw"].params["weight"].shape[0] == 14 and g["dw"].attrs["groups"] == 14
    g.verify()
