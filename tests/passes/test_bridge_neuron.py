import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import nestir
from nestir.ir.errors import PassError
from nestir.ir.interpreter import IRModule
from nestir.passes import get
from nestir.passinfra.base import PassContext
from nestir.testing import check_pass


def mlp(act: nn.Module, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 6), act, nn.Linear(6, 5), act, nn.Linear(5, 3)).eval()


def loss(g, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(IRModule(g.copy()).eval()(x), y))


@given(st.integers(0, 10_000), st.integers(1, 3))
def test_bridge_lowers_the_loss_to_first_order(seed, count):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 12, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    g = nestir.trace(mlp(nn.Identity(), seed), x)
    before = loss(g, x, y)
    widths = {p: g[p].params["weight"].shape[0] for p in ("_0", "_2")}
    res = get("bridge-neuron", count=count, alpha=0.02, beta=0.05).run(g, PassContext(data=[(x, y)], seed=seed))
    assert res.modified and res.info["added"] == 2 * count
    for p, w in widths.items():
        assert g[p].params["weight"].shape[0] == w + count
    g.verify()
    assert loss(g, x, y) < before


def test_bridge_with_leaky_relu_and_sign_convention():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 12, generator=gen), torch.randint(0, 3, (128,), generator=gen)
    g = nestir.trace(mlp(nn.LeakyReLU(0.2), 0), x)
    before = loss(g, x, y)
    get("bridge-neuron", count=1, alpha=0.05).run(g, PassContext(data=[(x, y)]))
    assert loss(g, x, y) < before
    # the bridged path points down the gradient: w_out[m] * w_in[n] has the sign of -G[m, n]
    new_in = g["_0"].params["weight"][-1]
    new_out = g["_2"].params["weight"][:, -1]
    assert (new_in != 0).any() and (new_out != 0).any()


def test_options_and_nothing_eligible():
    with pytest.raises(PassError):
        get("bridge-neuron", beta=0)
    g = nestir.trace(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(8, 2)), torch.rand(1, 1, 4, 4))
    x, y = torch.rand(4, 1, 4, 4), torch.randint(0, 2, (4,))
    res = get("bridge-neuron").run(g, PassContext(data=[(x, y)]))
    assert not res.modified


class ResidualMLP(nn.Module):
    """A residual block whose bridged layers have the group's width. ``through`` (x + fc2(relu(fc1(x)))):
    fc2 writes the residual group and fc1 reads it. ``self_loop`` (x + relu(fc1(x))): fc1 both
    reads and writes it, so a neuron added to the group is a new row *and* a new column of fc1."""

    def __init__(self, kind: str, act: nn.Module | None = None, width: int = 6) -> None:
        super().__init__()
        self.kind = kind
        self.act = act or nn.ReLU()
        self.fc0 = nn.Linear(5, width)
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)
        self.out = nn.Linear(width, 3)

    def forward(self, x):
        h = self.act(self.fc0(x))
        if self.kind == "through":
            h = h + self.fc2(self.act(self.fc1(h)))
        else:
            h = h + self.act(self.fc1(h))
            h = h + self.act(self.fc2(h))
        return self.out(h)


@given(st.sampled_from(["through", "self_loop"]), st.integers(0, 1000), st.integers(1, 3))
def test_bridge_on_residual_blocks_of_equal_width(kind, seed, count):
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(16, 5, generator=gen), torch.randint(0, 3, (16,), generator=gen)
    g = nestir.trace(ResidualMLP(kind).eval(), x)
    res = check_pass(get("bridge-neuron", count=count), g, PassContext(data=[(x, y)], seed=seed), x)
    out = res.graph
    assert res.modified
    coupled = ["fc0", "fc2"] if kind == "through" else ["fc0", "fc1", "fc2"]
    assert {n for n in coupled if out[n].params["weight"].shape[0] == 6 + count} == set(coupled)
    if kind == "self_loop":  # fc1 and fc2 read the residual group they write: new rows and new columns
        assert out["fc1"].params["weight"].shape == (6 + count, 6 + count)
        assert out["fc2"].params["weight"].shape == (6 + count, 6 + count)
        assert out["out"].params["weight"].shape[1] == 6 + count


def test_only_connected_pairs_are_bridged_in_a_residual_stream():
    from nestir.passes.bridge_neuron import connected_pairs

    for kind, want in (("through", {("fc1", "fc0"), ("out", "fc0"), ("out", "fc2")}),
                       ("self_loop", {("fc1", "fc0"), ("fc2", "fc0"), ("fc2", "fc1"),
                                      ("out", "fc0"), ("out", "fc1"), ("out", "fc2")})):
        g = nestir.trace(ResidualMLP(kind).eval(), torch.randn(2, 5))
        assert set(connected_pairs(g, g.groups().of("fc0"))) == want


@given(st.sampled_from(["through", "self_loop"]), st.integers(0, 10_000), st.integers(1, 3))
def test_bridge_on_a_linear_residual_stream_does_not_raise_the_loss(kind, seed, count):
    gen = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 5, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    torch.manual_seed(seed)
    g = nestir.trace(ResidualMLP(kind, nn.Identity()).eval(), x)
    before = loss(g, x, y)
    get("bridge-neuron", count=count, alpha=0.02, beta=0.05).run(g, PassContext(data=[(x, y)], seed=seed))
    assert loss(g, x, y) <= before + 1e-6  # first order: the change is -|w_out G w_in| (or 0 within rounding)
