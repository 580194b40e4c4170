import numpy as np
import torch
import torch.nn.functional as F

import nestir
from nestir.driver.zoo import LeNet5, ResNet
from nestir.ir.interpreter import IRModule
from nestir.passes import get
from nestir.passinfra.base import PassContext
from nestir.testing import check_pass


def test_adds_best_candidate_channel_and_reports_its_gain():
    torch.manual_seed(0)
    g = nestir.trace(LeNet5(8, 8, 20), torch.rand(2, 1, 28, 28))
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with torch.no_grad():
        before = float(F.cross_entropy(IRModule(g.copy()).eval()(x), y))
    res = get("add-feature-map", count=1, candidates=6).run(g, PassContext(data=[(x, y)]))
    assert res.modified and res.info["added"] == 2  # conv1 and conv2 groups
    assert g["conv1"].params["weight"].shape[0] == 9 and g["conv2"].params["weight"].shape[0] == 9
    g.verify()
    with torch.no_grad():
        after = float(F.cross_entropy(IRModule(g.copy()).eval()(x), y))
    # the gain reported by the batched (vmap) evaluation matches the real loss change
    assert abs((before - after) - res.info["loss_gain"]) < 1e-3


def test_residual_group_grows_every_coupled_layer():
    torch.manual_seed(0)
    g = nestir.trace(ResNet(), torch.rand(2, 3, 32, 32))
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    res = get("add-feature-map", layers="layers_1_conv2", candidates=2).run(g, PassContext(data=[(x, y)]))
    assert res.info["added"] == 1
    assert g["layers_1_conv2"].params["weight"].shape[0] == 33
    assert g["layers_1_short_0"].params["weight"].shape[0] == 33
    assert g["layers_2_conv1"].params["weight"].shape[1] == 33
    g.verify()


def test_a_conv_that_reads_the_channels_it_writes_grows_exactly():
    class SelfLoop(torch.nn.Module):  # h + relu(c1(h)): c1 reads and writes one group
        def __init__(self):
            super().__init__()
            self.c0 = torch.nn.Conv2d(2, 4, 3, padding=1)
            self.c1 = torch.nn.Conv2d(4, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 3)

        def forward(self, x):
            h = torch.relu(self.c0(x))
            h = h + torch.relu(self.c1(h))
            return self.fc(h.mean((2, 3)))

    torch.manual_seed(0)
    x, y = torch.randn(16, 2, 6, 6), torch.randint(0, 3, (16,))
    g = nestir.trace(SelfLoop().eval(), x)
    with torch.no_grad():
        before = float(F.cross_entropy(IRModule(g.copy()).eval()(x), y))
    res = check_pass(get("add-feature-map", candidates=4), g, PassContext(data=[(x, y)]), x)
    out = res.graph
    assert out["c1"].params["weight"].shape[:2] == (5, 5) and out["fc"].params["weight"].shape[1] == 5
    with torch.no_grad():
        after = float(F.cross_entropy(IRModule(out.copy()).eval()(x), y))
    # the batched candidate evaluation saw the same network that was kept
    assert abs((before - after) - res.info["loss_gain"]) < 1e-4


def test_attention_gains_whole_heads():
    """In a transformer, add-feature-map adds a whole head to each attention node (q, k, v rows
    and projection columns, the best of the random candidates by loss); the lowerings agree."""
    from blocks import TinyViT

    from nestir.testing import run_ir, run_onnx

    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    g = nestir.trace(TinyViT().eval(), x)
    out = nestir.apply(g, ["add-feature-map:count=1,candidates=3"], data=[(x, torch.arange(6) % 10)])
    assert out["mha"].attrs["heads"] == 3 and out["attn"].attrs["heads"] == 3
    assert out["attn__v"].params["weight"].shape[0] == 12 and out["attn__proj"].params["weight"].shape[1] == 12
    assert bool(out["attn__proj"].params["weight"][:, 8:].abs().sum() > 0)
    np.testing.assert_allclose(run_onnx(out, x), run_ir(out, x), atol=1e-5)


def test_a_layer_reading_the_same_channels_twice_gains_columns_in_both_places():
    """DLA's root reads ``cat([a, a])``: each new channel of ``a`` gets its candidate's columns in
    both places it is read (this failed with a shape error on timm's DLA-34)."""
    from nestir.testing import run_ir, run_onnx

    class Root(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.root = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(8, 6, 1)
            self.fc = torch.nn.Linear(6, 3)

        def forward(self, x):
            a = torch.relu(self.c1(x))
            return self.fc(self.root(torch.cat([a, a], 1)).mean((2, 3)))

    x = torch.rand(4, 3, 8, 8)
    g = nestir.trace(Root().eval(), x)
    data = [(x, torch.tensor([0, 1, 2, 0]))]
    check_pass(get("add-feature-map", count=2, candidates=3), g, PassContext(data=data, seed=1), x)
    out = nestir.apply(g, ["add-feature-map:count=2,candidates=3"], data=data)
    w = out["root"].params["weight"]
    assert out["c1"].params["weight"].shape[0] == 6 and w.shape[1] == 12
    assert bool(w[:6, 4:6].abs().sum() > 0) and bool(w[:6, 10:12].abs().sum() > 0)  # columns in both places
    np.testing.assert_allclose(run_onnx(out, x), run_ir(out, x), atol=1e-5)


def test_grows_a_conv1d_model():
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 62, 2))
    g = nestir.trace(model, torch.rand(2, 1, 64))
    x, y = torch.rand(64, 1, 64), torch.randint(0, 2, (64,))
    h = nestir.apply(g, ["add-feature-map:count=2"], [(x, y)])
    conv = next(n for n in h.parametric() if n.op == "conv")
    assert conv.params["weight"].shape[0] == 10 and nestir.stats(h)["params"] > nestir.stats(g)["params"]
