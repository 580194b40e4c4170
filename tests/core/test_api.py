"""nestir.synthesize: the contract on the user's own loaders, loss and metric."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import nestir
from nestir.data import load

FAST = {"dense_epochs": 3, "final_epochs": 1, "trial_epochs": 1, "initial_epochs": 1, "epochs": 1,
        "shift_epochs": 1, "prune_epochs": 1, "max_growth_steps": 1, "max_prune_steps": 4}


class MLP(nn.Module):
    def __init__(self, out: int = 10) -> None:
        super().__init__()
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(32, out)

    def forward(self, x):
        return self.b(torch.relu(self.a(x.flatten(1))))


def loaders(y=None):
    d = load("digits")
    y = d.y if y is None else y
    tr = DataLoader(TensorDataset(d.x[:1200], y[:1200]), batch_size=64, shuffle=True)
    va = DataLoader(TensorDataset(d.x[1200:], y[1200:]), batch_size=200)
    return tr, va, torch.zeros(1, *d.x.shape[1:])


def test_synthesize_on_loaders_returns_graph_and_report(tmp_path):
    tr, va, ex = loaders()
    r = nestir.synthesize(MLP(), ex, train=tr, val=va, out=str(tmp_path / "run"), **FAST)
    assert isinstance(r.graph, nestir.Graph)
    r.graph.verify()
    for key in ("params", "flops", "val_error", "test_error"):
        assert key in r.report["final"] and key in r.report["baseline"]
    assert r.report["final"]["params"] == nestir.stats(r.graph)["params"] <= r.report["baseline"]["params"]
    assert r.report["phases"] and "paired" in r.report["rule"] and r.report["wall_seconds"] > 0
    assert (tmp_path / "run" / "report.json").exists() and (tmp_path / "run" / "model.onnx").exists()
    out = r.to_torch()(torch.zeros(3, 1, 8, 8))
    assert out.shape == (3, 10)


def test_custom_loss_and_metric_for_regression_targets():
    d = load("digits")
    tr, va, ex = loaders(d.y.float())

    def mse(o, t):
        return torch.mean((o.squeeze(1) - t) ** 2)

    def neg_mse(o, t):
        return -mse(o, t)

    r = nestir.synthesize(MLP(1), ex, train=tr, val=va, loss=mse, metric=neg_mse, target=-50.0, **FAST)
    assert "metric" in r.report["rule"] and r.report["metric"] == "neg_mse"
    kept = r.report["final"]
    assert kept["params"] <= r.report["baseline"]["params"]
    # with a custom metric val_error is 1 - metric: the kept network keeps the target on val
    assert 1 - kept["val_error"] >= -50.0


@pytest.mark.parametrize("call, err, words", [
    (lambda tr, va, ex: nestir.synthesize("lenet-5", ex, train=tr, val=va), nestir.ArgumentError, "nn.Module"),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=va, epochz=3), nestir.ArgumentError, "epochz"),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=[]), nestir.DataError, "no batches"),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=None), nestir.ArgumentError, "val="),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=[(torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 12]))],
                                          val=va), nestir.DataError, "out of range"),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=va, metric=3), nestir.ArgumentError, "metric"),
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=va, dense_epochs=-1), nestir.ArgumentError,
     "dense_epochs"),
])
def test_bad_arguments_are_clear_errors_before_training(call, err, words):
    tr, va, ex = loaders()
    with pytest.raises(err, match=words):
        call(tr, va, ex)


def test_regression_loss_without_a_metric_keeps_the_validation_loss():
    """A loss of ours on float targets and no metric: the rule keeps the validation loss within
    2% of the dense reference's (accuracy would be meaningless here)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(900, 16, generator=g)
    y = x @ torch.randn(16, 3, generator=g) + 0.05 * torch.randn(900, 3, generator=g)
    tr = DataLoader(TensorDataset(x[:700], y[:700]), batch_size=64, shuffle=True)
    va = DataLoader(TensorDataset(x[700:], y[700:]), batch_size=100)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 3))
    r = nestir.synthesize(model, torch.zeros(1, 16), train=tr, val=va, loss=nn.MSELoss(), **FAST)
    assert r.report["metric"] == "negative validation loss" and "metric" in r.report["rule"]
    kept, base = r.report["final"], r.report["baseline"]
    assert kept["params"] <= base["params"]
    assert kept["val_metric"] < 0 and base["val_metric"] < 0  # minus a mean squared error
    out = r.to_torch()(x[:5])
    assert out.shape == (5, 3)
