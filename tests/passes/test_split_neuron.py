import torch
import torch.nn as nn
import torch.nn.functional as F

import nestir
from nestir.ir.interpreter import IRModule
from nestir.passes import get
from nestir.passes.split_eigen import dense_min_eigen, lanczos_min_eigen
from nestir.passinfra.base import PassContext


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).eval()


def run(g, x):
    with torch.no_grad():
        return IRModule(g.copy()).eval()(x)


def test_epsilon_zero_preserves_function():
    x, y = torch.randn(64, 10), torch.randint(0, 3, (64,))
    g = nestir.trace(net(), x)
    ref = run(g, x)
    res = get("split-neuron", count=2, epsilon=0.0).run(g, PassContext(data=[(x, y)]))
    if res.modified:
        assert g["_0"].params["weight"].shape[0] > 8 or g["_2"].params["weight"].shape[0] > 6
    g.verify()
    torch.testing.assert_close(run(g, x), ref, atol=1e-6, rtol=1e-5)


def test_small_split_lowers_loss_when_lambda_negative():
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(256, 10, generator=gen), torch.randint(0, 3, (256,), generator=gen)
    g = nestir.trace(net(3), x)
    p = get("split-neuron", count=1, epsilon=0.05)
    ctx = PassContext(data=[(x, y)])
    info = g.groups()
    from nestir.passes.split_neuron import site

    sites = [s for grp in info.resizable() if (s := site(g, info, grp))]
    lam = {k: v[0] for k, v in p.scores(g, sites, ctx.data, ctx).items()}
    assert any(bool((v < 0).any()) for v in lam.values())
    before = float(F.cross_entropy(run(g, x), y))
    assert p.run(g, ctx).modified
    assert float(F.cross_entropy(run(g, x), y)) < before


def test_lanczos_matches_dense_eigensolver():
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(400, 80, generator=gen, dtype=torch.float64)
    C = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    l1, v1 = dense_min_eigen(X, C)
    l2, v2 = lanczos_min_eigen(X, C, 40, gen)
    torch.testing.assert_close(l2, l1, rtol=1e-6, atol=1e-6)
    assert bool(((v1 * v2).sum(1).abs() > 0.999).all())


def test_conv_sites_split():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 2)).eval()
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 2, (16,))
    g = nestir.trace(m, x)
    ref = run(g, x)
    res = get("split-neuron", count=1, epsilon=0.0).run(g, PassContext(data=[(x, y)]))
    g.verify()
    if res.modified:
        assert g["_0"].params["weight"].shape[0] == 4 and g["_1"].params["running_var"].shape[0] == 4
    torch.testing.assert_close(run(g, x), ref, atol=1e-5, rtol=1e-5)
