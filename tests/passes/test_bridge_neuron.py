import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import nestir
from nestir.backends.executor import IRModule
from nestir.errors import PassError
from nestir.passes import get
from nestir.passinfra import PassContext


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
