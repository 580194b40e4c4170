"""nestir.synthesize: the contract on the user's own loaders, loss and metric."""

import pytest
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

import nestir
from nestir.driver.data import load

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


def mse(o, t):
    return torch.mean((o.squeeze(1) - t) ** 2)


def neg_mse(o, t):
    return -mse(o, t)


def test_custom_loss_and_metric_for_regression_targets():
    d = load("digits")
    tr, va, ex = loaders(d.y.float())

    r = nestir.synthesize(MLP(1), ex, train=tr, val=va, loss=mse, metric=neg_mse, target=-50.0, **FAST)
    assert "metric" in r.report["rule"] and r.report["metric"] == "neg_mse"
    kept = r.report["final"]
    assert kept["params"] <= r.report["baseline"]["params"]
    # with a custom metric the report gives the metric itself: the kept network keeps the target on val
    assert kept["val_error"] is None and kept["val_metric"] >= -50.0
    assert r.report["target"]["asked"] == -50.0 and r.report["target"]["met"]
    assert all("val_metric" in row for row in r.report["phases"])


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
    (lambda tr, va, ex: nestir.synthesize(MLP(), ex, train=tr, val=va, teacher_final_epochs=-2), nestir.ArgumentError,
     "teacher-final-epochs"),
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


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(64, 10)

    def forward(self, x):
        y = self.a(x.flatten(1))
        return y, torch.relu(y)


class Recording:
    """A reporter that records whether any training phase started."""

    def __init__(self) -> None:
        self.phases: list[str] = []
        self.messages: list[str] = []

    def phase(self, name, total=None):
        self.phases.append(name)

    def epoch(self, done, total, loss):
        pass

    def step(self, row):
        pass

    def message(self, text):
        self.messages.append(text)


@pytest.mark.parametrize("kw, words", [
    ({"max_params": 100}, "smaller than the seed"),
    ({"seed_density": 0}, "seed_density"),
    ({"seed_density": 1.5}, "seed_density"),
    ({"loss": nn.CrossEntropyLoss(reduction="none")}, "one number"),
    ({"model": Pair()}, "returns 2 values"),
    ({"batch_size": 0}, "batch-size"),
])
def test_options_are_refused_before_any_training_and_nothing_is_written(tmp_path, kw, words):
    tr, va, ex = loaders()
    rep, out = Recording(), tmp_path / "run"
    model = kw.pop("model", MLP())
    with pytest.raises(nestir.ArgumentError, match=words):
        nestir.synthesize(model, ex, train=tr, val=va, out=str(out), reporter=rep, **kw)
    assert rep.phases == [] and not out.exists()


def test_out_naming_a_file_is_an_argument_error(tmp_path):
    tr, va, ex = loaders()
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(nestir.ArgumentError, match="is a file"):
        nestir.synthesize(MLP(), ex, train=tr, val=va, out=str(f))


def test_a_target_the_dense_reference_misses_is_kept_as_asked_and_the_report_says_why():
    tr, va, ex = loaders()
    r = nestir.synthesize(MLP(), ex, train=tr, val=va, target=0.999, seed_density=0.3, **FAST)
    t = r.report["target"]
    assert t["asked"] == t["used"] == r.report["target_accuracy"] == 0.999  # never lowered
    assert not t["met"] and "dense reference itself" in t["why"] and t["dense_reference"] < 0.999
    assert not r.report["target_reached"]


def test_a_regression_target_is_never_lowered():
    d = load("digits")
    tr, va, ex = loaders(d.y.float())

    r = nestir.synthesize(MLP(1), ex, train=tr, val=va, loss=mse, metric=neg_mse, target=-0.01, seed_density=0.3,
                          **FAST)
    t = r.report["target"]
    assert t["asked"] == t["used"] == -0.01 and not t["met"] and t["why"]
    assert r.report["final"]["val_error"] is None


def test_a_size_target_keeps_a_network_within_it_and_reports_its_accuracy_against_dense():
    tr, va, ex = loaders()
    dense = nestir.stats(nestir.trace(MLP(), ex))["params"]
    r = nestir.synthesize(MLP(), ex, train=tr, val=va, method="prune", target_params=dense // 6,
                          **{**FAST, "max_prune_steps": 30})
    t = r.report["target"]
    assert r.report["final"]["params"] <= dense // 6 == t["asked"]["params"]
    assert t["met"] and t["size"]["params"] == r.report["final"]["params"]
    assert isinstance(t["accuracy_vs_dense"], float) and t["dense_reference"] > 0.5
    # the least pruned chain network within the target: the chain step before it did not fit
    chain = [row for row in r.report["phases"] if row["phase"] in ("dense", "prune")]
    fitting = [row for row in chain if row["params"] <= dense // 6]
    assert fitting and r.report["final"]["params"] == fitting[0]["params"]
    assert all(row["params"] > dense // 6 for row in chain[:chain.index(fitting[0])])


class Counting(torch.utils.data.Dataset):
    """Digits with fresh random noise on every read (an augmentation), counting the reads."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return (self.x[i] + 0.01 * torch.randn_like(self.x[i])).clamp(0, 1), self.y[i]


def test_training_reads_the_train_loader_each_epoch_at_its_batch_size():
    d = load("digits")
    train = Counting(d.x[:600], d.y[:600])
    tr = DataLoader(train, batch_size=32, shuffle=True)
    va = DataLoader(TensorDataset(d.x[1200:], d.y[1200:]), batch_size=200)
    r = nestir.synthesize(MLP(), torch.zeros(1, *d.x.shape[1:]), train=tr, val=va, method="prune", **FAST)
    assert r.report["config"]["batch_size"] == 32
    epochs = FAST["dense_epochs"] + 2 * FAST["final_epochs"]  # at least: dense, its final training, the final training
    assert train.reads >= 600 * (1 + epochs)
    before = train.reads
    nestir.synthesize(MLP(), torch.zeros(1, *d.x.shape[1:]), train=tr, val=va, method="prune", loader_epochs=False,
                      **FAST)
    assert train.reads - before == 600  # read once


def test_a_seed_as_large_as_the_budget_says_why_it_does_not_grow():
    tr, va, ex = loaders()
    rep = Recording()
    r = nestir.synthesize(MLP(), ex, train=tr, val=va, reporter=rep, **FAST)  # seed_density 1.0: the model itself
    assert r.report["growth_stopped"] in ("FLOPs budget reached", "size budget reached")
    assert any("start from a sparse seed" in m for m in rep.messages)


def test_an_interrupted_dense_phase_resumes_after_the_networks_it_saved(tmp_path):
    """out=: each dense network is saved as it is trained; resume=True after an interrupt trains
    only those not saved and ships what the uninterrupted run ships. Saved networks are refused to
    a resume under other options, and a new run without force= does not overwrite them."""
    from harness import dense_interrupted

    from nestir.ir.errors import ArgumentError, NestirError

    opts = {**FAST, "teachers": 2, "seed": 1, "max_prune_steps": 2}

    def run(out, **kw):
        torch.manual_seed(0)
        tr, va, ex = loaders()
        return nestir.synthesize(MLP(), ex, train=tr, val=va, out=str(tmp_path / out), **{**opts, **kw})

    a = run("a")
    with dense_interrupted(2) as calls:
        with pytest.raises(KeyboardInterrupt):
            run("b")
        assert (tmp_path / "b" / "dense" / "000.pt").exists() and not (tmp_path / "b" / "checkpoint.pt").exists()
        with pytest.raises(ArgumentError, match="already holds a run"):
            run("b")
        with pytest.raises(NestirError, match="trained for another run"):
            run("b", resume=True, tolerance=0.01)
        calls.clear()
        b = run("b", resume=True)
    assert len(calls) == 1  # the second dense network only
    assert b.report["final"] == a.report["final"] and b.report["baseline"] == a.report["baseline"]
    assert not (tmp_path / "b" / "dense").exists()


def test_a_dense_network_stopped_in_training_goes_on_after_its_last_saved_epoch(tmp_path):
    """out=: the network in training is saved after its epochs; resume=True after a stop in the
    middle of the second network trains only the epochs after the last save, and ships what the
    uninterrupted run ships."""
    from harness import dense_stopped_in_training

    opts = {**FAST, "teachers": 2, "seed": 1, "max_prune_steps": 2}

    def run(out, **kw):
        torch.manual_seed(0)
        tr, va, ex = loaders()
        return nestir.synthesize(MLP(), ex, train=tr, val=va, out=str(tmp_path / out), **{**opts, **kw})

    with dense_stopped_in_training(0) as whole:
        a = run("a")
    first = whole.count(0)  # the reference's epochs; the stop comes one epoch into the second network
    with dense_stopped_in_training(first + 1) as saves:
        with pytest.raises(KeyboardInterrupt):
            run("b")
        dense = tmp_path / "b" / "dense"
        assert (dense / "000.pt").exists() and (dense / "001.partial.pt").exists()
        assert not (dense / "000.partial.pt").exists()
        b = run("b", resume=True)
    assert saves == whole
    assert b.report["final"] == a.report["final"] and b.report["baseline"] == a.report["baseline"]
    assert not (tmp_path / "b" / "dense").exists()
