"""``--data file.py:factory``: the user's DataLoaders through the CLI (and nestir.synthesize)."""

import json

import pytest
from harness import TINY_MLP_FILE

from nestir.cli import main

LOADERS = '''
import torch
from torch.utils.data import DataLoader, TensorDataset
from nestir.data import load

def loaders():
    d = load("digits")
    x, y = d.x.float(), d.y
    dl = lambda a, b, shuffle: DataLoader(TensorDataset(x[a:b], y[a:b]), batch_size=64, shuffle=shuffle)
    return dl(0, 1100, True), dl(1100, 1450, False), dl(1450, 1797, False)

def broken():
    return 42
'''
FAST = ["--dense-epochs", "3", "--final-epochs", "1", "--trial-epochs", "1", "--initial-epochs", "1", "--epochs", "1",
        "--shift-epochs", "1", "--prune-epochs", "1", "--max-growth-steps", "1", "--max-prune-steps", "3", "--quiet"]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "model.py").write_text(TINY_MLP_FILE)
    (tmp_path / "data.py").write_text(LOADERS)
    return tmp_path


def test_synthesize_on_a_loader_factory_writes_a_report_with_test_error(files):
    out = files / "run"
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:loaders", "--out", str(out),
               "--device", "cpu", *FAST])
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    assert r["data"] == "user loaders"
    assert r["final"]["params"] <= r["baseline"]["params"]
    for key in ("final", "baseline"):
        assert 0 <= r[key]["test_error"] < 0.5  # scored on the factory's third loader
    assert (out / "model.onnx").exists()


def test_a_factory_that_returns_no_loaders_is_a_clear_error(files, capsys):
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/data.py:broken", "--out",
               str(files / "run"), *FAST])
    assert rc == 2
    assert "must return (train, val)" in capsys.readouterr().err
    rc = main(["synthesize", f"{files}/model.py:make", "--data", f"{files}/missing.py:loaders", "--out",
               str(files / "run"), *FAST])
    assert rc == 2
    assert "data file" in capsys.readouterr().err
