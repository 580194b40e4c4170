import numpy as np
import torch
from hypothesis import given

import nestir
from nestir.driver.zoo import LeNet300100
from nestir.passes import get
from nestir.passinfra.base import PassContext
from nestir.testing import models, run_ir, run_onnx


def test_removes_dead_and_folds_constant_neurons_exactly():
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    g["fc2"].params["mask"][:, :100] = False  # fc1 neurons 0..99: no live output
    g["fc1"].params["mask"][100:150] = False  # fc1 neurons 100..149: constant output relu(bias)
    x = torch.rand(8, 1, 28, 28)
    ref = run_ir(g, x)
    res = get("eliminate-dead-neurons").run(g, PassContext())
    assert res.modified and res.info["neurons_removed"] == 150
    assert g["fc1"].params["weight"].shape[0] == 150
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-5)
    assert not get("eliminate-dead-neurons").run(g, PassContext()).modified


@given(models())
def test_exact_on_generated_models_with_random_masks(mx):
    model, x = mx
    g = nestir.trace(model, x)
    gen = torch.Generator().manual_seed(0)
    for n in g.parametric():
        rows = torch.rand(n.params["mask"].shape[0], generator=gen) < 0.3
        n.params["mask"][rows] = False
        if n.params["mask"].dim() > 1:
            cols = torch.rand(n.params["mask"].shape[1], generator=gen) < 0.3
            n.params["mask"][:, cols] = False
    ref = run_ir(g, x)
    get("eliminate-dead-neurons").run(g, PassContext())
    g.verify()
    np.testing.assert_allclose(run_ir(g, x), ref, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-4, rtol=1e-4)
