import torch
import torch.nn.functional as F

import nestir
from nestir.driver.zoo import LeNet5, LeNet300100
from nestir.ir.interpreter import IRModule
from nestir.passes import get
from nestir.passinfra.base import PassContext


def setup(model=LeNet300100, density=0.3):
    torch.manual_seed(0)
    g = nestir.trace(model(), torch.rand(2, 1, 28, 28))
    for n in g.parametric():
        n.params["mask"] = torch.rand(n.params["mask"].shape) < density
        n.params["weight"] = n.params["weight"] * n.params["mask"]
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    return g, PassContext(data=[(x, y)]), x


def dense_grad(g, name, x, y):
    mod = IRModule(g.copy()).eval()
    cap = mod.start_capture(weights=[name])
    F.cross_entropy(mod(x), y).backward()
    return cap.weight_leaves[name].grad


def test_activates_top_dormant_by_gradient_and_preserves_function():
    g, ctx, x = setup()
    before = g.copy()
    res = get("grow-connection", fraction=0.05).run(g, ctx)
    assert res.modified
    for n in g.parametric():
        m0, m1 = before[n.name].params["mask"], n.params["mask"]
        assert bool((m1 | ~m0).all()), "never removes"
        new = m1 & ~m0
        assert int(new.sum()) == min(int((~m0).sum()), -(-int(m0.sum()) * 5 // 100))
        score = dense_grad(before, n.name, *ctx.data[0]).abs()
        assert score[new].min() >= score[~m1].max() - 1e-12
    y0 = IRModule(before).eval()(x)
    torch.testing.assert_close(IRModule(g).eval()(x), y0, atol=0, rtol=0)


def test_gradient_init_and_global_scope_and_count():
    g, ctx, _ = setup(LeNet5)
    before = g.copy()
    get("grow-connection", count=3, init="gradient", lr=0.1).run(g, ctx)
    for n in g.parametric():
        new = n.params["mask"] & ~before[n.name].params["mask"]
        assert int(new.sum()) == 3
        assert bool((n.params["weight"][new] != 0).all())
    g, ctx, _ = setup()
    live = sum(int(n.params["mask"].sum()) for n in g.parametric())
    res = get("grow-connection", fraction=0.01, scope="global").run(g, ctx)
    assert res.info["grown"] == -(-live // 100)


def test_dense_graph_is_unmodified():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    res = get("grow-connection").run(g, PassContext(data=[(x, y)]))
    assert not res.modified
