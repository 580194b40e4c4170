import numpy as np
import torch

import nestir
from nestir.driver.zoo import LeNet5
from nestir.passes import get
from nestir.passinfra.base import PassContext
from nestir.testing import run_ir, run_onnx


def setup():
    torch.manual_seed(0)
    g = nestir.trace(LeNet5(6, 16, 120), torch.rand(2, 1, 28, 28))
    x, y = torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,))
    return g, PassContext(data=[(x, y)]), x


def test_zero_fraction_changes_nothing():
    g, ctx, x = setup()
    ref = run_ir(g, x)
    assert not get("partial-area-mask", fraction=0.0).run(g, ctx).modified
    assert "area" not in g["conv1"].params
    np.testing.assert_array_equal(run_ir(g, x), ref)


def test_masks_smallest_positions_and_lowering_agrees():
    g, ctx, x = setup()
    flops0 = nestir.stats(g)["flops"]
    res = get("partial-area-mask", fraction=0.3).run(g, ctx)
    assert res.modified
    area = g["conv2"].params["area"]
    assert area.shape == (6, 16, 8, 8)
    assert int((~area).sum()) == int(0.3 * area.numel())
    g.verify()
    assert nestir.stats(g)["flops"] < flops0
    y_ir = run_ir(g, x)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), y_ir, atol=1e-5)
    np.testing.assert_allclose(run_onnx(g, x), y_ir, atol=1e-4)


def test_semantics_equal_sum_of_masked_contributions():
    g, ctx, x = setup()
    get("partial-area-mask", fraction=0.5, layers="conv1").run(g, ctx)
    n = g["conv1"]
    w, b, area = n.params["weight"], n.params["bias"], n.params["area"]
    ref = sum(torch.nn.functional.conv2d(x[:, m:m + 1], w[:, m:m + 1]) * area[m].float() for m in range(w.shape[1]))
    ref = ref + b.view(1, -1, 1, 1)
    from nestir.ir.interpreter import IRModule

    mod = IRModule(g.copy()).eval()
    cap = mod.start_capture(["conv1"])
    with torch.no_grad():
        mod(x)
    torch.testing.assert_close(cap.value_tensors["conv1"], ref)
