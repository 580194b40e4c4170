"""nestir.edit on a layer that reads and writes one neuron group (h + relu(fc1(h)))."""

import numpy as np
import pytest
import torch
import torch.nn as nn

import nestir
from nestir.edit import add_neurons, remove_neurons
from nestir.errors import EditError
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
