import pytest
import torch
import torch.nn as nn

import nestir
from nestir.backends.train import Trainer, evaluate
from nestir.driver.zoo import LeNet300100
from nestir.ir.edit import add_neurons, remove_neurons


def test_optimizer_state_follows_structural_edits():
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100((20, 10)), torch.rand(2, 1, 28, 28))
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    t = Trainer(g, lr=1e-3)
    t.epoch(x, y, 32)
    p = t.module.params["fc1__weight"]
    old = t.optimizer.state[p]["exp_avg"].clone()
    old_fc2 = t.optimizer.state[t.module.params["fc2__weight"]]["exp_avg"].clone()
    gid = g.groups().of("fc1").id
    add_neurons(g, gid, 2)
    remove_neurons(g, g.groups().of("fc1").id, [0])
    t.rebuild()
    p = t.module.params["fc1__weight"]
    st = t.optimizer.state[p]["exp_avg"]
    assert st.shape == (21, 784)
    torch.testing.assert_close(st[:19], old[1:])  # survivors keep their state
    assert bool((st[19:] == 0).all())  # new neurons start fresh
    st2 = t.optimizer.state[t.module.params["fc2__weight"]]["exp_avg"]
    torch.testing.assert_close(st2[:, :19], old_fc2[:, 1:])
    t.epoch(x, y, 32)  # and training goes on
    assert 0.0 <= evaluate(g, x, y).error <= 1.0


def test_dormant_weights_stay_zero_during_training():
    g = nestir.trace(LeNet300100((20, 10)), torch.rand(2, 1, 28, 28))
    g["fc1"].params["mask"][:, ::2] = False
    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))
    Trainer(g).epoch(x, y, 16)
    assert bool((g["fc1"].params["weight"][:, ::2] == 0).all())


def test_distillation_loss_and_soft_batches():
    import torch.nn.functional as F

    from nestir.backends.train import distill_loss

    out = torch.randn(8, 10)
    y = torch.randint(0, 10, (8,))
    # alpha 0: plain cross-entropy; a student equal to its teacher pays no KL
    assert torch.allclose(distill_loss(out, y, out.clone(), 0.0, 4.0), F.cross_entropy(out, y))
    assert float(distill_loss(out, y, out.clone(), 1.0, 4.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(out, y, torch.randn(8, 10), 1.0, 4.0)) > 0


def test_trainer_learns_from_soft_targets():
    from nestir.backends.train import Trainer, logits

    g = nestir.trace(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), torch.zeros(2, 4))
    teacher = nestir.trace(nn.Sequential(nn.Linear(4, 3)), torch.zeros(2, 4))
    x = torch.randn(256, 4)
    y = torch.randint(0, 3, (256,))
    soft = logits(teacher, x)
    t = Trainer(g, lr=1e-2, distill=(1.0, 1.0))
    first = t.epoch(x, y, 32, soft=soft)
    for _ in range(30):
        last = t.epoch(x, y, 32, soft=soft)
    assert last < first  # the KL to the teacher falls


def test_bf16_autocast_trains_a_partial_area_cnn_and_keeps_fp32_state():
    """amp=True (the CUDA default where bf16 is supported) exercised on the CPU: every op of the
    executor runs under autocast, the loss falls, weights and masks keep their types."""
    from nestir.driver.zoo import LeNet5

    torch.manual_seed(0)
    g = nestir.trace(LeNet5(4, 8, 16), torch.rand(2, 1, 28, 28))
    g = nestir.apply(g, ["partial-area-mask:fraction=0.3"], data=(torch.rand(16, 1, 28, 28),
                                                                   torch.randint(0, 10, (16,))))
    x = torch.rand(128, 1, 28, 28)
    y = (x.mean((1, 2, 3)) > x.mean()).long()  # learnable
    t = Trainer(g, lr=3e-3, amp=True)
    assert t.amp
    first = t.epoch(x, y, 32)
    for _ in range(8):
        last = t.epoch(x, y, 32)
    assert last < first
    for n in t.graph.parametric():
        assert n.params["weight"].dtype == torch.float32 and n.params["mask"].dtype == torch.bool
        assert not n.params["weight"][~n.params["mask"]].any()
    assert Trainer(g.copy()).amp is False  # off by default on the CPU
