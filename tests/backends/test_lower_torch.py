import numpy as np
import torch

import nestir
from nestir.backends.lower_torch import prepare
from nestir.backends.modules import CSRLinear
from nestir.driver.zoo import LeNet300100
from nestir.testing import run_ir, run_onnx


def test_compaction_removes_dead_neurons_and_crops_dead_pixels():
    torch.manual_seed(0)
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    live = torch.zeros(28, 28, dtype=torch.bool)
    live[4:24, 5:22] = True
    g["fc1"].params["mask"] &= live.flatten()[None]
    g["fc2"].params["mask"][:, 150:] = False  # fc1 neurons 150.. are dead
    c = prepare(g, compact=True)
    ops = [n.op for n in c]
    assert "slice" in ops and c["fc1"].params["weight"].shape == (150, 20 * 17)
    x = torch.rand(4, 1, 28, 28)
    ref = run_ir(g, x)
    np.testing.assert_allclose(g.to_torch()(x).detach().numpy(), ref, atol=1e-5)
    np.testing.assert_allclose(run_onnx(g, x), ref, atol=1e-5)
    assert [type(m).__name__ for m in g.to_torch().modules()].count("Linear") == 3


def test_gather_only_when_most_columns_are_dead():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    g["fc1"].params["mask"][:, ::2] = False  # 50% of the pixels dead, scattered: a gather costs more than it saves
    assert "gather" not in [n.op for n in prepare(g, True)]
    keep = torch.zeros(784, dtype=torch.bool)
    keep[1::16] = True
    g["fc1"].params["mask"] &= keep[None]  # now 94% dead
    c = prepare(g, True)
    assert "gather" in [n.op for n in c]
    x = torch.rand(3, 1, 28, 28)
    np.testing.assert_allclose(run_onnx(g, x), run_ir(g, x), atol=1e-5)


def test_csr_lowering_agrees():
    g = nestir.trace(LeNet300100(), torch.rand(2, 1, 28, 28))
    g["fc1"].params["mask"] &= torch.rand(300, 784) < 0.01
    m = g.to_torch(sparse="always")
    assert any(isinstance(mod, CSRLinear) for mod in m.modules())
    assert not any(isinstance(mod, CSRLinear) for mod in g.to_torch().modules())
    x = torch.rand(3, 1, 28, 28)
    np.testing.assert_allclose(m(x).detach().numpy(), run_ir(g, x), atol=1e-5)


class _Gate(torch.nn.Module):
    """Untraceable (a tensor's value in an `if`), so it becomes one opaque node; its call has
    constant positional arguments and a keyword that change what it computes."""

    def __init__(self) -> None:
        super().__init__()
        self.q = torch.nn.Linear(8, 8)

    def forward(self, x, attn_mask, is_causal, scale=1.0):
        if attn_mask is not None or x.sum() > 1e9:
            return x
        return self.q(x) * scale + (1.0 if is_causal else 0.0)


class _UsesGate(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.fc = _Gate(), torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(self.gate(x, None, True, scale=2.0))


def test_opaque_module_call_keeps_its_constant_arguments_and_keywords():
    """timm's DeiT attention is called with attn_mask/is_causal: the lowered call must pass them."""
    from nestir.testing import run_torch

    m = _UsesGate().eval()
    x = torch.randn(2, 5, 8)
    g = nestir.trace(m, x)
    assert [n.name for n in g if n.op == "opaque"] == ["gate"]
    np.testing.assert_allclose(run_torch(g, x), m(x).detach().numpy(), atol=1e-5)


def _pruned_lenet5():
    from nestir.driver.zoo import LeNet5

    torch.manual_seed(0)
    g = nestir.trace(LeNet5(), torch.rand(2, 1, 28, 28))
    return nestir.apply(g, ["magnitude-prune:fraction=0.8"])


def _nonzero(module) -> int:
    return sum(int((m.weight != 0).sum()) for m in module.modules() if isinstance(m, (torch.nn.Linear,
                                                                                      torch.nn.Conv2d)))


def test_masks_keep_pruned_weights_zero_under_fine_tuning_and_can_be_made_permanent():
    g = _pruned_lenet5()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    plain, masked = g.to_torch(), g.to_torch(masks=True)
    np.testing.assert_allclose(masked(x).detach().numpy(), plain(x).detach().numpy(), atol=1e-6)
    before = _nonzero(masked)
    assert before == _nonzero(plain) and before < 0.3 * sum(p.numel() for p in plain.parameters())
    names = dict(masked.named_buffers())
    assert any(k.endswith("weight_mask") for k in names)  # torch.nn.utils.prune's layout
    for module in (plain, masked):
        module.train()
        opt = torch.optim.AdamW(module.parameters(), lr=1e-2, weight_decay=0.1)
        for _ in range(3):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(module(x), y).backward()
            opt.step()
    assert _nonzero(plain) > 2 * before  # without masks, fine-tuning refills the pruned weights
    assert _nonzero(masked) <= before  # with them, the zeros stay zero
    out = masked(x)
    nestir.remove_masks(masked)
    assert not any(k.endswith("weight_mask") for k, _ in masked.named_buffers())
    assert _nonzero(masked) <= before
    np.testing.assert_allclose(masked(x).detach().numpy(), out.detach().numpy(), atol=1e-5)
